//! The replication stream, and the upstream behaviour it relies on.
//!
//! ```text
//!  Postgres walsender ──CopyBoth──▶ pgwire-replication worker ──read-ahead──▶ this loop
//!        ▲   (XLogData, keepalives)   (answers keepalives,        (bounded)     │ decode,
//!        └──── standby status ─────── reports only what we allow)               │ map, emit
//!                                                                               ▼
//!                                                   pipeline ──committed positions──┘
//! ```
//!
//! What we rely on (Postgres manual, "Streaming Replication Protocol" and "Logical
//! Streaming Replication Parameters"; `src/backend/replication/walsender.c`):
//!
//! - With `proto_version '1'` the server decodes a transaction only once its commit record
//!   is read, and sends it whole: Begin, its changes, Commit. An aborted transaction is
//!   never sent. Changes are forwarded as they arrive, so memory stays bounded by the
//!   read-ahead and the pipeline's window, whatever the transaction's size.
//! - The flush position of a standby status update becomes the slot's
//!   `confirmed_flush_lsn`. The server never sends again a transaction whose commit ends
//!   at or before it, and starts `START_REPLICATION` from it when asked for an older
//!   position. We report only positions the pipeline committed, and only Commit ends
//!   (or idle keepalive positions, below), so a crash at any instant redelivers whole
//!   transactions, never loses one. pgwire-replication sends what we allow
//!   (`update_applied_lsn`) and nothing else; it answers keepalives that ask for a reply
//!   from its own task and keeps sending status updates while our consumer is blocked,
//!   so a full pipeline never trips `wal_sender_timeout`.
//! - A keepalive carries the position up to which the walsender has decoded WAL. Between
//!   transactions, everything before it that had to be sent was sent. Confirming it
//!   once every event before it is acknowledged is safe: a transaction still open at
//!   that point commits later, after the confirmed position, and the slot's
//!   `restart_lsn` (which the server manages separately) still covers its start, so it
//!   is decoded in full. This is what lets an idle slot advance when other databases
//!   write WAL, instead of pinning it.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use outflow_core::metrics::{ERRORS_TOTAL, POSTGRES_SLOT_LAG_BYTES, SOURCE_RECONNECTS_TOTAL};
use outflow_core::{
    ChangeSource, Checkpoint, Envelope, Error, ErrorKind, SourceContext, SourceItem,
};
use pgwire_replication::{PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent};
use tokio_postgres::Client;
use tracing::{debug, error, info, trace, warn, Instrument};

use crate::config::{Mode, PostgresConfig, TableName};
use crate::decoder::{self, Message};
use crate::events::{self, MessageSkip, RelationInfo, RowChange, StreamInfo, TxInfo};
use crate::lsn::Lsn;
use crate::setup;
use crate::values::{Kind, TypeCache, SESSION_OPTIONS};

/// How often the loop looks for newly committed positions to report.
const COMMIT_POLL: Duration = Duration::from_millis(100);

/// Reads a Postgres database's changes through a logical replication slot.
///
/// See `docs/connectors/postgres.md` for prerequisites, options and guarantees.
pub struct PostgresSource {
    config: PostgresConfig,
    pipeline: String,
    tables: Vec<TableName>,
}

impl std::fmt::Debug for PostgresSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSource")
            .field("config", &self.config)
            .field("pipeline", &self.pipeline)
            .finish()
    }
}

impl PostgresSource {
    /// A source for the pipeline `pipeline`. Fails (fatal) when the configuration is
    /// invalid; nothing connects until [`ChangeSource::run`].
    pub fn new(config: PostgresConfig, pipeline: &str) -> Result<PostgresSource, Error> {
        config.validate()?;
        let tables = config.table_names()?;
        Ok(PostgresSource {
            config,
            pipeline: pipeline.to_string(),
            tables,
        })
    }
}

/// Connects and verifies every prerequisite without changing anything: `wal_level`, the
/// role's replication right, the tables, the publication (or the right to create it) and
/// the slot (or the right to create it, and that no one else is using it). Returns one
/// line per verified prerequisite; the first failure is a fatal error saying what to fix.
pub async fn check(config: &PostgresConfig) -> Result<Vec<String>, Error> {
    config.validate()?;
    crate::tls::install_default_provider();
    let params = config.connect_params()?;
    let client = setup::connect(&params).await?;
    let prepared = setup::prepare(&client, config, true).await?;
    Ok(prepared.lines)
}

