//! The source against a real Postgres 15: value mapping, the three modes, replica
//! identities, TOAST, truncate, schema changes, large transactions and resuming.
//! Needs `scripts/services.sh start`.

mod common;

use common::{config, confirmed_flush, lsn, start};
use outflow_core::{event_id_from_position, Op};
use outflow_postgres::Mode;
use serde_json::json;

#[tokio::test]
async fn every_common_type_maps_losslessly() {
    let db = outflow_testkit::fresh_database("pg_types").await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'happy');
             CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
             CREATE DOMAIN email AS text;
             CREATE TABLE typed (
               id bigint PRIMARY KEY, b bool, i2 int2, i4 int4, i8 int8, i8big int8,
               f4 float4, f8 float8, fnan float8, finf float4, fninf float8,
               n numeric, nn numeric(10,2), t text, vc varchar(10), c char(3), u uuid,
               j json, jb jsonb, by bytea, d date, tm time, ttz timetz, ts timestamp,
               tz timestamptz, iv interval, ia int4[], ta text[], nested int8[][],
               ja jsonb[], ma mood[], m mood, p posint, e email, pa posint[], x inet,
               nul text)",
        )
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Table, &["public.typed"]);
    let mut source = start(c, "types", 64);
    // Let the slot be created before writing.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    wait_for_slot(&client, &source).await;
    client
        .batch_execute(
            r#"INSERT INTO typed VALUES (1, true, -32768, 2147483647, 9007199254740992,
               -9223372036854775808, 1.5, 0.1, 'NaN', 'Infinity', '-Infinity',
               '123456789012345678901234567890.123456789', 12.30, 'a "quoted" \ text',
               'varchar', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
               '{"k": [1, 2.5, "x"]}', '{"nested": {"a": null}}', '\x00ff7f',
               '2026-12-03', '12:34:56.789', '12:34:56+02', '2026-12-03 12:00:00.5',
               '2026-12-03 13:00:00.123456+01', '1 year 2 mons 3 days 04:05:06.5',
               '{1,NULL,3}', '{"a b","c\"d",NULL,"NULL","{x}"}', '{{1,2},{3,4}}',
               ARRAY['{"a":1}'::jsonb, 'null'::jsonb], '{sad,happy}', 'happy', 7,
               'me@example.com', '{1,2}', '10.0.0.1/8', NULL)"#,
        )
        .await
        .unwrap();
    let (events, _) = source.next_tx().await;
    assert_eq!(events.len(), 1);
    let e = &events[0];
    assert_eq!(e.op, Op::Insert);
    assert_eq!(
        e.after,
        Some(
            json!({
                "id": 1, "b": true, "i2": -32768, "i4": 2147483647,
                "i8": 9007199254740992_i64, "i8big": "-9223372036854775808",
                "f4": 1.5, "f8": 0.1, "fnan": "NaN", "finf": "Infinity", "fninf": "-Infinity",
                "n": "123456789012345678901234567890.123456789", "nn": "12.30",
                "t": "a \"quoted\" \\ text", "vc": "varchar", "c": "ab ",
                "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
                "j": {"k": [1, 2.5, "x"]}, "jb": {"nested": {"a": null}}, "by": "AP9/",
                "d": "2026-12-03", "tm": "12:34:56.789", "ttz": "12:34:56+02",
                "ts": "2026-12-03T12:00:00.500000", "tz": "2026-12-03T12:00:00.123456Z",
                "iv": "1 year 2 mons 3 days 04:05:06.5",
                "ia": [1, null, 3], "ta": ["a b", "c\"d", null, "NULL", "{x}"],
                "nested": [[1, 2], [3, 4]], "ja": [{"a": 1}, null], "ma": ["sad", "happy"],
                "m": "happy", "p": 7, "e": "me@example.com", "pa": [1, 2], "x": "10.0.0.1/8",
                "nul": null
            })
            .into()
        )
    );
    assert_eq!(e.key, Some(json!({"id": 1}).into()));
    assert_eq!(e.aggregate_id, "1");
    assert_eq!(e.aggregate_type, "public.typed");
    assert_eq!(e.event_type, "public.typed.insert");
    assert_eq!(e.source.connector, "postgres");
    assert_eq!(e.source.database, db.name());
    assert_eq!(e.source.collection, "public.typed");

    // json and jsonb arrive as Postgres wrote them: no digit of a number is lost (a
    // double would give 10.5 and 1.2345678901234568e29), jsonb in its own member order.
    client
        .batch_execute(
            r#"INSERT INTO typed (id, j, jb) VALUES (2,
               '{"amount": 10.50, "big": 123456789012345678901234567890}',
               '{"amount": 10.50, "big": 123456789012345678901234567890}')"#,
        )
        .await
        .unwrap();
    let (events, _) = source.next_tx().await;
    let after = events[0].after.as_ref().unwrap().as_str();
    assert!(
        after.contains(
            r#""j":{"amount": 10.50, "big": 123456789012345678901234567890},"jb":{"big": 123456789012345678901234567890, "amount": 10.50},"#
        ),
        "{after}"
    );
    assert_eq!(events[0].payload.as_str(), after);
    source.stop().await.unwrap();
}

