//! JSON kept as text: the envelope's payload and row images.
//!
//! A source usually has its data as JSON text already (a jsonb column, a message body)
//! or can write it as text directly. Keeping that text, instead of a tree of
//! `serde_json::Value`s, keeps numbers exactly as the source wrote them (`10.50` stays
//! `10.50`, integers beyond 64 bits stay whole) and costs one string per value instead of
//! a node per member, which a sink then copies into its message as it is.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

/// A JSON value held as its text.
///
/// The text is valid JSON, without surrounding whitespace; inside, it is the source's
/// (Postgres writes jsonb as `{"a": 1, "b": [1, 2]}`, with spaces). It is written into
/// envelopes as it is.
///
/// Two values are equal when their texts are, or when both parse to equal
/// [`serde_json::Value`]s (so `{"a": 1}` equals `{"a":1}`), which is handy in tests:
/// `assert_eq!(event.payload, RawJson::from(json!({...})))`.
#[derive(Clone)]
pub struct RawJson(String);

impl RawJson {
    /// The JSON `null`.
    pub fn null() -> RawJson {
        RawJson("null".to_string())
    }

    /// Checks that `text` is one JSON value and keeps it (surrounding whitespace removed).
    ///
    /// Errors with serde_json's description of the first problem and its position.
    pub fn from_text(text: impl Into<String>) -> Result<RawJson, serde_json::Error> {
        let raw = RawValue::from_string(text.into())?;
        Ok(RawJson(Box::<str>::from(raw).into_string()))
    }

    /// Keeps `text` without checking it. For text a connector wrote itself, or a
    /// database guarantees to be JSON (a Postgres json or jsonb value): the caller
    /// vouches that it is one JSON value without surrounding whitespace. Debug builds
    /// check it.
    pub fn from_text_unchecked(text: String) -> RawJson {
        debug_assert!(
            serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok()
                && text.trim().len() == text.len(),
            "not one JSON value: {text:?}"
        );
        RawJson(text)
    }

    /// The compact JSON text of `value`.
    pub fn from_value(value: &Value) -> RawJson {
        let mut out = Vec::with_capacity(64);
        crate::json::write_value(&mut out, value);
        // write_value writes only whole UTF-8 sequences and ASCII.
        RawJson(String::from_utf8(out).expect("JSON text is UTF-8"))
    }

    /// A JSON string holding `text`.
    pub fn string(text: &str) -> RawJson {
        let mut out = String::with_capacity(text.len() + 2);
        push_json_str(&mut out, text);
        RawJson(out)
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the JSON `null`.
    pub fn is_null(&self) -> bool {
        self.0 == "null"
    }

    /// When this is a JSON string, its content (unescaped).
    pub fn as_json_string(&self) -> Option<Cow<'_, str>> {
        json_string_content(&self.0)
    }

    /// The value as a `serde_json::Value`. Numbers outside what `Value` holds exactly
    /// (beyond 64-bit integers, more digits than an `f64` keeps) are rounded, and a
    /// number beyond the `f64` range is an error.
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::from_str(&self.0)
    }

    /// Parses the text into any deserializable type.
    pub fn parse<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

/// The content of a JSON string's text (`"a\nb"` gives `a`, a line break, `b`), or `None`
/// when `text` is not a JSON string. For connectors reading fields out of JSON text.
pub fn json_string_content(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Appends `text` as a JSON string: quoted, with `"`, `\` and control characters escaped
/// as serde_json escapes them. For connectors writing JSON text themselves.
pub fn push_json_str(out: &mut String, text: &str) {
    crate::json::write_str(out, text);
}

impl Default for RawJson {
    fn default() -> Self {
        RawJson::null()
    }
}

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawJson({})", self.0)
    }
}

impl fmt::Display for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.0 == other.0 || matches!((self.to_value(), other.to_value()), (Ok(a), Ok(b)) if a == b)
    }
}

impl From<Value> for RawJson {
    fn from(value: Value) -> Self {
        RawJson::from_value(&value)
    }
}

impl From<&Value> for RawJson {
    fn from(value: &Value) -> Self {
        RawJson::from_value(value)
    }
}

impl Serialize for RawJson {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Valid by construction; serde_json writes a RawValue's text as it is.
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(RawJson(Box::<str>::from(raw).into_string()))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn text_is_kept_as_written_numbers_included() {
        let raw =
            RawJson::from_text(" {\"amount\": 10.50, \"big\": 123456789012345678901234567890}\n")
                .unwrap();
        assert_eq!(
            raw.as_str(),
            "{\"amount\": 10.50, \"big\": 123456789012345678901234567890}"
        );
        let envelope_text = serde_json::to_string(&json!({"k": 1})).unwrap();
        assert_eq!(envelope_text, "{\"k\":1}");
        // Serialized through serde_json, the text goes out unchanged.
        assert_eq!(
            serde_json::to_string(&vec![raw.clone()]).unwrap(),
            "[{\"amount\": 10.50, \"big\": 123456789012345678901234567890}]"
        );
        // And comes back unchanged.
        let back: Vec<RawJson> =
            serde_json::from_str("[{\"amount\": 10.50, \"big\": 123456789012345678901234567890}]")
                .unwrap();
        assert_eq!(back[0].as_str(), raw.as_str());
    }

    #[test]
    fn invalid_text_is_refused_with_its_position() {
        let err = RawJson::from_text("{\"a\": }").unwrap_err();
        assert_eq!(err.to_string(), "expected value at line 1 column 7");
        assert!(RawJson::from_text("1 2").is_err());
        assert!(RawJson::from_text("").is_err());
    }

    #[test]
    fn equality_is_textual_or_by_value() {
        let spaced = RawJson::from_text("{\"a\": 1, \"b\": [true]}").unwrap();
        let compact = RawJson::from_value(&json!({"b": [true], "a": 1}));
        assert_eq!(compact.as_str(), "{\"a\":1,\"b\":[true]}");
        assert_eq!(spaced, compact);
        assert_eq!(spaced, RawJson::from(json!({"a": 1, "b": [true]})));
        assert_ne!(spaced, RawJson::from(json!({"a": 2, "b": [true]})));
        assert_ne!(spaced, RawJson::null());
    }

    #[test]
    fn strings_null_and_conversions() {
        assert!(RawJson::null().is_null());
        assert!(RawJson::default().is_null());
        let s = RawJson::string("line\nbreak \"quoted\" é");
        assert_eq!(s.as_str(), r#""line\nbreak \"quoted\" é""#);
        assert_eq!(s.as_json_string().unwrap(), "line\nbreak \"quoted\" é");
        assert_eq!(
            RawJson::string("plain").as_json_string(),
            Some(Cow::Borrowed("plain"))
        );
        assert_eq!(
            RawJson::from_value(&json!({"a": "x"})).as_json_string(),
            None
        );
        assert_eq!(RawJson::from_value(&json!(null)).as_json_string(), None);
        let value = json!({"z": [1, 2.5, "three", null]});
        assert_eq!(RawJson::from(&value).to_value().unwrap(), value);
        assert_eq!(RawJson::from(&value), RawJson::from(value.clone()));
        assert_eq!(serde_json::to_value(RawJson::from(&value)).unwrap(), value);
        let parsed: std::collections::BTreeMap<String, Value> =
            RawJson::from(&value).parse().unwrap();
        assert_eq!(parsed["z"], json!([1, 2.5, "three", null]));
        let from_value: RawJson = serde_json::from_value(value.clone()).unwrap();
        assert_eq!(from_value.to_value().unwrap(), value);
    }
}
