//! The `generate` source: synthetic outbox-shaped events, for trying sinks and for
//! benchmarks without a database.

use std::time::Duration;

use async_trait::async_trait;
use outflow_core::{
    event_id_from_position, push_json_str, ChangeSource, Checkpoint, Envelope, Error, Op, RawJson,
    Result, SourceContext, SourceInfo, SourceItem, Timestamp,
};
use serde::Deserialize;
use tokio::time::Instant;
use tracing::info;

/// Checkpoint every this many events: a restart redelivers at most this many.
pub const DEFAULT_CHECKPOINT_EVERY: u64 = 100;
/// Distinct aggregate ids the events cycle through, so per-key order can be checked.
pub const DEFAULT_KEYS: u64 = 100;

/// Options of the `generate` source.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateConfig {
    /// Events to generate in all, counted across restarts; unlimited when absent.
    pub count: Option<u64>,
    /// Events per second; as fast as the sink takes them when absent.
    pub rate: Option<f64>,
    /// Distinct aggregate ids (`aggregate_id` cycles through `0..keys`).
    #[serde(default = "default_keys")]
    pub keys: u64,
    /// Bytes of filler text in each payload, to model larger events.
    #[serde(default)]
    pub payload_bytes: usize,
    /// Emit a checkpoint every this many events.
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
}

fn default_keys() -> u64 {
    DEFAULT_KEYS
}

fn default_checkpoint_every() -> u64 {
    DEFAULT_CHECKPOINT_EVERY
}

impl Default for GenerateConfig {
    fn default() -> Self {
        GenerateConfig {
            count: None,
            rate: None,
            keys: DEFAULT_KEYS,
            payload_bytes: 0,
            checkpoint_every: DEFAULT_CHECKPOINT_EVERY,
        }
    }
}

impl GenerateConfig {
    /// Checks the options, naming the one at fault.
    pub fn validate(&self) -> Result<()> {
        if let Some(rate) = self.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(Error::fatal(
                    "rate must be a positive number of events per second",
                ));
            }
        }
        if self.keys == 0 {
            return Err(Error::fatal("keys must be at least 1"));
        }
        if self.checkpoint_every == 0 {
            return Err(Error::fatal("checkpoint_every must be at least 1"));
        }
        Ok(())
    }
}

const AGGREGATE_TYPES: [&str; 3] = ["order", "customer", "invoice"];

/// Generates events numbered from 1; the position of event `n` is `n`, and a restart
/// continues after the stored position with the same ids.
#[derive(Debug)]
pub struct GenerateSource {
    config: GenerateConfig,
    filler: String,
}

impl GenerateSource {
    /// A source with these options.
    pub fn new(config: GenerateConfig) -> Self {
        let filler = "x".repeat(config.payload_bytes);
        GenerateSource { config, filler }
    }

    /// The event with sequence number `n` of a pipeline.
    pub fn event(&self, pipeline: &str, n: u64) -> Envelope {
        let position = n.to_string();
        let aggregate_type = AGGREGATE_TYPES[(n % 3) as usize];
        let aggregate_id = (n % self.config.keys).to_string();
        // {"aggregate":"<id>","filler":"xx…","seq":<n>}, written directly.
        let mut payload = String::with_capacity(48 + self.filler.len());
        payload.push_str("{\"aggregate\":");
        push_json_str(&mut payload, &aggregate_id);
        if !self.filler.is_empty() {
            payload.push_str(",\"filler\":");
            push_json_str(&mut payload, &self.filler);
        }
        payload.push_str(",\"seq\":");
        payload.push_str(itoa::Buffer::new().format(n));
        payload.push('}');
        let payload = RawJson::from_text_unchecked(payload);
        Envelope {
            id: event_id_from_position(pipeline, None, &position),
            op: Op::Insert,
            aggregate_type: aggregate_type.to_string(),
            aggregate_id,
            event_type: "Generated".to_string(),
            payload,
            key: None,
            before: None,
            after: None,
            headers: Default::default(),
            source: SourceInfo {
                connector: "generate".to_string(),
                pipeline: pipeline.to_string(),
                database: "generate".to_string(),
                collection: "generate".to_string(),
                partition: None,
                position,
                txid: None,
                commit_time: Some(Timestamp::now()),
                unchanged_columns: Vec::new(),
            },
        }
    }
}

#[async_trait]
impl ChangeSource for GenerateSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<()> {
        let start = match ctx.start_positions().get("") {
            Some(text) => text.parse::<u64>().map_err(|_| {
                Error::fatal(format!(
                    "stored position {text:?} is not a generate position; delete the \
                     pipeline's checkpoint to start over"
                ))
            })?,
            None => 0,
        };
        if start > 0 {
            info!(after = start, "generate resuming");
        }
        let pipeline = ctx.pipeline().to_string();
        ctx.set_ready();
        let began = Instant::now();
        let mut n = start;
        loop {
            if self.config.count.is_some_and(|count| n >= count) {
                ctx.emit(SourceItem::Checkpoint(Checkpoint::new(n.to_string())))
                    .await?;
                return Ok(());
            }
            if let Some(rate) = self.config.rate {
                let due = began + Duration::from_secs_f64((n - start) as f64 / rate);
                tokio::select! {
                    _ = tokio::time::sleep_until(due) => {}
                    _ = ctx.shutdown_requested() => return Ok(()),
                }
            }
            n += 1;
            let event = self.event(&pipeline, n);
            tokio::select! {
                permit = ctx.reserve() => permit?.send(SourceItem::Event(Box::new(event))),
                _ = ctx.shutdown_requested() => return Ok(()),
            }
            if n % self.config.checkpoint_every == 0 {
                ctx.emit(SourceItem::Checkpoint(Checkpoint::new(n.to_string())))
                    .await?;
            }
        }
    }
}
