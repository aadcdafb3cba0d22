//! How librdkafka's errors map to outflow's error kinds.
//!
//! librdkafka retries retriable broker errors itself until `message.timeout.ms` runs out;
//! what reaches a delivery report is final for that attempt. Three groups matter:
//!
//! - the event itself can never be written (too large, an invalid topic name, a record
//!   the broker refuses): per-event;
//! - nothing will work until an operator acts (missing topic, authorization, a producer
//!   fenced by another with the same transactional id, a fatal idempotence error):
//!   fatal;
//! - everything else (timeouts of a broker that is down, connection loss): transient,
//!   and the pipeline sends the batch again with the same event ids.

use outflow_core::Error;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// What the sink knows about the message an error is about.
pub(crate) struct MessageInfo<'a> {
    /// The rendered topic.
    pub(crate) topic: &'a str,
    /// Key, body and header bytes of the message.
    pub(crate) size: usize,
    /// The producer's `message.max.bytes`.
    pub(crate) limit: u64,
    /// Whether the broker may create missing topics.
    pub(crate) auto_create: bool,
}

/// The error for a message whose enqueue or delivery failed.
pub(crate) fn message_error(err: &KafkaError, info: &MessageInfo<'_>) -> Error {
    let Some(code) = err.rdkafka_error_code() else {
        return Error::transient(format!("kafka: producing to topic {:?} failed", info.topic))
            .with_source(err.clone());
    };
    let topic = info.topic;
    match code {
        RDKafkaErrorCode::MessageSizeTooLarge
        | RDKafkaErrorCode::MessageBatchTooLarge
        | RDKafkaErrorCode::InvalidMessageSize => Error::per_event(format!(
            "kafka: message of {} bytes for topic {topic:?} is too large: the producer limit \
             message.max.bytes is {} (`message_max_bytes`), and the broker's message.max.bytes \
             and the topic's max.message.bytes apply too",
            info.size, info.limit
        ))
        .with_source(err.clone()),
        RDKafkaErrorCode::InvalidTopic => Error::per_event(format!(
            "kafka: topic {topic:?} is not a valid topic name (use 1 to 249 characters of \
             a-z, A-Z, 0-9, '.', '_' and '-'); change the `topic` template or the event"
        ))
        .with_source(err.clone()),
        RDKafkaErrorCode::InvalidRecord => Error::per_event(format!(
            "kafka: the broker refused the record for topic {topic:?} as invalid"
        ))
        .with_source(err.clone()),
        RDKafkaErrorCode::UnknownTopic | RDKafkaErrorCode::UnknownTopicOrPartition => {
            missing_topic(topic, info.auto_create).with_source(err.clone())
        }
        RDKafkaErrorCode::TopicAuthorizationFailed => Error::fatal(format!(
            "kafka: not authorized to write to topic {topic:?}; grant the sink's principal \
             WRITE and DESCRIBE on the topic"
        ))
        .with_source(err.clone()),
        _ => client_error(err, &format!("producing to topic {topic:?}")),
    }
}

/// The error for a failed client-wide operation (metadata, transactions, flush).
pub(crate) fn client_error(err: &KafkaError, doing: &str) -> Error {
    let code = err.rdkafka_error_code();
    if let KafkaError::Transaction(txn) = err {
        if txn.is_fatal() {
            return Error::fatal(format!(
                "kafka: {doing}: the transactional producer failed for good; restart the \
                 pipeline (check that no other process uses the same `transactional_id`)"
            ))
            .with_source(err.clone());
        }
    }
    match code {
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::TransactionalIdAuthorizationFailed,
        ) => Error::fatal(format!(
            "kafka: {doing}: authentication or authorization failed; check \
             `security_protocol`, `sasl_mechanism`, `sasl_username`, `sasl_password` and the \
             principal's ACLs"
        ))
        .with_source(err.clone()),
        Some(RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch) => {
            Error::fatal(format!(
                "kafka: {doing}: the broker fenced this producer (a newer producer with the \
                 same id exists); with transactions, give every running pipeline its own \
                 `transactional_id`"
            ))
            .with_source(err.clone())
        }
        Some(RDKafkaErrorCode::Fatal) => Error::fatal(format!(
            "kafka: {doing}: the idempotent producer hit a fatal error and cannot go on \
             without risking order; restart the pipeline (nothing acknowledged is lost)"
        ))
        .with_source(err.clone()),
        Some(RDKafkaErrorCode::UnsupportedVersion | RDKafkaErrorCode::UnsupportedFeature) => {
            Error::fatal(format!(
                "kafka: {doing}: the broker does not support a feature the sink needs \
                 (idempotent or transactional producer); use a broker that does"
            ))
            .with_source(err.clone())
        }
        _ => Error::transient(format!("kafka: {doing} failed")).with_source(err.clone()),
    }
}

/// The fatal error for a topic that does not exist.
pub(crate) fn missing_topic(topic: &str, auto_create: bool) -> Error {
    if auto_create {
        Error::fatal(format!(
            "kafka: topic {topic:?} does not exist and the broker did not create it; create \
             it (kafka-topics.sh --create --topic {topic}) or enable \
             auto.create.topics.enable on the broker"
        ))
    } else {
        Error::fatal(format!(
            "kafka: topic {topic:?} does not exist; create it (kafka-topics.sh --create \
             --topic {topic}) or set `allow_auto_create_topics = true` in the sink to let \
             the broker create it"
        ))
    }
}

#[cfg(test)]
mod tests {
    use outflow_core::ErrorKind;

    use super::*;

    fn info(topic: &str) -> MessageInfo<'_> {
        MessageInfo {
            topic,
            size: 2_000_000,
            limit: 1_000_000,
            auto_create: false,
        }
    }

    #[test]
    fn kinds_follow_the_code() {
        let e = |code| message_error(&KafkaError::MessageProduction(code), &info("t"));
        let too_large = e(RDKafkaErrorCode::MessageSizeTooLarge);
        assert_eq!(too_large.kind(), ErrorKind::PerEvent);
        assert!(
            too_large.to_string().contains("2000000 bytes"),
            "{too_large}"
        );
        assert!(too_large
            .to_string()
            .contains("message.max.bytes is 1000000"));
        assert_eq!(
            e(RDKafkaErrorCode::InvalidTopic).kind(),
            ErrorKind::PerEvent
        );
        assert_eq!(
            e(RDKafkaErrorCode::MessageTimedOut).kind(),
            ErrorKind::Transient
        );
        assert_eq!(
            e(RDKafkaErrorCode::AllBrokersDown).kind(),
            ErrorKind::Transient
        );
        let missing = e(RDKafkaErrorCode::UnknownTopicOrPartition);
        assert_eq!(missing.kind(), ErrorKind::Fatal);
        assert!(
            missing.to_string().contains("allow_auto_create_topics"),
            "{missing}"
        );
        assert_eq!(e(RDKafkaErrorCode::Fatal).kind(), ErrorKind::Fatal);
        assert_eq!(
            e(RDKafkaErrorCode::SaslAuthenticationFailed).kind(),
            ErrorKind::Fatal
        );
        assert_eq!(e(RDKafkaErrorCode::ProducerFenced).kind(), ErrorKind::Fatal);
    }
}
