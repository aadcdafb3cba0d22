//! Column values: from `pgoutput`'s text form to JSON, losslessly.
//!
//! `pgoutput` sends every value in its type's text output form, as the walsender session
//! prints it. outflow fixes the settings that shape those forms when it opens the
//! replication connection ([`SESSION_OPTIONS`]), so the parsing here never guesses:
//! dates are ISO, times are UTC, floats round-trip, bytea is hex.
//!
//! The mapping is the one `docs/connectors/postgres.md` documents: integers up to 53 bits
//! are numbers, wider int8 and every numeric are strings, floats are numbers except
//! `NaN`/`Infinity`/`-Infinity` (strings), json and jsonb are embedded, bytea is standard
//! padded base64, timestamps are RFC 3339 (`Z` for timestamptz, no zone for timestamp),
//! arrays are arrays of their elements, and any other type is its text form.

use std::collections::HashMap;
use std::fmt::Write as _;

use base64::Engine as _;
use outflow_core::{push_json_str, RawJson};
use serde_json::value::RawValue;
use serde_json::Number;

/// Startup options of the replication session: the value output settings the parsing
/// in this module relies on.
pub const SESSION_OPTIONS: &str = "-c datestyle=ISO,YMD -c timezone=UTC -c intervalstyle=postgres \
     -c extra_float_digits=3 -c bytea_output=hex";

/// The largest integer a JSON number carries exactly in an IEEE double (2^53).
const MAX_SAFE_INTEGER: i64 = 1 << 53;

/// How a column's text form becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `bool`.
    Bool,
    /// `int2`, `int4`, `oid`: always a number.
    Int,
    /// `int8`: a number up to 2^53, a string beyond.
    Int8,
    /// `float4`, `float8`.
    Float,
    /// `numeric`: always a string.
    Numeric,
    /// `json`: embedded, checked to be JSON.
    Json,
    /// `jsonb`: embedded as the server printed it, which is always JSON.
    Jsonb,
    /// `bytea`: base64.
    Bytea,
    /// `timestamp without time zone`.
    Timestamp,
    /// `timestamp with time zone`.
    Timestamptz,
    /// An array of the boxed element kind, with the element type's delimiter.
    Array(Box<Kind>, u8),
    /// Anything else (text, varchar, uuid, date, time, interval, enums, …): its text form.
    Text,
}

/// Array types and their element types, for the built-in arrays.
const BUILTIN_ARRAYS: &[(u32, u32)] = &[
    (1000, 16),
    (1001, 17),
    (1002, 18),
    (1003, 19),
    (1005, 21),
    (1007, 23),
    (1009, 25),
    (1014, 1042),
    (1015, 1043),
    (1016, 20),
    (1021, 700),
    (1022, 701),
    (1028, 26),
    (1115, 1114),
    (1182, 1082),
    (1183, 1083),
    (1185, 1184),
    (1187, 1186),
    (1231, 1700),
    (1270, 1266),
    (2951, 2950),
    (199, 114),
    (3807, 3802),
    (1040, 829),
    (1041, 869),
    (651, 650),
];

/// The kind of a built-in scalar type, or `None` for a type outflow must look up.
pub fn builtin_scalar(oid: u32) -> Option<Kind> {
    Some(match oid {
        16 => Kind::Bool,
        21 | 23 | 26 => Kind::Int,
        20 => Kind::Int8,
        700 | 701 => Kind::Float,
        1700 => Kind::Numeric,
        114 => Kind::Json,
        3802 => Kind::Jsonb,
        17 => Kind::Bytea,
        1114 => Kind::Timestamp,
        1184 => Kind::Timestamptz,
        // text, name, char, bpchar, varchar, uuid, date, time, timetz, interval, money,
        // xml, inet, cidr, macaddr, bit, varbit, jsonpath, tsvector, pg_lsn…
        18 | 19 | 25 | 1042 | 1043 | 2950 | 1082 | 1083 | 1266 | 1186 | 790 | 142 | 869 | 650
        | 829 | 774 | 1560 | 1562 | 4072 | 3614 | 3220 => Kind::Text,
        _ => return None,
    })
}

