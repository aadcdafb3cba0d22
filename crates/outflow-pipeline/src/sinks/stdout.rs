use std::sync::Arc;

use async_trait::async_trait;
use outflow_core::{BatchOutcome, Envelope, Error, EventSink, Format, Pending, Result};
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

/// Options of the `stdout` sink.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutConfig {
    /// Wire format of each line: `envelope` (default), `payload`, `cloudevents`.
    #[serde(default)]
    pub format: Format,
}

/// Writes one JSON line per event to standard output, flushed before the batch is
/// acknowledged. Dead letters are lines of the form
/// `{"dead_letter": {"destination": …, "reason": …}, "event": {…}}`.
#[derive(Debug)]
pub struct StdoutSink {
    format: Format,
    out: Mutex<tokio::io::Stdout>,
}

impl StdoutSink {
    /// A sink writing to this process's standard output.
    pub fn new(config: StdoutConfig) -> Self {
        StdoutSink {
            format: config.format,
            out: Mutex::new(tokio::io::stdout()),
        }
    }

    async fn write(&self, bytes: &[u8]) -> Result<()> {
        let mut out = self.out.lock().await;
        out.write_all(bytes).await.map_err(stdout_error)?;
        out.flush().await.map_err(stdout_error)
    }
}

fn stdout_error(e: std::io::Error) -> Error {
    // A closed pipe will not reopen: stop rather than retry forever.
    Error::fatal("cannot write to standard output").with_source(e)
}

#[async_trait]
impl EventSink for StdoutSink {
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        super::write_lines(&mut buf, self.format, &batch);
        self.write(&buf).await?;
        Ok(Box::pin(std::future::ready(Ok(BatchOutcome::delivered()))))
    }

    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()> {
        let mut buf = Vec::new();
        super::write_dead_letter(&mut buf, destination, event, reason);
        self.write(&buf).await
    }
}
