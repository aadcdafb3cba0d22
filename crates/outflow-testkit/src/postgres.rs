//! Postgres: a fresh database per test on the shared cluster, and private clusters for
//! fault tests.

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio_postgres::{Client, NoTls};

use crate::names::unique_name;
use crate::net::{free_port, wait_for_tcp};
use crate::process::{check_output, chown_to_postgres, log_tail, pg_command};
use crate::services::{self, services, Service, Services};

/// Marks databases made by [`fresh_database`] (in their comment), with the owner process,
/// so a later run can drop the ones whose owner died before its `Drop` ran.
const OWNER_TAG: &str = "outflow-testkit";

/// How often a database drop is tried: a walsender that was just terminated can hold its
/// slot for a moment, and `DROP DATABASE` fails while a slot of the database exists.
const DROP_ATTEMPTS: u32 = 40;

/// Pause between two drop attempts.
const DROP_RETRY: Duration = Duration::from_millis(250);

/// How long `pg_ctl` may take to start or stop a private cluster; initdb'd clusters start in
/// well under a second, crash recovery can take a few.
const PG_CTL_TIMEOUT_SECS: u32 = 60;

/// How often `CREATE DATABASE` is retried when template1 is briefly in use.
const CREATE_ATTEMPTS: u32 = 20;

/// A Postgres error with its server message and SQLSTATE, or its cause chain: the plain
/// `Display` of `tokio_postgres::Error` says only "db error".
fn describe(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Connect to `url` without TLS and drive the connection on a spawned task.
///
/// # Panics
///
/// When the connection fails; the message names the URL (test URLs carry no secrets).
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {}", describe(&e)));
    tokio::spawn(async move {
        // The error, if any, also reaches the client's next call, where the test sees it.
        let _ = connection.await;
    });
    client
}

/// A database of a test's own on the shared cluster. Dropping it drops the database,
/// after terminating walsenders on its replication slots and dropping those slots.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    host: String,
    port: u16,
    pg_bin: PathBuf,
}

impl TestDb {
    /// The database name (from [`unique_name`]).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Superuser URL of the database: `postgres://postgres@127.0.0.1:PORT/NAME`.
    pub fn url(&self) -> String {
        self.url_as("postgres")
    }

    /// URL of the database for another role, for example `outflow_norepl` (LOGIN, no
    /// REPLICATION, no superuser), which `services.sh` creates. Trust auth: no password.
    pub fn url_as(&self, user: &str) -> String {
        format!(
            "postgres://{user}@{}:{}/{}",
            self.host, self.port, self.name
        )
    }

    /// A superuser connection to the database.
    ///
    /// # Panics
    ///
    /// When the connection fails.
    pub async fn connect(&self) -> Client {
        connect(&self.url()).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Err(e) = drop_database_blocking(&self.pg_bin, &self.host, self.port, &self.name) {
            eprintln!(
                "outflow-testkit: could not drop test database {}: {e}",
                self.name
            );
        }
    }
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Drop a database and its replication slots with `psql`, retrying while a just-terminated
/// walsender still holds a slot. Blocking, so it can run in `Drop`.
fn drop_database_blocking(pg_bin: &Path, host: &str, port: u16, name: &str) -> Result<(), String> {
    let lit = quote_literal(name);
    let terminate = format!(
        "SELECT pg_terminate_backend(active_pid, 5000) FROM pg_replication_slots \
         WHERE database = {lit} AND active_pid IS NOT NULL"
    );
    let drop_slots = format!(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
         WHERE database = {lit} AND NOT active"
    );
    let drop_db = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(name));
    let conninfo = format!(
        "host={host} port={port} user=postgres dbname=postgres sslmode=disable connect_timeout=5"
    );
    let mut last = String::new();
    for attempt in 0..DROP_ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(DROP_RETRY);
        }
        let out = Command::new(pg_bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", &conninfo])
            .args(["-c", &terminate, "-c", &drop_slots, "-c", &drop_db])
            .output();
        match out {
            Ok(out) if out.status.success() => return Ok(()),
            Ok(out) => last = String::from_utf8_lossy(&out.stderr).trim().to_string(),
            Err(e) => return Err(format!("cannot run {}: {e}", pg_bin.join("psql").display())),
        }
    }
    Err(format!("gave up after {DROP_ATTEMPTS} attempts: {last}"))
}

