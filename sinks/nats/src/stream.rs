//! JetStream streams: deriving the subjects a stream must capture from the subject
//! template, creating the stream when asked to, and finding the stream that captures a
//! subject.
//!
//! JetStream stores a message only when a stream's subjects match its subject; a publish
//! that no stream captures is answered with a "no responders" status (async-nats reports
//! it as `StreamNotFound`). The `$JS.API.STREAM.NAMES` request with a subject filter lists
//! the streams whose subjects overlap it, which is how a missing stream is told apart
//! from a momentary gap (a stream leader election in a cluster).

use std::time::Duration;

use async_nats::jetstream::context::{
    CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind, RequestError,
    RequestErrorKind, UpdateStreamError,
};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use async_nats::jetstream::{self, stream, ErrorCode};
use outflow_core::{Error, Template};
use tracing::info;

/// The subjects a stream must capture for every subject the template can render.
///
/// A constant template gives itself. A template whose only placeholder is its whole last
/// token gives that token as `*` (`outbox.event.{aggregate_type}` → `outbox.event.*`).
/// Any other template gives its literal leading tokens followed by `>`
/// (`outbox.{aggregate_type}.{event_type}` → `outbox.>`). A template that starts with a
/// placeholder has no such prefix: its stream subjects must be configured.
pub(crate) fn derive_subjects(template: &Template) -> Result<Vec<String>, Error> {
    if template.is_constant() {
        return Ok(vec![template.wildcard("")]);
    }
    // A NUL cannot appear in a subject, so it marks where the placeholders are.
    let marked = template.wildcard("\0");
    let tokens: Vec<&str> = marked.split('.').collect();
    let first = tokens
        .iter()
        .position(|t| t.contains('\0'))
        .unwrap_or(tokens.len());
    if template.fields().count() == 1 && first == tokens.len() - 1 && tokens[first] == "\0" {
        return Ok(vec![template.wildcard("*")]);
    }
    if first == 0 {
        return Err(Error::fatal(format!(
            "nats sink: cannot derive the subjects of `stream` from subject template {:?}, \
             which starts with a placeholder; set `stream_subjects`, e.g. [\"events.>\"]",
            template.as_str()
        )));
    }
    let mut subject = tokens[..first].join(".");
    subject.push_str(".>");
    Ok(vec![subject])
}

/// The fatal error for a subject that no stream captures.
pub(crate) fn missing_stream_error(subject: &str, capture: &str) -> Error {
    Error::fatal(format!(
        "no JetStream stream captures subject {subject:?}; create one, e.g. `nats stream add \
         OUTBOX --subjects '{capture}' --dupe-window 2m --defaults`, or set `stream = \"NAME\"` in the \
         nats sink so outflow creates it"
    ))
}

/// Classifies a failed JetStream API request.
fn request_error(what: &str, err: RequestError) -> Error {
    match err.kind() {
        RequestErrorKind::NoResponders => Error::fatal(format!(
            "{what}: JetStream is not enabled on the NATS server (no responders on the \
             JetStream API); start nats-server with JetStream (-js) or set `jetstream = false`"
        )),
        _ => Error::transient(format!("{what}: JetStream API request failed")).with_source(err),
    }
}

/// The JetStream API error inside a nested async-nats error, if any.
fn api_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a RequestError> {
    let mut cause = err.source();
    while let Some(c) = cause {
        if let Some(r) = c.downcast_ref::<RequestError>() {
            return Some(r);
        }
        cause = c.source();
    }
    None
}

fn get_stream_error(what: &str, err: GetStreamError) -> Error {
    match err.kind() {
        GetStreamErrorKind::Request => match api_error(&err) {
            Some(req) if req.kind() == RequestErrorKind::NoResponders => {
                request_error(what, RequestError::new(RequestErrorKind::NoResponders))
            }
            _ => Error::transient(format!("{what}: JetStream API request failed")).with_source(err),
        },
        GetStreamErrorKind::JetStream(api) => {
            Error::fatal(format!("{what}: JetStream refused: {api}"))
        }
        _ => Error::fatal(format!("{what}: {err}")),
    }
}

fn create_stream_error(name: &str, err: CreateStreamError) -> Error {
    let what = format!("cannot create JetStream stream {name:?}");
    match err.kind() {
        CreateStreamErrorKind::JetStreamUnavailable => {
            request_error(&what, RequestError::new(RequestErrorKind::NoResponders))
        }
        CreateStreamErrorKind::TimedOut => {
            Error::transient(format!("{what}: the JetStream API did not answer in time"))
        }
        CreateStreamErrorKind::JetStream(api)
            if api.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP =>
        {
            Error::fatal(format!(
                "{what}: its subjects overlap those of another stream ({api}); let that stream \
                 capture the sink's subjects and remove `stream`, or change `subject`"
            ))
        }
        CreateStreamErrorKind::JetStream(api) => Error::fatal(format!("{what}: {api}")),
        CreateStreamErrorKind::Response | CreateStreamErrorKind::ResponseParse => {
            Error::transient(format!("{what}: bad response from the JetStream API"))
                .with_source(err)
        }
        _ => Error::fatal(format!("{what}: {err}")),
    }
}

