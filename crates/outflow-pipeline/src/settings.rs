//! Per-pipeline settings: batching, the in-flight window, error policy, retries.

use std::time::Duration;

use outflow_core::{duration, Error, Template};
use serde::Deserialize;

/// Events per batch: large enough to amortise a round trip, small enough that one
/// batch of typical outbox events stays well under a megabyte.
pub const DEFAULT_BATCH_MAX_EVENTS: usize = 512;
/// Bytes per batch: keeps a batch within common broker request limits (1 MiB).
pub const DEFAULT_BATCH_MAX_BYTES: usize = 1024 * 1024;
/// How long an incomplete batch waits for more events: low enough for interactive
/// latency, long enough to gather a burst.
pub const DEFAULT_BATCH_LINGER: Duration = Duration::from_millis(5);
/// Batches in flight at once: enough to hide a broker round trip behind the next send.
pub const DEFAULT_WINDOW: usize = 8;
/// Approximate bytes of sent, unacknowledged batches. 1 MiB lets a broker sink keep
/// about two batches of typical outbox events in flight: the NATS drain of a
/// 1,000,000-row transaction ran faster than with 512 KiB, while every sink's peak stayed
/// under the 64 MiB target (Kafka's did not at 2 MiB); see docs/benchmarks.md.
pub const DEFAULT_MAX_IN_FLIGHT_BYTES: usize = 1024 * 1024;
/// Items the source may queue ahead of batching. Every queued envelope counts against the
/// memory bound; 256 took 8-9 MiB off the peak of a 1,000,000-row drain compared with
/// 1,024, at the same throughput to blackhole, NATS and Kafka (docs/benchmarks.md).
pub const DEFAULT_INTAKE: usize = 256;
/// How long shutdown waits for in-flight acknowledgements.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// First retry delay after a transient error.
pub const DEFAULT_RETRY_INITIAL: Duration = Duration::from_millis(100);
/// Longest retry delay: a recovered broker is noticed within this.
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(30);
/// Longest time an acknowledged position waits before it is stored and confirmed to the
/// source: one fsync a second instead of one per batch, at the cost of redelivering up to
/// a second of events after a crash.
pub const DEFAULT_COMMIT_INTERVAL: Duration = Duration::from_secs(1);
/// Default dead-letter destination on the pipeline's own sink.
pub const DEFAULT_DEAD_LETTER: &str = "outflow.dlq.{pipeline}";

/// What to do with an event the sink can never deliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Stop the pipeline (the default: nothing is lost silently).
    #[default]
    Fail,
    /// Send the event to the dead-letter destination and go on.
    DeadLetter,
    /// Log it, count it, and go on.
    Skip,
}

/// Batching limits: a batch closes when any limit is reached.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchSettings {
    /// Most events in one batch.
    pub max_events: usize,
    /// Most bytes (approximate serialized size) in one batch.
    pub max_bytes: usize,
    /// Longest time an incomplete batch waits before it is sent.
    #[serde(deserialize_with = "duration::deserialize")]
    pub linger: Duration,
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_events: DEFAULT_BATCH_MAX_EVENTS,
            max_bytes: DEFAULT_BATCH_MAX_BYTES,
            linger: DEFAULT_BATCH_LINGER,
        }
    }
}

/// Retry policy for transient errors: exponential backoff with full jitter, forever.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySettings {
    /// First delay.
    #[serde(deserialize_with = "duration::deserialize")]
    pub initial: Duration,
    /// Longest delay.
    #[serde(deserialize_with = "duration::deserialize")]
    pub max: Duration,
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            initial: DEFAULT_RETRY_INITIAL,
            max: DEFAULT_RETRY_MAX,
        }
    }
}

/// How a pipeline runs, independent of its source and sink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Batching limits.
    pub batch: BatchSettings,
    /// Batches sent and not yet acknowledged, at most.
    pub window: usize,
    /// Approximate bytes (as for `batch.max_bytes`) of batches sent and not yet
    /// acknowledged, at most: no batch is sent while it would take them over this. One
    /// batch is always allowed in flight, so an event larger than this still moves.
    pub max_in_flight_bytes: usize,
    /// Items the source may queue ahead of batching.
    pub intake: usize,
    /// What to do with an event that can never be delivered.
    pub on_error: OnError,
    /// Where dead letters go on the pipeline's sink (a template).
    pub dead_letter: Template,
    /// How long shutdown waits for in-flight acknowledgements.
    #[serde(deserialize_with = "duration::deserialize")]
    pub shutdown_timeout: Duration,
    /// Longest time an acknowledged position waits before it is committed; `0` commits
    /// after every acknowledged batch.
    #[serde(deserialize_with = "duration::deserialize")]
    pub commit_interval: Duration,
    /// Retry policy for transient errors.
    pub retry: RetrySettings,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        PipelineSettings {
            batch: BatchSettings::default(),
            window: DEFAULT_WINDOW,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            intake: DEFAULT_INTAKE,
            on_error: OnError::Fail,
            dead_letter: Template::parse(DEFAULT_DEAD_LETTER).expect("the default parses"),
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            commit_interval: DEFAULT_COMMIT_INTERVAL,
            retry: RetrySettings::default(),
        }
    }
}

impl PipelineSettings {
    /// Checks the limits, naming the setting at fault.
    pub fn validate(&self) -> Result<(), Error> {
        let positive = [
            ("batch.max_events", self.batch.max_events),
            ("batch.max_bytes", self.batch.max_bytes),
            ("window", self.window),
            ("max_in_flight_bytes", self.max_in_flight_bytes),
            ("intake", self.intake),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(Error::fatal(format!("{name} must be at least 1")));
            }
        }
        if self.retry.initial.is_zero() || self.retry.initial > self.retry.max {
            return Err(Error::fatal(
                "retry.initial must be greater than zero and at most retry.max",
            ));
        }
        Ok(())
    }
}

/// Exponential backoff with full jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    settings: RetrySettings,
    attempt: u32,
}

impl Backoff {
    /// A backoff at its first attempt.
    pub fn new(settings: RetrySettings) -> Self {
        Backoff {
            settings,
            attempt: 0,
        }
    }

    /// The delay before the next attempt: uniformly random between half the capped
    /// exponential delay and the full delay.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .settings
            .initial
            .saturating_mul(1u32 << self.attempt.min(20));
        let cap = exp.min(self.settings.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
        cap.mul_f64(jitter)
    }

    /// Attempts made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// Back to the first attempt, after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let mut b = Backoff::new(RetrySettings {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        });
        let d1 = b.next_delay();
        assert!(
            d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100),
            "{d1:?}"
        );
        let d2 = b.next_delay();
        assert!(
            d2 >= Duration::from_millis(100) && d2 <= Duration::from_millis(200),
            "{d2:?}"
        );
        for _ in 0..40 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.attempts(), 0);
    }

    #[test]
    fn validation_names_the_setting() {
        let mut s = PipelineSettings {
            window: 0,
            ..Default::default()
        };
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "window must be at least 1"
        );
        s.window = 1;
        s.batch.max_events = 0;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "batch.max_events must be at least 1"
        );
    }
}
