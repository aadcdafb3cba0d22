//! End to end: the `outflow` binary streams a Postgres outbox to NATS JetStream, and nothing
//! is lost.
//!
//! Every test runs the real binary against real Postgres (a fresh database on the shared
//! cluster, or a private cluster it can restart) and a real NATS server (the shared one, or a
//! private one it can stop), with its own database, slot, publication, stream, subjects and
//! pipeline name. Several writers, each a tokio task with its own connection, write outbox
//! events with `outflow_outbox::write` in transactions of 1 to 5 events; some transactions
//! are rolled back on purpose, and their ids must never arrive. A transaction first bumps its
//! aggregate type's counter row, which holds the row lock until it ends, so the counter in
//! each payload (`seq`) is the event's place in its aggregate type's commit order: the
//! stream's per-subject order is compared against it exactly. The stream is read back with
//! an ordered JetStream consumer until every committed id arrived and a quiet period passed.
//!
//! Start the services first: `scripts/services.sh start`.

#[path = "support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outflow_testkit::{fresh_database, nats_url, unique_name, PrivateNats, PrivatePostgres};
use rand::{Rng, SeedableRng};
use support::*;

/// Nothing new for this long, once every expected id arrived, ends a read: long enough for a
/// stray duplicate or a rolled back event to show up.
const QUIET: Duration = Duration::from_secs(2);
/// Longest wait for every committed event to arrive.
const DELIVERY: Duration = Duration::from_secs(60);
/// Longest wait for the binary to start streaming.
const STARTUP: Duration = Duration::from_secs(30);
/// The aggregate types the writers share: one subject each.
const TYPES: [&str; 3] = ["order", "invoice", "shipment"];

fn types() -> Vec<String> {
    TYPES.iter().map(|t| t.to_string()).collect()
}

/// The names a test owns.
struct Names {
    slot: String,
    publication: String,
    stream: String,
    pipeline: String,
    /// Subjects are `<prefix>.<aggregate type>`.
    prefix: String,
}

impl Names {
    fn new(test: &str) -> Names {
        Names {
            slot: unique_name(&format!("slot_{test}")),
            publication: unique_name(&format!("pub_{test}")),
            stream: unique_name(&format!("st_{test}")),
            pipeline: unique_name(&format!("p_{test}")),
            prefix: format!("e2e.{}", unique_name(test)),
        }
    }

    fn subject_template(&self) -> String {
        format!("{}.{{aggregate_type}}", self.prefix)
    }

    /// A pipeline file: Postgres outbox to NATS, with short retry and reconnect caps so a
    /// test does not sit out long backoffs, a stream the sink creates with a ten-minute
    /// duplicate window (longer than any test), and `extra` lines for the pipeline table.
    fn config(&self, pg_url: &str, nats: &str, pipeline_extra: &str) -> String {
        let p = &self.pipeline;
        format!(
            "[pipelines.{p}]\n\
             retry = {{ initial = \"100ms\", max = \"2s\" }}\n\
             {pipeline_extra}\n\
             \n\
             [pipelines.{p}.source]\n\
             type = \"postgres\"\n\
             url = {url}\n\
             slot = \"{slot}\"\n\
             publication = \"{publication}\"\n\
             tables = [\"public.outbox\"]\n\
             status_interval = \"1s\"\n\
             reconnect_backoff_max = \"2s\"\n\
             \n\
             [pipelines.{p}.sink]\n\
             type = \"nats\"\n\
             url = {nats}\n\
             subject = {subject}\n\
             stream = \"{stream}\"\n\
             duplicate_window = \"10m\"\n",
            url = toml_string(pg_url),
            slot = self.slot,
            publication = self.publication,
            nats = toml_string(nats),
            subject = toml_string(&self.subject_template()),
            stream = self.stream,
        )
    }
}

fn ids_of(report: &WriteReport) -> Vec<String> {
    report.committed.iter().map(|w| w.id.to_string()).collect()
}

/// Waits until the slot confirmed a position past `lsn`.
async fn wait_confirmed_past(url: &str, slot: &str, lsn: u64, timeout: Duration) {
    let client = connect_retrying(url, timeout).await;
    wait_for(
        &format!("slot {slot} to confirm past {}", format_lsn(lsn)),
        timeout,
        || async { matches!(slot_state(&client, slot).await, Some((Some(c), _)) if c > lsn) },
    )
    .await;
}

