//! Tests of the test kit itself, against the services `scripts/services.sh start` runs.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use outflow_testkit::{
    connect, free_port, fresh_database, services, unique_name, wait_for_tcp, wait_for_tcp_blocking,
    ChildGuard, PrivateNats, PrivatePostgres, PrivateTansu, Service, Services, ServicesError,
    MAX_NAME_LEN,
};

fn assert_valid_name(name: &str) {
    assert!(
        name.len() <= MAX_NAME_LEN,
        "{name} is longer than {MAX_NAME_LEN}"
    );
    assert!(
        name.starts_with(|c: char| c.is_ascii_lowercase()),
        "{name} must start with a letter"
    );
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
        "{name} has characters outside [a-z0-9_]"
    );
}

#[test]
fn unique_names_are_distinct_and_valid_across_threads() {
    let handles: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(|| (0..2000).map(|_| unique_name("slot")).collect::<Vec<_>>()))
        .collect();
    let mut all = HashSet::new();
    for h in handles {
        for name in h.join().unwrap() {
            assert_valid_name(&name);
            assert!(name.starts_with("slot_"), "{name}");
            assert!(all.insert(name.clone()), "{name} was returned twice");
        }
    }
    assert_eq!(all.len(), 16_000);
}

#[test]
fn prefixes_are_cleaned_and_shortened() {
    let cases = [
        ("Orders-Topic.v2", "orders_topic_v2_"),
        ("", "t_"),
        ("9lives", "t9lives_"),
        ("ÄBC", "t_bc_"),
    ];
    for (prefix, start) in cases {
        let name = unique_name(prefix);
        assert_valid_name(&name);
        assert!(
            name.starts_with(start),
            "{prefix:?} gave {name}, expected it to start with {start}"
        );
    }
    let long = unique_name(&"x".repeat(200));
    assert_valid_name(&long);
    assert!(long.starts_with("xxxxxxxxxx"), "{long}");
}

#[test]
fn a_missing_env_file_or_entry_says_how_to_start_the_services() {
    let missing = Path::new("/nonexistent/outflow/services.env");
    let err = Services::from_file(missing).unwrap_err();
    assert!(matches!(err, ServicesError::MissingFile { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(
            "test services are not running: run `scripts/services.sh start` (missing \
             /nonexistent/outflow/services.env"
        ),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join("services.env");
    std::fs::write(
        &partial,
        "OUTFLOW_TEST_PG_PORT=5432\nOUTFLOW_TEST_PG_URL=postgres://x\n",
    )
    .unwrap();
    let err = Services::from_file(&partial).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "test services are not running: run `scripts/services.sh start` (missing \
             OUTFLOW_TEST_PG_HOST in {})",
            partial.display()
        )
    );

    std::fs::write(&partial, "OUTFLOW_TEST_PG_PORT=54x\n").unwrap();
    let err = Services::from_file(&partial).unwrap_err();
    assert!(err.to_string().contains("OUTFLOW_TEST_PG_PORT in"), "{err}");
}

#[test]
fn a_service_that_does_not_answer_fails_the_check_with_the_advice() {
    let mut s = services().clone();
    let port = free_port();
    s.kafka_brokers = format!("127.0.0.1:{port}");
    let err = s.check(Service::Kafka).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("test services are not running: run `scripts/services.sh start`"));
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    let panic = std::panic::catch_unwind(|| {
        s.require(Service::Kafka);
    })
    .unwrap_err();
    assert_eq!(panic.downcast_ref::<String>(), Some(&text));
}

#[test]
fn the_shared_services_answer_and_their_binaries_exist() {
    let s = services();
    for service in [
        Service::Postgres,
        Service::Nats,
        Service::DynamoDb,
        Service::Kafka,
    ] {
        s.require(service);
    }
    assert!(
        s.pg_url.starts_with("postgres://postgres@127.0.0.1:"),
        "{}",
        s.pg_url
    );
    assert!(
        s.pg_url.ends_with(&format!(":{}/postgres", s.pg_port)),
        "{}",
        s.pg_url
    );
    assert!(
        s.nats_url.starts_with("nats://127.0.0.1:"),
        "{}",
        s.nats_url
    );
    assert!(
        s.dynamodb_endpoint.starts_with("http://127.0.0.1:"),
        "{}",
        s.dynamodb_endpoint
    );
    for file in [
        &s.pg_ca,
        &s.pg_bin.join("psql"),
        &s.nats_server,
        &s.tansu,
        &s.moto_server,
    ] {
        assert!(file.is_file(), "{} does not exist", file.display());
    }
    let ca = std::fs::read_to_string(&s.pg_ca).unwrap();
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");
}

