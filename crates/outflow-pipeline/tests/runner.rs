//! The runner against sinks that misbehave in every way the contract allows.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outflow_core::{
    BatchOutcome, ChangeSource, Checkpoints, Envelope, Error, ErrorKind, EventSink, Pending,
    Rejection, Result, SourceContext,
};
use outflow_pipeline::{
    CheckpointStore, GenerateConfig, GenerateSource, OnError, Pipeline, PipelineSettings,
    RetrySettings,
};
use tokio::sync::{watch, Semaphore};

fn seq(event: &Envelope) -> u64 {
    event.payload.to_value().expect("JSON")["seq"]
        .as_u64()
        .expect("generated events carry seq")
}

/// A sink whose behaviour each test scripts.
#[derive(Default)]
struct ScriptSink {
    /// Event seqs in the order `send` was called, including resends.
    sent: Mutex<Vec<u64>>,
    /// Event seqs acknowledged.
    acked: Mutex<BTreeSet<u64>>,
    /// Event seqs in acknowledgement order, including duplicates.
    ack_log: Mutex<Vec<u64>>,
    dead: Mutex<Vec<(String, String, String)>>,
    batches: AtomicUsize,
    attempts: Mutex<HashMap<u64, u32>>,
    /// Acks of batch `n` wait this long (lets later batches ack first).
    ack_delay: Option<fn(usize) -> Duration>,
    /// The first attempt of batches starting at these seqs fails transiently.
    fail_first: Option<fn(u64) -> bool>,
    /// This seq can never be delivered.
    reject: Option<u64>,
    /// Each ack waits for a permit.
    gate: Option<Arc<Semaphore>>,
    /// Sent and not yet acknowledged, now and at most.
    outstanding: AtomicU64,
    max_outstanding: AtomicU64,
    /// Approximate bytes sent and not yet acknowledged, now and at most.
    outstanding_bytes: AtomicUsize,
    max_outstanding_bytes: AtomicUsize,
}

impl ScriptSink {
    fn acked(&self) -> BTreeSet<u64> {
        self.acked.lock().unwrap().clone()
    }
}

struct Handle(Arc<ScriptSink>);

#[async_trait]
impl EventSink for Handle {
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        let sink = self.0.clone();
        let n = sink.batches.fetch_add(1, Ordering::SeqCst);
        let first = seq(&batch[0]);
        sink.sent.lock().unwrap().extend(batch.iter().map(seq));
        let attempt = {
            let mut attempts = sink.attempts.lock().unwrap();
            let a = attempts.entry(first).or_insert(0);
            *a += 1;
            *a
        };
        let now = sink
            .outstanding
            .fetch_add(batch.len() as u64, Ordering::SeqCst)
            + batch.len() as u64;
        sink.max_outstanding.fetch_max(now, Ordering::SeqCst);
        let bytes: usize = batch.iter().map(Envelope::approx_size).sum();
        let now = sink.outstanding_bytes.fetch_add(bytes, Ordering::SeqCst) + bytes;
        sink.max_outstanding_bytes.fetch_max(now, Ordering::SeqCst);
        Ok(Box::pin(async move {
            if let Some(delay) = sink.ack_delay {
                tokio::time::sleep(delay(n)).await;
            }
            if let Some(gate) = &sink.gate {
                gate.acquire().await.unwrap().forget();
            }
            sink.outstanding
                .fetch_sub(batch.len() as u64, Ordering::SeqCst);
            sink.outstanding_bytes.fetch_sub(bytes, Ordering::SeqCst);
            if attempt == 1 && sink.fail_first.is_some_and(|f| f(first)) {
                return Err(Error::transient("broker unavailable"));
            }
            let mut outcome = BatchOutcome::delivered();
            let mut acked = sink.acked.lock().unwrap();
            let mut log = sink.ack_log.lock().unwrap();
            for (index, event) in batch.iter().enumerate() {
                if Some(seq(event)) == sink.reject {
                    outcome.rejected.push(Rejection {
                        index,
                        error: Error::per_event("message too large"),
                    });
                } else {
                    acked.insert(seq(event));
                    log.push(seq(event));
                }
            }
            Ok(outcome)
        }))
    }

    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()> {
        self.0.dead.lock().unwrap().push((
            destination.to_string(),
            event.id.clone(),
            reason.to_string(),
        ));
        Ok(())
    }
}

