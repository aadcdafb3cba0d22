//! The outbox table: its names, its DDL, and the statements that write to it.

use serde::{Deserialize, Serialize};
use tokio_postgres::GenericClient;
use tracing::debug;

use crate::OutboxError;

/// The schema of the outbox table unless configured: qualifying the name keeps writes
/// independent of each session's `search_path`.
pub const DEFAULT_SCHEMA: &str = "public";

/// The outbox table's name unless configured: the name Debezium's outbox router and
/// outflow's Postgres connector look for by default.
pub const DEFAULT_TABLE: &str = "outbox";

/// The longest identifier Postgres keeps (NAMEDATALEN - 1 bytes in a default build);
/// longer names are truncated silently by the server, so they are rejected here instead.
pub const MAX_IDENTIFIER_BYTES: usize = 63;

/// Advisory lock key taken while creating an outbox table, so that several service
/// instances starting at once do not race on `create table if not exists` (which can
/// fail with a unique violation in the catalog when two sessions run it concurrently).
/// The value is the ASCII of `outflowx`, chosen to be unlikely to collide.
pub const DDL_LOCK_KEY: i64 = 0x6f75_7466_6c6f_7778;

/// Quotes `name` as a Postgres identifier: wraps it in double quotes and doubles any
/// double quote inside, so that no name can end the identifier early.
///
/// The name is used exactly as given: quoted identifiers are case sensitive, so
/// `Outbox` and `outbox` are different tables.
///
/// ```
/// assert_eq!(outflow_outbox::quote_identifier("outbox"), r#""outbox""#);
/// assert_eq!(outflow_outbox::quote_identifier(r#"a"b"#), r#""a""b""#);
/// ```
pub fn quote_identifier(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Checks that `name` can be a Postgres identifier as it is, without truncation.
fn validate_identifier(what: &str, name: &str) -> Result<(), OutboxError> {
    let problem = if name.is_empty() {
        Some("it is empty; give a non-empty name".to_owned())
    } else if name.contains('\0') {
        Some("it contains a NUL character, which Postgres does not allow in names".to_owned())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "it is {} bytes long; Postgres would silently cut it to {MAX_IDENTIFIER_BYTES} \
             bytes, so use a shorter name",
            name.len()
        ))
    } else {
        None
    };
    match problem {
        Some(reason) => Err(OutboxError::InvalidIdentifier {
            what: what.to_owned(),
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// The names of the outbox table's columns.
///
/// The defaults are those of Debezium's outbox event router, which outflow's Postgres
/// connector also uses, so a table created with the defaults needs no configuration on
/// either side. Names are used exactly as given (quoted, so case sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxColumns {
    /// The event id column, `uuid primary key`. It becomes the envelope's `id` and is the
    /// consumers' deduplication key. Default `id`.
    pub id: String,
    /// The aggregate type column, `text not null`, e.g. `order`; used for routing
    /// (`outbox.event.{aggregate_type}`). Default `aggregatetype`.
    pub aggregate_type: String,
    /// The aggregate id column, `text not null`, e.g. `123`; the default Kafka key, so
    /// events of one aggregate stay in order. Default `aggregateid`.
    pub aggregate_id: String,
    /// The event type column, `text not null`, e.g. `OrderCreated`. Default `type`.
    pub event_type: String,
    /// The payload column, `jsonb`, nullable. Default `payload`.
    pub payload: String,
    /// The insertion time column, `timestamptz not null default now()`. Writes leave it
    /// to its default; [`purge_older_than`](crate::purge_older_than) reads it. Default
    /// `created_at`.
    pub created_at: String,
    /// The W3C `traceparent` column, `text`, nullable; delivered as the `traceparent`
    /// header. Default `tracingspancontext`. (Named `tracing` like the matching key of the
    /// Postgres source's `outbox` settings.)
    pub tracing: String,
}

impl Default for OutboxColumns {
    fn default() -> Self {
        OutboxColumns {
            id: "id".to_owned(),
            aggregate_type: "aggregatetype".to_owned(),
            aggregate_id: "aggregateid".to_owned(),
            event_type: "type".to_owned(),
            payload: "payload".to_owned(),
            created_at: "created_at".to_owned(),
            tracing: "tracingspancontext".to_owned(),
        }
    }
}

impl OutboxColumns {
    /// The columns with the field names used in error messages, in table order.
    fn named(&self) -> [(&'static str, &str); 7] {
        [
            ("id", &self.id),
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
            ("payload", &self.payload),
            ("created_at", &self.created_at),
            ("tracing", &self.tracing),
        ]
    }

    /// Checks every name, and that no two columns share one.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let named = self.named();
        for (i, (field, name)) in named.iter().enumerate() {
            validate_identifier(&format!("{field} column"), name)?;
            if let Some((other, _)) = named[..i].iter().find(|(_, n)| n == name) {
                return Err(OutboxError::InvalidIdentifier {
                    what: format!("{field} column"),
                    name: (*name).to_owned(),
                    reason: format!("the {other} column has the same name; give each a name"),
                });
            }
        }
        Ok(())
    }
}

/// An outbox table: its schema, its name and its column names, with the SQL to create
/// it and to write to it built once.
///
/// ```
/// use outflow_outbox::OutboxTable;
///
/// let table = OutboxTable::new("outbox")?.with_schema("shop")?;
/// assert_eq!(table.qualified_name(), r#""shop"."outbox""#);
/// # Ok::<(), outflow_outbox::OutboxError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxTable {
    schema: String,
    table: String,
    columns: OutboxColumns,
    sql: Sql,
}

/// Statements built from the names, so that a write formats no SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sql {
    qualified: String,
    insert: String,
    delete: String,
    purge: String,
}