/// Create a database of the test's own on the shared cluster, named
/// `unique_name(prefix)`. The cluster runs with `wal_level=logical`.
///
/// The first call in a process also drops databases that earlier test processes made and
/// could not drop because they were killed.
///
/// # Panics
///
/// When the services are not running (the message says to run `scripts/services.sh start`)
/// or the database cannot be created.
pub async fn fresh_database(prefix: &str) -> TestDb {
    let s = services();
    s.require(Service::Postgres);
    static SWEPT: OnceCell<()> = OnceCell::const_new();
    SWEPT.get_or_init(|| sweep_orphans(s)).await;

    let name = unique_name(prefix);
    let admin = connect(&s.pg_url).await;
    let create = format!("CREATE DATABASE {}", quote_ident(&name));
    let mut attempt = 0;
    loop {
        attempt += 1;
        match admin.batch_execute(&create).await {
            Ok(()) => break,
            // 55006 object_in_use: template1 is being accessed by another session.
            Err(e)
                if attempt < CREATE_ATTEMPTS
                    && e.code() == Some(&tokio_postgres::error::SqlState::OBJECT_IN_USE) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot create test database {name}: {}", describe(&e)),
        }
    }
    let db = TestDb {
        name,
        host: s.pg_host.clone(),
        port: s.pg_port,
        pg_bin: s.pg_bin.clone(),
    };
    if let Some(owner) = owner_tag() {
        let comment = format!(
            "COMMENT ON DATABASE {} IS {}",
            quote_ident(&db.name),
            quote_literal(&owner)
        );
        admin
            .batch_execute(&comment)
            .await
            .unwrap_or_else(|e| panic!("cannot tag test database {}: {}", db.name, describe(&e)));
    }
    db
}

/// `outflow-testkit pid=<pid> start=<start time in ticks> boot=<boot id>`: enough to tell
/// later whether this process is still alive, even after pid reuse or a reboot. `None` where
/// `/proc` cannot tell (the database is then never swept).
fn owner_tag() -> Option<String> {
    let pid = std::process::id();
    let start = process_start_ticks(pid)?;
    let boot = boot_id()?;
    Some(format!("{OWNER_TAG} pid={pid} start={start} boot={boot}"))
}

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

/// Field 22 of `/proc/<pid>/stat`, read after the command name, which may hold spaces.
fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the owner described by a tag is gone. Unknown formats count as alive.
fn owner_is_gone(tag: &str) -> bool {
    let Some(rest) = tag.strip_prefix(OWNER_TAG) else {
        return false;
    };
    let mut pid = None;
    let mut start = None;
    let mut boot = None;
    for part in rest.split_whitespace() {
        match part.split_once('=') {
            Some(("pid", v)) => pid = v.parse::<u32>().ok(),
            Some(("start", v)) => start = v.parse::<u64>().ok(),
            Some(("boot", v)) => boot = Some(v.to_string()),
            _ => {}
        }
    }
    let (Some(pid), Some(start), Some(boot)) = (pid, start, boot) else {
        return false;
    };
    let Some(current_boot) = boot_id() else {
        return false;
    };
    boot != current_boot || process_start_ticks(pid) != Some(start)
}

