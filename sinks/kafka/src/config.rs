//! Configuration of the Kafka sink.
//!
//! Every typed key maps to one librdkafka property; anything else librdkafka knows can be
//! given in `properties`. The properties that carry the sink's delivery guarantees
//! (`enable.idempotence`, `acks`, ...) are set by the sink and cannot be overridden.

use std::collections::BTreeMap;
use std::fmt;

pub use outflow_core::Secret;
use outflow_core::{Error, Format, Template};
use rdkafka::config::ClientConfig;
use serde::{Deserialize, Deserializer};

/// Default topic template: one topic per aggregate type, as Debezium's outbox router does.
pub const DEFAULT_TOPIC: &str = "outbox.event.{aggregate_type}";
/// Default key template: events of one aggregate share a partition and keep their order.
pub const DEFAULT_KEY: &str = "{aggregate_id}";
/// Default delivery timeout: long enough to ride out a broker restart, short enough that a
/// broker that stays down surfaces as a transient error the pipeline retries and reports.
pub const DEFAULT_MESSAGE_TIMEOUT_MS: u64 = 30_000;
/// Default linger: librdkafka's own default, a small wait that lets batches fill.
pub const DEFAULT_LINGER_MS: u64 = 5;
/// Default transaction timeout: well above the delivery timeout, so that a transaction is
/// not aborted by the broker while its messages are still being retried.
pub const DEFAULT_TRANSACTION_TIMEOUT_MS: u64 = 60_000;
/// How long metadata requests (topic checks, `check`) wait for the brokers.
pub const DEFAULT_METADATA_TIMEOUT_MS: u64 = 10_000;

/// Configuration of the Kafka sink (`type = "kafka"` in a pipeline file).
///
/// ```toml
/// [pipelines.orders.sink]
/// type = "kafka"
/// brokers = "127.0.0.1:9092"
/// topic = "outbox.event.{aggregate_type}"
/// key = "{aggregate_id}"
/// format = "envelope"
/// compression = "lz4"
/// properties = { "client.id" = "outflow-orders" }
/// ```
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, `host:port`: a comma-separated string or a list.
    #[serde(deserialize_with = "brokers_list")]
    pub brokers: Vec<String>,
    /// Topic template. Placeholders: `{aggregate_type}`, `{aggregate_id}`,
    /// `{event_type}`, `{collection}`, `{pipeline}`, `{op}`.
    #[serde(default = "default_topic")]
    pub topic: Template,
    /// Message key template; events with the same key go to the same partition and keep
    /// their order.
    #[serde(default = "default_key")]
    pub key: Template,
    /// Wire format: `envelope`, `payload`, `cloudevents` (structured) or
    /// `cloudevents-binary` (`ce_` headers, as the CloudEvents Kafka binding prescribes).
    #[serde(default)]
    pub format: Format,
    /// Compression of record batches: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default)]
    pub compression: Compression,
    /// How long the producer waits for more messages before sending a batch
    /// (`linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Largest record batch in bytes (`batch.size`); librdkafka's default when unset.
    #[serde(default)]
    pub batch_size: Option<u64>,
    /// Most messages in one record batch (`batch.num.messages`); librdkafka's default
    /// when unset.
    #[serde(default)]
    pub batch_num_messages: Option<u64>,
    /// Largest message the producer accepts, in bytes (`message.max.bytes`); larger
    /// events are rejected as per-event errors. librdkafka's default (1000000) when
    /// unset. The broker and topic limits apply as well.
    #[serde(default)]
    pub message_max_bytes: Option<u64>,
    /// How long a message may wait for its delivery report, retries included
    /// (`message.timeout.ms`). When it runs out (a broker that is down) the batch fails
    /// with a transient error and the pipeline sends it again.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// How long metadata requests (the topic check before the first send to a topic,
    /// `outflow check`) wait for the brokers.
    #[serde(default = "default_metadata_timeout_ms")]
    pub metadata_timeout_ms: u64,
    /// Let the broker create missing topics when the sink first writes to them (the
    /// broker must allow it too: `auto.create.topics.enable`). When false, a missing
    /// topic stops the pipeline with a message saying how to create it.
    #[serde(default)]
    pub allow_auto_create_topics: bool,
    /// Transactional id. When set, every batch is written in one Kafka transaction, so
    /// `read_committed` consumers see a batch whole or not at all. Must be unique per
    /// running pipeline.
    #[serde(default)]
    pub transactional_id: Option<String>,
    /// Transaction timeout (`transaction.timeout.ms`), used with `transactional_id`.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl` (`security.protocol`).
    #[serde(default)]
    pub security_protocol: Option<SecurityProtocol>,
    /// SASL mechanism: `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `GSSAPI` or
    /// `OAUTHBEARER` (`sasl.mechanism`).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name (`sasl.username`).
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password (`sasl.password`); never printed.
    #[serde(default)]
    pub sasl_password: Option<Secret>,
    /// File of CA certificates to verify the brokers with (`ssl.ca.location`).
    #[serde(default)]
    pub ssl_ca_location: Option<String>,
    /// Client certificate file for mutual TLS (`ssl.certificate.location`).
    #[serde(default)]
    pub ssl_certificate_location: Option<String>,
    /// Client private key file for mutual TLS (`ssl.key.location`).
    #[serde(default)]
    pub ssl_key_location: Option<String>,
    /// Password of the client private key (`ssl.key.password`); never printed.
    #[serde(default)]
    pub ssl_key_password: Option<Secret>,
    /// Any other librdkafka property, name to value, e.g.
    /// `{ "client.id" = "outflow", "sasl.kerberos.service.name" = "kafka" }`. The
    /// properties the sink owns for its guarantees (`enable.idempotence`, `acks`, ...) and
    /// those with a typed key above are refused here.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> Template {
    Template::parse(DEFAULT_TOPIC).expect("the default topic template parses")
}

