//! The Postgres checkpoint store against a real Postgres.

use outflow_core::Checkpoints;
use outflow_pipeline::{CheckpointStore, PostgresStore};

fn positions(entries: &[(&str, &str)]) -> Checkpoints {
    entries
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn creates_its_table_and_keeps_positions_per_pipeline_and_partition() {
    let db = outflow_testkit::fresh_database("store").await;
    let store = PostgresStore::new(db.url(), "outflow_checkpoints");
    assert!(store.load("orders").await.unwrap().is_empty());

    store
        .save(
            "orders",
            &positions(&[("shard-1", "10"), ("shard-2", "20")]),
        )
        .await
        .unwrap();
    store
        .save("billing", &positions(&[("", "0/16B3748")]))
        .await
        .unwrap();
    store
        .save(
            "orders",
            &positions(&[("shard-1", "11"), ("shard-2", "20")]),
        )
        .await
        .unwrap();

    // A second store (another host) sees the same rows.
    let other = PostgresStore::new(db.url(), "outflow_checkpoints");
    assert_eq!(
        other.load("orders").await.unwrap(),
        positions(&[("shard-1", "11"), ("shard-2", "20")])
    );
    assert_eq!(
        other.load("billing").await.unwrap(),
        positions(&[("", "0/16B3748")])
    );

    let client = db.connect().await;
    let count: i64 = client
        .query_one("SELECT count(*) FROM outflow_checkpoints", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 3);
}

#[tokio::test]
async fn schema_qualified_table_and_missing_rights_are_reported() {
    let db = outflow_testkit::fresh_database("store").await;
    let client = db.connect().await;
    client.batch_execute("CREATE SCHEMA ops").await.unwrap();
    let store = PostgresStore::new(db.url(), "ops.positions");
    store
        .save("orders", &positions(&[("", "0/1")]))
        .await
        .unwrap();
    let row = client
        .query_one("SELECT position FROM ops.positions", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "0/1");

    // A user who may not create the table gets a fatal error that says what to grant.
    client
        .batch_execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC; CREATE SCHEMA locked")
        .await
        .unwrap();
    let store = PostgresStore::new(db.url_as("outflow_norepl"), "locked.positions");
    let err = store.load("orders").await.unwrap_err();
    assert_eq!(
        err.kind(),
        outflow_core::ErrorKind::Fatal,
        "{}",
        err.chain()
    );
    assert!(
        err.to_string()
            .starts_with("checkpoint store table locked.positions: permission denied")
            && err
                .to_string()
                .contains("grant the user CREATE on the schema"),
        "{err}"
    );
}
