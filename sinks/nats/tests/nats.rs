//! The NATS sink against real nats-server instances: the shared test server from
//! `scripts/services.sh start` (each test with its own subjects and streams) and private
//! servers for limits, outages and authentication.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use outflow_core::{
    Envelope, Error, ErrorKind, EventSink, Format, Op, SourceInfo, Template, Timestamp,
};
use outflow_sink_nats::{check, NatsConfig, NatsSink, Secret};
use outflow_testkit::{free_port, nats_url, unique_name, wait_for_tcp, ChildGuard, PrivateNats};
use serde_json::{json, Value};

mod common;
use common::{header, js_for, msg_ids, read_stream};

fn event(id: &str, aggregate_type: &str, n: usize) -> Envelope {
    Envelope {
        id: id.to_string(),
        op: Op::Insert,
        aggregate_type: aggregate_type.to_string(),
        aggregate_id: format!("agg-{n}"),
        event_type: "OrderCreated".into(),
        payload: json!({"n": n}).into(),
        key: None,
        before: None,
        after: None,
        headers: BTreeMap::from([("traceparent".to_string(), format!("00-trace-{n}-01"))]),
        source: SourceInfo {
            connector: "postgres".into(),
            pipeline: "orders".into(),
            database: "shop".into(),
            collection: "public.outbox".into(),
            position: format!("0/{n}/0"),
            commit_time: Timestamp::parse_rfc3339("2026-12-03T12:00:00.123456Z"),
            ..Default::default()
        },
    }
}

/// `count` events with ids `<prefix>-<first + i>` alternating between two aggregate types.
fn batch(prefix: &str, first: usize, count: usize) -> Arc<[Envelope]> {
    (first..first + count)
        .map(|n| {
            let kind = if n % 2 == 0 { "order" } else { "invoice" };
            event(&format!("{prefix}-{n}"), kind, n)
        })
        .collect()
}

fn ids(events: &[Envelope]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

/// A configuration on the shared server with a subject prefix of its own.
fn shared_config(prefix: &str) -> NatsConfig {
    let mut config = NatsConfig::new(nats_url());
    config.subject = Template::parse(&format!("{prefix}.{{aggregate_type}}")).unwrap();
    config
}

#[tokio::test]
async fn pipelined_batches_arrive_in_order_with_their_ids() {
    let prefix = unique_name("ord");
    let stream = unique_name("ORD");
    let mut config = shared_config(&prefix);
    config.stream = Some(stream.clone());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");

    let js = js_for(nats_url()).await;
    let mut created = js
        .get_stream(&stream)
        .await
        .expect("stream created by the sink");
    let info = created.info().await.unwrap();
    assert_eq!(info.config.subjects, vec![format!("{prefix}.*")]);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));

    // Three batches in flight at once, as the pipeline's window keeps them.
    let batches = [batch("a", 0, 200), batch("a", 200, 1), batch("a", 201, 99)];
    let mut pendings = Vec::new();
    for b in &batches {
        pendings.push(sink.send(b.clone()).await.expect("send"));
    }
    for pending in pendings {
        let outcome = pending.await.expect("batch acknowledged");
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    }

    let expected: Vec<String> = batches.iter().flat_map(|b| ids(b)).collect();
    let messages = read_stream(&js, &stream, expected.len()).await;
    assert_eq!(msg_ids(&messages), expected);
    // Each message went to the subject of its aggregate type, with its body.
    for (msg, ev) in messages.iter().zip(batches.iter().flat_map(|b| b.iter())) {
        assert_eq!(
            msg.subject.as_str(),
            format!("{prefix}.{}", ev.aggregate_type)
        );
        let body: Envelope = serde_json::from_slice(&msg.payload).unwrap();
        assert_eq!(&body, ev);
    }
    sink.close().await.expect("close");
}

