//! Helpers shared by the integration tests: run a source against a real server and read
//! what it emits.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use outflow_core::{
    ChangeSource, Checkpoints, Envelope, Error, SourceContext, SourceHandle, SourceItem,
};
use outflow_postgres::{Mode, PostgresConfig, PostgresSource};
use tokio::task::JoinHandle;

/// How long a test waits for one item before failing.
pub const ITEM_TIMEOUT: Duration = Duration::from_secs(30);

/// A test configuration: unique slot and publication, quick status and reconnects.
pub fn config(url: &str, mode: Mode, tables: &[&str]) -> PostgresConfig {
    let mut c = PostgresConfig::new(url);
    c.slot = outflow_testkit::unique_name("slot");
    c.publication = outflow_testkit::unique_name("pub");
    c.mode = mode;
    c.tables = tables.iter().map(|t| t.to_string()).collect();
    c.status_interval = Duration::from_millis(500);
    c.reconnect_backoff_min = Duration::from_millis(100);
    c.reconnect_backoff_max = Duration::from_secs(1);
    c
}

/// A source running on its own task.
pub struct Running {
    pub handle: SourceHandle,
    pub task: Option<JoinHandle<Result<(), Error>>>,
}

pub fn start(config: PostgresConfig, pipeline: &str, capacity: usize) -> Running {
    start_at(config, pipeline, capacity, Checkpoints::new())
}

pub fn start_at(
    config: PostgresConfig,
    pipeline: &str,
    capacity: usize,
    positions: Checkpoints,
) -> Running {
    let (ctx, handle) = SourceContext::new(pipeline, capacity, positions);
    let mut source = PostgresSource::new(config, pipeline).expect("valid configuration");
    let task = tokio::spawn(async move { source.run(ctx).await });
    Running {
        handle,
        task: Some(task),
    }
}

impl Running {
    /// The next item; fails the test with the source's error if it stopped.
    pub async fn item(&mut self) -> SourceItem {
        match tokio::time::timeout(ITEM_TIMEOUT, self.handle.items.recv()).await {
            Ok(Some(item)) => item,
            Ok(None) => {
                let result = self
                    .task
                    .take()
                    .expect("task")
                    .await
                    .expect("task panicked");
                panic!("the source stopped: {:?}", result.map_err(|e| e.chain()));
            }
            Err(_) => panic!("no item from the source within {ITEM_TIMEOUT:?}"),
        }
    }

    /// The events of the next transaction that has any, and its checkpoint. Checkpoints
    /// with no event before them (idle positions, filtered transactions) are skipped.
    pub async fn next_tx(&mut self) -> (Vec<Envelope>, String) {
        let mut events = Vec::new();
        loop {
            match self.item().await {
                SourceItem::Event(e) => events.push(*e),
                SourceItem::Checkpoint(c) if !events.is_empty() => return (events, c.position),
                SourceItem::Checkpoint(_) => {}
            }
        }
    }

    /// The next `n` events, ignoring checkpoints.
    pub async fn events(&mut self, n: usize) -> Vec<Envelope> {
        let mut events = Vec::with_capacity(n);
        while events.len() < n {
            if let SourceItem::Event(e) = self.item().await {
                events.push(*e);
            }
        }
        events
    }

    /// Tells the source the pipeline committed `position`.
    pub fn commit(&self, position: &str) {
        self.handle
            .committed
            .send(BTreeMap::from([(String::new(), position.to_string())]))
            .expect("source alive");
    }

    /// Asks the source to stop and returns its result.
    pub async fn stop(mut self) -> Result<(), Error> {
        let _ = self.handle.shutdown.send(true);
        // Keep draining so a source blocked on a full pipeline sees the request.
        let task = self.task.take().expect("task");
        let drain = async { while self.handle.items.recv().await.is_some() {} };
        let (result, _) = tokio::join!(
            async { tokio::time::timeout(ITEM_TIMEOUT, task).await },
            tokio::time::timeout(Duration::from_secs(1), drain)
        );
        result
            .expect("source did not stop in time")
            .expect("task panicked")
    }

    /// The source's error once it stopped by itself.
    pub async fn failure(mut self) -> Error {
        let task = self.task.take().expect("task");
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(joined) => joined
                .expect("task panicked")
                .expect_err("the source should have failed"),
            Err(_) => panic!("the source did not fail within 60 s"),
        }
    }
}

/// The slot's confirmed position as text, or None.
pub async fn confirmed_flush(client: &tokio_postgres::Client, slot: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("query slot")
        .and_then(|r| r.get(0))
}

/// A position as a number, for comparisons.
pub fn lsn(text: &str) -> u64 {
    text.parse::<outflow_postgres::Lsn>().expect("lsn").0
}