impl Sql {
    fn build(schema: &str, table: &str, c: &OutboxColumns) -> Sql {
        let qualified = format!("{}.{}", quote_identifier(schema), quote_identifier(table));
        let insert = format!(
            "insert into {qualified} ({}, {}, {}, {}, {}, {}) values ($1, $2, $3, $4, $5, $6)",
            quote_identifier(&c.id),
            quote_identifier(&c.aggregate_type),
            quote_identifier(&c.aggregate_id),
            quote_identifier(&c.event_type),
            quote_identifier(&c.payload),
            quote_identifier(&c.tracing),
        );
        let delete = format!(
            "delete from {qualified} where {} = $1",
            quote_identifier(&c.id)
        );
        let purge = format!(
            "delete from {qualified} where {} < now() - make_interval(secs => $1)",
            quote_identifier(&c.created_at)
        );
        Sql {
            qualified,
            insert,
            delete,
            purge,
        }
    }
}

impl Default for OutboxTable {
    /// `"public"."outbox"` with the default columns.
    fn default() -> Self {
        let columns = OutboxColumns::default();
        OutboxTable {
            sql: Sql::build(DEFAULT_SCHEMA, DEFAULT_TABLE, &columns),
            schema: DEFAULT_SCHEMA.to_owned(),
            table: DEFAULT_TABLE.to_owned(),
            columns,
        }
    }
}

impl OutboxTable {
    /// The table `table` in schema [`DEFAULT_SCHEMA`] with the default columns.
    ///
    /// `table` is one identifier, used exactly as given: it is not split at dots (use
    /// [`with_schema`](Self::with_schema) for the schema) and not folded to lower case.
    /// It fails when the name is empty, contains a NUL character, or is longer than
    /// [`MAX_IDENTIFIER_BYTES`].
    pub fn new(table: &str) -> Result<OutboxTable, OutboxError> {
        validate_identifier("table", table)?;
        let columns = OutboxColumns::default();
        Ok(OutboxTable {
            sql: Sql::build(DEFAULT_SCHEMA, table, &columns),
            schema: DEFAULT_SCHEMA.to_owned(),
            table: table.to_owned(),
            columns,
        })
    }

    /// The same table in another schema (which must exist already).
    pub fn with_schema(mut self, schema: &str) -> Result<OutboxTable, OutboxError> {
        validate_identifier("schema", schema)?;
        self.schema = schema.to_owned();
        self.sql = Sql::build(&self.schema, &self.table, &self.columns);
        Ok(self)
    }

    /// The same table with other column names.
    pub fn with_columns(mut self, columns: OutboxColumns) -> Result<OutboxTable, OutboxError> {
        columns.validate()?;
        self.columns = columns;
        self.sql = Sql::build(&self.schema, &self.table, &self.columns);
        Ok(self)
    }

    /// The schema name, unquoted.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name, unquoted.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The column names.
    pub fn columns(&self) -> &OutboxColumns {
        &self.columns
    }

    /// The quoted, schema-qualified name, e.g. `"public"."outbox"`.
    pub fn qualified_name(&self) -> &str {
        &self.sql.qualified
    }

    /// The insert statement: parameters `$1`..`$6` are id, aggregate type, aggregate id,
    /// event type, payload and traceparent.
    pub fn insert_sql(&self) -> &str {
        &self.sql.insert
    }

    /// The delete-by-id statement: parameter `$1` is the id.
    pub fn delete_sql(&self) -> &str {
        &self.sql.delete
    }

