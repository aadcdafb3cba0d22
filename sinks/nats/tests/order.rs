//! Stream order across connection losses (`exclusive_stream`): the pipeline runner
//! drives the sink through a proxy whose connections are cut with publishes in flight,
//! and JetStream's `Nats-Expected-Last-Msg-Id` check keeps the stream in source order;
//! another publisher, an event the stream refuses and a stream that forgot its last id
//! are each handled as documented in docs/sinks/nats.md.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use outflow_core::{Envelope, ErrorKind, EventSink, Op, SourceInfo, Template};
use outflow_pipeline::{FileStore, GenerateConfig, GenerateSource, Pipeline, PipelineSettings};
use outflow_sink_nats::{NatsConfig, NatsSink};
use outflow_testkit::{nats_url, unique_name, CutProxy, PrivateNats};
use serde_json::{json, Value};

mod common;
use common::{js_for, msg_id, read_stream, stream_len};

fn event(id: &str, n: usize, filler: usize) -> Envelope {
    Envelope {
        id: id.to_string(),
        op: Op::Insert,
        aggregate_type: "order".into(),
        aggregate_id: n.to_string(),
        event_type: "OrderCreated".into(),
        payload: json!({"n": n, "filler": "x".repeat(filler)}).into(),
        key: None,
        before: None,
        after: None,
        headers: BTreeMap::new(),
        source: SourceInfo {
            connector: "postgres".into(),
            pipeline: "orders".into(),
            position: format!("0/{n}/0"),
            ..Default::default()
        },
    }
}

fn batch(prefix: &str, range: std::ops::Range<usize>) -> Arc<[Envelope]> {
    range
        .map(|n| event(&format!("{prefix}-{n}"), n, 0))
        .collect()
}

/// A private server whose stream `stream` (duplicate window 1 s) holds `<prefix>-0..3`,
/// restarted after the window passed, so that the stream no longer knows its last id:
/// the next publish that names one is refused at once.
async fn forgetful_stream(stream: &str, prefix: &str) -> (PrivateNats, NatsSink) {
    let mut nats = PrivateNats::start().await;
    let mut config = NatsConfig::new(nats.url());
    config.stream = Some(stream.into());
    config.duplicate_window = Duration::from_secs(1);
    config.ack_timeout = Duration::from_secs(2);
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    send_once(&sink, batch(prefix, 0..3))
        .await
        .expect("first batch");
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    nats.restart().await;
    (nats, sink)
}

/// Sends a batch once and waits for its outcome.
async fn send_once(
    sink: &NatsSink,
    batch: Arc<[Envelope]>,
) -> outflow_core::Result<outflow_core::BatchOutcome> {
    match sink.send(batch).await {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    }
}