/// A store that checks, at every save, that each event at or before the saved position
/// was acknowledged.
struct CheckingStore {
    sink: Arc<ScriptSink>,
    saves: Mutex<Vec<u64>>,
    violations: Mutex<Vec<String>>,
}

#[async_trait]
impl CheckpointStore for CheckingStore {
    async fn load(&self, _pipeline: &str) -> Result<Checkpoints> {
        Ok(Checkpoints::new())
    }

    async fn save(&self, _pipeline: &str, checkpoints: &Checkpoints) -> Result<()> {
        let position: u64 = checkpoints[""].parse().unwrap();
        let acked = self.sink.acked();
        let rejected = self.sink.reject;
        let missing: Vec<u64> = (1..=position)
            .filter(|n| !acked.contains(n) && Some(*n) != rejected)
            .collect();
        if !missing.is_empty() {
            self.violations.lock().unwrap().push(format!(
                "committed {position} before {} events were acknowledged (first {})",
                missing.len(),
                missing[0]
            ));
        }
        let mut saves = self.saves.lock().unwrap();
        if saves.last().is_some_and(|last| *last > position) {
            self.violations
                .lock()
                .unwrap()
                .push(format!("position went back to {position}"));
        }
        saves.push(position);
        Ok(())
    }
}

fn settings(max_events: usize, window: usize) -> PipelineSettings {
    let mut s = PipelineSettings::default();
    s.batch.max_events = max_events;
    s.batch.linger = Duration::from_millis(2);
    s.window = window;
    s.intake = 16;
    s.commit_interval = Duration::ZERO;
    s.retry = RetrySettings {
        initial: Duration::from_millis(5),
        max: Duration::from_millis(50),
    };
    s
}

fn generate(count: u64) -> Box<GenerateSource> {
    Box::new(GenerateSource::new(GenerateConfig {
        count: Some(count),
        keys: 7,
        checkpoint_every: 1,
        ..Default::default()
    }))
}

async fn run(
    sink: Arc<ScriptSink>,
    settings: PipelineSettings,
    source: Box<dyn ChangeSource>,
) -> (Result<outflow_pipeline::RunReport>, Arc<CheckingStore>) {
    let store = Arc::new(CheckingStore {
        sink: sink.clone(),
        saves: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
    });
    let pipeline = Pipeline::new(
        "orders",
        settings,
        source,
        Arc::new(Handle(sink.clone())),
        store.clone(),
    );
    let (_tx, rx) = watch::channel(false);
    let result = tokio::time::timeout(Duration::from_secs(60), pipeline.run(rx))
        .await
        .expect("pipeline finished in time");
    (result, store)
}

