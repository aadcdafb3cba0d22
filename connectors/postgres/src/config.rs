//! Configuration of the Postgres source.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use outflow_core::Error;
use serde::{Deserialize, Deserializer, Serialize};

/// The slot name unless configured: one outflow pipeline per database needs no choice.
pub const DEFAULT_SLOT: &str = "outflow";
/// The publication name unless configured, for the same reason.
pub const DEFAULT_PUBLICATION: &str = "outflow";
/// The captured table unless configured: the outbox table outflow-outbox creates.
pub const DEFAULT_TABLE: &str = "public.outbox";
/// The logical decoding message prefix unless configured: the one outflow-outbox uses.
pub const DEFAULT_MESSAGE_PREFIX: &str = "outbox";
/// How often confirmed positions are reported to the server: often enough that WAL is
/// released promptly, far below the default `wal_sender_timeout` of 60 s.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// First wait before reconnecting: long enough not to hammer a restarting server.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(500);
/// Longest wait between reconnect attempts: an outage is noticed within half a minute
/// of its end.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Replication messages read ahead of the pipeline: enough to hide network latency,
/// small enough that memory stays bounded by the pipeline's window.
pub const DEFAULT_READ_AHEAD: usize = 256;
/// How long to wait for a slot still held by a previous connection of ours (a walsender
/// takes a moment to exit after its client went away) before calling it "active
/// elsewhere".
pub const DEFAULT_SLOT_BUSY_TIMEOUT: Duration = Duration::from_secs(15);

/// What the source turns into events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inserts into outbox tables become events built from the outbox columns; deletes
    /// are dropped, updates dropped with a warning.
    #[default]
    Outbox,
    /// Plain change data capture: every insert, update, delete and truncate of the
    /// captured tables is an event carrying the row images.
    Table,
    /// Transactional logical decoding messages (`pg_logical_emit_message(true, prefix,
    /// json)`) with the configured prefix are events; no table is read.
    Message,
}

impl Mode {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Outbox => "outbox",
            Mode::Table => "table",
            Mode::Message => "message",
        }
    }
}

/// TLS use, with libpq's names and meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without verifying its certificate.
    #[default]
    Prefer,
    /// Always use TLS, without verifying the server's certificate.
    Require,
    /// Always use TLS and verify that the certificate is signed by a trusted CA
    /// (`sslrootcert`, or the public web roots).
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}; use disable, prefer, require, verify-ca or \
                     verify-full"
                ))
            }
        })
    }
}

/// Column names of an outbox table. The defaults are Debezium's outbox router's, which
/// outflow-outbox creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxColumns {
    /// The event id column: becomes the envelope `id` (and the dedup id downstream).
    pub id: String,
    /// The aggregate type column: becomes `aggregate_type`, e.g. `order`.
    pub aggregate_type: String,
    /// The aggregate id column: becomes `aggregate_id`, the default message key.
    pub aggregate_id: String,
    /// The event type column: becomes `event_type`, e.g. `OrderCreated`.
    pub event_type: String,
    /// The payload column: `json`/`jsonb` is embedded as JSON, `text` passed as a string.
    pub payload: String,
    /// An optional column carrying trace context: a W3C `traceparent` in text, or a
    /// json/jsonb object of headers. Delivered as envelope headers. Ignored when the table
    /// has no such column.
    pub tracing: String,
}

impl Default for OutboxColumns {
    fn default() -> Self {
        OutboxColumns {
            id: "id".into(),
            aggregate_type: "aggregatetype".into(),
            aggregate_id: "aggregateid".into(),
            event_type: "type".into(),
            payload: "payload".into(),
            tracing: "tracingspancontext".into(),
        }
    }
}