/// The kind of a built-in type, arrays of built-in scalars included.
pub fn builtin(oid: u32) -> Option<Kind> {
    if let Some(kind) = builtin_scalar(oid) {
        return Some(kind);
    }
    let &(_, elem) = BUILTIN_ARRAYS.iter().find(|(array, _)| *array == oid)?;
    Some(Kind::Array(Box::new(builtin_scalar(elem)?), b','))
}

/// What `pg_type` says about a type outflow does not know by heart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogType {
    /// `typtype`: `b` base, `d` domain, `e` enum, `c` composite, `r` range, `m` multirange.
    pub typtype: u8,
    /// `typbasetype`: a domain's underlying type.
    pub base: u32,
    /// `typelem` for true arrays (`typcategory = 'A'`), else 0.
    pub element: u32,
    /// `typdelim`: the array element delimiter of this type.
    pub delimiter: u8,
}

/// Kinds of the types met in this stream, built-ins and looked-up ones.
#[derive(Debug, Default)]
pub struct TypeCache {
    kinds: HashMap<u32, Kind>,
}

impl TypeCache {
    /// The kind of `oid`, if known without a catalog lookup.
    pub fn get(&self, oid: u32) -> Option<Kind> {
        builtin(oid).or_else(|| self.kinds.get(&oid).cloned())
    }

    /// Remembers a looked-up kind.
    pub fn insert(&mut self, oid: u32, kind: Kind) {
        self.kinds.insert(oid, kind);
    }

    /// Forgets a type whose definition may have changed (a `Type` message arrived).
    pub fn forget(&mut self, oid: u32) {
        self.kinds.remove(&oid);
    }

    /// Resolves `oid` through `lookup`, following domains to their base and arrays to
    /// their element. `lookup` returns `None` for a type that no longer exists, which
    /// maps to its text form.
    pub fn resolve<F>(&mut self, oid: u32, lookup: &mut F) -> Result<Kind, outflow_core::Error>
    where
        F: FnMut(u32) -> Result<Option<CatalogType>, outflow_core::Error>,
    {
        self.resolve_depth(oid, lookup, 0)
    }

    fn resolve_depth<F>(
        &mut self,
        oid: u32,
        lookup: &mut F,
        depth: u32,
    ) -> Result<Kind, outflow_core::Error>
    where
        F: FnMut(u32) -> Result<Option<CatalogType>, outflow_core::Error>,
    {
        if let Some(kind) = self.get(oid) {
            return Ok(kind);
        }
        // Domains over domains over arrays: a few levels at most; a cycle cannot exist
        // in a sane catalog, but the depth bound keeps a broken one from looping.
        if depth > 16 {
            return Ok(Kind::Text);
        }
        let kind = match lookup(oid)? {
            None => Kind::Text,
            Some(t) if t.typtype == b'd' && t.base != 0 => {
                self.resolve_depth(t.base, lookup, depth + 1)?
            }
            Some(t) if t.element != 0 => {
                let element_delimiter = match lookup(t.element)? {
                    Some(e) => e.delimiter,
                    None => b',',
                };
                let element = self.resolve_depth(t.element, lookup, depth + 1)?;
                Kind::Array(Box::new(element), element_delimiter)
            }
            Some(_) => Kind::Text,
        };
        self.kinds.insert(oid, kind.clone());
        Ok(kind)
    }
}

/// A text form that does not parse as its type says it should.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {value:?} as {kind}")]
pub struct ValueError {
    kind: &'static str,
    value: String,
}

fn bad(kind: &'static str, text: &str) -> ValueError {
    let mut value: String = text.chars().take(64).collect();
    if value.len() < text.len() {
        value.push('…');
    }
    ValueError { kind, value }
}

/// Converts one value's text form to JSON text.
pub fn to_json(kind: &Kind, text: &str) -> Result<RawJson, ValueError> {
    let mut out = String::with_capacity(text.len() + 2);
    write_json(kind, text, &mut out)?;
    Ok(RawJson::from_text_unchecked(out))
}

