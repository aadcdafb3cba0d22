//! The source under failure: server restarts, a full pipeline, an idle slot, missing
//! prerequisites, TLS. Needs `scripts/services.sh start` (private clusters are started
//! by the tests themselves).

mod common;

use std::time::Duration;

use common::{config, confirmed_flush, lsn, start};
use outflow_core::{ErrorKind, SourceItem};
use outflow_postgres::{check, Mode, SslMode};
use outflow_testkit::PrivatePostgres;
use serde_json::json;

async fn walsender_pid(client: &tokio_postgres::Client, pipeline: &str) -> Option<i32> {
    client
        .query_opt(
            "SELECT pid FROM pg_stat_replication WHERE application_name = $1",
            &[&format!("outflow {pipeline}")],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn wait_for_walsender(client: &tokio_postgres::Client, pipeline: &str) -> i32 {
    for _ in 0..200 {
        if let Some(pid) = walsender_pid(client, pipeline).await {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no walsender for pipeline {pipeline}");
}

fn ids_of(events: &[outflow_core::Envelope]) -> Vec<i64> {
    events
        .iter()
        .map(|e| {
            e.after.as_ref().unwrap().to_value().unwrap()["id"]
                .as_i64()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn postgres_restarted_mid_stream_loses_nothing() {
    let mut pg = PrivatePostgres::start().await;
    let name = pg.create_database("pg_restart").await;
    let url = pg.url(&name);
    let client = outflow_testkit::connect(&url).await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let c = config(&url, Mode::Table, &["public.items"]);
    let mut source = start(c, "restart", 64);
    let first_pid = wait_for_walsender(&client, "restart").await;
    for i in 1..=3 {
        client
            .batch_execute(&format!("INSERT INTO items VALUES ({i})"))
            .await
            .unwrap();
    }
    let mut got = ids_of(&source.events(3).await);
    // Nothing was committed by the pipeline: after the crash the server sends these
    // three again, and the source must not emit them twice.
    drop(client);
    pg.crash().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.start_again().await;
    let client = outflow_testkit::connect(&url).await;
    for i in 4..=6 {
        client
            .batch_execute(&format!("INSERT INTO items VALUES ({i})"))
            .await
            .unwrap();
    }
    got.extend(ids_of(&source.events(3).await));
    assert_eq!(got, [1, 2, 3, 4, 5, 6]);
    let second_pid = wait_for_walsender(&client, "restart").await;
    assert_ne!(first_pid, second_pid, "the source reconnected");
    source.stop().await.unwrap();
}

#[tokio::test]
async fn keepalives_are_answered_while_the_pipeline_is_full() {
    let pg = PrivatePostgres::start().await;
    let name = pg.create_database("pg_full").await;
    let url = pg.url(&name);
    let client = outflow_testkit::connect(&url).await;
    client
        .batch_execute("ALTER SYSTEM SET wal_sender_timeout = '2s'")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_reload_conf(); CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let timeout: String = client
        .query_one("SHOW wal_sender_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "2s");
    let mut c = config(&url, Mode::Table, &["public.items"]);
    c.read_ahead = 1;
    let mut source = start(c, "full", 1);
    let pid = wait_for_walsender(&client, "full").await;
    for i in 1..=50 {
        client
            .batch_execute(&format!("INSERT INTO items VALUES ({i})"))
            .await
            .unwrap();
    }
    // Four wal_sender_timeouts without reading anything.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        walsender_pid(&client, "full").await,
        Some(pid),
        "the server dropped the connection while the pipeline was full"
    );
    let got = ids_of(&source.events(50).await);
    assert_eq!(got, (1..=50).collect::<Vec<i64>>());
    assert_eq!(walsender_pid(&client, "full").await, Some(pid));
    source.stop().await.unwrap();
}

#[tokio::test]
async fn an_idle_slot_advances_when_other_databases_write() {
    let db = outflow_testkit::fresh_database("pg_idle").await;
    let other = outflow_testkit::fresh_database("pg_busy").await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await
        .unwrap();
    let busy = other.connect().await;
    busy.batch_execute("CREATE TABLE noise (id int, filler text)")
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Table, &["public.quiet"]);
    let slot = c.slot.clone();
    let mut source = start(c, "idle", 64);
    wait_for_walsender(&client, "idle").await;
    let initial = confirmed_flush(&client, &slot).await.unwrap();
    // A pipeline that commits every checkpoint at once (nothing is in flight).
    let mut checkpoints = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut advanced = None;
    while tokio::time::Instant::now() < deadline {
        busy.batch_execute(
            "INSERT INTO noise SELECT i, repeat('x', 100) FROM generate_series(1, 1000) i",
        )
        .await
        .unwrap();
        if let Ok(Some(item)) =
            tokio::time::timeout(Duration::from_millis(500), source.handle.items.recv()).await
        {
            match item {
                SourceItem::Checkpoint(c) => {
                    checkpoints += 1;
                    source.commit(&c.position);
                }
                SourceItem::Event(e) => panic!("unexpected event {e:?}"),
            }
        }
        let now = confirmed_flush(&client, &slot).await.unwrap();
        if lsn(&now) > lsn(&initial) + 100_000 {
            advanced = Some(now);
            break;
        }
    }
    let advanced = advanced.unwrap_or_else(|| {
        panic!("slot stayed near {initial} after {checkpoints} idle checkpoints")
    });
    assert!(checkpoints > 0);
    assert!(lsn(&advanced) > lsn(&initial));
    source.stop().await.unwrap();
}

#[tokio::test]
async fn wal_level_replica_is_a_fatal_error_that_says_what_to_set() {
    let mut pg = PrivatePostgres::start().await;
    let name = pg.create_database("pg_replica").await;
    let url = pg.url(&name);
    {
        let client = outflow_testkit::connect(&url).await;
        client
            .batch_execute("ALTER SYSTEM SET wal_level = replica")
            .await
            .unwrap();
        client
            .batch_execute("CREATE TABLE outbox (id int)")
            .await
            .unwrap();
    }
    pg.restart().await;
    let c = config(&url, Mode::Outbox, &["public.outbox"]);
    let err = check(&c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().starts_with(
            "wal_level is \"replica\" on the server, and logical replication needs \"logical\"; \
             run ALTER SYSTEM SET wal_level = logical"
        ),
        "{err}"
    );
    let err = start(c, "replica", 8).failure().await;
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(
        err.to_string().contains("wal_level is \"replica\""),
        "{err}"
    );
}

#[tokio::test]
async fn missing_rights_and_tables_are_fatal_errors_that_say_what_to_fix() {
    let db = outflow_testkit::fresh_database("pg_prereq").await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE outbox (id uuid PRIMARY KEY, aggregatetype text, aggregateid text, type text, payload jsonb)")
        .await
        .unwrap();

    // A role without REPLICATION.
    let c = config(
        &db.url_as("outflow_norepl"),
        Mode::Outbox,
        &["public.outbox"],
    );
    let err = check(&c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert_eq!(
        err.to_string(),
        "role \"outflow_norepl\" has neither the REPLICATION attribute nor superuser, which \
         logical replication needs; run ALTER ROLE \"outflow_norepl\" REPLICATION as a superuser"
    );
    let err = start(c, "norepl", 8).failure().await;
    assert!(err.to_string().contains("REPLICATION attribute"), "{err}");

    // A missing table.
    let c = config(&db.url(), Mode::Table, &["public.nope"]);
    let err = check(&c).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "table public.nope does not exist in database \"{}\"; create it, or fix `tables` in \
             the source configuration",
            db.name()
        )
    );

    // An outbox table without the outbox columns.
    client
        .batch_execute("CREATE TABLE plain (id int PRIMARY KEY)")
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Outbox, &["public.plain"]);
    let err = check(&c).await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("outbox table public.plain has no column \"aggregatetype\""),
        "{err}"
    );

    // A role that may replicate but may not create the publication.
    let role = outflow_testkit::unique_name("repl");
    client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN REPLICATION"))
        .await
        .unwrap();
    let c = config(&db.url_as(&role), Mode::Outbox, &["public.outbox"]);
    let publication = c.publication.clone();
    let err = check(&c).await.unwrap_err();
    client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "publication \"{publication}\" does not exist and role \"{role}\" may not create it: \
             that needs CREATE on database \"{}\" and ownership of every captured table; have \
             an owner run: CREATE PUBLICATION \"{publication}\" FOR TABLE \"public\".\"outbox\"",
            db.name()
        )
    );

    // Everything in place: check lists what it verified and changes nothing.
    let c = config(&db.url(), Mode::Outbox, &["public.outbox"]);
    let lines = check(&c).await.unwrap();
    assert_eq!(
        lines,
        [
            "wal_level is logical".to_string(),
            "role \"postgres\" may replicate (superuser)".to_string(),
            "table public.outbox exists".to_string(),
            format!(
                "publication \"{}\" is missing and will be created",
                c.publication
            ),
            format!(
                "replication slot \"{}\" is missing and will be created",
                c.slot
            ),
        ]
    );
    assert_eq!(confirmed_flush(&client, &c.slot).await, None);
}

#[tokio::test]
async fn a_slot_active_elsewhere_is_a_fatal_error() {
    let db = outflow_testkit::fresh_database("pg_busy_slot").await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Table, &["public.items"]);
    let first = start(c.clone(), "first", 8);
    wait_for_walsender(&client, "first").await;
    let err = check(&c).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Fatal);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "replication slot \"{}\" is active for PID ",
            c.slot
        )) && text.contains("(application \"outflow first\"")
            && text.ends_with("stop that consumer, or give this pipeline a slot of its own"),
        "{text}"
    );
    let err = start(c, "second", 8).failure().await;
    assert_eq!(err.kind(), ErrorKind::Fatal);
    assert!(err.to_string().contains("is active for PID"), "{err}");
    first.stop().await.unwrap();
}