#[tokio::test]
async fn a_batch_sent_twice_is_stored_once() {
    let prefix = unique_name("dup");
    let stream = unique_name("DUP");
    let mut config = shared_config(&prefix);
    config.stream = Some(stream.clone());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    let b = batch("d", 0, 50);
    for _ in 0..2 {
        let outcome = sink.send(b.clone()).await.unwrap().await.expect("acked");
        assert!(outcome.rejected.is_empty());
    }
    // A redelivery overlapping the first batch, plus new events.
    let overlap = batch("d", 40, 20);
    sink.send(overlap).await.unwrap().await.expect("acked");
    let js = js_for(nats_url()).await;
    let messages = read_stream(&js, &stream, 60).await;
    let expected: Vec<String> = (0..60).map(|n| format!("d-{n}")).collect();
    assert_eq!(msg_ids(&messages), expected);
}

#[tokio::test]
async fn every_format_carries_its_headers_and_body() {
    let js = js_for(nats_url()).await;
    for format in ["envelope", "payload", "cloudevents", "cloudevents-binary"] {
        let prefix = unique_name("fmt");
        let stream = unique_name("FMT");
        let mut config = shared_config(&prefix);
        config.stream = Some(stream.clone());
        config.format = format.parse::<Format>().unwrap();
        let sink = NatsSink::connect(config, "orders").await.expect("connect");
        let ev = event("f-1", "order", 7);
        sink.send(Arc::from(vec![ev.clone()]))
            .await
            .unwrap()
            .await
            .expect("acked");
        let messages = read_stream(&js, &stream, 1).await;
        let msg = &messages[0];
        assert_eq!(header(msg, "Nats-Msg-Id"), Some("f-1"), "{format}");
        assert_eq!(
            header(msg, "traceparent"),
            Some("00-trace-7-01"),
            "{format}"
        );
        let body: Value = serde_json::from_slice(&msg.payload).unwrap();
        match format {
            "envelope" => {
                assert_eq!(header(msg, "Content-Type"), Some("application/json"));
                assert_eq!(serde_json::from_value::<Envelope>(body).unwrap(), ev);
            }
            "payload" => {
                assert_eq!(header(msg, "Content-Type"), Some("application/json"));
                assert_eq!(body, json!({"n": 7}));
                assert_eq!(header(msg, "id"), Some("f-1"));
                assert_eq!(header(msg, "aggregate_type"), Some("order"));
                assert_eq!(header(msg, "aggregate_id"), Some("agg-7"));
                assert_eq!(header(msg, "event_type"), Some("OrderCreated"));
            }
            "cloudevents" => {
                assert_eq!(
                    header(msg, "Content-Type"),
                    Some("application/cloudevents+json")
                );
                assert_eq!(body["specversion"], "1.0");
                assert_eq!(body["id"], "f-1");
                assert_eq!(body["type"], "OrderCreated");
                assert_eq!(body["subject"], "agg-7");
                assert_eq!(body["source"], "outflow/orders/public.outbox");
                assert_eq!(body["time"], "2026-12-03T12:00:00.123456Z");
                assert_eq!(body["data"], json!({"n": 7}));
            }
            "cloudevents-binary" => {
                assert_eq!(header(msg, "Content-Type"), Some("application/json"));
                assert_eq!(body, json!({"n": 7}));
                assert_eq!(header(msg, "ce-specversion"), Some("1.0"));
                assert_eq!(header(msg, "ce-id"), Some("f-1"));
                assert_eq!(header(msg, "ce-type"), Some("OrderCreated"));
                assert_eq!(header(msg, "ce-subject"), Some("agg-7"));
                assert_eq!(
                    header(msg, "ce-source"),
                    Some("outflow/orders/public.outbox")
                );
                assert_eq!(header(msg, "ce-time"), Some("2026-12-03T12:00:00.123456Z"));
            }
            _ => unreachable!(),
        }
    }
}

