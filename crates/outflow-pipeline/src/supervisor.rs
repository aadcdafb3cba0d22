//! Running several pipelines in one process, and stopping them on a signal.

use outflow_core::{Error, Result};
use tokio::sync::watch;
use tracing::{error, info};

use crate::runner::{Pipeline, RunReport};

/// Runs every pipeline until all stop. When one fails, the others are asked to stop and
/// drain; the first failure is returned with its pipeline's name once all have stopped.
pub async fn run_pipelines(
    pipelines: Vec<Pipeline>,
    mut stop: watch::Receiver<bool>,
) -> Result<Vec<(String, RunReport)>, (String, Error)> {
    let (inner_tx, inner_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for pipeline in pipelines {
        let name = pipeline.name().to_string();
        let rx = inner_rx.clone();
        tasks.spawn(async move { (name, pipeline.run(rx).await) });
    }
    let mut reports = Vec::new();
    let mut failure: Option<(String, Error)> = None;
    loop {
        tokio::select! {
            joined = tasks.join_next() => {
                let Some(joined) = joined else { break };
                let (name, result) = joined.unwrap_or_else(|e| {
                    ("?".to_string(), Err(Error::fatal("pipeline task panicked").with_source(e)))
                });
                match result {
                    Ok(report) => reports.push((name, report)),
                    Err(e) => {
                        error!(pipeline = %name, error = %e.chain(), "pipeline failed; stopping the others");
                        let _ = inner_tx.send(true);
                        failure.get_or_insert((name, e));
                    }
                }
            }
            changed = stop.changed(), if !*inner_tx.borrow() => {
                if changed.is_err() || *stop.borrow() {
                    info!("stopping all pipelines");
                    let _ = inner_tx.send(true);
                }
            }
        }
    }
    match failure {
        Some(f) => Err(f),
        None => Ok(reports),
    }
}

/// A channel that turns `true` on SIGINT or SIGTERM.
pub fn stop_on_signals() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => info!(signal = "SIGINT", "signal received"),
            _ = term.recv() => info!(signal = "SIGTERM", "signal received"),
        }
        let _ = tx.send(true);
    });
    rx
}
