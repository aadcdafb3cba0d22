//! Error paths that a real broker cannot be made to take on demand, against librdkafka's
//! mock cluster: a broker that refuses a message as too large, plainly and inside a
//! transaction.

mod common;

use std::sync::Arc;

use common::event;
use outflow_core::{ErrorKind, EventSink};
use outflow_sink_kafka::{KafkaConfig, KafkaSink};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

fn mock_with_topic(topic: &str) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, 1, 1).expect("mock topic");
    mock
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_broker_refuses_as_too_large_is_rejected_with_its_index() {
    let mock = mock_with_topic("outbox.event.mock");
    let mut config = KafkaConfig::new(mock.bootstrap_servers());
    config.linger_ms = 0;
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    // The next produce request fails with MSG_SIZE_TOO_LARGE (a broker-side limit).
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let outcome = sink
        .send(Arc::from(vec![event("big-0", "mock", "a", 0)]))
        .await
        .expect("send")
        .await
        .expect("outcome");
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].index, 0);
    assert_eq!(outcome.rejected[0].error.kind(), ErrorKind::PerEvent);
    let text = outcome.rejected[0].error.to_string();
    assert!(text.contains("too large"), "{text}");
    assert!(text.contains("\"outbox.event.mock\""), "{text}");

    let outcome = sink
        .send(Arc::from(vec![event("ok-1", "mock", "a", 1)]))
        .await
        .expect("send")
        .await
        .expect("outcome");
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_message_aborts_the_transaction_and_the_retry_rejects_only_it() {
    let mock = mock_with_topic("outbox.event.mocktxn");
    let mut config = KafkaConfig::new(mock.bootstrap_servers());
    config.linger_ms = 0;
    config.transactional_id = Some("outflow-mock-txn".into());
    let sink = KafkaSink::connect(config, "orders").await.expect("connect");
    let batch = Arc::from(vec![event("big-0", "mocktxn", "a", 0)]);
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE],
    );
    let err = sink
        .send(Arc::clone(&batch))
        .await
        .expect("send")
        .await
        .expect_err("the refused message aborts the transaction");
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(err.to_string().contains("refused 1 event(s)"), "{err}");

    // The pipeline sends the batch again: the refused event is now a rejection, and the
    // transaction (with nothing else in it) commits.
    let outcome = sink
        .send(batch)
        .await
        .expect("send")
        .await
        .expect("outcome");
    assert_eq!(outcome.rejected.len(), 1);
    assert_eq!(outcome.rejected[0].index, 0);
    assert_eq!(outcome.rejected[0].error.kind(), ErrorKind::PerEvent);
    assert!(outcome.rejected[0].error.to_string().contains("too large"));

    // Later batches commit. librdkafka may purge the first one queued after an aborted
    // transaction (seen with the mock cluster): a transient error, and the retry commits.
    let later: Arc<[_]> = Arc::from(vec![
        event("ok-1", "mocktxn", "a", 1),
        event("ok-2", "mocktxn", "b", 2),
    ]);
    let mut attempts = Vec::new();
    let outcome = loop {
        match sink.send(Arc::clone(&later)).await.expect("send").await {
            Ok(outcome) => break outcome,
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Transient, "{}", e.chain());
                attempts.push(e.chain());
                assert!(attempts.len() < 2, "{attempts:?}");
            }
        }
    };
    assert!(outcome.rejected.is_empty(), "{:?}", outcome.rejected);
    sink.close().await.expect("close");
}
