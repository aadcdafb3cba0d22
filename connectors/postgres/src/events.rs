//! From decoded changes to envelopes, in the three modes.

use std::borrow::Cow;
use std::collections::BTreeMap;

use outflow_core::{
    event_id_from_position, json_string_content, Envelope, Error, Op, RawJson, SourceInfo,
    Timestamp,
};
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::{debug, trace, warn};

use crate::config::{Mode, OutboxColumns};
use crate::decoder::{OldTuple, Relation, TupleValue};
use crate::lsn::Lsn;
use crate::values::{member_prefix, row_image, Kind, RowImage};

/// Microseconds from the Unix epoch to Postgres' epoch, 2000-01-01 00:00 UTC.
pub(crate) const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// A Postgres timestamp (microseconds since 2000-01-01) as an outflow timestamp.
pub(crate) fn pg_time(micros: i64) -> Timestamp {
    Timestamp::from_unix_micros(micros.saturating_add(PG_EPOCH_OFFSET_MICROS))
}

/// Where the outbox columns sit in a relation's tuples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OutboxIndex {
    id: usize,
    aggregate_type: usize,
    aggregate_id: usize,
    event_type: usize,
    payload: usize,
    tracing: Option<usize>,
}

/// A table as the stream knows it: its latest Relation message, with resolved kinds.
#[derive(Debug, Clone)]
pub(crate) struct RelationInfo {
    /// `schema.table`.
    pub(crate) collection: String,
    /// Column names and kinds, in tuple order.
    pub(crate) columns: Vec<(String, Kind)>,
    /// Each column's name as it opens its member of a row image (`"name":`).
    members: Vec<String>,
    /// Replica identity flags per column.
    identity: Vec<bool>,
    /// The columns of the key: the primary key, or the replica identity without one.
    key: Vec<usize>,
    /// Outbox column positions (outbox mode).
    outbox: Option<OutboxIndex>,
}

impl RelationInfo {
    /// Builds the table's description. `kinds` are the resolved kinds of its columns,
    /// `primary_key` its primary key's column names.
    pub(crate) fn new(
        relation: &Relation,
        kinds: Vec<Kind>,
        primary_key: &[String],
        mode: Mode,
        names: &OutboxColumns,
    ) -> Result<RelationInfo, Error> {
        let collection = format!("{}.{}", relation.namespace, relation.name);
        let columns: Vec<(String, Kind)> = relation
            .columns
            .iter()
            .zip(kinds)
            .map(|(c, k)| (c.name.clone(), k))
            .collect();
        let members = columns
            .iter()
            .map(|(name, _)| member_prefix(name))
            .collect();
        let position = |name: &str| columns.iter().position(|(n, _)| n == name);
        let identity: Vec<bool> = relation.columns.iter().map(|c| c.is_key).collect();
        let mut key: Vec<usize> = primary_key.iter().filter_map(|n| position(n)).collect();
        if key.len() != primary_key.len() || key.is_empty() {
            key = (0..identity.len()).filter(|&i| identity[i]).collect();
        }
        let outbox = if mode == Mode::Outbox {
            let need = |field: &str, name: &str| {
                position(name).ok_or_else(|| {
                    Error::fatal(format!(
                        "outbox table {collection} has no column {name:?} (outbox.{field}); \
                         name the right column in the source's outbox settings, or use \
                         mode = \"table\""
                    ))
                })
            };
            Some(OutboxIndex {
                id: need("id", &names.id)?,
                aggregate_type: need("aggregate_type", &names.aggregate_type)?,
                aggregate_id: need("aggregate_id", &names.aggregate_id)?,
                event_type: need("event_type", &names.event_type)?,
                payload: need("payload", &names.payload)?,
                tracing: position(&names.tracing),
            })
        } else {
            None
        };
        Ok(RelationInfo {
            collection,
            columns,
            members,
            identity,
            key,
            outbox,
        })
    }