#[tokio::test]
async fn a_missing_stream_is_fatal_and_says_how_to_create_it() {
    let prefix = unique_name("nostream");
    let err = NatsSink::connect(shared_config(&prefix), "orders")
        .await
        .expect_err("no stream captures the subjects");
    assert_eq!(err.kind(), ErrorKind::Fatal);
    let text = err.to_string();
    assert!(
        text.contains(&format!("{prefix}.{{aggregate_type}}")),
        "{text}"
    );
    assert!(
        text.contains(&format!("nats stream add OUTBOX --subjects '{prefix}.*'")),
        "{text}"
    );
    assert!(text.contains("stream = \"NAME\""), "{text}");

    let err = check(&shared_config(&prefix))
        .await
        .expect_err("check fails too");
    assert_eq!(err.kind(), ErrorKind::Fatal);

    // A stream deleted while the sink runs: the publish is answered by no one, and the
    // batch fails fatally naming the subject.
    let stream = unique_name("GONE");
    let mut config = shared_config(&prefix);
    config.stream = Some(stream.clone());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    js_for(nats_url())
        .await
        .delete_stream(&stream)
        .await
        .expect("delete");
    let pending = sink
        .send(batch("m", 0, 3))
        .await
        .expect("publishes are queued");
    let err = pending.await.expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().contains(&format!(
            "no JetStream stream captures subject \"{prefix}.order\""
        )),
        "{err}"
    );
}

#[tokio::test]
async fn check_reports_the_stream() {
    let prefix = unique_name("chk");
    let stream = unique_name("CHK");
    let mut config = shared_config(&prefix);
    config.stream = Some(stream.clone());
    let report = check(&config).await.expect("check");
    assert!(
        report[0].starts_with("connected to NATS at nats://127.0.0.1:"),
        "{report:?}"
    );
    assert!(
        report[1].contains(&format!(
            "stream {stream:?} does not exist; it will be created"
        )),
        "{report:?}"
    );
    NatsSink::connect(config.clone(), "orders")
        .await
        .expect("connect creates it");
    let report = check(&config).await.expect("check");
    assert!(
        report[1].starts_with(&format!("stream {stream:?} exists")),
        "{report:?}"
    );
    let report = check(&shared_config(&prefix))
        .await
        .expect("check without `stream`");
    assert_eq!(
        report[1],
        format!("subjects \"{prefix}.*\" are captured by stream {stream:?}")
    );

    let mut core = shared_config(&prefix);
    core.jetstream = false;
    let report = check(&core).await.expect("check core");
    assert!(report[1].contains("at most once"), "{report:?}");
}

#[tokio::test]
async fn an_event_over_max_payload_is_rejected_with_its_index() {
    let nats = PrivateNats::start_with_max_payload(2048).await;
    let mut config = NatsConfig::new(nats.url());
    config.stream = Some("BIG".into());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    let mut events: Vec<Envelope> = batch("p", 0, 4).to_vec();
    events[2].payload = json!({"blob": "x".repeat(4000)}).into();
    let outcome = sink
        .send(Arc::from(events))
        .await
        .unwrap()
        .await
        .expect("outcome");
    assert_eq!(outcome.rejected.len(), 1);
    let rejection = &outcome.rejected[0];
    assert_eq!(rejection.index, 2);
    assert_eq!(rejection.error.kind(), ErrorKind::PerEvent);
    let text = rejection.error.to_string();
    assert!(text.starts_with("event p-2 is "), "{text}");
    assert!(
        text.contains("over the server's max_payload of 2048 bytes"),
        "{text}"
    );

    let js = js_for(&nats.url()).await;
    let messages = read_stream(&js, "BIG", 3).await;
    assert_eq!(msg_ids(&messages), ["p-0", "p-1", "p-3"]);
}