/// The Postgres source's configuration (`type = "postgres"` in a pipeline file).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Where to connect, as a libpq URL: `postgres://user:password@host:port/database`.
    /// May carry `sslmode` (disable, prefer, require, verify-ca, verify-full) and
    /// `sslrootcert` (a PEM file of trusted CAs) query parameters. The user needs the
    /// `REPLICATION` attribute (or superuser).
    pub url: String,
    /// The logical replication slot, which keeps the position outflow confirmed. One
    /// slot per pipeline; two pipelines must never share one.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// The publication naming the captured tables.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// The captured tables, as `schema.table` (or `table` for `public`). Unused in
    /// `message` mode.
    #[serde(default = "default_tables")]
    pub tables: Vec<String>,
    /// `outbox` (default), `table` or `message`.
    #[serde(default)]
    pub mode: Mode,
    /// In `message` mode, the prefix of the logical decoding messages to deliver; other
    /// prefixes are ignored.
    #[serde(default = "default_message_prefix")]
    pub message_prefix: String,
    /// Column names of the outbox table (`outbox` mode), as a sub-table:
    /// `outbox = { id = "event_id" }`. Unnamed columns keep their defaults.
    #[serde(default)]
    pub outbox: OutboxColumns,
    /// Create the slot when it does not exist (default true). When false a missing slot
    /// is an error.
    #[serde(default = "default_true")]
    pub create_slot: bool,
    /// Create the publication (for `tables`) when it does not exist, and add missing
    /// tables to it (default true). When false a missing publication is an error.
    #[serde(default = "default_true")]
    pub create_publication: bool,
    /// Write a small logical decoding message at this interval (e.g. `"30s"`), so that
    /// the slot advances even when the captured tables are idle while others are busy.
    /// Off unless set.
    #[serde(default, deserialize_with = "optional_duration")]
    pub heartbeat_interval: Option<Duration>,
    /// How often to report the confirmed position to the server (e.g. `"10s"`). Keep it
    /// below half of the server's `wal_sender_timeout`.
    #[serde(
        default = "default_status_interval",
        deserialize_with = "outflow_core::duration::deserialize"
    )]
    pub status_interval: Duration,
    /// First wait before reconnecting after a lost connection; doubles per failure.
    #[serde(
        default = "default_reconnect_min",
        deserialize_with = "outflow_core::duration::deserialize"
    )]
    pub reconnect_backoff_min: Duration,
    /// Longest wait between reconnect attempts.
    #[serde(
        default = "default_reconnect_max",
        deserialize_with = "outflow_core::duration::deserialize"
    )]
    pub reconnect_backoff_max: Duration,
    /// TLS mode; overrides an `sslmode` in `url`. Default `prefer`.
    #[serde(default)]
    pub sslmode: Option<SslMode>,
    /// A PEM file of CA certificates to trust for `verify-ca`/`verify-full`; overrides
    /// an `sslrootcert` in `url`. Without one, the public web roots are trusted.
    #[serde(default)]
    pub sslrootcert: Option<PathBuf>,
    /// Replication messages read ahead of the pipeline (default 256). Memory is bounded
    /// by this plus the pipeline's window, whatever the transaction size.
    #[serde(default = "default_read_ahead")]
    pub read_ahead: usize,
}

fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_tables() -> Vec<String> {
    vec![DEFAULT_TABLE.into()]
}
fn default_message_prefix() -> String {
    DEFAULT_MESSAGE_PREFIX.into()
}
fn default_true() -> bool {
    true
}
fn default_status_interval() -> Duration {
    DEFAULT_STATUS_INTERVAL
}
fn default_reconnect_min() -> Duration {
    DEFAULT_RECONNECT_MIN
}
fn default_reconnect_max() -> Duration {
    DEFAULT_RECONNECT_MAX
}
fn default_read_ahead() -> usize {
    DEFAULT_READ_AHEAD
}

fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    outflow_core::duration::deserialize(d).map(Some)
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &redact_url(&self.url))
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("tables", &self.tables)
            .field("mode", &self.mode)
            .field("message_prefix", &self.message_prefix)
            .field("outbox", &self.outbox)
            .field("create_slot", &self.create_slot)
            .field("create_publication", &self.create_publication)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("status_interval", &self.status_interval)
            .field("reconnect_backoff_min", &self.reconnect_backoff_min)
            .field("reconnect_backoff_max", &self.reconnect_backoff_max)
            .field("sslmode", &self.sslmode)
            .field("sslrootcert", &self.sslrootcert)
            .field("read_ahead", &self.read_ahead)
            .finish()
    }
}

