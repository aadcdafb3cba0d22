//! `outflow-bench`: the Rust side of `scripts/bench.sh`.
//!
//! Each subcommand runs one measurement with outflow's own library (the Postgres source,
//! the pipeline runner, a sink) and prints one JSON line on stdout:
//!
//! - `drain`: reads an existing slot until `--expect` events were acknowledged by the sink
//!   (B1, B2, B3);
//! - `generate`: the `generate` source into a sink, to isolate the sink's cost (B5);
//! - `lag`: writes one-row transactions at a fixed rate and measures, for every event,
//!   the time from its commit in Postgres to the sink's acknowledgement (B4).
//!
//! Every line carries `peak_rss_bytes`, the process's resident high-water mark
//! (`VmHWM`), read when the measurement ends. Logs go to stderr (`RUST_LOG`, default
//! `warn`). Anything that fails exits non-zero with the error on stderr.

mod meter;
mod receipt;
mod sinks;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use outflow_core::{ChangeSource, Error, EventSink, Timestamp};
use outflow_pipeline::{FileStore, GenerateConfig, GenerateSource, Pipeline, PipelineSettings};
use outflow_postgres::{PostgresConfig, PostgresSource};
use serde_json::json;
use tokio::sync::watch;

use crate::meter::Meter;
use crate::sinks::{SinkArgs, SinkKind};

/// How long a drain may take before it is called stuck: far beyond any size bench.sh
/// writes on this machine, short enough that a broken run does not hang CI.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1800);
/// The allocator of the outflow binary (see crates/outflow/src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often histogram samples are folded, as a Prometheus scrape would.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);
/// How long the lag run waits for the last events after the writers finished.
const LAG_TAIL_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the lag run's consumer may take to receive the last messages after the
/// sink acknowledged them.
const RECEIPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Concurrent writer connections of the lag run: one connection cannot commit 1,000
/// transactions a second with `fsync = on` on a slow disk.
const LAG_WRITERS: u64 = 4;

#[derive(Debug, Parser)]
#[command(
    name = "outflow-bench",
    about = "outflow benchmark harness (see scripts/bench.sh)"
)]
struct Cli {
    /// Worker threads of the runtime the pipeline runs on; default as the outflow binary
    /// gives one pipeline. The lag run's writers and consumer run on a runtime of their
    /// own, so they take no turns on the pipeline's threads.
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Drains an existing slot into a sink until `--expect` events were acknowledged.
    Drain(DrainArgs),
    /// Runs the generate source into a sink.
    Generate(GenerateArgs),
    /// Writes one-row transactions at a fixed rate and measures commit-to-ack lag.
    Lag(LagArgs),
}

#[derive(Debug, Args)]
struct PgArgs {
    /// Database URL (the role needs REPLICATION).
    #[arg(long)]
    pg_url: String,
    /// An existing logical replication slot (pgoutput).
    #[arg(long)]
    slot: String,
    /// An existing publication.
    #[arg(long)]
    publication: String,
    /// The captured outbox table.
    #[arg(long, default_value = "public.outbox")]
    table: String,
}

#[derive(Debug, Args)]
struct DrainArgs {
    #[command(flatten)]
    pg: PgArgs,
    /// Events the backlog holds; the measurement ends when the sink acknowledged them all.
    #[arg(long)]
    expect: u64,
    #[command(flatten)]
    sink: SinkArgs,
}

#[derive(Debug, Args)]
struct GenerateArgs {
    /// Events to generate.
    #[arg(long)]
    count: u64,
    /// Bytes of filler in each payload.
    #[arg(long, default_value_t = 0)]
    payload_bytes: usize,
    #[command(flatten)]
    sink: SinkArgs,
}

#[derive(Debug, Args)]
struct LagArgs {
    #[command(flatten)]
    pg: PgArgs,
    /// One-row transactions per second, all writers together.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// How long to write.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events committed in the first this many seconds are not counted (connection
    /// start, first relation lookup).
    #[arg(long, default_value_t = 1)]
    warmup_seconds: u64,
    #[command(flatten)]
    sink: SinkArgs,
}

