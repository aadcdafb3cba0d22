//! The source side of a pipeline.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::{mpsc, watch};

use crate::{Checkpoint, Checkpoints, Envelope, Error, Result};

/// What a source hands to the pipeline, in source order.
#[derive(Debug)]
pub enum SourceItem {
    /// A change to deliver.
    Event(Box<Envelope>),
    /// A position that becomes safe to commit once every event emitted before it has
    /// been acknowledged. Postgres emits one at each transaction's commit; a source
    /// also emits one when it has nothing in flight and its upstream moved on (an idle
    /// keepalive position), so that position is committed as well.
    Checkpoint(Checkpoint),
}

/// A database change log read as a stream of [`SourceItem`]s.
///
/// # Contract
///
/// - **Order.** Items are emitted in source order within a partition. The pipeline
///   delivers events of a partition in the order they were emitted.
/// - **Commits.** A source commits a position upstream (a Postgres slot's
///   `confirmed_flush_lsn`, for example) only once the pipeline reported it through
///   [`SourceContext::committed`]. The pipeline reports a checkpoint only after every
///   event emitted before it was durably acknowledged by the sink, and only after
///   storing it in the checkpoint store. Sources whose upstream keeps no position
///   resume from [`SourceContext::start_positions`].
/// - **Redelivery.** After a restart a source may emit again events it emitted before;
///   they must carry the same [`Envelope::id`].
/// - **Backpressure.** [`SourceContext::emit`] waits while the pipeline is full. A
///   source whose protocol needs upkeep (keepalives, iterator renewal) must keep doing
///   it while it waits, for example by selecting on [`SourceContext::reserve`].
/// - **Readiness.** A source calls [`SourceContext::set_ready`] once every change
///   committed upstream from then on is sure to be read (a Postgres slot is consistent);
///   health checks report the pipeline ready from that moment.
/// - **Shutdown.** When [`SourceContext::shutdown_requested`] resolves, the source
///   commits the last position it was given, releases its upstream and returns `Ok`.
/// - **Errors.** Transient upstream errors (a lost connection) should be retried inside
///   the source with backoff; returning an error stops the pipeline. Fatal errors say
///   what to fix.
#[async_trait]
pub trait ChangeSource: Send {
    /// Reads changes and emits them until shutdown is requested or a fatal error.
    async fn run(&mut self, ctx: SourceContext) -> Result<()>;
}

/// The source's handle on its pipeline.
#[derive(Debug)]
pub struct SourceContext {
    pipeline: Arc<str>,
    items: mpsc::Sender<SourceItem>,
    committed: watch::Receiver<Checkpoints>,
    shutdown: watch::Receiver<bool>,
    ready: watch::Sender<bool>,
    start: Checkpoints,
}

/// The pipeline's side of a [`SourceContext`].
#[derive(Debug)]
pub struct SourceHandle {
    /// Items the source emitted, in order.
    pub items: mpsc::Receiver<SourceItem>,
    /// Publishes committed positions to the source.
    pub committed: watch::Sender<Checkpoints>,
    /// Set to `true` to ask the source to stop.
    pub shutdown: watch::Sender<bool>,
    /// Turns `true` once the source captures changes (see [`SourceContext::set_ready`]).
    pub ready: watch::Receiver<bool>,
}

impl SourceContext {
    /// A context and its pipeline-side handle. `capacity` bounds the items waiting for
    /// the pipeline; `start` holds the positions stored for this pipeline.
    pub fn new(pipeline: &str, capacity: usize, start: Checkpoints) -> (Self, SourceHandle) {
        let (items_tx, items_rx) = mpsc::channel(capacity.max(1));
        let (committed_tx, committed_rx) = watch::channel(start.clone());
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let (ready_tx, ready_rx) = watch::channel(false);
        let ctx = SourceContext {
            pipeline: Arc::from(pipeline),
            items: items_tx,
            committed: committed_rx,
            shutdown: shutdown_rx,
            ready: ready_tx,
            start,
        };
        let handle = SourceHandle {
            items: items_rx,
            committed: committed_tx,
            shutdown: shutdown_tx,
            ready: ready_rx,
        };
        (ctx, handle)
    }

    /// The pipeline name, for event ids and `source.pipeline`.
    pub fn pipeline(&self) -> &str {
        &self.pipeline
    }

    /// Says the source is connected and capturing: every change committed upstream from
    /// now on will be delivered. Health checks report the pipeline ready from then on.
    pub fn set_ready(&self) {
        self.ready.send_replace(true);
    }

    /// The positions stored for this pipeline when it started, by partition.
    pub fn start_positions(&self) -> &Checkpoints {
        &self.start
    }

    /// Emits an item, waiting while the pipeline is full.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: if the future is dropped the item is lost. Use
    /// [`reserve`](Self::reserve) inside `select!`.
    pub async fn emit(&self, item: SourceItem) -> Result<()> {
        self.items.send(item).await.map_err(|_| closed())
    }

    /// Emits an event.
    pub async fn emit_event(&self, event: Envelope) -> Result<()> {
        self.emit(SourceItem::Event(Box::new(event))).await
    }

    /// Waits for room for one item.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future gives up the place in the queue and loses
    /// nothing.
    pub async fn reserve(&self) -> Result<mpsc::Permit<'_, SourceItem>> {
        self.items.reserve().await.map_err(|_| closed())
    }

    /// Room for one item if there is some now: `Ok(None)` when the pipeline is full.
    /// Lets a source skip setting up a wait (a `select!` with timers) in the common case.
    pub fn try_reserve(&self) -> Result<Option<mpsc::Permit<'_, SourceItem>>> {
        match self.items.try_reserve() {
            Ok(permit) => Ok(Some(permit)),
            Err(mpsc::error::TrySendError::Full(())) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(())) => Err(closed()),
        }
    }

    /// The latest committed positions by partition.
    pub fn committed(&self) -> Checkpoints {
        self.committed.borrow().clone()
    }

    /// Waits until the committed positions change, then returns them.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn committed_changed(&mut self) -> Result<Checkpoints> {
        self.committed.changed().await.map_err(|_| closed())?;
        Ok(self.committed.borrow_and_update().clone())
    }

    /// Resolves once the pipeline asks the source to stop.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub async fn shutdown_requested(&self) {
        let mut rx = self.shutdown.clone();
        // A closed channel means the pipeline is gone: stop as well.
        let _ = rx.wait_for(|stop| *stop).await;
    }

    /// Whether the pipeline asked the source to stop.
    pub fn is_shutdown_requested(&self) -> bool {
        *self.shutdown.borrow()
    }
}

fn closed() -> Error {
    Error::fatal("the pipeline stopped reading from the source")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn try_reserve_tells_room_from_full_from_closed() {
        let (ctx, mut handle) = SourceContext::new("p", 1, Checkpoints::new());
        let permit = ctx.try_reserve().unwrap().expect("room for one item");
        permit.send(SourceItem::Checkpoint(Checkpoint::new("1")));
        assert!(ctx.try_reserve().unwrap().is_none(), "full after one item");
        match handle.items.try_recv().unwrap() {
            SourceItem::Checkpoint(c) => assert_eq!(c, Checkpoint::new("1")),
            other => panic!("unexpected item {other:?}"),
        }
        assert!(ctx.try_reserve().unwrap().is_some(), "room again once read");
        drop(handle);
        let err = ctx.try_reserve().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Fatal);
        assert_eq!(
            err.to_string(),
            "the pipeline stopped reading from the source"
        );
    }
}