/// The URL with its password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rfind('@') {
        Some(at) => match authority[..at].find(':') {
            Some(colon) => format!(
                "{}{}:***{}",
                &url[..scheme_end + 3],
                &authority[..colon],
                &url[scheme_end + 3 + at..]
            ),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl PostgresConfig {
    /// A configuration with every default and the given URL.
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            slot: default_slot(),
            publication: default_publication(),
            tables: default_tables(),
            mode: Mode::default(),
            message_prefix: default_message_prefix(),
            outbox: OutboxColumns::default(),
            create_slot: true,
            create_publication: true,
            heartbeat_interval: None,
            status_interval: DEFAULT_STATUS_INTERVAL,
            reconnect_backoff_min: DEFAULT_RECONNECT_MIN,
            reconnect_backoff_max: DEFAULT_RECONNECT_MAX,
            sslmode: None,
            sslrootcert: None,
            read_ahead: DEFAULT_READ_AHEAD,
        }
    }

    /// Checks the configuration without connecting. Errors are fatal and name the field.
    pub fn validate(&self) -> Result<(), Error> {
        self.connect_params()?;
        check_name("slot", &self.slot)?;
        if !self
            .slot
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(Error::fatal(format!(
                "slot {:?} is not a valid replication slot name; use only lower-case letters, \
                 digits and underscores",
                self.slot
            )));
        }
        check_name("publication", &self.publication)?;
        if self.mode != Mode::Message {
            if self.tables.is_empty() {
                return Err(Error::fatal(format!(
                    "tables is empty; name at least one table to capture in {} mode, e.g. \
                     tables = [\"public.outbox\"]",
                    self.mode.as_str()
                )));
            }
            for table in &self.tables {
                TableName::parse(table)?;
            }
        }
        if self.mode == Mode::Message && self.message_prefix.is_empty() {
            return Err(Error::fatal(
                "message_prefix is empty; set the prefix the application passes to \
                 pg_logical_emit_message, e.g. \"outbox\"",
            ));
        }
        if self.mode == Mode::Outbox {
            let c = &self.outbox;
            for (field, name) in [
                ("outbox.id", &c.id),
                ("outbox.aggregate_type", &c.aggregate_type),
                ("outbox.aggregate_id", &c.aggregate_id),
                ("outbox.event_type", &c.event_type),
                ("outbox.payload", &c.payload),
            ] {
                check_name(field, name)?;
            }
        }
        if self.status_interval.is_zero() {
            return Err(Error::fatal(
                "status_interval is 0; give a duration such as \"10s\"",
            ));
        }
        if self.heartbeat_interval.is_some_and(|d| d.is_zero()) {
            return Err(Error::fatal(
                "heartbeat_interval is 0; give a duration such as \"30s\", or leave it out",
            ));
        }
        if self.reconnect_backoff_min.is_zero()
            || self.reconnect_backoff_max < self.reconnect_backoff_min
        {
            return Err(Error::fatal(
                "reconnect_backoff_min must be above 0 and at most reconnect_backoff_max",
            ));
        }
        if self.read_ahead == 0 {
            return Err(Error::fatal("read_ahead is 0; give at least 1"));
        }
        Ok(())
    }

    /// The tables, parsed.
    pub(crate) fn table_names(&self) -> Result<Vec<TableName>, Error> {
        if self.mode == Mode::Message {
            return Ok(Vec::new());
        }
        self.tables.iter().map(|t| TableName::parse(t)).collect()
    }

    /// Connection parameters from `url`, `sslmode` and `sslrootcert`.
    pub(crate) fn connect_params(&self) -> Result<ConnectParams, Error> {
        ConnectParams::parse(&self.url, self.sslmode, self.sslrootcert.clone())
    }
}

fn check_name(field: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 63 || name.contains('\0') {
        return Err(Error::fatal(format!(
            "{field} {name:?} is not a valid Postgres name; give 1 to 63 bytes without NUL"
        )));
    }
    Ok(())
}

/// A schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct TableName {
    pub(crate) schema: String,
    pub(crate) name: String,
}

impl TableName {
    pub(crate) fn parse(text: &str) -> Result<TableName, Error> {
        let (schema, name) = match text.split_once('.') {
            Some((schema, name)) => (schema, name),
            None => ("public", text),
        };
        let bad = |why: &str| {
            Error::fatal(format!(
                "tables entry {text:?} {why}; write schema.table, e.g. \"public.outbox\""
            ))
        };
        if schema.is_empty() || name.is_empty() {
            return Err(bad("has an empty part"));
        }
        if name.contains('.') {
            return Err(bad("has more than two parts"));
        }
        check_name("tables entry", schema)?;
        check_name("tables entry", name)?;
        Ok(TableName {
            schema: schema.to_string(),
            name: name.to_string(),
        })
    }

    /// `"schema"."name"`, quoted for SQL.
    pub(crate) fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an identifier for SQL.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Where and how to connect, from the URL and the TLS options.
#[derive(Clone)]
pub(crate) struct ConnectParams {
    pub(crate) pg: tokio_postgres::Config,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) database: String,
    pub(crate) sslmode: SslMode,
    pub(crate) sslrootcert: Option<PathBuf>,
}

