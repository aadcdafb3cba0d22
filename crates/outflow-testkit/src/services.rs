//! The shared test services and the `services.env` file that describes them.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

/// What every "services are not running" panic starts with.
const ADVICE: &str = "test services are not running: run `scripts/services.sh start`";

/// How long a liveness check waits for a TCP connect; the services run on loopback, so a
/// healthy one answers in microseconds.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Where `services.sh` keeps its state, relative to the workspace root.
const DEFAULT_ENV_RELATIVE: &str = ".state/services/services.env";

/// The local test services, as `scripts/services.sh start` wrote them to `services.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Services {
    /// The file these values were read from.
    pub env_file: PathBuf,
    /// Superuser URL of the shared Postgres 15 cluster (`wal_level=logical`, trust auth,
    /// TLS available), database `postgres`: `OUTFLOW_TEST_PG_URL`.
    pub pg_url: String,
    /// Host of the shared cluster: `OUTFLOW_TEST_PG_HOST`.
    pub pg_host: String,
    /// Port of the shared cluster: `OUTFLOW_TEST_PG_PORT`.
    pub pg_port: u16,
    /// CA certificate that signed the cluster's server certificate (CN=localhost, SANs
    /// `localhost` and `127.0.0.1`), for `sslmode=verify-ca`/`verify-full`:
    /// `OUTFLOW_TEST_PG_CA`.
    pub pg_ca: PathBuf,
    /// Folder of the Postgres 15 binaries (`psql`, `initdb`, `pg_ctl`, `pg_recvlogical`):
    /// `OUTFLOW_PG_BIN`.
    pub pg_bin: PathBuf,
    /// URL of the shared NATS server with JetStream: `OUTFLOW_TEST_NATS_URL`.
    pub nats_url: String,
    /// The `nats-server` binary, for private servers: `OUTFLOW_NATS_SERVER`.
    pub nats_server: PathBuf,
    /// Endpoint of moto's server, for DynamoDB and DynamoDB Streams clients (any region, any
    /// credentials): `OUTFLOW_TEST_DYNAMODB_ENDPOINT`.
    pub dynamodb_endpoint: String,
    /// The `moto_server` program: `OUTFLOW_MOTO_SERVER`.
    pub moto_server: PathBuf,
    /// Bootstrap address of tansu, the Kafka-protocol broker (memory storage, one broker):
    /// `OUTFLOW_TEST_KAFKA_BROKERS`.
    pub kafka_brokers: String,
    /// The `tansu` binary: `OUTFLOW_TANSU`.
    pub tansu: PathBuf,
}

/// One of the shared services, for [`Services::require`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The Postgres cluster.
    Postgres,
    /// The NATS server.
    Nats,
    /// moto's server (DynamoDB Streams).
    DynamoDb,
    /// The Kafka-protocol broker.
    Kafka,
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Service::Postgres => "postgres",
            Service::Nats => "nats",
            Service::DynamoDb => "moto (dynamodb)",
            Service::Kafka => "kafka broker (tansu)",
        })
    }
}

/// Why `services.env` could not be used. Its `Display` carries the advice to start the
/// services.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServicesError {
    /// The file does not exist or cannot be read.
    MissingFile {
        /// The path that was tried.
        path: PathBuf,
        /// What reading it said.
        reason: String,
    },
    /// The file lacks an entry.
    MissingEntry {
        /// The file.
        path: PathBuf,
        /// The variable that is missing.
        key: &'static str,
    },
    /// An entry cannot be used.
    BadEntry {
        /// The file.
        path: PathBuf,
        /// The variable.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A service does not accept TCP connections.
    NotAnswering {
        /// The file the address came from.
        path: PathBuf,
        /// The service.
        service: Service,
        /// Its address.
        addr: String,
        /// The connect error.
        reason: String,
    },
}

