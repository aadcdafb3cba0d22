//! The event an application writes, and its JSON form as a logical decoding message.

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::OutboxError;

/// One outbox event: what happened to which aggregate, with its payload.
///
/// Build it with [`OutboxEvent::new`] and the chainable setters; the fields are public
/// too. Nothing is checked until the event is written: [`validate`](Self::validate)
/// runs then, and the same event always fails the same way.
///
/// ```
/// use outflow_outbox::OutboxEvent;
/// use serde_json::json;
///
/// let event = OutboxEvent::new("order", "123", "OrderCreated", json!({"total": 42.5}))
///     .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
/// assert_eq!(event.id.get_version_num(), 7);
/// assert!(event.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// The event id, unique per event; consumers deduplicate on it. Defaults to a new
    /// UUID version 7 (time ordered, so the primary key index grows at its end instead
    /// of being written at random places).
    pub id: Uuid,
    /// The kind of aggregate, e.g. `order`; routes the event (`outbox.event.{aggregate_type}`).
    /// Must not be empty.
    pub aggregate_type: String,
    /// The aggregate's id, e.g. `123`; the default Kafka key, so one aggregate's events
    /// stay in order. Must not be empty.
    pub aggregate_id: String,
    /// What happened, e.g. `OrderCreated`. Must not be empty.
    pub event_type: String,
    /// The event's content. [`Value::Null`] is stored as SQL `NULL` in the table (the
    /// column is nullable) and as JSON `null` in a message; either way consumers see
    /// `null`.
    pub payload: Value,
    /// A W3C trace context `traceparent` (`00-<trace id>-<parent id>-<flags>`), delivered
    /// as the `traceparent` header so consumers continue the producer's trace.
    pub traceparent: Option<String>,
}

impl OutboxEvent {
    /// A new event with a fresh UUID v7 id and no traceparent.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: Value,
    ) -> OutboxEvent {
        OutboxEvent {
            id: Uuid::now_v7(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload,
            traceparent: None,
        }
    }

    /// Sets the id, e.g. one derived from the business operation so that a retried
    /// operation cannot emit a second event (the primary key rejects it).
    pub fn id(mut self, id: Uuid) -> OutboxEvent {
        self.id = id;
        self
    }

    /// Sets the W3C `traceparent`, e.g. taken from the current span by the application's
    /// OpenTelemetry propagator.
    pub fn traceparent(mut self, traceparent: impl Into<String>) -> OutboxEvent {
        self.traceparent = Some(traceparent.into());
        self
    }

    /// Checks what the database would otherwise reject later, or what consumers could
    /// not use: the three names must be non-empty, no text may contain a NUL character
    /// (Postgres `text` and `jsonb` cannot hold one), and the traceparent must follow
    /// the W3C trace context format.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let invalid = |field, reason: &str| OutboxError::InvalidEvent {
            id: self.id,
            field,
            reason: reason.to_owned(),
        };
        for (field, value) in [
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
        ] {
            if value.is_empty() {
                return Err(invalid(field, "is empty; every event needs one"));
            }
            if value.contains('\0') {
                return Err(invalid(
                    field,
                    "contains a NUL character, which Postgres text cannot hold",
                ));
            }
        }
        if json_contains_nul(&self.payload) {
            return Err(invalid(
                "payload",
                "contains a NUL character (\\u0000) in a string or key, which Postgres jsonb \
                 cannot hold",
            ));
        }
        if let Some(traceparent) = &self.traceparent {
            if let Err(reason) = check_traceparent(traceparent) {
                return Err(OutboxError::InvalidEvent {
                    id: self.id,
                    field: "traceparent",
                    reason: format!("{traceparent:?} {reason}"),
                });
            }
        }
        Ok(())
    }

    /// The event as the content of a logical decoding message: one JSON object with
    /// exactly the keys `id`, `aggregatetype`, `aggregateid`, `type`, `payload` and
    /// `tracingspancontext`, in that order (see the [crate docs](crate)).
    ///
    /// ```
    /// use outflow_outbox::OutboxEvent;
    ///
    /// let id = "0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d".parse()?;
    /// let event = OutboxEvent::new("order", "123", "OrderCreated", serde_json::json!({"n": 1}))
    ///     .id(id);
    /// assert_eq!(
    ///     event.message_content()?,
    ///     r#"{"id":"0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d","aggregatetype":"order","aggregateid":"123","type":"OrderCreated","payload":{"n":1},"tracingspancontext":null}"#
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn message_content(&self) -> Result<String, OutboxError> {
        let message = Message {
            id: self.id,
            aggregatetype: &self.aggregate_type,
            aggregateid: &self.aggregate_id,
            event_type: &self.event_type,
            payload: &self.payload,
            tracingspancontext: self.traceparent.as_deref(),
        };
        serde_json::to_string(&message).map_err(|source| OutboxError::Encode {
            id: self.id,
            source,
        })
    }
}

/// The message shape; field order is the key order of the JSON.
#[derive(Serialize)]
struct Message<'a> {
    id: Uuid,
    aggregatetype: &'a str,
    aggregateid: &'a str,
    #[serde(rename = "type")]
    event_type: &'a str,
    payload: &'a Value,
    tracingspancontext: Option<&'a str>,
}

