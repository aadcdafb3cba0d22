//! How an envelope becomes a NATS message: subject, headers, body, and the size check
//! against the server's `max_payload`.
//!
//! The server refuses (and closes the connection on) a message whose headers plus body
//! exceed the `max_payload` it announced in its `INFO`. Such an event can never be
//! delivered, so it is reported as a per-event error before anything is published.

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use async_nats::Subject;
use bytes::Bytes;
use outflow_core::{Envelope, Error, Format, HeaderStyle, Template};

/// The header carrying the body's media type.
pub(crate) const CONTENT_TYPE: &str = "Content-Type";
/// The header carrying the reason on a dead-lettered message.
pub(crate) const ERROR_HEADER: &str = "outflow-error";
/// The header naming the envelope fields left out of a dead letter too large to send whole.
pub(crate) const OMITTED_HEADER: &str = "outflow-omitted";

/// An event's message, ready to publish.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// Cheap to clone: a constant subject is shared by every message of a batch.
    pub(crate) subject: Subject,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// A dead-letter message, ready to publish.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) subject: String,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Why a subject is not a valid publish subject, if it is not.
pub(crate) fn invalid_subject(subject: &str) -> Option<&'static str> {
    if subject.is_empty() {
        Some("is empty")
    } else if subject.contains(char::is_whitespace) {
        Some("contains whitespace, which NATS subjects cannot")
    } else if subject.starts_with('.') || subject.ends_with('.') || subject.contains("..") {
        Some("has an empty token (a leading, trailing or double '.')")
    } else if subject.split('.').any(|t| t == "*" || t == ">") {
        Some("contains a wildcard token; publish subjects must be literal")
    } else {
        None
    }
}

/// Renders the subject of an event and checks it; a bad subject is per-event (it comes
/// from the event's data, e.g. an empty aggregate type).
pub(crate) fn subject_for(template: &Template, event: &Envelope) -> Result<String, Error> {
    let subject = template.render(event);
    match invalid_subject(&subject) {
        None => Ok(subject),
        Some(why) => Err(invalid_subject_error(&subject, template, event, why)),
    }
}

fn invalid_subject_error(subject: &str, template: &Template, event: &Envelope, why: &str) -> Error {
    Error::per_event(format!(
        "subject {subject:?} rendered from {:?} for event {} {why}",
        template.as_str(),
        event.id
    ))
}

/// Appends a header, refusing names and values NATS cannot carry.
pub(crate) fn put_header(
    headers: &mut HeaderMap,
    name: &str,
    value: &str,
    event_id: &str,
) -> Result<(), Error> {
    let header = header_name(name, event_id)?;
    let value = header_value(name, value, event_id)?;
    headers.insert(header, value);
    Ok(())
}

/// A header value, refused when NATS cannot carry it (a line break).
fn header_value(name: &str, value: &str, event_id: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value).map_err(|e| {
        Error::per_event(format!(
            "event {event_id}: the value of header {name:?} cannot be sent over NATS"
        ))
        .with_source(e)
    })
}

/// A header name, refused when NATS cannot carry it.
fn header_name(name: &str, event_id: &str) -> Result<HeaderName, Error> {
    HeaderName::from_str(name).map_err(|e| {
        Error::per_event(format!(
            "event {event_id}: header name {name:?} cannot be sent over NATS"
        ))
        .with_source(e)
    })
}

/// The bytes a header block takes on the wire (`NATS/1.0\r\n`, one `name: value\r\n`
/// per value, a closing `\r\n`), which the server counts against `max_payload`.
pub(crate) fn headers_wire_len(headers: &HeaderMap) -> usize {
    if headers.is_empty() {
        return 0;
    }
    let mut len = "NATS/1.0\r\n".len() + "\r\n".len();
    for (name, values) in headers.iter() {
        let name: &str = name.as_ref();
        for value in values {
            len += name.len() + ": ".len() + value.as_str().len() + "\r\n".len();
        }
    }
    len
}