/// Appends one value's text form as JSON text to `out`. On an error, what was appended
/// is left in `out`; the caller cuts it off.
pub fn write_json(kind: &Kind, text: &str, out: &mut String) -> Result<(), ValueError> {
    match kind {
        Kind::Bool => match text {
            "t" => out.push_str("true"),
            "f" => out.push_str("false"),
            _ => return Err(bad("bool", text)),
        },
        // Written from the parsed value: the text may be `+5` or `007`, which parse but
        // are not JSON numbers.
        Kind::Int => {
            let v = text.parse::<i64>().map_err(|_| bad("integer", text))?;
            out.push_str(itoa::Buffer::new().format(v));
        }
        Kind::Int8 => {
            let v = text.parse::<i64>().map_err(|_| bad("int8", text))?;
            if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&v) {
                out.push_str(itoa::Buffer::new().format(v));
            } else {
                push_json_str(out, text);
            }
        }
        Kind::Float => match text {
            "NaN" | "Infinity" | "-Infinity" => push_json_str(out, text),
            _ => {
                let v = text.parse::<f64>().map_err(|_| bad("float", text))?;
                let number = Number::from_f64(v).ok_or_else(|| bad("float", text))?;
                // serde_json's shortest round-trip text of the double.
                write!(out, "{number}").expect("writing to a String cannot fail");
            }
        },
        Kind::Numeric => push_json_str(out, text),
        // Embedded as Postgres wrote it, so numbers keep every digit. A json value is the
        // text as it was stored, which the server checked on input under its own rules;
        // it is checked once more here, since a value that is not JSON would make the
        // whole envelope unreadable.
        Kind::Json => {
            serde_json::from_str::<&RawValue>(text).map_err(|_| bad("json", text))?;
            out.push_str(text.trim());
        }
        // A jsonb value is printed by the server from its parsed form (`{"a": 1}`), which
        // is always one JSON value without surrounding space: checking it again would
        // cost about a tenth of what the source spends on an outbox row.
        Kind::Jsonb => {
            if text.is_empty() {
                return Err(bad("jsonb", text));
            }
            out.push_str(text);
        }
        Kind::Bytea => {
            let hex = text.strip_prefix("\\x").ok_or_else(|| bad("bytea", text))?;
            let bytes = decode_hex(hex).ok_or_else(|| bad("bytea", text))?;
            out.push('"');
            base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
            out.push('"');
        }
        Kind::Timestamp => push_json_str(
            out,
            &timestamp(text, false).ok_or_else(|| bad("timestamp", text))?,
        ),
        Kind::Timestamptz => push_json_str(
            out,
            &timestamp(text, true).ok_or_else(|| bad("timestamptz", text))?,
        ),
        Kind::Array(element, delimiter) => write_array(element, *delimiter, text, out)?,
        Kind::Text => push_json_str(out, text),
    }
    Ok(())
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// `2026-12-03 12:00:00.5` (or with `+00` under `timezone=UTC`) to RFC 3339 with six
/// fractional digits. Values the format cannot carry (`infinity`, BC dates, years past
/// 9999) keep their Postgres text.
fn timestamp(text: &str, zoned: bool) -> Option<String> {
    if text.ends_with(" BC") || text.ends_with("infinity") {
        return Some(text.to_string());
    }
    let (body, zone_ok) = if zoned {
        match text.strip_suffix("+00") {
            Some(body) => (body, true),
            None => (text, false),
        }
    } else {
        (text, true)
    };
    let b = body.as_bytes();
    let shaped = zone_ok
        && b.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b' '
        && b[13] == b':'
        && b[16] == b':'
        && b[..19]
            .iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10 | 13 | 16) || c.is_ascii_digit());
    if !shaped {
        // infinity, -infinity, "… BC", five-digit years: the text is the value.
        return if b.len() >= 20 && b[5] == b'-' && b[..5].iter().all(u8::is_ascii_digit) {
            // A five-digit year: RFC 3339 cannot carry it.
            Some(text.to_string())
        } else {
            None
        };
    }
    let fraction = &body[19..];
    let digits = match fraction.strip_prefix('.') {
        Some(d) if !d.is_empty() && d.len() <= 6 && d.bytes().all(|c| c.is_ascii_digit()) => d,
        None if fraction.is_empty() => "",
        _ => return None,
    };
    let mut out = String::with_capacity(27);
    out.push_str(&body[..10]);
    out.push('T');
    out.push_str(&body[11..19]);
    out.push('.');
    out.push_str(digits);
    for _ in digits.len()..6 {
        out.push('0');
    }
    if zoned {
        out.push('Z');
    }
    Some(out)
}

