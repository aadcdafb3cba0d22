//! The SQL side: connecting, checking prerequisites, creating the slot and the
//! publication, and the catalog lookups the stream needs.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use outflow_core::Error;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;
use tracing::{debug, info, warn};

use crate::config::{quote_ident, ConnectParams, Mode, PostgresConfig, SslMode, TableName};
use crate::lsn::Lsn;
use crate::values::CatalogType;

/// Opens an ordinary SQL connection.
pub(crate) async fn connect(params: &ConnectParams) -> Result<Client, Error> {
    let mut pg = params.pg.clone();
    pg.ssl_mode(match params.sslmode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    pg.application_name("outflow");
    let tls = tokio_postgres_rustls::MakeRustlsConnect::new(crate::tls::client_config(params)?);
    let (client, connection) = pg.connect(tls).await.map_err(|e| {
        sql_error(
            e,
            &format!("cannot connect to {}:{}", params.host, params.port),
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "sql connection ended");
        }
    });
    Ok(client)
}

/// Maps a tokio-postgres error to a kind: connection trouble and server restarts are
/// transient, authentication and missing objects are fatal.
pub(crate) fn sql_error(e: tokio_postgres::Error, context: &str) -> Error {
    let Some(db) = e.as_db_error() else {
        return Error::transient(format!("{context}: {e}")).with_source(e);
    };
    let code = db.code().code();
    let message = format!("{context}: {} (SQLSTATE {code})", db.message());
    let fatal = match code {
        c if c.starts_with("28") => {
            return Error::fatal(format!(
                "{message}; check the user and password in url and the server's pg_hba.conf"
            ))
            .with_source(e)
        }
        "3D000" => {
            return Error::fatal(format!("{message}; create the database or fix url"))
                .with_source(e)
        }
        c if c.starts_with("08") || c.starts_with("53") || c.starts_with("57") => false,
        "40001" | "40P01" | "55006" | "55P03" => false,
        _ => true,
    };
    if fatal {
        Error::fatal(message).with_source(e)
    } else {
        Error::transient(message).with_source(e)
    }
}

/// What `prepare` found and did.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Lines describing each verified prerequisite.
    pub(crate) lines: Vec<String>,
    /// The slot's confirmed position (None when `check` found no slot yet).
    pub(crate) confirmed: Option<Lsn>,
    /// The database name.
    pub(crate) database: String,
}

/// Checks every prerequisite and, unless `dry_run`, creates what is missing. Fatal
/// errors say what to fix.
pub(crate) async fn prepare(
    client: &Client,
    config: &PostgresConfig,
    dry_run: bool,
) -> Result<Prepared, Error> {
    let mut lines = Vec::new();
    let q = |e: tokio_postgres::Error| sql_error(e, "cannot check prerequisites");

    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_user, current_database()",
            &[],
        )
        .await
        .map_err(q)?;
    let wal_level: String = row.get(0);
    let user: String = row.get(1);
    let database: String = row.get(2);
    if wal_level != "logical" {
        return Err(Error::fatal(format!(
            "wal_level is {wal_level:?} on the server, and logical replication needs \
             \"logical\"; run ALTER SYSTEM SET wal_level = logical (or set it in \
             postgresql.conf) and restart Postgres"
        )));
    }
    lines.push("wal_level is logical".to_string());

    let row = client
        .query_one(
            "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(q)?;
    let (superuser, replication): (bool, bool) = (row.get(0), row.get(1));
    if !superuser && !replication {
        return Err(Error::fatal(format!(
            "role {user:?} has neither the REPLICATION attribute nor superuser, which \
             logical replication needs; run ALTER ROLE {} REPLICATION as a superuser",
            quote_ident(&user)
        )));
    }
    lines.push(format!(
        "role {user:?} may replicate ({})",
        if superuser {
            "superuser"
        } else {
            "REPLICATION"
        }
    ));

    let tables = config.table_names()?;
    let mut owned_all = true;
    for table in &tables {
        let row = client
            .query_opt(
                "SELECT c.oid, pg_has_role(current_user, c.relowner, 'USAGE') \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&table.schema, &table.name],
            )
            .await
            .map_err(q)?;
        let Some(row) = row else {
            return Err(Error::fatal(format!(
                "table {table} does not exist in database {database:?}; create it, or fix \
                 `tables` in the source configuration"
            )));
        };
        let oid: u32 = row.get(0);
        owned_all &= row.get::<_, bool>(1);
        if config.mode == Mode::Outbox {
            check_outbox_columns(client, config, table, oid).await?;
        }
        lines.push(format!("table {table} exists"));
    }

    prepare_publication(
        client, config, &tables, &user, &database, owned_all, dry_run, &mut lines,
    )
    .await?;
    let confirmed = prepare_slot(client, config, &database, dry_run, &mut lines).await?;
    Ok(Prepared {
        lines,
        confirmed,
        database,
    })
}