impl fmt::Display for ServicesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServicesError::MissingFile { path, reason } => {
                write!(f, "{ADVICE} (missing {}: {reason})", path.display())
            }
            ServicesError::MissingEntry { path, key } => {
                write!(f, "{ADVICE} (missing {key} in {})", path.display())
            }
            ServicesError::BadEntry { path, key, reason } => {
                write!(
                    f,
                    "{ADVICE} ({key} in {} is unusable: {reason})",
                    path.display()
                )
            }
            ServicesError::NotAnswering {
                path,
                service,
                addr,
                reason,
            } => write!(
                f,
                "{ADVICE} ({service} at {addr}, from {}, does not answer: {reason})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ServicesError {}

/// The path of `services.env`: `$OUTFLOW_SERVICES_ENV` when set, else
/// `$OUTFLOW_SERVICES_DIR/services.env` when set, else
/// `<workspace root>/.state/services/services.env`.
pub fn services_env_path() -> PathBuf {
    if let Some(path) = non_empty_env("OUTFLOW_SERVICES_ENV") {
        return PathBuf::from(path);
    }
    if let Some(dir) = non_empty_env("OUTFLOW_SERVICES_DIR") {
        return Path::new(&dir).join("services.env");
    }
    workspace_root().join(DEFAULT_ENV_RELATIVE)
}

fn non_empty_env(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// The workspace root: the nearest folder above this crate whose Cargo.toml has a
/// `[workspace]` table. This crate's own manifest folder is used (not the caller's), so the
/// answer is the same whichever crate's tests run.
fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in here.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            if text.lines().any(|l| l.trim() == "[workspace]") {
                return dir.to_path_buf();
            }
        }
    }
    // crates/outflow-testkit sits two levels below the root.
    here.join("../..")
}

/// Parse `KEY=VALUE` lines; blank lines and `#` comments are skipped, and one pair of
/// matching quotes around a value is removed.
fn parse_env(text: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.insert(key.trim().to_string(), value.to_string());
    }
    out
}

impl Services {
    /// Read the services from an env file, without checking that they answer.
    pub fn from_file(path: &Path) -> Result<Services, ServicesError> {
        let text = std::fs::read_to_string(path).map_err(|e| ServicesError::MissingFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let vars = parse_env(&text);
        let get = |key: &'static str| -> Result<String, ServicesError> {
            vars.get(key)
                .filter(|v| !v.is_empty())
                .cloned()
                .ok_or_else(|| ServicesError::MissingEntry {
                    path: path.to_path_buf(),
                    key,
                })
        };
        let pg_port_text = get("OUTFLOW_TEST_PG_PORT")?;
        let pg_port = pg_port_text
            .parse::<u16>()
            .map_err(|e| ServicesError::BadEntry {
                path: path.to_path_buf(),
                key: "OUTFLOW_TEST_PG_PORT",
                reason: format!("{pg_port_text:?} is not a port: {e}"),
            })?;
        Ok(Services {
            env_file: path.to_path_buf(),
            pg_url: get("OUTFLOW_TEST_PG_URL")?,
            pg_host: get("OUTFLOW_TEST_PG_HOST")?,
            pg_port,
            pg_ca: get("OUTFLOW_TEST_PG_CA")?.into(),
            pg_bin: get("OUTFLOW_PG_BIN")?.into(),
            nats_url: get("OUTFLOW_TEST_NATS_URL")?,
            nats_server: get("OUTFLOW_NATS_SERVER")?.into(),
            dynamodb_endpoint: get("OUTFLOW_TEST_DYNAMODB_ENDPOINT")?,
            moto_server: get("OUTFLOW_MOTO_SERVER")?.into(),
            kafka_brokers: get("OUTFLOW_TEST_KAFKA_BROKERS")?,
            tansu: get("OUTFLOW_TANSU")?.into(),
        })
    }

    /// The `host:port` a service listens on.
    pub fn addr(&self, service: Service) -> String {
        match service {
            Service::Postgres => format!("{}:{}", self.pg_host, self.pg_port),
            Service::Nats => strip_scheme(&self.nats_url).to_string(),
            Service::DynamoDb => strip_scheme(&self.dynamodb_endpoint).to_string(),
            Service::Kafka => self
                .kafka_brokers
                .split(',')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string(),
        }
    }

    /// Check that a service accepts a TCP connection.
    pub fn check(&self, service: Service) -> Result<(), ServicesError> {
        let addr = self.addr(service);
        crate::net::connect_once(&addr, CHECK_TIMEOUT).map_err(|e| ServicesError::NotAnswering {
            path: self.env_file.clone(),
            service,
            addr: addr.clone(),
            reason: e.to_string(),
        })
    }