/// What survives a reconnect.
#[derive(Default)]
struct Progress {
    relations: HashMap<u32, Option<RelationInfo>>,
    types: TypeCache,
    /// Commit LSN of the last transaction whose checkpoint was emitted.
    last_done: Option<Lsn>,
    /// The transaction being emitted: its commit LSN and how many of its changes were
    /// handled, so a reconnect mid-transaction does not emit them twice.
    partial: Option<(Lsn, u64)>,
    /// The last checkpoint emitted.
    last_checkpoint: Lsn,
    /// The last position handed to the server as confirmed.
    confirmed: Lsn,
}

struct Tx {
    info: TxInfo,
    index: u64,
    skip_below: u64,
    skip_all: bool,
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Shutdown,
}

fn stream_error(e: PgWireError) -> Error {
    let text = e.to_string();
    let code = text
        .split("SQLSTATE ")
        .nth(1)
        .map(|rest| rest.chars().take(5).collect::<String>());
    let fatal = match (&e, code.as_deref()) {
        (PgWireError::Auth(_), _) => Some("check the user and password in url"),
        (PgWireError::Tls(_), _) => Some("check sslmode and sslrootcert"),
        (PgWireError::MessageTooLarge { .. }, _) => Some("a single change exceeds 1 GiB"),
        (PgWireError::Server(_), Some(c)) if c.starts_with("28") => {
            Some("check the user and password in url, and that pg_hba.conf allows replication")
        }
        (PgWireError::Server(_), Some("42501")) => Some("grant the role REPLICATION"),
        (PgWireError::Server(_), Some("42704")) => {
            Some("the slot or publication is missing; restart to have them created")
        }
        (PgWireError::Server(_), Some("3D000")) => Some("create the database or fix url"),
        (PgWireError::Server(_), Some("55000")) => Some("set wal_level = logical"),
        _ => None,
    };
    match fatal {
        Some(fix) => Error::fatal(format!("replication failed: {text}; {fix}")).with_source(e),
        None => Error::transient(format!("replication connection failed: {text}")).with_source(e),
    }
}

fn parse_committed(text: &str) -> Result<Lsn, Error> {
    text.parse::<Lsn>().map_err(|e| {
        Error::fatal(format!(
            "the stored position {text:?} is not a Postgres position: {e}; it was not written \
             by this source, so remove it from the checkpoint store"
        ))
    })
}

#[async_trait]
impl ChangeSource for PostgresSource {
    async fn run(&mut self, ctx: SourceContext) -> Result<(), Error> {
        crate::tls::install_default_provider();
        let span = tracing::info_span!("source", pipeline = %self.pipeline, connector = "postgres");
        self.run_inner(ctx).instrument(span).await
    }
}

