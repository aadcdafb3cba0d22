//! The sink side of a pipeline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::{Envelope, Error, Result};

/// The outcome of a batch whose delivery finished: every event was durably
/// acknowledged except the ones listed, which can never be delivered.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// Events that were rejected for good, by index in the batch.
    pub rejected: Vec<Rejection>,
}

/// One event the sink can never deliver.
#[derive(Debug)]
pub struct Rejection {
    /// The event's index in its batch.
    pub index: usize,
    /// Why; of kind [`ErrorKind::PerEvent`](crate::ErrorKind::PerEvent).
    pub error: Error,
}

impl BatchOutcome {
    /// Every event was delivered.
    pub fn delivered() -> Self {
        BatchOutcome::default()
    }
}

/// A batch whose delivery has started, resolving once the sink knows its outcome.
pub type Pending = Pin<Box<dyn Future<Output = Result<BatchOutcome>> + Send + 'static>>;

/// A message system events are delivered to.
///
/// # Contract
///
/// - **Order.** The pipeline calls [`send`](Self::send) one batch at a time, in source
///   order, and may keep several returned [`Pending`] futures in flight. `send` must
///   fix the order of its batch relative to earlier batches before it returns (enqueue
///   to the producer, publish on the connection), so that events reach the destination
///   in the order `send` was called for each key or subject.
/// - **Acknowledgement.** A `Pending` resolves `Ok` only when every event not listed
///   in [`BatchOutcome::rejected`] is durably acknowledged by the destination (a
///   JetStream publish ack, a Kafka delivery report with `acks=all`, a 2xx answer,
///   an fsync). The pipeline commits source positions on that word alone.
/// - **Errors.** `Err` of kind transient means the batch's fate is unknown: the
///   pipeline sends it again (with the same event ids, so a destination that
///   deduplicates sees it once). Fatal stops the pipeline. Events that can never be
///   delivered are reported in the outcome, not as an `Err`.
/// - **Cancel safety.** Dropping a `Pending` abandons waiting for the outcome; the
///   pipeline then treats the batch as not acknowledged.
#[async_trait]
pub trait EventSink: Send + Sync {
    /// Starts delivering a batch and returns a future of its outcome.
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending>;

    /// Delivers one event to a dead-letter destination, with the reason it could not be
    /// delivered. Resolves once durably acknowledged.
    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()>;

    /// Waits for everything sent to be acknowledged and releases connections.
    async fn close(&self) -> Result<()> {
        Ok(())
    }
}