    /// Like [`Services::check`], for tests.
    ///
    /// # Panics
    ///
    /// When the service does not answer, with the advice to run `scripts/services.sh start`.
    pub fn require(&self, service: Service) -> &Self {
        if let Err(e) = self.check(service) {
            panic!("{e}");
        }
        self
    }
}

fn strip_scheme(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split('/').next().unwrap_or(rest)
}

/// The shared test services, read once per process from [`services_env_path`].
///
/// # Panics
///
/// When the file or one of its entries is missing:
/// "test services are not running: run `scripts/services.sh start` (missing <file>: ...)".
/// It does not check that the services answer; [`Services::require`] and the shortcuts
/// [`pg_url`], [`nats_url`], [`dynamodb_endpoint`] and [`kafka_brokers`] do.
pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Result<Services, ServicesError>> = OnceLock::new();
    match SERVICES.get_or_init(|| Services::from_file(&services_env_path())) {
        Ok(services) => services,
        Err(e) => panic!("{e}"),
    }
}

/// The shared cluster's superuser URL (database `postgres`), after checking that it answers.
///
/// # Panics
///
/// When the services are not running; the message says to run `scripts/services.sh start`.
pub fn pg_url() -> &'static str {
    &services().require(Service::Postgres).pg_url
}

/// The shared NATS server's URL, after checking that it answers.
///
/// # Panics
///
/// When the services are not running; the message says to run `scripts/services.sh start`.
pub fn nats_url() -> &'static str {
    &services().require(Service::Nats).nats_url
}

/// moto's endpoint for DynamoDB and DynamoDB Streams, after checking that it answers.
///
/// # Panics
///
/// When the services are not running; the message says to run `scripts/services.sh start`.
pub fn dynamodb_endpoint() -> &'static str {
    &services().require(Service::DynamoDb).dynamodb_endpoint
}

/// The Kafka-protocol broker's bootstrap address, after checking that it answers.
///
/// # Panics
///
/// When the services are not running; the message says to run `scripts/services.sh start`.
pub fn kafka_brokers() -> &'static str {
    &services().require(Service::Kafka).kafka_brokers
}

/// The Postgres binaries folder: `$OUTFLOW_PG_BIN`, else the one in `services.env`, else
/// Debian's `/usr/lib/postgresql/15/bin`. Private servers do not need the shared services.
pub(crate) fn pg_bin() -> PathBuf {
    if let Some(dir) = non_empty_env("OUTFLOW_PG_BIN") {
        return dir.into();
    }
    match Services::from_file(&services_env_path()) {
        Ok(s) => s.pg_bin,
        Err(_) => PathBuf::from("/usr/lib/postgresql/15/bin"),
    }
}

/// The `nats-server` binary: `$OUTFLOW_NATS_SERVER`, else the one in `services.env`, else
/// the first `nats-server` on `PATH`, else `/usr/sbin/nats-server`.
pub(crate) fn nats_server_bin() -> PathBuf {
    if let Some(bin) = non_empty_env("OUTFLOW_NATS_SERVER") {
        return bin.into();
    }
    if let Ok(s) = Services::from_file(&services_env_path()) {
        return s.nats_server;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("nats-server");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/sbin/nats-server")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comments_quotes_and_export() {
        let vars = parse_env("# c\n\nA=1\nexport B='two'\nC=\"x=y\"\nnot a pair\n");
        assert_eq!(vars.get("A").map(String::as_str), Some("1"));
        assert_eq!(vars.get("B").map(String::as_str), Some("two"));
        assert_eq!(vars.get("C").map(String::as_str), Some("x=y"));
        assert_eq!(vars.len(), 3);
    }

    #[test]
    fn strips_schemes() {
        assert_eq!(strip_scheme("nats://127.0.0.1:4222"), "127.0.0.1:4222");
        assert_eq!(strip_scheme("http://127.0.0.1:5000/"), "127.0.0.1:5000");
        assert_eq!(strip_scheme("127.0.0.1:9092"), "127.0.0.1:9092");
    }

    #[test]
    fn finds_the_workspace_root() {
        let root = workspace_root();
        assert!(
            root.join("crates/outflow-testkit/Cargo.toml").is_file(),
            "{}",
            root.display()
        );
    }
}
