//! The runner: moves items from a source to a sink and commits positions.
//!
//! ```text
//!  source task ──items──▶ intake (bounded) ──▶ open batch ──send──▶ sink
//!       ▲                                          │                 │
//!       │                                   in-flight window ◀──acks─┘
//!       └──────── committed positions ◀── ordered commit ◀─┘
//! ```
//!
//! Batches are sent in source order and may be acknowledged in any order; a position
//! is committed only when every batch before it was acknowledged, after the checkpoint
//! store has it. A transient failure resends the failed batch and every batch after
//! it, in order, so the last copy of each event a destination sees is in source order.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use metrics::{Counter, Gauge, Histogram};
use outflow_core::metrics as names;
use outflow_core::{
    BatchOutcome, ChangeSource, Checkpoint, Checkpoints, Envelope, Error, ErrorKind, EventSink,
    Result, SourceContext, SourceHandle, SourceItem, Timestamp,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant as TokioInstant};
use tracing::{debug, error, info, warn, Instrument};

use crate::settings::{Backoff, OnError, PipelineSettings};
use crate::store::CheckpointStore;

/// How long a source has to stop after the pipeline asked it to.
const SOURCE_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// How long closing the sink may take once the shutdown timeout has passed: what is still
/// unacknowledged is redelivered after a restart anyway, so waiting longer (a Kafka flush
/// waits up to `message_timeout_ms`) would only hold up the exit.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Counts of what a pipeline did, returned when it stops cleanly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Events read from the source.
    pub received: u64,
    /// Events the sink acknowledged.
    pub delivered: u64,
    /// Events sent to the dead-letter destination.
    pub dead_lettered: u64,
    /// Events skipped by `on_error = "skip"`.
    pub skipped: u64,
    /// The positions committed last.
    pub committed: Checkpoints,
}

/// One source, one sink, and the settings that join them.
pub struct Pipeline {
    name: String,
    settings: PipelineSettings,
    source: Box<dyn ChangeSource>,
    sink: Arc<dyn EventSink>,
    store: Arc<dyn CheckpointStore>,
    ready: watch::Sender<bool>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

struct Batch {
    seq: u64,
    events: Arc<[Envelope]>,
    /// Approximate size of `events`, counted against `max_in_flight_bytes`.
    bytes: usize,
    checkpoints: Vec<Checkpoint>,
    attempt: u32,
    sent_at: Instant,
    outcome: Option<BatchOutcome>,
}

type AckFuture = BoxFuture<'static, (u64, u32, Result<BatchOutcome>)>;

struct Meters {
    received: Counter,
    delivered: Counter,
    dead_lettered: Counter,
    skipped: Counter,
    transient: Counter,
    per_event: Counter,
    fatal: Counter,
    in_flight: Gauge,
    batch_duration: Histogram,
    lag: Histogram,
    commits: Counter,
}

impl Meters {
    fn new(pipeline: &str) -> Self {
        let p = pipeline.to_string();
        let errors = |kind: ErrorKind| metrics::counter!(names::ERRORS_TOTAL, "pipeline" => p.clone(), "kind" => kind.as_str());
        Meters {
            received: metrics::counter!(names::EVENTS_RECEIVED_TOTAL, "pipeline" => p.clone()),
            delivered: metrics::counter!(names::EVENTS_DELIVERED_TOTAL, "pipeline" => p.clone()),
            dead_lettered: metrics::counter!(
                names::EVENTS_DEAD_LETTERED_TOTAL, "pipeline" => p.clone()
            ),
            skipped: metrics::counter!(names::EVENTS_SKIPPED_TOTAL, "pipeline" => p.clone()),
            transient: errors(ErrorKind::Transient),
            per_event: errors(ErrorKind::PerEvent),
            fatal: errors(ErrorKind::Fatal),
            in_flight: metrics::gauge!(names::IN_FLIGHT_EVENTS, "pipeline" => p.clone()),
            batch_duration: metrics::histogram!(
                names::BATCH_DURATION_SECONDS, "pipeline" => p.clone()
            ),
            lag: metrics::histogram!(names::END_TO_END_LAG_SECONDS, "pipeline" => p.clone()),
            commits: metrics::counter!(names::CHECKPOINTS_COMMITTED_TOTAL, "pipeline" => p),
        }
    }