    fn image(
        &self,
        tuple: &[TupleValue<'_>],
        only: Option<&[bool]>,
        unchanged: &mut Vec<String>,
    ) -> Result<RowImage, Error> {
        row_image(&self.columns, &self.members, tuple, only, unchanged).map_err(|e| {
            Error::fatal(format!(
                "a change of {} does not match its relation: {e}; this is a bug in outflow \
                 or a server it does not support",
                self.collection
            ))
        })
    }

    /// The key columns of a row image, as a JSON object.
    fn key_of(&self, row: &RowImage) -> RawJson {
        let mut key = String::with_capacity(64);
        key.push('{');
        for (n, &i) in self.key.iter().enumerate() {
            if n > 0 {
                key.push(',');
            }
            key.push_str(&self.members[i]);
            key.push_str(row.value(i).unwrap_or("null"));
        }
        key.push('}');
        RawJson::from_text_unchecked(key)
    }

    /// The key of a row image as text: the key columns in key order, joined with `:`
    /// (strings as they are, null as nothing, other values as JSON).
    fn key_text(&self, row: &RowImage) -> String {
        let mut text = String::new();
        for (n, &i) in self.key.iter().enumerate() {
            if n > 0 {
                text.push(':');
            }
            if let Some(value) = text_of(row.value(i)) {
                text.push_str(&value);
            }
        }
        text
    }
}

/// The transaction a change belongs to.
#[derive(Debug, Clone)]
pub(crate) struct TxInfo {
    /// The commit LSN (Begin's final LSN).
    pub(crate) commit_lsn: Lsn,
    /// Transaction id.
    pub(crate) xid: u32,
    /// Commit time.
    pub(crate) commit_time: Timestamp,
}

/// What every event of a stream shares.
#[derive(Debug, Clone)]
pub(crate) struct StreamInfo {
    pub(crate) pipeline: String,
    pub(crate) database: String,
    pub(crate) mode: Mode,
    pub(crate) message_prefix: String,
}

impl StreamInfo {
    fn source(&self, collection: &str, position: String, tx: &TxInfo) -> SourceInfo {
        SourceInfo {
            connector: "postgres".into(),
            pipeline: self.pipeline.clone(),
            database: self.database.clone(),
            collection: collection.to_string(),
            partition: None,
            position,
            txid: Some(tx.xid.to_string()),
            commit_time: Some(tx.commit_time),
            unchanged_columns: Vec::new(),
        }
    }

    fn derived_id(&self, position: &str) -> String {
        event_id_from_position(&self.pipeline, None, position)
    }
}

/// The position of a change: `<commit lsn>/<change lsn>/<index in transaction>`.
///
/// Written digit by digit: it is rendered for every change, and `format!` cost as much
/// as a tenth of a drain's instructions (docs/benchmarks.md).
pub(crate) fn position(tx: &TxInfo, change_lsn: Lsn, index: u64) -> String {
    let mut out = String::with_capacity(48);
    push_lsn(&mut out, tx.commit_lsn);
    out.push('/');
    push_lsn(&mut out, change_lsn);
    out.push('/');
    out.push_str(itoa::Buffer::new().format(index));
    out
}

/// Appends an LSN as `X/Y` in uppercase hexadecimal, as [`Lsn`]'s `Display` does.
fn push_lsn(out: &mut String, lsn: Lsn) {
    push_hex(out, (lsn.0 >> 32) as u32);
    out.push('/');
    push_hex(out, lsn.0 as u32);
}

/// Appends `value` in uppercase hexadecimal without leading zeros (`0` for zero).
fn push_hex(out: &mut String, value: u32) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    // Significant nibbles: at least one, so that zero prints as `0`.
    let nibbles = ((32 - value.leading_zeros()).div_ceil(4)).max(1);
    for shift in (0..nibbles).rev() {
        out.push(char::from(DIGITS[((value >> (shift * 4)) & 0xF) as usize]));
    }
}

/// A row change, decoded.
pub(crate) enum RowChange<'a> {
    Insert(&'a [TupleValue<'a>]),
    Update {
        old: Option<&'a OldTuple<'a>>,
        new: &'a [TupleValue<'a>],
    },
    Delete(&'a OldTuple<'a>),
}