/// Waits until the source's slot exists (it is created when the source starts).
async fn wait_for_slot(client: &tokio_postgres::Client, source: &common::Running) {
    let _ = source;
    for _ in 0..100 {
        let n: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE database = current_database() \
                 AND active",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if n > 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the source's slot never became active");
}

#[tokio::test]
async fn outbox_insert_and_delete_in_one_transaction_is_one_event() {
    let db = outflow_testkit::fresh_database("pg_outbox").await;
    let mut client = db.connect().await;
    let table = outflow_outbox::OutboxTable::default();
    outflow_outbox::ensure_table(&client, &table).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE text_outbox (id text PRIMARY KEY, aggregatetype text,
               aggregateid text, type text, payload text)",
        )
        .await
        .unwrap();
    let c = config(
        &db.url(),
        Mode::Outbox,
        &["public.outbox", "public.text_outbox"],
    );
    let slot = c.slot.clone();
    let mut source = start(c, "orders", 64);
    wait_for_slot(&client, &source).await;

    // An aborted transaction first: it must never show up.
    {
        let tx = client.transaction().await.unwrap();
        let event = outflow_outbox::OutboxEvent::new("order", "0", "Never", json!({}));
        outflow_outbox::write(&tx, &table, &event).await.unwrap();
        tx.rollback().await.unwrap();
    }
    let event =
        outflow_outbox::OutboxEvent::new("order", "123", "OrderCreated", json!({"total": 42.5}))
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let tx = client.transaction().await.unwrap();
    outflow_outbox::write_and_delete(&tx, &table, &event)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (events, checkpoint) = source.next_tx().await;
    assert_eq!(events.len(), 1, "{events:#?}");
    let e = &events[0];
    assert_eq!(e.id, event.id.to_string());
    assert_eq!(e.op, Op::Insert);
    assert_eq!(
        (e.aggregate_type.as_str(), e.aggregate_id.as_str()),
        ("order", "123")
    );
    assert_eq!(e.event_type, "OrderCreated");
    assert_eq!(e.payload, json!({"total": 42.5}).into());
    assert_eq!(
        e.headers.get("traceparent").map(String::as_str),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(e.key, Some(json!({"id": event.id.to_string()}).into()));
    assert!(e.source.txid.is_some() && e.source.commit_time.is_some());

    // Updates are dropped; a text payload is passed as a string.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO text_outbox VALUES ('t-1', 'user', 'u1', 'UserRenamed', 'not json');
             UPDATE text_outbox SET type = 'Changed' WHERE id = 't-1';
             COMMIT;",
        )
        .await
        .unwrap();
    let (events, checkpoint2) = source.next_tx().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].id, "t-1");
    assert_eq!(events[0].payload, json!("not json").into());
    assert_eq!(events[0].source.collection, "public.text_outbox");
    assert!(lsn(&checkpoint2) > lsn(&checkpoint));

    // Committing moves the slot.
    source.commit(&checkpoint2);
    for _ in 0..100 {
        if confirmed_flush(&client, &slot)
            .await
            .is_some_and(|c| lsn(&c) >= lsn(&checkpoint2))
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(lsn(&confirmed_flush(&client, &slot).await.unwrap()) >= lsn(&checkpoint2));
    source.stop().await.unwrap();
}

