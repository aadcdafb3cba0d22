//! Wire formats: how an [`Envelope`] becomes a message body and headers.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::{Envelope, RawJson, Timestamp};

/// How events are written on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// The whole envelope as JSON.
    #[default]
    Envelope,
    /// The payload alone as the body; `id`, `aggregate_type`, `aggregate_id` and
    /// `event_type` travel as headers (what consumers of Debezium's outbox router read).
    /// A payload that is a JSON string is sent as its text, without quotes.
    Payload,
    /// CloudEvents 1.0: a structured JSON event, or binary mode with the attributes as
    /// headers and the payload as the body.
    CloudEvents {
        /// Binary content mode.
        binary: bool,
    },
}

/// How a protocol spells CloudEvents attribute headers in binary mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderStyle {
    /// `ce_id`, as the CloudEvents Kafka binding prescribes.
    Underscore,
    /// `ce-id`, as the HTTP and NATS bindings prescribe.
    Dash,
}

/// A message ready for a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The message body.
    pub body: Vec<u8>,
    /// Headers, in a stable order.
    pub headers: Vec<(String, String)>,
    /// The body's media type.
    pub content_type: &'static str,
}

impl Format {
    /// The name used in configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Envelope => "envelope",
            Format::Payload => "payload",
            Format::CloudEvents { binary: false } => "cloudevents",
            Format::CloudEvents { binary: true } => "cloudevents-binary",
        }
    }

    /// Whether this format puts metadata in headers, which the protocol must carry.
    pub fn needs_headers(self) -> bool {
        matches!(self, Format::Payload | Format::CloudEvents { binary: true })
    }

    /// Encodes an event. The event's own `headers` are always passed on as headers.
    pub fn encode(self, event: &Envelope, style: HeaderStyle) -> Encoded {
        let mut headers: Vec<(String, String)> = event
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        match self {
            Format::Envelope => Encoded {
                body: event.to_json_vec(),
                headers,
                content_type: "application/json",
            },
            Format::Payload => {
                headers.push(("id".into(), event.id.clone()));
                headers.push(("aggregate_type".into(), event.aggregate_type.clone()));
                headers.push(("aggregate_id".into(), event.aggregate_id.clone()));
                headers.push(("event_type".into(), event.event_type.clone()));
                let (body, content_type) = payload_body(&event.payload);
                Encoded {
                    body,
                    headers,
                    content_type,
                }
            }
            Format::CloudEvents { binary: false } => Encoded {
                body: {
                    let mut body = Vec::with_capacity(256 + event.payload.as_str().len());
                    crate::json::write_cloudevent(&mut body, event);
                    body
                },
                headers,
                content_type: "application/cloudevents+json",
            },
            Format::CloudEvents { binary: true } => {
                let prefix = match style {
                    HeaderStyle::Underscore => "ce_",
                    HeaderStyle::Dash => "ce-",
                };
                let ce = CloudEvent::of(event);
                let mut put = |name: &str, value: String| {
                    headers.push((format!("{prefix}{name}"), value));
                };
                put("specversion", "1.0".into());
                put("id", ce.id.to_string());
                put("source", ce.source.clone());
                put("type", ce.kind.to_string());
                put("subject", ce.subject.to_string());
                if let Some(time) = ce.time {
                    put("time", time.to_string());
                }
                put("aggregatetype", ce.aggregatetype.to_string());
                let (body, content_type) = payload_body(&event.payload);
                Encoded {
                    body,
                    headers,
                    content_type,
                }
            }
        }
    }
}

fn payload_body(payload: &RawJson) -> (Vec<u8>, &'static str) {
    match payload.as_json_string() {
        Some(text) => (text.as_bytes().to_vec(), "text/plain; charset=utf-8"),
        None => (payload.as_str().as_bytes().to_vec(), "application/json"),
    }
}

/// A CloudEvents 1.0 event's attributes (binary mode's headers; the structured JSON is
/// written by hand in `json.rs`, which the tests compare with this struct's serde text).
#[derive(Serialize)]
pub(crate) struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    kind: &'a str,
    subject: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<Timestamp>,
    datacontenttype: &'static str,
    aggregatetype: &'a str,
    data: &'a RawJson,
}