fn main() -> std::process::ExitCode {
    // As the outflow binary does.
    outflow_pipeline::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    // As the outflow binary does with a [metrics] section: every metric is recorded.
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    if metrics::set_global_recorder(recorder).is_err() {
        eprintln!("outflow-bench: a metrics recorder was already installed");
        return std::process::ExitCode::FAILURE;
    }
    let threads = match outflow_pipeline::worker_threads(cli.worker_threads, 1) {
        Ok(threads) => threads,
        Err(e) => {
            eprintln!("outflow-bench: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let runtimes = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .and_then(|runtime| {
            let helpers = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("bench-helpers")
                .enable_all()
                .build()?;
            Ok((runtime, helpers))
        });
    let (runtime, helpers) = match runtimes {
        Ok(runtimes) => runtimes,
        Err(e) => {
            eprintln!("outflow-bench: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        // Histogram samples pile up until drained; a scrape (or this upkeep) drains them.
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            loop {
                every.tick().await;
                handle.run_upkeep();
            }
        });
        match cli.command {
            Command::Drain(args) => drain(args).await,
            Command::Generate(args) => generate(args).await,
            Command::Lag(args) => lag(args, helpers.handle().clone()).await,
        }
    });
    helpers.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(line) => {
            println!("{line}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("outflow-bench: {}", e.chain());
            std::process::ExitCode::FAILURE
        }
    }
}

/// CPU seconds (user + system) this process used so far, or 0 where unknown.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name, which ends at the last ')': state is field 3, utime
    // and stime are fields 14 and 15, in clock ticks (100 per second on Linux).
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|t| t.parse::<u64>().ok())
        .sum();
    ticks as f64 / 100.0
}

/// The process's peak resident set size in bytes (`VmHWM`), or 0 where unknown.
fn peak_rss_bytes() -> u64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn postgres_source(pg: &PgArgs) -> Result<PostgresSource, Error> {
    let mut config = PostgresConfig::new(pg.pg_url.clone());
    config.slot = pg.slot.clone();
    config.publication = pg.publication.clone();
    config.tables = vec![pg.table.clone()];
    config.create_slot = false;
    config.create_publication = false;
    config.sslmode = Some(outflow_postgres::SslMode::Disable);
    PostgresSource::new(config, "bench")
}

/// A private checkpoint folder for one run, removed when dropped.
struct StateDir(PathBuf);

impl StateDir {
    fn new(what: &str) -> Result<StateDir, Error> {
        let dir = std::env::temp_dir().join(format!(
            "outflow-bench-{what}-{}-{}",
            std::process::id(),
            Timestamp::now().unix_micros()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::fatal(format!("cannot create {}", dir.display())).with_source(e))?;
        Ok(StateDir(dir))
    }
}

impl Drop for StateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The pipeline settings: the defaults, or for experiments the TOML in
/// `OUTFLOW_BENCH_SETTINGS` (keys of a `[pipelines.<name>]` table, e.g.
/// `max_in_flight_bytes = 4194304`).
fn settings() -> Result<PipelineSettings, Error> {
    let Ok(text) = std::env::var("OUTFLOW_BENCH_SETTINGS") else {
        return Ok(PipelineSettings::default());
    };
    let settings: PipelineSettings = toml::from_str(&text).map_err(|e| {
        Error::fatal(format!(
            "OUTFLOW_BENCH_SETTINGS is not valid pipeline settings: {e}"
        ))
    })?;
    settings.validate()?;
    eprintln!("pipeline settings from OUTFLOW_BENCH_SETTINGS: {settings:?}");
    Ok(settings)
}

/// Runs `source` into `sink` (wrapped in `meter`) until the meter reached its target,
/// then stops the pipeline. Returns the time from the pipeline's start to the target.
async fn run_until_target(
    source: Box<dyn ChangeSource>,
    meter: Meter,
    timeout: Duration,
) -> Result<Duration, Error> {
    let state = StateDir::new("state")?;
    let store = Arc::new(FileStore::new(state.0.clone()));
    let mut reached = meter.reached();
    let sink: Arc<dyn EventSink> = Arc::new(meter.clone());
    let pipeline = Pipeline::new("bench", settings()?, source, sink, store);
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = Instant::now();
    meter.start_clock(started);
    let mut run = tokio::spawn(pipeline.run(stop_rx));
    let waited = tokio::select! {
        r = tokio::time::timeout(timeout, reached.wait_for(|r| *r)) => Some(r.is_ok()),
        joined = &mut run => {
            let report = joined
                .map_err(|e| Error::fatal("the pipeline task panicked").with_source(e))??;
            return Err(Error::fatal(format!(
                "the pipeline stopped after {} of {} events",
                report.delivered,
                meter.target()
            )));
        }
    };
    let _ = stop_tx.send(true);
    if waited != Some(true) {
        let _ = run.await;
        return Err(Error::fatal(format!(
            "only {} of {} events were acknowledged within {timeout:?}",
            meter.acked(),
            meter.target()
        )));
    }
    let elapsed = meter
        .elapsed_at_target()
        .unwrap_or_else(|| started.elapsed());
    let report = run
        .await
        .map_err(|e| Error::fatal("the pipeline task panicked").with_source(e))??;
    if report.dead_lettered + report.skipped > 0 {
        return Err(Error::fatal(format!(
            "{} events were not delivered",
            report.dead_lettered + report.skipped
        )));
    }
    Ok(elapsed)
}

async fn drain(args: DrainArgs) -> Result<String, Error> {
    let source = postgres_source(&args.pg)?;
    let (sink, cleanup) = args.sink.build("order").await?;
    let meter = Meter::new(sink, args.expect, false);
    let result = run_until_target(Box::new(source), meter.clone(), DRAIN_TIMEOUT).await;
    let peak = peak_rss_bytes();
    let cpu = cpu_seconds();
    cleanup.run().await;
    let elapsed = result?;
    Ok(json!({
        "bench": "drain",
        "cpu_seconds": cpu,
        "sink": args.sink.kind.as_str(),
        "events": meter.acked(),
        "seconds": elapsed.as_secs_f64(),
        "events_per_sec": meter.acked() as f64 / elapsed.as_secs_f64(),
        "peak_rss_bytes": peak,
    })
    .to_string())
}

async fn generate(args: GenerateArgs) -> Result<String, Error> {
    let config = GenerateConfig {
        count: Some(args.count),
        payload_bytes: args.payload_bytes,
        ..GenerateConfig::default()
    };
    config.validate()?;
    let (sink, cleanup) = args.sink.build("customer,invoice,order").await?;
    let meter = Meter::new(sink, args.count, false);
    let source = GenerateSource::new(config);
    let result = run_until_target(Box::new(source), meter.clone(), DRAIN_TIMEOUT).await;
    let peak = peak_rss_bytes();
    cleanup.run().await;
    let elapsed = result?;
    Ok(json!({
        "bench": "generate",
        "sink": args.sink.kind.as_str(),
        "events": meter.acked(),
        "seconds": elapsed.as_secs_f64(),
        "events_per_sec": meter.acked() as f64 / elapsed.as_secs_f64(),
        "peak_rss_bytes": peak,
    })
    .to_string())
}

async fn connect_sql(url: &str) -> Result<tokio_postgres::Client, Error> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| Error::fatal(format!("cannot connect to {url}")).with_source(e))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "writer connection ended");
        }
    });
    Ok(client)
}

