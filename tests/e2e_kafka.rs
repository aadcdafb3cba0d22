//! End to end: the `outflow` binary streams a Postgres outbox to a Kafka-protocol broker.
//!
//! Every test runs the real binary against a fresh database on the shared Postgres cluster
//! (`scripts/services.sh start`) and a tansu broker of its own on a free port, so that
//! freezing the broker (SIGSTOP) touches no other test. Events are written by several
//! concurrent writers through `outflow-outbox`, each writer owning its aggregates, so the
//! order of one aggregate's committed events is known exactly. Consumers assign every
//! partition from the beginning (assign, no subscription) and read until the topics have
//! been quiet for a while: tansu's high watermarks are not reliable, so no read stops at a
//! watermark.

#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use outflow_outbox::{OutboxEvent, OutboxTable};
use outflow_testkit::{fresh_database, unique_name, PrivateTansu, TestDb};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use support::{commit_lsn, slot_state, toml_string, wait_slot_active, Outflow, SlotMonitor};
use tokio::sync::watch;

/// Partitions of every topic the tests create: several, so per-key order is a per-partition
/// property and not an accident of a single log.
const PARTITIONS: i32 = 3;

/// How long the topics must stay silent, once every expected id was read, before a read
/// ends: long enough for a stray duplicate or a rolled-back event to show up.
const QUIET: Duration = Duration::from_secs(3);

/// Longest wait for every committed event to arrive.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(120);

/// How long the broker stays frozen in the freeze test (the fifteen seconds, well
/// under the sink's default `message_timeout_ms` of 30 s).
const FREEZE: Duration = Duration::from_secs(15);

/// How long the binary may take to create its slot and start streaming.
const SLOT_READY: Duration = Duration::from_secs(60);

/// How long a graceful stop (SIGTERM) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Kafka
// ---------------------------------------------------------------------------------------

async fn create_topics(brokers: &str, topics: &[String]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .expect("create topics");
    for result in results {
        result.unwrap_or_else(|(topic, code)| panic!("cannot create topic {topic}: {code}"));
    }
}

/// One consumed message.
#[derive(Debug, Clone)]
struct Received {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<String>,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn headers_named(&self, name: &str) -> usize {
        self.headers.iter().filter(|(k, _)| k == name).count()
    }

