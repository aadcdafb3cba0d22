//! The Kafka sink against a real Kafka-protocol broker (tansu, one private broker per test).

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::{by_key, create_topics, event, read_topic};
use outflow_core::{Envelope, ErrorKind, EventSink, Format, Template};
use outflow_sink_kafka::{check, KafkaConfig, KafkaSink};
use outflow_testkit::PrivateTansu;

fn config(brokers: &str) -> KafkaConfig {
    let mut config = KafkaConfig::new(brokers);
    config.linger_ms = 1;
    config
}

/// `keys` aggregates with `per_key` events each, interleaved: a0/0, a1/0, ..., a0/1, ...
fn interleaved(aggregate_type: &str, keys: usize, per_key: usize) -> Vec<Envelope> {
    let mut events = Vec::new();
    for seq in 0..per_key {
        for k in 0..keys {
            let id = format!("{aggregate_type}-a{k}-{seq}");
            events.push(event(&id, aggregate_type, &format!("a{k}"), seq as u64));
        }
    }
    events
}

async fn send_all(sink: &KafkaSink, events: &[Envelope], batch: usize) {
    let mut pending = Vec::new();
    for chunk in events.chunks(batch) {
        pending.push(sink.send(Arc::from(chunk.to_vec())).await.expect("send"));
    }
    for p in pending {
        let outcome = p.await.expect("batch acknowledged");
        assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    }
}