/// Every committed event arrives exactly once, none of the rolled back ones, each subject in
/// its aggregate type's commit order; a clean stop exits 0 having confirmed everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_committed_event_arrives_once_in_commit_order() {
    let began = Instant::now();
    let db = fresh_database("e2e_nats_order").await;
    let nats = nats_url().to_string();
    let names = Names::new("order");
    prepare_outbox(&db.connect().await, &types()).await;

    let mut outflow = Outflow::with_config(&names.config(&db.url(), &nats, ""));
    outflow.start();
    wait_slot_active(&db.url(), &names.slot, STARTUP).await;

    let plan = WritePlan::new(&db.url(), 4, 500, &types());
    let total = plan.total();
    let report = run_writers(plan, WriteProgress::default()).await;
    assert_eq!(report.committed.len(), total);
    assert!(
        !report.rolled_back.is_empty(),
        "no transaction was rolled back"
    );

    let ids = ids_of(&report);
    let msgs = read_stream(&nats, &names.stream, has_all_ids(&ids), QUIET, DELIVERY).await;
    let envelopes = assert_exactly_committed(&msgs, &report, &names.prefix, true);
    assert_eq!(
        stream_messages(&nats, &names.stream).await,
        Some(total as u64)
    );

    let status = outflow.terminate(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "a clean stop exits 0");
    let last_commit = envelopes.values().map(commit_lsn).max().unwrap_or(0);
    let client = db.connect().await;
    let (confirmed, active) = slot_state(&client, &names.slot)
        .await
        .expect("the slot exists");
    assert!(!active);
    let confirmed = confirmed.expect("the slot has a confirmed position");
    assert!(
        confirmed > last_commit,
        "after a clean stop the slot confirmed {} but the last delivered commit is at {}",
        format_lsn(confirmed),
        format_lsn(last_commit)
    );
    delete_stream(&nats, &names.stream).await;
    eprintln!(
        "every_committed_event_arrives_once_in_commit_order: {total} events, {} rolled back, \
         {:?}",
        report.rolled_back.len(),
        began.elapsed()
    );
}

/// The binary, run from flags (`outflow postgres … --to nats://…`), is killed with SIGKILL
/// three times at random moments while the writers write, and restarted each time: still
/// exactly the committed events, each once, in commit order per subject, and the stream
/// holds exactly that many messages (redeliveries removed by `Nats-Msg-Id` deduplication).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_three_times_mid_stream_loses_nothing() {
    let began = Instant::now();
    let db = fresh_database("e2e_nats_kill").await;
    let nats = nats_url().to_string();
    let names = Names::new("kill");
    prepare_outbox(&db.connect().await, &types()).await;
    // Without `stream` in flags, the stream must exist: the test makes it, with a
    // duplicate window covering the whole test.
    create_stream(
        &nats,
        &names.stream,
        &[&format!("{}.*", names.prefix)],
        Duration::from_secs(600),
    )
    .await;

    let url = db.url();
    let subject = names.subject_template();
    let mut outflow = Outflow::with_args([
        "postgres",
        "--url",
        &url,
        "--slot",
        &names.slot,
        "--publication",
        &names.publication,
        "--table",
        "public.outbox",
        "--to",
        &nats,
        "--destination",
        &subject,
        "--pipeline",
        &names.pipeline,
        "--state-dir",
        "{dir}/state",
    ]);
    outflow.start();
    wait_slot_active(&url, &names.slot, STARTUP).await;

    let mut plan = WritePlan::new(&url, 4, 750, &types());
    plan.pause = Duration::from_millis(40);
    let total = plan.total();
    let progress = WriteProgress::default();
    let writers = spawn_writers(plan, progress.clone());

    let mut rng = rand::rngs::StdRng::seed_from_u64(now_nanos() as u64);
    for kill in 1..=3 {
        let wait = Duration::from_millis(rng.random_range(1000..2500));
        tokio::time::sleep(wait).await;
        let written = progress.committed();
        assert!(
            written < total,
            "kill {kill} came after the writers finished; slow them down"
        );
        let status = outflow.kill();
        eprintln!("kill {kill}: SIGKILL after {written} of {total} events ({status})");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..300))).await;
        outflow.start();
    }
    let report = writers.await.expect("writers");
    assert_eq!(report.committed.len(), total);

    let ids = ids_of(&report);
    let msgs = read_stream(&nats, &names.stream, has_all_ids(&ids), QUIET, DELIVERY).await;
    assert_exactly_committed(&msgs, &report, &names.prefix, true);
    assert_eq!(
        stream_messages(&nats, &names.stream).await,
        Some(total as u64),
        "the stream holds each event once"
    );
    assert!(outflow.is_running(), "the last start keeps running");
    assert_eq!(outflow.starts(), 4);
    assert!(
        outflow.count_log("replication started") >= 4,
        "each start resumes replication"
    );
    outflow.terminate(Duration::from_secs(30)).await;
    delete_stream(&nats, &names.stream).await;
    eprintln!(
        "sigkill_three_times_mid_stream_loses_nothing: {total} events, {:?}",
        began.elapsed()
    );
}

