use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use outflow_core::{BatchOutcome, Envelope, EventSink, Pending, Result};
use serde::Deserialize;

/// The `blackhole` sink has no options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlackholeConfig {}

/// Counts events and drops them, acknowledging at once: the cost of everything but the
/// sink, for benchmarks.
#[derive(Debug, Default)]
pub struct BlackholeSink {
    events: AtomicU64,
}

impl BlackholeSink {
    /// A new sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Events received so far.
    pub fn count(&self) -> u64 {
        self.events.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl EventSink for BlackholeSink {
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        self.events.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Ok(Box::pin(std::future::ready(Ok(BatchOutcome::delivered()))))
    }

    async fn dead_letter(
        &self,
        _destination: &str,
        _event: &Envelope,
        _reason: &str,
    ) -> Result<()> {
        Ok(())
    }
}
