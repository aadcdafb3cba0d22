//! Writes events into a real Postgres and reads them back: from the table, and from a
//! logical replication slot with the `test_decoding` plugin.

use std::time::Duration;

use outflow_outbox::{
    emit_message, ensure_table, purge_older_than, write, write_and_delete, OutboxColumns,
    OutboxError, OutboxEvent, OutboxTable, DEFAULT_MESSAGE_PREFIX,
};
use outflow_testkit::{fresh_database, TestDb};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use uuid::Uuid;

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// A database of the test's own on the shared cluster (`wal_level=logical`), dropped with
/// its replication slots at the end of the test, and a connection to it.
async fn setup(prefix: &str) -> (TestDb, Client) {
    let db = fresh_database(prefix).await;
    let client = db.connect().await;
    (db, client)
}

/// The changes a logical slot decoded with `test_decoding`: (lsn, data) pairs.
async fn slot_changes(client: &Client, slot: &str) -> Vec<(String, String)> {
    client
        .query(
            "select lsn::text, data from pg_logical_slot_get_changes($1, null, null)",
            &[&slot],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn create_slot(client: &Client) -> String {
    let slot = format!("outbox_{}", Uuid::new_v4().simple());
    client
        .execute(
            "select pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot create a logical slot ({e:?}); the server needs wal_level=logical, \
                 which `scripts/services.sh start` configures"
            )
        });
    slot
}

/// The rows of the default outbox table, oldest id first.
async fn outbox_rows(
    client: &Client,
    table: &OutboxTable,
) -> Vec<(Uuid, String, String, String, Option<Value>, Option<String>)> {
    let c = table.columns();
    let q = outflow_outbox::quote_identifier;
    let sql = format!(
        "select {}, {}, {}, {}, {}, {} from {} order by {}",
        q(&c.id),
        q(&c.aggregate_type),
        q(&c.aggregate_id),
        q(&c.event_type),
        q(&c.payload),
        q(&c.tracing),
        table.qualified_name(),
        q(&c.id),
    );
    client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
        .collect()
}