async fn check_outbox_columns(
    client: &Client,
    config: &PostgresConfig,
    table: &TableName,
    oid: u32,
) -> Result<(), Error> {
    let rows = client
        .query(
            "SELECT attname FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 \
             AND NOT attisdropped",
            &[&oid],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read the outbox table's columns"))?;
    let names: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    let c = &config.outbox;
    for (field, column) in [
        ("id", &c.id),
        ("aggregate_type", &c.aggregate_type),
        ("aggregate_id", &c.aggregate_id),
        ("event_type", &c.event_type),
        ("payload", &c.payload),
    ] {
        if !names.iter().any(|n| n == column) {
            return Err(Error::fatal(format!(
                "outbox table {table} has no column {column:?} (outbox.{field}); its columns \
                 are {names:?}: name the right column in the source's outbox settings, or use \
                 mode = \"table\" for plain change capture"
            )));
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn prepare_publication(
    client: &Client,
    config: &PostgresConfig,
    tables: &[TableName],
    user: &str,
    database: &str,
    owned_all: bool,
    dry_run: bool,
    lines: &mut Vec<String>,
) -> Result<(), Error> {
    let q = |e: tokio_postgres::Error| sql_error(e, "cannot check the publication");
    let publication = &config.publication;
    let row = client
        .query_opt(
            "SELECT puballtables, pg_has_role(current_user, pubowner, 'USAGE') \
             FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(q)?;
    let table_list = tables
        .iter()
        .map(TableName::quoted)
        .collect::<Vec<_>>()
        .join(", ");
    let create_sql = if tables.is_empty() {
        format!("CREATE PUBLICATION {}", quote_ident(publication))
    } else {
        format!(
            "CREATE PUBLICATION {} FOR TABLE {table_list}",
            quote_ident(publication)
        )
    };
    let Some(row) = row else {
        if !config.create_publication {
            return Err(Error::fatal(format!(
                "publication {publication:?} does not exist and create_publication is false; \
                 create it with: {create_sql}"
            )));
        }
        let can_create: bool = client
            .query_one(
                "SELECT has_database_privilege(current_user, current_database(), 'CREATE')",
                &[],
            )
            .await
            .map_err(q)?
            .get(0);
        if !can_create || !owned_all {
            return Err(Error::fatal(format!(
                "publication {publication:?} does not exist and role {user:?} may not create \
                 it: that needs CREATE on database {database:?} and ownership of every \
                 captured table; have an owner run: {create_sql}"
            )));
        }
        if dry_run {
            lines.push(format!(
                "publication {publication:?} is missing and will be created"
            ));
        } else {
            client
                .batch_execute(&create_sql)
                .await
                .map_err(|e| sql_error(e, &format!("cannot create publication {publication:?}")))?;
            info!(publication = %publication, "publication created");
            lines.push(format!("publication {publication:?} created"));
        }
        return Ok(());
    };
    let (all_tables, owner): (bool, bool) = (row.get(0), row.get(1));
    if all_tables || tables.is_empty() {
        lines.push(format!("publication {publication:?} exists"));
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
            &[publication],
        )
        .await
        .map_err(q)?;
    let published: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let missing: Vec<&TableName> = tables
        .iter()
        .filter(|t| {
            !published
                .iter()
                .any(|(s, n)| *s == t.schema && *n == t.name)
        })
        .collect();
    if missing.is_empty() {
        lines.push(format!(
            "publication {publication:?} includes every captured table"
        ));
        return Ok(());
    }
    let names = missing
        .iter()
        .map(|t| t.quoted())
        .collect::<Vec<_>>()
        .join(", ");
    let alter = format!(
        "ALTER PUBLICATION {} ADD TABLE {names}",
        quote_ident(publication)
    );
    if !config.create_publication || !owner || !owned_all {
        return Err(Error::fatal(format!(
            "publication {publication:?} does not include {names}; add them as the \
             publication's owner: {alter}"
        )));
    }
    if dry_run {
        lines.push(format!(
            "publication {publication:?} will be extended with {names}"
        ));
    } else {
        client
            .batch_execute(&alter)
            .await
            .map_err(|e| sql_error(e, &format!("cannot extend publication {publication:?}")))?;
        warn!(publication = %publication, tables = %names, "tables added to publication");
        lines.push(format!("publication {publication:?} extended with {names}"));
    }
    Ok(())
}

async fn prepare_slot(
    client: &Client,
    config: &PostgresConfig,
    database: &str,
    dry_run: bool,
    lines: &mut Vec<String>,
) -> Result<Option<Lsn>, Error> {
    let slot = &config.slot;
    let q = |e: tokio_postgres::Error| sql_error(e, "cannot check the replication slot");
    // `check` reports a busy slot at once; a starting stream waits for its own previous
    // walsender to exit.
    let deadline = if dry_run {
        Instant::now()
    } else {
        Instant::now() + crate::config::DEFAULT_SLOT_BUSY_TIMEOUT
    };
    loop {
        let row = client
            .query_opt(
                "SELECT s.plugin, s.slot_type, s.database, s.active_pid, \
                        s.confirmed_flush_lsn::text, a.application_name, \
                        a.client_addr::text \
                 FROM pg_replication_slots s \
                 LEFT JOIN pg_stat_activity a ON a.pid = s.active_pid \
                 WHERE s.slot_name = $1",
                &[slot],
            )
            .await
            .map_err(q)?;
        let Some(row) = row else {
            if !config.create_slot {
                return Err(Error::fatal(format!(
                    "replication slot {slot:?} does not exist and create_slot is false; \
                     create it with: SELECT pg_create_logical_replication_slot('{slot}', \
                     'pgoutput')"
                )));
            }
            if dry_run {
                lines.push(format!(
                    "replication slot {slot:?} is missing and will be created"
                ));
                return Ok(None);
            }
            let row = client
                .query_one(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                    &[slot],
                )
                .await
                .map_err(|e| {
                    if e.code() == Some(&SqlState::DUPLICATE_OBJECT) {
                        Error::transient(format!("replication slot {slot:?} appeared meanwhile"))
                    } else {
                        sql_error(e, &format!("cannot create replication slot {slot:?}"))
                    }
                })?;
            let lsn = parse_lsn(row.get(0))?;
            info!(slot = %slot, lsn = %lsn, "replication slot created");
            lines.push(format!("replication slot {slot:?} created at {lsn}"));
            return Ok(Some(lsn));
        };
        let plugin: Option<String> = row.get(0);
        let slot_type: String = row.get(1);
        let slot_db: Option<String> = row.get(2);
        let active_pid: Option<i32> = row.get(3);
        if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") {
            return Err(Error::fatal(format!(
                "replication slot {slot:?} is a {slot_type} slot with plugin {:?}, not a \
                 logical pgoutput slot; choose another slot name",
                plugin.unwrap_or_default()
            )));
        }
        if slot_db.as_deref() != Some(database) {
            return Err(Error::fatal(format!(
                "replication slot {slot:?} belongs to database {:?}, not {database:?}; choose \
                 another slot name",
                slot_db.unwrap_or_default()
            )));
        }
        if let Some(pid) = active_pid {
            if Instant::now() < deadline {
                // A walsender of ours may still be exiting after a lost connection.
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            let app: Option<String> = row.get(5);
            let addr: Option<String> = row.get(6);
            return Err(Error::fatal(format!(
                "replication slot {slot:?} is active for PID {pid} (application {:?}, client \
                 {}); stop that consumer, or give this pipeline a slot of its own",
                app.unwrap_or_default(),
                addr.unwrap_or_else(|| "local".into())
            )));
        }
        let confirmed: Option<String> = row.get(4);
        let confirmed = confirmed.map(|t| parse_lsn(&t)).transpose()?;
        lines.push(format!(
            "replication slot {slot:?} exists, confirmed up to {}",
            confirmed.unwrap_or_default()
        ));
        return Ok(confirmed);
    }
}

fn parse_lsn(text: &str) -> Result<Lsn, Error> {
    text.parse::<Lsn>()
        .map_err(|e| Error::fatal(format!("the server returned an unreadable position: {e}")))
}

/// `pg_type` facts for `oids` and every type they lead to (domain bases, array
/// elements), in one round trip.
pub(crate) async fn lookup_types(
    client: &Client,
    oids: &[u32],
) -> Result<HashMap<u32, CatalogType>, Error> {
    let rows = client
        .query(
            "WITH RECURSIVE t(oid) AS ( \
                 SELECT unnest($1::oid[]) \
               UNION \
                 SELECT x FROM pg_type p JOIN t ON p.oid = t.oid, \
                   LATERAL unnest(ARRAY[p.typbasetype, \
                     CASE WHEN p.typcategory = 'A' THEN p.typelem ELSE 0::oid END]) x \
                 WHERE x <> 0) \
             SELECT p.oid, p.typtype::text, p.typbasetype, \
                    CASE WHEN p.typcategory = 'A' THEN p.typelem ELSE 0::oid END, \
                    p.typdelim::text \
             FROM pg_type p JOIN t ON p.oid = t.oid",
            &[&oids],
        )
        .await
        .map_err(|e| sql_error(e, "cannot look up column types"))?;
    let mut out = HashMap::with_capacity(rows.len());
    for row in rows {
        let typtype: String = row.get(1);
        let delim: String = row.get(4);
        out.insert(
            row.get::<_, u32>(0),
            CatalogType {
                typtype: typtype.bytes().next().unwrap_or(b'b'),
                base: row.get(2),
                element: row.get(3),
                delimiter: delim.bytes().next().unwrap_or(b','),
            },
        );
    }
    Ok(out)
}

/// The primary key's column names of a table, in key order; empty when it has none.
pub(crate) async fn primary_key(client: &Client, relation: u32) -> Result<Vec<String>, Error> {
    let rows = client
        .query(
            "SELECT a.attname FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
             WHERE i.indrelid = $1 AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&relation],
        )
        .await
        .map_err(|e| sql_error(e, "cannot look up a primary key"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Bytes of WAL the slot holds back: from its confirmed position to the server's
/// current one.
pub(crate) async fn slot_lag(client: &Client, slot: &str) -> Result<Option<i64>, Error> {
    let row = client
        .query_opt(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(|e| sql_error(e, "cannot read the slot's lag"))?;
    Ok(row.and_then(|r| r.get(0)))
}

/// Writes a heartbeat: a small non-transactional logical decoding message, so that the
/// server has WAL of this database to decode and the slot's position can advance.
pub(crate) async fn heartbeat(client: &Client) -> Result<(), Error> {
    client
        .execute(
            "SELECT pg_logical_emit_message(false, 'outflow.heartbeat', '')",
            &[],
        )
        .await
        .map_err(|e| sql_error(e, "cannot write a heartbeat"))?;
    Ok(())
}

/// Moves the slot's confirmed position to `lsn` over SQL, once the replication
/// connection is gone (used at shutdown, when the stream may not have sent its last
/// status update). Never moves it back.
pub(crate) async fn advance_slot(client: &Client, slot: &str, lsn: Lsn) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let row = client
            .query_opt(
                "SELECT active, confirmed_flush_lsn::text FROM pg_replication_slots \
                 WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(|e| sql_error(e, "cannot read the slot"))?;
        let Some(row) = row else { return Ok(()) };
        let active: bool = row.get(0);
        let confirmed: Option<String> = row.get(1);
        let confirmed = confirmed
            .map(|t| parse_lsn(&t))
            .transpose()?
            .unwrap_or_default();
        if confirmed >= lsn {
            return Ok(());
        }
        if active {
            if Instant::now() > deadline {
                return Err(Error::transient(format!(
                    "slot {slot:?} still active; its position stays at {confirmed}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        client
            .query_one(
                "SELECT 1 FROM pg_replication_slot_advance($1, $2::text::pg_lsn)",
                &[&slot, &lsn.to_string()],
            )
            .await
            .map_err(|e| sql_error(e, "cannot advance the slot"))?;
        debug!(slot = %slot, lsn = %lsn, "slot advanced at shutdown");
        return Ok(());
    }
}