/// Writes the text form of an array (`{1,NULL,"a b"}`, nested, with an optional
/// `[1:2]=` dimension prefix) as a JSON array.
fn write_array(
    element: &Kind,
    delimiter: u8,
    text: &str,
    out: &mut String,
) -> Result<(), ValueError> {
    let body = if text.starts_with('[') {
        match text.find('=') {
            Some(i) => &text[i + 1..],
            None => return Err(bad("array", text)),
        }
    } else {
        text
    };
    let mut parser = ArrayParser {
        text: body.as_bytes(),
        pos: 0,
        element,
        delimiter,
        original: text,
    };
    parser.array(0, out)?;
    if parser.pos != parser.text.len() {
        return Err(bad("array", text));
    }
    Ok(())
}

struct ArrayParser<'a> {
    text: &'a [u8],
    pos: usize,
    element: &'a Kind,
    delimiter: u8,
    original: &'a str,
}

impl ArrayParser<'_> {
    fn err(&self) -> ValueError {
        bad("array", self.original)
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn array(&mut self, depth: usize, out: &mut String) -> Result<(), ValueError> {
        // Postgres allows at most 6 dimensions.
        if depth > 6 || self.peek() != Some(b'{') {
            return Err(self.err());
        }
        self.pos += 1;
        out.push('[');
        if self.peek() == Some(b'}') {
            self.pos += 1;
            out.push(']');
            return Ok(());
        }
        loop {
            match self.peek() {
                Some(b'{') => self.array(depth + 1, out)?,
                Some(b'"') => {
                    let text = self.quoted()?;
                    write_json(self.element, &text, out).map_err(|_| self.err())?
                }
                Some(_) => {
                    let start = self.pos;
                    while let Some(c) = self.peek() {
                        if c == self.delimiter || c == b'}' {
                            break;
                        }
                        self.pos += 1;
                    }
                    let raw = std::str::from_utf8(&self.text[start..self.pos])
                        .map_err(|_| self.err())?
                        .trim();
                    if raw.eq_ignore_ascii_case("NULL") {
                        out.push_str("null");
                    } else if raw.contains('\\') {
                        let unescaped = unescape(raw);
                        write_json(self.element, &unescaped, out).map_err(|_| self.err())?
                    } else {
                        write_json(self.element, raw, out).map_err(|_| self.err())?
                    }
                }
                None => return Err(self.err()),
            };
            match self.peek() {
                Some(c) if c == self.delimiter => {
                    self.pos += 1;
                    out.push(',');
                }
                Some(b'}') => {
                    self.pos += 1;
                    out.push(']');
                    return Ok(());
                }
                _ => return Err(self.err()),
            }
        }
    }

    fn quoted(&mut self) -> Result<String, ValueError> {
        self.pos += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    break;
                }
                Some(b'\\') => {
                    self.pos += 1;
                    out.push(self.peek().ok_or_else(|| self.err())?);
                    self.pos += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
                None => return Err(self.err()),
            }
        }
        String::from_utf8(out).map_err(|_| self.err())
    }
}

fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A row image as JSON text (`{"id":1,"status":"paid"}`), with where each column's
/// value sits in that text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowImage {
    text: String,
    /// Per column of the relation, the value's byte range in `text`; `None` for a column
    /// left out (not part of the image, or an unchanged TOAST value).
    spans: Vec<Option<(usize, usize)>>,
}