#[tokio::test]
async fn message_mode_delivers_transactional_messages_with_the_prefix() {
    let db = outflow_testkit::fresh_database("pg_message").await;
    let mut client = db.connect().await;
    let c = config(&db.url(), Mode::Message, &[]);
    let mut source = start(c, "msgs", 64);
    wait_for_slot(&client, &source).await;

    let aborted = outflow_outbox::OutboxEvent::new("order", "0", "Never", json!(null));
    let tx = client.transaction().await.unwrap();
    outflow_outbox::emit_message(&tx, "outbox", &aborted)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    client
        .batch_execute(
            "SELECT pg_logical_emit_message(false, 'outbox', '{\"not\": \"transactional\"}');
             SELECT pg_logical_emit_message(true, 'other', '{}');",
        )
        .await
        .unwrap();
    let event = outflow_outbox::OutboxEvent::new("order", "7", "OrderShipped", json!({"n": 1}))
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    let second = outflow_outbox::OutboxEvent::new("order", "8", "OrderShipped", json!([1, 2]));
    let tx = client.transaction().await.unwrap();
    outflow_outbox::emit_message(&tx, "outbox", &event)
        .await
        .unwrap();
    outflow_outbox::emit_message(&tx, "outbox", &second)
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let (events, _) = source.next_tx().await;
    assert_eq!(events.len(), 2, "{events:#?}");
    assert_eq!(events[0].id, event.id.to_string());
    assert_eq!(events[0].op, Op::Message);
    assert_eq!(events[0].aggregate_id, "7");
    assert_eq!(events[0].payload, json!({"n": 1}).into());
    assert_eq!(events[0].source.collection, "outbox");
    assert_eq!(
        events[0].headers.get("traceparent").map(String::as_str),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(events[1].id, second.id.to_string());
    assert_eq!(events[1].payload, json!([1, 2]).into());
    source.stop().await.unwrap();
}

#[tokio::test]
async fn table_mode_replica_identity_default_and_full() {
    let db = outflow_testkit::fresh_database("pg_identity").await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE plain (id int PRIMARY KEY, note text);
             CREATE TABLE fullrows (a int, b text, note text, PRIMARY KEY (a, b));
             ALTER TABLE fullrows REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Table, &["plain", "public.fullrows"]);
    let mut source = start(c, "cdc", 64);
    wait_for_slot(&client, &source).await;
    client
        .batch_execute(
            "INSERT INTO plain VALUES (1, 'one');
             UPDATE plain SET note = 'uno' WHERE id = 1;
             UPDATE plain SET id = 2 WHERE id = 1;
             DELETE FROM plain WHERE id = 2;
             INSERT INTO fullrows VALUES (1, 'x', 'first');
             UPDATE fullrows SET note = 'second' WHERE a = 1;
             DELETE FROM fullrows WHERE a = 1;",
        )
        .await
        .unwrap();
    let events = source.events(7).await;
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(
        ops,
        [
            Op::Insert,
            Op::Update,
            Op::Update,
            Op::Delete,
            Op::Insert,
            Op::Update,
            Op::Delete
        ]
    );
    // DEFAULT: no before image unless the key changed; deletes carry the key only.
    assert_eq!(events[1].before, None);
    assert_eq!(
        events[1].after,
        Some(json!({"id": 1, "note": "uno"}).into())
    );
    assert_eq!(events[2].before, Some(json!({"id": 1}).into()));
    assert_eq!(events[2].aggregate_id, "2");
    assert_eq!(events[3].before, Some(json!({"id": 2}).into()));
    assert_eq!(events[3].after, None);
    assert_eq!(events[3].payload, json!({"id": 2}).into());
    assert_eq!(events[3].event_type, "public.plain.delete");
    // FULL: whole old rows; the key is the primary key, joined with ':'.
    assert_eq!(
        events[5].before,
        Some(json!({"a": 1, "b": "x", "note": "first"}).into())
    );
    assert_eq!(events[5].key, Some(json!({"a": 1, "b": "x"}).into()));
    assert_eq!(events[5].aggregate_id, "1:x");
    assert_eq!(
        events[6].before,
        Some(json!({"a": 1, "b": "x", "note": "second"}).into())
    );
    // Positions and ids: unique, derived from the position.
    for e in &events {
        assert_eq!(
            e.id,
            event_id_from_position("cdc", None, &e.source.position)
        );
    }
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 7);
    source.stop().await.unwrap();
}