/// A pipeline of 30,000 generated events through a proxy whose connection is cut six
/// times while publishes are in flight: what was written to the dying connection is
/// lost, what was still queued in the client goes out after the reconnect. The stream
/// ends up holding every event once, in exactly the order the source produced them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_keep_the_stream_in_source_order() {
    const COUNT: u64 = 30_000;
    const CUTS: u64 = 6;
    // The pipeline's and the sink's logs go to the test's output (shown when it fails).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG")
                .unwrap_or_else(|_| "outflow_pipeline=info,outflow_sink_nats=debug".into()),
        )
        .with_test_writer()
        .try_init();
    let proxy = CutProxy::start(nats_url().trim_start_matches("nats://")).await;
    let prefix = unique_name("cut");
    let stream_name = unique_name("CUT");
    let mut config = NatsConfig::new(format!("nats://{}", proxy.addr()));
    config.subject = Template::parse(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    config.stream = Some(stream_name.clone());
    config.ack_timeout = Duration::from_secs(2);
    let sink = NatsSink::connect(config, "cut").await.expect("connect");

    let state = tempfile::tempdir().unwrap();
    let mut settings = PipelineSettings::default();
    settings.retry.initial = Duration::from_millis(50);
    settings.retry.max = Duration::from_millis(500);
    let source = GenerateSource::new(GenerateConfig {
        count: Some(COUNT),
        ..Default::default()
    });
    let pipeline = Pipeline::new(
        "cut",
        settings,
        Box::new(source),
        Arc::new(sink),
        Arc::new(FileStore::new(state.path())),
    );
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(pipeline.run(stop));

    let js = js_for(nats_url()).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    // Closed at once, a connection loses what the proxy had not forwarded yet while the
    // client is still queueing publishes: both kinds of message exist at every cut.
    for (cut, at) in (1..=CUTS).map(|k| COUNT * k / (CUTS + 1)).enumerate() {
        loop {
            let held = stream_len(&js, &stream_name).await;
            if held >= at {
                break;
            }
            // A pipeline that stopped says why; one that still runs is stuck.
            if run.is_finished() {
                let outcome = run.await.expect("pipeline task");
                panic!("cut {cut}: the pipeline ended at {held} of {at} messages: {outcome:?}");
            }
            assert!(
                Instant::now() < deadline,
                "cut {cut}: the stream stopped growing at {held} of {at} messages, the \
                 pipeline still running (its log is above)"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        proxy.cut(Duration::from_millis(0)).await;
    }
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the pipeline finishes")
        .expect("pipeline task")
        .expect("the pipeline delivers everything");
    assert_eq!(report.delivered, COUNT);
    assert!(
        proxy.accepted() as u64 > CUTS,
        "the sink reconnected after every cut ({} connections)",
        proxy.accepted()
    );

    let messages = read_stream(&js, &stream_name, COUNT as usize).await;
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| {
            let envelope: Value = serde_json::from_slice(&m.payload).expect("envelope JSON");
            envelope["payload"]["seq"].as_u64().expect("payload.seq")
        })
        .collect();
    // The generate source numbers its events from 1.
    let misplaced: Vec<(usize, u64)> = seqs
        .iter()
        .enumerate()
        .filter(|(i, s)| *i as u64 + 1 != **s)
        .map(|(i, s)| (i, *s))
        .take(5)
        .collect();
    assert!(
        misplaced.is_empty(),
        "the stream is not in source order; first misplaced (stream index, seq): {misplaced:?}"
    );
    js.delete_stream(&stream_name).await.expect("delete stream");
}

/// Another publisher writes into the pipeline's exclusive stream: the next publish is
/// refused, and the sink stops the pipeline saying who wrote and what to change.
#[tokio::test]
async fn another_publisher_on_an_exclusive_stream_is_fatal() {
    let prefix = unique_name("intruder");
    let stream_name = unique_name("EXCL");
    let mut config = NatsConfig::new(nats_url());
    config.subject = Template::parse(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    config.stream = Some(stream_name.clone());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    send_once(&sink, batch("a", 0..3))
        .await
        .expect("first batch");

    let js = js_for(nats_url()).await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "from-elsewhere");
    js.publish_with_headers(format!("{prefix}.order"), headers, "{}".into())
        .await
        .expect("queued")
        .await
        .expect("stored");

    let err = send_once(&sink, batch("a", 3..6))
        .await
        .expect_err("the chain is broken by a foreign message");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "stream {stream_name:?} holds a message this pipeline did not publish (Nats-Msg-Id \
             \"from-elsewhere\")"
        )) && text.contains("give the pipeline a stream of its own"),
        "{text}"
    );
    assert_eq!(stream_len(&js, &stream_name).await, 4);
    js.delete_stream(&stream_name).await.expect("delete stream");
}

/// `exclusive_stream` without `stream`, on a subject template whose subjects two streams
/// share between them: one chain cannot span two streams (each knows only its own last
/// id), so connecting fails and names both.
#[tokio::test]
async fn an_exclusive_stream_must_capture_every_subject() {
    let prefix = unique_name("split");
    let first = unique_name("SPLITA");
    let second = unique_name("SPLITB");
    let js = js_for(nats_url()).await;
    for (name, kind) in [(&first, "a"), (&second, "b")] {
        js.create_stream(stream::Config {
            name: name.clone(),
            subjects: vec![format!("{prefix}.{kind}.events")],
            ..Default::default()
        })
        .await
        .expect("create stream");
    }
    let mut config = NatsConfig::new(nats_url());
    config.subject = Template::parse(&format!("{prefix}.{{aggregate_type}}.events")).unwrap();
    config.exclusive_stream = Some(true);
    let err = NatsSink::connect(config.clone(), "orders")
        .await
        .expect_err("two streams cannot form one chain");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    let mut both = [first.clone(), second.clone()];
    both.sort();
    assert_eq!(
        err.to_string(),
        format!(
            "exclusive_stream needs every subject of the sink in one stream, but streams \
             {:?} and {:?} share \"{prefix}.>\"; give the sink one stream (`stream`), or \
             set exclusive_stream = false",
            both[0], both[1]
        )
    );
    // With one of them left, it overlaps the subjects but captures only some of them.
    js.delete_stream(&second).await.expect("delete stream");
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("one stream capturing part of the subjects cannot hold the chain");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert_eq!(
        err.to_string(),
        format!(
            "exclusive_stream needs every subject of the sink in one stream, but stream \
             {first:?} captures only part of \"{prefix}.>\" (its subjects: \
             [\"{prefix}.a.events\"]); add \"{prefix}.>\" to it (`nats stream edit {first} \
             --subjects ...`), or set exclusive_stream = false"
        )
    );
    js.delete_stream(&first).await.expect("delete stream");
}