impl RowImage {
    /// The whole image as JSON text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The JSON text of the value of column `column`, when the image holds it.
    pub fn value(&self, column: usize) -> Option<&str> {
        let (start, end) = (*self.spans.get(column)?)?;
        self.text.get(start..end)
    }

    /// The image as [`RawJson`].
    pub fn into_json(self) -> RawJson {
        RawJson::from_text_unchecked(self.text)
    }
}

/// A column's name as it opens its member in a row image: `"name":`.
pub fn member_prefix(name: &str) -> String {
    let mut prefix = String::with_capacity(name.len() + 3);
    push_json_str(&mut prefix, name);
    prefix.push(':');
    prefix
}

/// Builds a row image from a relation's columns and a tuple: column name to JSON value,
/// written as JSON text. `members` holds each column's [`member_prefix`]. Unchanged
/// TOAST values are left out and their names pushed to `unchanged`; binary values
/// (never requested) are an error.
pub fn row_image<'t>(
    columns: &[(String, Kind)],
    members: &[String],
    tuple: &[crate::decoder::TupleValue<'t>],
    only: Option<&[bool]>,
    unchanged: &mut Vec<String>,
) -> Result<RowImage, RowError> {
    use crate::decoder::TupleValue;
    if tuple.len() != columns.len() || members.len() != columns.len() {
        return Err(RowError::ColumnCount {
            expected: columns.len(),
            found: tuple.len(),
        });
    }
    // The values' text plus names and punctuation: one allocation for most rows.
    let size: usize = tuple
        .iter()
        .zip(members)
        .map(|(value, member)| {
            member.len()
                + 4
                + match value {
                    TupleValue::Text(bytes) => bytes.len(),
                    _ => 4,
                }
        })
        .sum();
    let mut text = String::with_capacity(size + 2);
    let mut spans = Vec::with_capacity(columns.len());
    text.push('{');
    for (i, (((name, kind), member), value)) in columns.iter().zip(members).zip(tuple).enumerate() {
        if let Some(only) = only {
            if !only.get(i).copied().unwrap_or(false) {
                spans.push(None);
                continue;
            }
        }
        let value = match value {
            TupleValue::UnchangedToast => {
                unchanged.push(name.clone());
                spans.push(None);
                continue;
            }
            TupleValue::Binary(_) => {
                return Err(RowError::Binary {
                    column: name.clone(),
                })
            }
            TupleValue::Null => None,
            TupleValue::Text(bytes) => {
                Some(std::str::from_utf8(bytes).map_err(|_| RowError::NotUtf8 {
                    column: name.clone(),
                })?)
            }
        };
        if text.len() > 1 {
            text.push(',');
        }
        text.push_str(member);
        let start = text.len();
        match value {
            None => text.push_str("null"),
            Some(value) => {
                if let Err(error) = write_json(kind, value, &mut text) {
                    // The text form is the value, losslessly; deliver it rather than
                    // stop the stream on a form this mapping did not foresee.
                    tracing::warn!(column = %name, error = %error, "value kept as text");
                    text.truncate(start);
                    push_json_str(&mut text, value);
                }
            }
        }
        spans.push(Some((start, text.len())));
    }
    text.push('}');
    Ok(RowImage { text, spans })
}