/// Sends a batch until it is acknowledged, as the pipeline does after transient errors.
async fn deliver(sink: &NatsSink, b: Arc<[Envelope]>, deadline: Instant) {
    loop {
        let result = match sink.send(b.clone()).await {
            Ok(pending) => pending.await,
            Err(e) => Err(e),
        };
        match result {
            Ok(outcome) => {
                assert!(outcome.rejected.is_empty());
                return;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain());
                assert!(
                    Instant::now() < deadline,
                    "not delivered in time: {}",
                    e.chain()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test]
async fn an_outage_is_transient_and_the_same_sink_delivers_after_restart() {
    let mut nats = PrivateNats::start().await;
    let ack_timeout = Duration::from_secs(1);
    let mut config = NatsConfig::new(nats.url());
    config.stream = Some("OUTAGE".into());
    config.ack_timeout = ack_timeout;
    let sink = NatsSink::connect(config, "orders").await.expect("connect");

    let first = batch("o", 0, 100);
    sink.send(first.clone())
        .await
        .unwrap()
        .await
        .expect("acked before the outage");

    // The server dies while a large batch is in flight.
    let second = batch("o", 100, 2000);
    let in_flight = sink.send(second.clone()).await;
    nats.kill().await;
    let started = Instant::now();
    let in_flight = match in_flight {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    };
    if let Err(e) = &in_flight {
        assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain());
    }
    assert!(
        started.elapsed() < ack_timeout * 3,
        "{:?}",
        started.elapsed()
    );

    // While the server is down, a batch fails transiently within ack_timeout.
    let third = batch("o", 2100, 10);
    let started = Instant::now();
    let result = match sink.send(third.clone()).await {
        Ok(pending) => pending.await,
        Err(e) => Err(e),
    };
    let err = result.expect_err("the server is down");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(
        started.elapsed() < ack_timeout * 2,
        "failed after {:?}",
        started.elapsed()
    );

    nats.start_again().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    if in_flight.is_err() {
        deliver(&sink, second.clone(), deadline).await;
    }
    deliver(&sink, third.clone(), deadline).await;

    let js = js_for(&nats.url()).await;
    let expected: Vec<String> = [first, second, third].iter().flat_map(|b| ids(b)).collect();
    let messages = read_stream(&js, "OUTAGE", expected.len()).await;
    let got = msg_ids(&messages);
    // The batch acknowledged before the outage is stored first, in order.
    assert_eq!(got[..100], expected[..100]);
    // Every id exactly once: nothing lost, redeliveries deduplicated.
    let mut sorted_got = got.clone();
    sorted_got.sort();
    let mut sorted_expected = expected.clone();
    sorted_expected.sort();
    assert_eq!(sorted_got, sorted_expected);
}

#[tokio::test]
async fn dead_letters_land_on_their_subject_with_the_reason() {
    let prefix = unique_name("dl");
    let stream = unique_name("DL");
    let mut config = shared_config(&prefix);
    config.stream = Some(stream.clone());
    let sink = NatsSink::connect(config, "orders").await.expect("connect");
    let ev = event("dead-1", "order", 1);
    let destination = format!("{prefix}_dlq.{{pipeline}}");
    for _ in 0..2 {
        sink.dead_letter(&destination, &ev, "too large for the broker")
            .await
            .expect("dead-lettered");
    }
    let js = js_for(nats_url()).await;
    let dlq_stream = format!("{stream}_DLQ");
    let messages = read_stream(&js, &dlq_stream, 1).await;
    let msg = &messages[0];
    assert_eq!(msg.subject.as_str(), format!("{prefix}_dlq.orders"));
    assert_eq!(header(msg, "Nats-Msg-Id"), Some("dead-1:dlq"));
    assert_eq!(
        header(msg, "outflow-error"),
        Some("too large for the broker")
    );
    let body: Envelope = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(body, ev);

    // Without `stream`, a dead-letter subject no stream captures is fatal.
    let mut plain = shared_config(&prefix);
    plain.stream = None;
    let sink = NatsSink::connect(plain, "orders")
        .await
        .expect("main stream exists");
    let err = sink
        .dead_letter(&format!("{prefix}_nowhere"), &ev, "x")
        .await
        .expect_err("no stream");
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().contains(&format!("\"{prefix}_nowhere\"")),
        "{err}"
    );
}

#[tokio::test]
async fn core_nats_publishes_and_flushes() {
    let prefix = unique_name("core");
    let mut config = shared_config(&prefix);
    config.jetstream = false;
    let sink = NatsSink::connect(config, "orders")
        .await
        .expect("connect without a stream");
    let client = async_nats::connect(nats_url()).await.unwrap();
    let mut sub =
        outflow_testkit::subscribe_ready(&client, format!("{prefix}.*"), format!("{prefix}.probe"))
            .await;
    let b = batch("c", 0, 20);
    let outcome = sink.send(b.clone()).await.unwrap().await.expect("flushed");
    assert!(outcome.rejected.is_empty());
    let mut got = Vec::new();
    while got.len() < b.len() {
        let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("message arrives")
            .unwrap();
        got.push(msg.headers.unwrap().get("Nats-Msg-Id").unwrap().to_string());
    }
    assert_eq!(got, ids(&b));

    sink.dead_letter(&format!("{prefix}.dlq"), &b[0], "why")
        .await
        .expect("dead letter");
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(msg.subject.as_str(), format!("{prefix}.dlq"));
    assert_eq!(
        msg.headers.unwrap().get("outflow-error").unwrap().as_str(),
        "why"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_transient() {
    let port = free_port();
    let mut config = NatsConfig::new(format!("nats://127.0.0.1:{port}"));
    config.ack_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("nothing listens");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(err
        .to_string()
        .starts_with(&format!("cannot reach NATS at nats://127.0.0.1:{port}")));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// A private server requiring the given command-line authentication.
async fn auth_server(args: &[&str]) -> (ChildGuard, String) {
    let port = free_port();
    let mut cmd = Command::new("nats-server");
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child =
        ChildGuard::spawn(&mut cmd).expect("nats-server runs (apt-get install nats-server)");
    let addr = format!("127.0.0.1:{port}");
    wait_for_tcp(&addr, Duration::from_secs(20))
        .await
        .expect("auth server starts");
    (child, format!("nats://{addr}"))
}

#[tokio::test]
async fn token_authentication() {
    let (_server, url) = auth_server(&["--auth", "s3cret-token"]).await;
    let mut config = NatsConfig::new(&url);
    config.jetstream = false;
    config.token = Some(Secret::new("s3cret-token"));
    NatsSink::connect(config.clone(), "orders")
        .await
        .expect("right token");

    config.token = Some(Secret::new("wrong-token"));
    let err = NatsSink::connect(config.clone(), "orders")
        .await
        .expect_err("wrong token");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert!(err.to_string().contains("refused the connection"), "{err}");
    assert!(!err.chain().contains("wrong-token"), "{}", err.chain());

    config.token = None;
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("no token");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
}

#[tokio::test]
async fn user_and_password_authentication() {
    let (_server, url) = auth_server(&["--user", "relay", "--pass", "pw-1"]).await;
    let mut config = NatsConfig::new(&url);
    config.jetstream = false;
    config.user = Some("relay".into());
    config.password = Some(Secret::new("pw-1"));
    let sink = NatsSink::connect(config.clone(), "orders")
        .await
        .expect("right password");
    let outcome = sink
        .send(batch("u", 0, 2))
        .await
        .unwrap()
        .await
        .expect("flushed");
    assert!(outcome.rejected.is_empty());

    config.password = Some(Secret::new("pw-2"));
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert!(!format!("{err:?}").contains("pw-2"));
}

/// A private server with the given configuration file text.
async fn configured_server(config: &str) -> (ChildGuard, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("server.conf");
    std::fs::write(&path, config).unwrap();
    let (server, url) = auth_server(&["-c", path.to_str().unwrap()]).await;
    (server, url, dir)
}

/// Publishing with an NKey seed to a server that knows the user's public key; a seed of
/// another user is refused.
#[tokio::test]
async fn nkey_authentication() {
    let user = nkeys::KeyPair::new_user();
    let (_server, url, _dir) = configured_server(&format!(
        "authorization {{ users = [ {{ nkey: \"{}\" }} ] }}\n",
        user.public_key()
    ))
    .await;
    let mut config = NatsConfig::new(&url);
    config.jetstream = false;
    config.nkey_seed = Some(Secret::new(user.seed().unwrap()));
    let sink = NatsSink::connect(config.clone(), "orders")
        .await
        .expect("the user's seed");
    let outcome = sink
        .send(batch("nk", 0, 2))
        .await
        .unwrap()
        .await
        .expect("flushed");
    assert!(outcome.rejected.is_empty());

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    config.nkey_seed = Some(Secret::new(stranger.clone()));
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("another user's seed");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert!(err.to_string().contains("refused the connection"), "{err}");
    assert!(!format!("{err:?}").contains(&stranger));
}

/// A user allowed to publish to `perm.order` but not `perm.invoice`: the server drops the
/// forbidden publish without an answer, and the batch fails fatally with the server's
/// words and what to grant, instead of timing out and being retried forever.
#[tokio::test]
async fn a_subject_the_user_may_not_publish_to_is_fatal_and_named() {
    let store = tempfile::tempdir().unwrap();
    let (_server, url, _dir) = configured_server(&format!(
        "jetstream {{ store_dir: \"{}\" }}\n\
         authorization {{ users = [ {{ user: relay, password: pw, permissions: {{\n\
           publish: {{ allow: [\"$JS.API.>\", \"perm.order\"] }},\n\
           subscribe: {{ allow: [\"_INBOX.>\"] }} }} }} ] }}\n",
        store.path().display()
    ))
    .await;
    let mut config = NatsConfig::new(&url);
    config.subject = Template::parse("perm.{aggregate_type}").unwrap();
    config.stream = Some("PERM".into());
    config.user = Some("relay".into());
    config.password = Some(Secret::new("pw"));
    config.ack_timeout = Duration::from_secs(1);
    let sink = NatsSink::connect(config, "orders")
        .await
        .expect("the user may use the JetStream API");

    let outcome = sink
        .send(Arc::from(vec![
            event("p-0", "order", 0),
            event("p-1", "order", 1),
        ]))
        .await
        .unwrap()
        .await
        .expect("permitted subject");
    assert!(outcome.rejected.is_empty());

    let started = Instant::now();
    let err = match sink.send(batch("p", 2, 2)).await {
        Ok(pending) => pending.await.expect_err("forbidden subject"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    let text = err.to_string();
    assert!(
        text.contains(r#"Permissions Violation for Publish to "perm.invoice""#),
        "{text}"
    );
    assert!(
        text.contains("grant the connecting user publish permission"),
        "{text}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The permitted event of the failed batch is stored; the forbidden one is not.
    let client = async_nats::ConnectOptions::with_user_and_password("relay".into(), "pw".into())
        .connect(&url)
        .await
        .expect("test client connects");
    let messages = read_stream(&jetstream::new(client), "PERM", 3).await;
    assert_eq!(msg_ids(&messages), ["p-0", "p-1", "p-2"]);
}

/// A NATS JWT (`ed25519-nkey`) with `claims`, signed by `issuer`.
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: Value) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let claims = json!({
        "jti": unique_name("jti").to_uppercase(),
        "iat": 1_700_000_000u64,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.encode(issuer.sign(signed.as_bytes()).unwrap());
    format!("{signed}.{signature}")
}

/// A `.creds` file (user JWT and seed) for a server in operator mode: the sink signs the
/// server's nonce with the seed and presents the JWT, which the server checks against the
/// account and operator; a user signed by another account is refused.
#[tokio::test]
async fn creds_file_authentication() {
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let unlimited = json!({"subs": -1, "data": -1, "payload": -1, "imports": -1,
        "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "op",
        json!({"type": "operator", "version": 2}),
    );
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "acc",
        json!({"limits": unlimited, "type": "account", "version": 2}),
    );
    let user_jwt = |signer: &nkeys::KeyPair| {
        nats_jwt(
            signer,
            &user.public_key(),
            "relay",
            json!({"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2}),
        )
    };
    let (_server, url, dir) = configured_server(&format!(
        "operator: \"{operator_jwt}\"\nresolver: MEMORY\nresolver_preload: {{ {}: \"{account_jwt}\" }}\n",
        account.public_key()
    ))
    .await;
    let creds = |jwt: &str| {
        format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{}\n------END USER NKEY SEED------\n",
            user.seed().unwrap()
        )
    };
    let good = dir.path().join("relay.creds");
    std::fs::write(&good, creds(&user_jwt(&account))).unwrap();
    let mut config = NatsConfig::new(&url);
    config.jetstream = false;
    config.creds_file = Some(good);
    let sink = NatsSink::connect(config.clone(), "orders")
        .await
        .expect("valid credentials");
    let outcome = sink
        .send(batch("cr", 0, 2))
        .await
        .unwrap()
        .await
        .expect("flushed");
    assert!(outcome.rejected.is_empty());

    let forged = dir.path().join("forged.creds");
    std::fs::write(&forged, creds(&user_jwt(&nkeys::KeyPair::new_account()))).unwrap();
    config.creds_file = Some(forged);
    let err = NatsSink::connect(config.clone(), "orders")
        .await
        .expect_err("a user of an unknown account");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert!(err.to_string().contains("refused the connection"), "{err}");

    config.creds_file = Some(dir.path().join("missing.creds"));
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("no such file");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert!(
        err.to_string().contains("cannot read `creds_file`"),
        "{err}"
    );
}

/// Runs openssl with `args` in `dir`, failing the test with its output when it fails.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=outflow test ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(d.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "san.ext",
            "-out",
            "server.pem",
        ],
    );
    let cert = d.join("server.pem");
    let key = d.join("server.key");
    let (_server, url) = auth_server(&[
        "--tls",
        "--tlscert",
        cert.to_str().unwrap(),
        "--tlskey",
        key.to_str().unwrap(),
    ])
    .await;

    let mut config = NatsConfig::new(&url);
    config.jetstream = false;
    config.tls_ca = Some(d.join("ca.pem"));
    let sink = NatsSink::connect(config.clone(), "orders")
        .await
        .expect("tls with our ca");
    let outcome = sink
        .send(batch("t", 0, 2))
        .await
        .unwrap()
        .await
        .expect("flushed");
    assert!(outcome.rejected.is_empty());

    // Without the CA the server's certificate is not trusted.
    config.tls_ca = None;
    config.tls_required = true;
    let err = NatsSink::connect(config.clone(), "orders")
        .await
        .expect_err("unknown ca");
    assert_eq!(err.kind(), ErrorKind::Fatal, "{}", err.chain());
    assert!(
        err.to_string().starts_with("TLS with NATS at"),
        "{}",
        err.chain()
    );

    // A CA file that does not exist is named.
    config.tls_ca = Some(d.join("missing.pem"));
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("missing file");
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(err.to_string().contains("cannot read `tls_ca`"), "{err}");
}

/// Connects with `stream` set to an existing stream capturing `captured` (made from the
/// test's subject prefix): the error, which says what the stream lacks.
async fn connect_to_existing_stream(prefix: &str, captured: &str) -> (String, Error) {
    let stream = unique_name("EXISTING");
    js_for(nats_url())
        .await
        .create_stream(jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![captured.to_string()],
            ..Default::default()
        })
        .await
        .expect("create stream");
    let mut config = shared_config(prefix);
    config.stream = Some(stream.clone());
    let err = NatsSink::connect(config, "orders")
        .await
        .expect_err("the stream does not capture the subjects");
    js_for(nats_url()).await.delete_stream(&stream).await.ok();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    (stream, err)
}

/// A stream that captures none of the subjects, and one that captures only some of them
/// (`<prefix>.order` of `<prefix>.*`): the second overlaps them, which the server's
/// stream lookup reports as a match, and must not be taken for the stream of every
/// subject.
#[tokio::test]
async fn an_existing_stream_without_the_subjects_is_fatal_and_says_what_to_change() {
    let prefix = unique_name("elsewhere");
    for captured in [format!("{prefix}_other.*"), format!("{prefix}.order")] {
        let (stream, err) = connect_to_existing_stream(&prefix, &captured).await;
        assert_eq!(
            err.to_string(),
            format!(
                "stream {stream:?} exists with subjects [{captured:?}], which do not capture \
                 \"{prefix}.*\"; add it to the stream (`nats stream edit {stream} --subjects \
                 ...`) or change `subject`"
            )
        );
    }
}