/// NATS stops for ten seconds mid-stream and starts again on the same port with the same
/// store. Throughout, the slot's `confirmed_flush_lsn` (read every 100 ms) never passes a
/// transaction NATS had not stored yet; while NATS is down it does not advance; after the
/// restart every committed event arrives, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_outage_holds_the_slot_and_loses_nothing() {
    let began = Instant::now();
    let db = fresh_database("e2e_nats_outage").await;
    let mut nats = PrivateNats::start().await;
    let names = Names::new("outage");
    prepare_outbox(&db.connect().await, &types()).await;

    let mut outflow = Outflow::with_config(&names.config(&db.url(), &nats.url(), ""));
    outflow.start();
    wait_slot_active(&db.url(), &names.slot, STARTUP).await;
    let monitor = SlotMonitor::start(&db.url(), &names.slot);

    let mut plan = WritePlan::new(&db.url(), 4, 500, &types());
    plan.pause = Duration::from_millis(70);
    let total = plan.total();
    let progress = WriteProgress::default();
    let writers = spawn_writers(plan, progress.clone());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let before_stop = progress.committed();
    nats.stop().await;
    let stopped_at = now_nanos();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarting_at = now_nanos();
    let during = progress.committed() - before_stop;
    nats.start_again().await;
    eprintln!("nats was down for 10 s while {during} events were committed");
    assert!(during > 0, "the writers wrote nothing while NATS was down");

    let report = writers.await.expect("writers");
    assert_eq!(report.committed.len(), total);
    let ids = ids_of(&report);
    let msgs = read_stream(
        &nats.url(),
        &names.stream,
        has_all_ids(&ids),
        QUIET,
        DELIVERY,
    )
    .await;
    // The sink's stream is its own (`stream` is set, so exclusive_stream defaults to true):
    // every publish names its predecessor, so the order holds across the outage too.
    let envelopes = assert_exactly_committed(&msgs, &report, &names.prefix, true);
    assert_eq!(
        stream_messages(&nats.url(), &names.stream).await,
        Some(total as u64)
    );
    let last_commit = envelopes.values().map(commit_lsn).max().unwrap_or(0);
    wait_confirmed_past(&db.url(), &names.slot, last_commit, DELIVERY).await;
    let samples = monitor.stop();

    // When each transaction was stored whole in the stream: its last event's store time.
    let mut stored: HashMap<u64, i128> = HashMap::new();
    for m in &msgs {
        let lsn = commit_lsn(&envelopes[m.msg_id.as_deref().unwrap_or_default()]);
        let t = stored.entry(lsn).or_insert(m.stored_at);
        *t = (*t).max(m.stored_at);
    }
    // The slot never confirms a transaction before NATS stored all of it: at every reading,
    // each transaction stored only later still lies at or after the confirmed position.
    for s in &samples {
        if let Some((lsn, at)) = stored
            .iter()
            .filter(|(lsn, at)| **at > s.at && **lsn < s.confirmed)
            .min_by_key(|(lsn, _)| **lsn)
        {
            panic!(
                "the slot confirmed {} at {} ns, but the transaction committed at {} was stored \
                 in NATS only at {} ns",
                format_lsn(s.confirmed),
                s.at,
                format_lsn(*lsn),
                at
            );
        }
    }
    // While NATS was down nothing could be acknowledged. Positions acknowledged just before
    // the stop may still reach the server for a moment (100 ms commit poll, 1 s status
    // interval), so the readings from 3 s after the stop until the restart must all be the
    // same, and before every transaction that was stored after the restart.
    let settled = stopped_at + 3_000_000_000;
    let down: Vec<u64> = samples
        .iter()
        .filter(|s| s.at >= settled && s.at <= restarting_at)
        .map(|s| s.confirmed)
        .collect();
    assert!(
        down.len() >= 40,
        "only {} slot readings while NATS was down",
        down.len()
    );
    let held = down[0];
    assert!(
        down.iter().all(|c| *c == held),
        "the slot advanced while NATS was down: {:?}",
        down.iter().map(|c| format_lsn(*c)).collect::<Vec<_>>()
    );
    let first_after = stored
        .iter()
        .filter(|(_, at)| **at > restarting_at)
        .map(|(lsn, _)| *lsn)
        .min()
        .expect("transactions were stored after the restart");
    assert!(
        held <= first_after,
        "held {} is past {}",
        format_lsn(held),
        format_lsn(first_after)
    );
    assert!(
        samples.last().map(|s| s.confirmed) > Some(held),
        "the slot advanced after the restart"
    );
    assert!(
        outflow.count_log("sink failed transiently; will resend") > 0,
        "the outage was seen by the pipeline"
    );
    assert_eq!(outflow.starts(), 1);
    assert!(outflow.is_running());
    eprintln!(
        "nats_outage_holds_the_slot_and_loses_nothing: {total} events, slot held at {} for \
         {} readings, {:?}",
        format_lsn(held),
        down.len(),
        began.elapsed()
    );
}

