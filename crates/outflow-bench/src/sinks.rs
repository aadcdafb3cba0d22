//! The sinks a benchmark can deliver to, and the streams or topics each run creates and
//! removes again.

use std::sync::Arc;

use clap::{Args, ValueEnum};
use outflow_core::{Error, EventSink, Template, Timestamp};
use outflow_pipeline::sinks::BlackholeSink;
use outflow_sink_nats::{NatsConfig, NatsSink};

/// Which sink to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SinkKind {
    /// Counts and drops.
    Blackhole,
    /// NATS JetStream on a stream of the pipeline's own (`stream` set, so
    /// `exclusive_stream` by default): one publish ack per batch vouches for the batch.
    Nats,
    /// NATS JetStream on a stream shared with other writers (`exclusive_stream = false`):
    /// every publish acknowledged.
    #[value(name = "nats_shared")]
    NatsShared,
    /// The Kafka-protocol broker, `acks=all`.
    Kafka,
}

/// Sink options shared by the subcommands.
#[derive(Debug, Clone, Args)]
pub(crate) struct SinkArgs {
    /// The sink.
    #[arg(long = "sink", value_enum, default_value = "blackhole")]
    pub(crate) kind: SinkKind,
    /// NATS server URL.
    #[arg(long, env = "OUTFLOW_TEST_NATS_URL")]
    nats_url: Option<String>,
    /// Kafka-protocol bootstrap brokers.
    #[arg(long, env = "OUTFLOW_TEST_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// A name for this run's stream or topics; unique by default.
    #[arg(long)]
    name: Option<String>,
}

/// What to remove after a run.
pub(crate) enum Cleanup {
    None,
    NatsStream {
        url: String,
        stream: String,
    },
    #[cfg(feature = "kafka")]
    KafkaTopics {
        brokers: String,
        topics: Vec<String>,
    },
}