/// A stream refuses one event as larger than its `max_msg_size` (the server would take
/// it). The first send asks for the ack of its last publish only, which is refused as
/// out of chain; the first resend acknowledges every publish and learns which event the
/// stream refuses (the ones after it, already sent, are refused as out of chain once
/// more); the second resend delivers the rest in order and reports only the big one.
#[tokio::test]
async fn an_event_the_stream_refuses_does_not_break_the_chain() {
    let prefix = unique_name("refused");
    let stream_name = unique_name("SMALL");
    let js = js_for(nats_url()).await;
    js.create_stream(stream::Config {
        name: stream_name.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_message_size: 2_000,
        ..Default::default()
    })
    .await
    .expect("stream created");
    let mut config = NatsConfig::new(nats_url());
    config.subject = Template::parse(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    config.stream = Some(stream_name.clone());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");

    let events: Arc<[Envelope]> = (0..5)
        .map(|n| event(&format!("r-{n}"), n, if n == 2 { 4_000 } else { 0 }))
        .collect();
    let first = send_once(&sink, events.clone()).await;
    let err = first.expect_err("the batch's last publish is out of chain");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(
        err.to_string()
            .contains("that did not follow its last message \"r-1\""),
        "{}",
        err.chain()
    );
    let second = send_once(&sink, events.clone()).await;
    let err = second.expect_err("the events after the refused one are out of chain");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    let outcome = send_once(&sink, events.clone())
        .await
        .expect("the second resend is delivered");
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [2]);
    assert!(
        outcome.rejected[0]
            .error
            .to_string()
            .contains("max_msg_size"),
        "{}",
        outcome.rejected[0].error
    );
    let stored: Vec<String> = read_stream(&js, &stream_name, 4)
        .await
        .iter()
        .map(msg_id)
        .collect();
    assert_eq!(stored, ["r-0", "r-1", "r-3", "r-4"]);
    js.delete_stream(&stream_name).await.expect("delete stream");
}

