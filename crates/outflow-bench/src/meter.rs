//! A sink wrapper that counts acknowledged events, notes when a target count is reached,
//! and optionally records each event's commit-to-acknowledgement lag.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outflow_core::{Envelope, EventSink, Pending, Result, Timestamp};
use tokio::sync::watch;

/// Counts what the wrapped sink acknowledged.
#[derive(Clone)]
pub(crate) struct Meter {
    inner: Arc<dyn EventSink>,
    state: Arc<State>,
}

struct State {
    target: u64,
    acked: AtomicU64,
    started: OnceLock<Instant>,
    at_target: OnceLock<Duration>,
    reached: watch::Sender<bool>,
    /// `(commit time, lag)` in microseconds, when recording.
    lags: Option<Mutex<Vec<(i64, i64)>>>,
}

impl Meter {
    /// Wraps `inner`; the target is reached when `target` events were acknowledged.
    pub(crate) fn new(inner: Arc<dyn EventSink>, target: u64, record_lag: bool) -> Meter {
        let (reached, _) = watch::channel(false);
        Meter {
            inner,
            state: Arc::new(State {
                target,
                acked: AtomicU64::new(0),
                started: OnceLock::new(),
                at_target: OnceLock::new(),
                reached,
                lags: record_lag.then(|| Mutex::new(Vec::with_capacity(target as usize))),
            }),
        }
    }

    /// Turns `true` once the target is reached.
    pub(crate) fn reached(&self) -> watch::Receiver<bool> {
        self.state.reached.subscribe()
    }

    /// Sets the instant the measurement started.
    pub(crate) fn start_clock(&self, at: Instant) {
        let _ = self.state.started.set(at);
    }

    /// The target count.
    pub(crate) fn target(&self) -> u64 {
        self.state.target
    }

    /// Events acknowledged so far.
    pub(crate) fn acked(&self) -> u64 {
        self.state.acked.load(Ordering::Relaxed)
    }

    /// Time from the start to the acknowledgement that reached the target.
    pub(crate) fn elapsed_at_target(&self) -> Option<Duration> {
        self.state.at_target.get().copied()
    }

    /// Recorded lags in microseconds of the events committed at or after `from` (Unix
    /// microseconds).
    pub(crate) fn lags_after(&self, from: i64) -> Vec<i64> {
        let Some(lags) = &self.state.lags else {
            return Vec::new();
        };
        let lags = lags.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        lags.iter()
            .filter(|(commit, _)| *commit >= from)
            .map(|(_, lag)| *lag)
            .collect()
    }
}

impl State {
    fn record(&self, batch: &[Envelope], rejected: &[usize]) {
        let now = Timestamp::now().unix_micros();
        if let Some(lags) = &self.lags {
            let mut lags = lags.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            for (i, event) in batch.iter().enumerate() {
                if rejected.contains(&i) {
                    continue;
                }
                if let Some(commit) = event.source.commit_time {
                    lags.push((commit.unix_micros(), now - commit.unix_micros()));
                }
            }
        }
        let delivered = (batch.len() - rejected.len()) as u64;
        let total = self.acked.fetch_add(delivered, Ordering::Relaxed) + delivered;
        if total >= self.target && self.at_target.get().is_none() {
            if let Some(started) = self.started.get() {
                let _ = self.at_target.set(started.elapsed());
            }
            self.reached.send_replace(true);
        }
    }
}

#[async_trait]
impl EventSink for Meter {
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        let pending = self.inner.send(Arc::clone(&batch)).await?;
        let state = Arc::clone(&self.state);
        Ok(Box::pin(async move {
            let outcome = pending.await?;
            let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
            state.record(&batch, &rejected);
            Ok(outcome)
        }))
    }

    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()> {
        self.inner.dead_letter(destination, event, reason).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}
