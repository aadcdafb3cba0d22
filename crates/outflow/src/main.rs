//! The `outflow` binary: config-driven pipelines (`outflow run FILE`) and one-pipeline
//! commands that need no file (`outflow generate --to nats://…`).

mod admin;
mod config;
mod registry;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use clap::{Args, Parser, Subcommand, ValueEnum};
use outflow_core::Error;
use outflow_pipeline::{
    CheckpointStore, FileStore, OnError, Pipeline, PipelineSettings, PostgresStore,
};
use tracing::{error, info};

use crate::config::{Config, MetricsConfig, PipelineConfig, StateConfig};
use crate::registry::{SinkSpec, SourceSpec};

/// The allocator: see docs/benchmarks.md for what it saves.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often histogram samples are folded when no one scrapes `/metrics`.
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);
/// Exit code for a runtime failure.
const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage or configuration.
const EXIT_USAGE: u8 = 2;
/// How long the exit waits for blocking work still running once every pipeline has stopped
/// and committed: what it would still finish is redelivered after a restart anyway.
const RUNTIME_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Change data capture for the transactional outbox.
#[derive(Debug, Parser)]
#[command(name = "outflow", version, about, max_term_width = 100)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, e.g. `info` or `outflow=debug,info` (also read from RUST_LOG).
    #[arg(long, global = true, env = "RUST_LOG", default_value = "info")]
    log_level: String,
    /// Threads that run the pipelines (also read from OUTFLOW_WORKER_THREADS, then
    /// TOKIO_WORKER_THREADS); default one per pipeline, at most one per CPU.
    #[arg(
        long,
        global = true,
        env = "OUTFLOW_WORKER_THREADS",
        value_parser = clap::value_parser!(u16).range(1..)
    )]
    worker_threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run every pipeline in a configuration file.
    Run {
        /// The configuration file.
        file: PathBuf,
    },
    /// Check a configuration file without connecting; exit 0, or print errors and exit 2.
    Validate {
        /// The configuration file.
        file: PathBuf,
    },
    /// Connect to every source and sink and verify their prerequisites.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
    /// Generate synthetic outbox events (for trying sinks and for benchmarks).
    Generate {
        /// Events to generate in all; unlimited when absent.
        #[arg(long)]
        count: Option<u64>,
        /// Events per second; as fast as possible when absent.
        #[arg(long)]
        rate: Option<f64>,
        /// Distinct aggregate ids.
        #[arg(long, default_value_t = outflow_pipeline::generate::DEFAULT_KEYS)]
        keys: u64,
        /// Bytes of filler in each payload.
        #[arg(long, default_value_t = 0)]
        payload_bytes: usize,
        #[command(flatten)]
        common: OnePipeline,
    },
    /// Stream a Postgres database's outbox or tables (logical replication).
    #[cfg(feature = "postgres")]
    Postgres {
        /// Connection URL, e.g. postgres://user@host:5432/db?sslmode=require.
        #[arg(long, env = "OUTFLOW_POSTGRES_URL")]
        url: String,
        /// Replication slot (created when missing).
        #[arg(long)]
        slot: Option<String>,
        /// Publication (created when missing).
        #[arg(long)]
        publication: Option<String>,
        /// Captured table, schema-qualified; repeat for several.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// outbox, table or message.
        #[arg(long)]
        mode: Option<String>,
        #[command(flatten)]
        common: OnePipeline,
    },
}

/// Flags shared by the one-pipeline commands.
#[derive(Debug, Args)]
struct OnePipeline {
    /// Destination: stdout, file:PATH, blackhole, nats://HOST:PORT, kafka://BROKER,…
    #[arg(long, default_value = "stdout")]
    to: String,
    /// Wire format: envelope, payload, cloudevents or cloudevents-binary.
    #[arg(long)]
    format: Option<String>,
    /// NATS subject or Kafka topic template, e.g. outbox.event.{aggregate_type}.
    #[arg(long)]
    destination: Option<String>,
    /// Pipeline name (names checkpoints, dead-letter destinations, derived ids).
    #[arg(long)]
    pipeline: Option<String>,
    /// Directory of the file checkpoint store.
    #[arg(long, default_value = config::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// What to do with an event that can never be delivered.
    #[arg(long, value_enum, default_value_t = OnErrorArg::Fail)]
    on_error: OnErrorArg,
    /// Serve /metrics, /healthz and /readyz on this address.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnErrorArg {
    Fail,
    DeadLetter,
    Skip,
}

