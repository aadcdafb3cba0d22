use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use outflow_core::{BatchOutcome, Envelope, Error, EventSink, Format, Pending, Result};
use serde::Deserialize;

/// Options of the `file` sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// The file events are appended to, one JSON line each; created when missing.
    pub path: PathBuf,
    /// Wire format of each line: `envelope` (default), `payload`, `cloudevents`.
    #[serde(default)]
    pub format: Format,
}

/// Appends one JSON line per event to a file and fsyncs it before acknowledging the
/// batch, so an acknowledged event survives a power loss. Dead letters are appended
/// to the same file as `{"dead_letter": {…}, "event": {…}}` lines.
#[derive(Debug)]
pub struct FileSink {
    format: Format,
    path: PathBuf,
    file: Arc<std::sync::Mutex<File>>,
}

impl FileSink {
    /// Opens (or creates) the file for appending.
    pub fn open(config: FileSinkConfig) -> Result<Self> {
        if let Some(parent) = config.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(&config.path, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|e| open_error(&config.path, e))?;
        Ok(FileSink {
            format: config.format,
            path: config.path,
            file: Arc::new(std::sync::Mutex::new(file)),
        })
    }

    async fn append(&self, bytes: Vec<u8>) -> Result<()> {
        let file = self.file.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
            file.write_all(&bytes)
                .and_then(|()| file.sync_data())
                .map_err(|e| {
                    let message = format!("cannot append to {}", path.display());
                    match e.kind() {
                        std::io::ErrorKind::PermissionDenied => Error::fatal(message),
                        _ => Error::transient(message),
                    }
                    .with_source(e)
                })
        })
        .await
        .map_err(|e| Error::fatal("file sink task failed").with_source(e))?
    }
}

fn open_error(path: &std::path::Path, e: std::io::Error) -> Error {
    Error::fatal(format!(
        "cannot open {} for appending; check that its directory exists and is writable",
        path.display()
    ))
    .with_source(e)
}

#[async_trait]
impl EventSink for FileSink {
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        let mut buf = Vec::with_capacity(batch.len() * 512);
        super::write_lines(&mut buf, self.format, &batch);
        // Written in call order; the fsync completes before the batch is acknowledged.
        self.append(buf).await?;
        Ok(Box::pin(std::future::ready(Ok(BatchOutcome::delivered()))))
    }

    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()> {
        let mut buf = Vec::new();
        super::write_dead_letter(&mut buf, destination, event, reason);
        self.append(buf).await
    }
}