/// A tuple that does not fit its relation.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    /// The tuple has more or fewer columns than the relation.
    #[error("row has {found} columns, its relation {expected}")]
    ColumnCount {
        /// Columns of the relation.
        expected: usize,
        /// Columns of the tuple.
        found: usize,
    },
    /// A value's text form is not UTF-8.
    #[error("column {column} is not valid UTF-8")]
    NotUtf8 {
        /// The column.
        column: String,
    },
    /// A value came in binary form, which outflow never asks for.
    #[error("column {column} arrived in binary form")]
    Binary {
        /// The column.
        column: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn j(kind: &Kind, text: &str) -> serde_json::Value {
        to_json(kind, text).unwrap().to_value().unwrap()
    }

    #[test]
    fn integers_keep_precision() {
        assert_eq!(j(&Kind::Int, "-32768"), json!(-32768));
        assert_eq!(
            j(&Kind::Int8, "9007199254740992"),
            json!(9007199254740992_i64)
        );
        assert_eq!(
            j(&Kind::Int8, "-9007199254740992"),
            json!(-9007199254740992_i64)
        );
        assert_eq!(
            j(&Kind::Int8, "9007199254740993"),
            json!("9007199254740993")
        );
        assert_eq!(
            j(&Kind::Int8, "-9223372036854775808"),
            json!("-9223372036854775808")
        );
        assert_eq!(j(&Kind::Numeric, "1.50"), json!("1.50"));
        assert_eq!(j(&Kind::Numeric, "NaN"), json!("NaN"));
        assert!(to_json(&Kind::Int, "1.5").is_err());
        // Forms that parse as integers but are not JSON numbers are written canonically
        // (found by the fuzzer).
        for (text, json) in [("061", "61"), ("+5", "5"), ("-007", "-7"), ("-0", "0")] {
            assert_eq!(to_json(&Kind::Int, text).unwrap().as_str(), json);
            assert_eq!(to_json(&Kind::Int8, text).unwrap().as_str(), json);
        }
    }

    #[test]
    fn floats_and_their_specials() {
        assert_eq!(j(&Kind::Float, "1.1"), json!(1.1));
        assert_eq!(j(&Kind::Float, "-0"), json!(-0.0));
        assert_eq!(j(&Kind::Float, "1e+300"), json!(1e300));
        for special in ["NaN", "Infinity", "-Infinity"] {
            assert_eq!(j(&Kind::Float, special), json!(special));
        }
    }

    #[test]
    fn bytes_json_and_bools() {
        assert_eq!(j(&Kind::Bytea, "\\x00ff10"), json!("AP8Q"));
        assert_eq!(j(&Kind::Bytea, "\\x"), json!(""));
        assert!(to_json(&Kind::Bytea, "\\x0").is_err());
        assert!(to_json(&Kind::Bytea, "00").is_err());
        assert_eq!(j(&Kind::Json, r#"{"a": [1, 2.5]}"#), json!({"a": [1, 2.5]}));
        assert!(to_json(&Kind::Json, "{").is_err());
        assert_eq!(
            to_json(
                &Kind::Jsonb,
                r#"{"big": 123456789012345678901234567890, "amount": 10.50}"#
            )
            .unwrap()
            .as_str(),
            r#"{"big": 123456789012345678901234567890, "amount": 10.50}"#
        );
        assert!(to_json(&Kind::Jsonb, "").is_err());
        assert_eq!(builtin(3802), Some(Kind::Jsonb));
        assert_eq!(builtin(114), Some(Kind::Json));
        assert_eq!(
            builtin(3807),
            Some(Kind::Array(Box::new(Kind::Jsonb), b','))
        );
        // json and jsonb keep their text, so numbers keep every digit.
        for text in [
            r#"{"amount": 10.50, "big": 123456789012345678901234567890}"#,
            "[1e400, -0.0, 1E-7]",
            "\"x\"",
        ] {
            assert_eq!(to_json(&Kind::Json, text).unwrap().as_str(), text);
        }
        assert_eq!(
            to_json(&Kind::Json, " {\"a\":1}\n").unwrap().as_str(),
            "{\"a\":1}"
        );
        assert_eq!(j(&Kind::Bool, "t"), json!(true));
        assert_eq!(j(&Kind::Bool, "f"), json!(false));
    }

    #[test]
    fn timestamps_become_rfc3339() {
        assert_eq!(
            j(&Kind::Timestamptz, "2026-12-03 12:00:00.123456+00"),
            json!("2026-12-03T12:00:00.123456Z")
        );
        assert_eq!(
            j(&Kind::Timestamptz, "2026-12-03 12:00:00+00"),
            json!("2026-12-03T12:00:00.000000Z")
        );
        assert_eq!(
            j(&Kind::Timestamp, "2026-12-03 12:00:00.5"),
            json!("2026-12-03T12:00:00.500000")
        );
        assert_eq!(j(&Kind::Timestamptz, "infinity"), json!("infinity"));
        assert_eq!(j(&Kind::Timestamp, "-infinity"), json!("-infinity"));
        assert_eq!(
            j(&Kind::Timestamp, "0044-03-15 12:00:00 BC"),
            json!("0044-03-15 12:00:00 BC")
        );
        assert!(to_json(&Kind::Timestamptz, "yesterday").is_err());
    }

    #[test]
    fn arrays_parse_nulls_quotes_and_nesting() {
        let ints = Kind::Array(Box::new(Kind::Int), b',');
        assert_eq!(j(&ints, "{1,NULL,3}"), json!([1, null, 3]));
        assert_eq!(j(&ints, "{}"), json!([]));
        assert_eq!(j(&ints, "{{1,2},{3,4}}"), json!([[1, 2], [3, 4]]));
        assert_eq!(j(&ints, "[0:1]={5,6}"), json!([5, 6]));
        assert_eq!(
            to_json(&ints, "{{1,NULL},{3,4}}").unwrap().as_str(),
            "[[1,null],[3,4]]"
        );
        let texts = Kind::Array(Box::new(Kind::Text), b',');
        assert_eq!(
            j(&texts, r#"{"a b","c\"d",NULL,"NULL",plain,"x\\y"}"#),
            json!(["a b", "c\"d", null, "NULL", "plain", "x\\y"])
        );
        let stamps = Kind::Array(Box::new(Kind::Timestamptz), b',');
        assert_eq!(
            j(&stamps, r#"{"2026-12-03 12:00:00+00"}"#),
            json!(["2026-12-03T12:00:00.000000Z"])
        );
        let boxes = Kind::Array(Box::new(Kind::Text), b';');
        assert_eq!(
            j(&boxes, "{(1,1),(0,0);(2,2),(1,1)}"),
            json!(["(1,1),(0,0)", "(2,2),(1,1)"])
        );
        for bad in [
            "{1,2",
            "{1,,2}",
            "1,2",
            "{1}x",
            "{\"a}",
            "{{{{{{{{1}}}}}}}}",
        ] {
            assert!(
                to_json(&ints, bad).is_err() || to_json(&texts, bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn domains_and_arrays_resolve_through_the_catalog() {
        let mut cache = TypeCache::default();
        let lookups = std::cell::Cell::new(0);
        let mut lookup = |oid: u32| {
            lookups.set(lookups.get() + 1);
            Ok(match oid {
                // a domain over int4, an array of that domain, an enum
                50_000 => Some(CatalogType {
                    typtype: b'd',
                    base: 23,
                    element: 0,
                    delimiter: b',',
                }),
                50_001 => Some(CatalogType {
                    typtype: b'b',
                    base: 0,
                    element: 50_000,
                    delimiter: b',',
                }),
                50_002 => Some(CatalogType {
                    typtype: b'e',
                    base: 0,
                    element: 0,
                    delimiter: b',',
                }),
                _ => None,
            })
        };
        assert_eq!(cache.resolve(50_000, &mut lookup).unwrap(), Kind::Int);
        assert_eq!(
            cache.resolve(50_001, &mut lookup).unwrap(),
            Kind::Array(Box::new(Kind::Int), b',')
        );
        assert_eq!(cache.resolve(50_002, &mut lookup).unwrap(), Kind::Text);
        assert_eq!(cache.resolve(99_999, &mut lookup).unwrap(), Kind::Text);
        let before = lookups.get();
        assert_eq!(
            cache.resolve(50_001, &mut lookup).unwrap(),
            Kind::Array(Box::new(Kind::Int), b',')
        );
        assert_eq!(lookups.get(), before, "resolved kinds are cached");
        assert_eq!(
            cache.get(1007),
            Some(Kind::Array(Box::new(Kind::Int), b','))
        );
    }
}
