//! Configuration of the NATS sink.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;
pub use outflow_core::Secret;
use outflow_core::{duration, Error, Format, Template};
use serde::Deserialize;

use crate::encode::invalid_subject;

/// The default subject: one subject per aggregate type, as in the design's routing rules.
pub const DEFAULT_SUBJECT: &str = "outbox.event.{aggregate_type}";
/// How long a publish waits for its JetStream ack (or a core NATS flush) before the batch
/// is reported as transiently failed: long enough for a busy server, short enough that an
/// outage is noticed and retried quickly.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacknowledged publishes allowed at once: twice the pipeline's default window of eight
/// batches of 512 events, so the sink never throttles a default pipeline.
pub const DEFAULT_MAX_PENDING: usize = 8192;
/// The deduplication window of a stream the sink creates: JetStream's own default.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

fn default_subject() -> Template {
    Template::parse(DEFAULT_SUBJECT).expect("the default subject is a valid template")
}

fn default_true() -> bool {
    true
}

fn default_ack_timeout() -> Duration {
    DEFAULT_ACK_TIMEOUT
}

fn default_max_pending() -> usize {
    DEFAULT_MAX_PENDING
}

fn default_duplicate_window() -> Duration {
    DEFAULT_DUPLICATE_WINDOW
}

/// Configuration of the `nats` sink (the `[pipelines.<name>.sink]` table without `type`).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URL, or several separated by commas, e.g.
    /// `nats://n1:4222,nats://n2:4222`. `tls://` forces TLS. Credentials may be given in
    /// the URL (`nats://user:password@host:4222`) and are never printed.
    pub url: String,

    /// Subject template for each event; `{aggregate_type}`, `{aggregate_id}`,
    /// `{event_type}`, `{collection}`, `{pipeline}` and `{op}` are substituted.
    /// Default `outbox.event.{aggregate_type}`.
    #[serde(default = "default_subject")]
    pub subject: Template,

    /// Wire format: `envelope` (default), `payload`, `cloudevents` or
    /// `cloudevents-binary` (attributes as `ce-` headers).
    #[serde(default)]
    pub format: Format,

    /// JetStream stream to create when it does not exist, capturing the subjects derived
    /// from `subject` (or `stream_subjects`). Unset: the stream must exist, and publishing
    /// to a subject no stream captures stops the pipeline with an error saying so.
    #[serde(default)]
    pub stream: Option<String>,

    /// Subjects of the stream created for `stream`. Default: derived from `subject`
    /// (`outbox.event.{aggregate_type}` gives `outbox.event.*`; a template with several
    /// placeholders, or one not in the last token, ends in `>` after its literal prefix).
    #[serde(default)]
    pub stream_subjects: Option<Vec<String>>,

    /// Whether this pipeline is the only writer of its stream. Then every publish names
    /// its predecessor (`Nats-Expected-Last-Msg-Id`) and JetStream stores a message only
    /// right after it, so the stream's order is the source's even across reconnects; a
    /// message from another publisher stops the pipeline. Default: `true` when `stream` is
    /// set (the pipeline's own stream), `false` otherwise (a shared stream, whose order can
    /// break around a connection loss).
    #[serde(default)]
    pub exclusive_stream: Option<bool>,

    /// Deduplication window of a stream created for `stream`: a redelivered event whose id
    /// was stored less than this long ago is stored once. It must exceed the longest outage
    /// plus restart after which you want redeliveries deduplicated. Default `2m`.
    #[serde(
        default = "default_duplicate_window",
        deserialize_with = "duration::deserialize"
    )]
    pub duplicate_window: Duration,

    /// Publish through JetStream and wait for its acks (default `true`). `false` uses core
    /// NATS: messages are only flushed to the server, which keeps nothing when no one
    /// listens, so delivery is at most once.
    #[serde(default = "default_true")]
    pub jetstream: bool,

    /// How long a batch waits for its JetStream acks (or, in core NATS mode, its flush)
    /// before it fails with a transient error and is retried. Default `5s`.
    #[serde(
        default = "default_ack_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub ack_timeout: Duration,

    /// Most publishes awaiting their JetStream ack at once; `send` waits for acks when the
    /// limit is reached. Default 8192.
    #[serde(default = "default_max_pending")]
    pub max_pending: usize,

    /// Client connection name, shown by the server's monitoring. Default
    /// `outflow-<pipeline>`.
    #[serde(default)]
    pub name: Option<String>,

    /// Authentication token.
    #[serde(default)]
    pub token: Option<Secret>,

    /// User name; requires `password`.
    #[serde(default)]
    pub user: Option<String>,

    /// Password for `user`.
    #[serde(default)]
    pub password: Option<Secret>,

    /// NKey seed (`SU…`) to sign the server's challenge with.
    #[serde(default)]
    pub nkey_seed: Option<Secret>,

    /// Path of a `.creds` file holding a user JWT and its NKey seed.
    #[serde(default)]
    pub creds_file: Option<PathBuf>,

    /// PEM file of the certificate authorities that sign the server's certificate. Setting
    /// it turns TLS on.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for mutual TLS; requires `tls_key`.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `tls_cert`.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,

    /// Refuse to connect without TLS. Default `false` (TLS is still used when the URL is
    /// `tls://`, `tls_ca` is set, or the server requires it).
    #[serde(default)]
    pub tls_required: bool,
}