/// Drop the databases whose owning test process died without dropping them.
async fn sweep_orphans(s: &Services) {
    let admin = connect(&s.pg_url).await;
    let rows = match admin
        .query(
            "SELECT datname, shobj_description(oid, 'pg_database') FROM pg_database \
             WHERE shobj_description(oid, 'pg_database') LIKE $1",
            &[&format!("{OWNER_TAG} %")],
        )
        .await
    {
        Ok(rows) => rows,
        Err(e) => {
            eprintln!(
                "outflow-testkit: cannot list leftover test databases: {}",
                describe(&e)
            );
            return;
        }
    };
    let orphans: Vec<String> = rows
        .iter()
        .filter(|row| {
            row.get::<_, Option<String>>(1)
                .is_some_and(|tag| owner_is_gone(&tag))
        })
        .map(|row| row.get::<_, String>(0))
        .collect();
    if orphans.is_empty() {
        return;
    }
    let (pg_bin, host, port) = (s.pg_bin.clone(), s.pg_host.clone(), s.pg_port);
    let joined = tokio::task::spawn_blocking(move || {
        for name in orphans {
            if let Err(e) = drop_database_blocking(&pg_bin, &host, port, &name) {
                eprintln!("outflow-testkit: cannot drop leftover test database {name}: {e}");
            }
        }
    })
    .await;
    if let Err(e) = joined {
        eprintln!("outflow-testkit: dropping leftover test databases failed: {e}");
    }
}

/// Run a blocking command off the async runtime's threads.
async fn run(what: String, mut cmd: Command) -> io::Result<()> {
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| io::Error::other(format!("{what}: task failed: {e}")))??;
    check_output(&what, &out)
}

/// A Postgres cluster of a test's own (initdb in a temporary folder, `wal_level=logical`,
/// trust auth, 127.0.0.1 on a free port), for fault tests that stop, crash and restart the
/// server. It keeps its data folder and port across [`stop`](Self::stop) and
/// [`start_again`](Self::start_again). Dropping it stops the server (immediate mode) and
/// removes the folder.
///
/// Under root, `initdb` and `pg_ctl` run as the `postgres` user.
#[derive(Debug)]
pub struct PrivatePostgres {
    // Declared first so it is dropped last, after `Drop::drop` stopped the server.
    dir: tempfile::TempDir,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    pg_bin: PathBuf,
    running: bool,
}