fn default_key() -> Template {
    Template::parse(DEFAULT_KEY).expect("the default key template parses")
}

fn default_linger_ms() -> u64 {
    DEFAULT_LINGER_MS
}

fn default_message_timeout_ms() -> u64 {
    DEFAULT_MESSAGE_TIMEOUT_MS
}

fn default_transaction_timeout_ms() -> u64 {
    DEFAULT_TRANSACTION_TIMEOUT_MS
}

fn default_metadata_timeout_ms() -> u64 {
    DEFAULT_METADATA_TIMEOUT_MS
}

fn brokers_list<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Brokers {
        One(String),
        Many(Vec<String>),
    }
    let list = match Brokers::deserialize(deserializer)? {
        Brokers::One(text) => text.split(',').map(|b| b.trim().to_string()).collect(),
        Brokers::Many(list) => list.into_iter().map(|b| b.trim().to_string()).collect(),
    };
    Ok(list)
}

/// Record batch compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// No compression (librdkafka's default).
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

impl Compression {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// How the sink talks to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL authentication without TLS.
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The librdkafka name.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }
}

/// Properties the sink sets itself. Each is either part of its guarantees or has a typed
/// key; `properties` may not set them.
const OWNED_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "use the `brokers` key"),
    ("metadata.broker.list", "use the `brokers` key"),
    (
        "enable.idempotence",
        "the sink always enables the idempotent producer, which keeps per-key order \
         across retries",
    ),
    (
        "acks",
        "the sink always uses acks=all: an event is acknowledged only once every in-sync \
         replica has it",
    ),
    (
        "request.required.acks",
        "the sink always uses acks=all: an event is acknowledged only once every in-sync \
         replica has it",
    ),
    (
        "enable.gapless.guarantee",
        "the sink retries failed batches itself; a gapless producer would stop for good",
    ),
    ("compression.type", "use the `compression` key"),
    ("compression.codec", "use the `compression` key"),
    ("linger.ms", "use the `linger_ms` key"),
    ("queue.buffering.max.ms", "use the `linger_ms` key"),
    ("batch.size", "use the `batch_size` key"),
    ("batch.num.messages", "use the `batch_num_messages` key"),
    ("message.max.bytes", "use the `message_max_bytes` key"),
    ("message.timeout.ms", "use the `message_timeout_ms` key"),
    ("delivery.timeout.ms", "use the `message_timeout_ms` key"),
    (
        "allow.auto.create.topics",
        "use the `allow_auto_create_topics` key",
    ),
    ("transactional.id", "use the `transactional_id` key"),
    (
        "transaction.timeout.ms",
        "use the `transaction_timeout_ms` key",
    ),
    ("security.protocol", "use the `security_protocol` key"),
    ("sasl.mechanism", "use the `sasl_mechanism` key"),
    ("sasl.mechanisms", "use the `sasl_mechanism` key"),
    ("sasl.username", "use the `sasl_username` key"),
    ("sasl.password", "use the `sasl_password` key"),
    ("ssl.ca.location", "use the `ssl_ca_location` key"),
    (
        "ssl.certificate.location",
        "use the `ssl_certificate_location` key",
    ),
    ("ssl.key.location", "use the `ssl_key_location` key"),
    ("ssl.key.password", "use the `ssl_key_password` key"),
];