/// Postgres restarts mid-stream while the writers write (they reconnect and retry; a commit
/// whose outcome is unknown is looked up by its ids). The binary reconnects by itself, is
/// never restarted, and every committed event arrives once, in commit order per subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restart_mid_stream_loses_nothing() {
    let began = Instant::now();
    let mut pg = PrivatePostgres::start().await;
    let dbname = pg.create_database("e2e_nats_pgrestart").await;
    let url = pg.url(&dbname);
    let nats = nats_url().to_string();
    let names = Names::new("pgrestart");
    prepare_outbox(&connect_retrying(&url, STARTUP).await, &types()).await;

    let mut outflow = Outflow::with_config(&names.config(&url, &nats, ""));
    outflow.start();
    wait_slot_active(&url, &names.slot, STARTUP).await;

    let mut plan = WritePlan::new(&url, 4, 600, &types());
    plan.pause = Duration::from_millis(30);
    let total = plan.total();
    let progress = WriteProgress::default();
    let writers = spawn_writers(plan, progress.clone());

    tokio::time::sleep(Duration::from_secs(3)).await;
    let at_stop = progress.committed();
    pg.stop().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    pg.start_again().await;
    eprintln!("postgres restarted after {at_stop} of {total} events");
    assert!(
        at_stop < total,
        "the restart came after the writers finished"
    );

    let report = writers.await.expect("writers");
    assert_eq!(report.committed.len(), total);
    assert!(report.retried > 0, "no writer noticed the restart");
    let ids = ids_of(&report);
    let msgs = read_stream(&nats, &names.stream, has_all_ids(&ids), QUIET, DELIVERY).await;
    assert_exactly_committed(&msgs, &report, &names.prefix, true);
    assert_eq!(
        stream_messages(&nats, &names.stream).await,
        Some(total as u64)
    );
    assert!(outflow.is_running(), "the binary survives the restart");
    assert_eq!(outflow.starts(), 1, "the binary was never restarted");
    assert!(
        outflow.count_log("postgres connection lost; reconnecting") >= 1,
        "the source noticed the restart"
    );
    assert!(outflow.count_log("replication started") >= 2);
    outflow.terminate(Duration::from_secs(30)).await;
    delete_stream(&nats, &names.stream).await;
    eprintln!(
        "postgres_restart_mid_stream_loses_nothing: {total} events, {} writer retries, {:?}",
        report.retried,
        began.elapsed()
    );
}

/// Payload filler that makes an event far larger than the private server's `max_payload`.
const BIG_FILLER: usize = 10_000;
/// The private server's `max_payload` in the oversize tests.
const SMALL_MAX_PAYLOAD: u64 = 4096;