    fn error(&self, kind: ErrorKind) {
        match kind {
            ErrorKind::Transient => self.transient.increment(1),
            ErrorKind::PerEvent => self.per_event.increment(1),
            ErrorKind::Fatal => self.fatal.increment(1),
        }
    }
}

impl Pipeline {
    /// A pipeline named `name`.
    pub fn new(
        name: impl Into<String>,
        settings: PipelineSettings,
        source: Box<dyn ChangeSource>,
        sink: Arc<dyn EventSink>,
        store: Arc<dyn CheckpointStore>,
    ) -> Self {
        Pipeline {
            name: name.into(),
            settings,
            source,
            sink,
            store,
            ready: watch::channel(false).0,
        }
    }

    /// Turns `true` once the source reports that it captures changes (for `/readyz`).
    pub fn ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// The pipeline's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs until the source ends, `stop` turns `true`, or a fatal error.
    ///
    /// On stop, intake ends, in-flight batches are awaited up to the shutdown timeout,
    /// the acknowledged positions are committed and the source is asked to stop.
    pub async fn run(self, stop: watch::Receiver<bool>) -> Result<RunReport> {
        let span = tracing::info_span!("pipeline", pipeline = %self.name);
        self.run_inner(stop).instrument(span).await
    }

    async fn run_inner(self, stop: watch::Receiver<bool>) -> Result<RunReport> {
        self.settings.validate()?;
        let start = self.store.load(&self.name).await?;
        if !start.is_empty() {
            info!(positions = ?start, "resuming from stored checkpoint");
        }
        let (ctx, handle) = SourceContext::new(&self.name, self.settings.intake, start.clone());
        let mut source_ready = handle.ready.clone();
        let ready = self.ready;
        tokio::spawn(async move {
            if source_ready.wait_for(|r| *r).await.is_ok() {
                ready.send_replace(true);
                // Keep the sender until the source ends, so watchers see the final value.
                let _ = source_ready.changed().await;
            }
        });
        let mut source = self.source;
        let source_task: JoinHandle<Result<()>> =
            tokio::spawn(async move { source.run(ctx).await }.in_current_span());
        let mut runner = Runner {
            meters: Meters::new(&self.name),
            name: self.name,
            backoff: Backoff::new(self.settings.retry.clone()),
            settings: self.settings,
            sink: self.sink,
            store: self.store,
            handle,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
            pending: FuturesUnordered::new(),
            open: Vec::new(),
            open_bytes: 0,
            open_checkpoints: Vec::new(),
            linger_deadline: None,
            next_seq: 0,
            committed: start,
            commit_due: None,
            last_commit: std::time::Instant::now(),
            report: RunReport::default(),
            retry: None,
        };
        let result = runner.run(stop, source_task).await;
        match &result {
            Ok(report) => info!(
                received = report.received,
                delivered = report.delivered,
                dead_lettered = report.dead_lettered,
                skipped = report.skipped,
                "pipeline stopped"
            ),
            Err(e) => error!(kind = %e.kind(), error = %e.chain(), "pipeline failed"),
        }
        result
    }
}

struct Runner {
    name: String,
    settings: PipelineSettings,
    sink: Arc<dyn EventSink>,
    store: Arc<dyn CheckpointStore>,
    handle: SourceHandle,
    inflight: VecDeque<Batch>,
    /// Approximate bytes of the batches in `inflight`.
    inflight_bytes: usize,
    pending: FuturesUnordered<AckFuture>,
    open: Vec<Envelope>,
    open_bytes: usize,
    open_checkpoints: Vec<Checkpoint>,
    linger_deadline: Option<TokioInstant>,
    next_seq: u64,
    /// Positions acknowledged, stored or about to be.
    committed: Checkpoints,
    /// When `committed` holds positions not yet stored: when they will be.
    commit_due: Option<TokioInstant>,
    last_commit: std::time::Instant,
    report: RunReport,
    /// A scheduled resend: from which batch, and when.
    retry: Option<(u64, TokioInstant)>,
    meters: Meters,
    backoff: Backoff,
}

enum Stop {
    /// The source ended: deliver everything, then stop.
    Drained,
    /// Asked to stop: wait for in-flight batches up to the shutdown timeout.
    Requested,
}

impl Runner {
    async fn run(
        &mut self,
        mut stop: watch::Receiver<bool>,
        mut source_task: JoinHandle<Result<()>>,
    ) -> Result<RunReport> {
        let mut source_done = false;
        let mut source_result: Option<Result<()>> = None;
        let mut stopping: Option<TokioInstant> = None;
        let mut buf: Vec<SourceItem> = Vec::with_capacity(self.settings.batch.max_events);
        let far = TokioInstant::now() + std::time::Duration::from_secs(86400 * 365);

        let outcome = loop {
            if source_done && self.open.is_empty() && self.inflight.is_empty() {
                break Stop::Drained;
            }
            if stopping.is_some() && self.inflight.is_empty() {
                break Stop::Requested;
            }
            // The window has room for more: count and bytes. Items are taken only then,
            // so a sink that acknowledges slowly holds back the source.
            let window_free = self.inflight.len() < self.settings.window
                && (self.inflight.is_empty()
                    || self.inflight_bytes < self.settings.max_in_flight_bytes);
            let room = self
                .settings
                .batch
                .max_events
                .saturating_sub(self.open.len());
            let take = stopping.is_none()
                && !source_done
                && self.retry.is_none()
                && window_free
                && room > 0
                && self.open_bytes < self.settings.batch.max_bytes;
            let flush_due = stopping.is_none() && self.retry.is_none() && self.may_send();
            let linger = self.linger_deadline.unwrap_or(far);

            tokio::select! {
                biased;
                changed = stop.changed(), if stopping.is_none() => {
                    if changed.is_err() || *stop.borrow() {
                        info!(in_flight = self.inflight.len(), "stop requested; draining");
                        stopping = Some(TokioInstant::now() + self.settings.shutdown_timeout);
                    }
                }
                Some((seq, attempt, result)) = self.pending.next(), if !self.pending.is_empty() => {
                    self.on_result(seq, attempt, result)?;
                    self.complete_front().await?;
                }
                _ = sleep_until(self.retry.map_or(far, |(_, at)| at)), if self.retry.is_some() => {
                    let (from, _) = self.retry.take().expect("checked above");
                    self.resend_from(from).await?;
                }
                n = self.handle.items.recv_many(&mut buf, room.max(1)), if take => {
                    if n == 0 {
                        // What is open is flushed below, once the window lets it go.
                        source_done = true;
                    } else {
                        self.take_items(&mut buf).await?;
                    }
                }
                _ = sleep_until(linger), if flush_due && !self.open.is_empty() => {
                    self.flush().await?;
                }
                _ = sleep_until(stopping.unwrap_or(far)), if stopping.is_some() => {
                    let unacked: usize = self.inflight.iter().map(|b| b.events.len()).sum();
                    warn!(
                        unacknowledged = unacked,
                        "shutdown timeout reached; unacknowledged events will be redelivered"
                    );
                    break Stop::Requested;
                }
                _ = sleep_until(self.commit_due.unwrap_or(far)), if self.commit_due.is_some() => {
                    self.persist().await?;
                }
                joined = &mut source_task, if source_result.is_none() => {
                    let result = joined.unwrap_or_else(|e| {
                        Err(Error::fatal("the source task panicked").with_source(e))
                    });
                    if let Err(e) = &result {
                        self.meters.error(e.kind());
                    }
                    let failed = result.is_err();
                    source_result = Some(result);
                    if failed {
                        break Stop::Drained;
                    }
                }
            }
            if stopping.is_none() && self.retry.is_none() {
                let full = self.open.len() >= self.settings.batch.max_events
                    || self.open_bytes >= self.settings.batch.max_bytes;
                // The source ended (a failed source has left the loop already).
                let last = source_done;
                if self.open.is_empty() && last && !self.open_checkpoints.is_empty() {
                    // Positions only: nothing to send, they follow the last batch.
                    self.flush().await?;
                } else if (full || (last && !self.open.is_empty())) && self.may_send() {
                    self.flush().await?;
                }
            }
        };

        if let Some(Err(e)) = source_result {
            let _ = self.handle.shutdown.send(true);
            return Err(e);
        }
        if matches!(outcome, Stop::Requested) {
            // Positions in the intake follow the open batch's events, which are dropped
            // here unsent: they are safe only when nothing was open.
            let nothing_open = self.open.is_empty();
            self.open.clear();
            self.open_checkpoints.clear();
            if self.inflight.is_empty() && nothing_open {
                // Positions queued right behind the last acknowledged event (a
                // transaction's commit, say) are safe too: commit them, so a clean stop
                // redelivers nothing.
                let mut leading = Vec::new();
                while let Ok(SourceItem::Checkpoint(cp)) = self.handle.items.try_recv() {
                    leading.push(cp);
                }
                self.commit(leading).await?;
            }
        }
        if self.commit_due.is_some() {
            self.persist().await?;
        }
        // Ask the source to stop and give it the time to commit upstream. Closing the
        // intake wakes a source blocked on a full queue.
        let _ = self.handle.shutdown.send(true);
        self.handle.items.close();
        if source_result.is_none() {
            match tokio::time::timeout(SOURCE_STOP_TIMEOUT, &mut source_task).await {
                // The source ended by itself and its closed intake was seen before its
                // result: it failed, it did not drain. Report it like any source failure.
                Ok(Ok(Err(e))) if matches!(outcome, Stop::Drained) => {
                    self.meters.error(e.kind());
                    return Err(e);
                }
                Ok(Err(e)) if matches!(outcome, Stop::Drained) => {
                    self.meters.error(ErrorKind::Fatal);
                    return Err(Error::fatal("the source task panicked").with_source(e));
                }
                Ok(Ok(Err(e))) => {
                    debug!(error = %e.chain(), "source ended with an error while stopping");
                }
                Ok(_) => {}
                Err(_) => {
                    warn!("source did not stop in time; aborting it");
                    source_task.abort();
                }
            }
        }
        // Closing waits for what the sink still holds, but never past the shutdown deadline
        // (plus a grace to release connections).
        let close_within = stopping
            .map_or(self.settings.shutdown_timeout, |deadline| {
                deadline.saturating_duration_since(TokioInstant::now())
            })
            .max(CLOSE_GRACE);
        match tokio::time::timeout(close_within, self.sink.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e.chain(), "closing the sink failed"),
            Err(_) => warn!(
                waited_ms = close_within.as_millis() as u64,
                "closing the sink timed out; unacknowledged events will be redelivered"
            ),
        }
        self.report.committed = self.committed.clone();
        Ok(std::mem::take(&mut self.report))
    }