    /// The `id` header, which every message must carry exactly once.
    fn id(&self) -> &str {
        assert_eq!(
            self.headers_named("id"),
            1,
            "exactly one id header in {}/{}@{}: {:?}",
            self.topic,
            self.partition,
            self.offset,
            self.headers
        );
        self.header("id").unwrap_or_default()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body of {}/{}@{} is not JSON ({e}): {}",
                self.topic,
                self.partition,
                self.offset,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Reads every partition of `topics` from the beginning, without a consumer group, until
/// `done(&received)` holds and nothing arrived for `quiet`, or until `deadline` passed.
/// Messages come back sorted by topic, partition and offset.
fn read_until(
    brokers: &str,
    topics: &[String],
    done: impl Fn(&[Received]) -> bool,
    quiet: Duration,
    deadline: Duration,
) -> Vec<Received> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        // librdkafka's assign() needs a group id even though no group is joined and no
        // offset committed; short timeouts keep tansu's group bookkeeping cheap.
        .set("group.id", unique_name("reader"))
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "1000")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        // An out-of-range fetch must not silently jump to the end of a partition.
        .set("auto.offset.reset", "error")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for topic in topics {
        for p in 0..PARTITIONS {
            list.add_partition_offset(topic, p, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&list).expect("assign");
    let mut out: Vec<Received> = Vec::new();
    let mut last = Instant::now();
    let stop_at = Instant::now() + deadline;
    while Instant::now() < stop_at && !(last.elapsed() >= quiet && done(&out)) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                last = Instant::now();
                let headers = m
                    .headers()
                    .map(|h| {
                        h.iter()
                            .map(|h| {
                                let value = h.value.unwrap_or_default();
                                (
                                    h.key.to_string(),
                                    String::from_utf8_lossy(value).into_owned(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Received {
                    topic: m.topic().to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    body: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
            Some(Err(e)) => panic!("consuming {topics:?}: {e}"),
            None => {}
        }
    }
    out.sort_by(|a, b| (&a.topic, a.partition, a.offset).cmp(&(&b.topic, b.partition, b.offset)));
    out
}

/// Reads until every id of `expected` arrived and the topics were quiet for [`QUIET`].
async fn read_all(brokers: &str, topics: &[String], expected: &BTreeSet<String>) -> Vec<Received> {
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    let expected = expected.clone();
    tokio::task::spawn_blocking(move || {
        read_until(
            &brokers,
            &topics,
            |got| {
                let ids: BTreeSet<&str> = got.iter().filter_map(|r| r.header("id")).collect();
                expected.iter().all(|id| ids.contains(id.as_str()))
            },
            QUIET,
            DELIVERY_DEADLINE,
        )
    })
    .await
    .expect("reader thread")
}

/// Reads until at least `n` messages arrived (or `deadline`); returns how many did.
async fn wait_for_messages(
    brokers: &str,
    topics: &[String],
    n: usize,
    deadline: Duration,
) -> usize {
    let brokers = brokers.to_string();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        read_until(
            &brokers,
            &topics,
            |got| got.len() >= n,
            Duration::ZERO,
            deadline,
        )
        .len()
    })
    .await
    .expect("reader thread")
}

// ---------------------------------------------------------------------------------------
// Postgres and the writers
// ---------------------------------------------------------------------------------------

/// One event a writer wrote.
#[derive(Debug, Clone)]
struct Written {
    id: String,
    aggregate_type: String,
    aggregate_id: String,
    event_type: String,
    payload: Value,
    traceparent: Option<String>,
}

/// What the writers did: committed events in commit order per aggregate, and the ids of
/// rolled-back transactions.
#[derive(Debug, Default)]
struct Ledger {
    committed: Vec<Written>,
    rolled_back: Vec<String>,
}

impl Ledger {
    fn merge(&mut self, other: Ledger) {
        self.committed.extend(other.committed);
        self.rolled_back.extend(other.rolled_back);
    }

    fn committed_ids(&self) -> BTreeSet<String> {
        self.committed.iter().map(|w| w.id.clone()).collect()
    }

    fn by_id(&self) -> HashMap<&str, &Written> {
        self.committed.iter().map(|w| (w.id.as_str(), w)).collect()
    }

    /// Committed ids per aggregate id, in commit order (each aggregate has one writer).
    fn per_key(&self) -> BTreeMap<&str, Vec<&str>> {
        let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for w in &self.committed {
            map.entry(w.aggregate_id.as_str())
                .or_default()
                .push(w.id.as_str());
        }
        map
    }
}

/// How a writer behaves.
#[derive(Debug, Clone)]
struct WriterPlan {
    /// `(aggregate_type, aggregate_id)` pairs this writer alone writes.
    aggregates: Vec<(String, String)>,
    /// Transactions to write; the writer also stops early when told.
    transactions: usize,
    /// Every n-th transaction is rolled back (0: none).
    rollback_every: usize,
    /// Pause after each transaction.
    pace: Duration,
}

/// Writes outbox events in transactions of 1 to 3 events for one aggregate, sometimes two
/// aggregates, with `write` or `write_and_delete`; each event's payload carries the
/// aggregate's next sequence number.
async fn writer(
    url: String,
    writer_no: usize,
    plan: WriterPlan,
    stop: watch::Receiver<bool>,
    committed: Arc<AtomicUsize>,
) -> Ledger {
    let mut client = outflow_testkit::connect(&url).await;
    let table = OutboxTable::default();
    let mut seq: HashMap<String, u64> = HashMap::new();
    let mut ledger = Ledger::default();
    for t in 0..plan.transactions {
        if *stop.borrow() {
            break;
        }
        let n = plan.aggregates.len();
        let mut targets = vec![&plan.aggregates[t % n]];
        if t % 4 == 3 && n > 1 {
            targets.push(&plan.aggregates[(t + 1) % n]);
        }
        let rollback =
            plan.rollback_every > 0 && t % plan.rollback_every == plan.rollback_every - 1;
        let tx = client.transaction().await.expect("begin");
        let mut events = Vec::new();
        let mut next = seq.clone();
        for (i, (aggregate_type, aggregate_id)) in targets.into_iter().enumerate() {
            for _ in 0..(t + i) % 3 + 1 {
                let s = next.entry(aggregate_id.clone()).or_insert(0);
                let payload = json!({
                    "aggregate": aggregate_id,
                    "seq": *s,
                    "writer": writer_no,
                    "txn": t,
                    "rolled_back": rollback,
                    "text": "caf\u{e9} \u{2713}",
                });
                *s += 1;
                let mut event = OutboxEvent::new(
                    aggregate_type.as_str(),
                    aggregate_id.as_str(),
                    "Changed",
                    payload,
                );
                if events.len() % 2 == 0 {
                    let trace = event.id.simple().to_string();
                    let span = (writer_no * 1_000_000 + t + 1) as u64;
                    event = event.traceparent(format!("00-{trace}-{span:016x}-01"));
                }
                if t % 2 == 0 {
                    outflow_outbox::write(&tx, &table, &event)
                        .await
                        .expect("write");
                } else {
                    outflow_outbox::write_and_delete(&tx, &table, &event)
                        .await
                        .expect("write_and_delete");
                }
                events.push(Written {
                    id: event.id.to_string(),
                    aggregate_type: event.aggregate_type.clone(),
                    aggregate_id: event.aggregate_id.clone(),
                    event_type: event.event_type.clone(),
                    payload: event.payload.clone(),
                    traceparent: event.traceparent.clone(),
                });
            }
        }
        if rollback {
            tx.rollback().await.expect("rollback");
            ledger.rolled_back.extend(events.into_iter().map(|w| w.id));
        } else {
            tx.commit().await.expect("commit");
            seq = next;
            committed.fetch_add(events.len(), Ordering::Relaxed);
            ledger.committed.extend(events);
        }
        if !plan.pace.is_zero() {
            tokio::time::sleep(plan.pace).await;
        }
    }
    ledger
}

/// `writers` writers, each owning `aggregates_per_writer` aggregates (alternating between
/// the given aggregate types), running concurrently until done or told to stop.
struct Writers {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Ledger>>,
    committed: Arc<AtomicUsize>,
}

impl Writers {
    fn start(
        url: &str,
        writers: usize,
        aggregates_per_writer: usize,
        aggregate_types: &[&str],
        transactions: usize,
        rollback_every: usize,
        pace: Duration,
    ) -> Writers {
        let (stop, stop_rx) = watch::channel(false);
        let committed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..writers)
            .map(|w| {
                let aggregates = (0..aggregates_per_writer)
                    .map(|a| {
                        let ty = aggregate_types[(w + a) % aggregate_types.len()];
                        (ty.to_string(), format!("agg-{w}-{a}"))
                    })
                    .collect();
                let plan = WriterPlan {
                    aggregates,
                    transactions,
                    rollback_every,
                    pace,
                };
                let counter = committed.clone();
                tokio::spawn(writer(url.to_string(), w, plan, stop_rx.clone(), counter))
            })
            .collect();
        Writers {
            stop,
            tasks,
            committed,
        }
    }

    /// Events committed so far.
    fn committed(&self) -> usize {
        self.committed.load(Ordering::Relaxed)
    }

    /// Wait for every writer to finish its plan.
    async fn finish(self) -> Ledger {
        let mut ledger = Ledger::default();
        for task in self.tasks {
            ledger.merge(task.await.expect("writer task"));
        }
        ledger
    }

    /// Ask every writer to stop after its current transaction, then collect.
    async fn stop(self) -> Ledger {
        let _ = self.stop.send(true);
        self.finish().await
    }
}

/// Creates the default outbox table.
async fn outbox_table(db: &TestDb) {
    let client = db.connect().await;
    outflow_outbox::ensure_table(&client, &OutboxTable::default())
        .await
        .expect("create the outbox table");
}

/// The slot's `confirmed_flush_lsn`, 0 when it has none yet.
async fn confirmed_lsn(client: &tokio_postgres::Client, slot: &str) -> u64 {
    let state = slot_state(client, slot).await;
    state.and_then(|(lsn, _)| lsn).unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// A test's broker and database.
struct Setup {
    db: TestDb,
    broker: PrivateTansu,
}

impl Setup {
    async fn new(prefix: &str) -> Setup {
        let broker = PrivateTansu::start().await;
        let db = fresh_database(prefix).await;
        outbox_table(&db).await;
        Setup { db, broker }
    }

    /// A configuration with one pipeline per `(name, slot, extra sink lines)`, each reading
    /// `public.outbox` through its own slot and publication (both named `slot`).
    fn config(&self, pipelines: &[(&str, &str, &str)]) -> String {
        let mut text = String::new();
        for (name, slot, sink) in pipelines {
            text.push_str(&format!(
                "[pipelines.{name}]\nbatch = {{ max_events = 64, linger = \"5ms\" }}\n\
                 retry = {{ initial = \"100ms\", max = \"2s\" }}\n\n\
                 [pipelines.{name}.source]\ntype = \"postgres\"\nurl = {url}\n\
                 slot = {slot}\npublication = {slot}\ntables = [\"public.outbox\"]\n\
                 status_interval = \"1s\"\n\n\
                 [pipelines.{name}.sink]\ntype = \"kafka\"\nbrokers = {brokers}\n\
                 linger_ms = 2\n{sink}\n\n",
                url = toml_string(&self.db.url()),
                slot = toml_string(slot),
                brokers = toml_string(&self.broker.brokers()),
            ));
        }
        text
    }

    /// Starts the binary and waits until it streams from every slot, so that events written
    /// from now on are captured.
    async fn start(&self, outflow: &mut Outflow, slots: &[&str]) {
        outflow.start();
        for slot in slots {
            wait_slot_active(&self.db.url(), slot, SLOT_READY).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------

/// The distinct ids received equal the committed ids exactly, and no rolled-back id arrived.
fn assert_exact_ids(received: &[Received], ledger: &Ledger, what: &str) {
    let got: BTreeSet<String> = received.iter().map(|r| r.id().to_string()).collect();
    let expected = ledger.committed_ids();
    let missing: Vec<&String> = expected.difference(&got).collect();
    let unexpected: Vec<&String> = got.difference(&expected).collect();
    let rolled_back: BTreeSet<&String> = ledger.rolled_back.iter().collect();
    let leaked: Vec<&&String> = rolled_back
        .iter()
        .filter(|id| got.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty() && unexpected.is_empty(),
        "{what}: {} of {} committed ids missing (first: {:?}), {} unexpected ids (first: {:?})",
        missing.len(),
        expected.len(),
        missing.first(),
        unexpected.len(),
        unexpected.first()
    );
    assert!(
        leaked.is_empty(),
        "{what}: ids of rolled-back transactions arrived: {leaked:?}"
    );
}

/// Every message carries its event's key and sits in one partition per key; returns each
/// key's ids in the order they were read (partition order).
fn ids_per_key<'a>(
    received: &'a [Received],
    ledger: &Ledger,
    what: &str,
) -> BTreeMap<String, Vec<&'a str>> {
    let by_id = ledger.by_id();
    let mut per_key: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut partition_of: HashMap<String, (String, i32)> = HashMap::new();
    for r in received {
        let id = r.id();
        let written = by_id
            .get(id)
            .unwrap_or_else(|| panic!("{what}: message with unknown id {id}"));
        assert_eq!(
            r.key.as_deref(),
            Some(written.aggregate_id.as_str()),
            "{what}: key of {id}"
        );
        let place = (r.topic.clone(), r.partition);
        let first = partition_of
            .entry(written.aggregate_id.clone())
            .or_insert_with(|| place.clone());
        assert_eq!(
            *first, place,
            "{what}: key {} appears in two partitions",
            written.aggregate_id
        );
        per_key
            .entry(written.aggregate_id.clone())
            .or_default()
            .push(id);
    }
    per_key
}

/// Per key, the ids read are exactly the committed ones in commit order: no duplicate, no
/// gap, no reordering.
fn assert_exact_order(received: &[Received], ledger: &Ledger, what: &str) {
    let got = ids_per_key(received, ledger, what);
    let expected = ledger.per_key();
    assert_eq!(got.len(), expected.len(), "{what}: number of keys");
    for (key, ids) in &expected {
        assert_eq!(
            got.get(*key).map(Vec::as_slice),
            Some(ids.as_slice()),
            "{what}: order of key {key}"
        );
    }
}

/// Per key, the first occurrence of each event is in commit order and every event is there;
/// any later copy is a duplicate. This is what at-least-once with per-key order promises when
/// a failed batch is sent again while copies of it may still be written by the broker (a
/// request that timed out on the client's side but sat in the frozen broker's socket): the
/// copies interleave, but no event appears before an earlier one of its key was written.
/// Returns the number of duplicate messages.
fn assert_first_occurrences_in_order(received: &[Received], ledger: &Ledger, what: &str) -> usize {
    let got = ids_per_key(received, ledger, what);
    let expected = ledger.per_key();
    assert_eq!(got.len(), expected.len(), "{what}: number of keys");
    let mut duplicates = 0;
    for (key, ids) in &expected {
        let mut seen = BTreeSet::new();
        let first: Vec<&str> = got[*key]
            .iter()
            .copied()
            .filter(|id| seen.insert(*id))
            .collect();
        duplicates += got[*key].len() - first.len();
        assert_eq!(&first, ids, "{what}: first occurrences of key {key}");
    }
    duplicates
}

/// Per key, after `restarts` crashes: what a key's partition holds is one contiguous run of
/// its committed events per run of the binary, the first from the key's first event, each
/// later one starting at or before the event after the previous run's last (replay from the
/// slot's confirmed position; overlap is allowed, a gap is not), the last ending at the key's
/// last event. So the distinct events are all there and their first occurrences are in
/// commit order. Returns the number of duplicate messages.
fn assert_runs_per_key(
    received: &[Received],
    ledger: &Ledger,
    restarts: usize,
    what: &str,
) -> usize {
    let got = ids_per_key(received, ledger, what);
    let expected = ledger.per_key();
    assert_eq!(got.len(), expected.len(), "{what}: number of keys");
    let mut duplicates = 0;
    for (key, ids) in &expected {
        let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let seen: Vec<usize> = got[*key].iter().map(|id| index[id]).collect();
        duplicates += seen.len() - ids.len();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for &i in &seen {
            match runs.last_mut() {
                Some((_, end)) if i == *end + 1 => *end = i,
                _ => runs.push((i, i)),
            }
        }
        let describe = || format!("{what}: key {key}: runs {runs:?} of {} events", ids.len());
        assert!(runs.len() <= restarts + 1, "{} (too many runs)", describe());
        assert_eq!(
            runs[0].0,
            0,
            "{} (does not start at the first event)",
            describe()
        );
        for pair in runs.windows(2) {
            // A new run never starts at the previous run's end + 1 (that extends the run).
            assert!(pair[1].0 <= pair[0].1, "{} (a gap)", describe());
        }
        assert_eq!(
            runs.last().map(|r| r.1),
            Some(ids.len() - 1),
            "{} (does not end at the last event)",
            describe()
        );
    }
    duplicates
}

/// Headers and body of each message match what was written, for `format`.
fn assert_content(received: &[Received], ledger: &Ledger, format: &str, pipeline: &str, db: &str) {
    let by_id = ledger.by_id();
    for r in received {
        let id = r.id();
        let w = by_id[id];
        assert_eq!(
            r.header("traceparent"),
            w.traceparent.as_deref(),
            "traceparent of {id}"
        );
        match format {
            "envelope" => {
                assert_eq!(r.header("content-type"), Some("application/json"));
                let body = r.json();
                assert_eq!(body["id"], json!(id));
                assert_eq!(body["op"], json!("insert"));
                assert_eq!(body["aggregate_type"], json!(w.aggregate_type));
                assert_eq!(body["aggregate_id"], json!(w.aggregate_id));
                assert_eq!(body["event_type"], json!(w.event_type));
                assert_eq!(body["payload"], w.payload, "payload of {id}");
                assert_eq!(body["source"]["connector"], json!("postgres"));
                assert_eq!(body["source"]["pipeline"], json!(pipeline));
                assert_eq!(body["source"]["database"], json!(db));
                assert_eq!(body["source"]["collection"], json!("public.outbox"));
                let expected_headers = match &w.traceparent {
                    Some(tp) => json!({ "traceparent": tp }),
                    None => json!({}),
                };
                assert_eq!(
                    body["headers"], expected_headers,
                    "envelope headers of {id}"
                );
            }
            "cloudevents-binary" => {
                assert_eq!(r.header("content-type"), Some("application/json"));
                assert_eq!(r.json(), w.payload, "payload of {id}");
                assert_eq!(r.header("ce_specversion"), Some("1.0"));
                assert_eq!(r.header("ce_id"), Some(id));
                assert_eq!(r.header("ce_type"), Some(w.event_type.as_str()));
                assert_eq!(r.header("ce_subject"), Some(w.aggregate_id.as_str()));
                assert_eq!(
                    r.header("ce_aggregatetype"),
                    Some(w.aggregate_type.as_str())
                );
                let source = format!("outflow/{pipeline}/public.outbox");
                assert_eq!(r.header("ce_source"), Some(source.as_str()));
                let time = r.header("ce_time").unwrap_or_default();
                assert!(
                    time.len() >= 20 && time.ends_with('Z') && time.contains('T'),
                    "ce_time of {id} is not RFC 3339 UTC: {time:?}"
                );
            }
            "payload" => {
                assert_eq!(r.header("content-type"), Some("application/json"));
                assert_eq!(r.json(), w.payload, "payload of {id}");
                assert_eq!(r.header("aggregate_type"), Some(w.aggregate_type.as_str()));
                assert_eq!(r.header("aggregate_id"), Some(w.aggregate_id.as_str()));
                assert_eq!(r.header("event_type"), Some(w.event_type.as_str()));
            }
            other => panic!("no content check for format {other}"),
        }
    }
}

/// Every message is in the topic `prefix` + its aggregate type.
fn assert_routing(received: &[Received], ledger: &Ledger, prefix: &str) {
    let by_id = ledger.by_id();
    for r in received {
        let w = by_id[r.id()];
        assert_eq!(
            r.topic,
            format!("{prefix}{}", w.aggregate_type),
            "topic of {}",
            w.id
        );
    }
}

fn topics(prefix: &str, aggregate_types: &[&str]) -> Vec<String> {
    aggregate_types
        .iter()
        .map(|t| format!("{prefix}{t}"))
        .collect()
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

const TYPES: [&str; 2] = ["order", "customer"];

/// Two pipelines in one file read the same outbox through their own slots: one writes the
/// envelope to the default topics, one CloudEvents binary mode to `ce.{aggregate_type}`.
/// Every committed id arrives exactly once per pipeline, keyed by aggregate id, in commit
/// order per key, with the id header and the format's headers; rolled-back ids never arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_event_arrives_once_in_order_with_key_headers_and_payload() {
    let started = Instant::now();
    let setup = Setup::new("e2e_kafka_all").await;
    let brokers = setup.broker.brokers();
    let envelope_topics = topics("outbox.event.", &TYPES);
    let ce_topics = topics("ce.", &TYPES);
    create_topics(
        &brokers,
        &[envelope_topics.clone(), ce_topics.clone()].concat(),
    )
    .await;
    let slot_env = unique_name("env");
    let slot_ce = unique_name("ce");
    let ce_sink = "topic = \"ce.{aggregate_type}\"\nformat = \"cloudevents-binary\"";
    let mut outflow = Outflow::with_config(
        &setup.config(&[("orders", &slot_env, ""), ("orders_ce", &slot_ce, ce_sink)]),
    );
    setup.start(&mut outflow, &[&slot_env, &slot_ce]).await;

    let writers = Writers::start(&setup.db.url(), 4, 3, &TYPES, 40, 5, Duration::ZERO);
    let ledger = writers.finish().await;
    assert!(!ledger.rolled_back.is_empty() && ledger.committed.len() > 200);

    let envelope = read_all(&brokers, &envelope_topics, &ledger.committed_ids()).await;
    let ce = read_all(&brokers, &ce_topics, &ledger.committed_ids()).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );

    for (received, format, pipeline, prefix) in [
        (&envelope, "envelope", "orders", "outbox.event."),
        (&ce, "cloudevents-binary", "orders_ce", "ce."),
    ] {
        assert_exact_ids(received, &ledger, format);
        assert_eq!(
            received.len(),
            ledger.committed.len(),
            "{format}: no duplicates"
        );
        assert_exact_order(received, &ledger, format);
        assert_routing(received, &ledger, prefix);
        assert_content(received, &ledger, format, pipeline, setup.db.name());
    }

    let status = outflow.terminate(STOP_TIMEOUT).await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    eprintln!(
        "{} events committed, {} rolled back; test took {:?}",
        ledger.committed.len(),
        ledger.rolled_back.len(),
        started.elapsed()
    );
}

/// Crashes of the binary while it delivers and writers keep writing.
const KILLS: usize = 2;

/// SIGKILL the binary twice mid-stream while writers keep committing, restart it each time:
/// every committed id arrives (at least once) and no rolled-back one. What Kafka holds per
/// key is what the contract allows and nothing more: one contiguous run of the key's events
/// per run of the binary, each restart replaying from the slot's confirmed position (at or
/// before where the previous run stopped, never after it), the last run ending at the key's
/// last event. So the first occurrences are in exact commit order, and duplicates are only
/// replays of a suffix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_stream_and_restart_loses_nothing_and_replays_only_suffixes_per_key() {
    let started = Instant::now();
    let setup = Setup::new("e2e_kafka_kill").await;
    let brokers = setup.broker.brokers();
    let topics = topics("outbox.event.", &TYPES);
    create_topics(&brokers, &topics).await;
    let slot = unique_name("kill");
    let mut outflow = Outflow::with_config(&setup.config(&[("orders", &slot, "")]));
    setup.start(&mut outflow, &[&slot]).await;

    // Writers run until told to stop, across both crashes.
    let writers = Writers::start(
        &setup.db.url(),
        4,
        3,
        &TYPES,
        usize::MAX,
        7,
        Duration::from_millis(15),
    );
    let client = setup.db.connect().await;
    let mut delivered = 0;
    for kill in 1..=KILLS {
        // Each run delivers and confirms some of the stream before it is killed, so the
        // restart resumes from a confirmed position in the middle of the stream.
        let at_start = confirmed_lsn(&client, &slot).await;
        let want = delivered + 150;
        delivered = wait_for_messages(&brokers, &topics, want, Duration::from_secs(60)).await;
        assert!(
            delivered >= want,
            "crash {kill}: only {delivered} messages before the deadline, expected {want}"
        );
        support::wait_for(
            "the slot to confirm a position past where this run started",
            Duration::from_secs(60),
            || async { confirmed_lsn(&client, &slot).await > at_start },
        )
        .await;
        assert!(
            outflow.is_running(),
            "outflow exited: {:?}",
            outflow.exit_status()
        );
        let committed = writers.committed();
        let status = outflow.kill();
        eprintln!(
            "crash {kill}: SIGKILL ({status}) after at least {delivered} messages were read \
             and the slot moved, {committed} events committed"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            writers.committed() > committed,
            "writers keep committing while outflow is down"
        );
        setup.start(&mut outflow, &[&slot]).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ledger = writers.stop().await;
    assert!(
        ledger.committed.len() > delivered,
        "the crashes came mid-stream"
    );

    let received = read_all(&brokers, &topics, &ledger.committed_ids()).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );
    assert_exact_ids(&received, &ledger, "after the crashes");
    let duplicates = assert_runs_per_key(&received, &ledger, KILLS, "after the crashes");
    assert_eq!(received.len(), ledger.committed.len() + duplicates);
    assert_routing(&received, &ledger, "outbox.event.");
    assert_content(&received, &ledger, "envelope", "orders", setup.db.name());

    let status = outflow.terminate(STOP_TIMEOUT).await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    eprintln!(
        "{} events committed, {} rolled back, {} duplicates after {KILLS} crashes; test took \
         {:?}",
        ledger.committed.len(),
        ledger.rolled_back.len(),
        duplicates,
        started.elapsed()
    );
}

/// The broker frozen (SIGSTOP) for fifteen seconds while writers commit: the slot's
/// `confirmed_flush_lsn` never reaches the commit of the first event written during the
/// freeze (nothing the broker did not confirm is acknowledged), the binary keeps running,
/// and after SIGCONT every event arrives, exactly once and in order per key (no delivery
/// timed out, so nothing was sent twice), and the slot then moves past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_broker_holds_the_slot_and_loses_nothing() {
    let started = Instant::now();
    let setup = Setup::new("e2e_kafka_freeze").await;
    let brokers = setup.broker.brokers();
    let topics = topics("outbox.event.", &TYPES);
    create_topics(&brokers, &topics).await;
    let slot = unique_name("freeze");
    let mut outflow = Outflow::with_config(&setup.config(&[("orders", &slot, "")]));
    setup.start(&mut outflow, &[&slot]).await;
    let client = setup.db.connect().await;

    let before = Writers::start(&setup.db.url(), 3, 3, &TYPES, 20, 6, Duration::ZERO)
        .finish()
        .await;
    let got = read_all(&brokers, &topics, &before.committed_ids()).await;
    assert_exact_ids(&got, &before, "before the freeze");

    setup.broker.freeze();
    let frozen_at = Instant::now();
    let monitor = SlotMonitor::start(&setup.db.url(), &slot);
    let (at_freeze, _) = slot_state(&client, &slot).await.expect("the slot exists");
    let during = Writers::start(
        &setup.db.url(),
        3,
        3,
        &TYPES,
        40,
        6,
        Duration::from_millis(40),
    )
    .finish()
    .await;
    let written_in = frozen_at.elapsed();
    assert!(
        written_in < FREEZE,
        "writing took {written_in:?}, longer than the freeze"
    );
    tokio::time::sleep(FREEZE - written_in).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );
    let samples = monitor.stop();
    setup.broker.thaw();
    let frozen_for = frozen_at.elapsed();

    let during_ids = during.committed_ids();
    let mut ledger = before;
    ledger.merge(during);
    let received = read_all(&brokers, &topics, &ledger.committed_ids()).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );
    assert_exact_ids(&received, &ledger, "after the freeze");
    assert_eq!(received.len(), ledger.committed.len(), "no duplicates");
    assert_exact_order(&received, &ledger, "after the freeze");
    assert_content(&received, &ledger, "envelope", "orders", setup.db.name());

    // The commits of the events written during the freeze, from their envelopes.
    let commits: Vec<u64> = received
        .iter()
        .filter(|r| during_ids.contains(r.id()))
        .map(|r| commit_lsn(&r.json()))
        .collect();
    let first_commit = commits
        .iter()
        .copied()
        .min()
        .expect("events written while frozen");
    let last_commit = commits
        .iter()
        .copied()
        .max()
        .expect("events written while frozen");
    assert!(
        samples.len() >= 50,
        "the slot was read only {} times during the freeze",
        samples.len()
    );
    let highest = samples.iter().map(|s| s.confirmed).max().unwrap_or(0);
    eprintln!(
        "freeze of {frozen_for:?}: confirmed_flush_lsn {} at the freeze, at most {} during it \
         ({} readings); events written during it commit at {}..={}",
        support::format_lsn(at_freeze.unwrap_or(0)),
        support::format_lsn(highest),
        samples.len(),
        support::format_lsn(first_commit),
        support::format_lsn(last_commit)
    );
    assert!(
        highest <= first_commit,
        "confirmed_flush_lsn reached {} while the broker was frozen, past the commit of the \
         first event written during the freeze ({}): a position was confirmed that the \
         broker never acknowledged",
        support::format_lsn(highest),
        support::format_lsn(first_commit)
    );

    // Once the broker acknowledges them, the slot moves past them.
    support::wait_for(
        "the slot to confirm the events written during the freeze",
        Duration::from_secs(60),
        || async {
            matches!(
                slot_state(&client, &slot).await,
                Some((Some(lsn), _)) if lsn > last_commit
            )
        },
    )
    .await;

    let status = outflow.terminate(STOP_TIMEOUT).await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    eprintln!(
        "{} events ({} during the freeze); test took {:?}",
        ledger.committed.len(),
        during_ids.len(),
        started.elapsed()
    );
}

/// The one-pipeline command from flags, `outflow postgres … --to kafka://…`, with the
/// payload format and a topic template: exact ids, per-key order, the payload as the body
/// and the outbox fields as headers, and exit 0 on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outflow_postgres_flags_stream_to_kafka() {
    let started = Instant::now();
    let setup = Setup::new("e2e_kafka_flags").await;
    let brokers = setup.broker.brokers();
    let topics = topics("flags.", &TYPES);
    create_topics(&brokers, &topics).await;
    let slot = unique_name("flags");
    let url = setup.db.url();
    let to = format!("kafka://{brokers}");
    let mut outflow = Outflow::with_args([
        "postgres",
        "--url",
        url.as_str(),
        "--slot",
        slot.as_str(),
        "--publication",
        slot.as_str(),
        "--table",
        "public.outbox",
        "--to",
        to.as_str(),
        "--destination",
        "flags.{aggregate_type}",
        "--format",
        "payload",
        "--pipeline",
        "cli",
        "--state-dir",
        "{dir}/state",
    ]);
    setup.start(&mut outflow, &[&slot]).await;

