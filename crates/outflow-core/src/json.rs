//! The envelope's JSON text, written by hand.
//!
//! Every event is serialized once on its way to a broker, so this is a hot path. The
//! output is byte for byte what `serde_json::to_writer` writes for the same value (the
//! tests below check it on every kind of value and on strings with every character that
//! needs escaping at every offset); it is faster because the field names are written as
//! prepared bytes, and because strings are scanned eight bytes at a time for the rare
//! characters that need escaping instead of one byte at a time.

use serde_json::Value;

use crate::{Envelope, RawJson, SourceInfo, Timestamp};

/// Appends the envelope as compact JSON.
pub(crate) fn write_envelope(out: &mut Vec<u8>, e: &Envelope) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, &e.id);
    out.extend_from_slice(b",\"op\":\"");
    out.extend_from_slice(e.op.as_str().as_bytes());
    out.extend_from_slice(b"\",\"aggregate_type\":");
    write_str(out, &e.aggregate_type);
    out.extend_from_slice(b",\"aggregate_id\":");
    write_str(out, &e.aggregate_id);
    out.extend_from_slice(b",\"event_type\":");
    write_str(out, &e.event_type);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(e.payload.as_str().as_bytes());
    out.extend_from_slice(b",\"key\":");
    write_option(out, e.key.as_ref());
    out.extend_from_slice(b",\"before\":");
    write_option(out, e.before.as_ref());
    out.extend_from_slice(b",\"after\":");
    write_option(out, e.after.as_ref());
    out.extend_from_slice(b",\"headers\":");
    write_object(out, e.headers.iter(), |out, value| write_str(out, value));
    out.extend_from_slice(b",\"source\":");
    write_source(out, &e.source);
    out.push(b'}');
}

/// Appends the CloudEvents 1.0 structured JSON of an event: the same bytes as
/// serde_json writes for `format::CloudEvent`, the payload's text copied as it is.
pub(crate) fn write_cloudevent(out: &mut Vec<u8>, e: &Envelope) {
    out.extend_from_slice(b"{\"specversion\":\"1.0\",\"id\":");
    write_str(out, &e.id);
    out.extend_from_slice(b",\"source\":\"outflow/");
    write_content(out, &e.source.pipeline);
    out.push(b'/');
    write_content(out, &e.source.collection);
    out.push(b'"');
    out.extend_from_slice(b",\"type\":");
    write_str(out, &e.event_type);
    out.extend_from_slice(b",\"subject\":");
    write_str(out, &e.aggregate_id);
    if let Some(time) = e.source.commit_time {
        out.extend_from_slice(b",\"time\":");
        write_timestamp(out, time);
    }
    out.extend_from_slice(b",\"datacontenttype\":\"application/json\",\"aggregatetype\":");
    write_str(out, &e.aggregate_type);
    out.extend_from_slice(b",\"data\":");
    out.extend_from_slice(e.payload.as_str().as_bytes());
    out.push(b'}');
}

fn write_source(out: &mut Vec<u8>, s: &SourceInfo) {
    out.extend_from_slice(b"{\"connector\":");
    write_str(out, &s.connector);
    out.extend_from_slice(b",\"pipeline\":");
    write_str(out, &s.pipeline);
    out.extend_from_slice(b",\"database\":");
    write_str(out, &s.database);
    out.extend_from_slice(b",\"collection\":");
    write_str(out, &s.collection);
    out.extend_from_slice(b",\"partition\":");
    write_option_str(out, s.partition.as_deref());
    out.extend_from_slice(b",\"position\":");
    write_str(out, &s.position);
    out.extend_from_slice(b",\"txid\":");
    write_option_str(out, s.txid.as_deref());
    out.extend_from_slice(b",\"commit_time\":");
    match s.commit_time {
        Some(time) => write_timestamp(out, time),
        None => out.extend_from_slice(b"null"),
    }
    if !s.unchanged_columns.is_empty() {
        out.extend_from_slice(b",\"unchanged_columns\":[");
        for (i, column) in s.unchanged_columns.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, column);
        }
        out.push(b']');
    }
    out.push(b'}');
}

