//! The producer side of the transactional outbox, for services that use tokio-postgres.
//!
//! A service must not write to its database and then publish to a broker: a crash
//! between the two loses the event or publishes one for a change that never committed.
//! Instead it writes the event into its own database, **in the same transaction as the
//! business change**, and outflow reads the committed event from the write-ahead log and
//! delivers it. This crate does the writing; outflow's Postgres connector does the rest.
//!
//! There are two ways to write an event, and outflow decodes both into the same
//! envelope:
//!
//! 1. **A row in the outbox table**, with [`write()`] (the row stays; remove old rows with
//!    [`purge_older_than`]) or [`write_and_delete`] (the row is deleted again in the same
//!    transaction, so the table stays empty while the write-ahead log still carries the
//!    insert). Create the table with [`ensure_table`]; see [`create_table_sql`] for its
//!    columns, which are Debezium-compatible by default.
//! 2. **A transactional logical decoding message**, with [`emit_message`]:
//!    `pg_logical_emit_message(true, prefix, content)`. No table at all; the message is
//!    decoded only if the transaction commits. Needs `wal_level = logical`.
//!
//! # The message content
//!
//! With [`emit_message`], the message prefix is [`DEFAULT_MESSAGE_PREFIX`] (`outbox`)
//! unless you choose another, and the content is one JSON object (UTF-8 text) with
//! exactly these keys, named like the outbox table's default columns:
//!
//! ```json
//! {
//!   "id": "0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d",
//!   "aggregatetype": "order",
//!   "aggregateid": "123",
//!   "type": "OrderCreated",
//!   "payload": {"orderId": 123, "total": 42.5},
//!   "tracingspancontext": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
//! }
//! ```
//!
//! - `id`: the event id, a UUID in its hyphenated lowercase form;
//! - `aggregatetype`, `aggregateid`, `type`: non-empty strings;
//! - `payload`: any JSON value, embedded (not a string holding JSON); `null` when the
//!   event has none;
//! - `tracingspancontext`: a W3C `traceparent` string, or `null`.
//!
//! The keys are always all present, in this order, without whitespace between tokens
//! (see [`OutboxEvent::message_content`]).
//!
//! # Example
//!
//! ```no_run
//! use outflow_outbox::{OutboxEvent, OutboxTable};
//! use serde_json::json;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (mut client, connection) =
//!     tokio_postgres::connect("postgres://postgres@127.0.0.1/shop", tokio_postgres::NoTls)
//!         .await?;
//! tokio::spawn(connection);
//!
//! let table = OutboxTable::default();
//! outflow_outbox::ensure_table(&client, &table).await?;
//!
//! let tx = client.transaction().await?;
//! tx.execute("insert into orders (id, total) values ($1, $2)", &[&123_i64, &42.5_f64])
//!     .await?;
//! let event = OutboxEvent::new("order", "123", "OrderCreated", json!({"id": 123, "total": 42.5}));
//! outflow_outbox::write(&tx, &table, &event).await?;
//! tx.commit().await?; // the order and its event commit together, or neither does
//! # Ok(())
//! # }
//! ```
//!
//! # Ids
//!
//! [`OutboxEvent::new`] gives each event a UUID version 7 (uuid crate, feature `v7`): it
//! starts with a millisecond timestamp, so new ids land at the end of the primary key
//! index rather than at random places, which keeps inserts cheap on a busy table. The id
//! is the consumers' deduplication key; set your own with [`OutboxEvent::id`].

mod error;
mod event;
mod table;
mod write;

pub use error::OutboxError;
pub use event::OutboxEvent;
pub use table::{
    create_table_sql, ensure_table, quote_identifier, OutboxColumns, OutboxTable, DDL_LOCK_KEY,
    DEFAULT_SCHEMA, DEFAULT_TABLE, MAX_IDENTIFIER_BYTES,
};
pub use tokio_postgres::types::PgLsn;
pub use write::{emit_message, purge_older_than, write, write_and_delete, DEFAULT_MESSAGE_PREFIX};
