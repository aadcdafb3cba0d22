//! Writing events inside the caller's transaction.

use std::time::Duration;

use tokio_postgres::types::{PgLsn, ToSql, Type};
use tokio_postgres::{GenericClient, Transaction};
use tracing::trace;
use uuid::Uuid;

use crate::{OutboxError, OutboxEvent, OutboxTable};

/// The prefix of logical decoding messages unless one is given: the prefix outflow's
/// Postgres connector treats as outbox events by default.
pub const DEFAULT_MESSAGE_PREFIX: &str = "outbox";

/// The six insert parameters in statement order, with their types.
///
/// Giving the types lets tokio-postgres send parse, bind and execute in one message (one
/// round trip, no named statement left on the connection) instead of preparing first.
fn insert_params(event: &OutboxEvent) -> [(&(dyn ToSql + Sync), Type); 6] {
    [
        (&event.id, Type::UUID),
        (&event.aggregate_type, Type::TEXT),
        (&event.aggregate_id, Type::TEXT),
        (&event.event_type, Type::TEXT),
        (payload_param(event), Type::JSONB),
        (&event.traceparent, Type::TEXT),
    ]
}

/// The payload parameter: SQL `NULL` for [`serde_json::Value::Null`], else the value.
fn payload_param(event: &OutboxEvent) -> &(dyn ToSql + Sync) {
    // A constant, so the reference is 'static.
    const NULL: Option<&serde_json::Value> = None;
    match event.payload {
        serde_json::Value::Null => &NULL,
        _ => &event.payload,
    }
}

/// Inserts `event` into the outbox table inside the caller's transaction `tx`, and
/// returns its id.
///
/// The row commits or aborts with everything else `tx` writes: that is the point of the
/// outbox. Write the business change and its event in the same transaction, and never
/// publish to a broker directly from the application (a crash between the two writes
/// loses one of them).
///
/// One round trip: the statement text is built once per [`OutboxTable`] and sent with
/// typed parameters, so nothing is prepared separately. A second event with the same id
/// fails with a unique violation ([`OutboxError::code`]), which leaves `tx` aborted.
///
/// ```no_run
/// use outflow_outbox::{OutboxEvent, OutboxTable};
/// use serde_json::json;
///
/// # async fn run(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let table = OutboxTable::default();
/// let tx = client.transaction().await?;
/// tx.execute("insert into orders (id, total) values ($1, $2)", &[&123_i64, &42.5_f64])
///     .await?;
/// let event = OutboxEvent::new("order", "123", "OrderCreated", json!({"id": 123, "total": 42.5}));
/// outflow_outbox::write(&tx, &table, &event).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn write(
    tx: &Transaction<'_>,
    table: &OutboxTable,
    event: &OutboxEvent,
) -> Result<Uuid, OutboxError> {
    event.validate()?;
    tx.execute_typed(table.insert_sql(), &insert_params(event))
        .await
        .map_err(|source| write_error(table, event, source))?;
    trace!(table = %table.qualified_name(), id = %event.id, "outbox event written");
    Ok(event.id)
}

/// Inserts `event` and deletes it again, both inside `tx`, and returns its id.
///
/// The table stays empty, so it needs no cleanup, yet the write-ahead log still carries
/// the insert, which outflow delivers; outflow drops deletes of outbox rows. The two
/// statements are pipelined, so this also costs one round trip.
///
/// ```no_run
/// use outflow_outbox::{OutboxEvent, OutboxTable};
///
/// # async fn run(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let tx = client.transaction().await?;
/// let event = OutboxEvent::new("order", "123", "OrderShipped", serde_json::json!({"id": 123}));
/// outflow_outbox::write_and_delete(&tx, &OutboxTable::default(), &event).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn write_and_delete(
    tx: &Transaction<'_>,
    table: &OutboxTable,
    event: &OutboxEvent,
) -> Result<Uuid, OutboxError> {
    event.validate()?;
    let params = insert_params(event);
    // tokio-postgres sends a request when its future is first polled, and `join` polls
    // the insert first: both go out in one round trip and the server runs them in order.
    let (inserted, deleted) = futures::future::join(
        tx.execute_typed(table.insert_sql(), &params),
        tx.execute_typed(table.delete_sql(), &[(&event.id, Type::UUID)]),
    )
    .await;
    inserted.map_err(|source| write_error(table, event, source))?;
    let deleted = deleted.map_err(|source| delete_error(table, event, source))?;
    check_deleted(table, event, deleted)
}