/// The server restarts after the stream's duplicate window passed, so the stream no
/// longer knows its last message id: the first publish after that is refused, and the
/// resend restarts the chain after the acknowledged predecessor.
#[tokio::test]
async fn a_stream_that_forgot_its_last_id_restarts_the_chain() {
    let (nats, sink) = forgetful_stream("FORGETS", "f").await;

    let second = batch("f", 3..6);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut errors = Vec::new();
    loop {
        match send_once(&sink, second.clone()).await {
            Ok(outcome) => {
                assert!(outcome.rejected.is_empty());
                break;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain());
                assert!(Instant::now() < deadline, "not delivered: {}", e.chain());
                errors.push(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no longer knows the id of its last message")),
        "{errors:?}"
    );
    let js = js_for(&nats.url()).await;
    let stored: Vec<String> = read_stream(&js, "FORGETS", 6)
        .await
        .iter()
        .map(msg_id)
        .collect();
    assert_eq!(stored, ["f-0", "f-1", "f-2", "f-3", "f-4", "f-5"]);
}

/// A batch whose acks fail while it is still being published (its first publish is
/// refused at once) is still published to its end, so the batch sent after it names the
/// right predecessor: resending both, in order, as the runner does, delivers both. Had
/// the sink stopped publishing at the failure, the next batch would follow an event from
/// the middle of this one and be refused on every resend.
#[tokio::test]
async fn a_batch_failing_while_published_leaves_the_chain_whole() {
    let (nats, sink) = forgetful_stream("MIDWAY", "m").await;

    let big = batch("m", 3..5_003);
    let next = batch("m", 5_003..5_013);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        // Both sent before either outcome is known, as the runner's window does.
        let first = sink.send(big.clone()).await;
        let second = sink.send(next.clone()).await;
        let first = match first {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        let second = match second {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match (first, second) {
            (Ok(a), Ok(b)) => {
                assert!(a.rejected.is_empty() && b.rejected.is_empty());
                break;
            }
            (a, b) => {
                for e in [a.err(), b.err()].into_iter().flatten() {
                    assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain());
                    assert!(
                        Instant::now() < deadline,
                        "not delivered after {attempts} attempts: {}",
                        e.chain()
                    );
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let js = js_for(&nats.url()).await;
    let stored: Vec<String> = read_stream(&js, "MIDWAY", 5_013)
        .await
        .iter()
        .map(msg_id)
        .collect();
    let expected: Vec<String> = (0..5_013).map(|n| format!("m-{n}")).collect();
    assert_eq!(stored, expected);
}

/// A dead-letter subject inside the exclusive stream would put a message of another
/// order into the chain: it is a fatal error that says what to choose instead, and
/// nothing is written.
#[tokio::test]
async fn a_dead_letter_subject_inside_the_exclusive_stream_is_fatal() {
    let prefix = unique_name("dlqin");
    let stream_name = unique_name("EXCLDLQ");
    let mut config = NatsConfig::new(nats_url());
    config.subject = Template::parse(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    config.stream = Some(stream_name.clone());
    config.stream_subjects = Some(vec![format!("{prefix}.>")]);
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    let inside = format!("{prefix}.dlq");
    let err = sink
        .dead_letter(&inside, &event("d-0", 0, 0), "too large")
        .await
        .expect_err("a dead letter inside the exclusive stream");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert_eq!(
        err.to_string(),
        format!(
            "dead-letter subject {inside:?} is captured by stream {stream_name:?}, which \
             exclusive_stream reserves for the pipeline's events in order; choose a \
             dead-letter subject outside it (the default is outflow.dlq.<pipeline>)"
        )
    );
    let js = js_for(nats_url()).await;
    assert_eq!(stream_len(&js, &stream_name).await, 0);
    js.delete_stream(&stream_name).await.expect("delete stream");
}

/// The JetStream publish acks a private server sends, as `(sequence, duplicate)`, read
/// by a second client listening on every reply inbox.
struct AckTap {
    acks: Arc<std::sync::Mutex<Vec<(u64, bool)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for AckTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AckTap {
    async fn start(url: &str) -> AckTap {
        let client = async_nats::connect(url).await.expect("tap connects");
        let mut inbox = outflow_testkit::subscribe_ready(
            &client,
            "_INBOX.>".to_string(),
            format!("_INBOX.{}", outflow_testkit::unique_name("probe")),
        )
        .await;
        let acks = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&acks);
        let task = tokio::spawn(async move {
            let _client = client;
            while let Some(msg) = futures::StreamExt::next(&mut inbox).await {
                let Ok(body) = serde_json::from_slice::<Value>(&msg.payload) else {
                    continue;
                };
                if let (Some(_), Some(seq)) = (body.get("stream"), body["seq"].as_u64()) {
                    let duplicate = body["duplicate"].as_bool().unwrap_or(false);
                    seen.lock().unwrap().push((seq, duplicate));
                }
            }
        });
        AckTap { acks, task }
    }

    /// The acks seen so far, after letting the last ones arrive.
    async fn acks(&self) -> Vec<(u64, bool)> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.acks.lock().unwrap().clone()
    }
}

async fn private_sink(nats: &PrivateNats, stream: &str, exclusive: bool) -> NatsSink {
    let mut config = NatsConfig::new(nats.url());
    config.stream = Some(stream.into());
    config.exclusive_stream = Some(exclusive);
    NatsSink::connect(config, "orders").await.expect("connect")
}

/// On an exclusive stream a batch sent for the first time asks for the ack of its last
/// publish only: three pipelined batches of 200 events cost three acks, and the stream
/// holds all 600 in order. On a shared stream every publish is acknowledged.
#[tokio::test]
async fn an_exclusive_stream_acknowledges_each_batch_once() {
    let nats = PrivateNats::start().await;
    let tap = AckTap::start(&nats.url()).await;
    let sink = private_sink(&nats, "ONCE", true).await;
    let mut pending = Vec::new();
    for n in 0..3 {
        pending.push(
            sink.send(batch("o", n * 200..(n + 1) * 200))
                .await
                .expect("sent"),
        );
    }
    for p in pending {
        assert!(p.await.expect("delivered").rejected.is_empty());
    }
    assert_eq!(tap.acks().await, [(200, false), (400, false), (600, false)]);
    let js = js_for(&nats.url()).await;
    let stored: Vec<String> = read_stream(&js, "ONCE", 600)
        .await
        .iter()
        .map(msg_id)
        .collect();
    let expected: Vec<String> = (0..600).map(|n| format!("o-{n}")).collect();
    assert_eq!(stored, expected);

    let shared = PrivateNats::start().await;
    let tap = AckTap::start(&shared.url()).await;
    let sink = private_sink(&shared, "EACH", false).await;
    let outcome = send_once(&sink, batch("s", 0..200))
        .await
        .expect("delivered");
    assert!(outcome.rejected.is_empty());
    let acks = tap.acks().await;
    assert_eq!(acks.len(), 200, "{acks:?}");
    assert!(acks
        .iter()
        .enumerate()
        .all(|(i, a)| *a == (i as u64 + 1, false)));
}

/// The batch's last event is too large for the server and never leaves: the last event
/// that was published is published again with a reply subject, JetStream answers it as
/// a duplicate, and that ack vouches for the batch. The next batch follows it.
#[tokio::test]
async fn a_batch_whose_last_event_never_left_is_vouched_for_by_the_one_before() {
    let nats = PrivateNats::start_with_max_payload(4_096).await;
    let tap = AckTap::start(&nats.url()).await;
    let sink = private_sink(&nats, "VOUCH", true).await;
    let events: Arc<[Envelope]> = (0..5)
        .map(|n| event(&format!("v-{n}"), n, if n == 4 { 8_000 } else { 0 }))
        .collect();
    let outcome = send_once(&sink, events).await.expect("delivered");
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [4]);
    assert!(
        outcome.rejected[0]
            .error
            .to_string()
            .contains("max_payload"),
        "{}",
        outcome.rejected[0].error
    );
    assert_eq!(tap.acks().await, [(4, true)]);
    let outcome = send_once(&sink, batch("v", 5..8))
        .await
        .expect("next batch");
    assert!(outcome.rejected.is_empty());
    let js = js_for(&nats.url()).await;
    let stored: Vec<String> = read_stream(&js, "VOUCH", 7)
        .await
        .iter()
        .map(msg_id)
        .collect();
    assert_eq!(stored, ["v-0", "v-1", "v-2", "v-3", "v-5", "v-6", "v-7"]);
}

/// The stream refuses the batch's last event for itself (over its `max_msg_size`): that
/// says nothing of the unacknowledged publishes before it, so the batch fails with a
/// transient error saying so, and its resend, every publish acknowledged, reports the
/// event and delivers the others.
#[tokio::test]
async fn a_refused_last_event_vouches_for_nothing() {
    let nats = PrivateNats::start().await;
    let js = js_for(&nats.url()).await;
    js.create_stream(stream::Config {
        name: "LASTBIG".into(),
        subjects: vec!["outbox.event.*".into()],
        max_message_size: 2_000,
        ..Default::default()
    })
    .await
    .expect("stream created");
    let sink = private_sink(&nats, "LASTBIG", true).await;
    let events: Arc<[Envelope]> = (0..5)
        .map(|n| event(&format!("l-{n}"), n, if n == 4 { 4_000 } else { 0 }))
        .collect();
    let err = send_once(&sink, events.clone())
        .await
        .expect_err("the refused last event cannot vouch");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(
        err.to_string().contains(
            "the stream refused the event at index 4 of the batch, whose ack was to confirm \
             the publishes before it; the batch is resent, each publish acknowledged"
        ),
        "{}",
        err.chain()
    );
    let outcome = send_once(&sink, events)
        .await
        .expect("the resend is delivered");
    let rejected: Vec<usize> = outcome.rejected.iter().map(|r| r.index).collect();
    assert_eq!(rejected, [4]);
    assert!(
        outcome.rejected[0]
            .error
            .to_string()
            .contains("max_msg_size"),
        "{}",
        outcome.rejected[0].error
    );
    let stored: Vec<String> = read_stream(&js, "LASTBIG", 4)
        .await
        .iter()
        .map(msg_id)
        .collect();
    assert_eq!(stored, ["l-0", "l-1", "l-2", "l-3"]);
}