/// An event over the server's `max_payload`, with `on_error = "dead_letter"`: it goes to the
/// dead-letter subject `outflow.dlq.<pipeline>` (captured by the stream `<stream>_DLQ` that
/// the sink creates) with its id and the reason, and every other event is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_event_is_dead_lettered_and_the_rest_delivered() {
    let began = Instant::now();
    let db = fresh_database("e2e_nats_dlq").await;
    let nats = PrivateNats::start_with_max_payload(SMALL_MAX_PAYLOAD).await;
    let names = Names::new("dlq");
    prepare_outbox(&db.connect().await, &types()).await;

    let config = names.config(&db.url(), &nats.url(), "on_error = \"dead_letter\"");
    let mut outflow = Outflow::with_config(&config);
    outflow.start();
    wait_slot_active(&db.url(), &names.slot, STARTUP).await;

    let mut plan = WritePlan::new(&db.url(), 3, 300, &types());
    plan.pause = Duration::from_millis(10);
    plan.filler = 200;
    let progress = WriteProgress::default();
    let writers = spawn_writers(plan, progress.clone());
    wait_for("half the events", Duration::from_secs(30), || async {
        progress.committed() >= 450
    })
    .await;
    // One transaction with a normal event, an oversized one, and another normal one.
    let mut client = db.connect().await;
    let big_tx = write_tx(&mut client, "order", &[200, BIG_FILLER, 200], 9).await;
    let mut report = writers.await.expect("writers");
    let big = big_tx[1].clone();
    report
        .committed
        .extend([big_tx[0].clone(), big_tx[2].clone()]);

    let ids = ids_of(&report);
    let msgs = read_stream(
        &nats.url(),
        &names.stream,
        has_all_ids(&ids),
        QUIET,
        DELIVERY,
    )
    .await;
    assert_exactly_committed(&msgs, &report, &names.prefix, false);
    let big_id = big.id.to_string();
    assert!(
        msgs.iter()
            .all(|m| m.msg_id.as_deref() != Some(big_id.as_str())),
        "the oversized event is not in the main stream"
    );

    let dlq_stream = format!("{}_DLQ", names.stream);
    let dlq_subject = format!("outflow.dlq.{}", names.pipeline);
    let dlq_id = format!("{big_id}:dlq");
    let dead = read_stream(
        &nats.url(),
        &dlq_stream,
        |m: &[StoredMsg]| !m.is_empty(),
        QUIET,
        DELIVERY,
    )
    .await;
    assert_eq!(dead.len(), 1, "one dead letter");
    let dead = &dead[0];
    assert_eq!(dead.subject, dlq_subject);
    assert_eq!(dead.msg_id.as_deref(), Some(dlq_id.as_str()));
    let reason = dead
        .headers
        .get("outflow-error")
        .expect("the dead letter says why");
    assert!(
        reason.contains(&big_id) && reason.contains("max_payload of 4096 bytes"),
        "reason: {reason}"
    );
    // The envelope is over max_payload too: its data is left out, and the header says so.
    let omitted = dead.headers.get("outflow-omitted").map(String::as_str);
    assert!(
        omitted.is_some_and(|o| o.split(',').any(|f| f == "payload")),
        "outflow-omitted: {omitted:?}"
    );
    let body = dead.json();
    assert_eq!(body["id"], big_id.as_str());
    assert_eq!(body["aggregate_type"], "order");
    assert_eq!(body["event_type"], "Happened");
    assert_eq!(body["payload"], serde_json::Value::Null);
    assert!(body["source"]["position"].is_string());
    assert!(outflow.is_running(), "the pipeline goes on");
    assert_eq!(
        outflow.count_log("event dead-lettered"),
        2,
        "sink and runner log it once"
    );
    eprintln!(
        "oversized_event_is_dead_lettered_and_the_rest_delivered: {} events, {:?}",
        ids.len(),
        began.elapsed()
    );
}