    async fn take_items(&mut self, buf: &mut Vec<SourceItem>) -> Result<()> {
        let received_before = self.report.received;
        for item in buf.drain(..) {
            match item {
                SourceItem::Event(event) => {
                    if self.open.is_empty() {
                        self.linger_deadline =
                            Some(TokioInstant::now() + self.settings.batch.linger);
                    }
                    self.open_bytes += event.approx_size();
                    self.open.push(*event);
                    self.report.received += 1;
                }
                SourceItem::Checkpoint(cp) => {
                    if !self.open.is_empty() {
                        self.open_checkpoints.push(cp);
                    } else if let Some(last) = self.inflight.back_mut() {
                        last.checkpoints.push(cp);
                    } else {
                        self.commit(vec![cp]).await?;
                    }
                }
            }
        }
        self.meters
            .received
            .increment(self.report.received - received_before);
        Ok(())
    }

    /// Whether the open batch may be sent now: the window has a free slot, and the batch
    /// fits within `max_in_flight_bytes` next to those in flight (or none is in flight).
    fn may_send(&self) -> bool {
        self.inflight.len() < self.settings.window
            && (self.inflight.is_empty()
                || self.inflight_bytes.saturating_add(self.open_bytes)
                    <= self.settings.max_in_flight_bytes)
    }

