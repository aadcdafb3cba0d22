//! Kafka sink for outflow.
//!
//! Events go to Kafka (or any Kafka-protocol broker) through librdkafka, built from source
//! and linked statically. The producer is idempotent with `acks=all`; a batch is
//! acknowledged only when every message's delivery report succeeded, so a source position
//! is committed only after the brokers hold every event before it.
//!
//! - [`KafkaConfig`]: the `type = "kafka"` sink configuration; [`KafkaConfig::validate`]
//!   checks it without connecting.
//! - [`KafkaSink::connect`] builds the producer; [`KafkaSink`] implements
//!   [`outflow_core::EventSink`].
//! - [`check`] connects and verifies the brokers and the topic, for `outflow check`.
//!
//! # Guarantees
//!
//! - **Order per key.** A batch is enqueued in order before `send` returns, and the
//!   idempotent producer keeps that order within a partition across its own retries. The
//!   key template (default `{aggregate_id}`) picks the partition.
//! - **At least once.** Nothing is dropped: a full local queue is waited out, a broker that
//!   is down makes the batch fail with a transient error after `message_timeout_ms`, and
//!   the pipeline sends it again with the same event ids (in the `id` header), so
//!   consumers can deduplicate.
//! - **Transactions (optional).** With `transactional_id`, each batch is one Kafka
//!   transaction: `read_committed` consumers see it whole or not at all. This is not
//!   exactly-once end to end: the source position is not part of the Kafka transaction,
//!   so a crash between commit and checkpoint still redelivers the batch.
//!
//! See `docs/sinks/kafka.md` for every option and the failure behaviour.

mod check;
mod config;
mod error;
mod sink;

pub use check::check;
pub use config::{
    Compression, KafkaConfig, Secret, SecurityProtocol, DEFAULT_KEY, DEFAULT_LINGER_MS,
    DEFAULT_MESSAGE_TIMEOUT_MS, DEFAULT_METADATA_TIMEOUT_MS, DEFAULT_TOPIC,
    DEFAULT_TRANSACTION_TIMEOUT_MS,
};
pub use sink::KafkaSink;
