//! Test helpers: topic creation, and a consumer that reads a topic from the beginning until
//! it is quiet. Each test runs a broker of its own (`outflow_testkit::PrivateTansu`), so a
//! test may freeze it without disturbing others.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use outflow_core::{Envelope, Op, SourceInfo, Timestamp};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// How long a consumer waits for more messages before it calls a topic read.
pub(crate) const QUIET: Duration = Duration::from_secs(2);

/// Creates topics with the admin client.
pub(crate) async fn create_topics(brokers: &str, topics: &[(&str, i32)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = admin
        .create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code}"));
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) key: Option<String>,
    pub(crate) body: Vec<u8>,
    pub(crate) headers: Vec<(String, String)>,
}

impl Received {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn headers_named(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }
}

/// Reads every partition of a topic from the beginning, without a consumer group, until no
/// message arrived for [`QUIET`] (tansu's high watermarks are not reliable). Messages are
/// returned per partition in offset order, partitions in order.
pub(crate) fn read_topic(brokers: &str, topic: &str, extra: &[(&str, &str)]) -> Vec<Received> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", "outflow-test-reader")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    let consumer: BaseConsumer = config.create().expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .unwrap_or(0);
    assert!(partitions > 0, "topic {topic} has no partitions");
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition_offset(topic, p as i32, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&list).expect("assign");
    let mut out: Vec<Received> = Vec::new();
    let mut last = Instant::now();
    let hard_stop = Instant::now() + Duration::from_secs(120);
    while last.elapsed() < QUIET && Instant::now() < hard_stop {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(h.value.unwrap_or_default())
                                        .into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Received {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    body: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            None => {}
        }
    }
    out.sort_by_key(|r| (r.partition, r.offset));
    out
}

/// An outbox event with the given id and aggregate.
pub(crate) fn event(id: &str, aggregate_type: &str, aggregate_id: &str, seq: u64) -> Envelope {
    Envelope {
        id: id.to_string(),
        op: Op::Insert,
        aggregate_type: aggregate_type.to_string(),
        aggregate_id: aggregate_id.to_string(),
        event_type: "OrderUpdated".to_string(),
        payload: serde_json::json!({ "aggregate": aggregate_id, "seq": seq }).into(),
        key: None,
        before: None,
        after: None,
        headers: BTreeMap::from([("traceparent".to_string(), format!("00-{id}-01"))]),
        source: SourceInfo {
            connector: "postgres".into(),
            pipeline: "orders".into(),
            database: "shop".into(),
            collection: "public.outbox".into(),
            partition: None,
            position: format!("0/{seq}"),
            txid: Some("731".into()),
            commit_time: Timestamp::parse_rfc3339("2026-12-03T12:00:00.123456Z"),
            unchanged_columns: Vec::new(),
        },
    }
}

/// Groups received messages by key, in the order they were read within their partition.
pub(crate) fn by_key(received: &[Received]) -> HashMap<String, Vec<&Received>> {
    let mut map: HashMap<String, Vec<&Received>> = HashMap::new();
    for r in received {
        map.entry(r.key.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    map
}

/// A unique topic name.
pub(crate) fn topic_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}.{}.{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