impl KafkaConfig {
    /// A configuration with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        KafkaConfig {
            brokers: brokers
                .into()
                .split(',')
                .map(|b| b.trim().to_string())
                .collect(),
            topic: default_topic(),
            key: default_key(),
            format: Format::default(),
            compression: Compression::default(),
            linger_ms: DEFAULT_LINGER_MS,
            batch_size: None,
            batch_num_messages: None,
            message_max_bytes: None,
            message_timeout_ms: DEFAULT_MESSAGE_TIMEOUT_MS,
            metadata_timeout_ms: DEFAULT_METADATA_TIMEOUT_MS,
            allow_auto_create_topics: false,
            transactional_id: None,
            transaction_timeout_ms: DEFAULT_TRANSACTION_TIMEOUT_MS,
            security_protocol: None,
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: None,
            properties: BTreeMap::new(),
        }
    }

    /// Checks the configuration without connecting: broker addresses, templates, and
    /// every librdkafka property (unknown names and bad values are fatal errors naming
    /// the property).
    pub fn validate(&self) -> Result<(), Error> {
        self.producer_config().map(|_| ())
    }

    /// The librdkafka configuration of the producer, validated by librdkafka.
    pub(crate) fn producer_config(&self) -> Result<ClientConfig, Error> {
        self.check_keys()?;
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers.join(","))
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", self.compression.as_str())
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.message_timeout_ms.to_string())
            .set(
                "allow.auto.create.topics",
                self.allow_auto_create_topics.to_string(),
            );
        if let Some(v) = self.batch_size {
            config.set("batch.size", v.to_string());
        }
        if let Some(v) = self.batch_num_messages {
            config.set("batch.num.messages", v.to_string());
        }
        if let Some(v) = self.message_max_bytes {
            config.set("message.max.bytes", v.to_string());
        }
        if let Some(id) = &self.transactional_id {
            config.set("transactional.id", id).set(
                "transaction.timeout.ms",
                self.transaction_timeout_ms.to_string(),
            );
        }
        self.set_security(&mut config);
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        check_native(&config)?;
        Ok(config)
    }

    /// The librdkafka configuration of a metadata-only client (for `check`), with the same
    /// connection and security settings as the producer.
    pub(crate) fn metadata_config(&self) -> Result<ClientConfig, Error> {
        self.check_keys()?;
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", self.brokers.join(",")).set(
            "allow.auto.create.topics",
            self.allow_auto_create_topics.to_string(),
        );
        self.set_security(&mut config);
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        check_native(&config)?;
        Ok(config)
    }

    fn set_security(&self, config: &mut ClientConfig) {
        if let Some(p) = self.security_protocol {
            config.set("security.protocol", p.as_str());
        }
        if let Some(v) = &self.sasl_mechanism {
            config.set("sasl.mechanism", v);
        }
        if let Some(v) = &self.sasl_username {
            config.set("sasl.username", v);
        }
        if let Some(v) = &self.sasl_password {
            config.set("sasl.password", v.expose());
        }
        if let Some(v) = &self.ssl_ca_location {
            config.set("ssl.ca.location", v);
        }
        if let Some(v) = &self.ssl_certificate_location {
            config.set("ssl.certificate.location", v);
        }
        if let Some(v) = &self.ssl_key_location {
            config.set("ssl.key.location", v);
        }
        if let Some(v) = &self.ssl_key_password {
            config.set("ssl.key.password", v.expose());
        }
    }

    fn check_keys(&self) -> Result<(), Error> {
        if self.brokers.is_empty() || self.brokers.iter().any(|b| b.is_empty()) {
            return Err(Error::fatal(format!(
                "kafka sink: `brokers` has an empty entry ({:?}); give host:port pairs, e.g. \
                 \"127.0.0.1:9092\"",
                self.brokers
            )));
        }
        for broker in &self.brokers {
            let port = broker.rsplit_once(':').map(|(_, p)| p);
            if !matches!(port, Some(p) if p.parse::<u16>().is_ok()) {
                return Err(Error::fatal(format!(
                    "kafka sink: broker {broker:?} in `brokers` has no port; write host:port, \
                     e.g. \"{broker}:9092\""
                )));
            }
        }
        if self.topic.as_str().is_empty() {
            return Err(Error::fatal(
                "kafka sink: `topic` is empty; give a topic name or a template such as \
                 \"outbox.event.{aggregate_type}\"",
            ));
        }
        if self.topic.is_constant() {
            if let Err(why) = crate::sink::check_topic_name(self.topic.as_str()) {
                return Err(Error::fatal(format!("kafka sink: `topic`: {why}")));
            }
        }
        if self.message_timeout_ms == 0 {
            return Err(Error::fatal(
                "kafka sink: `message_timeout_ms` is 0, which librdkafka reads as \"wait \
                 forever\"; a broker that is down would then never surface; give a finite \
                 timeout such as 30000",
            ));
        }
        if self.metadata_timeout_ms == 0 {
            return Err(Error::fatal(
                "kafka sink: `metadata_timeout_ms` must be above 0, e.g. 10000",
            ));
        }
        if let Some(id) = &self.transactional_id {
            if id.trim().is_empty() {
                return Err(Error::fatal(
                    "kafka sink: `transactional_id` is empty; give a name unique to this \
                     pipeline or remove the key",
                ));
            }
        }
        for name in self.properties.keys() {
            if let Some((_, why)) = OWNED_PROPERTIES.iter().find(|(n, _)| n == name) {
                return Err(Error::fatal(format!(
                    "kafka sink: property {name:?} cannot be set in `properties`: {why}"
                )));
            }
        }
        Ok(())
    }
}