fn seq_of(body: &[u8], format: Format) -> u64 {
    let value: serde_json::Value = serde_json::from_slice(body).expect("json body");
    let payload = match format {
        Format::Envelope => &value["payload"],
        Format::CloudEvents { binary: false } => &value["data"],
        _ => &value,
    };
    payload["seq"].as_u64().expect("seq in payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_arrives_with_key_headers_and_payload_in_per_key_order() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    let formats = [
        Format::Envelope,
        Format::Payload,
        Format::CloudEvents { binary: false },
        Format::CloudEvents { binary: true },
    ];
    let topics: Vec<(Format, String)> = formats
        .iter()
        .map(|f| (*f, format!("outbox.event.{}", f.as_str().replace('-', "_"))))
        .collect();
    let specs: Vec<(&str, i32)> = topics.iter().map(|(_, t)| (t.as_str(), 3)).collect();
    create_topics(&brokers, &specs).await;

    for (format, topic) in &topics {
        let aggregate_type = topic.trim_start_matches("outbox.event.");
        let mut config = config(&brokers);
        config.format = *format;
        let sink = KafkaSink::connect(config, "orders").await.expect("connect");
        let events = interleaved(aggregate_type, 12, 20);
        send_all(&sink, &events, 37).await;
        sink.close().await.expect("close");

        let received = read_topic(&brokers, topic, &[]);
        let expected: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let got: Vec<&str> = received
            .iter()
            .map(|r| r.header("id").expect("id header"))
            .collect();
        assert_eq!(got.len(), events.len(), "{format}: one message per event");
        assert_eq!(
            got.iter().copied().collect::<BTreeSet<_>>(),
            expected,
            "{format}"
        );

        for r in &received {
            let id = r.header("id").unwrap();
            let source = events.iter().find(|e| e.id == id).unwrap();
            assert_eq!(r.headers_named("id"), 1, "{format}: exactly one id header");
            assert_eq!(
                r.key.as_deref(),
                Some(source.aggregate_id.as_str()),
                "{format}"
            );
            assert_eq!(
                r.header("traceparent"),
                Some(format!("00-{id}-01").as_str())
            );
            match format {
                Format::Envelope => {
                    let back: Envelope = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(&back, source);
                    assert_eq!(r.header("content-type"), Some("application/json"));
                }
                Format::Payload => {
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(body, source.payload.to_value().unwrap());
                    assert_eq!(r.header("aggregate_id"), Some(source.aggregate_id.as_str()));
                    assert_eq!(r.header("event_type"), Some("OrderUpdated"));
                }
                Format::CloudEvents { binary: false } => {
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(body["id"], id);
                    assert_eq!(body["data"], source.payload.to_value().unwrap());
                    assert_eq!(
                        r.header("content-type"),
                        Some("application/cloudevents+json")
                    );
                }
                Format::CloudEvents { binary: true } => {
                    let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                    assert_eq!(body, source.payload.to_value().unwrap());
                    assert_eq!(r.header("ce_id"), Some(id));
                    assert_eq!(r.header("ce_specversion"), Some("1.0"));
                    assert_eq!(r.header("ce_type"), Some("OrderUpdated"));
                    assert_eq!(r.header("ce_subject"), Some(source.aggregate_id.as_str()));
                    assert_eq!(r.header("ce_source"), Some("outflow/orders/public.outbox"));
                    assert_eq!(r.header("ce_time"), Some("2026-12-03T12:00:00.123456Z"));
                    assert_eq!(r.header("content-type"), Some("application/json"));
                }
            }
        }

        // Per-key order: each key's sequence is 0..20 in partition order, in one partition.
        let keyed = by_key(&received);
        assert_eq!(keyed.len(), 12, "{format}");
        for (key, messages) in keyed {
            let seqs: Vec<u64> = messages.iter().map(|m| seq_of(&m.body, *format)).collect();
            assert_eq!(
                seqs,
                (0..20).collect::<Vec<u64>>(),
                "{format}: order of key {key}"
            );
            let partitions: HashSet<i32> = messages.iter().map(|m| m.partition).collect();
            assert_eq!(partitions.len(), 1, "{format}: key {key} in one partition");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_local_queue_is_waited_out_without_loss_or_reordering() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outbox.event.queue", 2)]).await;
    let mut config = config(&brokers);
    config
        .properties
        .insert("queue.buffering.max.messages".into(), "8".into());
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    let events = interleaved("queue", 5, 60);
    send_all(&sink, &events, 300).await;

    let received = read_topic(&brokers, "outbox.event.queue", &[]);
    assert_eq!(received.len(), 300);
    for (key, messages) in by_key(&received) {
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| seq_of(&m.body, Format::Envelope))
            .collect();
        assert_eq!(seqs, (0..60).collect::<Vec<u64>>(), "order of key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_is_rejected_by_index_and_the_rest_delivered() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outbox.event.big", 1)]).await;
    let mut config = config(&brokers);
    config.message_max_bytes = Some(10_000);
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    let mut events = vec![
        event("small-0", "big", "a", 0),
        event("huge-1", "big", "a", 1),
        event("small-2", "big", "a", 2),
    ];
    events[1].payload = serde_json::json!({ "blob": "x".repeat(20_000), "seq": 1 }).into();
    let outcome = sink
        .send(Arc::from(events))
        .await
        .expect("send")
        .await
        .expect("batch outcome");
    assert_eq!(outcome.rejected.len(), 1, "{:?}", outcome.rejected);
    let rejection = &outcome.rejected[0];
    assert_eq!(rejection.index, 1);
    assert_eq!(rejection.error.kind(), ErrorKind::PerEvent);
    let text = rejection.error.to_string();
    assert!(text.contains("too large"), "{text}");
    assert!(text.contains("message.max.bytes is 10000"), "{text}");
    assert!(text.contains("\"outbox.event.big\""), "{text}");

    let ids: Vec<String> = read_topic(&brokers, "outbox.event.big", &[])
        .iter()
        .map(|r| r.header("id").unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["small-0", "small-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_topic_name_is_a_per_event_rejection_naming_the_topic() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outbox.event.good", 1)]).await;
    let sink = KafkaSink::connect(config(&brokers), "orders")
        .await
        .expect("connect");
    let events = vec![
        event("ok-0", "good", "a", 0),
        event("bad-1", "bad type!", "a", 1),
        event("ok-2", "good", "a", 2),
    ];
    let outcome = sink.send(Arc::from(events)).await.unwrap().await.unwrap();
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].index, 1);
    assert_eq!(outcome.rejected[0].error.kind(), ErrorKind::PerEvent);
    let text = outcome.rejected[0].error.to_string();
    assert!(text.contains("\"outbox.event.bad type!\""), "{text}");
    let ids: Vec<String> = read_topic(&brokers, "outbox.event.good", &[])
        .iter()
        .map(|r| r.header("id").unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["ok-0", "ok-2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_topic_is_fatal_unless_auto_creation_is_enabled() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    let sink = KafkaSink::connect(config(&brokers), "orders")
        .await
        .expect("connect");
    let err = match sink
        .send(Arc::from(vec![event("m-0", "missing", "a", 0)]))
        .await
    {
        Ok(_) => panic!("a missing topic must fail the send"),
        Err(err) => err,
    };
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert_eq!(
        err.to_string(),
        "kafka: topic \"outbox.event.missing\" does not exist; create it (kafka-topics.sh \
         --create --topic outbox.event.missing) or set `allow_auto_create_topics = true` in \
         the sink to let the broker create it"
    );

    // A constant topic is checked at connect already.
    let mut constant = config(&brokers);
    constant.topic = Template::parse("fixed.missing").unwrap();
    let err = KafkaSink::connect(constant, "orders").await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().contains("\"fixed.missing\" does not exist"),
        "{err}"
    );

    // With auto-creation the broker (tansu creates topics on metadata requests) makes it.
    let mut auto = config(&brokers);
    auto.allow_auto_create_topics = true;
    let sink = KafkaSink::connect(auto, "orders").await.expect("connect");
    let outcome = sink
        .send(Arc::from(vec![event("auto-0", "created", "a", 0)]))
        .await
        .expect("send")
        .await
        .expect("delivered");
    assert!(outcome.rejected.is_empty());
    let ids: Vec<String> = read_topic(&brokers, "outbox.event.created", &[])
        .iter()
        .map(|r| r.header("id").unwrap().to_string())
        .collect();
    assert_eq!(ids, vec!["auto-0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_holds_the_ack_until_it_is_back() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outbox.event.pause", 2)]).await;
    let mut config = config(&brokers);
    config.message_timeout_ms = 60_000;
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    let first = interleaved("pause", 4, 5);
    send_all(&sink, &first, 10).await;

    broker.freeze();
    let second: Vec<Envelope> = (5..10)
        .flat_map(|seq| (0..4).map(move |k| (k, seq)))
        .map(|(k, seq)| event(&format!("pause-a{k}-{seq}"), "pause", &format!("a{k}"), seq))
        .collect();
    let mut pending = sink
        .send(Arc::from(second.clone()))
        .await
        .expect("enqueue while down");
    let early = tokio::time::timeout(Duration::from_secs(5), &mut pending).await;
    assert!(
        early.is_err(),
        "no ack while the broker is stopped: {early:?}"
    );
    broker.thaw();
    let outcome = tokio::time::timeout(Duration::from_secs(50), pending)
        .await
        .expect("ack after the broker is back")
        .expect("delivered");
    assert!(outcome.rejected.is_empty());

    let received = read_topic(&brokers, "outbox.event.pause", &[]);
    let ids: BTreeSet<String> = received
        .iter()
        .map(|r| r.header("id").unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = first.iter().chain(&second).map(|e| e.id.clone()).collect();
    assert_eq!(ids, expected);
    for (key, messages) in by_key(&received) {
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| seq_of(&m.body, Format::Envelope))
            .collect();
        assert_eq!(seqs, (0..10).collect::<Vec<u64>>(), "order of key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_down_past_the_timeout_is_transient_and_the_retry_delivers() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outbox.event.down", 1)]).await;
    let mut config = config(&brokers);
    config.message_timeout_ms = 3_000;
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    send_all(&sink, &[event("down-0", "down", "a", 0)], 1).await;

    broker.freeze();
    let batch: Arc<[Envelope]> = Arc::from(vec![
        event("down-1", "down", "a", 1),
        event("down-2", "down", "a", 2),
    ]);
    let pending = sink.send(batch.clone()).await.expect("enqueue while down");
    let result = tokio::time::timeout(Duration::from_secs(30), pending)
        .await
        .expect("the delivery timeout must end the wait");
    let err = result.expect_err("a batch that timed out is not acknowledged");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    broker.thaw();

    // The pipeline sends the same batch again.
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match sink.send(batch.clone()).await {
                Ok(p) => match p.await {
                    Ok(outcome) => break outcome,
                    Err(e) if e.kind() == ErrorKind::Transient => {}
                    Err(e) => panic!("{}", e.chain()),
                },
                Err(e) if e.kind() == ErrorKind::Transient => {}
                Err(e) => panic!("{}", e.chain()),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await
    .expect("retry delivered");
    assert!(outcome.rejected.is_empty());
    let ids: BTreeSet<String> = read_topic(&brokers, "outbox.event.down", &[])
        .iter()
        .map(|r| r.header("id").unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = ["down-0", "down-1", "down-2"].map(String::from).into();
    assert_eq!(ids, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_writes_the_envelope_with_id_and_error_headers() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outflow.dlq", 1)]).await;
    let sink = KafkaSink::connect(config(&brokers), "orders")
        .await
        .expect("connect");
    let ev = event("dead-1", "order", "42", 7);
    sink.dead_letter("outflow.dlq", &ev, "message of 2000000 bytes is too large")
        .await
        .expect("dead letter");
    let received = read_topic(&brokers, "outflow.dlq", &[]);
    assert_eq!(received.len(), 1);
    let r = &received[0];
    assert_eq!(r.header("id"), Some("dead-1"));
    assert_eq!(
        r.header("outflow-error"),
        Some("message of 2000000 bytes is too large")
    );
    assert_eq!(r.key.as_deref(), Some("42"));
    let back: Envelope = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(back, ev);

    let err = sink
        .dead_letter("outflow.nodlq", &ev, "x")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().contains("\"outflow.nodlq\" does not exist"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_mode_commits_each_batch_in_order() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("outbox.event.txn", 2), ("outflow.txn.dlq", 1)]).await;
    let mut config = config(&brokers);
    config.transactional_id = Some("outflow-test-txn".into());
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    let events = interleaved("txn", 6, 15);
    send_all(&sink, &events, 20).await;
    sink.dead_letter("outflow.txn.dlq", &events[0], "refused")
        .await
        .expect("dead letter");
    sink.close().await.expect("close");

    let received = read_topic(
        &brokers,
        "outbox.event.txn",
        &[("isolation.level", "read_committed")],
    );
    let ids: BTreeSet<String> = received
        .iter()
        .map(|r| r.header("id").unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        events.iter().map(|e| e.id.clone()).collect::<BTreeSet<_>>()
    );
    assert_eq!(received.len(), events.len());
    for (key, messages) in by_key(&received) {
        let seqs: Vec<u64> = messages
            .iter()
            .map(|m| seq_of(&m.body, Format::Envelope))
            .collect();
        assert_eq!(seqs, (0..15).collect::<Vec<u64>>(), "order of key {key}");
    }
    let dlq = read_topic(
        &brokers,
        "outflow.txn.dlq",
        &[("isolation.level", "read_committed")],
    );
    assert_eq!(dlq.len(), 1);
    assert_eq!(dlq[0].header("id"), Some(events[0].id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_brokers_and_topics() {
    let broker = PrivateTansu::start().await;
    let brokers = broker.brokers();
    create_topics(&brokers, &[("fixed.topic", 3)]).await;

    let mut fixed = config(&brokers);
    fixed.topic = Template::parse("fixed.topic").unwrap();
    let lines = check(&fixed).await.expect("check");
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("kafka brokers reachable: 1 broker(s): "),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "kafka topic \"fixed.topic\" exists with 3 partition(s)"
    );

    let mut missing = config(&brokers);
    missing.topic = Template::parse("fixed.other").unwrap();
    let err = check(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().contains("\"fixed.other\" does not exist"),
        "{err}"
    );
    missing.allow_auto_create_topics = true;
    let lines = check(&missing).await.expect("check");
    assert!(
        lines[1].contains("allow_auto_create_topics is set"),
        "{lines:?}"
    );

    let templated = config(&brokers);
    let lines = check(&templated).await.expect("check");
    assert!(
        lines[1].contains("\"outbox.event.{aggregate_type}\" renders per event"),
        "{lines:?}"
    );

    drop(broker);
    let mut down = config(&brokers);
    down.metadata_timeout_ms = 2_000;
    let err = check(&down).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(
        err.to_string().contains("cannot reach the brokers"),
        "{err}"
    );
}
