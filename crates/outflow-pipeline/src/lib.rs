//! The outflow pipeline runner.
//!
//! A [`Pipeline`] joins one [`ChangeSource`](outflow_core::ChangeSource) to one
//! [`EventSink`](outflow_core::EventSink): it batches events (closed by count, bytes or
//! linger time), keeps a window of batches in flight, commits source positions strictly
//! in order and only after every earlier event was acknowledged, retries transient
//! errors with exponential backoff and jitter, routes undeliverable events by
//! `on_error`, and drains on shutdown.
//!
//! Built in: the sinks `stdout`, `file` and `blackhole`, the `generate` source, and the
//! checkpoint stores `file` and `postgres`.

pub mod generate;
pub mod memory;
mod runner;
pub mod settings;
pub mod sinks;
mod store;
mod supervisor;
mod threads;

pub use generate::{GenerateConfig, GenerateSource};
pub use runner::{Pipeline, RunReport};
pub use settings::{
    Backoff, BatchSettings, OnError, PipelineSettings, RetrySettings, DEFAULT_DEAD_LETTER,
};
pub use store::{CheckpointStore, FileStore, PostgresStore, POSTGRES_STORE_TABLE};
pub use supervisor::{run_pipelines, stop_on_signals};
pub use threads::{default_worker_threads, worker_threads};
