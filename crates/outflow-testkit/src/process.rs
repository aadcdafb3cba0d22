//! Child processes: a guard that kills on drop, and running server tools as the right user.

use std::ffi::OsStr;
use std::io;
use std::ops::{Deref, DerefMut};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How often [`ChildGuard::wait_timeout`] looks whether the child has exited.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// A child process that is killed (SIGKILL) and reaped when the guard is dropped, so a
/// failing test leaves no server or `outflow` binary behind.
///
/// It dereferences to [`std::process::Child`] for `stdin`, `stdout`, `try_wait` and the
/// like.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    /// Guard a child that is already running.
    pub fn new(child: Child) -> Self {
        ChildGuard { child }
    }

    /// Spawn `command` and guard the child.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        command.spawn().map(ChildGuard::new)
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM (a graceful stop request) without waiting.
    pub fn terminate(&mut self) -> io::Result<()> {
        signal(self.child.id(), "TERM")
    }

    /// Send SIGKILL and reap the child. Killing a child that already exited is not an error.
    pub fn kill(&mut self) -> io::Result<ExitStatus> {
        match self.child.kill() {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidInput => {}
            Err(e) => return Err(e),
        }
        self.child.wait()
    }

    /// Wait up to `timeout` for the child to exit; `None` when it is still running.
    pub async fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(EXIT_POLL).await;
        }
    }

    /// [`ChildGuard::wait_timeout`] for code outside an async runtime.
    pub fn wait_timeout_blocking(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(EXIT_POLL);
        }
    }
}

impl Deref for ChildGuard {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.child
    }
}

impl DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Send a signal by name (`TERM`, `KILL`, `STOP`, ...) with the `kill` program; the workspace
/// forbids the unsafe libc call.
pub(crate) fn signal(pid: u32, name: &str) -> io::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "kill -{name} {pid} failed: {status}"
        )))
    }
}

/// Whether this process runs as root: the owner of a file it creates is its effective uid.
pub(crate) fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| match tempfile::tempfile().and_then(|f| f.metadata()) {
        Ok(meta) => meta.uid() == 0,
        Err(_) => false,
    })
}

/// A command for a Postgres server tool. `initdb` and `postgres` refuse to run as root, so
/// under root it runs as the `postgres` user through `runuser`.
pub(crate) fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args([OsStr::new("-u"), OsStr::new("postgres"), OsStr::new("--")])
            .arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Give `path` to the `postgres` user when running as root, so server tools can write it.
pub(crate) fn chown_to_postgres(path: &Path) -> io::Result<()> {
    if !is_root() {
        return Ok(());
    }
    let out = Command::new("chown")
        .arg("-R")
        .arg("postgres:postgres")
        .arg(path)
        .output()?;
    check_output("chown postgres", &out)
}

/// Turn a failed command's output into an error that carries its stderr and stdout.
pub(crate) fn check_output(what: &str, out: &Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    )))
}

/// The last `lines` lines of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "last lines of {}:\n{}",
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}