/// The event for a row change, or `None` when the mode drops it.
pub(crate) fn row_event(
    stream: &StreamInfo,
    rel: &RelationInfo,
    tx: &TxInfo,
    change: RowChange<'_>,
    position: String,
) -> Result<Option<Envelope>, Error> {
    match stream.mode {
        Mode::Table => table_event(stream, rel, tx, change, position).map(Some),
        Mode::Outbox => match change {
            RowChange::Insert(new) => outbox_event(stream, rel, tx, new, position).map(Some),
            RowChange::Update { .. } => {
                warn!(
                    collection = %rel.collection,
                    position = %position,
                    "outbox row updated; updates of outbox rows are not events and are dropped"
                );
                Ok(None)
            }
            RowChange::Delete(_) => {
                trace!(collection = %rel.collection, "outbox delete dropped");
                Ok(None)
            }
        },
        Mode::Message => Ok(None),
    }
}

fn table_event(
    stream: &StreamInfo,
    rel: &RelationInfo,
    tx: &TxInfo,
    change: RowChange<'_>,
    position: String,
) -> Result<Envelope, Error> {
    let mut unchanged = Vec::new();
    let (op, before, after) = match change {
        RowChange::Insert(new) => (
            Op::Insert,
            None,
            Some(rel.image(new, None, &mut unchanged)?),
        ),
        RowChange::Update { old, new } => {
            let after = rel.image(new, None, &mut unchanged)?;
            let before = match old {
                Some(OldTuple::Full(t)) => Some(rel.image(t, None, &mut Vec::new())?),
                Some(OldTuple::Key(t)) => {
                    Some(rel.image(t, Some(&rel.identity), &mut Vec::new())?)
                }
                None => None,
            };
            (Op::Update, before, Some(after))
        }
        RowChange::Delete(old) => {
            let before = match old {
                OldTuple::Full(t) => rel.image(t, None, &mut Vec::new())?,
                OldTuple::Key(t) => rel.image(t, Some(&rel.identity), &mut Vec::new())?,
            };
            (Op::Delete, Some(before), None)
        }
    };
    let (key, aggregate_id) = match (&after, &before) {
        (Some(row), _) | (None, Some(row)) => (rel.key_of(row), rel.key_text(row)),
        (None, None) => (RawJson::null(), String::new()),
    };
    let before = before.map(RowImage::into_json);
    let after = after.map(RowImage::into_json);
    let payload = after
        .as_ref()
        .or(before.as_ref())
        .cloned()
        .unwrap_or_else(RawJson::null);
    let mut source = stream.source(&rel.collection, position, tx);
    source.unchanged_columns = unchanged;
    Ok(Envelope {
        id: stream.derived_id(&source.position),
        op,
        aggregate_type: rel.collection.clone(),
        aggregate_id,
        event_type: format!("{}.{}", rel.collection, op.as_str()),
        payload,
        key: Some(key),
        before,
        after,
        headers: BTreeMap::new(),
        source,
    })
}

/// A value's text for a field or header: a JSON string's content, any other value's
/// JSON text, or `None` for null and a missing value.
fn text_of(json: Option<&str>) -> Option<Cow<'_, str>> {
    match json? {
        "null" => None,
        text => Some(json_string_content(text).unwrap_or(Cow::Borrowed(text))),
    }
}

/// Headers from the JSON text of a tracing column or message field (see
/// [`headers_from_text`]).
fn headers_from_json(json: Option<&str>) -> BTreeMap<String, String> {
    match json {
        None | Some("null") => BTreeMap::new(),
        Some(text) => match json_string_content(text) {
            Some(content) => headers_from_text(&content),
            None => match serde_json::from_str::<Value>(text) {
                Ok(Value::Object(map)) => headers_from_object(&map),
                _ => BTreeMap::new(),
            },
        },
    }
}

/// Headers from a JSON object: each member that is not null, strings as they are and
/// other values as JSON.
fn headers_from_object(map: &serde_json::Map<String, Value>) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    for (k, v) in map {
        match v {
            Value::Null => {}
            Value::String(text) => {
                headers.insert(k.clone(), text.clone());
            }
            other => {
                headers.insert(k.clone(), other.to_string());
            }
        }
    }
    headers
}

/// Headers from a tracing column's or message field's text: a W3C traceparent, text of
/// `key=value` lines (Debezium's form), or a JSON object of strings.
fn headers_from_text(text: &str) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    let text = text.trim();
    if text.starts_with('{') {
        if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text) {
            return headers_from_object(&map);
        }
    }
    if text.contains('=') {
        for line in text.lines() {
            if let Some((k, v)) = line.split_once('=') {
                let k = k.trim();
                if !k.is_empty() && !k.starts_with('#') {
                    headers.insert(k.to_string(), v.trim().to_string());
                }
            }
        }
    } else if !text.is_empty() {
        headers.insert("traceparent".to_string(), text.to_string());
    }
    headers
}