    /// Sends the open batch.
    async fn flush(&mut self) -> Result<()> {
        self.linger_deadline = None;
        // Moved out with one allocation; `open` keeps its capacity for the next batch.
        let events: Arc<[Envelope]> = self.open.drain(..).collect();
        let bytes = std::mem::take(&mut self.open_bytes);
        let checkpoints = std::mem::take(&mut self.open_checkpoints);
        if events.is_empty() {
            if let Some(last) = self.inflight.back_mut() {
                last.checkpoints.extend(checkpoints);
                return Ok(());
            }
            return self.commit(checkpoints).await;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.meters.in_flight.increment(events.len() as f64);
        self.inflight_bytes += bytes;
        self.inflight.push_back(Batch {
            seq,
            events,
            bytes,
            checkpoints,
            attempt: 0,
            sent_at: Instant::now(),
            outcome: None,
        });
        self.start_send(seq).await
    }

    fn batch_mut(&mut self, seq: u64) -> Option<&mut Batch> {
        let front = self.inflight.front()?.seq;
        self.inflight
            .get_mut(usize::try_from(seq.checked_sub(front)?).ok()?)
    }

    async fn start_send(&mut self, seq: u64) -> Result<()> {
        let sink = self.sink.clone();
        let (events, attempt) = {
            let batch = self.batch_mut(seq).expect("batch is in flight");
            batch.sent_at = Instant::now();
            (batch.events.clone(), batch.attempt)
        };
        debug!(seq, events = events.len(), attempt, "sending batch");
        match sink.send(events).await {
            Ok(pending) => {
                self.pending
                    .push(pending.map(move |r| (seq, attempt, r)).boxed());
                Ok(())
            }
            Err(e) => self.on_result(seq, attempt, Err(e)),
        }
    }

    fn on_result(&mut self, seq: u64, attempt: u32, result: Result<BatchOutcome>) -> Result<()> {
        let Some(batch) = self.batch_mut(seq) else {
            return Ok(());
        };
        if batch.attempt != attempt || batch.outcome.is_some() {
            return Ok(()); // a superseded attempt
        }
        match result {
            Ok(outcome) => {
                let elapsed = batch.sent_at.elapsed();
                batch.outcome = Some(outcome);
                self.meters.batch_duration.record(elapsed.as_secs_f64());
                self.backoff.reset();
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Transient => {
                self.meters.error(ErrorKind::Transient);
                // Resend this batch and every later one, in order, after a delay.
                for b in self.inflight.iter_mut().filter(|b| b.seq >= seq) {
                    b.attempt += 1;
                    b.outcome = None;
                }
                let from = self.retry.map_or(seq, |(from, _)| from.min(seq));
                let delay = self.backoff.next_delay();
                warn!(
                    seq,
                    attempt = self.backoff.attempts(),
                    retry_in_ms = delay.as_millis() as u64,
                    error = %e.chain(),
                    "sink failed transiently; will resend"
                );
                self.retry = Some((from, TokioInstant::now() + delay));
                Ok(())
            }
            Err(e) => {
                self.meters.error(e.kind());
                Err(Error::new(
                    ErrorKind::Fatal,
                    format!("sink failed: {}", e.chain()),
                ))
            }
        }
    }

    async fn resend_from(&mut self, from: u64) -> Result<()> {
        let seqs: Vec<u64> = self
            .inflight
            .iter()
            .filter(|b| b.seq >= from)
            .map(|b| b.seq)
            .collect();
        for seq in seqs {
            if self.retry.is_some() {
                break; // a resend failed again and scheduled the next attempt
            }
            self.start_send(seq).await?;
        }
        Ok(())
    }

    /// Retires acknowledged batches from the front of the window, in order, and
    /// commits their positions.
    async fn complete_front(&mut self) -> Result<()> {
        let mut to_commit = Vec::new();
        while self.inflight.front().is_some_and(|b| b.outcome.is_some()) {
            let mut batch = self.inflight.pop_front().expect("checked above");
            self.inflight_bytes -= batch.bytes;
            let outcome = batch.outcome.take().expect("checked above");
            let mut rejected = vec![false; batch.events.len()];
            for rejection in outcome.rejected {
                let Some(event) = batch.events.get(rejection.index) else {
                    return Err(Error::fatal(format!(
                        "sink rejected event index {} of a batch of {}",
                        rejection.index,
                        batch.events.len()
                    )));
                };
                rejected[rejection.index] = true;
                self.meters.error(ErrorKind::PerEvent);
                self.handle_rejected(event, &rejection.error).await?;
            }
            let now = Timestamp::now().unix_micros();
            let mut delivered = 0u64;
            for (event, rejected) in batch.events.iter().zip(rejected) {
                if rejected {
                    continue;
                }
                delivered += 1;
                if let Some(at) = event.source.commit_time {
                    self.meters
                        .lag
                        .record((now - at.unix_micros()).max(0) as f64 / 1e6);
                }
            }
            self.report.delivered += delivered;
            self.meters.delivered.increment(delivered);
            self.meters.in_flight.decrement(batch.events.len() as f64);
            to_commit.append(&mut batch.checkpoints);
        }
        if !to_commit.is_empty() {
            self.commit(to_commit).await?;
        }
        Ok(())
    }

    async fn handle_rejected(&mut self, event: &Envelope, error: &Error) -> Result<()> {
        match self.settings.on_error {
            OnError::Fail => Err(Error::fatal(format!(
                "event {} ({} {}) cannot be delivered: {}; on_error = \"fail\" stops the \
                 pipeline; set on_error = \"dead_letter\" or \"skip\" to route such events \
                 elsewhere",
                event.id,
                event.aggregate_type,
                event.aggregate_id,
                error.chain()
            ))),
            OnError::Skip => {
                warn!(id = %event.id, error = %error.chain(), "event skipped");
                self.report.skipped += 1;
                self.meters.skipped.increment(1);
                Ok(())
            }
            OnError::DeadLetter => {
                let destination = self.settings.dead_letter.render(event);
                let reason = error.chain();
                let mut backoff = Backoff::new(self.settings.retry.clone());
                loop {
                    match self.sink.dead_letter(&destination, event, &reason).await {
                        Ok(()) => break,
                        Err(e) if e.kind() == ErrorKind::Transient => {
                            self.meters.error(ErrorKind::Transient);
                            let delay = backoff.next_delay();
                            warn!(error = %e.chain(), retry_in_ms = delay.as_millis() as u64,
                                "dead letter failed transiently; retrying");
                            tokio::time::sleep(delay).await;
                        }
                        Err(e) => {
                            return Err(Error::fatal(format!(
                                "event {} cannot be delivered ({reason}) and sending it to the \
                                 dead-letter destination {destination} failed: {}",
                                event.id,
                                e.chain()
                            )))
                        }
                    }
                }
                warn!(id = %event.id, destination = %destination, error = %reason,
                    "event dead-lettered");
                self.report.dead_lettered += 1;
                self.meters.dead_lettered.increment(1);
                Ok(())
            }
        }
    }

    /// Takes acknowledged positions; they are stored within the commit interval.
    async fn commit(&mut self, checkpoints: Vec<Checkpoint>) -> Result<()> {
        let mut changed = false;
        for cp in checkpoints {
            if self.committed.get(&cp.partition) != Some(&cp.position) {
                self.committed.insert(cp.partition, cp.position);
                changed = true;
            }
        }
        if !changed {
            return Ok(());
        }
        let interval = self.settings.commit_interval;
        if self.last_commit.elapsed() >= interval {
            return self.persist().await;
        }
        if self.commit_due.is_none() {
            self.commit_due = Some(TokioInstant::from_std(self.last_commit + interval));
        }
        Ok(())
    }

    /// Stores the acknowledged positions, then hands them to the source.
    async fn persist(&mut self) -> Result<()> {
        self.commit_due = None;
        let mut backoff = Backoff::new(self.settings.retry.clone());
        loop {
            match self.store.save(&self.name, &self.committed).await {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::Transient => {
                    self.meters.error(ErrorKind::Transient);
                    let delay = backoff.next_delay();
                    warn!(error = %e.chain(), retry_in_ms = delay.as_millis() as u64,
                        "saving checkpoint failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
        self.last_commit = std::time::Instant::now();
        debug!(positions = ?self.committed, "checkpoint committed");
        self.meters.commits.increment(1);
        self.handle.committed.send_replace(self.committed.clone());
        Ok(())
    }
}
