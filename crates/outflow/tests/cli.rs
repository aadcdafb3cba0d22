//! The `outflow` binary end to end, with the built-in source and sinks.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use outflow_testkit::{free_port, ChildGuard};
use serde_json::Value;

fn outflow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_outflow"));
    cmd.env_remove("RUST_LOG").stdin(Stdio::null());
    cmd
}

fn read_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

fn seqs(lines: &[Value]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| l["payload"]["seq"].as_u64().unwrap())
        .collect()
}

fn stored_position(state: &Path, pipeline: &str) -> Option<String> {
    let text = std::fs::read_to_string(state.join(format!("{pipeline}.checkpoint.json"))).ok()?;
    let map: BTreeMap<String, String> = serde_json::from_str(&text).unwrap();
    map.get("").cloned()
}

#[test]
fn validate_exits_2_with_located_errors_and_0_when_valid() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[pipelines.orders.source]\ntype = \"generate\"\ncount = \"ten\"\n\n\
         [pipelines.orders.sink]\ntype = \"file\"\npath = \"${OUTFLOW_TEST_UNSET_DIR}/x\"\n",
    )
    .unwrap();
    let out = outflow().arg("validate").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    let file = bad.display();
    assert_eq!(
        stderr.trim_end(),
        format!(
            "{file}:7:9: environment variable OUTFLOW_TEST_UNSET_DIR is not set; set it or \
             write ${{OUTFLOW_TEST_UNSET_DIR:-default}}"
        )
    );
    let out = outflow()
        .arg("validate")
        .arg(&bad)
        .env("OUTFLOW_TEST_UNSET_DIR", "/tmp")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim_end(),
        format!(
            "{file}:3:1: pipelines.orders.source.count: invalid type: string \"ten\", expected u64"
        )
    );

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "[pipelines.a.source]\ntype = \"generate\"\n[pipelines.b.source]\ntype = \"generate\"\n",
    )
    .unwrap();
    let out = outflow().arg("validate").arg(&good).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{}: ok (2 pipelines)\n", good.display())
    );

    let out = outflow()
        .arg("validate")
        .arg(dir.path().join("missing.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("missing.toml:1:1: cannot read the file"));
}

#[test]
fn bad_flags_exit_2_with_a_message() {
    let out = outflow()
        .args(["generate", "--to", "carrier-pigeon://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr).unwrap().starts_with(
        "outflow: --to \"carrier-pigeon://x\" is not a destination; use stdout, file:PATH"
    ));
    let out = outflow()
        .args(["generate", "--rate", "-5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = outflow()
        .args(["generate", "--format", "avro", "--count", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("unknown format \"avro\""));
}

/// The `worker_threads` field of the runtime's debug line in `stderr`.
fn worker_threads_logged(stderr: &str) -> Option<usize> {
    let line = stderr.lines().find(|l| l.contains("runtime started"))?;
    let value = line.split("worker_threads=").nth(1)?;
    value.split_whitespace().next()?.parse().ok()
}

#[test]
fn the_runtime_gets_one_thread_per_pipeline_unless_told() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("three.toml");
    let mut text = format!(
        "[state]\ndir = \"{}\"\n",
        dir.path().join("state").display()
    );
    for name in ["a", "b", "c"] {
        text.push_str(&format!(
            "\n[pipelines.{name}.source]\ntype = \"generate\"\ncount = 20\n\
             [pipelines.{name}.sink]\ntype = \"blackhole\"\n"
        ));
    }
    std::fs::write(&config, text).unwrap();
    let run = |extra: &[&str]| {
        let out = outflow()
            .args(["--log-level", "outflow=debug,warn"])
            .args(extra)
            .arg("run")
            .arg(&config)
            .env_remove("OUTFLOW_WORKER_THREADS")
            .env_remove("TOKIO_WORKER_THREADS")
            .output()
            .unwrap();
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        worker_threads_logged(&stderr).unwrap_or_else(|| panic!("no runtime line in {stderr}"))
    };
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(run(&[]), 3.min(cpus));
    assert_eq!(run(&["--worker-threads", "5"]), 5);

    let out = outflow()
        .args([
            "generate",
            "--count",
            "5",
            "--to",
            "blackhole",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .args(["--log-level", "outflow=debug,warn"])
        .env("OUTFLOW_WORKER_THREADS", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(worker_threads_logged(&stderr), Some(2), "{stderr}");

    // Tokio's own variable is honoured when outflow's is not set, and checked.
    let out = outflow()
        .args([
            "generate",
            "--count",
            "5",
            "--to",
            "blackhole",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .args(["--log-level", "outflow=debug,warn"])
        .env_remove("OUTFLOW_WORKER_THREADS")
        .env("TOKIO_WORKER_THREADS", "3")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(worker_threads_logged(&stderr), Some(3), "{stderr}");
    let out = outflow()
        .args([
            "generate",
            "--count",
            "5",
            "--to",
            "blackhole",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .env_remove("OUTFLOW_WORKER_THREADS")
        .env("TOKIO_WORKER_THREADS", "many")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim_end(),
        "outflow: TOKIO_WORKER_THREADS=\"many\" is not a positive integer: set a number of \
         threads, or unset it for one per pipeline"
    );

    let out = outflow()
        .args(["--worker-threads", "0", "run"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("invalid value '0' for '--worker-threads <WORKER_THREADS>'"),
        "{stderr}"
    );

    // A `run` whose file is bad stops before any runtime, with the located errors.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[pipelines.x.source]\ntype = \"nope\"\n").unwrap();
    let out = outflow().arg("run").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.starts_with(&format!("{}:2:", bad.display())),
        "{stderr}"
    );
}

#[test]
fn run_delivers_exact_ids_and_resumes_after_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("events.jsonl");
    let state = dir.path().join("state");
    let run = |count: u64| {
        outflow()
            .args([
                "generate",
                "--count",
                &count.to_string(),
                "--pipeline",
                "gen",
            ])
            .arg("--to")
            .arg(format!("file:{}", out_file.display()))
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap()
    };
    let out = run(250);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = read_lines(&out_file);
    assert_eq!(seqs(&lines), (1..=250).collect::<Vec<_>>());
    for line in &lines {
        let seq = line["payload"]["seq"].as_u64().unwrap().to_string();
        assert_eq!(
            line["id"],
            outflow_core::event_id_from_position("gen", None, &seq)
        );
        assert_eq!(line["source"]["pipeline"], "gen");
    }
    assert_eq!(stored_position(&state, "gen").as_deref(), Some("250"));
    // Raising the count continues after the stored position, with no repeats.
    let out = run(400);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(seqs(&read_lines(&out_file)), (1..=400).collect::<Vec<_>>());
    assert_eq!(stored_position(&state, "gen").as_deref(), Some("400"));
}

#[tokio::test]
async fn sigterm_drains_commits_what_was_delivered_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("events.jsonl");
    let state = dir.path().join("state");
    let mut child = ChildGuard::spawn(
        outflow()
            .args(["generate", "--rate", "500", "--pipeline", "gen"])
            .arg("--to")
            .arg(format!("file:{}", out_file.display()))
            .arg("--state-dir")
            .arg(&state)
            .stderr(Stdio::null()),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    child.terminate().unwrap();
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("exited");
    assert_eq!(status.code(), Some(0));
    let got = seqs(&read_lines(&out_file));
    assert!(got.len() > 100, "ran for a while: {}", got.len());
    assert_eq!(
        got,
        (1..=got.len() as u64).collect::<Vec<_>>(),
        "in order, none missing"
    );
    // Generate checkpoints every 100 events: the stored position is the last checkpoint
    // at or before the last delivered event, never beyond it.
    let stored: u64 = stored_position(&state, "gen").unwrap().parse().unwrap();
    let last = *got.last().unwrap();
    assert!(
        stored <= last && stored + 100 > last,
        "stored {stored}, delivered {last}"
    );
}

#[tokio::test]
async fn one_failed_pipeline_stops_the_process_with_1_after_the_others_drain() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // A corrupt checkpoint makes pipeline `broken` fail when it starts.
    std::fs::write(state.join("broken.checkpoint.json"), "{not json").unwrap();
    let good_out = dir.path().join("good.jsonl");
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        format!(
            "[state]\ndir = \"{}\"\n\n[pipelines.good.source]\ntype = \"generate\"\nrate = 200\n\
             [pipelines.good.sink]\ntype = \"file\"\npath = \"{}\"\n\n\
             [pipelines.broken.source]\ntype = \"generate\"\n[pipelines.broken.sink]\ntype = \"blackhole\"\n",
            state.display(),
            good_out.display()
        ),
    )
    .unwrap();
    let mut child =
        ChildGuard::spawn(outflow().arg("run").arg(&config).stderr(Stdio::piped())).unwrap();
    let status = child
        .wait_timeout(Duration::from_secs(30))
        .await
        .unwrap()
        .expect("exited");
    assert_eq!(status.code(), Some(1));
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("outflow: pipeline broken: checkpoint file")
            && stderr.contains("is not valid JSON; restore it or delete it"),
        "{stderr}"
    );
    // The healthy pipeline stopped cleanly: what it wrote is a gapless prefix.
    let got = seqs(&read_lines(&good_out));
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = ChildGuard::spawn(
        outflow()
            .args([
                "generate",
                "--rate",
                "1000",
                "--pipeline",
                "metered",
                "--to",
                "blackhole",
            ])
            .arg("--state-dir")
            .arg(dir.path())
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::null()),
    )
    .unwrap();
    outflow_testkit::wait_for_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let get = |path: &str| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let health = get("/healthz");
    assert!(health.starts_with("HTTP/1.1 200 OK"), "{health}");
    let ready = get("/readyz");
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    let metrics = get("/metrics");
    let delivered = metrics
        .lines()
        .find(|l| l.starts_with("outflow_events_delivered_total{pipeline=\"metered\"}"))
        .unwrap_or_else(|| panic!("no delivered counter in:\n{metrics}"));
    let n: f64 = delivered.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n > 100.0, "{delivered}");
    assert!(metrics.contains("outflow_events_received_total{pipeline=\"metered\"}"));
    assert!(
        metrics.contains("outflow_end_to_end_lag_seconds"),
        "{metrics}"
    );
    assert!(get("/nope").starts_with("HTTP/1.1 404"));
    child.terminate().unwrap();
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("exited");
    assert_eq!(status.code(), Some(0));
}

/// `/readyz` turns 200 only once the Postgres slot streams: a change committed right
/// after readiness is delivered.
#[tokio::test]
async fn readiness_means_changes_are_captured() {
    use outflow_outbox::{OutboxEvent, OutboxTable};

    let db = outflow_testkit::fresh_database("ready").await;
    let mut client = db.connect().await;
    let table = OutboxTable::new("outbox").unwrap();
    outflow_outbox::ensure_table(&client, &table).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("events.jsonl");
    let slot = outflow_testkit::unique_name("ready");
    let port = free_port();
    let mut child = ChildGuard::spawn(
        outflow()
            .args([
                "postgres",
                "--url",
                &db.url(),
                "--slot",
                &slot,
                "--publication",
                &slot,
            ])
            .args(["--table", "public.outbox", "--pipeline", "ready"])
            .arg("--to")
            .arg(format!("file:{}", out_file.display()))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{port}"))
            .stderr(Stdio::null()),
    )
    .unwrap();
    outflow_testkit::wait_for_tcp(&format!("127.0.0.1:{port}"), Duration::from_secs(20))
        .await
        .unwrap();
    let status = |path: &'static str| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).await.unwrap();
        body.split(' ').nth(1).unwrap_or("").to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while status("/readyz").await != "200" {
        assert!(std::time::Instant::now() < deadline, "never ready");
        assert!(child.try_wait().unwrap().is_none(), "outflow exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The slot exists and is consistent: nothing committed from now on can be missed.
    let consistent: bool = client
        .query_one(
            "SELECT confirmed_flush_lsn IS NOT NULL FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0);
    assert!(consistent, "ready before the slot is consistent");
    let tx = client.transaction().await.unwrap();
    let id = outflow_outbox::write(
        &tx,
        &table,
        &OutboxEvent::new("order", "7", "OrderCreated", serde_json::json!({"n": 7})),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let lines = read_lines(&out_file);
        if !lines.is_empty() {
            assert_eq!(lines.len(), 1);
            assert_eq!(lines[0]["id"], id.to_string());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the event after readiness never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.terminate().unwrap();
    let exit = child
        .wait_timeout(Duration::from_secs(20))
        .await
        .unwrap()
        .expect("exited");
    assert_eq!(exit.code(), Some(0));
}