impl PostgresSource {
    async fn run_inner(&mut self, ctx: SourceContext) -> Result<(), Error> {
        let mut progress = Progress::default();
        let mut backoff = self.config.reconnect_backoff_min;
        loop {
            let mut progressed = false;
            let result = self.session(&ctx, &mut progress, &mut progressed).await;
            let err = match result {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Transient => e,
                Err(e) => {
                    error!(error = %e.chain(), "postgres source stopped");
                    return Err(e);
                }
            };
            if ctx.is_shutdown_requested() {
                return Ok(());
            }
            if progressed {
                backoff = self.config.reconnect_backoff_min;
            }
            let jitter = rand::random::<f64>() * 0.2 + 0.9;
            let wait = backoff.mul_f64(jitter);
            warn!(error = %err.chain(), retry_in = ?wait, "postgres connection lost; reconnecting");
            metrics::counter!(ERRORS_TOTAL, "pipeline" => self.pipeline.clone(), "kind" => "transient")
                .increment(1);
            metrics::counter!(
                SOURCE_RECONNECTS_TOTAL,
                "pipeline" => self.pipeline.clone(),
                "connector" => "postgres"
            )
            .increment(1);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown_requested() => return Ok(()),
            }
            backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
        }
    }

    async fn session(
        &self,
        ctx: &SourceContext,
        p: &mut Progress,
        progressed: &mut bool,
    ) -> Result<(), Error> {
        let params = self.config.connect_params()?;
        let sql = setup::connect(&params).await?;
        let prepared = setup::prepare(&sql, &self.config, false).await?;
        let stored = match ctx.committed().get("") {
            Some(text) => parse_committed(text)?,
            None => Lsn::ZERO,
        };
        let start = prepared
            .confirmed
            .unwrap_or_default()
            .max(stored)
            .max(p.confirmed);
        p.confirmed = start;
        if p.last_checkpoint < start {
            p.last_checkpoint = start;
        }
        let replication = ReplicationConfig::new(
            params.host.clone(),
            params.user.clone(),
            params.password.clone(),
            params.database.clone(),
            self.config.slot.clone(),
            self.config.publication.as_str(),
        )
        .with_port(params.port)
        .with_tls(crate::tls::replication_tls(&params))
        .with_start_lsn(start.into())
        .with_status_interval(self.config.status_interval)
        .with_wakeup_interval(self.config.status_interval)
        .with_buffer_size(self.config.read_ahead)
        .with_options(SESSION_OPTIONS)
        .with_application_name(format!("outflow {}", self.pipeline));
        let mut client = ReplicationClient::connect(replication)
            .await
            .map_err(stream_error)?;
        info!(slot = %self.config.slot, lsn = %start, "replication started");
        ctx.set_ready();
        let stream = StreamInfo {
            pipeline: self.pipeline.clone(),
            database: prepared.database,
            mode: self.config.mode,
            message_prefix: self.config.message_prefix.clone(),
        };
        let mut tx: Option<Tx> = None;
        let mut poll = tokio::time::interval(COMMIT_POLL);
        let mut lag = tokio::time::interval(self.config.status_interval);
        let mut heartbeat = self.config.heartbeat_interval.map(|d| {
            let mut i = tokio::time::interval(d);
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            i
        });
        // One shutdown future for the whole session, polled again on every turn: making
        // a new one per event cloned the watch receiver and registered and removed a
        // waiter each time (callgrind, draining: 334 -> 186 instructions per event).
        let shutdown = ctx.shutdown_requested();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => {
                    self.finish(ctx, &sql, client, p).await;
                    return Ok(());
                }
                _ = poll.tick() => self.confirm(ctx, &client, p)?,
                _ = async {
                    match heartbeat.as_mut() {
                        Some(h) => h.tick().await,
                        None => std::future::pending().await,
                    }
                } => {
                    setup::heartbeat(&sql).await?;
                    trace!("heartbeat written");
                }
                _ = lag.tick() => {
                    if let Some(bytes) = setup::slot_lag(&sql, &self.config.slot).await? {
                        metrics::gauge!(POSTGRES_SLOT_LAG_BYTES, "pipeline" => self.pipeline.clone())
                            .set(bytes as f64);
                    }
                }
                event = client.recv() => {
                    let Some(event) = event.map_err(stream_error)? else {
                        return Err(Error::transient("the replication stream ended"));
                    };
                    *progressed = true;
                    let flow = self.handle(ctx, &sql, &client, &stream, p, &mut tx, event).await?;
                    if flow == Flow::Shutdown {
                        self.finish(ctx, &sql, client, p).await;
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Reports the newest committed position to the server.
    fn confirm(
        &self,
        ctx: &SourceContext,
        client: &ReplicationClient,
        p: &mut Progress,
    ) -> Result<(), Error> {
        if let Some(text) = ctx.committed().get("") {
            let lsn = parse_committed(text)?;
            if lsn > p.confirmed {
                trace!(lsn = %lsn, "confirming");
                client.update_applied_lsn(lsn.into());
                p.confirmed = lsn;
            }
        }
        Ok(())
    }

    /// Stops the stream and makes sure the slot holds the last committed position.
    async fn finish(
        &self,
        ctx: &SourceContext,
        sql: &Client,
        mut client: ReplicationClient,
        p: &mut Progress,
    ) {
        if let Err(e) = self.confirm(ctx, &client, p) {
            warn!(error = %e, "cannot read the last committed position");
        }
        let metrics = client.metrics();
        if let Err(e) = client.shutdown().await {
            debug!(error = %e, "replication stream ended with an error at shutdown");
        }
        let sent = Lsn::from(metrics.last_applied_lsn());
        if sent < p.confirmed {
            // The worker reports on its own schedule; the last position may not have gone
            // out. Move the slot over SQL now that the stream released it.
            if let Err(e) = setup::advance_slot(sql, &self.config.slot, p.confirmed).await {
                warn!(error = %e.chain(), "cannot confirm the last position at shutdown");
            }
        }
        info!(slot = %self.config.slot, lsn = %p.confirmed, "replication stopped");
    }

    /// Emits one item, waiting while the pipeline is full, and keeps confirming
    /// positions meanwhile.
    async fn emit(
        &self,
        ctx: &SourceContext,
        client: &ReplicationClient,
        p: &mut Progress,
        item: SourceItem,
    ) -> Result<Flow, Error> {
        if ctx.is_shutdown_requested() {
            return Ok(Flow::Shutdown);
        }
        // Room now (the common case while draining): no wait to set up.
        if let Some(permit) = ctx.try_reserve()? {
            permit.send(item);
            return Ok(Flow::Continue);
        }
        loop {
            tokio::select! {
                biased;
                _ = ctx.shutdown_requested() => return Ok(Flow::Shutdown),
                permit = ctx.reserve() => {
                    permit?.send(item);
                    return Ok(Flow::Continue);
                }
                _ = tokio::time::sleep(COMMIT_POLL) => self.confirm(ctx, client, p)?,
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn handle(
        &self,
        ctx: &SourceContext,
        sql: &Client,
        client: &ReplicationClient,
        stream: &StreamInfo,
        p: &mut Progress,
        tx: &mut Option<Tx>,
        event: ReplicationEvent,
    ) -> Result<Flow, Error> {
        match event {
            ReplicationEvent::Begin {
                final_lsn,
                xid,
                commit_time_micros,
            } => {
                self.begin(p, tx, final_lsn.into(), xid, commit_time_micros);
                Ok(Flow::Continue)
            }
            ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                self.commit(ctx, client, p, tx, lsn.into(), end_lsn.into())
                    .await
            }
            ReplicationEvent::KeepAlive { wal_end, .. } => {
                let wal_end = Lsn::from(wal_end);
                if tx.is_none() && wal_end > p.last_checkpoint {
                    trace!(lsn = %wal_end, "idle position");
                    p.last_checkpoint = wal_end;
                    return self
                        .emit(
                            ctx,
                            client,
                            p,
                            SourceItem::Checkpoint(Checkpoint::new(wal_end.to_string())),
                        )
                        .await;
                }
                Ok(Flow::Continue)
            }
            ReplicationEvent::Message {
                transactional,
                lsn,
                prefix,
                content,
            } => {
                self.message(
                    ctx,
                    client,
                    stream,
                    p,
                    tx,
                    transactional,
                    lsn.into(),
                    &prefix,
                    &content,
                )
                .await
            }
            ReplicationEvent::XLogData {
                wal_start, data, ..
            } => {
                let message = decoder::decode(&data).map_err(|e| {
                    Error::fatal(format!(
                        "cannot decode the replication message at {}: {e}",
                        Lsn::from(wal_start)
                    ))
                })?;
                self.data(ctx, sql, client, stream, p, tx, wal_start.into(), message)
                    .await
            }
            ReplicationEvent::StoppedAt { .. } => Ok(Flow::Continue),
            #[allow(unreachable_patterns)]
            _ => Ok(Flow::Continue),
        }
    }

    fn begin(&self, p: &mut Progress, tx: &mut Option<Tx>, final_lsn: Lsn, xid: u32, time: i64) {
        let skip_all = p.last_done.is_some_and(|done| final_lsn <= done);
        let skip_below = match p.partial {
            Some((lsn, handled)) if lsn == final_lsn => handled,
            _ => 0,
        };
        if skip_all {
            debug!(lsn = %final_lsn, "transaction already emitted before the reconnect");
        }
        *tx = Some(Tx {
            info: TxInfo {
                commit_lsn: final_lsn,
                xid,
                commit_time: events::pg_time(time),
            },
            index: 0,
            skip_below,
            skip_all,
        });
    }

    async fn commit(
        &self,
        ctx: &SourceContext,
        client: &ReplicationClient,
        p: &mut Progress,
        tx: &mut Option<Tx>,
        commit_lsn: Lsn,
        end_lsn: Lsn,
    ) -> Result<Flow, Error> {
        let Some(current) = tx.take() else {
            return Err(Error::transient(
                "the server sent a commit outside a transaction",
            ));
        };
        if current.skip_all {
            return Ok(Flow::Continue);
        }
        let flow = self
            .emit(
                ctx,
                client,
                p,
                SourceItem::Checkpoint(Checkpoint::new(end_lsn.to_string())),
            )
            .await?;
        if flow == Flow::Continue {
            p.last_done = Some(commit_lsn);
            p.partial = None;
            p.last_checkpoint = p.last_checkpoint.max(end_lsn);
        }
        Ok(flow)
    }

    /// The index of the next change in the transaction, or `None` when it was already
    /// emitted before a reconnect.
    fn next_change(tx: &mut Option<Tx>, what: &str) -> Result<(u64, bool), Error> {
        let Some(current) = tx.as_mut() else {
            return Err(Error::transient(format!(
                "the server sent a {what} outside a transaction"
            )));
        };
        let index = current.index;
        current.index += 1;
        Ok((index, current.skip_all || index < current.skip_below))
    }

    async fn emit_change(
        &self,
        ctx: &SourceContext,
        client: &ReplicationClient,
        p: &mut Progress,
        tx: &Option<Tx>,
        index: u64,
        events: impl IntoIterator<Item = Envelope> + Send,
    ) -> Result<Flow, Error> {
        for event in events {
            trace!(position = %event.source.position, "event");
            if self
                .emit(ctx, client, p, SourceItem::Event(Box::new(event)))
                .await?
                == Flow::Shutdown
            {
                return Ok(Flow::Shutdown);
            }
        }
        if let Some(current) = tx {
            p.partial = Some((current.info.commit_lsn, index + 1));
        }
        Ok(Flow::Continue)
    }

    #[allow(clippy::too_many_arguments)]
    async fn message(
        &self,
        ctx: &SourceContext,
        client: &ReplicationClient,
        stream: &StreamInfo,
        p: &mut Progress,
        tx: &mut Option<Tx>,
        transactional: bool,
        lsn: Lsn,
        prefix: &str,
        content: &[u8],
    ) -> Result<Flow, Error> {
        if !transactional {
            debug!(prefix = %prefix, lsn = %lsn, "non-transactional message ignored");
            return Ok(Flow::Continue);
        }
        let (index, skip) = Self::next_change(tx, "message")?;
        let Some(current) = tx.as_ref() else {
            return Ok(Flow::Continue);
        };
        if skip {
            return Ok(Flow::Continue);
        }
        let position = events::position(&current.info, lsn, index);
        let events = match events::message_event(stream, &current.info, prefix, content, position) {
            Ok(event) => vec![event],
            Err(MessageSkip::NotOurs) => {
                trace!(prefix = %prefix, "message with another prefix ignored");
                Vec::new()
            }
            Err(MessageSkip::Invalid(why)) => {
                error!(
                    prefix = %prefix,
                    lsn = %lsn,
                    reason = %why,
                    "logical decoding message is not an outbox event and is skipped"
                );
                metrics::counter!(ERRORS_TOTAL, "pipeline" => self.pipeline.clone(), "kind" => "per_event")
                    .increment(1);
                Vec::new()
            }
        };
        self.emit_change(ctx, client, p, tx, index, events).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn data(
        &self,
        ctx: &SourceContext,
        sql: &Client,
        client: &ReplicationClient,
        stream: &StreamInfo,
        p: &mut Progress,
        tx: &mut Option<Tx>,
        lsn: Lsn,
        message: Message<'_>,
    ) -> Result<Flow, Error> {
        let change = match message {
            Message::Begin(b) => {
                self.begin(p, tx, b.final_lsn, b.xid, b.commit_time);
                return Ok(Flow::Continue);
            }
            Message::Commit(c) => {
                return self
                    .commit(ctx, client, p, tx, c.commit_lsn, c.end_lsn)
                    .await;
            }
            Message::Message(m) => {
                return self
                    .message(
                        ctx,
                        client,
                        stream,
                        p,
                        tx,
                        m.transactional,
                        m.lsn,
                        m.prefix,
                        m.content,
                    )
                    .await;
            }
            Message::Origin(o) => {
                trace!(origin = %o.name, "transaction origin");
                return Ok(Flow::Continue);
            }
            Message::Type(t) => {
                p.types.forget(t.oid);
                return Ok(Flow::Continue);
            }
            Message::Relation(relation) => {
                self.relation(sql, p, relation).await?;
                return Ok(Flow::Continue);
            }
            other => other,
        };
        let (index, skip) = Self::next_change(tx, "change")?;
        let Some(current) = tx.as_ref() else {
            return Ok(Flow::Continue);
        };
        if skip {
            return Ok(Flow::Continue);
        }
        let info = &current.info;
        let position = events::position(info, lsn, index);
        let relation_of = |oid: u32| -> Result<Option<&RelationInfo>, Error> {
            match p.relations.get(&oid) {
                Some(known) => Ok(known.as_ref()),
                None => Err(Error::fatal(format!(
                    "the server sent a change of relation {oid} before describing it; this is a \
                     bug in outflow or the server"
                ))),
            }
        };
        let (oid, row) = match &change {
            Message::Insert(i) => (i.relation, RowChange::Insert(&i.new)),
            Message::Update(u) => (
                u.relation,
                RowChange::Update {
                    old: u.old.as_ref(),
                    new: &u.new,
                },
            ),
            Message::Delete(d) => (d.relation, RowChange::Delete(&d.old)),
            Message::Truncate(t) => {
                let mut out = Vec::with_capacity(t.relations.len());
                for (n, oid) in t.relations.iter().enumerate() {
                    if let Some(rel) = relation_of(*oid)? {
                        // One event per table; the table's place in the statement keeps
                        // positions unique.
                        let position = format!("{position}.{n}");
                        out.extend(events::truncate_event(stream, rel, info, position));
                    }
                }
                return self.emit_change(ctx, client, p, tx, index, out).await;
            }
            _ => return self.emit_change(ctx, client, p, tx, index, None).await,
        };
        // A row change makes at most one event: no collection on the per-row path.
        let event = match relation_of(oid)? {
            Some(rel) => events::row_event(stream, rel, info, row, position)?,
            None => None,
        };
        self.emit_change(ctx, client, p, tx, index, event).await
    }

    /// Learns a table's (new) description: resolves its column kinds and key.
    async fn relation(
        &self,
        sql: &Client,
        p: &mut Progress,
        relation: decoder::Relation,
    ) -> Result<(), Error> {
        let collection = TableName {
            schema: relation.namespace.clone(),
            name: relation.name.clone(),
        };
        let captured = self.config.mode != Mode::Message && self.tables.contains(&collection);
        if !captured {
            debug!(collection = %collection, "relation not captured; its changes are ignored");
            p.relations.insert(relation.oid, None);
            return Ok(());
        }
        let unknown: Vec<u32> = relation
            .columns
            .iter()
            .map(|c| c.type_oid)
            .filter(|oid| p.types.get(*oid).is_none())
            .collect();
        let catalog = if unknown.is_empty() {
            HashMap::new()
        } else {
            setup::lookup_types(sql, &unknown).await?
        };
        let mut lookup = |oid: u32| Ok(catalog.get(&oid).cloned());
        let mut kinds: Vec<Kind> = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            kinds.push(p.types.resolve(column.type_oid, &mut lookup)?);
        }
        let primary_key = setup::primary_key(sql, relation.oid).await?;
        let info = RelationInfo::new(
            &relation,
            kinds,
            &primary_key,
            self.config.mode,
            &self.config.outbox,
        )?;
        debug!(collection = %info.collection, columns = info.columns.len(), "relation described");
        p.relations.insert(relation.oid, Some(info));
        Ok(())
    }
}