/// Lets librdkafka check every property name and value without creating a client.
fn check_native(config: &ClientConfig) -> Result<(), Error> {
    config.create_native_config().map(|_| ()).map_err(|e| {
        let text = match &e {
            rdkafka::error::KafkaError::ClientConfig(_, message, name, _) => {
                format!("kafka sink: librdkafka property {name:?}: {message}")
            }
            other => format!("kafka sink: invalid librdkafka configuration: {other}"),
        };
        Error::fatal(format!(
            "{text}; fix the typed key or the entry in `properties` (see librdkafka's \
             CONFIGURATION.md for names and values)"
        ))
    })
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Property values may hold credentials (ssl.keystore.password, ...):
        // print their names only.
        let property_names: Vec<&str> = self.properties.keys().map(String::as_str).collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic.as_str())
            .field("key", &self.key.as_str())
            .field("format", &self.format)
            .field("compression", &self.compression)
            .field("linger_ms", &self.linger_ms)
            .field("batch_size", &self.batch_size)
            .field("batch_num_messages", &self.batch_num_messages)
            .field("message_max_bytes", &self.message_max_bytes)
            .field("message_timeout_ms", &self.message_timeout_ms)
            .field("metadata_timeout_ms", &self.metadata_timeout_ms)
            .field("allow_auto_create_topics", &self.allow_auto_create_topics)
            .field("transactional_id", &self.transactional_id)
            .field("transaction_timeout_ms", &self.transaction_timeout_ms)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_mechanism", &self.sasl_mechanism)
            .field("sasl_username", &self.sasl_username)
            .field("sasl_password", &self.sasl_password)
            .field("ssl_ca_location", &self.ssl_ca_location)
            .field("ssl_certificate_location", &self.ssl_certificate_location)
            .field("ssl_key_location", &self.ssl_key_location)
            .field("ssl_key_password", &self.ssl_key_password)
            .field("properties", &property_names)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use outflow_core::ErrorKind;

    use super::*;

    fn parse(text: &str) -> Result<KafkaConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn brokers_as_string_or_list_and_defaults() {
        let c = parse(r#"brokers = "a:9092, b:9093""#).unwrap();
        assert_eq!(c.brokers, vec!["a:9092", "b:9093"]);
        assert_eq!(c.topic.as_str(), DEFAULT_TOPIC);
        assert_eq!(c.key.as_str(), DEFAULT_KEY);
        assert_eq!(c.format, Format::Envelope);
        assert_eq!(c.message_timeout_ms, DEFAULT_MESSAGE_TIMEOUT_MS);
        assert!(!c.allow_auto_create_topics);
        c.validate().unwrap();

        let c = parse(
            r#"
            brokers = ["a:9092", "b:9093"]
            topic = "events.{event_type}"
            format = "cloudevents-binary"
            compression = "zstd"
            linger_ms = 20
            batch_size = 65536
            properties = { "client.id" = "me" }
            "#,
        )
        .unwrap();
        assert_eq!(c.brokers, vec!["a:9092", "b:9093"]);
        assert_eq!(c.format, Format::CloudEvents { binary: true });
        assert_eq!(c.compression, Compression::Zstd);
        let native = c.producer_config().unwrap();
        assert_eq!(native.get("compression.type"), Some("zstd"));
        assert_eq!(native.get("linger.ms"), Some("20"));
        assert_eq!(native.get("batch.size"), Some("65536"));
        assert_eq!(native.get("enable.idempotence"), Some("true"));
        assert_eq!(native.get("acks"), Some("all"));
        assert_eq!(native.get("client.id"), Some("me"));
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        let err = parse("brokers = \"a:1\"\nbroker = \"x\"").unwrap_err();
        assert!(err.to_string().contains("unknown field `broker`"), "{err}");
        let err = parse("brokers = \"a:1\"\ncompression = \"brotli\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `brotli`"),
            "{err}"
        );
        let err = parse("brokers = \"a:1\"\ntopic = \"t.{aggregate}\"").unwrap_err();
        assert!(
            err.to_string().contains("unknown placeholder {aggregate}"),
            "{err}"
        );
    }

    #[test]
    fn bad_property_names_and_values_are_fatal_and_named() {
        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.properties.insert("no.such.property".into(), "1".into());
        let err = c.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fatal);
        assert!(err.to_string().contains("\"no.such.property\""), "{err}");
        assert!(
            err.to_string().contains("No such configuration property"),
            "{err}"
        );

        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.properties
            .insert("socket.timeout.ms".into(), "soon".into());
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("\"socket.timeout.ms\""), "{err}");

        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.properties.insert("acks".into(), "1".into());
        let err = c.validate().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fatal);
        assert!(
            err.to_string().contains("property \"acks\" cannot be set"),
            "{err}"
        );

        let mut c = KafkaConfig::new("127.0.0.1:9092");
        c.properties.insert("linger.ms".into(), "1".into());
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("use the `linger_ms` key"), "{err}");
    }

    #[test]
    fn broker_addresses_and_timeouts_are_checked() {
        let err = KafkaConfig::new("127.0.0.1").validate().unwrap_err();
        assert!(err.to_string().contains("has no port"), "{err}");
        let err = KafkaConfig::new("a:1,").validate().unwrap_err();
        assert!(err.to_string().contains("empty entry"), "{err}");
        let mut c = KafkaConfig::new("a:1");
        c.message_timeout_ms = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("message_timeout_ms"));
        let mut c = KafkaConfig::new("a:1");
        c.topic = Template::parse("bad topic").unwrap();
        let err = c.validate().unwrap_err();
        assert!(err.to_string().contains("\"bad topic\""), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let c = parse(
            r#"
            brokers = "a:9092"
            security_protocol = "sasl_ssl"
            sasl_mechanism = "SCRAM-SHA-512"
            sasl_username = "outflow"
            sasl_password = "hunter2"
            properties = { "ssl.keystore.password" = "s3cr3t" }
            "#,
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        let native = c.producer_config().unwrap();
        assert_eq!(native.get("sasl.password"), Some("hunter2"));
        assert_eq!(native.get("security.protocol"), Some("sasl_ssl"));
    }
}
