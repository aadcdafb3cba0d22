//! Checkpoint stores: where a pipeline keeps the positions it may resume from.
//!
//! A store is written only after the sink acknowledged every event before the stored
//! positions, so what it holds is always safe to resume from.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use outflow_core::{Checkpoints, Error, Result};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

/// Persists committed positions, per pipeline and partition.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// The positions stored for a pipeline; empty when it never committed.
    async fn load(&self, pipeline: &str) -> Result<Checkpoints>;
    /// Replaces the positions stored for a pipeline, durably, before returning.
    async fn save(&self, pipeline: &str, checkpoints: &Checkpoints) -> Result<()>;
}

/// Checkpoints in JSON files under a state directory, one per pipeline, each written to
/// a temporary file, fsynced, renamed over the old one, and the directory fsynced; a
/// crash at any instant leaves either the old or the new file whole.
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store under `dir`, which is created when missing.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        FileStore { dir: dir.into() }
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, pipeline: &str) -> PathBuf {
        self.dir.join(format!("{pipeline}.checkpoint.json"))
    }

    fn temp_path(&self, pipeline: &str) -> PathBuf {
        self.dir.join(format!(".{pipeline}.checkpoint.json.tmp"))
    }

    /// First half of a save: the new content in a fsynced temporary file.
    fn write_temp(&self, pipeline: &str, checkpoints: &Checkpoints) -> std::io::Result<PathBuf> {
        use std::io::Write;
        std::fs::create_dir_all(&self.dir)?;
        let temp = self.temp_path(pipeline);
        let mut file = std::fs::File::create(&temp)?;
        let body = serde_json::to_vec_pretty(checkpoints).map_err(std::io::Error::other)?;
        file.write_all(&body)?;
        file.sync_all()?;
        Ok(temp)
    }

    /// Second half: rename over the old file and fsync the directory.
    fn publish(&self, pipeline: &str, temp: &Path) -> std::io::Result<()> {
        std::fs::rename(temp, self.path(pipeline))?;
        std::fs::File::open(&self.dir)?.sync_all()
    }

    fn io_error(&self, action: &str, err: std::io::Error) -> Error {
        let message = format!("cannot {action} checkpoint in {}", self.dir.display());
        match err.kind() {
            std::io::ErrorKind::PermissionDenied => Error::fatal(format!(
                "{message}: permission denied; make the directory writable"
            ))
            .with_source(err),
            _ => Error::transient(message).with_source(err),
        }
    }
}

#[async_trait]
impl CheckpointStore for FileStore {
    async fn load(&self, pipeline: &str) -> Result<Checkpoints> {
        let path = self.path(pipeline);
        let store = self.clone();
        let pipeline = pipeline.to_string();
        tokio::task::spawn_blocking(move || match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::fatal(format!(
                    "checkpoint file {} is not valid JSON; restore it or delete it to start \
                     from the source's own position",
                    path.display()
                ))
                .with_source(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                debug!(pipeline = %pipeline, "no stored checkpoint");
                Ok(Checkpoints::new())
            }
            Err(e) => Err(store.io_error("read", e)),
        })
        .await
        .map_err(|e| Error::fatal("checkpoint load task failed").with_source(e))?
    }

    async fn save(&self, pipeline: &str, checkpoints: &Checkpoints) -> Result<()> {
        let store = self.clone();
        let pipeline = pipeline.to_string();
        let checkpoints = checkpoints.clone();
        tokio::task::spawn_blocking(move || {
            let temp = store
                .write_temp(&pipeline, &checkpoints)
                .map_err(|e| store.io_error("write", e))?;
            store
                .publish(&pipeline, &temp)
                .map_err(|e| store.io_error("rename", e))
        })
        .await
        .map_err(|e| Error::fatal("checkpoint save task failed").with_source(e))?
    }
}

/// The table the Postgres store creates when missing.
pub const POSTGRES_STORE_TABLE: &str = "outflow_checkpoints";

/// Checkpoints in a Postgres table, so several hosts can share them.
pub struct PostgresStore {
    url: String,
    table: String,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// A store in `table` (schema-qualified or not) of the database at `url`.
    pub fn new(url: impl Into<String>, table: impl Into<String>) -> Self {
        PostgresStore {
            url: url.into(),
            table: table.into(),
            client: Mutex::new(None),
        }
    }

    fn quoted_table(&self) -> String {
        self.table
            .split('.')
            .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(".")
    }