impl ConnectParams {
    fn parse(
        url: &str,
        sslmode: Option<SslMode>,
        sslrootcert: Option<PathBuf>,
    ) -> Result<ConnectParams, Error> {
        let shown = redact_url(url);
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::fatal(format!(
                "url {shown:?} is not a postgres:// URL; write \
                 postgres://user:password@host:port/database"
            )));
        }
        // tokio-postgres knows only disable/prefer/require: take the TLS parameters out
        // of the query and handle them here.
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (url, None),
        };
        let mut kept = Vec::new();
        let mut url_sslmode = None;
        let mut url_rootcert = None;
        for pair in query.into_iter().flat_map(|q| q.split('&')) {
            match pair.split_once('=') {
                Some(("sslmode", v)) => {
                    url_sslmode = Some(
                        v.parse::<SslMode>()
                            .map_err(|e| Error::fatal(format!("url {shown:?}: {e}")))?,
                    )
                }
                Some(("sslrootcert", v)) => url_rootcert = Some(PathBuf::from(v)),
                _ if pair.is_empty() => {}
                _ => kept.push(pair),
            }
        }
        let stripped = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let pg = tokio_postgres::Config::from_str(&stripped).map_err(|e| {
            Error::fatal(format!(
                "url {shown:?} is not a valid postgres URL ({e}); write \
                 postgres://user:password@host:port/database"
            ))
        })?;
        let host = match pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => "localhost".to_string(),
        };
        if pg.get_hosts().len() > 1 {
            return Err(Error::fatal(format!(
                "url {shown:?} names several hosts; the replication source connects to one \
                 server: name only the primary"
            )));
        }
        let port = pg.get_ports().first().copied().unwrap_or(5432);
        let user = pg
            .get_user()
            .ok_or_else(|| {
                Error::fatal(format!(
                    "url {shown:?} names no user; write postgres://user@host/database"
                ))
            })?
            .to_string();
        let password = pg
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let database = pg.get_dbname().unwrap_or(&user).to_string();
        Ok(ConnectParams {
            pg,
            host,
            port,
            user,
            password,
            database,
            sslmode: sslmode.or(url_sslmode).unwrap_or_default(),
            sslrootcert: sslrootcert.or(url_rootcert),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_toml_keys() {
        let config: PostgresConfig = toml::from_str(
            r#"
            url = "postgres://app:secret@db:6543/shop?sslmode=verify-full&sslrootcert=/ca.pem"
            tables = ["orders", "billing.invoices"]
            mode = "table"
            heartbeat_interval = "30s"
            status_interval = 2
            outbox = { id = "event_id" }
            "#,
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.slot, "outflow");
        assert_eq!(config.mode, Mode::Table);
        assert_eq!(config.heartbeat_interval, Some(Duration::from_secs(30)));
        assert_eq!(config.status_interval, Duration::from_secs(2));
        assert_eq!(config.outbox.id, "event_id");
        assert_eq!(config.outbox.payload, "payload");
        let tables = config.table_names().unwrap();
        assert_eq!(tables[0].to_string(), "public.orders");
        assert_eq!(tables[1].quoted(), r#""billing"."invoices""#);
        let p = config.connect_params().unwrap();
        assert_eq!((p.host.as_str(), p.port), ("db", 6543));
        assert_eq!((p.user.as_str(), p.password.as_str()), ("app", "secret"));
        assert_eq!(p.database, "shop");
        assert_eq!(p.sslmode, SslMode::VerifyFull);
        assert_eq!(p.sslrootcert, Some(PathBuf::from("/ca.pem")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let err = toml::from_str::<PostgresConfig>("url = \"postgres://a@b/c\"\nslots = \"x\"")
            .unwrap_err();
        assert!(err.to_string().contains("unknown field `slots`"), "{err}");
        let err = toml::from_str::<PostgresConfig>("url = \"postgres://a@b/c\"\nmode = \"cdc\"")
            .unwrap_err();
        assert!(err.to_string().contains("unknown variant `cdc`"), "{err}");

        let mut c = PostgresConfig::new("mysql://a@b/c");
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a postgres:// URL"));
        c.url = "postgres://a@b/c?sslmode=sometimes".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("unknown sslmode"));
        c.url = "postgres://a@b/c".into();
        c.slot = "Bad-Slot".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("slot \"Bad-Slot\""));
        c.slot = "ok".into();
        c.tables = vec!["a.b.c".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("more than two parts"));
        c.tables = vec![];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("tables is empty"));
        c.mode = Mode::Message;
        c.validate().unwrap();
        c.message_prefix.clear();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("message_prefix"));
    }

    #[test]
    fn passwords_never_print() {
        let c = PostgresConfig::new("postgres://app:hunter2@db/shop");
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db/shop"), "{shown}");
        assert_eq!(redact_url("postgres://db/shop"), "postgres://db/shop");
        assert_eq!(redact_url("postgres://u@db/shop"), "postgres://u@db/shop");
    }
}
