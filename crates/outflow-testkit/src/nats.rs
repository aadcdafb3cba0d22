//! A private NATS server with JetStream, for tests that stop it or change its limits.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::net::{free_port, wait_for_tcp};
use crate::process::{log_tail, signal, ChildGuard};
use crate::services;

/// How long a stopped server may take to exit after SIGTERM before it is killed; nats-server
/// flushes JetStream and exits in well under a second.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How long a starting server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A `nats-server` with JetStream of a test's own: 127.0.0.1, a free port, its own store
/// folder. [`stop`](Self::stop) and [`start_again`](Self::start_again) keep the port and the
/// store, so streams and their messages survive. Dropping it kills the server and removes
/// the folder.
#[derive(Debug)]
pub struct PrivateNats {
    // Dropped after `child`, which kills the server first.
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
    max_payload: Option<u64>,
}

impl PrivateNats {
    /// Start a server with the default limits (max_payload 1 MiB). The binary comes from
    /// `$OUTFLOW_NATS_SERVER`, else `services.env`, else `nats-server` on `PATH`, else
    /// `/usr/sbin/nats-server`.
    ///
    /// # Panics
    ///
    /// When the server does not start; the message carries its log's tail.
    pub async fn start() -> PrivateNats {
        Self::launch(None).await
    }

    /// Start a server whose `max_payload` is `bytes` (set in a config file), for tests that
    /// publish more than a server accepts.
    ///
    /// # Panics
    ///
    /// When the server does not start.
    pub async fn start_with_max_payload(bytes: u64) -> PrivateNats {
        Self::launch(Some(bytes)).await
    }

    async fn launch(max_payload: Option<u64>) -> PrivateNats {
        let bin = services::nats_server_bin();
        if !bin.is_file() {
            panic!(
                "nats-server not found at {}: install it (`apt-get install nats-server`) or set \
                 OUTFLOW_NATS_SERVER",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("outflow-private-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temporary folder: {e}"));
        if let Some(bytes) = max_payload {
            std::fs::write(
                dir.path().join("nats.conf"),
                format!("max_payload: {bytes}\n"),
            )
            .unwrap_or_else(|e| panic!("cannot write nats.conf: {e}"));
        }
        let mut nats = PrivateNats {
            child: None,
            dir,
            port: free_port(),
            bin,
            max_payload,
        };
        nats.start_again().await;
        nats
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port, the same for the server's whole life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The JetStream store folder.
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    /// The configured `max_payload`, when one was set.
    pub fn max_payload(&self) -> Option<u64> {
        self.max_payload
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Start the server (again, after [`stop`](Self::stop) or [`kill`](Self::kill)) on the
    /// same port with the same store. Returns when it accepts connections.
    ///
    /// # Panics
    ///
    /// When it is already running or does not start (for example because another process
    /// took the port).
    pub async fn start_again(&mut self) {
        assert!(
            !self.is_running(),
            "private nats on port {} is already running",
            self.port
        );
        let log = self.log_path();
        let mut cmd = Command::new(&self.bin);
        if self.max_payload.is_some() {
            cmd.arg("-c").arg(self.dir.path().join("nats.conf"));
        }
        cmd.args([
            "-a",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-js",
            "-sd",
        ])
        .arg(self.store_dir())
        .arg("-l")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.bin.display()));
        self.child = Some(child);
        let addr = format!("127.0.0.1:{}", self.port);
        if let Err(e) = wait_for_tcp(&addr, START_TIMEOUT).await {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            panic!(
                "private nats-server does not answer ({e}; exit status {exited:?})\n{}",
                log_tail(&log, 30)
            );
        }
    }

    /// Stop the server gracefully (SIGTERM, then SIGKILL after 10 s) and wait until it is
    /// gone. The store stays.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            signal(child.id(), "TERM").unwrap_or_else(|e| panic!("cannot stop nats-server: {e}"));
            match child.wait_timeout(STOP_GRACE).await {
                Ok(Some(_)) => {}
                _ => {
                    let _ = child.kill();
                }
            }
        }
    }

    /// Kill the server with SIGKILL, like a crash, and wait until it is gone. The store
    /// stays.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
        }
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }

    /// The folder that holds the store, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Subscribes `client` to `subject` and returns once the server has registered the
/// subscription, so that a message another connection publishes from then on reaches
/// it. `Client::flush` only writes the SUB to the socket; this publishes `probe` (a
/// subject that `subject` matches) on the same connection and waits for it: the server
/// handles one connection's commands in order, so the probe's arrival proves the SUB was
/// handled. Messages before the probe (other publishers' on a shared server) and the
/// probe itself are consumed here.
///
/// # Panics
///
/// When the subscription fails or the probe does not arrive within 10 seconds.
pub async fn subscribe_ready(
    client: &async_nats::Client,
    subject: String,
    probe: String,
) -> async_nats::Subscriber {
    use futures::StreamExt;
    let mut sub = client
        .subscribe(subject.clone())
        .await
        .unwrap_or_else(|e| panic!("subscribing to {subject:?}: {e}"));
    client
        .publish(probe.clone(), "probe".into())
        .await
        .unwrap_or_else(|e| panic!("publishing the probe {probe:?}: {e}"));
    let arrived = async {
        while let Some(msg) = sub.next().await {
            if msg.subject.as_str() == probe {
                return;
            }
        }
        panic!("the subscription to {subject:?} closed");
    };
    tokio::time::timeout(Duration::from_secs(10), arrived)
        .await
        .unwrap_or_else(|_| panic!("the probe {probe:?} did not arrive on {subject:?}"));
    sub
}