fn last_copies_in_order(log: &[u64]) -> Vec<u64> {
    // The position of the last copy of each event, in arrival order.
    let mut last: HashMap<u64, usize> = HashMap::new();
    for (i, s) in log.iter().enumerate() {
        last.insert(*s, i);
    }
    let mut order: Vec<(usize, u64)> = last.into_iter().map(|(s, i)| (i, s)).collect();
    order.sort();
    order.into_iter().map(|(_, s)| s).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_commit_only_acknowledged_prefixes() {
    let sink = Arc::new(ScriptSink {
        // Earlier batches ack later than later ones.
        ack_delay: Some(|n| Duration::from_millis(((7 - (n % 8)) * 3) as u64)),
        ..Default::default()
    });
    let (result, store) = run(sink.clone(), settings(10, 4), generate(500)).await;
    let report = result.unwrap();
    assert_eq!(report.received, 500);
    assert_eq!(report.delivered, 500);
    assert_eq!(report.committed[""], "500");
    assert_eq!(
        store.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert!(
        store.saves.lock().unwrap().len() > 5,
        "commits happen along the way"
    );
    // Sent in source order, each once.
    assert_eq!(
        sink.sent.lock().unwrap().clone(),
        (1..=500).collect::<Vec<_>>()
    );
    assert_eq!(sink.acked(), (1..=500).collect());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_are_coalesced_within_the_commit_interval() {
    let sink = Arc::new(ScriptSink {
        ack_delay: Some(|_| Duration::from_millis(2)),
        ..Default::default()
    });
    let mut s = settings(10, 4);
    s.commit_interval = Duration::from_millis(200);
    let (result, store) = run(sink.clone(), s, generate(300)).await;
    let report = result.unwrap();
    assert_eq!(report.committed[""], "300");
    let saves = store.saves.lock().unwrap().clone();
    assert_eq!(
        saves.last(),
        Some(&300),
        "the last position is stored at the end"
    );
    assert!(saves.len() < 15, "30 batches, far fewer commits: {saves:?}");
    assert_eq!(
        store.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_and_keep_order() {
    let sink = Arc::new(ScriptSink {
        fail_first: Some(|first| first % 30 == 1),
        ack_delay: Some(|n| Duration::from_millis((n % 3) as u64)),
        ..Default::default()
    });
    let (result, store) = run(sink.clone(), settings(10, 4), generate(300)).await;
    let report = result.unwrap();
    assert_eq!(report.delivered, 300, "each event counted once");
    assert_eq!(report.committed[""], "300");
    assert_eq!(
        store.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert_eq!(sink.acked(), (1..=300).collect());
    // What the destination received, in the order it was sent: the last copy of each
    // event is in source order.
    let sent = sink.sent.lock().unwrap().clone();
    assert!(sent.len() > 300, "failed batches were resent");
    assert_eq!(last_copies_in_order(&sent), (1..=300).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_event_with_fail_stops_before_its_position() {
    let sink = Arc::new(ScriptSink {
        reject: Some(137),
        ..Default::default()
    });
    let (result, store) = run(sink.clone(), settings(10, 4), generate(400)).await;
    let err = result.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    let expected_id = outflow_core::event_id_from_position("orders", None, "137");
    assert!(
        err.to_string()
            .starts_with(&format!("event {expected_id} (")),
        "error names the event: {err}"
    );
    assert!(err.to_string().contains("message too large"), "{err}");
    assert!(
        err.to_string()
            .contains("set on_error = \"dead_letter\" or \"skip\""),
        "{err}"
    );
    let saves = store.saves.lock().unwrap().clone();
    assert!(
        saves.iter().all(|p| *p < 137),
        "never committed past the rejected event: {saves:?}"
    );
    assert!(sink.dead.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_event_is_dead_lettered_or_skipped() {
    for on_error in [OnError::DeadLetter, OnError::Skip] {
        let sink = Arc::new(ScriptSink {
            reject: Some(42),
            ..Default::default()
        });
        let mut s = settings(10, 4);
        s.on_error = on_error;
        let (result, store) = run(sink.clone(), s, generate(100)).await;
        let report = result.unwrap();
        assert_eq!(report.delivered, 99);
        assert_eq!(report.committed[""], "100");
        assert_eq!(
            store.violations.lock().unwrap().clone(),
            Vec::<String>::new()
        );
        let dead = sink.dead.lock().unwrap().clone();
        let id = outflow_core::event_id_from_position("orders", None, "42");
        if on_error == OnError::DeadLetter {
            assert_eq!(report.dead_lettered, 1);
            assert_eq!(report.skipped, 0);
            assert_eq!(
                dead,
                vec![(
                    "outflow.dlq.orders".to_string(),
                    id,
                    "message too large".to_string()
                )]
            );
        } else {
            assert_eq!(report.skipped, 1);
            assert_eq!(report.dead_lettered, 0);
            assert!(dead.is_empty());
        }
    }
}

/// A source that counts what it managed to hand over.
struct CountingSource {
    inner: GenerateSource,
    emitted: Arc<AtomicU64>,
    count: u64,
}

#[async_trait]
impl ChangeSource for CountingSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<()> {
        for n in 1..=self.count {
            let event = self.inner.event(ctx.pipeline(), n);
            tokio::select! {
                permit = ctx.reserve() => {
                    permit?.send(outflow_core::SourceItem::Event(Box::new(event)));
                }
                _ = ctx.shutdown_requested() => return Ok(()),
            }
            self.emitted.store(n, Ordering::SeqCst);
            ctx.emit(outflow_core::SourceItem::Checkpoint(
                outflow_core::Checkpoint::new(n.to_string()),
            ))
            .await?;
        }
        ctx.shutdown_requested().await;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sink_bounds_what_is_held_and_drains_on_stop() {
    let gate = Arc::new(Semaphore::new(0));
    let sink = Arc::new(ScriptSink {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    let emitted = Arc::new(AtomicU64::new(0));
    let source = Box::new(CountingSource {
        inner: GenerateSource::new(GenerateConfig::default()),
        emitted: emitted.clone(),
        count: 1_000_000,
    });
    let s = settings(10, 3);
    let (intake, window, batch) = (s.intake as u64, s.window as u64, s.batch.max_events as u64);
    let store = Arc::new(CheckingStore {
        sink: sink.clone(),
        saves: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
    });
    let pipeline = Pipeline::new(
        "orders",
        s,
        source,
        Arc::new(Handle(sink.clone())),
        store.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stop_rx));

    // Nothing is acknowledged: the source must stall at window + open batch + intake.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = emitted.load(Ordering::SeqCst);
    // Intake items alternate event and checkpoint, so the queue holds intake/2 events.
    let bound = window * batch + batch + intake;
    assert!(
        held <= bound,
        "source emitted {held} events with nothing acknowledged; bound {bound}"
    );
    assert!(held >= window * batch, "the window filled: {held}");
    assert!(sink.max_outstanding.load(Ordering::SeqCst) <= window * batch);
    assert!(
        store.saves.lock().unwrap().is_empty(),
        "nothing committed before any ack"
    );

    // Release a few batches: commits follow acks, still bounded.
    gate.add_permits(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let saves = store.saves.lock().unwrap().clone();
    assert_eq!(
        saves.last().copied(),
        Some(2 * batch),
        "committed exactly the acked batches"
    );
    let held = emitted.load(Ordering::SeqCst) - 2 * batch;
    assert!(held <= bound, "{held} > {bound}");

    // Stop while batches are in flight, then let them be acknowledged: the runner waits.
    stop_tx.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !task.is_finished(),
        "stop waits for in-flight acknowledgements"
    );
    gate.add_permits(1000);
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let acked = sink.acked();
    let last = *acked.iter().next_back().unwrap();
    assert_eq!(acked, (1..=last).collect(), "acknowledged a prefix");
    assert_eq!(
        report.committed[""],
        last.to_string(),
        "committed everything acknowledged"
    );
    assert_eq!(report.delivered, last);
    assert_eq!(
        store.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_bytes_are_bounded_and_one_batch_always_moves() {
    let gate = Arc::new(Semaphore::new(0));
    let sink = Arc::new(ScriptSink {
        gate: Some(gate.clone()),
        ..Default::default()
    });
    let emitted = Arc::new(AtomicU64::new(0));
    let inner = GenerateSource::new(GenerateConfig::default());
    // Generated events differ in size only by the digits of their sequence number.
    let event_bytes = inner.event("orders", 100_000).approx_size();
    let source = Box::new(CountingSource {
        inner,
        emitted: emitted.clone(),
        count: 1_000_000,
    });
    let mut s = settings(10, 8);
    let batch_bytes = 10 * event_bytes;
    // Room for three full batches and a half: the window (8) is not what limits.
    s.max_in_flight_bytes = batch_bytes * 7 / 2;
    let limit = s.max_in_flight_bytes;
    let store = Arc::new(CheckingStore {
        sink: sink.clone(),
        saves: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
    });
    let pipeline = Pipeline::new(
        "orders",
        s,
        source,
        Arc::new(Handle(sink.clone())),
        store.clone(),
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(pipeline.run(stop_rx));

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.batches.load(Ordering::SeqCst),
        3,
        "three batches fit within {limit} bytes, a fourth does not"
    );
    assert_eq!(sink.max_outstanding.load(Ordering::SeqCst), 30);
    let max_bytes = sink.max_outstanding_bytes.load(Ordering::SeqCst);
    assert!(
        max_bytes <= limit,
        "{max_bytes} bytes in flight, limit {limit}"
    );
    // Nothing acknowledged: the source stalls at in flight + open batch + intake.
    let held = emitted.load(Ordering::SeqCst);
    assert!(held <= 30 + 10 + 16, "source emitted {held} events");

    // Each acknowledgement frees room for exactly one more batch.
    gate.add_permits(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sink.batches.load(Ordering::SeqCst), 4);
    assert_eq!(sink.acked(), (1..=10).collect());
    assert!(sink.max_outstanding_bytes.load(Ordering::SeqCst) <= limit);

    stop_tx.send(true).unwrap();
    gate.add_permits(1000);
    let report = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(report.delivered, 40, "the four batches sent, nothing more");
    assert_eq!(sink.acked(), (1..=40).collect());
    assert!(sink.max_outstanding_bytes.load(Ordering::SeqCst) <= limit);
    assert_eq!(report.committed[""], "40");
    assert_eq!(
        store.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );

    // A limit below one batch still moves everything, one batch at a time.
    let sink = Arc::new(ScriptSink {
        ack_delay: Some(|_| Duration::from_millis(1)),
        ..Default::default()
    });
    let mut s = settings(10, 8);
    s.max_in_flight_bytes = 1;
    let (report, store) = run(sink.clone(), s, generate(95)).await;
    let report = report.unwrap();
    assert_eq!(
        store.violations.lock().unwrap().clone(),
        Vec::<String>::new()
    );
    assert_eq!(report.delivered, 95);
    assert_eq!(report.committed[""], "95");
    assert_eq!(
        *sink.ack_log.lock().unwrap(),
        (1..=95).collect::<Vec<u64>>()
    );
    assert_eq!(sink.max_outstanding.load(Ordering::SeqCst), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fatal_sink_error_stops_without_committing() {
    struct Fatal;
    #[async_trait]
    impl EventSink for Fatal {
        async fn send(&self, _batch: Arc<[Envelope]>) -> Result<Pending> {
            Err(Error::fatal(
                "authorization violation; check the credentials",
            ))
        }
        async fn dead_letter(&self, _: &str, _: &Envelope, _: &str) -> Result<()> {
            Ok(())
        }
    }
    let store = Arc::new(CheckingStore {
        sink: Arc::new(ScriptSink::default()),
        saves: Mutex::new(Vec::new()),
        violations: Mutex::new(Vec::new()),
    });
    let pipeline = Pipeline::new(
        "orders",
        settings(10, 2),
        generate(50),
        Arc::new(Fatal),
        store.clone(),
    );
    let (_tx, rx) = watch::channel(false);
    let err = pipeline.run(rx).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert_eq!(
        err.to_string(),
        "sink failed: authorization violation; check the credentials"
    );
    assert!(store.saves.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_fails_at_once_fails_the_pipeline() {
    // The source returns its error as it drops its side of the intake, so the runner sees
    // the closed intake and the finished task together; the error must not be lost.
    struct Failing;
    #[async_trait]
    impl ChangeSource for Failing {
        async fn run(&mut self, _ctx: SourceContext) -> Result<()> {
            Err(Error::fatal(
                "slot belongs to another database; choose another slot",
            ))
        }
    }
    for _ in 0..20 {
        let (result, _) = run(
            Arc::new(ScriptSink::default()),
            settings(10, 2),
            Box::new(Failing),
        )
        .await;
        let err = result.expect_err("a failed source fails the pipeline");
        assert_eq!(err.kind(), ErrorKind::Fatal);
        assert_eq!(
            err.to_string(),
            "slot belongs to another database; choose another slot"
        );
    }
}