    pub(crate) fn purge_sql(&self) -> &str {
        &self.sql.purge
    }

    /// The `create table if not exists` statement for this table.
    ///
    /// The table needs no special replica identity: in outbox mode only inserts matter
    /// (deletes are dropped and updates ignored), and an insert always carries the whole
    /// new row, so the default `REPLICA IDENTITY DEFAULT` (the primary key) is enough.
    ///
    /// ```
    /// let sql = outflow_outbox::OutboxTable::default().create_table_sql();
    /// assert!(sql.starts_with(r#"create table if not exists "public"."outbox" ("#));
    /// assert!(sql.contains(r#""payload" jsonb,"#));
    /// ```
    pub fn create_table_sql(&self) -> String {
        let c = &self.columns;
        format!(
            "create table if not exists {} (\n    \
             {} uuid primary key,\n    \
             {} text not null,\n    \
             {} text not null,\n    \
             {} text not null,\n    \
             {} jsonb,\n    \
             {} timestamptz not null default now(),\n    \
             {} text\n)",
            self.sql.qualified,
            quote_identifier(&c.id),
            quote_identifier(&c.aggregate_type),
            quote_identifier(&c.aggregate_id),
            quote_identifier(&c.event_type),
            quote_identifier(&c.payload),
            quote_identifier(&c.created_at),
            quote_identifier(&c.tracing),
        )
    }
}

/// The `create table if not exists` statement for an outbox table named `table` in
/// schema [`DEFAULT_SCHEMA`], with the default (Debezium-compatible) columns:
///
/// ```sql
/// create table if not exists "public"."outbox" (
///     "id" uuid primary key,
///     "aggregatetype" text not null,
///     "aggregateid" text not null,
///     "type" text not null,
///     "payload" jsonb,
///     "created_at" timestamptz not null default now(),
///     "tracingspancontext" text
/// )
/// ```
///
/// `REPLICA IDENTITY DEFAULT` is enough for outbox mode; see
/// [`OutboxTable::create_table_sql`]. The name is validated and quoted, so any name is
/// safe to pass; it fails only for names Postgres cannot keep (see [`OutboxTable::new`]).
///
/// ```
/// let sql = outflow_outbox::create_table_sql("outbox")?;
/// assert!(sql.contains(r#""id" uuid primary key"#));
/// # Ok::<(), outflow_outbox::OutboxError>(())
/// ```
pub fn create_table_sql(table: &str) -> Result<String, OutboxError> {
    Ok(OutboxTable::new(table)?.create_table_sql())
}

/// Expected type of each column that writes use, as `information_schema.columns` names
/// it, with the alternatives that also work.
fn expected_types(c: &OutboxColumns) -> [(&str, &'static [&'static str]); 6] {
    [
        (&c.id, &["uuid"]),
        (&c.aggregate_type, &["text", "character varying"]),
        (&c.aggregate_id, &["text", "character varying"]),
        (&c.event_type, &["text", "character varying"]),
        (&c.payload, &["jsonb", "json"]),
        (&c.tracing, &["text", "character varying"]),
    ]
}