    let ledger = Writers::start(&url, 3, 2, &TYPES, 30, 4, Duration::ZERO)
        .finish()
        .await;
    let received = read_all(&brokers, &topics, &ledger.committed_ids()).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );
    assert_exact_ids(&received, &ledger, "payload");
    assert_eq!(received.len(), ledger.committed.len(), "no duplicates");
    assert_exact_order(&received, &ledger, "payload");
    assert_routing(&received, &ledger, "flags.");
    assert_content(&received, &ledger, "payload", "cli", setup.db.name());

    let status = outflow.terminate(STOP_TIMEOUT).await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    assert!(
        outflow.dir().join("state/cli.checkpoint.json").is_file(),
        "the checkpoint is stored under --state-dir"
    );
    eprintln!(
        "{} events; test took {:?}",
        ledger.committed.len(),
        started.elapsed()
    );
}

/// The broker frozen for longer than the sink's `message_timeout_ms` (4 s here, 12 s of
/// freeze): deliveries time out, the batches fail as transient errors and are sent again
/// with backoff until the broker answers, the binary keeps running, the slot never confirms
/// an event written during the freeze before the broker acknowledged it, and afterwards
/// every committed event is there, the first copy of each in commit order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_broker_frozen_past_the_delivery_timeout_is_retried_until_everything_arrives() {
    let started = Instant::now();
    let setup = Setup::new("e2e_kafka_timeout").await;
    let brokers = setup.broker.brokers();
    let topics = topics("outbox.event.", &TYPES);
    create_topics(&brokers, &topics).await;
    let slot = unique_name("timeout");
    let mut outflow =
        Outflow::with_config(&setup.config(&[("orders", &slot, "message_timeout_ms = 4000")]));
    setup.start(&mut outflow, &[&slot]).await;
    let client = setup.db.connect().await;

    let before = Writers::start(&setup.db.url(), 3, 3, &TYPES, 10, 6, Duration::ZERO)
        .finish()
        .await;
    let got = read_all(&brokers, &topics, &before.committed_ids()).await;
    assert_exact_ids(&got, &before, "before the freeze");

    setup.broker.freeze();
    let frozen_at = Instant::now();
    let monitor = SlotMonitor::start(&setup.db.url(), &slot);
    let during = Writers::start(
        &setup.db.url(),
        3,
        3,
        &TYPES,
        30,
        6,
        Duration::from_millis(40),
    )
    .finish()
    .await;
    let freeze = Duration::from_secs(12);
    tokio::time::sleep(freeze.saturating_sub(frozen_at.elapsed())).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );
    let samples = monitor.stop();
    setup.broker.thaw();

    let during_ids = during.committed_ids();
    let mut ledger = before;
    ledger.merge(during);
    let received = read_all(&brokers, &topics, &ledger.committed_ids()).await;
    assert!(
        outflow.is_running(),
        "outflow exited: {:?}",
        outflow.exit_status()
    );
    assert_exact_ids(&received, &ledger, "after the freeze");
    // The timeout path was taken: batches failed transiently and were sent again.
    let resends = outflow.count_log("sink failed transiently; will resend");
    let replaced = outflow.count_log("kafka producer failed; replaced by a new one");
    eprintln!(
        "{} messages for {} events; {resends} transient batch failures, {replaced} producer \
         replacements",
        received.len(),
        ledger.committed.len()
    );
    assert!(
        resends > 0,
        "no batch failed while the broker was frozen past the timeout"
    );
    let duplicates = assert_first_occurrences_in_order(&received, &ledger, "after the freeze");
    let commits: Vec<u64> = received
        .iter()
        .filter(|r| during_ids.contains(r.id()))
        .map(|r| commit_lsn(&r.json()))
        .collect();
    let first_commit = commits
        .iter()
        .copied()
        .min()
        .expect("events written while frozen");
    let last_commit = commits
        .iter()
        .copied()
        .max()
        .expect("events written while frozen");
    let highest = samples.iter().map(|s| s.confirmed).max().unwrap_or(0);
    assert!(
        highest <= first_commit,
        "confirmed_flush_lsn reached {} while the broker was frozen, past the commit of the \
         first event written during the freeze ({})",
        support::format_lsn(highest),
        support::format_lsn(first_commit)
    );
    support::wait_for(
        "the slot to confirm the events written during the freeze",
        Duration::from_secs(60),
        || async { confirmed_lsn(&client, &slot).await > last_commit },
    )
    .await;
    let status = outflow.terminate(STOP_TIMEOUT).await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    eprintln!(
        "{} events, {duplicates} duplicates; test took {:?}",
        ledger.committed.len(),
        started.elapsed()
    );
}

