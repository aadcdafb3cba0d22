//! Every source and sink this binary knows, in one place, each behind its cargo
//! feature.

use std::sync::Arc;

use outflow_core::{ChangeSource, Error, ErrorKind, EventSink};
use outflow_pipeline::sinks::{
    BlackholeConfig, BlackholeSink, FileSink, FileSinkConfig, StdoutConfig, StdoutSink,
};
use outflow_pipeline::{Backoff, GenerateConfig, GenerateSource, RetrySettings};
use tracing::warn;

use crate::config::{options, TypedError};

/// Source types compiled into this binary.
pub(crate) const SOURCE_TYPES: &[&str] = &[
    "generate",
    #[cfg(feature = "postgres")]
    "postgres",
];

/// Sink types compiled into this binary.
pub(crate) const SINK_TYPES: &[&str] = &[
    "stdout",
    "file",
    "blackhole",
    #[cfg(feature = "nats")]
    "nats",
    #[cfg(feature = "kafka")]
    "kafka",
];

/// Types that exist as cargo features, compiled in or not.
const FEATURE_TYPES: &[&str] = &["postgres", "nats", "kafka"];

fn unknown(role: &str, kind: &str, known: &[&str]) -> TypedError {
    let list = known
        .iter()
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if FEATURE_TYPES.contains(&kind) {
        TypedError::UnknownType(format!(
            "{role} type `{kind}` is not built into this outflow binary; rebuild with \
             `--features {kind}` (built in: {list})"
        ))
    } else {
        TypedError::UnknownType(format!(
            "unknown {role} type `{kind}`; expected one of {list}"
        ))
    }
}

/// A source's type and options.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // read once per pipeline at start
pub(crate) enum SourceSpec {
    Generate(GenerateConfig),
    #[cfg(feature = "postgres")]
    Postgres(outflow_postgres::PostgresConfig),
}

impl SourceSpec {
    /// Reads a source table (without its `type` key).
    pub(crate) fn parse(kind: &str, value: toml::Value) -> Result<Self, TypedError> {
        match kind {
            "generate" => options(value, GenerateConfig::validate).map(SourceSpec::Generate),
            #[cfg(feature = "postgres")]
            "postgres" => {
                options(value, outflow_postgres::PostgresConfig::validate).map(SourceSpec::Postgres)
            }
            other => Err(unknown("source", other, SOURCE_TYPES)),
        }
    }

    /// The source type.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SourceSpec::Generate(_) => "generate",
            #[cfg(feature = "postgres")]
            SourceSpec::Postgres(_) => "postgres",
        }
    }

    /// Connects and verifies prerequisites, describing what was checked.
    pub(crate) async fn check(&self) -> Result<Vec<String>, Error> {
        match self {
            SourceSpec::Generate(_) => Ok(vec!["generate needs nothing".to_string()]),
            #[cfg(feature = "postgres")]
            SourceSpec::Postgres(config) => outflow_postgres::check(config).await,
        }
    }

    /// The source, ready to run.
    pub(crate) fn build(self, pipeline: &str) -> Result<Box<dyn ChangeSource>, Error> {
        let _ = pipeline;
        Ok(match self {
            SourceSpec::Generate(config) => Box::new(GenerateSource::new(config)),
            #[cfg(feature = "postgres")]
            SourceSpec::Postgres(config) => {
                Box::new(outflow_postgres::PostgresSource::new(config, pipeline)?)
            }
        })
    }
}

/// A sink's type and options.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // read once per pipeline at start
pub(crate) enum SinkSpec {
    Stdout(StdoutConfig),
    File(FileSinkConfig),
    Blackhole(BlackholeConfig),
    #[cfg(feature = "nats")]
    Nats(outflow_sink_nats::NatsConfig),
    #[cfg(feature = "kafka")]
    Kafka(outflow_sink_kafka::KafkaConfig),
}

impl Default for SinkSpec {
    fn default() -> Self {
        SinkSpec::Stdout(StdoutConfig::default())
    }
}

impl SinkSpec {
    /// Reads a sink table (without its `type` key).
    pub(crate) fn parse(kind: &str, value: toml::Value) -> Result<Self, TypedError> {
        match kind {
            "stdout" => options(value, |_: &StdoutConfig| Ok(())).map(SinkSpec::Stdout),
            "file" => options(value, |_: &FileSinkConfig| Ok(())).map(SinkSpec::File),
            "blackhole" => options(value, |_: &BlackholeConfig| Ok(())).map(SinkSpec::Blackhole),
            #[cfg(feature = "nats")]
            "nats" => options(value, outflow_sink_nats::NatsConfig::validate).map(SinkSpec::Nats),
            #[cfg(feature = "kafka")]
            "kafka" => {
                options(value, outflow_sink_kafka::KafkaConfig::validate).map(SinkSpec::Kafka)
            }
            other => Err(unknown("sink", other, SINK_TYPES)),
        }
    }

