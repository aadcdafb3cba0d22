//! The envelope: one JSON shape for every change, whatever its source.
//!
//! Field names and their meaning are stable API (see `docs/envelope.md`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::RawJson;

/// The kind of change an envelope carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// A row or item was inserted.
    Insert,
    /// A row or item was updated.
    Update,
    /// A row or item was deleted.
    Delete,
    /// A table was truncated.
    Truncate,
    /// A row read during a backfill.
    Snapshot,
    /// A Postgres logical decoding message (`pg_logical_emit_message`).
    Message,
}

impl Op {
    /// The lowercase name used in the envelope and in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Snapshot => "snapshot",
            Op::Message => "message",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A commit time, kept as microseconds since the Unix epoch and written as RFC 3339 in
/// UTC with six fractional digits, e.g. `2026-12-03T12:00:00.123456Z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// From microseconds since the Unix epoch.
    pub const fn from_unix_micros(micros: i64) -> Self {
        Timestamp(micros)
    }

    /// Microseconds since the Unix epoch.
    pub const fn unix_micros(self) -> i64 {
        self.0
    }

    /// The current time of the system clock.
    pub fn now() -> Self {
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        Timestamp((nanos / 1_000) as i64)
    }

    /// Parses an RFC 3339 timestamp with any offset.
    pub fn parse_rfc3339(text: &str) -> Option<Self> {
        let dt = OffsetDateTime::parse(text, &Rfc3339).ok()?;
        Some(Timestamp((dt.unix_timestamp_nanos() / 1_000) as i64))
    }
}

impl Timestamp {
    /// Writes the RFC 3339 text (`2026-12-03T12:00:00.123456Z`) into `out`, or `None` for
    /// a year outside 0000–9999. Written digit by digit: serializing an envelope does this
    /// once per event.
    pub(crate) fn rfc3339(self, out: &mut [u8; 27]) -> Option<()> {
        let secs = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000) as u32;
        let days = secs.div_euclid(86_400);
        let of_day = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        fn put(out: &mut [u8], mut value: u32) {
            for slot in out.iter_mut().rev() {
                *slot = b'0' + (value % 10) as u8;
                value /= 10;
            }
        }
        put(&mut out[0..4], year as u32);
        out[4] = b'-';
        put(&mut out[5..7], month);
        out[7] = b'-';
        put(&mut out[8..10], day);
        out[10] = b'T';
        put(&mut out[11..13], of_day / 3600);
        out[13] = b':';
        put(&mut out[14..16], of_day / 60 % 60);
        out[16] = b':';
        put(&mut out[17..19], of_day % 60);
        out[19] = b'.';
        put(&mut out[20..26], micros);
        out[26] = b'Z';
        Some(())
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], March-based
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 27];
        match self.rfc3339(&mut text) {
            // Only ASCII digits and separators were written.
            Some(()) => f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?),
            None => write!(f, "{}", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut text = [0u8; 27];
        match self.rfc3339(&mut text) {
            Some(()) => match std::str::from_utf8(&text) {
                Ok(text) => serializer.serialize_str(text),
                Err(_) => serializer.collect_str(self),
            },
            None => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Timestamp::parse_rfc3339(&text).ok_or_else(|| {
            serde::de::Error::custom(format!("expected an RFC 3339 timestamp, found {text:?}"))
        })
    }
}

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct SourceInfo {
    /// The connector type: `postgres`, `cockroachdb`, `dynamodb`, `cosmosdb`, `generate`.
    pub connector: String,
    /// The pipeline name from the configuration.
    pub pipeline: String,
    /// The database (or account, or region) the change was read from.
    pub database: String,
    /// The table, container or stream, e.g. `public.outbox`.
    pub collection: String,
    /// The source partition (a DynamoDB shard, a Cosmos feed range); `null` where the
    /// source has one partition.
    pub partition: Option<String>,
    /// The change's position in its source, unique per change, in the source's own
    /// notation (for Postgres `<commit lsn>/<change lsn>/<index>`).
    pub position: String,
    /// The source transaction id, where the source has one.
    pub txid: Option<String>,
    /// When the change was committed in the source.
    pub commit_time: Option<Timestamp>,
    /// Columns whose values were not sent because they did not change (Postgres
    /// unchanged TOAST values). Absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged_columns: Vec<String>,
}