fn outbox_event(
    stream: &StreamInfo,
    rel: &RelationInfo,
    tx: &TxInfo,
    new: &[TupleValue<'_>],
    position: String,
) -> Result<Envelope, Error> {
    let Some(index) = &rel.outbox else {
        return Err(Error::fatal(format!(
            "{} is not an outbox table; this is a bug in outflow",
            rel.collection
        )));
    };
    let mut unchanged = Vec::new();
    let row = rel.image(new, None, &mut unchanged)?;
    let column = |i: usize| row.value(i);
    let field = |i: usize| {
        text_of(column(i)).map(Cow::into_owned).unwrap_or_else(|| {
            warn!(
                collection = %rel.collection,
                column = %rel.columns[i].0,
                position = %position,
                "outbox column is null; delivered as an empty string"
            );
            String::new()
        })
    };
    let aggregate_type = field(index.aggregate_type);
    let aggregate_id = field(index.aggregate_id);
    let event_type = field(index.event_type);
    let id = text_of(column(index.id))
        .map(Cow::into_owned)
        .unwrap_or_else(|| {
            warn!(
                collection = %rel.collection,
                position = %position,
                "outbox id is null; the event gets an id derived from its position"
            );
            stream.derived_id(&position)
        });
    let payload = column(index.payload).map_or_else(RawJson::null, |text| {
        RawJson::from_text_unchecked(text.to_string())
    });
    let headers = headers_from_json(index.tracing.and_then(column));
    let key = rel.key_of(&row);
    let mut source = stream.source(&rel.collection, position, tx);
    source.unchanged_columns = unchanged;
    Ok(Envelope {
        id,
        op: Op::Insert,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        key: Some(key),
        before: None,
        after: Some(row.into_json()),
        headers,
        source,
    })
}

/// Truncate events, one per truncated captured table (table mode only).
pub(crate) fn truncate_event(
    stream: &StreamInfo,
    rel: &RelationInfo,
    tx: &TxInfo,
    position: String,
) -> Option<Envelope> {
    if stream.mode != Mode::Table {
        debug!(collection = %rel.collection, "truncate ignored outside table mode");
        return None;
    }
    let source = stream.source(&rel.collection, position, tx);
    Some(Envelope {
        id: stream.derived_id(&source.position),
        op: Op::Truncate,
        aggregate_type: rel.collection.clone(),
        aggregate_id: String::new(),
        event_type: format!("{}.truncate", rel.collection),
        payload: RawJson::null(),
        key: None,
        before: None,
        after: None,
        headers: BTreeMap::new(),
        source,
    })
}

/// Why a logical decoding message is not an event.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MessageSkip {
    /// Not message mode, or another prefix: not ours.
    NotOurs,
    /// Ours, but the content is not the documented JSON object.
    Invalid(String),
}