impl<'a> CloudEvent<'a> {
    pub(crate) fn of(event: &'a Envelope) -> Self {
        CloudEvent {
            specversion: "1.0",
            id: &event.id,
            source: format!(
                "outflow/{}/{}",
                event.source.pipeline, event.source.collection
            ),
            kind: &event.event_type,
            subject: &event.aggregate_id,
            time: event.source.commit_time,
            datacontenttype: "application/json",
            aggregatetype: &event.aggregate_type,
            data: &event.payload,
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "envelope" => Ok(Format::Envelope),
            "payload" => Ok(Format::Payload),
            "cloudevents" => Ok(Format::CloudEvents { binary: false }),
            "cloudevents-binary" => Ok(Format::CloudEvents { binary: true }),
            other => Err(format!(
                "unknown format {other:?}; use \"envelope\", \"payload\", \"cloudevents\" or \
                 \"cloudevents-binary\""
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Format {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::{json, Value};

    use super::*;
    use crate::{Op, SourceInfo};

    fn event(payload: Value) -> Envelope {
        Envelope {
            id: "e-1".into(),
            op: Op::Insert,
            aggregate_type: "order".into(),
            aggregate_id: "123".into(),
            event_type: "OrderCreated".into(),
            payload: payload.into(),
            key: None,
            before: None,
            after: None,
            headers: BTreeMap::from([("traceparent".to_string(), "00-t-s-01".to_string())]),
            source: SourceInfo {
                connector: "postgres".into(),
                pipeline: "orders".into(),
                database: "shop".into(),
                collection: "public.outbox".into(),
                position: "0/1/0".into(),
                commit_time: Timestamp::parse_rfc3339("2026-12-03T12:00:00.123456Z"),
                ..Default::default()
            },
        }
    }

    fn header<'a>(enc: &'a Encoded, name: &str) -> Option<&'a str> {
        enc.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn envelope_body_round_trips() {
        let ev = event(json!({"total": 42.5}));
        let enc = Format::Envelope.encode(&ev, HeaderStyle::Dash);
        let back: Envelope = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(back, ev);
        assert_eq!(enc.content_type, "application/json");
        assert_eq!(
            enc.headers,
            vec![("traceparent".to_string(), "00-t-s-01".to_string())]
        );
    }

    #[test]
    fn payload_body_and_headers() {
        let enc = Format::Payload.encode(&event(json!({"total": 42.5})), HeaderStyle::Dash);
        let body: Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(body, json!({"total": 42.5}));
        assert_eq!(header(&enc, "id"), Some("e-1"));
        assert_eq!(header(&enc, "aggregate_type"), Some("order"));
        assert_eq!(header(&enc, "aggregate_id"), Some("123"));
        assert_eq!(header(&enc, "event_type"), Some("OrderCreated"));
        assert_eq!(header(&enc, "traceparent"), Some("00-t-s-01"));

        let enc = Format::Payload.encode(&event(json!("plain text")), HeaderStyle::Dash);
        assert_eq!(enc.body, b"plain text");
        assert_eq!(enc.content_type, "text/plain; charset=utf-8");
    }

    #[test]
    fn cloudevents_structured() {
        let enc = Format::CloudEvents { binary: false }
            .encode(&event(json!({"total": 42.5})), HeaderStyle::Dash);
        let body: Value = serde_json::from_slice(&enc.body).unwrap();
        assert_eq!(
            body,
            json!({
                "specversion": "1.0",
                "id": "e-1",
                "source": "outflow/orders/public.outbox",
                "type": "OrderCreated",
                "subject": "123",
                "time": "2026-12-03T12:00:00.123456Z",
                "datacontenttype": "application/json",
                "aggregatetype": "order",
                "data": {"total": 42.5}
            })
        );
        assert_eq!(enc.content_type, "application/cloudevents+json");
    }

    #[test]
    fn cloudevents_binary_in_both_header_styles() {
        let ev = event(json!({"total": 42.5}));
        for (style, prefix) in [(HeaderStyle::Underscore, "ce_"), (HeaderStyle::Dash, "ce-")] {
            let enc = Format::CloudEvents { binary: true }.encode(&ev, style);
            let get = |n: &str| header(&enc, &format!("{prefix}{n}")).map(str::to_string);
            assert_eq!(get("specversion").as_deref(), Some("1.0"));
            assert_eq!(get("id").as_deref(), Some("e-1"));
            assert_eq!(
                get("source").as_deref(),
                Some("outflow/orders/public.outbox")
            );
            assert_eq!(get("type").as_deref(), Some("OrderCreated"));
            assert_eq!(get("subject").as_deref(), Some("123"));
            assert_eq!(get("time").as_deref(), Some("2026-12-03T12:00:00.123456Z"));
            let body: Value = serde_json::from_slice(&enc.body).unwrap();
            assert_eq!(body, json!({"total": 42.5}));
        }
    }

    #[test]
    fn format_names_parse_and_print() {
        for name in ["envelope", "payload", "cloudevents", "cloudevents-binary"] {
            assert_eq!(name.parse::<Format>().unwrap().to_string(), name);
        }
        let err = "avro".parse::<Format>().unwrap_err();
        assert!(err.starts_with("unknown format \"avro\""), "{err}");
        assert!(Format::Payload.needs_headers());
        assert!(!Format::Envelope.needs_headers());
    }
}