/// One change, in the form every sink receives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Stable across redelivery: the outbox row's id where there is one, otherwise a
    /// UUID v5 of the pipeline name and the source position.
    pub id: String,
    /// The kind of change.
    pub op: Op,
    /// The aggregate's type (outbox mode) or the collection name (table mode).
    pub aggregate_type: String,
    /// The aggregate's id (outbox mode) or the primary key as a string (table mode).
    pub aggregate_id: String,
    /// The event type (outbox mode) or `<collection>.<op>` (table mode).
    pub event_type: String,
    /// The event payload (outbox mode) or the row image (table mode), as JSON text.
    pub payload: RawJson,
    /// The raw key of the row or item, where the source provides it.
    pub key: Option<RawJson>,
    /// The image before the change, where the source provides it.
    pub before: Option<RawJson>,
    /// The image after the change, where the source provides it.
    pub after: Option<RawJson>,
    /// Headers carried along, such as a W3C `traceparent`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Where the change came from.
    pub source: SourceInfo,
}

/// The namespace of derived event ids: a fixed UUID, so the same pipeline and position
/// always give the same id on every host.
const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f75_7466_6c6f_5000_8000_6576_656e_7473);

/// The id of a change that has no id of its own: a UUID v5 of the pipeline name, the
/// partition (empty where there is none) and the source position.
pub fn event_id_from_position(pipeline: &str, partition: Option<&str>, position: &str) -> String {
    let mut name = String::with_capacity(pipeline.len() + position.len() + 16);
    name.push_str(pipeline);
    name.push('\n');
    name.push_str(partition.unwrap_or(""));
    name.push('\n');
    name.push_str(position);
    Uuid::new_v5(&EVENT_ID_NAMESPACE, name.as_bytes()).to_string()
}