/// SIGTERM while the broker is frozen and events are in flight: the binary waits
/// `shutdown_timeout` for acknowledgements that cannot come, exits 0 without confirming
/// the unacknowledged events, and a restart once the broker is back delivers all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_the_broker_is_frozen_exits_cleanly_and_the_restart_delivers() {
    let started = Instant::now();
    let setup = Setup::new("e2e_kafka_term").await;
    let brokers = setup.broker.brokers();
    let topics = topics("outbox.event.", &TYPES);
    create_topics(&brokers, &topics).await;
    let slot = unique_name("term");
    let config = setup.config(&[("orders", &slot, "")]).replacen(
        "[pipelines.orders]\n",
        "[pipelines.orders]\nshutdown_timeout = \"3s\"\n",
        1,
    );
    let mut outflow = Outflow::with_config(&config);
    setup.start(&mut outflow, &[&slot]).await;
    let client = setup.db.connect().await;

    let before = Writers::start(&setup.db.url(), 2, 2, &TYPES, 10, 0, Duration::ZERO)
        .finish()
        .await;
    let got = read_all(&brokers, &topics, &before.committed_ids()).await;
    assert_exact_ids(&got, &before, "before the freeze");

    setup.broker.freeze();
    let during = Writers::start(&setup.db.url(), 2, 2, &TYPES, 10, 0, Duration::ZERO)
        .finish()
        .await;
    // Let the binary read them and send them to the frozen broker.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = Instant::now();
    let status = outflow.terminate(STOP_TIMEOUT).await;
    let took = asked.elapsed();
    eprintln!("SIGTERM with a frozen broker: {status} after {took:?}");
    assert!(
        status.success(),
        "a stop with unacknowledged events still exits 0: {status}"
    );
    let confirmed = confirmed_lsn(&client, &slot).await;
    setup.broker.thaw();

    let during_ids = during.committed_ids();
    let mut ledger = before;
    ledger.merge(during);
    outflow.start();
    let received = read_all(&brokers, &topics, &ledger.committed_ids()).await;
    assert_exact_ids(&received, &ledger, "after the restart");
    assert_first_occurrences_in_order(&received, &ledger, "after the restart");
    let first_commit = received
        .iter()
        .filter(|r| during_ids.contains(r.id()))
        .map(|r| commit_lsn(&r.json()))
        .min()
        .expect("events written while frozen");
    assert!(
        confirmed <= first_commit,
        "the stop confirmed {} although events committed at {} were never acknowledged",
        support::format_lsn(confirmed),
        support::format_lsn(first_commit)
    );
    assert!(
        took < Duration::from_secs(8),
        "shutdown_timeout is 3 s but the stop took {took:?}"
    );
    let status = outflow.terminate(STOP_TIMEOUT).await;
    assert!(status.success(), "a graceful stop exits 0: {status}");
    eprintln!("test took {:?}", started.elapsed());
}