/// Fails with a per-event error when a message cannot fit the server's `max_payload`.
pub(crate) fn check_size(
    headers: &HeaderMap,
    body: &[u8],
    max_payload: usize,
    event_id: &str,
) -> Result<(), Error> {
    let size = headers_wire_len(headers) + body.len();
    if max_payload > 0 && size > max_payload {
        return Err(Error::per_event(format!(
            "event {event_id} is {size} bytes as a NATS message (headers and body), over the \
             server's max_payload of {max_payload} bytes; raise max_payload on the server or \
             make the event smaller"
        )));
    }
    Ok(())
}

/// Encodes the events of one batch in the configured format with `Nats-Msg-Id` = the
/// event id and `Content-Type`, each checked against `max_payload`.
///
/// What is the same for every message is prepared once per batch: the subject of a
/// template without placeholders, the `Content-Type` header name, and the buffer the
/// envelope format serializes into (each body is then copied out at its exact size).
pub(crate) struct BatchEncoder<'a> {
    template: &'a Template,
    format: Format,
    max_payload: usize,
    /// The subject once rendered and checked, when the template substitutes nothing.
    constant_subject: Option<Subject>,
    /// The last subject rendered and checked: consecutive events of one aggregate type
    /// share it instead of each checking and allocating its own.
    last_subject: Option<Subject>,
    /// The buffer subjects are rendered into.
    rendered: String,
    content_type: HeaderName,
    /// `application/json`, the envelope format's media type, checked once.
    json: HeaderValue,
    expected_last: HeaderName,
    /// The names of the events' own headers met so far, checked once each (a few names,
    /// such as `traceparent`, recur on every event).
    names: Vec<(String, HeaderName)>,
    body: Vec<u8>,
}

/// How many distinct event header names an encoder remembers.
const REMEMBERED_NAMES: usize = 16;

impl<'a> BatchEncoder<'a> {
    pub(crate) fn new(template: &'a Template, format: Format, max_payload: usize) -> Self {
        BatchEncoder {
            template,
            format,
            max_payload,
            constant_subject: None,
            last_subject: None,
            rendered: String::new(),
            content_type: HeaderName::from_static(CONTENT_TYPE),
            json: HeaderValue::from_str("application/json").expect("a valid header value"),
            expected_last: HeaderName::from_static(crate::chain::EXPECTED_LAST_MSG_ID),
            names: Vec::new(),
            body: Vec::new(),
        }
    }

    /// An event header's name, checked the first time it is met.
    fn name(&mut self, name: &str, event_id: &str) -> Result<HeaderName, Error> {
        if let Some((_, known)) = self.names.iter().find(|(text, _)| text == name) {
            return Ok(known.clone());
        }
        let checked = header_name(name, event_id)?;
        if self.names.len() < REMEMBERED_NAMES {
            self.names.push((name.to_string(), checked.clone()));
        }
        Ok(checked)
    }

    fn subject(&mut self, event: &Envelope) -> Result<Subject, Error> {
        if let Some(subject) = &self.constant_subject {
            return Ok(subject.clone());
        }
        if self.template.is_constant() {
            let subject = Subject::from(subject_for(self.template, event)?);
            self.constant_subject = Some(subject.clone());
            return Ok(subject);
        }
        self.template.render_into(event, &mut self.rendered);
        if let Some(last) = &self.last_subject {
            if last.as_str() == self.rendered {
                return Ok(last.clone());
            }
        }
        if let Some(why) = invalid_subject(&self.rendered) {
            return Err(invalid_subject_error(
                &self.rendered,
                self.template,
                event,
                why,
            ));
        }
        let subject = Subject::from(self.rendered.as_str());
        self.last_subject = Some(subject.clone());
        Ok(subject)
    }