fn json_contains_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(json_contains_nul),
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k.contains('\0') || json_contains_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Checks a `traceparent` against the W3C Trace Context (level 1) format:
/// `version-traceid-parentid-flags`, lowercase hex, with the all-zero ids and version
/// `ff` invalid. Versions after `00` may append fields after a further `-`.
fn check_traceparent(value: &str) -> Result<(), String> {
    const EXPECTED: &str = "is not a W3C traceparent; expected \
                            00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>";
    let bytes = value.as_bytes();
    let is_hex = |part: &[u8]| part.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return Err(EXPECTED.to_owned());
    }
    let (version, trace_id, parent_id, flags) =
        (&bytes[0..2], &bytes[3..35], &bytes[36..52], &bytes[53..55]);
    if ![version, trace_id, parent_id, flags]
        .into_iter()
        .all(is_hex)
    {
        return Err(EXPECTED.to_owned());
    }
    if version == b"ff" {
        return Err("has version ff, which the W3C format forbids".to_owned());
    }
    if version == b"00" && bytes.len() != 55 {
        return Err("is longer than 55 characters, which version 00 does not allow".to_owned());
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return Err(EXPECTED.to_owned());
    }
    if trace_id.iter().all(|b| *b == b'0') {
        return Err("has an all-zero trace id, which the W3C format forbids".to_owned());
    }
    if parent_id.iter().all(|b| *b == b'0') {
        return Err("has an all-zero parent id, which the W3C format forbids".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn new_events_get_distinct_time_ordered_v7_ids() {
        let a = OutboxEvent::new("order", "1", "OrderCreated", json!(null));
        let b = OutboxEvent::new("order", "1", "OrderCreated", json!(null));
        assert_eq!(a.id.get_version_num(), 7);
        assert!(a.id < b.id, "{} then {}", a.id, b.id);
    }

    #[test]
    fn message_content_has_exact_keys_in_order() {
        let id: Uuid = "0190d8e4-0f3c-7a6b-8c1d-2e3f4a5b6c7d".parse().unwrap();
        let event = OutboxEvent::new(
            "order",
            "42",
            "OrderCreated",
            json!({"b": [1, "x"], "a": null}),
        )
        .id(id)
        .traceparent(TRACEPARENT);
        let content = event.message_content().unwrap();
        assert_eq!(
            content,
            format!(
                r#"{{"id":"{id}","aggregatetype":"order","aggregateid":"42","type":"OrderCreated","payload":{{"a":null,"b":[1,"x"]}},"tracingspancontext":"{TRACEPARENT}"}}"#
            )
        );
    }

    #[test]
    fn empty_names_and_nul_characters_are_rejected() {
        let event = OutboxEvent::new("order", "", "OrderCreated", json!({}));
        assert_eq!(
            event.validate().unwrap_err().to_string(),
            format!(
                "invalid outbox event {}: aggregate_id is empty; every event needs one",
                event.id
            )
        );
        let event = OutboxEvent::new("or\0der", "1", "OrderCreated", json!({}));
        assert!(event
            .validate()
            .unwrap_err()
            .to_string()
            .contains("aggregate_type contains a NUL"));
        let event = OutboxEvent::new("order", "1", "OrderCreated", json!({"a": [{"b\u{0}": 1}]}));
        assert!(event
            .validate()
            .unwrap_err()
            .to_string()
            .contains("payload contains a NUL"));
        let event = OutboxEvent::new("order", "1", "OrderCreated", json!({"a": ["x\u{0}"]}));
        assert!(event
            .validate()
            .unwrap_err()
            .to_string()
            .contains("payload contains a NUL"));
    }

    #[test]
    fn traceparents_follow_the_w3c_format() {
        assert_eq!(check_traceparent(TRACEPARENT), Ok(()));
        // A future version may append fields.
        assert_eq!(
            check_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"),
            Ok(())
        );
        for bad in [
            "",
            "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x",
        ] {
            assert!(
                check_traceparent(bad)
                    .unwrap_err()
                    .starts_with("is not a W3C"),
                "{bad}"
            );
        }
        assert_eq!(
            check_traceparent("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Err("has version ff, which the W3C format forbids".to_owned())
        );
        assert_eq!(
            check_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x"),
            Err("is longer than 55 characters, which version 00 does not allow".to_owned())
        );
        assert_eq!(
            check_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
            Err("has an all-zero trace id, which the W3C format forbids".to_owned())
        );
        assert_eq!(
            check_traceparent("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
            Err("has an all-zero parent id, which the W3C format forbids".to_owned())
        );
        let event = OutboxEvent::new("order", "1", "OrderCreated", json!({})).traceparent("nope");
        assert_eq!(
            event.validate().unwrap_err().to_string(),
            format!(
                "invalid outbox event {}: traceparent \"nope\" is not a W3C traceparent; \
                 expected 00-<32 lowercase hex>-<16 lowercase hex>-<2 lowercase hex>",
                event.id
            )
        );
    }

    #[test]
    fn a_multibyte_traceparent_does_not_panic() {
        // 55 bytes with a multi-byte character straddling a separator position.
        let odd = format!("00-{}-b7ad6b7169203331-01", "é".repeat(16));
        assert!(check_traceparent(&odd).is_err());
    }
}
