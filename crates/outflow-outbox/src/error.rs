use tokio_postgres::error::{DbError, SqlState};
use uuid::Uuid;

/// Everything that can go wrong while creating the outbox table or writing an event.
///
/// Errors that come from the database carry the [`tokio_postgres::Error`] as their
/// [`source`](std::error::Error::source); [`OutboxError::code`] gives its SQLSTATE so a
/// caller can retry its whole transaction on a serialization failure or a deadlock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// A schema, table or column name cannot be used as a Postgres identifier.
    #[error("invalid {what} name {name:?}: {reason}")]
    InvalidIdentifier {
        /// Which name it is: `schema`, `table` or `<field> column`.
        what: String,
        /// The name as given.
        name: String,
        /// What is wrong with it and how to fix it.
        reason: String,
    },

    /// An event cannot be written as it is; the same event will always fail.
    #[error("invalid outbox event {id}: {field} {reason}")]
    InvalidEvent {
        /// The id of the event.
        id: Uuid,
        /// The field at fault (`aggregate_type`, `aggregate_id`, `event_type`, `payload`
        /// or `traceparent`).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The prefix given to [`emit_message`](crate::emit_message) cannot be used.
    #[error("invalid logical decoding message prefix {prefix:?}: {reason}")]
    InvalidPrefix {
        /// The prefix as given.
        prefix: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The statement that creates the outbox table failed.
    #[error("cannot create outbox table {table}")]
    CreateTable {
        /// The quoted, schema-qualified table name.
        table: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The outbox table could not be inspected after creating it.
    #[error("cannot inspect the columns of outbox table {table}")]
    InspectTable {
        /// The quoted, schema-qualified table name.
        table: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// A table of that name already exists but lacks columns that writes need, or has
    /// them with other types.
    #[error("outbox table {table} exists but does not fit: {problems}")]
    TableMismatch {
        /// The quoted, schema-qualified table name.
        table: String,
        /// Every problem found, joined by `; `.
        problems: String,
    },

    /// Inserting the event's row failed.
    #[error("cannot write outbox event {id} to {table}")]
    Write {
        /// The id of the event.
        id: Uuid,
        /// The quoted, schema-qualified table name.
        table: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Deleting the event's row again (in [`write_and_delete`](crate::write_and_delete))
    /// failed.
    #[error("cannot delete outbox event {id} from {table}")]
    Delete {
        /// The id of the event.
        id: Uuid,
        /// The quoted, schema-qualified table name.
        table: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The delete in [`write_and_delete`](crate::write_and_delete) did not find the row
    /// that was just inserted, which means something else deleted it concurrently.
    #[error("outbox event {id} was not found in {table} right after inserting it")]
    RowVanished {
        /// The id of the event.
        id: Uuid,
        /// The quoted, schema-qualified table name.
        table: String,
    },

    /// Encoding the event as the JSON content of a logical decoding message failed.
    #[error("cannot encode outbox event {id} as JSON")]
    Encode {
        /// The id of the event.
        id: Uuid,
        /// The encoding error.
        #[source]
        source: serde_json::Error,
    },

    /// `pg_logical_emit_message` failed.
    #[error("cannot emit outbox event {id} as a logical decoding message with prefix {prefix:?}")]
    Emit {
        /// The id of the event.
        id: Uuid,
        /// The message prefix.
        prefix: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// Deleting old rows in [`purge_older_than`](crate::purge_older_than) failed.
    #[error("cannot purge old events from outbox table {table}")]
    Purge {
        /// The quoted, schema-qualified table name.
        table: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl OutboxError {
    /// The database's own error, when the failure was reported by the server.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            OutboxError::CreateTable { source, .. }
            | OutboxError::InspectTable { source, .. }
            | OutboxError::Write { source, .. }
            | OutboxError::Delete { source, .. }
            | OutboxError::Emit { source, .. }
            | OutboxError::Purge { source, .. } => source.as_db_error(),
            _ => None,
        }
    }

    /// The SQLSTATE of the server's error, if any.
    ///
    /// A caller typically retries its whole transaction when this is
    /// [`SqlState::T_R_SERIALIZATION_FAILURE`] or [`SqlState::T_R_DEADLOCK_DETECTED`]; a
    /// [`SqlState::UNIQUE_VIOLATION`] on a write means an event with the same id exists.
    pub fn code(&self) -> Option<&SqlState> {
        self.db_error().map(DbError::code)
    }
}