/// An event over the server's `max_payload` with `on_error = "fail"`: the binary exits 1 and
/// its stderr names the event and says what to do; the slot stays before the event's
/// transaction (its insert is still in the slot). Restarted with `on_error = "dead_letter"`
/// as the message advises, the binary resumes there: everything arrives once and the event
/// is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_event_with_on_error_fail_stops_before_its_transaction() {
    let began = Instant::now();
    let db = fresh_database("e2e_nats_fail").await;
    let nats = PrivateNats::start_with_max_payload(SMALL_MAX_PAYLOAD).await;
    let names = Names::new("fail");
    prepare_outbox(&db.connect().await, &types()).await;

    let config = names.config(&db.url(), &nats.url(), "on_error = \"fail\"");
    let mut outflow = Outflow::with_config(&config);
    outflow.start();
    wait_slot_active(&db.url(), &names.slot, STARTUP).await;

    // One writer, so "before" and "after" the oversized transaction are exact.
    let before = run_writers(
        WritePlan::new(&db.url(), 1, 200, &types()),
        WriteProgress::default(),
    )
    .await;
    let mut client = db.connect().await;
    let big_tx = write_tx(&mut client, "order", &[10, BIG_FILLER, 10], 9).await;
    let after = run_writers(
        WritePlan::new(&db.url(), 1, 200, &types()),
        WriteProgress::default(),
    )
    .await;
    let big = big_tx[1].clone();
    let big_id = big.id.to_string();

    let status = outflow.wait_exit(DELIVERY).await;
    assert_eq!(status.code(), Some(1), "a pipeline that fails exits 1");
    let stderr = outflow.stderr();
    let last = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("outflow: "))
        .unwrap_or_else(|| panic!("no final error line in stderr"));
    assert!(
        last.starts_with(&format!("outflow: pipeline {}: ", names.pipeline)),
        "{last}"
    );
    for needle in [
        format!("event {big_id} (order w9-1) cannot be delivered"),
        "over the server's max_payload of 4096 bytes".to_string(),
        "raise max_payload on the server or make the event smaller".to_string(),
        "set on_error = \"dead_letter\" or \"skip\"".to_string(),
    ] {
        assert!(last.contains(&needle), "{needle:?} not in {last:?}");
    }

    // Every event committed before the oversized transaction was delivered; it was not.
    let before_ids = ids_of(&before);
    let msgs = read_stream(
        &nats.url(),
        &names.stream,
        has_all_ids(&before_ids),
        QUIET,
        DELIVERY,
    )
    .await;
    let seen: std::collections::HashSet<&str> =
        msgs.iter().filter_map(|m| m.msg_id.as_deref()).collect();
    let missing: Vec<&String> = before_ids
        .iter()
        .filter(|id| !seen.contains(id.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of the {} events committed before the oversized one are not in the stream \
         (read {} messages, the stream holds {:?}), e.g. {:?}",
        missing.len(),
        before_ids.len(),
        msgs.len(),
        stream_messages(&nats.url(), &names.stream).await,
        &missing[..missing.len().min(5)]
    );
    assert!(msgs
        .iter()
        .all(|m| m.msg_id.as_deref() != Some(big_id.as_str())));

    // The slot still holds the oversized event's insert: its position is before the
    // transaction.
    wait_for(
        "the slot to be released",
        Duration::from_secs(30),
        || async { matches!(slot_state(&client, &names.slot).await, Some((_, false))) },
    )
    .await;
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE position(convert_to($3, 'UTF8') IN data) > 0), \
             count(*) FILTER (WHERE xid::text::bigint = $4) \
             FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, 'proto_version', '1', \
             'publication_names', $2)",
            &[&names.slot, &names.publication, &big_id, &big.xid],
        )
        .await
        .expect("peek the slot");
    let (with_id, of_tx): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!(
        with_id, 1,
        "the slot would deliver the oversized event again"
    );
    assert!(
        of_tx >= 5,
        "the slot holds its whole transaction (begin, 3 inserts, commit)"
    );

    // Do what the message says: dead-letter it, and run again.
    outflow.rewrite_config(
        &std::fs::read_to_string(outflow.config_path())
            .expect("config")
            .replace("on_error = \"fail\"", "on_error = \"dead_letter\""),
    );
    outflow.start();
    let mut all = WriteReport::default();
    all.committed.extend(before.committed);
    all.committed.extend([big_tx[0].clone(), big_tx[2].clone()]);
    all.committed.extend(after.committed);
    all.rolled_back.extend(before.rolled_back);
    all.rolled_back.extend(after.rolled_back);
    let ids = ids_of(&all);
    let msgs = read_stream(
        &nats.url(),
        &names.stream,
        has_all_ids(&ids),
        QUIET,
        DELIVERY,
    )
    .await;
    assert_exactly_committed(&msgs, &all, &names.prefix, true);
    let dead = read_stream(
        &nats.url(),
        &format!("{}_DLQ", names.stream),
        |m: &[StoredMsg]| !m.is_empty(),
        QUIET,
        DELIVERY,
    )
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].msg_id, Some(format!("{big_id}:dlq")));
    assert!(outflow.is_running());
    eprintln!(
        "oversized_event_with_on_error_fail_stops_before_its_transaction: {} events, {:?}",
        ids.len(),
        began.elapsed()
    );
}
