//! Secrets in configuration: passwords, tokens, keys.

use std::fmt;

use serde::Deserialize;

/// A secret string. `Debug` and `Display` print `<redacted>`, so a configuration struct
/// holding one can be logged whole; [`expose`](Self::expose) hands the value to a client.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value. Pass it to a client; never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_its_value() {
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Config {
            password: Secret,
        }
        let config: Config = serde_json::from_str(r#"{"password": "hunter2"}"#).unwrap();
        assert_eq!(format!("{config:?}"), "Config { password: <redacted> }");
        assert_eq!(config.password.to_string(), "<redacted>");
        assert_eq!(config.password.expose(), "hunter2");
    }
}