    /// The sink type.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Stdout(_) => "stdout",
            SinkSpec::File(_) => "file",
            SinkSpec::Blackhole(_) => "blackhole",
            #[cfg(feature = "nats")]
            SinkSpec::Nats(_) => "nats",
            #[cfg(feature = "kafka")]
            SinkSpec::Kafka(_) => "kafka",
        }
    }

    /// Connects and verifies prerequisites, describing what was checked.
    pub(crate) async fn check(&self) -> Result<Vec<String>, Error> {
        match self {
            SinkSpec::Stdout(_) | SinkSpec::Blackhole(_) => {
                Ok(vec![format!("{} needs nothing", self.kind())])
            }
            SinkSpec::File(config) => {
                FileSink::open(config.clone())?;
                Ok(vec![format!("{} is writable", config.path.display())])
            }
            #[cfg(feature = "nats")]
            SinkSpec::Nats(config) => outflow_sink_nats::check(config).await,
            #[cfg(feature = "kafka")]
            SinkSpec::Kafka(config) => outflow_sink_kafka::check(config).await,
        }
    }

    /// Connects the sink, retrying transient failures (an unreachable broker) with
    /// backoff until it answers or `stop` turns `true`.
    pub(crate) async fn connect(
        &self,
        pipeline: &str,
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<Arc<dyn EventSink>>, Error> {
        let mut backoff = Backoff::new(RetrySettings::default());
        loop {
            match self.connect_once(pipeline).await {
                Ok(sink) => return Ok(Some(sink)),
                Err(e) if e.kind() == ErrorKind::Transient => {
                    let delay = backoff.next_delay();
                    warn!(pipeline = %pipeline, sink = self.kind(), error = %e.chain(),
                        retry_in_ms = delay.as_millis() as u64, "sink not reachable; retrying");
                    let mut stop = stop.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return Ok(None),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_once(&self, pipeline: &str) -> Result<Arc<dyn EventSink>, Error> {
        let _ = pipeline;
        Ok(match self {
            SinkSpec::Stdout(config) => Arc::new(StdoutSink::new(config.clone())),
            SinkSpec::File(config) => Arc::new(FileSink::open(config.clone())?),
            SinkSpec::Blackhole(_) => Arc::new(BlackholeSink::new()),
            #[cfg(feature = "nats")]
            SinkSpec::Nats(config) => {
                Arc::new(outflow_sink_nats::NatsSink::connect(config.clone(), pipeline).await?)
            }
            #[cfg(feature = "kafka")]
            SinkSpec::Kafka(config) => {
                Arc::new(outflow_sink_kafka::KafkaSink::connect(config.clone(), pipeline).await?)
            }
        })
    }

    /// The sink named by a `--to` URL: `stdout`, `file:PATH`, `blackhole`,
    /// `nats://…`, `kafka://broker,…`, `http(s)://…`. `extra` adds options such as a
    /// format or a destination template.
    pub(crate) fn from_url(
        to: &str,
        extra: Vec<(&'static str, toml::Value)>,
    ) -> Result<Self, String> {
        let s = |v: &str| toml::Value::String(v.to_string());
        let (kind, mut entries): (&str, Vec<(&'static str, toml::Value)>) = match to {
            "stdout" | "-" => ("stdout", vec![]),
            "blackhole" => ("blackhole", vec![]),
            _ if to.starts_with("file:") => ("file", vec![("path", s(&to["file:".len()..]))]),
            _ if to.starts_with("nats://") || to.starts_with("tls://") => {
                ("nats", vec![("url", s(to))])
            }
            _ if to.starts_with("kafka://") => {
                ("kafka", vec![("brokers", s(&to["kafka://".len()..]))])
            }
            _ if to.starts_with("http://") || to.starts_with("https://") => {
                return Err(format!(
                    "--to {to}: the http sink is not built into this outflow binary yet; \
                     use stdout, file:PATH, blackhole, nats:// or kafka://"
                ))
            }
            _ => {
                return Err(format!(
                    "--to {to:?} is not a destination; use stdout, file:PATH, blackhole, \
                     nats://HOST:PORT, kafka://BROKER,… or http(s)://…"
                ))
            }
        };
        entries.extend(extra);
        let table = crate::config::table(entries);
        SinkSpec::parse(kind, table).map_err(|e| match e {
            TypedError::UnknownType(message) => message,
            TypedError::Invalid { path, message } if path.is_empty() => {
                format!("--to {to}: {message}")
            }
            TypedError::Invalid { path, message } => {
                format!("--to {to}: {}: {message}", path.join("."))
            }
        })
    }
}
