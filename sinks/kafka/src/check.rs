//! `outflow check` for the Kafka sink: connect, read metadata, verify the topic.

use std::time::Duration;

use outflow_core::{Error, Result};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{BaseProducer, Producer};

use crate::config::KafkaConfig;
use crate::error::{client_error, missing_topic};
use crate::sink::check_topic_name;

/// Connects to the brokers, reads the cluster metadata and checks the topic: that it exists
/// when the `topic` template is constant (or that auto-creation is enabled), otherwise
/// which existing topics the template may write to. Returns one line per verified fact.
///
/// Errors: transient when the brokers cannot be reached, fatal for bad configuration, a
/// missing topic or failed authentication.
pub async fn check(config: &KafkaConfig) -> Result<Vec<String>> {
    let client_config = config.metadata_config()?;
    let client: BaseProducer = client_config.create().map_err(|e| {
        Error::fatal(format!(
            "kafka sink: cannot create a client: {e}; fix the sink configuration"
        ))
    })?;
    let timeout = Duration::from_millis(config.metadata_timeout_ms);
    let brokers = config.brokers.join(",");
    let metadata = tokio::task::spawn_blocking(move || {
        let metadata = client.client().fetch_metadata(None, timeout)?;
        let brokers: Vec<String> = metadata
            .brokers()
            .iter()
            .map(|b| format!("{} at {}:{}", b.id(), b.host(), b.port()))
            .collect();
        let topics: Vec<(String, Option<RDKafkaErrorCode>, usize)> = metadata
            .topics()
            .iter()
            .map(|t| {
                (
                    t.name().to_string(),
                    t.error().map(RDKafkaErrorCode::from),
                    t.partitions().len(),
                )
            })
            .collect();
        Ok::<_, rdkafka::error::KafkaError>((brokers, topics))
    })
    .await
    .map_err(|e| Error::transient("kafka: the metadata request was cancelled").with_source(e))?;
    let (broker_list, topics) = metadata.map_err(|e| {
        let err = client_error(&e, "fetching cluster metadata");
        if err.kind() == outflow_core::ErrorKind::Transient {
            Error::transient(format!(
                "kafka: cannot reach the brokers {brokers} within {} ms; check `brokers` and \
                 that the brokers are up",
                timeout.as_millis()
            ))
            .with_source(e)
        } else {
            err
        }
    })?;
    let mut report = vec![format!(
        "kafka brokers reachable: {} broker(s): {}",
        broker_list.len(),
        broker_list.join(", ")
    )];
    let template = &config.topic;
    if template.is_constant() {
        let topic = template.as_str();
        if let Err(reason) = check_topic_name(topic) {
            return Err(Error::fatal(format!("kafka sink: `topic`: {reason}")));
        }
        match topics.iter().find(|(name, _, _)| name == topic) {
            Some((_, None, partitions)) if *partitions > 0 => {
                report.push(format!(
                    "kafka topic {topic:?} exists with {partitions} partition(s)"
                ));
            }
            _ if config.allow_auto_create_topics => report.push(format!(
                "kafka topic {topic:?} does not exist yet; allow_auto_create_topics is set, so \
                 the broker creates it on first write if its auto.create.topics.enable allows"
            )),
            _ => return Err(missing_topic(topic, false)),
        }
    } else {
        let prefix = template.wildcard("\u{0}");
        let fixed: Vec<&str> = prefix.split('\u{0}').collect();
        let matching: Vec<&str> = topics
            .iter()
            .map(|(name, _, _)| name.as_str())
            .filter(|name| {
                name.starts_with(fixed.first().copied().unwrap_or(""))
                    && name.ends_with(fixed.last().copied().unwrap_or(""))
            })
            .collect();
        report.push(format!(
            "kafka topic template {:?} renders per event; each topic is checked before the \
             first send to it; existing topics it may match: {}",
            template.as_str(),
            if matching.is_empty() {
                "none".to_string()
            } else {
                matching.join(", ")
            }
        ));
        report.push(if config.allow_auto_create_topics {
            "kafka allow_auto_create_topics is set: missing topics are created by the broker \
             if its auto.create.topics.enable allows"
                .to_string()
        } else {
            "kafka allow_auto_create_topics is not set: an event for a missing topic stops the \
             pipeline"
                .to_string()
        });
    }
    if let Some(id) = &config.transactional_id {
        report.push(format!(
            "kafka transactional mode with transactional_id {id:?}"
        ));
    }
    Ok(report)
}