fn update_stream_error(name: &str, err: UpdateStreamError) -> Error {
    let what = format!("cannot add a subject to JetStream stream {name:?}");
    match err.kind() {
        CreateStreamErrorKind::JetStream(api) => Error::fatal(format!("{what}: {api}")),
        _ => Error::transient(what).with_source(err),
    }
}

/// What [`ensure_stream`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ensured {
    /// The stream existed.
    Existing {
        /// Its subjects.
        subjects: Vec<String>,
    },
    /// The stream was created.
    Created,
}

/// The stream named `name`, if it exists.
pub(crate) async fn stream_info(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<stream::Info>, Error> {
    match js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream.cached_info().clone())),
        Err(err) => match err.kind() {
            GetStreamErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(None)
            }
            _ => Err(get_stream_error(
                &format!("cannot look up JetStream stream {name:?}"),
                err,
            )),
        },
    }
}

/// Creates stream `name` capturing `subjects` unless it exists. An existing stream is
/// left as it is.
pub(crate) async fn ensure_stream(
    js: &jetstream::Context,
    name: &str,
    subjects: &[String],
    duplicate_window: Duration,
) -> Result<Ensured, Error> {
    if let Some(info) = stream_info(js, name).await? {
        return Ok(Ensured::Existing {
            subjects: info.config.subjects,
        });
    }
    let config = stream::Config {
        name: name.to_string(),
        subjects: subjects.to_vec(),
        duplicate_window,
        ..Default::default()
    };
    match js.create_stream(config).await {
        Ok(_) => {
            info!(stream = %name, subjects = ?subjects, "stream created");
            Ok(Ensured::Created)
        }
        Err(err) => match err.kind() {
            // Another relay created it between our look-up and our create.
            CreateStreamErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::STREAM_NAME_EXIST =>
            {
                Ok(Ensured::Existing {
                    subjects: subjects.to_vec(),
                })
            }
            _ => Err(create_stream_error(name, err)),
        },
    }
}

/// Makes sure a stream captures `subject`: if none does, adds it to stream `name`
/// (creating that stream when missing).
pub(crate) async fn cover_subject(
    js: &jetstream::Context,
    name: &str,
    subject: &str,
    duplicate_window: Duration,
) -> Result<(), Error> {
    if stream_for_subject(js, subject).await?.is_some() {
        return Ok(());
    }
    match stream_info(js, name).await? {
        None => {
            ensure_stream(js, name, &[subject.to_string()], duplicate_window).await?;
        }
        Some(info) => {
            let mut config = info.config;
            config.subjects.push(subject.to_string());
            js.update_stream(config)
                .await
                .map_err(|e| update_stream_error(name, e))?;
            info!(stream = %name, subject = %subject, "subject added to stream");
        }
    }
    Ok(())
}