fn write_timestamp(out: &mut Vec<u8>, time: Timestamp) {
    let mut text = [0u8; 27];
    match time.rfc3339(&mut text) {
        Some(()) => {
            out.push(b'"');
            out.extend_from_slice(&text);
            out.push(b'"');
        }
        // Outside years 0000-9999: the text `Display` gives (digits and a sign).
        None => write_str(out, &time.to_string()),
    }
}

fn write_option(out: &mut Vec<u8>, value: Option<&RawJson>) {
    match value {
        Some(value) => out.extend_from_slice(value.as_str().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
}

fn write_option_str(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => write_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// Appends a JSON value as compact JSON, members in the map's own order.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json's own number text: integers in decimal (serde_json uses itoa too),
        // floats shortest round-trip through serde_json itself.
        Value::Number(n) => {
            if let Some(n) = n.as_u64() {
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            } else if let Some(n) = n.as_i64() {
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            } else {
                serde_json::to_writer(&mut *out, n).expect("writing to a Vec cannot fail")
            }
        }
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => write_object(out, members.iter(), write_value),
    }
}

/// Appends an object, members in the iterator's order, each value written by `value`.
fn write_object<'a, V>(
    out: &mut Vec<u8>,
    members: impl Iterator<Item = (&'a String, V)>,
    mut value: impl FnMut(&mut Vec<u8>, V),
) {
    out.push(b'{');
    for (i, (name, member)) in members.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_str(out, name);
        out.push(b':');
        value(out, member);
    }
    out.push(b'}');
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the eight bytes is below 0x20, a quote or a backslash. Each test is
/// the classic "has a zero byte" bit trick; it may misjudge a byte next to a match, but
/// never whether there is one.
#[inline]
fn needs_escape(chunk: u64) -> bool {
    let control = chunk.wrapping_sub(ONES * 0x20) & !chunk;
    let quote = chunk ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = chunk ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGHS != 0
}

/// Where JSON text is written: a byte buffer or a `String`.
pub(crate) trait TextOut {
    fn put(&mut self, text: &str);
    fn reserve_more(&mut self, additional: usize);
}

impl TextOut for Vec<u8> {
    #[inline]
    fn put(&mut self, text: &str) {
        self.extend_from_slice(text.as_bytes());
    }
    #[inline]
    fn reserve_more(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

impl TextOut for String {
    #[inline]
    fn put(&mut self, text: &str) {
        self.push_str(text);
    }
    #[inline]
    fn reserve_more(&mut self, additional: usize) {
        self.reserve(additional);
    }
}

/// Appends a JSON string: quoted, with `"`, `\` and control characters escaped as
/// serde_json escapes them (`\n` and friends where JSON has a short form, else `\u00xx`).
pub(crate) fn write_str<O: TextOut + ?Sized>(out: &mut O, text: &str) {
    out.reserve_more(text.len() + 2);
    out.put("\"");
    write_content(out, text);
    out.put("\"");
}

/// Appends a JSON string's content, escaped, without its quotes.
fn write_content<O: TextOut + ?Sized>(out: &mut O, text: &str) {
    if is_plain(text.as_bytes()) {
        // Nearly every string: one copy, no byte-by-byte walk.
        out.put(text);
    } else {
        write_escaped(out, text);
    }
}

/// Whether no byte of `bytes` needs escaping: eight bytes at a time, then the tail.
#[inline]
fn is_plain(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        if needs_escape(u64::from_le_bytes(chunk.try_into().expect("eight bytes"))) {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
}

/// The escape sequences of the bytes below 0x20, as serde_json writes them.
const CONTROL: [&str; 32] = [
    "\\u0000", "\\u0001", "\\u0002", "\\u0003", "\\u0004", "\\u0005", "\\u0006", "\\u0007", "\\b",
    "\\t", "\\n", "\\u000b", "\\f", "\\r", "\\u000e", "\\u000f", "\\u0010", "\\u0011", "\\u0012",
    "\\u0013", "\\u0014", "\\u0015", "\\u0016", "\\u0017", "\\u0018", "\\u0019", "\\u001a",
    "\\u001b", "\\u001c", "\\u001d", "\\u001e", "\\u001f",
];

/// The body of a string with at least one byte to escape, without its quotes. Every
/// byte escaped is ASCII, so the text is cut only at character boundaries.
fn write_escaped<O: TextOut + ?Sized>(out: &mut O, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 8) {
            let chunk = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            if !needs_escape(chunk) {
                i += 8;
                continue;
            }
        }
        let escape = match bytes[i] {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            byte @ 0x00..=0x1f => CONTROL[usize::from(byte)],
            _ => {
                i += 1;
                continue;
            }
        };
        out.put(&text[start..i]);
        out.put(escape);
        i += 1;
        start = i;
    }
    out.put(&text[start..]);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::Op;

    /// Our text of `value` is serde_json's, byte for byte.
    fn assert_same_value(value: &Value) {
        let mut out = Vec::new();
        write_value(&mut out, value);
        assert_eq!(
            String::from_utf8_lossy(&out),
            serde_json::to_string(value).unwrap(),
            "{value:?}"
        );
    }

    /// Every character below 0x80 and a few multi-byte ones, alone and at every offset of
    /// strings long enough to cross two eight-byte chunks.
    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut specials: Vec<char> = (0u8..0x80).map(char::from).collect();
        specials.extend(['é', '€', '😀', '\u{2028}', '\u{7f}', '\u{80}', '\u{ffff}']);
        for special in specials {
            for len in 0..20 {
                for at in 0..=len {
                    let mut s: String = "abcdefghijklmnopqrstu".chars().take(len).collect();
                    s.insert(at.min(s.len()), special);
                    assert_same_value(&Value::String(s));
                }
            }
        }
    }

    /// Strings of random characters from an alphabet rich in escapes (a fixed-seed
    /// generator, so a failure reproduces).
    #[test]
    fn random_strings_match_serde_json() {
        let alphabet: Vec<char> = "ab\"\\\n\r\t\u{0}\u{1f}\u{8}\u{c} é€😀/<>\u{7f}"
            .chars()
            .collect();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 40) as usize;
            let s: String = (0..len)
                .map(|k| alphabet[((state >> (k % 50)) as usize + k * 7) % alphabet.len()])
                .collect();
            assert_same_value(&Value::String(s));
        }
    }

    #[test]
    fn values_match_serde_json() {
        let values = [
            json!(null),
            json!(true),
            json!(false),
            json!(0),
            json!(-1),
            json!(u64::MAX),
            json!(i64::MIN),
            json!(0.1),
            json!(-2.5e-300),
            json!(1.7976931348623157e308),
            json!(1e21),
            json!(100.0),
            json!([]),
            json!({}),
            json!([1, "two", [3, {"four": null}], {"a\"b": "c\\d"}]),
            json!({"z": 1, "a": {"nested": [true, false, "\u{1}"]}, "m": "é😀"}),
        ];
        for value in values {
            assert_same_value(&value);
        }
    }

    fn envelope() -> Envelope {
        Envelope {
            id: "0193a1b2-0000-7000-8000-000000000001".into(),
            op: Op::Insert,
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "OrderCreated".into(),
            payload: json!({"total": 12.5, "lines": [{"sku": "a\"1", "qty": 2}]}).into(),
            key: None,
            before: None,
            after: None,
            headers: BTreeMap::new(),
            source: SourceInfo {
                connector: "postgres".into(),
                pipeline: "orders".into(),
                database: "shop".into(),
                collection: "public.outbox".into(),
                partition: None,
                position: "0/16B3748/0".into(),
                txid: None,
                commit_time: None,
                unchanged_columns: Vec::new(),
            },
        }
    }

    fn assert_same(e: &Envelope) {
        let mut out = Vec::new();
        write_envelope(&mut out, e);
        assert_eq!(
            String::from_utf8_lossy(&out),
            serde_json::to_string(e).unwrap()
        );
    }

    /// The structured CloudEvent is serde_json's text of `format::CloudEvent`, byte for
    /// byte, with and without a time and with names that need escaping.
    #[test]
    fn cloudevents_match_serde_json() {
        let mut e = envelope();
        let check = |e: &Envelope| {
            let mut out = Vec::new();
            write_cloudevent(&mut out, e);
            assert_eq!(
                String::from_utf8_lossy(&out),
                serde_json::to_string(&crate::format::CloudEvent::of(e)).unwrap()
            );
        };
        check(&e);
        e.source.commit_time = Some(Timestamp::from_unix_micros(1_764_763_200_123_456));
        check(&e);
        e.source.pipeline = "odd \"pipe\"\n".into();
        e.source.collection = "public.\\outbox\u{1}".into();
        e.aggregate_id = "a\tb".into();
        check(&e);
        e.payload = RawJson::from_text(r#"{"amount": 10.50}"#).unwrap();
        check(&e);
    }

    /// Every field empty, absent and present, every op, timestamps in and out of the
    /// years RFC 3339 can write.
    #[test]
    fn envelopes_match_serde_json() {
        let plain = envelope();
        assert_same(&plain);
        for op in [
            Op::Insert,
            Op::Update,
            Op::Delete,
            Op::Truncate,
            Op::Snapshot,
            Op::Message,
        ] {
            assert_same(&Envelope {
                op,
                ..plain.clone()
            });
        }
        let mut full = plain.clone();
        full.key = Some(json!({"id": 7}).into());
        full.before = Some(json!({"id": 7, "status": "new"}).into());
        full.after = Some(json!({"id": 7, "status": "paid\n"}).into());
        full.headers = BTreeMap::from([
            ("traceparent".to_string(), "00-abc-01".to_string()),
            ("x-\"odd\"".to_string(), "tab\there".to_string()),
        ]);
        full.source.partition = Some("shard-0001".into());
        full.source.txid = Some("771".into());
        full.source.unchanged_columns = vec!["big_text".into(), "blob\\".into()];
        for micros in [
            0,
            1_764_763_200_123_456,
            -62_135_596_800_000_000,
            253_402_300_799_999_999,
            253_402_300_800_000_000,
            -62_135_596_800_000_001,
            i64::MIN,
            i64::MAX,
        ] {
            full.source.commit_time = Some(Timestamp::from_unix_micros(micros));
            assert_same(&full);
        }
        // JSON text as the source wrote it goes into the envelope as it is.
        full.payload =
            RawJson::from_text(r#"{"amount": 10.50, "big": 123456789012345678901234567890}"#)
                .unwrap();
        full.after = Some(RawJson::from_text(r#"{"id":7,"payload":{"amount": 10.50}}"#).unwrap());
        assert_same(&full);
        let text = String::from_utf8(full.to_json_vec()).unwrap();
        assert!(
            text.contains(
                r#","payload":{"amount": 10.50, "big": 123456789012345678901234567890},"key":"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#","after":{"id":7,"payload":{"amount": 10.50}},"headers":"#),
            "{text}"
        );
        full.payload = json!([1, "two", {"three": null}]).into();
        full.after = Some(json!({"payload": [1, "two", {"three": null}], "other": [1]}).into());
        assert_same(&full);
        full.payload = Value::String("plain text payload".into()).into();
        assert_same(&full);
        full.id = String::new();
        full.source = SourceInfo::default();
        assert_same(&full);
    }
}