#[tokio::test]
async fn tls_verify_full_with_the_test_ca() {
    let ca = outflow_testkit::services().pg_ca.display().to_string();
    let db = outflow_testkit::fresh_database("pg_tls").await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let url = db.url().replace("127.0.0.1", "localhost");
    let mut c = config(
        &format!("{url}?sslmode=verify-full&sslrootcert={ca}"),
        Mode::Table,
        &["public.items"],
    );
    check(&c).await.unwrap();
    let mut source = start(c.clone(), "tls", 8);
    wait_for_walsender(&client, "tls").await;
    let ssl: bool = client
        .query_one(
            "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r ON r.pid = s.pid \
             WHERE r.application_name = 'outflow tls'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the replication connection is not encrypted");
    client
        .batch_execute("INSERT INTO items VALUES (1)")
        .await
        .unwrap();
    let (events, _) = source.next_tx().await;
    assert_eq!(events[0].after, Some(json!({"id": 1}).into()));
    source.stop().await.unwrap();

    // The other modes connect too (verify-ca checks the chain against the test CA).
    for mode in [
        SslMode::Disable,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
    ] {
        let mut other = c.clone();
        other.url = db.url();
        other.sslmode = Some(mode);
        other.sslrootcert = Some(ca.clone().into());
        check(&other)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {}", e.chain()));
    }

    // Without the test CA the server's certificate is not trusted.
    c.url = url;
    c.sslmode = Some(SslMode::VerifyFull);
    let err = check(&c).await.unwrap_err();
    assert!(
        err.chain().to_lowercase().contains("certificate"),
        "{}",
        err.chain()
    );
}