/// The names of every stream whose subjects overlap `subject` (up to the API's first
/// page, 1,024 names), sorted.
pub(crate) async fn streams_for_subject(
    js: &jetstream::Context,
    subject: &str,
) -> Result<Vec<String>, Error> {
    let what = format!("cannot list the JetStream streams of subject {subject:?}");
    let response: serde_json::Value = js
        .request("STREAM.NAMES", &serde_json::json!({ "subject": subject }))
        .await
        .map_err(|e| request_error(&what, e))?;
    if let Some(error) = response.get("error") {
        let description = error
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or("no description");
        return Err(Error::fatal(format!("{what}: {description}")));
    }
    let mut names: Vec<String> = match response.get("streams") {
        Some(serde_json::Value::Array(names)) => names
            .iter()
            .filter_map(|n| n.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    names.sort();
    Ok(names)
}

/// The name of a stream whose subjects overlap `subject` (a literal subject or one with
/// wildcards), if any: the first of [`streams_for_subject`].
pub(crate) async fn stream_for_subject(
    js: &jetstream::Context,
    subject: &str,
) -> Result<Option<String>, Error> {
    Ok(streams_for_subject(js, subject).await?.into_iter().next())
}

/// Whether every subject that `subject` (which may hold wildcards) matches is also
/// matched by the stream subject `pattern`: `orders.>` covers `orders.*.created`, but
/// `orders.created` only overlaps `orders.*`.
pub(crate) fn covers(pattern: &str, subject: &str) -> bool {
    let mut wanted = subject.split('.');
    for token in pattern.split('.') {
        match (token, wanted.next()) {
            // `>` matches one or more tokens, whatever they are.
            (">", Some(_)) => return true,
            (_, None) | (_, Some(">")) => return false,
            ("*", Some(_)) => {}
            (literal, Some(other)) if literal == other => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

/// Whether one of a stream's subjects covers `subject` (see [`covers`]).
pub(crate) fn captures(stream_subjects: &[String], subject: &str) -> bool {
    stream_subjects.iter().any(|p| covers(p, subject))
}

/// The streams whose subjects overlap `subject` ([`streams_for_subject`]), each with its
/// subjects, so a caller can tell one that captures all of it from one that captures
/// part.
pub(crate) async fn overlapping_streams(
    js: &jetstream::Context,
    subject: &str,
) -> Result<Vec<(String, Vec<String>)>, Error> {
    let mut overlapping = Vec::new();
    for name in streams_for_subject(js, subject).await? {
        let subjects = stream_info(js, &name)
            .await?
            .map(|info| info.config.subjects)
            .unwrap_or_default();
        overlapping.push((name, subjects));
    }
    Ok(overlapping)
}

/// The `Nats-Msg-Id` of the last message stream `name` holds, if it has one.
pub(crate) async fn last_message_id(
    js: &jetstream::Context,
    name: &str,
) -> Result<Option<String>, Error> {
    let what = format!("cannot read the last message of JetStream stream {name:?}");
    let mut stream = js
        .get_stream(name)
        .await
        .map_err(|e| get_stream_error(&what, e))?;
    let last = stream
        .info()
        .await
        .map_err(|e| Error::transient(what.clone()).with_source(e))?
        .state
        .last_sequence;
    if last == 0 {
        return Ok(None);
    }
    match stream.get_raw_message(last).await {
        Ok(message) => Ok(message
            .headers
            .get(async_nats::header::NATS_MESSAGE_ID)
            .map(|id| id.as_str().to_string())),
        // Deleted or expired between the two requests: nothing to follow.
        Err(err) if err.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(err) => Err(Error::transient(what).with_source(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn derive(t: &str) -> Result<Vec<String>, Error> {
        derive_subjects(&Template::parse(t).unwrap())
    }

    #[test]
    fn subjects_from_templates() {
        assert_eq!(
            derive("outbox.event.{aggregate_type}").unwrap(),
            ["outbox.event.*"]
        );
        assert_eq!(derive("orders").unwrap(), ["orders"]);
        assert_eq!(derive("a.b").unwrap(), ["a.b"]);
        assert_eq!(
            derive("outbox.{aggregate_type}.{event_type}").unwrap(),
            ["outbox.>"]
        );
        assert_eq!(
            derive("outbox.{aggregate_type}.events").unwrap(),
            ["outbox.>"]
        );
        assert_eq!(derive("outbox.evt-{op}").unwrap(), ["outbox.>"]);
        assert_eq!(derive("a.b.{op}{pipeline}").unwrap(), ["a.b.>"]);
        let err = derive("{pipeline}.events").unwrap_err();
        assert_eq!(err.kind(), outflow_core::ErrorKind::Fatal);
        assert!(err.to_string().contains("set `stream_subjects`"), "{err}");
    }

    #[test]
    fn covering_is_matching_every_subject() {
        for (pattern, subject) in [
            ("a.b", "a.b"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("a.>", "a.b.c"),
            ("a.>", "a.*.c"),
            ("a.>", "a.>"),
            (">", "a"),
            ("*.b.>", "x.b.*"),
        ] {
            assert!(covers(pattern, subject), "{pattern} covers {subject}");
        }
        for (pattern, subject) in [
            ("a.b", "a.*"),
            ("a.b", "a.c"),
            ("a.*", "a.>"),
            ("a.*", "a.b.c"),
            ("a.*", "a"),
            ("a.>", "a"),
            ("a.b.c", "a.b"),
            ("a.*.c", "a.>"),
        ] {
            assert!(
                !covers(pattern, subject),
                "{pattern} does not cover {subject}"
            );
        }
    }

    #[test]
    fn missing_stream_says_how_to_create_it() {
        let text = missing_stream_error("outbox.event.order", "outbox.event.*").to_string();
        assert!(text.contains("\"outbox.event.order\""), "{text}");
        assert!(text.contains("nats stream add"), "{text}");
        assert!(text.contains("stream = \\\"NAME\\\"") || text.contains("stream = \"NAME\""));
    }
}
