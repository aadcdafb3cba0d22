//! The NATS sink of outflow.
//!
//! By default every event is published to JetStream with its id as `Nats-Msg-Id`, and a
//! batch is acknowledged only when every publish ack arrived: JetStream then holds each
//! event once (within the stream's duplicate window), in order per subject, and the
//! pipeline commits source positions on that word alone. Publishes are pipelined: a
//! batch is written to the connection message by message, and the acks are awaited
//! afterwards, while the next batch is already being published.
//!
//! Core NATS (`jetstream = false`) is available when explicitly chosen. It only flushes
//! messages to the server, which keeps nothing when no subscriber listens: delivery is
//! at most once, and the sink says so in its log when it starts.
//!
//! ```no_run
//! # async fn demo() -> Result<(), outflow_core::Error> {
//! use outflow_sink_nats::{NatsConfig, NatsSink};
//!
//! let mut config = NatsConfig::new("nats://127.0.0.1:4222");
//! config.stream = Some("OUTBOX".into()); // create the stream when missing
//! config.validate()?;
//! let sink = NatsSink::connect(config, "orders").await?;
//! # drop(sink);
//! # Ok(())
//! # }
//! ```
//!
//! | Failure | Kind |
//! |---|---|
//! | server unreachable at start, connection lost, no ack within `ack_timeout` | transient |
//! | event larger than the server's `max_payload` or the stream's `max_msg_size`, subject or header NATS cannot carry | per-event (in the batch outcome) |
//! | no stream captures a subject, JetStream disabled, credentials refused, TLS failure, bad configuration | fatal |

mod chain;
mod config;
mod encode;
mod sink;
mod stream;

pub use config::{
    NatsConfig, Secret, DEFAULT_ACK_TIMEOUT, DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_PENDING,
    DEFAULT_SUBJECT,
};
pub use sink::{check, NatsSink};