fn main() -> ExitCode {
    outflow_pipeline::memory::disable_transparent_huge_pages();
    let cli = Cli::parse();
    init_logging(cli.log_format, &cli.log_level);
    // `run` reads its file before the runtime exists: the threads follow the pipelines.
    let loaded = match &cli.command {
        Command::Run { file } => match config::load(file) {
            Ok(config) => Some(config),
            Err(errors) => {
                eprintln!("{errors}");
                return ExitCode::from(EXIT_USAGE);
            }
        },
        _ => None,
    };
    let pipelines = loaded.as_ref().map_or(1, |config| config.pipelines.len());
    let threads = match outflow_pipeline::worker_threads(cli.worker_threads, pipelines) {
        Ok(threads) => threads,
        Err(e) => {
            eprintln!("outflow: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outflow: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    tracing::debug!(worker_threads = threads, "runtime started");
    let code = runtime.block_on(dispatch(cli.command, loaded));
    // Blocking work can outlive the pipelines (a Kafka flush abandoned at the shutdown
    // timeout); dropping the runtime would wait for it.
    runtime.shutdown_timeout(RUNTIME_EXIT_GRACE);
    code
}

/// async-nats warns once per publish still awaiting its ack when a failed batch drops
/// them ("failed to pass future permit to the acker"): hundreds of lines that bury the
/// error that matters, which the pipeline logs itself. Silenced unless the filter names
/// async_nats.
const QUIET_NATS_ACKER: &str = "async_nats::jetstream::context=error";

fn init_logging(format: LogFormat, filter: &str) {
    let filter = if filter.contains("async_nats") {
        filter.to_string()
    } else {
        format!("{filter},{QUIET_NATS_ACKER}")
    };
    let filter = tracing_subscriber::EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("info,{QUIET_NATS_ACKER}")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs a command; `loaded` is the configuration of a `run`, read before the runtime.
async fn dispatch(command: Command, loaded: Option<config::Config>) -> ExitCode {
    match command {
        Command::Validate { file } => match config::load(&file) {
            Ok(config) => {
                println!(
                    "{}: ok ({} pipeline{})",
                    file.display(),
                    config.pipelines.len(),
                    if config.pipelines.len() == 1 { "" } else { "s" }
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Check { file } => match config::load(&file) {
            Ok(config) => check(config).await,
            Err(errors) => {
                eprintln!("{errors}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        Command::Run { file } => match loaded {
            Some(config) => run(config).await,
            None => unreachable!("main reads {} before the runtime starts", file.display()),
        },
        Command::Generate {
            count,
            rate,
            keys,
            payload_bytes,
            common,
        } => {
            let mut entries = vec![("keys", toml::Value::Integer(keys as i64))];
            if let Some(count) = count {
                entries.push(("count", toml::Value::Integer(count as i64)));
            }
            if let Some(rate) = rate {
                entries.push(("rate", toml::Value::Float(rate)));
            }
            entries.push(("payload_bytes", toml::Value::Integer(payload_bytes as i64)));
            one_pipeline("generate", config::table(entries), common).await
        }
        #[cfg(feature = "postgres")]
        Command::Postgres {
            url,
            slot,
            publication,
            tables,
            mode,
            common,
        } => {
            let s = |v: String| toml::Value::String(v);
            let mut entries = vec![("url", s(url))];
            if let Some(slot) = slot {
                entries.push(("slot", s(slot)));
            }
            if let Some(publication) = publication {
                entries.push(("publication", s(publication)));
            }
            if !tables.is_empty() {
                entries.push((
                    "tables",
                    toml::Value::Array(tables.into_iter().map(s).collect()),
                ));
            }
            if let Some(mode) = mode {
                entries.push(("mode", s(mode)));
            }
            one_pipeline("postgres", config::table(entries), common).await
        }
    }
}

/// Builds a one-pipeline configuration from flags and runs it.
async fn one_pipeline(kind: &str, source: toml::Value, flags: OnePipeline) -> ExitCode {
    let usage = |message: String| {
        eprintln!("outflow: {message}");
        ExitCode::from(EXIT_USAGE)
    };
    let source = match SourceSpec::parse(kind, source) {
        Ok(source) => source,
        Err(config::TypedError::UnknownType(message)) => return usage(message),
        Err(config::TypedError::Invalid { path, message }) if path.is_empty() => {
            return usage(message)
        }
        Err(config::TypedError::Invalid { path, message }) => {
            return usage(format!("--{}: {message}", path.join(".").replace('_', "-")))
        }
    };
    let mut extra = Vec::new();
    if let Some(format) = flags.format {
        extra.push(("format", toml::Value::String(format)));
    }
    if let Some(destination) = flags.destination {
        let key = if flags.to.starts_with("kafka://") {
            "topic"
        } else {
            "subject"
        };
        extra.push((key, toml::Value::String(destination)));
    }
    let sink = match SinkSpec::from_url(&flags.to, extra) {
        Ok(sink) => sink,
        Err(message) => return usage(message),
    };
    let settings = PipelineSettings {
        on_error: match flags.on_error {
            OnErrorArg::Fail => OnError::Fail,
            OnErrorArg::DeadLetter => OnError::DeadLetter,
            OnErrorArg::Skip => OnError::Skip,
        },
        ..PipelineSettings::default()
    };
    let config = Config {
        state: StateConfig::File {
            dir: flags.state_dir,
        },
        metrics: flags.metrics_listen.map(|listen| MetricsConfig { listen }),
        pipelines: vec![PipelineConfig {
            name: flags.pipeline.unwrap_or_else(|| kind.to_string()),
            settings,
            source,
            sink,
        }],
    };
    run(config).await
}

async fn check(config: Config) -> ExitCode {
    let mut failed = false;
    for pipeline in &config.pipelines {
        for (role, result) in [
            (pipeline.source.kind(), pipeline.source.check().await),
            (pipeline.sink.kind(), pipeline.sink.check().await),
        ] {
            match result {
                Ok(lines) => {
                    for line in lines {
                        println!("ok    {} {role}: {line}", pipeline.name);
                    }
                }
                Err(e) => {
                    failed = true;
                    println!("FAIL  {} {role}: {}", pipeline.name, e.chain());
                }
            }
        }
    }
    if failed {
        ExitCode::from(EXIT_FAILURE)
    } else {
        ExitCode::SUCCESS
    }
}

async fn run(config: Config) -> ExitCode {
    let stop = outflow_pipeline::stop_on_signals();
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(metrics) = &config.metrics {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            error!("a metrics recorder was already installed");
        }
        // Histogram samples pile up in memory until drained; a scrape drains them, and
        // so does this upkeep, so memory stays bounded when nobody scrapes.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(METRICS_UPKEEP);
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = admin::serve(metrics.listen, handle, ready.clone()).await {
            eprintln!(
                "outflow: cannot listen on {} for metrics: {e}",
                metrics.listen
            );
            return ExitCode::from(EXIT_USAGE);
        }
    }
    let store: Arc<dyn CheckpointStore> = match &config.state {
        StateConfig::File { dir } => Arc::new(FileStore::new(dir.clone())),
        StateConfig::Postgres { url, table } => Arc::new(PostgresStore::new(url, table)),
    };
    let mut pipelines = Vec::new();
    for p in config.pipelines {
        let sink = match p.sink.connect(&p.name, &stop).await {
            Ok(Some(sink)) => sink,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => return failure(&p.name, &e),
        };
        let source_kind = p.source.kind();
        let source = match p.source.build(&p.name) {
            Ok(source) => source,
            Err(e) => return failure(&p.name, &e),
        };
        info!(pipeline = %p.name, source = source_kind, sink = p.sink.kind(), "pipeline starting");
        pipelines.push(Pipeline::new(
            p.name,
            p.settings,
            source,
            sink,
            store.clone(),
        ));
    }
    // Ready once every pipeline's source captures changes (a Postgres slot streams).
    let mut watchers: Vec<_> = pipelines.iter().map(Pipeline::ready).collect();
    tokio::spawn(async move {
        for watcher in &mut watchers {
            if watcher.wait_for(|r| *r).await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::Relaxed);
        info!("all pipelines capture changes; ready");
    });
    match outflow_pipeline::run_pipelines(pipelines, stop).await {
        Ok(_) => ExitCode::SUCCESS,
        Err((name, e)) => failure(&name, &e),
    }
}

fn failure(pipeline: &str, e: &Error) -> ExitCode {
    error!(pipeline = %pipeline, kind = %e.kind(), error = %e.chain(), "stopped");
    eprintln!("outflow: pipeline {pipeline}: {}", e.chain());
    ExitCode::from(EXIT_FAILURE)
}