/// The event of a transactional logical decoding message (message mode).
pub(crate) fn message_event(
    stream: &StreamInfo,
    tx: &TxInfo,
    prefix: &str,
    content: &[u8],
    position: String,
) -> Result<Envelope, MessageSkip> {
    if stream.mode != Mode::Message || prefix != stream.message_prefix {
        return Err(MessageSkip::NotOurs);
    }
    // Each member kept as its text: the payload goes out as the writer wrote it.
    let object: BTreeMap<String, &RawValue> = match serde_json::from_slice(content) {
        Ok(object) => object,
        Err(_) => {
            return Err(MessageSkip::Invalid(
                match serde_json::from_slice::<&RawValue>(content) {
                    Ok(_) => "content is not a JSON object".to_string(),
                    Err(e) => format!("content is not JSON: {e}"),
                },
            ))
        }
    };
    let member = |name: &str| object.get(name).map(|raw| raw.get());
    let required = |name: &str| {
        text_of(member(name))
            .map(Cow::into_owned)
            .ok_or_else(|| MessageSkip::Invalid(format!("content has no {name:?} string")))
    };
    let aggregate_type = required("aggregatetype")?;
    let aggregate_id = required("aggregateid")?;
    let event_type = required("type")?;
    let id = text_of(member("id"))
        .map(Cow::into_owned)
        .unwrap_or_else(|| stream.derived_id(&position));
    let mut headers = headers_from_json(member("headers"));
    headers.extend(headers_from_json(member("tracingspancontext")));
    let payload = member("payload").map_or_else(RawJson::null, |text| {
        RawJson::from_text_unchecked(text.to_string())
    });
    Ok(Envelope {
        id,
        op: Op::Message,
        aggregate_type,
        aggregate_id,
        event_type,
        payload,
        key: None,
        before: None,
        after: None,
        headers,
        source: stream.source(prefix, position, tx),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decoder::{RelationColumn, ReplicaIdentity};
    use serde_json::json;

    fn stream(mode: Mode) -> StreamInfo {
        StreamInfo {
            pipeline: "orders".into(),
            database: "shop".into(),
            mode,
            message_prefix: "outbox".into(),
        }
    }

    fn tx() -> TxInfo {
        TxInfo {
            commit_lsn: Lsn(0x16B3748),
            xid: 731,
            commit_time: pg_time(0),
        }
    }

    fn relation(names: &[&str], identity: ReplicaIdentity) -> Relation {
        Relation {
            oid: 1,
            namespace: "public".into(),
            name: "items".into(),
            replica_identity: identity,
            columns: names
                .iter()
                .enumerate()
                .map(|(i, n)| RelationColumn {
                    is_key: identity == ReplicaIdentity::Full || i == 0,
                    name: n.to_string(),
                    type_oid: 25,
                    type_modifier: -1,
                })
                .collect(),
        }
    }

    #[test]
    fn positions_match_the_formatted_text() {
        let fixed = [
            (0u64, 0u64, 0u64),
            (0x16B3748, 0x16B3700, 2),
            (u64::MAX, u64::MAX - 1, u64::MAX),
            (0x1_0000_0000, 0xFFFF_FFFF, 10),
            (0xABCD_EF01_2345_6789, 0x10, 1_000_000),
        ];
        // Every digit count in both halves: each power of two and the value before it.
        let boundaries = (0..64).flat_map(|bit| {
            let power = 1u64 << bit;
            [(power, power - 1, power), (power - 1, power, power - 1)]
        });
        for (commit, change, index) in fixed.into_iter().chain(boundaries) {
            let tx = TxInfo {
                commit_lsn: Lsn(commit),
                xid: 1,
                commit_time: pg_time(0),
            };
            assert_eq!(
                position(&tx, Lsn(change), index),
                format!("{}/{}/{index}", Lsn(commit), Lsn(change))
            );
        }
    }

    #[test]
    fn postgres_epoch_converts() {
        assert_eq!(pg_time(0).to_string(), "2000-01-01T00:00:00.000000Z");
        assert_eq!(
            pg_time(1_500_000).to_string(),
            "2000-01-01T00:00:01.500000Z"
        );
    }

    #[test]
    fn table_mode_uses_the_primary_key_under_full_identity() {
        let rel = relation(&["a", "b", "c"], ReplicaIdentity::Full);
        let kinds = vec![Kind::Text, Kind::Int, Kind::Text];
        let info = RelationInfo::new(
            &rel,
            kinds,
            &["b".into(), "a".into()],
            Mode::Table,
            &OutboxColumns::default(),
        )
        .unwrap();
        let old = OldTuple::Full(vec![
            TupleValue::Text(b"x"),
            TupleValue::Text(b"7"),
            TupleValue::Text(b"old"),
        ]);
        let new = [
            TupleValue::Text(b"x"),
            TupleValue::Text(b"7"),
            TupleValue::UnchangedToast,
        ];
        let pos = position(&tx(), Lsn(0x16B3700), 2);
        assert_eq!(pos, "0/16B3748/0/16B3700/2");
        let e = row_event(
            &stream(Mode::Table),
            &info,
            &tx(),
            RowChange::Update {
                old: Some(&old),
                new: &new,
            },
            pos.clone(),
        )
        .unwrap()
        .unwrap();
        assert_eq!(e.op, Op::Update);
        assert_eq!(e.aggregate_id, "7:x");
        assert_eq!(e.key, Some(json!({"b": 7, "a": "x"}).into()));
        assert_eq!(e.before, Some(json!({"a": "x", "b": 7, "c": "old"}).into()));
        assert_eq!(e.after, Some(json!({"a": "x", "b": 7}).into()));
        // The texts themselves: columns in table order, the key in key order.
        assert_eq!(e.key.as_ref().unwrap().as_str(), r#"{"b":7,"a":"x"}"#);
        assert_eq!(e.after.as_ref().unwrap().as_str(), r#"{"a":"x","b":7}"#);
        assert_eq!(e.payload.as_str(), r#"{"a":"x","b":7}"#);
        assert_eq!(e.source.unchanged_columns, vec!["c".to_string()]);
        assert_eq!(e.event_type, "public.items.update");
        assert_eq!(e.id, event_id_from_position("orders", None, &pos));
        assert_eq!(e.source.txid.as_deref(), Some("731"));
    }

    /// Keys and fields are read back from the row's JSON text: escaped strings come back
    /// as their text, numbers as their digits, names that need escaping stay names.
    #[test]
    fn texts_are_read_back_from_the_row_image() {
        let rel = relation(&["k\"ey", "n", "doc"], ReplicaIdentity::Full);
        let info = RelationInfo::new(
            &rel,
            vec![Kind::Text, Kind::Int8, Kind::Jsonb],
            &["k\"ey".into(), "n".into()],
            Mode::Table,
            &OutboxColumns::default(),
        )
        .unwrap();
        let row = [
            TupleValue::Text(b"a\"b\\c\nd"),
            TupleValue::Text(b"9007199254740993"),
            TupleValue::Null,
        ];
        let event = |change| {
            row_event(&stream(Mode::Table), &info, &tx(), change, "p".into())
                .unwrap()
                .unwrap()
        };
        let e = event(RowChange::Insert(&row));
        assert_eq!(e.aggregate_id, "a\"b\\c\nd:9007199254740993");
        assert_eq!(
            e.after.as_ref().unwrap().as_str(),
            r#"{"k\"ey":"a\"b\\c\nd","n":"9007199254740993","doc":null}"#
        );
        assert_eq!(
            e.key.as_ref().unwrap().as_str(),
            r#"{"k\"ey":"a\"b\\c\nd","n":"9007199254740993"}"#
        );
        let delete = OldTuple::Full(row.to_vec());
        let e = event(RowChange::Delete(&delete));
        assert_eq!(e.after, None);
        assert_eq!(e.payload, e.before.clone().unwrap());
        assert_eq!(e.aggregate_id, "a\"b\\c\nd:9007199254740993");
    }

    #[test]
    fn outbox_mode_reads_the_columns_and_drops_deletes() {
        let rel = relation(
            &[
                "id",
                "aggregatetype",
                "aggregateid",
                "type",
                "payload",
                "tracingspancontext",
            ],
            ReplicaIdentity::Default,
        );
        let kinds = vec![
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::Text,
            Kind::Json,
            Kind::Text,
        ];
        let info = RelationInfo::new(
            &rel,
            kinds,
            &["id".into()],
            Mode::Outbox,
            &OutboxColumns::default(),
        )
        .unwrap();
        let new = [
            TupleValue::Text(b"e-1"),
            TupleValue::Text(b"order"),
            TupleValue::Text(b"123"),
            TupleValue::Text(b"OrderCreated"),
            TupleValue::Text(br#"{"total": 42.5}"#),
            TupleValue::Text(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ];
        let s = stream(Mode::Outbox);
        let e = row_event(&s, &info, &tx(), RowChange::Insert(&new), "p".into())
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                e.id.as_str(),
                e.aggregate_type.as_str(),
                e.aggregate_id.as_str()
            ),
            ("e-1", "order", "123")
        );
        assert_eq!(e.event_type, "OrderCreated");
        assert_eq!(e.payload, json!({"total": 42.5}).into());
        assert_eq!(e.key, Some(json!({"id": "e-1"}).into()));
        // The payload is the column's text as Postgres wrote it, and `after` holds it.
        assert_eq!(e.payload.as_str(), r#"{"total": 42.5}"#);
        assert_eq!(
            e.after.as_ref().unwrap().as_str(),
            r#"{"id":"e-1","aggregatetype":"order","aggregateid":"123","type":"OrderCreated","payload":{"total": 42.5},"tracingspancontext":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#
        );
        assert_eq!(
            e.headers.get("traceparent").map(String::as_str),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        let old = OldTuple::Key(new.to_vec());
        assert!(
            row_event(&s, &info, &tx(), RowChange::Delete(&old), "p".into())
                .unwrap()
                .is_none()
        );
        assert!(row_event(
            &s,
            &info,
            &tx(),
            RowChange::Update {
                old: None,
                new: &new
            },
            "p".into()
        )
        .unwrap()
        .is_none());

        let bad = RelationInfo::new(
            &relation(&["id", "payload"], ReplicaIdentity::Default),
            vec![Kind::Text, Kind::Json],
            &[],
            Mode::Outbox,
            &OutboxColumns::default(),
        )
        .unwrap_err();
        assert!(
            bad.to_string().contains("no column \"aggregatetype\""),
            "{bad}"
        );
    }

    #[test]
    fn headers_from_text_properties_and_json() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            headers_from_json(Some(r#""traceparent=00-a-b-01\ntracestate=x=1""#)),
            map(&[("traceparent", "00-a-b-01"), ("tracestate", "x=1")])
        );
        assert_eq!(
            headers_from_json(Some(r#"{"traceparent": "00-a-b-01", "n": 1, "z": null}"#)),
            map(&[("traceparent", "00-a-b-01"), ("n", "1")])
        );
        // A JSON object kept in a text column, and a bare traceparent.
        assert_eq!(
            headers_from_json(Some(r#""{\"traceparent\": \"00-a-b-01\"}""#)),
            map(&[("traceparent", "00-a-b-01")])
        );
        assert_eq!(
            headers_from_json(Some(r#"" 00-a-b-01 ""#)),
            map(&[("traceparent", "00-a-b-01")])
        );
        assert!(headers_from_json(Some("null")).is_empty());
        assert!(headers_from_json(None).is_empty());
        assert!(headers_from_json(Some(r#""""#)).is_empty());
        assert!(headers_from_json(Some("[1, 2]")).is_empty());
    }

    #[test]
    fn message_mode_reads_the_outbox_writers_json() {
        let s = stream(Mode::Message);
        let content = br#"{"id":"0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d","aggregatetype":"order","aggregateid":"123","type":"OrderCreated","payload":{"n":1},"tracingspancontext":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}"#;
        let e = message_event(&s, &tx(), "outbox", content, "p".into()).unwrap();
        assert_eq!(e.id, "0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d");
        assert_eq!(e.op, Op::Message);
        assert_eq!(e.payload, json!({"n": 1}).into());
        assert_eq!(e.source.collection, "outbox");
        assert_eq!(e.headers.len(), 1);
        assert_eq!(
            message_event(&s, &tx(), "other", content, "p".into()).unwrap_err(),
            MessageSkip::NotOurs
        );
        assert!(matches!(
            message_event(&s, &tx(), "outbox", b"{\"type\":1}", "p".into()),
            Err(MessageSkip::Invalid(why)) if why.contains("aggregatetype")
        ));
        assert!(matches!(
            message_event(&s, &tx(), "outbox", b"nope", "p".into()),
            Err(MessageSkip::Invalid(why)) if why == "content is not JSON: expected ident at line 1 column 2"
        ));
        assert_eq!(
            message_event(&s, &tx(), "outbox", b"[1, 2]", "p".into()).unwrap_err(),
            MessageSkip::Invalid("content is not a JSON object".into())
        );
        // Numbers in the payload keep every digit; an escaped key is read as its text.
        let precise = br#"{"aggregatetype":"order","aggregateid":"a\"1","type":"T","payload":{"amount": 10.50, "big": 123456789012345678901234567890}}"#;
        let e = message_event(&s, &tx(), "outbox", precise, "p".into()).unwrap();
        assert_eq!(
            e.payload.as_str(),
            r#"{"amount": 10.50, "big": 123456789012345678901234567890}"#
        );
        assert_eq!(e.aggregate_id, "a\"1");
        assert_eq!(
            message_event(&stream(Mode::Outbox), &tx(), "outbox", content, "p".into()).unwrap_err(),
            MessageSkip::NotOurs
        );
    }
}