    /// Encodes one event; a per-event error when it cannot be sent. `expected_last` is
    /// the id of the message it must follow in its stream (`Nats-Expected-Last-Msg-Id`),
    /// counted in the size check like every header.
    pub(crate) fn encode(
        &mut self,
        event: &Envelope,
        expected_last: Option<&str>,
    ) -> Result<Outgoing, Error> {
        let subject = self.subject(event)?;
        let mut headers = HeaderMap::new();
        let (body, content_type) = match self.format {
            // The envelope format is the envelope as JSON with the event's headers
            // (`Format::encode`), written here into the reused buffer.
            Format::Envelope => {
                for (text, value) in &event.headers {
                    let name = self.name(text, &event.id)?;
                    headers.insert(name, header_value(text, value, &event.id)?);
                }
                self.body.clear();
                event.write_json(&mut self.body);
                (Bytes::copy_from_slice(&self.body), self.json.clone())
            }
            format => {
                let encoded = format.encode(event, HeaderStyle::Dash);
                for (name, value) in &encoded.headers {
                    put_header(&mut headers, name, value, &event.id)?;
                }
                let content_type = encoded.content_type;
                let value = HeaderValue::from_str(content_type).map_err(|e| {
                    Error::per_event(format!(
                        "event {}: content type {content_type:?} cannot be sent over NATS",
                        event.id
                    ))
                    .with_source(e)
                })?;
                (Bytes::from(encoded.body), value)
            }
        };
        headers.insert(self.content_type.clone(), content_type);
        let id = HeaderValue::from_str(&event.id).map_err(|e| {
            Error::per_event(format!(
                "event id {:?} cannot be sent as Nats-Msg-Id",
                event.id
            ))
            .with_source(e)
        })?;
        headers.insert(NATS_MESSAGE_ID, id);
        if let Some(last) = expected_last {
            // An id already passed as `Nats-Msg-Id`, so it is a valid header value.
            let last = HeaderValue::from_str(last).map_err(|e| {
                Error::per_event(format!("event id {last:?} cannot be sent as a header"))
                    .with_source(e)
            })?;
            headers.insert(self.expected_last.clone(), last);
        }
        check_size(&headers, &body, self.max_payload, &event.id)?;
        Ok(Outgoing {
            subject,
            headers,
            body,
        })
    }
}

/// Encodes one event (a batch of one).
#[cfg(test)]
pub(crate) fn encode(
    event: &Envelope,
    subject: &Template,
    format: Format,
    max_payload: usize,
) -> Result<Outgoing, Error> {
    BatchEncoder::new(subject, format, max_payload).encode(event, None)
}

/// The dead-letter message of an event: the envelope as JSON, `Nats-Msg-Id` =
/// `<id>:dlq`, and the reason in `outflow-error` (line breaks turned into spaces, as
/// header values cannot hold them).
///
/// An event is most often dead-lettered because it is larger than the server's
/// `max_payload`, and then its whole envelope cannot be published either. In that case
/// the dead letter carries the envelope with its data (`payload`, `key`, `before`,
/// `after`, `headers`) emptied, and names the emptied fields in `outflow-omitted`: the
/// id, aggregate, event type and source position still say which event failed and where
/// to find it. Only when even that does not fit is it a per-event error.
pub(crate) fn dead_letter_message(
    subject: String,
    event: &Envelope,
    reason: &str,
    max_payload: usize,
) -> Result<Message, Error> {
    let reason: String = reason
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let whole = dead_letter_parts(event, &reason, None)?;
    if fits(&whole.0, &whole.1, max_payload) {
        return Ok(Message {
            subject,
            headers: whole.0,
            body: Bytes::from(whole.1),
        });
    }
    let mut slim = event.clone();
    let mut omitted = Vec::new();
    if !slim.payload.is_null() {
        slim.payload = outflow_core::RawJson::null();
        omitted.push("payload");
    }
    for (name, field) in [
        ("key", &mut slim.key),
        ("before", &mut slim.before),
        ("after", &mut slim.after),
    ] {
        if field.take().is_some() {
            omitted.push(name);
        }
    }
    if !slim.headers.is_empty() {
        slim.headers.clear();
        omitted.push("headers");
    }
    let (headers, body) = dead_letter_parts(&slim, &reason, Some(&omitted.join(",")))?;
    check_size(&headers, &body, max_payload, &event.id)?;
    Ok(Message {
        subject,
        headers,
        body: Bytes::from(body),
    })
}