impl PrivatePostgres {
    /// Create and start a private cluster. The binaries come from `$OUTFLOW_PG_BIN`, else
    /// `services.env`, else `/usr/lib/postgresql/15/bin`; the shared services need not run.
    ///
    /// # Panics
    ///
    /// When the binaries are missing or the cluster cannot be created or started; the
    /// message carries the server log's tail.
    pub async fn start() -> PrivatePostgres {
        let pg_bin = services::pg_bin();
        if !pg_bin.join("initdb").is_file() {
            panic!(
                "Postgres 15 server binaries not found in {}: install them (`apt-get install \
                 postgresql-15`) or set OUTFLOW_PG_BIN",
                pg_bin.display()
            );
        }
        // /tmp rather than $TMPDIR: under root the postgres user must reach the folder.
        let base = if crate::process::is_root() {
            PathBuf::from("/tmp")
        } else {
            std::env::temp_dir()
        };
        let dir = tempfile::Builder::new()
            .prefix("outflow-private-pg-")
            .tempdir_in(&base)
            .unwrap_or_else(|e| panic!("cannot make a folder in {}: {e}", base.display()));
        let data = dir.path().join("data");
        let log = dir.path().join("postgres.log");
        let port = free_port();
        let mut pg = PrivatePostgres {
            dir,
            data,
            log,
            port,
            pg_bin,
            running: false,
        };

        chown_to_postgres(pg.dir.path())
            .unwrap_or_else(|e| panic!("cannot hand {} to postgres: {e}", pg.dir.path().display()));
        let mut initdb = pg_command(&pg.pg_bin.join("initdb"));
        initdb.arg("-D").arg(&pg.data).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
        ]);
        run("initdb".into(), initdb)
            .await
            .unwrap_or_else(|e| panic!("{e}"));

        let mut conf = String::new();
        let _ = writeln!(conf, "listen_addresses = '127.0.0.1'");
        let _ = writeln!(conf, "port = {}", pg.port);
        let _ = writeln!(conf, "unix_socket_directories = '{}'", pg.data.display());
        let _ = writeln!(conf, "wal_level = logical");
        let _ = writeln!(conf, "max_replication_slots = 20");
        let _ = writeln!(conf, "max_wal_senders = 20");
        let _ = writeln!(conf, "max_connections = 50");
        let hba = "local all all trust\nhost all all 127.0.0.1/32 trust\n\
                   host replication all 127.0.0.1/32 trust\n";
        let write = |name: &str, text: &str, append: bool| -> io::Result<()> {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(append)
                .write(true)
                .truncate(!append)
                .open(pg.data.join(name))?;
            f.write_all(text.as_bytes())
        };
        write("postgresql.conf", &conf, true)
            .and_then(|()| write("pg_hba.conf", hba, false))
            .and_then(|()| chown_to_postgres(&pg.data))
            .unwrap_or_else(|e| panic!("cannot configure {}: {e}", pg.data.display()));

        pg.start_again().await;
        pg
    }

    /// The port, the same for the cluster's whole life.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Superuser URL of database `db`: `postgres://postgres@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The data folder.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// The server log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether the server was started and not stopped since.
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// Create a database named `unique_name(prefix)` and return its name.
    ///
    /// # Panics
    ///
    /// When the server is down or the statement fails.
    pub async fn create_database(&self, prefix: &str) -> String {
        let name = unique_name(prefix);
        connect(&self.url("postgres"))
            .await
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&name)))
            .await
            .unwrap_or_else(|e| panic!("cannot create database {name}: {}", describe(&e)));
        name
    }

    async fn pg_ctl(&mut self, args: &[&str]) {
        let mut cmd = pg_command(&self.pg_bin.join("pg_ctl"));
        cmd.arg("-D").arg(&self.data).arg("-l").arg(&self.log);
        cmd.args(["-w", "-t", &PG_CTL_TIMEOUT_SECS.to_string()])
            .args(args);
        if let Err(e) = run(format!("pg_ctl {}", args.join(" ")), cmd).await {
            panic!("{e}\n{}", log_tail(&self.log, 30));
        }
    }

    /// Start the server again after [`stop`](Self::stop) or [`crash`](Self::crash): same
    /// data, same port. Returns when it accepts connections.
    ///
    /// # Panics
    ///
    /// When it does not start (for example because another process took the port).
    pub async fn start_again(&mut self) {
        self.pg_ctl(&["start"]).await;
        self.running = true;
        let addr = format!("127.0.0.1:{}", self.port);
        if let Err(e) = wait_for_tcp(&addr, Duration::from_secs(30)).await {
            panic!(
                "private postgres does not answer: {e}\n{}",
                log_tail(&self.log, 30)
            );
        }
    }

    /// Stop the server cleanly (`pg_ctl stop -m fast`: connections are cut, a checkpoint is
    /// written).
    ///
    /// # Panics
    ///
    /// When `pg_ctl` fails.
    pub async fn stop(&mut self) {
        self.pg_ctl(&["-m", "fast", "stop"]).await;
        self.running = false;
    }

    /// Stop the server like a crash (`pg_ctl stop -m immediate`: no checkpoint; the next
    /// start runs crash recovery).
    ///
    /// # Panics
    ///
    /// When `pg_ctl` fails.
    pub async fn crash(&mut self) {
        self.pg_ctl(&["-m", "immediate", "stop"]).await;
        self.running = false;
    }

    /// [`stop`](Self::stop), then [`start_again`](Self::start_again).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_again().await;
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if !self.running && !self.data.join("postmaster.pid").exists() {
            return;
        }
        let out = pg_command(&self.pg_bin.join("pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
        match out {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "outflow-testkit: cannot stop private postgres in {}: {}",
                self.data.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("outflow-testkit: cannot run pg_ctl: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn own_process_is_alive_and_a_dead_one_is_gone() {
        let tag = owner_tag().expect("linux /proc");
        assert!(!owner_is_gone(&tag), "{tag}");
        let stale = tag.replace("start=", "start=9");
        assert!(owner_is_gone(&stale), "{stale}");
        let rebooted = format!("{} boot=another-boot", tag.split(" boot=").next().unwrap());
        assert!(owner_is_gone(&rebooted));
        assert!(!owner_is_gone("something else"));
        assert!(!owner_is_gone("outflow-testkit pid=1"));
    }
}