impl Cleanup {
    /// Removes the run's stream or topics; failures are logged, not fatal (the numbers
    /// are already measured).
    pub(crate) async fn run(self) {
        match self {
            Cleanup::None => {}
            Cleanup::NatsStream { url, stream } => match async_nats::connect(&url).await {
                Ok(client) => {
                    let js = async_nats::jetstream::new(client);
                    if let Err(e) = js.delete_stream(&stream).await {
                        tracing::warn!(stream = %stream, error = %e, "cannot delete the stream");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot connect to delete the stream"),
            },
            #[cfg(feature = "kafka")]
            Cleanup::KafkaTopics { brokers, topics } => {
                if let Err(e) = kafka::delete_topics(&brokers, &topics).await {
                    tracing::warn!(error = %e.chain(), "cannot delete the topics");
                }
            }
        }
    }
}

fn template(text: &str) -> Result<Template, Error> {
    Template::parse(text)
        .map_err(|e| Error::fatal(format!("template {text:?} does not parse")).with_source(e))
}

impl SinkArgs {
    /// Fixes the run's name, so that [`build`](Self::build) and
    /// [`receipts`](Self::receipts) use the same stream or topics.
    pub(crate) fn pin_name(&mut self) {
        if self.name.is_none() {
            self.name = Some(self.run_name());
        }
    }

    /// A consumer of what the sink delivers (none for blackhole), started before the
    /// sink publishes. Call [`pin_name`](Self::pin_name) first.
    pub(crate) async fn receipts(
        &self,
        aggregate_types: &str,
    ) -> Result<Option<crate::receipt::Receipts>, Error> {
        let name = self.run_name();
        match self.kind {
            SinkKind::Blackhole => Ok(None),
            SinkKind::Nats | SinkKind::NatsShared => {
                let url = self.nats_url.as_deref().ok_or_else(|| {
                    Error::fatal("--nats-url (or OUTFLOW_TEST_NATS_URL) is needed for nats")
                })?;
                crate::receipt::nats(url, format!("bench.{name}.>"))
                    .await
                    .map(Some)
            }
            #[cfg(feature = "kafka")]
            SinkKind::Kafka => {
                let brokers = self.kafka_brokers.as_deref().ok_or_else(|| {
                    Error::fatal("--kafka-brokers (or OUTFLOW_TEST_KAFKA_BROKERS) is needed")
                })?;
                let topics: Vec<String> = aggregate_types
                    .split(',')
                    .map(|t| format!("bench.{name}.{t}"))
                    .collect();
                crate::receipt::kafka(brokers, &topics, &format!("bench-{name}"))
                    .await
                    .map(Some)
            }
            #[cfg(not(feature = "kafka"))]
            SinkKind::Kafka => {
                let _ = aggregate_types;
                Err(Error::fatal(
                    "outflow-bench was built without the kafka feature",
                ))
            }
        }
    }

    fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "r{}x{}",
                std::process::id(),
                Timestamp::now().unix_micros() % 1_000_000_000
            )
        })
    }

    /// Connects the sink. `aggregate_types` (comma separated) are the aggregate types the
    /// run's events carry, for which Kafka topics are created beforehand.
    pub(crate) async fn build(
        &self,
        aggregate_types: &str,
    ) -> Result<(Arc<dyn EventSink>, Cleanup), Error> {
        let name = self.run_name();
        match self.kind {
            SinkKind::Blackhole => Ok((Arc::new(BlackholeSink::new()), Cleanup::None)),
            SinkKind::Nats | SinkKind::NatsShared => {
                let url = self.nats_url.clone().ok_or_else(|| {
                    Error::fatal("--nats-url (or OUTFLOW_TEST_NATS_URL) is needed for nats")
                })?;
                let stream = format!("BENCH_{name}");
                let mut config = NatsConfig::new(url.clone());
                config.subject = template(&format!("bench.{name}.{{aggregate_type}}"))?;
                config.stream = Some(stream.clone());
                config.exclusive_stream = Some(self.kind == SinkKind::Nats);
                let sink = NatsSink::connect(config, "bench").await?;
                Ok((Arc::new(sink), Cleanup::NatsStream { url, stream }))
            }
            #[cfg(feature = "kafka")]
            SinkKind::Kafka => {
                let brokers = self.kafka_brokers.clone().ok_or_else(|| {
                    Error::fatal("--kafka-brokers (or OUTFLOW_TEST_KAFKA_BROKERS) is needed")
                })?;
                let topics: Vec<String> = aggregate_types
                    .split(',')
                    .map(|t| format!("bench.{name}.{t}"))
                    .collect();
                kafka::create_topics(&brokers, &topics).await?;
                let mut config = outflow_sink_kafka::KafkaConfig::new(brokers.clone());
                config.topic = template(&format!("bench.{name}.{{aggregate_type}}"))?;
                let sink = outflow_sink_kafka::KafkaSink::connect(config, "bench").await?;
                Ok((Arc::new(sink), Cleanup::KafkaTopics { brokers, topics }))
            }
            #[cfg(not(feature = "kafka"))]
            SinkKind::Kafka => {
                let _ = (aggregate_types, &self.kafka_brokers);
                Err(Error::fatal(
                    "outflow-bench was built without the kafka feature",
                ))
            }
        }
    }
}

#[cfg(feature = "kafka")]
mod kafka {
    use std::time::Duration;

    use outflow_core::Error;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::ClientConfig;

    fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>, Error> {
        ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(|e| Error::fatal("cannot create a Kafka admin client").with_source(e))
    }

    fn options() -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)))
    }

    /// Creates one-partition topics.
    pub(super) async fn create_topics(brokers: &str, topics: &[String]) -> Result<(), Error> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
            .collect();
        let results = admin(brokers)?
            .create_topics(&new, &options())
            .await
            .map_err(|e| Error::fatal("cannot create the run's topics").with_source(e))?;
        for result in results {
            result.map_err(|(topic, code)| {
                Error::fatal(format!("cannot create topic {topic}: {code}"))
            })?;
        }
        Ok(())
    }

    /// Deletes topics.
    pub(super) async fn delete_topics(brokers: &str, topics: &[String]) -> Result<(), Error> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        admin(brokers)?
            .delete_topics(&names, &options())
            .await
            .map_err(|e| Error::transient("cannot delete the run's topics").with_source(e))?;
        Ok(())
    }
}