fn check_deleted(
    table: &OutboxTable,
    event: &OutboxEvent,
    deleted: u64,
) -> Result<Uuid, OutboxError> {
    if deleted != 1 {
        return Err(OutboxError::RowVanished {
            id: event.id,
            table: table.qualified_name().to_owned(),
        });
    }
    trace!(table = %table.qualified_name(), id = %event.id, "outbox event written and deleted");
    Ok(event.id)
}

fn write_error(
    table: &OutboxTable,
    event: &OutboxEvent,
    source: tokio_postgres::Error,
) -> OutboxError {
    OutboxError::Write {
        id: event.id,
        table: table.qualified_name().to_owned(),
        source,
    }
}

fn delete_error(
    table: &OutboxTable,
    event: &OutboxEvent,
    source: tokio_postgres::Error,
) -> OutboxError {
    OutboxError::Delete {
        id: event.id,
        table: table.qualified_name().to_owned(),
        source,
    }
}

/// Sends `event` as a transactional logical decoding message, with
/// `pg_logical_emit_message(true, prefix, content)`, instead of writing a table row;
/// returns the position of the message record in the write-ahead log.
///
/// The message is decoded only if `tx` commits, at its place in the transaction, and
/// nothing is stored in any table. The content is the JSON of
/// [`OutboxEvent::message_content`]; see the [crate docs](crate) for its exact shape.
/// Use [`DEFAULT_MESSAGE_PREFIX`] unless outflow is configured for another prefix.
///
/// Needs `wal_level = logical` on the server for anyone to decode the message.
///
/// ```no_run
/// use outflow_outbox::{OutboxEvent, DEFAULT_MESSAGE_PREFIX};
///
/// # async fn run(client: &mut tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let tx = client.transaction().await?;
/// let event = OutboxEvent::new("order", "123", "OrderPaid", serde_json::json!({"id": 123}));
/// let lsn = outflow_outbox::emit_message(&tx, DEFAULT_MESSAGE_PREFIX, &event).await?;
/// tx.commit().await?;
/// println!("event {} at {lsn}", event.id);
/// # Ok(())
/// # }
/// ```
pub async fn emit_message(
    tx: &Transaction<'_>,
    prefix: &str,
    event: &OutboxEvent,
) -> Result<PgLsn, OutboxError> {
    if prefix.is_empty() {
        return Err(OutboxError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason: "it is empty; use DEFAULT_MESSAGE_PREFIX (\"outbox\") or the prefix outflow \
                     is configured with",
        });
    }
    if prefix.contains('\0') {
        return Err(OutboxError::InvalidPrefix {
            prefix: prefix.to_owned(),
            reason: "it contains a NUL character, which Postgres text cannot hold",
        });
    }
    event.validate()?;
    let content = event.message_content()?;
    let emit_error = |source| OutboxError::Emit {
        id: event.id,
        prefix: prefix.to_owned(),
        source,
    };
    let row = tx
        .query_typed_one(
            "select pg_logical_emit_message(true, $1, $2)",
            &[(&prefix, Type::TEXT), (&content, Type::TEXT)],
        )
        .await
        .map_err(emit_error)?;
    let lsn: PgLsn = row.try_get(0).map_err(emit_error)?;
    trace!(prefix = %prefix, id = %event.id, lsn = %lsn, "outbox message emitted");
    Ok(lsn)
}

/// Deletes the rows of the outbox table whose `created_at` is older than `age`, and
/// returns how many it deleted.
///
/// Run it now and then when events are written with [`write()`] (which leaves rows
/// behind): outflow drops deletes of outbox rows, so purging emits no events. Choose an
/// `age` longer than outflow may lag behind, although a row already in the write-ahead
/// log is delivered whether or not it still exists.
///
/// ```no_run
/// # async fn run(client: &tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let table = outflow_outbox::OutboxTable::default();
/// let day = std::time::Duration::from_secs(24 * 60 * 60);
/// let purged = outflow_outbox::purge_older_than(client, &table, day).await?;
/// # Ok(())
/// # }
/// ```
pub async fn purge_older_than<C>(
    client: &C,
    table: &OutboxTable,
    age: Duration,
) -> Result<u64, OutboxError>
where
    C: GenericClient + Sync,
{
    let seconds = age.as_secs_f64();
    let purged = client
        .execute_typed(table.purge_sql(), &[(&seconds, Type::FLOAT8)])
        .await
        .map_err(|source| OutboxError::Purge {
            table: table.qualified_name().to_owned(),
            source,
        })?;
    trace!(table = %table.qualified_name(), purged, "outbox purged");
    Ok(purged)
}