/// Waits until the slot is in use by the pipeline's replication connection.
async fn wait_slot_active(client: &tokio_postgres::Client, slot: &str) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_opt(
                "select active from pg_replication_slots where slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| Error::fatal("cannot read pg_replication_slots").with_source(e))?;
        match row {
            Some(row) if row.get::<_, bool>(0) => return Ok(()),
            Some(_) => {}
            None => return Err(Error::fatal(format!("slot {slot:?} does not exist"))),
        }
        if Instant::now() > deadline {
            return Err(Error::fatal(format!(
                "slot {slot:?} did not become active within 30s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One writer: inserts one outbox row per transaction at `rate / writers` per second,
/// offset so that the writers together keep an even pace. Returns how many it wrote.
async fn writer(
    url: String,
    table: String,
    index: u64,
    writers: u64,
    total: u64,
    rate: u64,
    began: tokio::time::Instant,
) -> Result<u64, Error> {
    let client = connect_sql(&url).await?;
    let sql = format!(
        "insert into {table} (id, aggregatetype, aggregateid, type, payload) \
         values (gen_random_uuid(), 'order', $1, 'OrderCreated', \
         jsonb_build_object('n', $2::int8, 'total', 42.5))"
    );
    let statement = client
        .prepare(&sql)
        .await
        .map_err(|e| Error::fatal(format!("cannot prepare {sql:?}")).with_source(e))?;
    let mut written = 0;
    let mut n = index;
    while n < total {
        let due = began + Duration::from_secs_f64(n as f64 / rate as f64);
        tokio::time::sleep_until(due).await;
        let id = (n % 1000).to_string();
        client
            .execute(&statement, &[&id, &(n as i64)])
            .await
            .map_err(|e| Error::fatal("a lag writer's insert failed").with_source(e))?;
        written += 1;
        n += writers;
    }
    Ok(written)
}

/// Writes one-row transactions at `--rate` and measures each event's lag to the sink's
/// ack and to a consumer's receipt. The writers and the consumer run on `helpers`, a
/// runtime of their own, so the pipeline's threads are the pipeline's alone, as in the
/// outflow binary.
async fn lag(mut args: LagArgs, helpers: tokio::runtime::Handle) -> Result<String, Error> {
    if args.rate == 0 || args.seconds == 0 {
        return Err(Error::fatal("--rate and --seconds must be at least 1"));
    }
    let total = args.rate * args.seconds;
    let sql = connect_sql(&args.pg.pg_url).await?;
    let source = postgres_source(&args.pg)?;
    args.sink.pin_name();
    let (sink, cleanup) = args.sink.build("order").await?;
    // Started after the sink made its stream or topics, before anything is published.
    let receipts = {
        let sink = args.sink.clone();
        helpers
            .spawn(async move { sink.receipts("order").await })
            .await
            .unwrap_or_else(|e| Err(Error::fatal("the consumer's start panicked").with_source(e)))
    };
    let receipts = match receipts {
        Ok(receipts) => receipts,
        Err(e) => {
            cleanup.run().await;
            return Err(e);
        }
    };
    let meter = Meter::new(sink, total, true);
    let runner = {
        let meter = meter.clone();
        tokio::spawn(async move {
            run_until_target(
                Box::new(source),
                meter,
                LAG_TAIL_TIMEOUT + Duration::from_secs(args.seconds),
            )
            .await
        })
    };
    let result = async {
        wait_slot_active(&sql, &args.pg.slot).await?;
        let began = tokio::time::Instant::now() + Duration::from_millis(100);
        let began_wall = Timestamp::now().unix_micros() + 100_000;
        let writers: Vec<_> = (0..LAG_WRITERS)
            .map(|i| {
                helpers.spawn(writer(
                    args.pg.pg_url.clone(),
                    args.pg.table.clone(),
                    i,
                    LAG_WRITERS,
                    total,
                    args.rate,
                    began,
                ))
            })
            .collect();
        let mut written = 0;
        for w in writers {
            written += w
                .await
                .map_err(|e| Error::fatal("a lag writer panicked").with_source(e))??;
        }
        let wrote_for = began.elapsed();
        runner
            .await
            .map_err(|e| Error::fatal("the pipeline task panicked").with_source(e))??;
        if let Some(receipts) = &receipts {
            let expected = usize::try_from(written).unwrap_or(usize::MAX);
            let received = receipts.wait_for(expected, RECEIPT_TIMEOUT).await;
            if received < expected {
                return Err(Error::fatal(format!(
                    "the consumer received {received} of the {written} messages the sink \
                     acknowledged within {RECEIPT_TIMEOUT:?} after the last ack"
                )));
            }
        }
        Ok::<_, Error>((written, wrote_for, began_wall))
    }
    .await;
    let peak = peak_rss_bytes();
    let mut receipts = receipts;
    if let Some(receipts) = &mut receipts {
        receipts.stop().await;
    }
    cleanup.run().await;
    let (written, wrote_for, began_wall) = result?;
    let counted_from = began_wall + (args.warmup_seconds as i64) * 1_000_000;
    let lags = meter.lags_after(counted_from);
    if lags.is_empty() {
        return Err(Error::fatal(
            "no event was committed after the warm-up; write for longer",
        ));
    }
    let (p50, p99, max) = quantiles(lags.clone());
    let mut out = json!({
        "bench": "lag",
        "sink": args.sink.kind.as_str(),
        "rate": args.rate,
        "achieved_rate": written as f64 / wrote_for.as_secs_f64(),
        "samples": lags.len(),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": max,
        "peak_rss_bytes": peak,
    });
    if let Some(receipts) = &receipts {
        let received = receipts.lags_after(counted_from)?;
        let samples = received.len();
        let (p50, p99, max) = quantiles(received);
        out["receipt_samples"] = json!(samples);
        out["receipt_p50_ms"] = json!(p50);
        out["receipt_p99_ms"] = json!(p99);
        out["receipt_max_ms"] = json!(max);
    }
    Ok(out.to_string())
}

/// The median, 99th percentile and maximum of `micros`, in milliseconds (nearest rank);
/// zeros for no samples.
fn quantiles(mut micros: Vec<i64>) -> (f64, f64, f64) {
    if micros.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    micros.sort_unstable();
    let pick = |q: f64| {
        let i = ((micros.len() as f64 - 1.0) * q).round() as usize;
        micros[i.min(micros.len() - 1)] as f64 / 1000.0
    };
    (pick(0.50), pick(0.99), pick(1.0))
}

impl SinkKind {
    fn as_str(self) -> &'static str {
        match self {
            SinkKind::Blackhole => "blackhole",
            SinkKind::Nats => "nats",
            SinkKind::NatsShared => "nats_shared",
            SinkKind::Kafka => "kafka",
        }
    }
}