#[tokio::test]
async fn unchanged_toast_truncate_and_schema_change() {
    let db = outflow_testkit::fresh_database("pg_toast").await;
    let client = db.connect().await;
    client
        .batch_execute(
            "CREATE TABLE docs (id int PRIMARY KEY, big text, counter int);
             ALTER TABLE docs ALTER COLUMN big SET STORAGE EXTERNAL;",
        )
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Table, &["public.docs"]);
    let mut source = start(c, "docs", 64);
    wait_for_slot(&client, &source).await;
    client
        .batch_execute(
            "INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 0
               FROM generate_series(1, 500) i;
             UPDATE docs SET counter = 1 WHERE id = 1;",
        )
        .await
        .unwrap();
    let events = source.events(2).await;
    let big = events[0].after.as_ref().unwrap().to_value().unwrap()["big"]
        .as_str()
        .unwrap()
        .len();
    assert_eq!(big, 500 * 32);
    assert_eq!(events[1].after, Some(json!({"id": 1, "counter": 1}).into()));
    assert_eq!(events[1].source.unchanged_columns, vec!["big".to_string()]);

    client.batch_execute("TRUNCATE docs").await.unwrap();
    let (events, _) = source.next_tx().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].op, Op::Truncate);
    assert_eq!(events[0].event_type, "public.docs.truncate");
    assert_eq!(events[0].source.collection, "public.docs");

    client
        .batch_execute(
            "INSERT INTO docs VALUES (2, 'b', 2);
             ALTER TABLE docs ADD COLUMN tags text[] DEFAULT '{a}';
             INSERT INTO docs VALUES (3, 'c', 3, '{x,y}');
             ALTER TABLE docs DROP COLUMN big;
             INSERT INTO docs VALUES (4, 4);",
        )
        .await
        .unwrap();
    let events = source.events(3).await;
    assert_eq!(
        events[0].after,
        Some(json!({"id": 2, "big": "b", "counter": 2}).into())
    );
    assert_eq!(
        events[1].after,
        Some(json!({"id": 3, "big": "c", "counter": 3, "tags": ["x", "y"]}).into())
    );
    assert_eq!(
        events[2].after,
        Some(json!({"id": 4, "counter": 4, "tags": ["a"]}).into())
    );
    source.stop().await.unwrap();
}