    async fn client(&self) -> Result<Arc<tokio_postgres::Client>> {
        let mut guard = self.client.lock().await;
        if let Some(client) = guard.as_ref() {
            if !client.is_closed() {
                return Ok(client.clone());
            }
            warn!("checkpoint store connection lost; reconnecting");
        }
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .map_err(|e| {
                Error::transient("cannot connect to the postgres checkpoint store").with_source(e)
            })?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                debug!(error = %e, "checkpoint store connection ended");
            }
        });
        let ddl = format!(
            "CREATE TABLE IF NOT EXISTS {} (pipeline text NOT NULL, partition text NOT NULL, \
             position text NOT NULL, updated_at timestamptz NOT NULL DEFAULT now(), \
             PRIMARY KEY (pipeline, partition))",
            self.quoted_table()
        );
        client
            .batch_execute(&ddl)
            .await
            .map_err(|e| pg_error(e, &self.table))?;
        info!(table = %self.table, "checkpoint table ready");
        let client = Arc::new(client);
        *guard = Some(client.clone());
        Ok(client)
    }
}

fn pg_error(e: tokio_postgres::Error, table: &str) -> Error {
    if let Some(db) = e.as_db_error() {
        let message = format!(
            "checkpoint store table {table}: {}; grant the user CREATE on the schema and \
             SELECT, INSERT, UPDATE on the table",
            db.message()
        );
        if db.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE {
            return Error::fatal(message).with_source(e);
        }
        return Error::transient(message).with_source(e);
    }
    Error::transient(format!("checkpoint store table {table}: connection failed")).with_source(e)
}

#[async_trait]
impl CheckpointStore for PostgresStore {
    async fn load(&self, pipeline: &str) -> Result<Checkpoints> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT partition, position FROM {} WHERE pipeline = $1",
            self.quoted_table()
        );
        let rows = client
            .query(&sql, &[&pipeline])
            .await
            .map_err(|e| pg_error(e, &self.table))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    async fn save(&self, pipeline: &str, checkpoints: &Checkpoints) -> Result<()> {
        let client = self.client().await?;
        let sql = format!(
            "INSERT INTO {} (pipeline, partition, position, updated_at) \
             SELECT $1, p, q, now() FROM unnest($2::text[], $3::text[]) AS t(p, q) \
             ON CONFLICT (pipeline, partition) DO UPDATE \
             SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
            self.quoted_table()
        );
        let partitions: Vec<&str> = checkpoints.keys().map(String::as_str).collect();
        let positions: Vec<&str> = checkpoints.values().map(String::as_str).collect();
        client
            .execute(&sql, &[&pipeline, &partitions, &positions])
            .await
            .map_err(|e| pg_error(e, &self.table))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(position: &str) -> Checkpoints {
        Checkpoints::from([(String::new(), position.to_string())])
    }

    #[tokio::test]
    async fn file_store_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("state"));
        assert!(store.load("orders").await.unwrap().is_empty());
        store.save("orders", &sample("0/16B3748")).await.unwrap();
        store.save("orders", &sample("0/16B3750")).await.unwrap();
        assert_eq!(store.load("orders").await.unwrap(), sample("0/16B3750"));
        assert!(store.load("billing").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn crash_between_write_and_rename_keeps_the_old_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        store.save("orders", &sample("0/1")).await.unwrap();
        // The process dies after the temporary file is written, before the rename.
        let temp = store.write_temp("orders", &sample("0/2")).unwrap();
        assert!(temp.exists());
        let restarted = FileStore::new(dir.path());
        assert_eq!(restarted.load("orders").await.unwrap(), sample("0/1"));
        // The next save replaces the stale temporary file and wins.
        restarted.save("orders", &sample("0/3")).await.unwrap();
        assert_eq!(restarted.load("orders").await.unwrap(), sample("0/3"));
        assert!(!temp.exists());
    }

    #[tokio::test]
    async fn torn_temporary_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        store.save("orders", &sample("0/1")).await.unwrap();
        std::fs::write(store.temp_path("orders"), b"{\"\": \"0/").unwrap();
        assert_eq!(store.load("orders").await.unwrap(), sample("0/1"));
    }

    #[tokio::test]
    async fn corrupt_checkpoint_file_is_fatal_and_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path());
        std::fs::write(store.path("orders"), b"not json").unwrap();
        let err = store.load("orders").await.unwrap_err();
        assert_eq!(err.kind(), outflow_core::ErrorKind::Fatal);
        assert!(
            err.to_string()
                .contains("is not valid JSON; restore it or delete it"),
            "{err}"
        );
    }
}