#[tokio::test]
async fn the_shared_cluster_refuses_replication_to_outflow_norepl() {
    let db = fresh_database("norepl").await;
    let client = connect(&db.url_as("outflow_norepl")).await;
    let row = client
        .query_one("SELECT current_user::text, rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "outflow_norepl");
    assert!(!row.get::<_, bool>(1));
    assert!(!row.get::<_, bool>(2));
    let s = services();
    let out = Command::new(s.pg_bin.join("psql"))
        .arg("-X")
        .arg("-d")
        .arg(format!(
            "{}?replication=database",
            db.url_as("outflow_norepl")
        ))
        .args(["-c", "IDENTIFY_SYSTEM"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("must be superuser or replication role to start walsender"),
        "{stderr}"
    );
}

async fn slot_active(admin: &tokio_postgres::Client, slot: &str) -> Option<bool> {
    admin
        .query_opt(
            "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
}

#[tokio::test]
async fn fresh_database_is_logical_and_is_dropped_with_its_active_slot() {
    let s = services();
    let admin = connect(&s.pg_url).await;
    let db = fresh_database("fresh").await;
    let name = db.name().to_string();
    assert!(name.starts_with("fresh_"), "{name}");
    assert_eq!(
        db.url(),
        format!("postgres://postgres@127.0.0.1:{}/{name}", s.pg_port)
    );

    let client = db.connect().await;
    let row = client
        .query_one(
            "SELECT current_database()::text, current_setting('wal_level')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), name);
    assert_eq!(row.get::<_, String>(1), "logical");

    let slot = unique_name("slot");
    client
        .query_one(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .await
        .unwrap();
    drop(client);
    // A live walsender on the slot: DROP DATABASE alone would fail on it.
    let mut recv = ChildGuard::spawn(
        Command::new(s.pg_bin.join("pg_recvlogical"))
            .arg("-d")
            .arg(db.url())
            .args(["--slot", &slot, "--start", "--no-loop", "-f", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .unwrap();
    let mut active = false;
    for _ in 0..200 {
        if slot_active(&admin, &slot).await == Some(true) {
            active = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(active, "pg_recvlogical never made slot {slot} active");

    drop(db);

    let exists = admin
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(exists, 0, "database {name} still exists");
    assert_eq!(
        slot_active(&admin, &slot).await,
        None,
        "slot {slot} still exists"
    );
    let status = recv.wait_timeout(Duration::from_secs(10)).await.unwrap();
    assert!(
        status.is_some(),
        "pg_recvlogical still runs after its slot was dropped"
    );
}

#[tokio::test]
async fn fresh_databases_are_distinct() {
    let a = fresh_database("same").await;
    let b = fresh_database("same").await;
    assert_ne!(a.name(), b.name());
    a.connect()
        .await
        .batch_execute("CREATE TABLE only_in_a (id int)")
        .await
        .unwrap();
    let err = b
        .connect()
        .await
        .batch_execute("SELECT * FROM only_in_a")
        .await
        .unwrap_err();
    let message = err
        .as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default();
    assert_eq!(message, "relation \"only_in_a\" does not exist", "{err:?}");
}

#[tokio::test]
async fn the_shared_cluster_verifies_tls_with_the_ca() {
    let s = services();
    let db = fresh_database("tls").await;
    let out = Command::new(s.pg_bin.join("psql"))
        .arg("-X")
        .arg("-At")
        .arg("-d")
        .arg(format!(
            "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
            s.pg_port,
            db.name(),
            s.pg_ca.display()
        ))
        .args([
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
}

#[tokio::test]
async fn private_postgres_keeps_port_and_data_across_stop_crash_and_restart() {
    let mut pg = PrivatePostgres::start().await;
    let port = pg.port();
    let url = pg.url("postgres");
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    let client = connect(&url).await;
    let level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(level, "logical");
    client
        .batch_execute("CREATE TABLE t (id int primary key); INSERT INTO t VALUES (1)")
        .await
        .unwrap();
    drop(client);

    pg.stop().await;
    assert!(!pg.is_running());
    assert!(tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .is_err());

    pg.start_again().await;
    assert_eq!(pg.port(), port);
    let client = connect(&url).await;
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .unwrap();
    drop(client);

    // Committed before an immediate shutdown: crash recovery must keep it.
    pg.crash().await;
    pg.start_again().await;
    pg.restart().await;
    let client = connect(&url).await;
    let ids: Vec<i32> = client
        .query("SELECT id FROM t ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec![1, 2]);

    let db = pg.create_database("private").await;
    let other = connect(&pg.url(&db)).await;
    let current: String = other
        .query_one("SELECT current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(current, db);
    drop(other);
    drop(client);

    let data = pg.data_dir().to_path_buf();
    assert!(data.join("PG_VERSION").is_file());
    drop(pg);
    assert!(!data.exists(), "{} was not removed", data.display());
    assert!(
        wait_for_tcp(&format!("127.0.0.1:{port}"), Duration::from_millis(300))
            .await
            .is_err(),
        "private postgres still listens on {port}"
    );
}

#[tokio::test]
async fn private_nats_keeps_port_and_stream_across_stop_and_kill() {
    let mut nats = PrivateNats::start().await;
    let port = nats.port();
    assert_eq!(nats.url(), format!("nats://127.0.0.1:{port}"));
    let stream = unique_name("stream");
    {
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = async_nats::jetstream::new(client);
        js.create_stream(async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![format!("{stream}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
        for i in 0..3 {
            js.publish(format!("{stream}.a"), format!("m{i}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    nats.stop().await;
    assert!(!nats.is_running());
    assert!(
        wait_for_tcp(&format!("127.0.0.1:{port}"), Duration::from_millis(300))
            .await
            .is_err()
    );
    nats.start_again().await;
    assert_eq!(nats.port(), port);

    let count = |url: String, stream: String| async move {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut s = js.get_stream(&stream).await.unwrap();
        s.info().await.unwrap().state.messages
    };
    assert_eq!(count(nats.url(), stream.clone()).await, 3);

    nats.kill().await;
    nats.start_again().await;
    assert_eq!(count(nats.url(), stream.clone()).await, 3);
    assert!(nats.store_dir().is_dir());
}

#[tokio::test]
async fn private_nats_applies_max_payload() {
    let nats = PrivateNats::start_with_max_payload(1024).await;
    assert_eq!(nats.max_payload(), Some(1024));
    let client = async_nats::connect(nats.url()).await.unwrap();
    assert_eq!(client.server_info().max_payload, 1024);
    client
        .publish("small", vec![0u8; 1000].into())
        .await
        .unwrap();
    let err = client
        .publish("big", vec![0u8; 2000].into())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("max payload"), "{err}");
}

/// The one-letter state of a process (`S` sleeping, `R` running, `T` stopped), from
/// `/proc/PID/stat`.
fn process_state(pid: u32) -> char {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    after_name.trim_start().chars().next().unwrap()
}

#[tokio::test]
async fn private_tansu_listens_freezes_thaws_and_dies_with_its_guard() {
    let tansu = PrivateTansu::start().await;
    let brokers = tansu.brokers();
    assert!(brokers.starts_with("127.0.0.1:"), "{brokers}");
    wait_for_tcp(&brokers, Duration::from_secs(1))
        .await
        .unwrap();
    let pid = tansu.pid();
    assert!(tansu.log_path().is_file());

    tansu.freeze();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while process_state(pid) != 'T' {
        assert!(
            std::time::Instant::now() < deadline,
            "tansu {pid} did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tansu.thaw();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while process_state(pid) == 'T' {
        assert!(
            std::time::Instant::now() < deadline,
            "tansu {pid} was not thawed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A frozen broker is thawed and killed on drop, and its port closes.
    tansu.freeze();
    drop(tansu);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "tansu {pid} survived its guard"
    );
    assert!(
        wait_for_tcp(&brokers, Duration::from_millis(300))
            .await
            .is_err(),
        "{brokers} still accepts connections"
    );
}

#[tokio::test]
async fn child_guard_kills_and_reaps_on_drop_and_terminates_on_request() {
    let guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
    let pid = guard.id();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(guard);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "sleep {pid} survived its guard"
    );

    let mut guard = ChildGuard::spawn(Command::new("sleep").arg("600")).unwrap();
    assert_eq!(
        guard
            .wait_timeout(Duration::from_millis(100))
            .await
            .unwrap(),
        None
    );
    guard.terminate().unwrap();
    let status = guard
        .wait_timeout(Duration::from_secs(10))
        .await
        .unwrap()
        .expect("exited");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(15));
}

#[tokio::test]
async fn free_ports_are_distinct_and_wait_for_tcp_sees_listeners() {
    let ports: HashSet<u16> = (0..50).map(|_| free_port()).collect();
    assert_eq!(ports.len(), 50);
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let err = wait_for_tcp(&addr, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    assert!(err.to_string().contains(&addr), "{err}");

    let listener = TcpListener::bind(&addr).unwrap();
    wait_for_tcp(&addr, Duration::from_secs(5)).await.unwrap();
    wait_for_tcp_blocking(&addr, Duration::from_secs(5)).unwrap();
    drop(listener);
    assert!(wait_for_tcp_blocking(&addr, Duration::from_millis(200)).is_err());
}