impl Envelope {
    /// Appends the envelope as compact JSON: the same bytes as `serde_json::to_writer`,
    /// written faster (the envelope format's body; see `docs/envelope.md`).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        crate::json::write_envelope(out, self);
    }

    /// The envelope as compact JSON (see [`Envelope::write_json`]).
    pub fn to_json_vec(&self) -> Vec<u8> {
        // A typical outbox envelope's size; not `approx_size`, which walks the payload
        // tree once more per event only to save a reallocation or two.
        let mut out = Vec::with_capacity(512);
        self.write_json(&mut out);
        out
    }

    /// An approximation of the serialized size in bytes, used for batch limits.
    pub fn approx_size(&self) -> usize {
        let opt = |v: &Option<RawJson>| v.as_ref().map_or(4, |v| v.as_str().len());
        200 + self.id.len()
            + self.aggregate_type.len()
            + self.aggregate_id.len()
            + self.event_type.len()
            + self.payload.as_str().len()
            + opt(&self.key)
            + opt(&self.before)
            + opt(&self.after)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 6)
                .sum::<usize>()
            + self.source.collection.len()
            + self.source.position.len()
            + self.source.database.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Envelope {
        Envelope {
            id: "5f0c1a2b-0000-4000-8000-000000000001".into(),
            op: Op::Insert,
            aggregate_type: "order".into(),
            aggregate_id: "123".into(),
            event_type: "OrderCreated".into(),
            payload: json!({"orderId": 123, "total": 42.5}).into(),
            key: Some(json!({"id": "5f0c1a2b-0000-4000-8000-000000000001"}).into()),
            before: None,
            after: Some(json!({"id": "5f0c1a2b-0000-4000-8000-000000000001"}).into()),
            headers: BTreeMap::from([("traceparent".to_string(), "00-abc-def-01".to_string())]),
            source: SourceInfo {
                connector: "postgres".into(),
                pipeline: "orders".into(),
                database: "shop".into(),
                collection: "public.outbox".into(),
                partition: None,
                position: "0/16B3748/2".into(),
                txid: Some("731".into()),
                commit_time: Timestamp::parse_rfc3339("2026-12-03T12:00:00.123456Z"),
                unchanged_columns: vec![],
            },
        }
    }

    #[test]
    fn envelope_json_has_exactly_the_documented_fields() {
        let value = serde_json::to_value(sample()).unwrap();
        let expected = json!({
            "id": "5f0c1a2b-0000-4000-8000-000000000001",
            "op": "insert",
            "aggregate_type": "order",
            "aggregate_id": "123",
            "event_type": "OrderCreated",
            "payload": {"orderId": 123, "total": 42.5},
            "key": {"id": "5f0c1a2b-0000-4000-8000-000000000001"},
            "before": null,
            "after": {"id": "5f0c1a2b-0000-4000-8000-000000000001"},
            "headers": {"traceparent": "00-abc-def-01"},
            "source": {
                "connector": "postgres",
                "pipeline": "orders",
                "database": "shop",
                "collection": "public.outbox",
                "partition": null,
                "position": "0/16B3748/2",
                "txid": "731",
                "commit_time": "2026-12-03T12:00:00.123456Z"
            }
        });
        assert_eq!(value, expected);
    }

    #[test]
    fn envelope_round_trips_with_unchanged_columns() {
        let mut env = sample();
        env.op = Op::Update;
        env.before = Some(json!({"id": 1}).into());
        env.source.unchanged_columns = vec!["big".into()];
        let text = serde_json::to_string(&env).unwrap();
        assert!(text.contains(r#""unchanged_columns":["big"]"#), "{text}");
        let back: Envelope = serde_json::from_str(&text).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn every_op_has_its_lowercase_name() {
        for (op, name) in [
            (Op::Insert, "insert"),
            (Op::Update, "update"),
            (Op::Delete, "delete"),
            (Op::Truncate, "truncate"),
            (Op::Snapshot, "snapshot"),
            (Op::Message, "message"),
        ] {
            assert_eq!(serde_json::to_value(op).unwrap(), json!(name));
            assert_eq!(op.to_string(), name);
        }
    }

    #[test]
    fn timestamps_format_as_the_time_crate_does_across_the_range() {
        let reference = |micros: i64| {
            let dt = OffsetDateTime::from_unix_timestamp(micros.div_euclid(1_000_000)).unwrap();
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
                dt.year(),
                u8::from(dt.month()),
                dt.day(),
                dt.hour(),
                dt.minute(),
                dt.second(),
                micros.rem_euclid(1_000_000)
            )
        };
        // Every day from 1600 to 2400 (leap years, centuries, the epoch), at a time of day
        // that moves through the hours, minutes, seconds and microseconds.
        let first = -11_676_096_000i64; // 1600-01-01
        for day in 0..292_195i64 {
            let micros = (first + day * 86_400 + (day * 7_919) % 86_400) * 1_000_000
                + (day * 104_729) % 1_000_000;
            let ts = Timestamp::from_unix_micros(micros);
            assert_eq!(ts.to_string(), reference(micros), "{micros}");
            assert_eq!(
                serde_json::to_string(&ts).unwrap(),
                format!("\"{}\"", reference(micros))
            );
        }
        assert_eq!(
            Timestamp::from_unix_micros(i64::MAX).to_string(),
            i64::MAX.to_string()
        );
    }

    #[test]
    fn timestamps_format_with_microseconds_in_utc() {
        let ts = Timestamp::parse_rfc3339("2026-12-03T13:00:00.5+01:00").unwrap();
        assert_eq!(ts.to_string(), "2026-12-03T12:00:00.500000Z");
        assert_eq!(
            Timestamp::from_unix_micros(0).to_string(),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            Timestamp::from_unix_micros(-1).to_string(),
            "1969-12-31T23:59:59.999999Z"
        );
        assert!(Timestamp::parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let a = event_id_from_position("orders", None, "0/16B3748/2");
        assert_eq!(a, event_id_from_position("orders", None, "0/16B3748/2"));
        assert_ne!(a, event_id_from_position("orders", None, "0/16B3748/3"));
        assert_ne!(a, event_id_from_position("billing", None, "0/16B3748/2"));
        assert_ne!(
            a,
            event_id_from_position("orders", Some("shard-1"), "0/16B3748/2")
        );
        let parsed = Uuid::parse_str(&a).unwrap();
        assert_eq!(parsed.get_version_num(), 5);
    }
}
