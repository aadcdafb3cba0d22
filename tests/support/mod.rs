//! Helpers shared by the end-to-end tests in `tests/`: run the real `outflow` binary with a
//! generated configuration, write outbox events from concurrent writers the way a service
//! does (outflow-outbox, in transactions, some rolled back), read a JetStream stream back,
//! watch a replication slot, and wait for conditions with timeouts.
//!
//! Each test file includes this module with `#[path = "support/mod.rs"] mod support;`, so
//! not every file uses every helper.

// Helpers are `pub` so every test file may use them; a file uses only some.
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use outflow_outbox::{OutboxEvent, OutboxTable};
use outflow_testkit::ChildGuard;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// How many lines of the binary's stderr a failing test prints.
const STDERR_TAIL_LINES: usize = 200;

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Polls `check` every 100 ms until it returns true; panics naming `what` after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Nanoseconds since the Unix epoch, the clock NATS stamps stored messages with.
pub fn unix_nanos(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0)
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> i128 {
    unix_nanos(SystemTime::now())
}

// ---------------------------------------------------------------------------------------
// The binary
// ---------------------------------------------------------------------------------------

/// The `outflow` binary under test, run in a temporary folder of its own. Its stderr goes to
/// `stderr.log` in that folder, appended across restarts, and is printed when the test
/// panics while this value is alive.
pub struct Outflow {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    starts: u32,
}

impl Outflow {
    /// `outflow --log-format json run <dir>/outflow.toml` with `config` as the file. Unless
    /// `config` has a `[state]` table, a file store under `<dir>/state` is put in front.
    /// Not started yet: call [`Outflow::start`].
    pub fn with_config(config: &str) -> Outflow {
        let dir = tempdir();
        let path = dir.path().join("outflow.toml");
        let mut text = String::new();
        if !config.lines().any(|l| l.trim() == "[state]") {
            text.push_str(&format!(
                "[state]\ntype = \"file\"\ndir = {}\n\n",
                toml_string(&dir.path().join("state").display().to_string())
            ));
        }
        text.push_str(config);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {path:?}: {e}"));
        let args = vec![
            "--log-format".into(),
            "json".into(),
            "run".into(),
            path.into_os_string(),
        ];
        Outflow {
            child: None,
            dir,
            args,
            starts: 0,
        }
    }

    /// The binary with these arguments (e.g. `postgres --url … --to nats://…`), after
    /// `--log-format json`. `{dir}` in an argument is replaced by the binary's folder.
    /// Not started yet.
    pub fn with_args<I, S>(args: I) -> Outflow
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let dir = tempdir();
        let base = dir.path().display().to_string();
        let mut all: Vec<OsString> = vec!["--log-format".into(), "json".into()];
        all.extend(
            args.into_iter()
                .map(|a| OsString::from(a.as_ref().replace("{dir}", &base))),
        );
        Outflow {
            child: None,
            dir,
            args: all,
            starts: 0,
        }
    }

    /// The binary's folder (config, state, stderr log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The configuration file written by [`Outflow::with_config`].
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("outflow.toml")
    }

    /// Replaces the configuration file's text (state table included as given); takes effect
    /// at the next start.
    pub fn rewrite_config(&self, text: &str) {
        std::fs::write(self.config_path(), text)
            .unwrap_or_else(|e| panic!("cannot rewrite the config: {e}"));
    }

    /// The stderr log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("stderr.log")
    }

    /// Starts the binary. Panics when it is already running.
    pub fn start(&mut self) {
        assert!(!self.is_running(), "outflow is already running");
        self.starts += 1;
        let log_path = self.log_path();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap_or_else(|e| panic!("cannot open {log_path:?}: {e}"));
        let _ = writeln!(log, "=== outflow start {} ===", self.starts);
        let err: File = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone the log handle: {e}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_outflow"));
        // OUTFLOW_E2E_LOG (e.g. `outflow_pipeline=debug,info`) raises the binary's log level
        // when diagnosing a failure.
        let level = std::env::var("OUTFLOW_E2E_LOG").unwrap_or_else(|_| "info".to_string());
        cmd.args(["--log-level", &level])
            .args(&self.args)
            .current_dir(self.dir.path())
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err));
        let child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", env!("CARGO_BIN_EXE_outflow")));
        self.child = Some(child);
    }

    /// How many times the binary was started.
    pub fn starts(&self) -> u32 {
        self.starts
    }

    /// Whether the binary is running now.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The exit status, when the binary has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, like a crash; returns once the process is gone.
    pub fn kill(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("outflow was started");
        child
            .kill()
            .unwrap_or_else(|e| panic!("cannot kill outflow: {e}"))
    }

    /// SIGTERM, then waits up to `timeout` for the exit; panics when it does not exit.
    pub async fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("outflow was started");
        child
            .terminate()
            .unwrap_or_else(|e| panic!("cannot signal outflow: {e}"));
        self.wait_exit(timeout).await
    }

    /// Waits up to `timeout` for the binary to exit by itself; panics when it does not.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("outflow was started");
        match child.wait_timeout(timeout).await {
            Ok(Some(status)) => status,
            Ok(None) => panic!("outflow did not exit within {timeout:?}"),
            Err(e) => panic!("cannot wait for outflow: {e}"),
        }
    }

    /// Everything the binary wrote to stderr so far, over all its starts.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The JSON log lines of stderr (`--log-format json`), skipping other lines.
    pub fn log_lines(&self) -> Vec<Value> {
        self.stderr()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// How many JSON log lines have this `message`.
    pub fn count_log(&self, message: &str) -> usize {
        self.log_lines()
            .iter()
            .filter(|l| l["message"] == message)
            .count()
    }
}