#[tokio::test]
async fn a_large_transaction_streams_through_a_small_pipeline() {
    let db = outflow_testkit::fresh_database("pg_large").await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE big (id int PRIMARY KEY, filler text)")
        .await
        .unwrap();
    let mut c = config(&db.url(), Mode::Table, &["public.big"]);
    c.read_ahead = 16;
    let mut source = start(c, "large", 16);
    wait_for_slot(&client, &source).await;
    const ROWS: i64 = 60_000;
    // About 30 MB of row data in one transaction.
    client
        .batch_execute(&format!(
            "INSERT INTO big SELECT i, repeat(md5(i::text), 16) FROM generate_series(1, {ROWS}) i"
        ))
        .await
        .unwrap();
    let commit: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);

    // Take the first events, then hold the pipeline full for a while.
    let first = source.events(10).await;
    assert_eq!(
        first[0].after.as_ref().unwrap().to_value().unwrap()["id"],
        json!(1)
    );
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    // The server is still sending the transaction: its walsender has not got past the
    // commit, so outflow never read (or held) the transaction whole.
    let sent: String = client
        .query_one(
            "SELECT sent_lsn::text FROM pg_stat_replication WHERE application_name = 'outflow large'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        lsn(&sent) < lsn(&commit),
        "walsender sent up to {sent}, commit at {commit}: the transaction was read whole"
    );
    let mut expected = 11;
    let mut checkpoint = None;
    while checkpoint.is_none() {
        match source.item().await {
            outflow_core::SourceItem::Event(e) => {
                assert_eq!(
                    e.after.as_ref().unwrap().to_value().unwrap()["id"],
                    json!(expected)
                );
                expected += 1;
            }
            outflow_core::SourceItem::Checkpoint(c) => checkpoint = Some(c.position),
        }
    }
    assert_eq!(expected - 1, ROWS);
    // The checkpoint is the transaction's commit: at or past the commit LSN its events
    // carry (the first two parts of their position), and not past the WAL position read
    // after the commit. Other tests write WAL to the same server meanwhile, so the gap
    // between those two is not fixed.
    let mut parts = first[0].source.position.split('/');
    let tx_commit = lsn(&format!(
        "{}/{}",
        parts.next().unwrap(),
        parts.next().unwrap()
    ));
    let checkpoint = checkpoint.unwrap();
    assert!(
        lsn(&checkpoint) >= tx_commit && lsn(&checkpoint) <= lsn(&commit),
        "checkpoint {checkpoint} outside [commit of the events {tx_commit:X}, WAL after it {commit}]"
    );
    source.stop().await.unwrap();
}

#[tokio::test]
async fn a_restart_resumes_after_the_last_commit_with_the_same_ids() {
    let db = outflow_testkit::fresh_database("pg_resume").await;
    let client = db.connect().await;
    client
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY)")
        .await
        .unwrap();
    let c = config(&db.url(), Mode::Table, &["public.items"]);
    let slot = c.slot.clone();
    let mut source = start(c.clone(), "resume", 64);
    wait_for_slot(&client, &source).await;
    for tx in 0..5 {
        client
            .batch_execute(&format!(
                "BEGIN; INSERT INTO items VALUES ({0}), ({0} + 100); COMMIT;",
                tx
            ))
            .await
            .unwrap();
    }
    let mut txs = Vec::new();
    for _ in 0..5 {
        txs.push(source.next_tx().await);
    }
    // The pipeline acknowledged up to the second transaction only.
    source.commit(&txs[1].1);
    source.stop().await.unwrap();
    assert_eq!(
        confirmed_flush(&client, &slot).await.as_deref(),
        Some(txs[1].1.as_str())
    );

    let mut again = start(c, "resume", 64);
    for expected in &txs[2..] {
        let (events, checkpoint) = again.next_tx().await;
        assert_eq!(&checkpoint, &expected.1);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let before: Vec<&str> = expected.0.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, before);
        assert_eq!(events, expected.0);
    }
    // Nothing else: a new transaction is next.
    client
        .batch_execute("INSERT INTO items VALUES (999)")
        .await
        .unwrap();
    let (events, _) = again.next_tx().await;
    assert_eq!(events[0].after, Some(json!({"id": 999}).into()));
    again.stop().await.unwrap();
}