impl NatsConfig {
    /// A configuration with every default and the given server URL.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            subject: default_subject(),
            format: Format::default(),
            stream: None,
            stream_subjects: None,
            exclusive_stream: None,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            jetstream: true,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            max_pending: DEFAULT_MAX_PENDING,
            name: None,
            token: None,
            user: None,
            password: None,
            nkey_seed: None,
            creds_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
        }
    }

    /// Checks the configuration without connecting. Every error is fatal and names the
    /// field to fix.
    pub fn validate(&self) -> Result<(), Error> {
        self.server_addrs()?;
        if self.ack_timeout.is_zero() {
            return Err(Error::fatal(
                "nats sink: `ack_timeout` must be greater than zero, e.g. \"5s\"",
            ));
        }
        if self.max_pending == 0 {
            return Err(Error::fatal("nats sink: `max_pending` must be at least 1"));
        }
        if self.subject.as_str().is_empty() {
            return Err(Error::fatal("nats sink: `subject` must not be empty"));
        }
        if let Some(bad) = invalid_subject(&self.subject.wildcard("x")) {
            return Err(Error::fatal(format!(
                "nats sink: `subject` {:?} {bad}",
                self.subject.as_str()
            )));
        }
        match (&self.stream, self.jetstream) {
            (Some(_), false) => {
                return Err(Error::fatal(
                    "nats sink: `stream` needs JetStream; remove `stream` or set \
                     `jetstream = true`",
                ))
            }
            (Some(name), true) => validate_stream_name(name)?,
            (None, _) => {}
        }
        if self.exclusive_stream == Some(true) && !self.jetstream {
            return Err(Error::fatal(
                "nats sink: `exclusive_stream` needs JetStream; remove it or set \
                 `jetstream = true`",
            ));
        }
        if self.stream_subjects.is_some() && self.stream.is_none() {
            return Err(Error::fatal(
                "nats sink: `stream_subjects` only applies to a stream the sink creates; set \
                 `stream` too",
            ));
        }
        if let Some(subjects) = &self.stream_subjects {
            if subjects.is_empty() {
                return Err(Error::fatal(
                    "nats sink: `stream_subjects` must list at least one subject",
                ));
            }
            for s in subjects {
                if s.is_empty() || s.contains(char::is_whitespace) {
                    return Err(Error::fatal(format!(
                        "nats sink: `stream_subjects` entry {s:?} is not a valid subject"
                    )));
                }
            }
        }
        if self.stream.is_some() && self.duplicate_window.is_zero() {
            return Err(Error::fatal(
                "nats sink: `duplicate_window` must be greater than zero, e.g. \"2m\"",
            ));
        }
        let methods = [
            self.token.is_some(),
            self.user.is_some() || self.password.is_some(),
            self.nkey_seed.is_some(),
            self.creds_file.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(Error::fatal(
                "nats sink: set only one of `token`, `user`/`password`, `nkey_seed` and \
                 `creds_file`",
            ));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(Error::fatal(
                "nats sink: `user` and `password` must be set together",
            ));
        }
        if let Some(seed) = &self.nkey_seed {
            if !seed.expose().starts_with("SU") {
                return Err(Error::fatal(
                    "nats sink: `nkey_seed` must be a user NKey seed (it starts with \"SU\")",
                ));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Error::fatal(
                "nats sink: `tls_cert` and `tls_key` must be set together",
            ));
        }
        if let Some(name) = &self.name {
            if name.is_empty() {
                return Err(Error::fatal("nats sink: `name` must not be empty"));
            }
        }
        Ok(())
    }

    /// Whether publishes are chained through one stream (`exclusive_stream`, by default
    /// whenever `stream` is set).
    pub fn is_exclusive(&self) -> bool {
        self.jetstream && self.exclusive_stream.unwrap_or(self.stream.is_some())
    }

    /// The server addresses of `url`.
    pub(crate) fn server_addrs(&self) -> Result<Vec<ServerAddr>, Error> {
        let mut addrs = Vec::new();
        for part in self.url.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let addr: ServerAddr = part.parse().map_err(|e| {
                Error::fatal(format!(
                    "nats sink: `url` entry {:?} is not a NATS server URL (like \
                     nats://127.0.0.1:4222)",
                    redact_url(part)
                ))
                .with_source(e)
            })?;
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err(Error::fatal(
                "nats sink: `url` is empty; give a server URL like nats://127.0.0.1:4222",
            ));
        }
        Ok(addrs)
    }

    /// `url` with any password replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        self.url
            .split(',')
            .map(|p| redact_url(p.trim()))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Hides the password (or token) of a URL's user info.