/// Whether headers and body fit within `max_payload` (0: no known limit).
fn fits(headers: &HeaderMap, body: &[u8], max_payload: usize) -> bool {
    max_payload == 0 || headers_wire_len(headers) + body.len() <= max_payload
}

fn dead_letter_parts(
    event: &Envelope,
    reason: &str,
    omitted: Option<&str>,
) -> Result<(HeaderMap, Vec<u8>), Error> {
    let body = event.to_json_vec();
    let mut headers = HeaderMap::new();
    put_header(&mut headers, ERROR_HEADER, reason, &event.id)?;
    if let Some(omitted) = omitted {
        put_header(&mut headers, OMITTED_HEADER, omitted, &event.id)?;
    }
    put_header(&mut headers, CONTENT_TYPE, "application/json", &event.id)?;
    put_header(
        &mut headers,
        NATS_MESSAGE_ID.as_ref(),
        &format!("{}:dlq", event.id),
        &event.id,
    )?;
    Ok((headers, body))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use outflow_core::{ErrorKind, Op, SourceInfo};
    use serde_json::json;

    use super::*;

    fn event() -> Envelope {
        Envelope {
            id: "e-1".into(),
            op: Op::Insert,
            aggregate_type: "order".into(),
            aggregate_id: "7".into(),
            event_type: "OrderCreated".into(),
            payload: json!({"n": 1}).into(),
            key: None,
            before: None,
            after: None,
            headers: BTreeMap::from([("traceparent".to_string(), "00-a-b-01".to_string())]),
            source: SourceInfo {
                pipeline: "p".into(),
                collection: "public.outbox".into(),
                ..Default::default()
            },
        }
    }

    fn template() -> Template {
        Template::parse("outbox.event.{aggregate_type}").unwrap()
    }

    #[test]
    fn wire_len_counts_every_header() {
        let mut h = HeaderMap::new();
        assert_eq!(headers_wire_len(&h), 0);
        h.insert("a", "bc");
        // "NATS/1.0\r\n" + "a: bc\r\n" + "\r\n"
        assert_eq!(headers_wire_len(&h), 10 + 7 + 2);
    }

    #[test]
    fn envelope_message_carries_id_and_content_type() {
        let m = encode(&event(), &template(), Format::Envelope, 1 << 20).unwrap();
        assert_eq!(m.subject.as_str(), "outbox.event.order");
        assert_eq!(m.headers.get(NATS_MESSAGE_ID).unwrap().as_str(), "e-1");
        assert_eq!(
            m.headers.get(CONTENT_TYPE).unwrap().as_str(),
            "application/json"
        );
        assert_eq!(m.headers.get("traceparent").unwrap().as_str(), "00-a-b-01");
        let back: Envelope = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(back, event());
    }

    #[test]
    fn every_format_matches_the_core_encoding_and_subjects_are_shared() {
        let template = template();
        let mut second = event();
        second.id = "e-2".into();
        second.aggregate_type = "invoice".into();
        second.headers.insert("b".into(), "2".into());
        for format in [
            Format::Envelope,
            Format::Payload,
            Format::CloudEvents { binary: false },
            Format::CloudEvents { binary: true },
        ] {
            let mut encoder = BatchEncoder::new(&template, format, 1 << 20);
            for ev in [event(), second.clone(), event()] {
                let m = encoder.encode(&ev, None).unwrap();
                let core = format.encode(&ev, HeaderStyle::Dash);
                assert_eq!(m.body.as_ref(), core.body.as_slice(), "{format:?}");
                let mut expected: Vec<(String, String)> = core.headers.clone();
                expected.push((CONTENT_TYPE.into(), core.content_type.into()));
                expected.push((NATS_MESSAGE_ID.to_string(), ev.id.clone()));
                expected.sort();
                let mut got: Vec<(String, String)> = m
                    .headers
                    .iter()
                    .flat_map(|(n, vs)| {
                        let n: &str = n.as_ref();
                        vs.iter()
                            .map(move |v| (n.to_string(), v.as_str().to_string()))
                    })
                    .collect();
                got.sort();
                assert_eq!(got, expected, "{format:?}");
                assert_eq!(
                    m.subject.as_str(),
                    format!("outbox.event.{}", ev.aggregate_type)
                );
            }
        }
        // A constant subject is rendered and checked once, then shared.
        let fixed = Template::parse("outbox.events").unwrap();
        let mut encoder = BatchEncoder::new(&fixed, Format::Envelope, 1 << 20);
        assert_eq!(
            encoder.encode(&event(), None).unwrap().subject.as_str(),
            "outbox.events"
        );
        assert_eq!(
            encoder.encode(&second, None).unwrap().subject.as_str(),
            "outbox.events"
        );
        let bad = Template::parse("outbox..events").unwrap();
        let mut encoder = BatchEncoder::new(&bad, Format::Envelope, 1 << 20);
        for _ in 0..2 {
            let err = encoder.encode(&event(), None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PerEvent);
            assert!(err.to_string().contains("empty token"), "{err}");
        }
    }

    #[test]
    fn header_names_are_checked_once_and_each_event_keeps_its_own_values() {
        let template = template();
        let mut encoder = BatchEncoder::new(&template, Format::Envelope, 1 << 20);
        // More distinct names than the encoder remembers, each seen twice.
        for round in 0..2 {
            for i in 0..(REMEMBERED_NAMES + 4) {
                let mut ev = event();
                ev.headers.insert(format!("h{i}"), format!("v{i}-{round}"));
                let m = encoder.encode(&ev, None).unwrap();
                assert_eq!(
                    m.headers.get(format!("h{i}").as_str()).unwrap().as_str(),
                    format!("v{i}-{round}")
                );
                assert_eq!(m.headers.get("traceparent").unwrap().as_str(), "00-a-b-01");
                assert_eq!(m.headers.len(), 4, "h{i}, traceparent, id, content type");
            }
        }
        let mut bad = event();
        bad.headers.insert("bad:name".into(), "v".into());
        for _ in 0..2 {
            let err = encoder.encode(&bad, None).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::PerEvent);
            assert!(
                err.to_string().contains("header name \"bad:name\""),
                "{err}"
            );
        }
        let mut broken = event();
        broken.headers.insert("traceparent".into(), "a\r\nb".into());
        let err = encoder.encode(&broken, None).unwrap_err();
        assert!(
            err.to_string()
                .contains("the value of header \"traceparent\""),
            "{err}"
        );
    }

    #[test]
    fn a_reused_subject_is_only_reused_for_the_same_text() {
        let template = template();
        let mut encoder = BatchEncoder::new(&template, Format::Envelope, 1 << 20);
        let mut empty = event();
        empty.aggregate_type = String::new();
        let mut spaced = event();
        spaced.aggregate_type = "a b".into();
        let mut other = event();
        other.aggregate_type = "invoice".into();
        let subjects: Vec<Result<String, String>> = [
            event(),
            event(),
            empty.clone(),
            event(),
            spaced,
            empty,
            other,
            event(),
        ]
        .iter()
        .map(|ev| {
            encoder
                .encode(ev, None)
                .map(|m| m.subject.to_string())
                .map_err(|e| e.to_string())
        })
        .collect();
        let ok = |s: &str| Ok(s.to_string());
        assert_eq!(subjects[0], ok("outbox.event.order"));
        assert_eq!(subjects[1], ok("outbox.event.order"));
        assert!(subjects[2]
            .as_ref()
            .unwrap_err()
            .contains("\"outbox.event.\""));
        assert_eq!(subjects[3], ok("outbox.event.order"));
        assert!(subjects[4].as_ref().unwrap_err().contains("whitespace"));
        assert!(subjects[5].as_ref().unwrap_err().contains("empty token"));
        assert_eq!(subjects[6], ok("outbox.event.invoice"));
        assert_eq!(subjects[7], ok("outbox.event.order"));
    }

    #[test]
    fn the_expected_last_id_is_a_header_counted_against_max_payload() {
        let plain = encode(&event(), &template(), Format::Envelope, 1 << 20).unwrap();
        let size = headers_wire_len(&plain.headers) + plain.body.len();
        let template = template();
        let mut encoder = BatchEncoder::new(&template, Format::Envelope, 1 << 20);
        let chained = encoder.encode(&event(), Some("e-0")).unwrap();
        assert_eq!(
            chained
                .headers
                .get(crate::chain::EXPECTED_LAST_MSG_ID)
                .map(|v| v.as_str()),
            Some("e-0")
        );
        let extra = "Nats-Expected-Last-Msg-Id: e-0\r\n".len();
        assert_eq!(
            headers_wire_len(&chained.headers) + chained.body.len(),
            size + extra
        );
        // Exactly at the limit without the header, one byte over with it.
        let mut encoder = BatchEncoder::new(&template, Format::Envelope, size);
        assert!(encoder.encode(&event(), None).is_ok());
        let err = encoder.encode(&event(), Some("e-0")).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PerEvent);
    }

    #[test]
    fn oversized_event_is_per_event_with_size_and_limit() {
        let m = encode(&event(), &template(), Format::Envelope, 1 << 20).unwrap();
        let size = headers_wire_len(&m.headers) + m.body.len();
        assert!(encode(&event(), &template(), Format::Envelope, size).is_ok());
        let err = encode(&event(), &template(), Format::Envelope, size - 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PerEvent);
        assert!(
            err.to_string().contains(&format!(
                "is {size} bytes as a NATS message (headers and body), over the server's \
                 max_payload of {} bytes",
                size - 1
            )),
            "{err}"
        );
    }

    #[test]
    fn bad_subjects_and_headers_are_per_event() {
        let mut ev = event();
        ev.aggregate_type = String::new();
        let err = encode(&ev, &template(), Format::Envelope, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PerEvent);
        assert!(err.to_string().contains("\"outbox.event.\""), "{err}");
        ev.aggregate_type = "a b".into();
        assert!(encode(&ev, &template(), Format::Envelope, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("whitespace"));

        let mut ev = event();
        ev.headers.insert("x".into(), "line\r\nbreak".into());
        let err = encode(&ev, &template(), Format::Envelope, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PerEvent);
        assert!(err.to_string().contains("header \"x\""), "{err}");
        let mut ev = event();
        ev.headers.insert("bad:name".into(), "v".into());
        assert!(encode(&ev, &template(), Format::Envelope, 1 << 20)
            .unwrap_err()
            .to_string()
            .contains("header name \"bad:name\""));
    }

    #[test]
    fn dead_letter_headers() {
        let m = dead_letter_message("dlq".into(), &event(), "too\nbig", 1 << 20).unwrap();
        assert_eq!(m.headers.get(NATS_MESSAGE_ID).unwrap().as_str(), "e-1:dlq");
        assert_eq!(m.headers.get(ERROR_HEADER).unwrap().as_str(), "too big");
        let back: Envelope = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(back, event());
        assert!(m.headers.get(OMITTED_HEADER).is_none());
    }

    #[test]
    fn dead_letter_of_an_oversized_event_leaves_its_data_out() {
        let mut ev = event();
        ev.payload = json!({"blob": "x".repeat(5000)}).into();
        ev.after = Some(json!({"id": 1}).into());
        let limit = 2048;
        assert!(encode(&ev, &template(), Format::Envelope, limit).is_err());
        let m = dead_letter_message("dlq".into(), &ev, "too big", limit).unwrap();
        assert!(headers_wire_len(&m.headers) + m.body.len() <= limit);
        assert_eq!(
            m.headers.get(OMITTED_HEADER).unwrap().as_str(),
            "payload,after,headers"
        );
        assert_eq!(m.headers.get(NATS_MESSAGE_ID).unwrap().as_str(), "e-1:dlq");
        let back: Envelope = serde_json::from_slice(&m.body).unwrap();
        assert_eq!(back.id, "e-1");
        assert_eq!(back.aggregate_type, "order");
        assert_eq!(back.payload, serde_json::Value::Null.into());
        assert_eq!(back.after, None);
        assert!(back.headers.is_empty());

        let err = dead_letter_message("dlq".into(), &ev, "too big", 100).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PerEvent);
    }
}