impl Drop for Outflow {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "outflow-e2e-failed-{}-{}.log",
                std::process::id(),
                now_nanos()
            ));
            if std::fs::copy(self.log_path(), &keep).is_ok() {
                eprintln!("outflow stderr kept in {}", keep.display());
            }
            let text = self.stderr();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(STDERR_TAIL_LINES);
            eprintln!(
                "---- outflow stderr ({} lines, last {}; args {:?}) ----\n{}\n---- end of \
                 outflow stderr ----",
                lines.len(),
                lines.len() - from,
                self.args,
                lines[from..].join("\n")
            );
        }
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("outflow-e2e-")
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot make a temporary folder: {e}"))
}

/// `s` as a TOML basic string.
pub fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------
// Postgres
// ---------------------------------------------------------------------------------------

/// Connects without TLS, driving the connection on a task; `None` on failure.
pub async fn try_connect(url: &str) -> Option<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

/// Connects, retrying for up to `timeout` (a server that is restarting); panics after.
pub async fn connect_retrying(url: &str, timeout: Duration) -> Client {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(c) = try_connect(url).await {
            return c;
        }
        if Instant::now() >= deadline {
            panic!("cannot connect to {url} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Parses a Postgres LSN (`16/B374D848`) into a number.
pub fn parse_lsn(text: &str) -> u64 {
    let (hi, lo) = text
        .split_once('/')
        .unwrap_or_else(|| panic!("{text:?} is not an LSN"));
    let hi = u64::from_str_radix(hi, 16).unwrap_or_else(|_| panic!("{text:?} is not an LSN"));
    let lo = u64::from_str_radix(lo, 16).unwrap_or_else(|_| panic!("{text:?} is not an LSN"));
    (hi << 32) | lo
}

/// Formats a number as a Postgres LSN.
pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// The slot's `confirmed_flush_lsn` and whether it is active; `None` when the slot does not
/// exist.
pub async fn slot_state(client: &Client, slot: &str) -> Option<(Option<u64>, bool)> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| panic!("cannot read pg_replication_slots: {e}"))?;
    let lsn: Option<String> = row.get(0);
    Some((lsn.as_deref().map(parse_lsn), row.get(1)))
}

/// Waits until the slot exists, is consistent, and a walsender holds it.
///
/// A logical slot shows in `pg_replication_slots`, active, as soon as its creation starts;
/// creation then waits for every transaction running in the cluster to end, and only
/// transactions that commit after that point are decoded. Its `confirmed_flush_lsn` is set
/// at that point, so writes that start once it is set are all captured.
pub async fn wait_slot_active(url: &str, slot: &str, timeout: Duration) {
    let client = connect_retrying(url, timeout).await;
    wait_for(&format!("slot {slot} to be active"), timeout, || async {
        matches!(slot_state(&client, slot).await, Some((Some(_), true)))
    })
    .await;
}

/// One reading of a slot's `confirmed_flush_lsn`.
#[derive(Debug, Clone, Copy)]
pub struct SlotSample {
    /// When the reading returned, in nanoseconds since the Unix epoch (an upper bound of the
    /// moment the value was current).
    pub at: i128,
    /// The confirmed position.
    pub confirmed: u64,
}

/// Reads a slot's `confirmed_flush_lsn` every 100 ms on a task of its own, reconnecting when
/// the server goes away (readings are simply missing then).
pub struct SlotMonitor {
    samples: Arc<Mutex<Vec<SlotSample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl SlotMonitor {
    /// Starts watching `slot` through `url`.
    pub fn start(url: &str, slot: &str) -> SlotMonitor {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (url, slot, out) = (url.to_string(), slot.to_string(), samples.clone());
        let task = tokio::spawn(async move {
            let mut client: Option<Client> = None;
            loop {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    client = try_connect(&url).await;
                }
                if let Some(c) = &client {
                    let read = c
                        .query_opt(
                            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots \
                             WHERE slot_name = $1",
                            &[&slot],
                        )
                        .await;
                    match read {
                        Ok(Some(row)) => {
                            if let Some(text) = row.get::<_, Option<String>>(0) {
                                let sample = SlotSample {
                                    at: now_nanos(),
                                    confirmed: parse_lsn(&text),
                                };
                                out.lock().unwrap().push(sample);
                            }
                        }
                        Ok(None) => {}
                        Err(_) => client = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        SlotMonitor { samples, task }
    }

    /// The readings so far.
    pub fn samples(&self) -> Vec<SlotSample> {
        self.samples.lock().unwrap().clone()
    }

    /// Stops watching and returns every reading.
    pub fn stop(self) -> Vec<SlotSample> {
        self.task.abort();
        let samples = self.samples.lock().unwrap().clone();
        samples
    }
}

// ---------------------------------------------------------------------------------------
// Writing outbox events
// ---------------------------------------------------------------------------------------

/// The table holding one counter per aggregate type. A transaction updates its aggregate
/// type's row first, which locks the row until the transaction ends, so transactions of one
/// aggregate type commit one after the other in counter order, and a rolled back one gives
/// its numbers back. The counter value in each payload (`seq`) is therefore the event's
/// place in its aggregate type's commit order, dense from 1.
pub const SEQ_TABLE: &str = "e2e_aggregate_seq";

/// Creates the default outbox table (`public.outbox`) and the counter table with a row per
/// aggregate type.
pub async fn prepare_outbox(client: &Client, aggregate_types: &[String]) {
    outflow_outbox::ensure_table(client, &OutboxTable::default())
        .await
        .unwrap_or_else(|e| panic!("cannot create the outbox table: {e}"));
    client
        .batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {SEQ_TABLE} (aggregate_type text PRIMARY KEY, \
             n bigint NOT NULL)"
        ))
        .await
        .unwrap_or_else(|e| panic!("cannot create {SEQ_TABLE}: {e}"));
    for t in aggregate_types {
        client
            .execute(
                &format!(
                    "INSERT INTO {SEQ_TABLE} VALUES ($1, 0) ON CONFLICT (aggregate_type) DO NOTHING"
                ),
                &[t],
            )
            .await
            .unwrap_or_else(|e| panic!("cannot insert into {SEQ_TABLE}: {e}"));
    }
}

/// What concurrent writers do.
#[derive(Debug, Clone)]
pub struct WritePlan {
    /// The database.
    pub url: String,
    /// Writers, each a tokio task with its own connection.
    pub writers: usize,
    /// Committed events each writer writes.
    pub events_per_writer: usize,
    /// Aggregate types; each transaction picks one at random.
    pub aggregate_types: Vec<String>,
    /// Most events in one transaction (at least 1).
    pub max_tx_events: usize,
    /// Chance that a transaction is rolled back on purpose instead of committed.
    pub rollback_chance: f64,
    /// Pause after each transaction, to spread the writing over time.
    pub pause: Duration,
    /// Filler characters in each payload.
    pub filler: usize,
    /// Seed of the writers' random choices (writer `w` uses `seed + w`).
    pub seed: u64,
    /// How long a writer keeps retrying a transaction that failed (a server restart).
    pub retry_for: Duration,
}

impl WritePlan {
    /// A plan with 1..=5 events per transaction, 15 % rollbacks, no pause, no filler, and a
    /// seed from the clock (printed by [`run_writers`]).
    pub fn new(
        url: &str,
        writers: usize,
        events_per_writer: usize,
        aggregate_types: &[String],
    ) -> Self {
        WritePlan {
            url: url.to_string(),
            writers,
            events_per_writer,
            aggregate_types: aggregate_types.to_vec(),
            max_tx_events: 5,
            rollback_chance: 0.15,
            pause: Duration::ZERO,
            filler: 0,
            seed: (now_nanos() as u64) & 0xFFFF_FFFF,
            retry_for: Duration::from_secs(60),
        }
    }

    /// Total committed events.
    pub fn total(&self) -> usize {
        self.writers * self.events_per_writer
    }
}

/// A committed event.
#[derive(Debug, Clone)]
pub struct Written {
    /// Its id.
    pub id: Uuid,
    /// Its aggregate type.
    pub aggregate_type: String,
    /// Its aggregate id.
    pub aggregate_id: String,
    /// Its place in its aggregate type's commit order, from 1.
    pub seq: i64,
    /// The writer that wrote it.
    pub writer: usize,
    /// `txid_current()` of its transaction.
    pub xid: i64,
}

/// What the writers did.
#[derive(Debug, Default)]
pub struct WriteReport {
    /// Committed events.
    pub committed: Vec<Written>,
    /// Ids of events written in transactions that were rolled back.
    pub rolled_back: Vec<Uuid>,
    /// Transactions that failed (server gone) and were retried.
    pub retried: usize,
}

impl WriteReport {
    /// Committed events by id.
    pub fn by_id(&self) -> HashMap<String, Written> {
        self.committed
            .iter()
            .map(|w| (w.id.to_string(), w.clone()))
            .collect()
    }

    /// For each aggregate type, its committed event ids in commit order (by `seq`; dense
    /// from 1 for the writers' own reports, with gaps where a test left events out).
    pub fn commit_order(&self) -> HashMap<String, Vec<String>> {
        let mut by_type: HashMap<String, Vec<&Written>> = HashMap::new();
        for w in &self.committed {
            by_type.entry(w.aggregate_type.clone()).or_default().push(w);
        }
        by_type
            .into_iter()
            .map(|(t, mut ws)| {
                ws.sort_by_key(|w| w.seq);
                assert!(
                    ws.windows(2).all(|p| p[0].seq < p[1].seq),
                    "two events of {t} share a commit number"
                );
                (t, ws.iter().map(|w| w.id.to_string()).collect())
            })
            .collect()
    }
}

/// Counts committed events as writers go, so a test can act mid-stream.
#[derive(Debug, Default, Clone)]
pub struct WriteProgress(Arc<std::sync::atomic::AtomicUsize>);

impl WriteProgress {
    /// Committed events so far.
    pub fn committed(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Runs the writers of `plan` to the end; `progress` counts committed events meanwhile.
pub async fn run_writers(plan: WritePlan, progress: WriteProgress) -> WriteReport {
    eprintln!(
        "writers: {} x {} committed events, seed {}",
        plan.writers, plan.events_per_writer, plan.seed
    );
    let mut tasks = Vec::new();
    for w in 0..plan.writers {
        let plan = plan.clone();
        let progress = progress.clone();
        tasks.push(tokio::spawn(writer(plan, w, progress)));
    }
    let mut report = WriteReport::default();
    for t in tasks {
        let r = t.await.unwrap_or_else(|e| panic!("a writer failed: {e}"));
        report.committed.extend(r.committed);
        report.rolled_back.extend(r.rolled_back);
        report.retried += r.retried;
    }
    report
}

/// Starts the writers on a task; await the handle for the report.
pub fn spawn_writers(
    plan: WritePlan,
    progress: WriteProgress,
) -> tokio::task::JoinHandle<WriteReport> {
    tokio::spawn(run_writers(plan, progress))
}

/// One planned transaction: its events (ids fixed across retries), aggregate type and fate.
struct PlannedTx {
    aggregate_type: String,
    ids: Vec<Uuid>,
    aggregate_ids: Vec<String>,
    /// Filler characters of each event's payload.
    fillers: Vec<usize>,
    rollback: bool,
}

async fn writer(plan: WritePlan, w: usize, progress: WriteProgress) -> WriteReport {
    let mut rng = StdRng::seed_from_u64(plan.seed.wrapping_add(w as u64));
    let mut client = connect_retrying(&plan.url, plan.retry_for).await;
    let mut report = WriteReport::default();
    let mut committed = 0usize;
    let mut n = 0u64;
    while committed < plan.events_per_writer {
        let left = plan.events_per_writer - committed;
        let size = rng.random_range(1..=plan.max_tx_events.max(1)).min(left);
        let rollback = rng.random_bool(plan.rollback_chance);
        let aggregate_type =
            plan.aggregate_types[rng.random_range(0..plan.aggregate_types.len())].clone();
        let tx = PlannedTx {
            aggregate_type,
            ids: (0..size).map(|_| Uuid::now_v7()).collect(),
            aggregate_ids: (0..size)
                .map(|_| format!("w{w}-{}", rng.random_range(0..50u32)))
                .collect(),
            fillers: vec![plan.filler; size],
            rollback,
        };
        n += 1;
        let deadline = Instant::now() + plan.retry_for;
        loop {
            match try_transaction(&mut client, w, n, &tx).await {
                Ok(Some(written)) => {
                    committed += written.len();
                    progress
                        .0
                        .fetch_add(written.len(), std::sync::atomic::Ordering::Relaxed);
                    report.committed.extend(written);
                    break;
                }
                Ok(None) => {
                    report.rolled_back.extend(tx.ids.iter().copied());
                    break;
                }
                Err(e) => {
                    if Instant::now() >= deadline {
                        panic!("writer {w}: transaction {n} keeps failing: {e}");
                    }
                    // The server went away (a restart): reconnect, then find out whether the
                    // transaction committed before the connection broke.
                    report.retried += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    client = connect_retrying(&plan.url, plan.retry_for).await;
                    if tx.rollback {
                        report.rolled_back.extend(tx.ids.iter().copied());
                        break;
                    }
                    match committed_rows(&client, &tx.ids).await {
                        Some(rows) if !rows.is_empty() => {
                            let len = rows.len();
                            committed += len;
                            progress
                                .0
                                .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
                            report
                                .committed
                                .extend(rows.into_iter().map(|(id, at, ai, seq)| Written {
                                    id,
                                    aggregate_type: at,
                                    aggregate_id: ai,
                                    seq,
                                    writer: w,
                                    xid: 0,
                                }));
                            break;
                        }
                        // Not committed (or the server is gone again): write it again, with
                        // the same ids.
                        _ => continue,
                    }
                }
            }
        }
        if !plan.pause.is_zero() {
            tokio::time::sleep(plan.pause).await;
        }
    }
    report
}

/// Commits one transaction of `fillers.len()` events of `aggregate_type`, event `i` with
/// `fillers[i]` filler characters in its payload, numbered like the writers' events, as
/// writer `writer`. Panics on failure.
pub async fn write_tx(
    client: &mut Client,
    aggregate_type: &str,
    fillers: &[usize],
    writer: usize,
) -> Vec<Written> {
    let planned = PlannedTx {
        aggregate_type: aggregate_type.to_string(),
        ids: fillers.iter().map(|_| Uuid::now_v7()).collect(),
        aggregate_ids: (0..fillers.len())
            .map(|i| format!("w{writer}-{i}"))
            .collect(),
        fillers: fillers.to_vec(),
        rollback: false,
    };
    match try_transaction(client, writer, 0, &planned).await {
        Ok(Some(written)) => written,
        Ok(None) => unreachable!("the transaction is not rolled back"),
        Err(e) => panic!("cannot write a transaction of {aggregate_type}: {e}"),
    }
}

/// The rows of these ids in the outbox, with the counter value from their payloads, when
/// the query works. All or none exist: they were written in one transaction.
async fn committed_rows(client: &Client, ids: &[Uuid]) -> Option<Vec<(Uuid, String, String, i64)>> {
    let rows = client
        .query(
            "SELECT id, aggregatetype, aggregateid, (payload->>'seq')::bigint FROM outbox \
             WHERE id = ANY($1)",
            &[&ids],
        )
        .await
        .ok()?;
    assert!(
        rows.is_empty() || rows.len() == ids.len(),
        "a transaction committed only {} of its {} events",
        rows.len(),
        ids.len()
    );
    let mut out: Vec<(Uuid, String, String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    out.sort_by_key(|r| r.3);
    Some(out)
}

/// Runs one transaction: `Ok(Some(events))` committed, `Ok(None)` rolled back on purpose,
/// `Err` when the server failed (the outcome of a failed commit is unknown).
async fn try_transaction(
    client: &mut Client,
    w: usize,
    n: u64,
    planned: &PlannedTx,
) -> Result<Option<Vec<Written>>, String> {
    let len = planned.ids.len() as i64;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    let row = tx
        .query_one(
            &format!(
                "UPDATE {SEQ_TABLE} SET n = n + $2 WHERE aggregate_type = $1 \
                 RETURNING n, txid_current()"
            ),
            &[&planned.aggregate_type, &len],
        )
        .await
        .map_err(|e| e.to_string())?;
    let last: i64 = row.get(0);
    let xid: i64 = row.get(1);
    let first = last - len + 1;
    let table = OutboxTable::default();
    let mut written = Vec::with_capacity(planned.ids.len());
    for (i, id) in planned.ids.iter().enumerate() {
        let seq = first + i as i64;
        let event = OutboxEvent::new(
            planned.aggregate_type.clone(),
            planned.aggregate_ids[i].clone(),
            if planned.rollback {
                "RolledBack"
            } else {
                "Happened"
            },
            json!({
                "seq": seq,
                "writer": w,
                "tx": n,
                "filler": "x".repeat(planned.fillers[i]),
            }),
        )
        .id(*id);
        outflow_outbox::write(&tx, &table, &event)
            .await
            .map_err(|e| e.to_string())?;
        written.push(Written {
            id: *id,
            aggregate_type: planned.aggregate_type.clone(),
            aggregate_id: planned.aggregate_ids[i].clone(),
            seq,
            writer: w,
            xid,
        });
    }
    if planned.rollback {
        tx.rollback().await.map_err(|e| e.to_string())?;
        return Ok(None);
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(Some(written))
}

// ---------------------------------------------------------------------------------------
// JetStream
// ---------------------------------------------------------------------------------------

/// A message read back from a stream.
#[derive(Debug, Clone)]
pub struct StoredMsg {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject.
    pub subject: String,
    /// Its `Nats-Msg-Id` header.
    pub msg_id: Option<String>,
    /// Every header, first value of each.
    pub headers: HashMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
    /// When the server stored it, in nanoseconds since the Unix epoch.
    pub stored_at: i128,
}

impl StoredMsg {
    /// The body as JSON; panics when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "message {} on {} is not JSON ({e}): {}",
                self.seq,
                self.subject,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Connects a NATS client, retrying for up to `timeout`.
pub async fn nats_connect(url: &str, timeout: Duration) -> async_nats::Client {
    let deadline = Instant::now() + timeout;
    loop {
        match async_nats::connect(url).await {
            Ok(c) => return c,
            Err(e) if Instant::now() >= deadline => panic!("cannot connect to NATS at {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Creates a stream capturing `subjects` with a `dupe_window` duplicate window.
pub async fn create_stream(url: &str, name: &str, subjects: &[&str], dupe_window: Duration) {
    let js = async_nats::jetstream::new(nats_connect(url, Duration::from_secs(10)).await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: name.to_string(),
        subjects: subjects.iter().map(|s| s.to_string()).collect(),
        duplicate_window: dupe_window,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("cannot create stream {name}: {e}"));
}

/// The stream's message count, or `None` when it does not exist.
pub async fn stream_messages(url: &str, name: &str) -> Option<u64> {
    let js = async_nats::jetstream::new(nats_connect(url, Duration::from_secs(10)).await);
    let stream = js.get_stream(name).await.ok()?;
    let info = stream.get_info().await.ok()?;
    Some(info.state.messages)
}

/// Reads stream `name` from its first message, as long as messages keep coming, until
/// `done(messages so far)` holds and nothing new came for `quiet`, or `timeout` passed
/// (then it returns what it has; the caller's assertions say what is missing). Waits for
/// the stream to exist. Messages are fetched one by one by sequence with the stream's
/// message API, so no consumer state can skip or repeat any.
pub async fn read_stream<F>(
    url: &str,
    name: &str,
    mut done: F,
    quiet: Duration,
    timeout: Duration,
) -> Vec<StoredMsg>
where
    F: FnMut(&[StoredMsg]) -> bool,
{
    let deadline = Instant::now() + timeout;
    let js = async_nats::jetstream::new(nats_connect(url, timeout).await);
    let stream = loop {
        match js.get_stream(name).await {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                panic!("stream {name} does not exist after {timeout:?}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut out: Vec<StoredMsg> = Vec::new();
    let mut next = 1u64;
    let mut last_new = Instant::now();
    loop {
        let last = match stream.get_info().await {
            Ok(info) => info.state.last_sequence,
            Err(e) => {
                eprintln!("read_stream {name}: stream info failed: {e}");
                next.saturating_sub(1)
            }
        };
        while next <= last {
            match stream.get_raw_message(next).await {
                Ok(m) => {
                    let mut headers = HashMap::new();
                    for (k, v) in m.headers.iter() {
                        if let Some(first) = v.first() {
                            headers.insert(k.to_string(), first.as_str().to_string());
                        }
                    }
                    out.push(StoredMsg {
                        seq: m.sequence,
                        subject: m.subject.to_string(),
                        msg_id: headers.get("Nats-Msg-Id").cloned(),
                        headers,
                        body: m.payload.to_vec(),
                        stored_at: m.time.unix_timestamp_nanos(),
                    });
                    next += 1;
                    last_new = Instant::now();
                }
                Err(e) => {
                    let text = e.to_string();
                    if text.contains("no message found") || text.contains("not found") {
                        next += 1; // deleted; the tests delete nothing, but do not stall
                    } else {
                        eprintln!("read_stream {name}: message {next}: {e}");
                        break;
                    }
                }
            }
        }
        if last_new.elapsed() >= quiet && done(&out) {
            return out;
        }
        if Instant::now() >= deadline {
            eprintln!(
                "read_stream {name}: timed out after {timeout:?} with {} messages",
                out.len()
            );
            return out;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A `done` condition for [`read_stream`]: every id in `ids` was seen as a `Nats-Msg-Id`.
pub fn has_all_ids(ids: &[String]) -> impl FnMut(&[StoredMsg]) -> bool + '_ {
    move |msgs: &[StoredMsg]| {
        let seen: std::collections::HashSet<&str> =
            msgs.iter().filter_map(|m| m.msg_id.as_deref()).collect();
        ids.iter().all(|id| seen.contains(id.as_str()))
    }
}

/// Asserts that `msgs` hold each committed event exactly once (by `Nats-Msg-Id`, which must
/// equal the envelope id), no rolled back one, and, when `check_order`, that each subject
/// `<prefix>.<aggregate type>` holds its aggregate type's events in commit order with
/// non-decreasing commit LSNs. Returns the envelopes by id.
pub fn assert_exactly_committed(
    msgs: &[StoredMsg],
    report: &WriteReport,
    subject_prefix: &str,
    check_order: bool,
) -> HashMap<String, Value> {
    let expected = report.by_id();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut envelopes = HashMap::new();
    for m in msgs {
        let id = m
            .msg_id
            .clone()
            .unwrap_or_else(|| panic!("message {} on {} has no Nats-Msg-Id", m.seq, m.subject));
        let env = m.json();
        assert_eq!(
            env["id"],
            id.as_str(),
            "Nats-Msg-Id differs from the envelope id"
        );
        *seen.entry(id.clone()).or_default() += 1;
        envelopes.insert(id, env);
    }
    let rolled: Vec<String> = report
        .rolled_back
        .iter()
        .map(|u| u.to_string())
        .filter(|u| seen.contains_key(u))
        .collect();
    assert!(
        rolled.is_empty(),
        "{} events of rolled back transactions arrived, e.g. {:?}",
        rolled.len(),
        &rolled[..rolled.len().min(5)]
    );
    let missing: Vec<&String> = expected
        .keys()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} committed events are missing, e.g. {:?}",
        missing.len(),
        expected.len(),
        &missing[..missing.len().min(5)]
    );
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "{} events arrived more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    let unknown: Vec<&String> = seen
        .keys()
        .filter(|id| !expected.contains_key(*id))
        .collect();
    assert!(unknown.is_empty(), "unexpected events arrived: {unknown:?}");
    assert_eq!(msgs.len(), expected.len());

    for (id, env) in &envelopes {
        let w = &expected[id];
        assert_eq!(env["aggregate_type"], w.aggregate_type.as_str(), "{id}");
        assert_eq!(env["aggregate_id"], w.aggregate_id.as_str(), "{id}");
        assert_eq!(env["event_type"], "Happened", "{id}");
        assert_eq!(env["payload"]["seq"], w.seq, "{id}");
        assert_eq!(env["payload"]["writer"], w.writer, "{id}");
        assert_eq!(env["op"], "insert", "{id}");
    }
    for m in msgs {
        let w = &expected[m.msg_id.as_deref().unwrap_or_default()];
        assert_eq!(m.subject, format!("{subject_prefix}.{}", w.aggregate_type));
    }

    if check_order {
        for (aggregate_type, ids) in report.commit_order() {
            let subject = format!("{subject_prefix}.{aggregate_type}");
            let in_stream: Vec<&Value> = msgs
                .iter()
                .filter(|m| m.subject == subject)
                .map(|m| &envelopes[m.msg_id.as_deref().unwrap_or_default()])
                .collect();
            let stream_ids: Vec<String> = in_stream
                .iter()
                .map(|e| e["id"].as_str().unwrap_or_default().to_string())
                .collect();
            if stream_ids != ids {
                let first = stream_ids
                    .iter()
                    .zip(&ids)
                    .position(|(a, b)| a != b)
                    .unwrap_or(stream_ids.len().min(ids.len()));
                panic!(
                    "{subject}: stream order differs from commit order at index {first} of {} \
                     (stream {:?}, commits {:?})",
                    ids.len(),
                    stream_ids.get(first),
                    ids.get(first)
                );
            }
            let lsns: Vec<u64> = in_stream.iter().map(|e| commit_lsn(e)).collect();
            assert!(
                lsns.windows(2).all(|w| w[0] <= w[1]),
                "{subject}: commit LSNs are not in order"
            );
        }
    }
    envelopes
}

/// The commit LSN of an envelope from the Postgres source (`source.position` is
/// `<commit lsn>/<change lsn>/<index>`, each LSN written `X/Y`).
pub fn commit_lsn(envelope: &Value) -> u64 {
    let position = envelope["source"]["position"]
        .as_str()
        .unwrap_or_else(|| panic!("envelope without source.position: {envelope}"));
    let parts: Vec<&str> = position.split('/').collect();
    assert_eq!(parts.len(), 5, "unexpected position {position:?}");
    parse_lsn(&format!("{}/{}", parts[0], parts[1]))
}

/// Deletes a stream, ignoring a missing one (cleanup on a shared server).
pub async fn delete_stream(url: &str, name: &str) {
    let js = async_nats::jetstream::new(nats_connect(url, Duration::from_secs(10)).await);
    let _ = js.delete_stream(name).await;
}