pub(crate) fn redact_url(url: &str) -> String {
    let scheme_end = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[scheme_end..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let shown = match userinfo.find(':') {
                Some(colon) => format!("{}:***", &userinfo[..colon]),
                None => "***".to_string(),
            };
            format!("{}{}{}", &url[..scheme_end], shown, &rest[at..])
        }
        None => url.to_string(),
    }
}

fn validate_stream_name(name: &str) -> Result<(), Error> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
    {
        return Err(Error::fatal(format!(
            "nats sink: `stream` {name:?} is not a valid stream name; use letters, digits, '-' \
             and '_' (no spaces, '.', '*', '>', '/' or '\\')"
        )));
    }
    Ok(())
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.redacted_url())
            .field("subject", &self.subject.as_str())
            .field("format", &self.format)
            .field("stream", &self.stream)
            .field("stream_subjects", &self.stream_subjects)
            .field("exclusive_stream", &self.exclusive_stream)
            .field("duplicate_window", &self.duplicate_window)
            .field("jetstream", &self.jetstream)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_pending", &self.max_pending)
            .field("name", &self.name)
            .field("token", &self.token)
            .field("user", &self.user)
            .field("password", &self.password)
            .field("nkey_seed", &self.nkey_seed)
            .field("creds_file", &self.creds_file)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_required", &self.tls_required)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NatsConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults() {
        let c = parse("url = \"nats://127.0.0.1:4222\"").unwrap();
        assert_eq!(c.subject.as_str(), DEFAULT_SUBJECT);
        assert_eq!(c.format, Format::Envelope);
        assert!(c.jetstream);
        assert_eq!(c.ack_timeout, DEFAULT_ACK_TIMEOUT);
        assert_eq!(c.max_pending, DEFAULT_MAX_PENDING);
        assert_eq!(c.duplicate_window, Duration::from_secs(120));
        assert_eq!(c.stream, None);
        assert!(!c.is_exclusive());
        c.validate().unwrap();
        let owned = parse("url = \"nats://x\"\nstream = \"S\"").unwrap();
        assert!(
            owned.is_exclusive(),
            "a stream of its own is exclusive by default"
        );
    }

    #[test]
    fn every_key_parses() {
        let c = parse(
            r#"
            url = "nats://a:4222, nats://b:4222"
            subject = "events.{aggregate_type}.{event_type}"
            format = "cloudevents-binary"
            stream = "OUTBOX"
            stream_subjects = ["events.>"]
            exclusive_stream = false
            duplicate_window = "10m"
            jetstream = true
            ack_timeout = "2s"
            max_pending = 100
            name = "orders-relay"
            user = "relay"
            password = "hunter2"
            tls_ca = "/etc/ca.pem"
            tls_cert = "/etc/c.pem"
            tls_key = "/etc/k.pem"
            tls_required = true
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.server_addrs().unwrap().len(), 2);
        assert_eq!(c.format, Format::CloudEvents { binary: true });
        assert_eq!(c.duplicate_window, Duration::from_secs(600));
        assert_eq!(c.ack_timeout, Duration::from_secs(2));
        assert!(!c.is_exclusive());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err = parse("url = \"nats://x\"\nsubjet = \"a\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `subjet`"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let mut c = NatsConfig::new("nats://relay:pw-in-url@127.0.0.1:4222");
        c.token = Some(Secret::new("tok-secret"));
        c.password = Some(Secret::new("pass-secret"));
        c.nkey_seed = Some(Secret::new("SUseed-secret"));
        let shown = format!("{c:?}");
        for secret in ["pw-in-url", "tok-secret", "pass-secret", "SUseed-secret"] {
            assert!(!shown.contains(secret), "{secret} leaked in {shown}");
        }
        assert!(shown.contains("nats://relay:***@127.0.0.1:4222"), "{shown}");
        assert_eq!(redact_url("nats://tok@h:1"), "nats://***@h:1");
        assert_eq!(redact_url("h:1"), "h:1");
    }

    #[test]
    fn validation_names_the_field() {
        let check = |edit: &dyn Fn(&mut NatsConfig), needle: &str| {
            let mut c = NatsConfig::new("nats://127.0.0.1:4222");
            edit(&mut c);
            let err = c.validate().unwrap_err();
            assert_eq!(err.kind(), outflow_core::ErrorKind::Fatal);
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        };
        check(&|c| c.url = " , ".into(), "`url` is empty");
        check(&|c| c.url = "nats://[bad".into(), "`url` entry");
        check(&|c| c.ack_timeout = Duration::ZERO, "`ack_timeout`");
        check(&|c| c.max_pending = 0, "`max_pending`");
        check(
            &|c| c.subject = Template::parse("a b.{op}").unwrap(),
            "whitespace",
        );
        check(
            &|c| c.subject = Template::parse("a..{op}").unwrap(),
            "empty token",
        );
        check(&|c| c.subject = Template::parse("a.>").unwrap(), "wildcard");
        check(
            &|c| {
                c.stream = Some("S".into());
                c.jetstream = false;
            },
            "`stream` needs JetStream",
        );
        check(
            &|c| {
                c.exclusive_stream = Some(true);
                c.jetstream = false;
            },
            "`exclusive_stream` needs JetStream",
        );
        check(
            &|c| c.stream = Some("a.b".into()),
            "not a valid stream name",
        );
        check(
            &|c| c.stream_subjects = Some(vec!["x".into()]),
            "set `stream` too",
        );
        check(&|c| c.user = Some("u".into()), "`user` and `password`");
        check(
            &|c| {
                c.token = Some(Secret::new("t"));
                c.creds_file = Some("/x.creds".into());
            },
            "only one of",
        );
        check(&|c| c.nkey_seed = Some(Secret::new("xx")), "`nkey_seed`");
        check(
            &|c| c.tls_cert = Some("/c.pem".into()),
            "`tls_cert` and `tls_key`",
        );
    }
}