#[tokio::test]
async fn ddl_creates_the_exact_columns_types_and_key() {
    let (_db, client) = setup("outbox_ddl").await;
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();
    // Idempotent: a second run neither fails nor changes anything.
    ensure_table(&client, &table).await.unwrap();

    let columns: Vec<(String, String, String, Option<String>)> = client
        .query(
            "select column_name::text, data_type::text, is_nullable::text, column_default::text \
             from information_schema.columns \
             where table_schema = 'public' and table_name = 'outbox' order by ordinal_position",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected = [
        ("id", "uuid", "NO", None),
        ("aggregatetype", "text", "NO", None),
        ("aggregateid", "text", "NO", None),
        ("type", "text", "NO", None),
        ("payload", "jsonb", "YES", None),
        (
            "created_at",
            "timestamp with time zone",
            "NO",
            Some("now()"),
        ),
        ("tracingspancontext", "text", "YES", None),
    ]
    .map(|(n, t, null, d)| {
        (
            n.to_owned(),
            t.to_owned(),
            null.to_owned(),
            d.map(str::to_owned),
        )
    });
    assert_eq!(columns, expected);

    let key: Vec<String> = client
        .query(
            "select k.column_name::text from information_schema.table_constraints c \
             join information_schema.key_column_usage k using (constraint_schema, constraint_name) \
             where c.table_schema = 'public' and c.table_name = 'outbox' \
             and c.constraint_type = 'PRIMARY KEY'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(key, ["id"]);

    let identity: i8 = client
        .query_one(
            "select relreplident from pg_class where oid = 'public.outbox'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(identity as u8, b'd', "replica identity default");
}

#[tokio::test]
async fn concurrent_ensure_table_calls_all_succeed() {
    let (db, client) = setup("outbox_race").await;
    let mut clients = Vec::new();
    for _ in 0..6 {
        clients.push(db.connect().await);
    }
    let table = OutboxTable::default();
    let results = futures::future::join_all(clients.iter().map(|c| ensure_table(c, &table))).await;
    for result in results {
        result.unwrap();
    }
    let count: i64 = client
        .query_one(
            "select count(*) from pg_class where relname = 'outbox'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    drop(clients);
}

#[tokio::test]
async fn ensure_table_names_every_misfit_of_an_existing_table() {
    let (_db, client) = setup("outbox_misfit").await;
    client
        .batch_execute(
            "create table outbox (id text primary key, aggregatetype text, type text, \
             payload bytea)",
        )
        .await
        .unwrap();
    let err = ensure_table(&client, &OutboxTable::default())
        .await
        .unwrap_err();
    assert!(matches!(err, OutboxError::TableMismatch { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "outbox table \"public\".\"outbox\" exists but does not fit: column \"id\" has type \
         text, expected uuid; column \"aggregateid\" is missing; column \"payload\" has type \
         bytea, expected jsonb or json; column \"tracingspancontext\" is missing"
    );
}

#[tokio::test]
async fn a_committed_write_is_visible_with_exact_values() {
    let (_db, mut client) = setup("outbox_commit").await;
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();
    client
        .batch_execute("create table orders (id bigint primary key, total numeric not null)")
        .await
        .unwrap();

    let first = OutboxEvent::new(
        "order",
        "123",
        "OrderCreated",
        json!({"id": 123, "total": 42.5, "lines": [{"sku": "a"}]}),
    )
    .traceparent(TRACEPARENT);
    let second = OutboxEvent::new("order", "123", "OrderNoted", Value::Null);
    let tx = client.transaction().await.unwrap();
    tx.execute("insert into orders values (123, 42.5)", &[])
        .await
        .unwrap();
    assert_eq!(write(&tx, &table, &first).await.unwrap(), first.id);
    assert_eq!(write(&tx, &table, &second).await.unwrap(), second.id);
    tx.commit().await.unwrap();

    // Ids are v7, so ordering by id is insertion order.
    assert_eq!(
        outbox_rows(&client, &table).await,
        vec![
            (
                first.id,
                "order".to_owned(),
                "123".to_owned(),
                "OrderCreated".to_owned(),
                Some(json!({"id": 123, "total": 42.5, "lines": [{"sku": "a"}]})),
                Some(TRACEPARENT.to_owned()),
            ),
            (
                second.id,
                "order".to_owned(),
                "123".to_owned(),
                "OrderNoted".to_owned(),
                None,
                None
            ),
        ]
    );
    // Value::Null is SQL NULL, not JSON null; created_at was filled by its default.
    let row = client
        .query_one(
            "select payload is null, created_at > now() - interval '1 minute' from outbox \
             where id = $1",
            &[&second.id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert!(row.get::<_, bool>(1));
}

#[tokio::test]
async fn a_rolled_back_write_leaves_nothing() {
    let (_db, mut client) = setup("outbox_rollback").await;
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();
    client
        .batch_execute("create table orders (id bigint primary key)")
        .await
        .unwrap();

    let tx = client.transaction().await.unwrap();
    tx.execute("insert into orders values (1)", &[])
        .await
        .unwrap();
    write(
        &tx,
        &table,
        &OutboxEvent::new("order", "1", "OrderCreated", json!({"id": 1})),
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();

    // A transaction dropped without commit rolls back too.
    {
        let tx = client.transaction().await.unwrap();
        tx.execute("insert into orders values (2)", &[])
            .await
            .unwrap();
        write(
            &tx,
            &table,
            &OutboxEvent::new("order", "2", "OrderCreated", json!({"id": 2})),
        )
        .await
        .unwrap();
    }

    let counts = client
        .query_one(
            "select (select count(*) from orders), (select count(*) from outbox)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((counts.get::<_, i64>(0), counts.get::<_, i64>(1)), (0, 0));
}

#[tokio::test]
async fn a_duplicate_id_is_a_unique_violation_and_bad_events_fail_before_the_database() {
    let (_db, mut client) = setup("outbox_dup").await;
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();

    let tx = client.transaction().await.unwrap();
    // An invalid event is rejected without touching the transaction, which stays usable.
    let bad = OutboxEvent::new("order", "1", "", json!({}));
    let err = write(&tx, &table, &bad).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "invalid outbox event {}: event_type is empty; every event needs one",
            bad.id
        )
    );
    let event = OutboxEvent::new("order", "1", "OrderCreated", json!({}));
    write(&tx, &table, &event).await.unwrap();
    tx.commit().await.unwrap();

    let tx = client.transaction().await.unwrap();
    let again = OutboxEvent::new("order", "1", "OrderCreatedAgain", json!({})).id(event.id);
    let err = write(&tx, &table, &again).await.unwrap_err();
    assert_eq!(err.code(), Some(&SqlState::UNIQUE_VIOLATION));
    assert_eq!(
        err.to_string(),
        format!(
            "cannot write outbox event {} to \"public\".\"outbox\"",
            event.id
        )
    );
    let cause = std::error::Error::source(&err).expect("the database error is attached");
    assert!(
        cause.downcast_ref::<tokio_postgres::Error>().is_some(),
        "{cause:?}"
    );
    assert_eq!(
        err.db_error().and_then(|e| e.constraint()),
        Some("outbox_pkey")
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn write_and_delete_leaves_the_table_empty_but_the_insert_in_the_wal() {
    let (_db, mut client) = setup("outbox_wad").await;
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();
    let slot = create_slot(&client).await;

    let events = [
        OutboxEvent::new("order", "7", "OrderShipped", json!({"id": 7})).traceparent(TRACEPARENT),
        OutboxEvent::new("order", "8", "OrderShipped", json!({"id": 8})),
    ];
    // How test_decoding prints each payload (jsonb's own text form).
    let payload_text = [r#"{"id": 7}"#, r#"{"id": 8}"#];
    let tx = client.transaction().await.unwrap();
    for event in &events {
        assert_eq!(
            write_and_delete(&tx, &table, event).await.unwrap(),
            event.id
        );
    }
    tx.commit().await.unwrap();

    let count: i64 = client
        .query_one("select count(*) from outbox", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 0);

    let data: Vec<String> = slot_changes(&client, &slot)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    assert_eq!(data.len(), 6, "{data:#?}");
    assert!(data[0].starts_with("BEGIN "), "{data:#?}");
    assert!(data[5].starts_with("COMMIT "), "{data:#?}");
    for (i, event) in events.iter().enumerate() {
        let insert = &data[1 + 2 * i];
        let traceparent = match &event.traceparent {
            Some(t) => format!("'{t}'"),
            None => "null".to_owned(),
        };
        let expected_prefix = format!(
            "table public.outbox: INSERT: id[uuid]:'{}' aggregatetype[text]:'order' \
             aggregateid[text]:'{}' type[text]:'OrderShipped' payload[jsonb]:'{}' \
             created_at[timestamp with time zone]:",
            event.id, event.aggregate_id, payload_text[i]
        );
        assert!(
            insert.starts_with(&expected_prefix),
            "{insert}\n{expected_prefix}"
        );
        assert!(
            insert.ends_with(&format!("tracingspancontext[text]:{traceparent}")),
            "{insert}"
        );
        assert_eq!(
            data[2 + 2 * i],
            format!("table public.outbox: DELETE: id[uuid]:'{}'", event.id)
        );
    }
}

#[tokio::test]
async fn emit_message_sends_the_exact_json_only_on_commit() {
    let (_db, mut client) = setup("outbox_msg").await;
    let slot = create_slot(&client).await;

    let id: Uuid = "0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d".parse().unwrap();
    let committed = OutboxEvent::new(
        "order",
        "123",
        "OrderPaid",
        json!({"id": 123, "note": "ünï \"q\""}),
    )
    .id(id)
    .traceparent(TRACEPARENT);
    let tx = client.transaction().await.unwrap();
    let lsn = emit_message(&tx, DEFAULT_MESSAGE_PREFIX, &committed)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    // An aborted transaction's message never reaches the slot.
    let aborted = OutboxEvent::new("order", "124", "OrderPaid", json!({"id": 124}));
    let tx = client.transaction().await.unwrap();
    emit_message(&tx, DEFAULT_MESSAGE_PREFIX, &aborted)
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // A later committed message, with another prefix and no payload or traceparent, shows
    // decoding went past the aborted transaction.
    let later = OutboxEvent::new("invoice", "9", "InvoiceSent", Value::Null);
    let tx = client.transaction().await.unwrap();
    let later_lsn = emit_message(&tx, "billing", &later).await.unwrap();
    tx.commit().await.unwrap();

    let changes = slot_changes(&client, &slot).await;
    let messages: Vec<&(String, String)> = changes
        .iter()
        .filter(|(_, d)| d.starts_with("message:"))
        .collect();
    let expected_content = r#"{"id":"0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d","aggregatetype":"order","aggregateid":"123","type":"OrderPaid","payload":{"id":123,"note":"ünï \"q\""},"tracingspancontext":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
    let later_content = format!(
        r#"{{"id":"{}","aggregatetype":"invoice","aggregateid":"9","type":"InvoiceSent","payload":null,"tracingspancontext":null}}"#,
        later.id
    );
    assert_eq!(
        messages,
        [
            &(
                lsn.to_string(),
                format!(
                    "message: transactional: 1 prefix: outbox, sz: {} content:{expected_content}",
                    expected_content.len()
                )
            ),
            &(
                later_lsn.to_string(),
                format!(
                    "message: transactional: 1 prefix: billing, sz: {} content:{later_content}",
                    later_content.len()
                )
            ),
        ],
        "{changes:#?}"
    );
    // The content is the JSON the connector decodes: the exact keys, in order.
    let parsed: serde_json::Map<String, Value> = serde_json::from_str(expected_content).unwrap();
    assert_eq!(
        parsed.keys().collect::<Vec<_>>(),
        [
            "aggregateid",
            "aggregatetype",
            "id",
            "payload",
            "tracingspancontext",
            "type"
        ]
    );
    // Two transactions committed, one with BEGIN, message, COMMIT each.
    assert_eq!(changes.len(), 6, "{changes:#?}");
}

#[tokio::test]
async fn emit_message_rejects_an_empty_prefix() {
    let (_db, mut client) = setup("outbox_prefix").await;
    let tx = client.transaction().await.unwrap();
    let event = OutboxEvent::new("order", "1", "OrderPaid", json!({}));
    let err = emit_message(&tx, "", &event).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid logical decoding message prefix \"\": it is empty; use DEFAULT_MESSAGE_PREFIX \
         (\"outbox\") or the prefix outflow is configured with"
    );
    tx.rollback().await.unwrap();
}

#[tokio::test]
async fn weird_names_are_quoted_everywhere() {
    let (_db, mut client) = setup("outbox_weird").await;
    let schema = "Sales \"EU\"";
    let name = "out\"box'; drop table victim; --";
    client
        .batch_execute(&format!(
            "create schema {}; create table victim (id int)",
            outflow_outbox::quote_identifier(schema)
        ))
        .await
        .unwrap();
    let columns = OutboxColumns {
        id: "Event ID".to_owned(),
        aggregate_type: "agg\"type".to_owned(),
        aggregate_id: "agg id".to_owned(),
        event_type: "select".to_owned(),
        payload: "Payload".to_owned(),
        created_at: "at'time".to_owned(),
        tracing: "trace;ctx".to_owned(),
    };
    let table = OutboxTable::new(name)
        .unwrap()
        .with_schema(schema)
        .unwrap()
        .with_columns(columns.clone())
        .unwrap();
    ensure_table(&client, &table).await.unwrap();

    let found: Vec<(String, String)> = client
        .query(
            "select table_name::text, column_name::text from information_schema.columns \
             where table_schema = $1 order by ordinal_position",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let expected: Vec<(String, String)> = [
        &columns.id,
        &columns.aggregate_type,
        &columns.aggregate_id,
        &columns.event_type,
        &columns.payload,
        &columns.created_at,
        &columns.tracing,
    ]
    .iter()
    .map(|c| (name.to_owned(), (*c).clone()))
    .collect();
    assert_eq!(found, expected);

    let kept =
        OutboxEvent::new("order", "1", "OrderCreated", json!({"x": 1})).traceparent(TRACEPARENT);
    let gone = OutboxEvent::new("order", "2", "OrderCreated", json!({"x": 2}));
    let tx = client.transaction().await.unwrap();
    write(&tx, &table, &kept).await.unwrap();
    write_and_delete(&tx, &table, &gone).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        outbox_rows(&client, &table).await,
        vec![(
            kept.id,
            "order".to_owned(),
            "1".to_owned(),
            "OrderCreated".to_owned(),
            Some(json!({"x": 1})),
            Some(TRACEPARENT.to_owned()),
        )]
    );
    assert_eq!(
        purge_older_than(&client, &table, Duration::from_secs(3600))
            .await
            .unwrap(),
        0
    );
    // The victim table is still there.
    client
        .query_one("select count(*) from victim", &[])
        .await
        .unwrap();
}

#[tokio::test]
async fn purge_deletes_only_old_rows() {
    let (_db, mut client) = setup("outbox_purge").await;
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();
    let old = OutboxEvent::new("order", "1", "OrderCreated", json!({}));
    let new = OutboxEvent::new("order", "2", "OrderCreated", json!({}));
    let tx = client.transaction().await.unwrap();
    write(&tx, &table, &old).await.unwrap();
    write(&tx, &table, &new).await.unwrap();
    tx.execute(
        "update outbox set created_at = now() - interval '2 hours' where id = $1",
        &[&old.id],
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let purged = purge_older_than(&client, &table, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(purged, 1);
    let left: Vec<Uuid> = outbox_rows(&client, &table)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(left, [new.id]);
}

#[tokio::test]
async fn writes_fit_a_debezium_style_table_with_json_and_varchar_columns() {
    let (_db, mut client) = setup("outbox_json").await;
    client
        .batch_execute(
            "create table outbox (id uuid primary key, aggregatetype varchar(255) not null, \
             aggregateid varchar(255) not null, type varchar(255) not null, payload json, \
             tracingspancontext varchar(256))",
        )
        .await
        .unwrap();
    let table = OutboxTable::default();
    ensure_table(&client, &table).await.unwrap();
    let event = OutboxEvent::new("order", "5", "OrderCreated", json!({"a": [1, 2]}))
        .traceparent(TRACEPARENT);
    let tx = client.transaction().await.unwrap();
    write(&tx, &table, &event).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        outbox_rows(&client, &table).await,
        vec![(
            event.id,
            "order".to_owned(),
            "5".to_owned(),
            "OrderCreated".to_owned(),
            Some(json!({"a": [1, 2]})),
            Some(TRACEPARENT.to_owned()),
        )]
    );
}