/// Creates the outbox table if it does not exist, then checks that the table (new or
/// old) has every column that writes use, with a fitting type.
///
/// Safe to run at every start of every instance: the creation holds a transaction-scoped
/// advisory lock ([`DDL_LOCK_KEY`]) so concurrent starts do not race. Pass a
/// [`Client`](tokio_postgres::Client) (the statements then run in their own implicit
/// transaction) or a [`Transaction`](tokio_postgres::Transaction) (they join it, and the
/// lock is held until it ends). The schema must exist already.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let (client, connection) =
///     tokio_postgres::connect("postgres://postgres@127.0.0.1/shop", tokio_postgres::NoTls)
///         .await?;
/// tokio::spawn(connection);
/// let table = outflow_outbox::OutboxTable::default();
/// outflow_outbox::ensure_table(&client, &table).await?;
/// # Ok(())
/// # }
/// ```
pub async fn ensure_table<C>(client: &C, table: &OutboxTable) -> Result<(), OutboxError>
where
    C: GenericClient + Sync,
{
    let ddl = format!(
        "select pg_advisory_xact_lock({DDL_LOCK_KEY});\n{};",
        table.create_table_sql()
    );
    client
        .batch_execute(&ddl)
        .await
        .map_err(|source| OutboxError::CreateTable {
            table: table.qualified_name().to_owned(),
            source,
        })?;
    let rows = client
        .query(
            "select column_name::text, data_type::text from information_schema.columns \
             where table_schema = $1 and table_name = $2",
            &[&table.schema, &table.table],
        )
        .await
        .map_err(|source| OutboxError::InspectTable {
            table: table.qualified_name().to_owned(),
            source,
        })?;
    let mut found = Vec::with_capacity(rows.len());
    for row in &rows {
        let name: String = row.try_get(0).map_err(|source| OutboxError::InspectTable {
            table: table.qualified_name().to_owned(),
            source,
        })?;
        let data_type: String = row.try_get(1).map_err(|source| OutboxError::InspectTable {
            table: table.qualified_name().to_owned(),
            source,
        })?;
        found.push((name, data_type));
    }
    let mut problems = Vec::new();
    if found.is_empty() {
        problems.push(
            "the table is not visible in information_schema.columns; grant this role \
             access to it"
                .to_owned(),
        );
    } else {
        for (column, allowed) in expected_types(&table.columns) {
            match found.iter().find(|(name, _)| name == column) {
                None => problems.push(format!("column {} is missing", quote_identifier(column))),
                Some((_, actual)) if !allowed.contains(&actual.as_str()) => problems.push(format!(
                    "column {} has type {actual}, expected {}",
                    quote_identifier(column),
                    allowed.join(" or ")
                )),
                Some(_) => {}
            }
        }
    }
    if !problems.is_empty() {
        return Err(OutboxError::TableMismatch {
            table: table.qualified_name().to_owned(),
            problems: problems.join("; "),
        });
    }
    debug!(table = %table.qualified_name(), "outbox table ready");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_embedded_quotes() {
        assert_eq!(quote_identifier(""), r#""""#);
        assert_eq!(
            quote_identifier(r#"x"; drop table t; --"#),
            r#""x""; drop table t; --""#
        );
        assert_eq!(quote_identifier("Ünïcode"), r#""Ünïcode""#);
    }

    #[test]
    fn default_ddl_is_exact() {
        assert_eq!(
            create_table_sql("outbox").unwrap(),
            "create table if not exists \"public\".\"outbox\" (\n    \
             \"id\" uuid primary key,\n    \
             \"aggregatetype\" text not null,\n    \
             \"aggregateid\" text not null,\n    \
             \"type\" text not null,\n    \
             \"payload\" jsonb,\n    \
             \"created_at\" timestamptz not null default now(),\n    \
             \"tracingspancontext\" text\n)"
        );
        assert_eq!(OutboxTable::default(), OutboxTable::new("outbox").unwrap());
    }

    #[test]
    fn statements_quote_every_name() {
        let table = OutboxTable::new("we\"ird")
            .unwrap()
            .with_schema("S")
            .unwrap()
            .with_columns(OutboxColumns {
                id: "event id".to_owned(),
                ..OutboxColumns::default()
            })
            .unwrap();
        assert_eq!(table.qualified_name(), r#""S"."we""ird""#);
        assert_eq!(
            table.insert_sql(),
            r#"insert into "S"."we""ird" ("event id", "aggregatetype", "aggregateid", "type", "payload", "tracingspancontext") values ($1, $2, $3, $4, $5, $6)"#
        );
        assert_eq!(
            table.delete_sql(),
            r#"delete from "S"."we""ird" where "event id" = $1"#
        );
    }

    #[test]
    fn bad_names_are_rejected_with_the_reason() {
        let err = OutboxTable::new("").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid table name "": it is empty; give a non-empty name"#
        );
        let err = OutboxTable::new("a\0b").unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
        let long = "x".repeat(64);
        let err = OutboxTable::default().with_schema(&long).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid schema name \"{long}\": it is 64 bytes long; Postgres would silently \
                 cut it to 63 bytes, so use a shorter name"
            )
        );
        assert!(OutboxTable::new(&"x".repeat(63)).is_ok());
        // 21 three-byte characters are 63 bytes, 22 are 66.
        assert!(OutboxTable::new(&"€".repeat(21)).is_ok());
        assert!(OutboxTable::new(&"€".repeat(22)).is_err());
    }

    #[test]
    fn duplicate_column_names_are_rejected() {
        let err = OutboxTable::default()
            .with_columns(OutboxColumns {
                payload: "type".to_owned(),
                ..OutboxColumns::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid payload column name \"type\": the event_type column has the same name; \
             give each a name"
        );
    }

    #[test]
    fn columns_deserialize_with_defaults_and_reject_unknown_keys() {
        let c: OutboxColumns = serde_json::from_str(r#"{"event_type": "kind"}"#).unwrap();
        assert_eq!(c.event_type, "kind");
        assert_eq!(c.id, "id");
        let err = serde_json::from_str::<OutboxColumns>(r#"{"typ": "kind"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `typ`"), "{err}");
    }
}
