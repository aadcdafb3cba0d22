//! The NATS sink: pipelined JetStream publishing, or core NATS when explicitly chosen.
//!
//! # What it relies on
//!
//! - One async-nats connection writes commands in the order they were queued, so
//!   publishing a batch message by message, in order, fixes its order on every subject
//!   before [`EventSink::send`] returns.
//! - A JetStream publish is a request: the server answers on a reply inbox with a
//!   publish ack once the stream stored the message, `duplicate: true` when the
//!   `Nats-Msg-Id` was already stored within the stream's duplicate window, an API error,
//!   or a "no responders" status when no stream captures the subject.
//! - A JetStream publish without a reply subject is stored all the same, unanswered. On
//!   an exclusive stream the order chain lets one acknowledged publish vouch for every
//!   one before it, so a batch sent for the first time asks for the ack of its last
//!   publish only (see [`crate::chain`]).
//! - While the connection is down, async-nats keeps reconnecting in the background and
//!   queues commands in a bounded channel; nothing bounds how long a caller waits unless
//!   it sets timeouts. Every wait here (queueing a publish, an ack, a flush) is bounded
//!   by `ack_timeout` and reported as transient, so the pipeline retries the batch; the
//!   same connection resumes once the server is back. Messages queued during the outage
//!   may still reach the server after it returns: the retry carries the same
//!   `Nats-Msg-Id`s, so JetStream stores each once within its duplicate window, and on an
//!   exclusive stream `Nats-Expected-Last-Msg-Id` keeps them from being stored ahead of
//!   lost ones (see [`crate::chain`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::{self, ErrorCode};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use async_trait::async_trait;
use outflow_core::{
    BatchOutcome, Envelope, Error, EventSink, Pending, Rejection, Result, Template,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, trace, warn};

use crate::chain::{Chain, Refusal};
use crate::config::NatsConfig;
use crate::encode::{self, invalid_subject, BatchEncoder, Message, Outgoing};
use crate::stream::{self, Ensured};

/// Longest pause between reconnect attempts: a restarted server is found again within
/// two seconds, well inside the default `ack_timeout` of a retried batch.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// First pause between reconnect attempts.
const FIRST_RECONNECT_DELAY: Duration = Duration::from_millis(50);

/// Delivers events to NATS: JetStream with `Nats-Msg-Id` deduplication and awaited
/// publish acks (the default), or core NATS (`jetstream = false`, at most once).
///
/// Cloning is cheap and shares the connection.
#[derive(Clone)]
pub struct NatsSink {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// `None` in core NATS mode.
    js: Option<jetstream::Context>,
    subject: Template,
    format: outflow_core::Format,
    ack_timeout: Duration,
    stream: Option<String>,
    duplicate_window: Duration,
    url: String,
    pipeline: String,
    /// Dead-letter subjects already known to be captured by a stream.
    dead_letter_covered: Mutex<HashSet<String>>,
    /// The order chain through the pipeline's own stream (`exclusive_stream`).
    chain: Option<Chain>,
    /// Permission violations reported by the server.
    violations: Violations,
}

impl std::fmt::Debug for NatsSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsSink")
            .field("url", &self.inner.url)
            .field("pipeline", &self.inner.pipeline)
            .field("subject", &self.inner.subject.as_str())
            .field("jetstream", &self.inner.js.is_some())
            .finish()
    }
}

/// Connects with the configured addresses, authentication and TLS.
///
/// Unreachable servers give a transient error (the caller retries); refused credentials,
/// unreadable files and TLS failures are fatal.
pub(crate) async fn connect_client(
    config: &NatsConfig,
    pipeline: &str,
    violations: Violations,
) -> Result<Client> {
    config.validate()?;
    // When several rustls crypto backends are compiled into one program (the Postgres
    // source brings aws-lc-rs, async-nats ring), rustls cannot pick one by itself and TLS
    // connections fail. Install ring unless the process already chose a provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let addrs = config.server_addrs()?;
    let url = config.redacted_url();

    let mut options = ConnectOptions::new();
    if let Some(path) = &config.creds_file {
        options = options.credentials_file(path).await.map_err(|e| {
            Error::fatal(format!(
                "nats sink: cannot read `creds_file` {}",
                path.display()
            ))
            .with_source(e)
        })?;
    }
    if let Some(token) = &config.token {
        options = options.token(token.expose().to_string());
    }
    if let (Some(user), Some(password)) = (&config.user, &config.password) {
        options = options.user_and_password(user.clone(), password.expose().to_string());
    }
    if let Some(seed) = &config.nkey_seed {
        options = options.nkey(seed.expose().to_string());
    }
    for (key, path) in [
        ("tls_ca", &config.tls_ca),
        ("tls_cert", &config.tls_cert),
        ("tls_key", &config.tls_key),
    ] {
        if let Some(path) = path {
            tokio::fs::metadata(path).await.map_err(|e| {
                Error::fatal(format!("nats sink: cannot read `{key}` {}", path.display()))
                    .with_source(e)
            })?;
        }
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls_required || config.tls_ca.is_some() || config.tls_cert.is_some() {
        options = options.require_tls(true);
    }
    let name = config
        .name
        .clone()
        .unwrap_or_else(|| format!("outflow-{pipeline}"));
    let events_pipeline = pipeline.to_string();
    options = options
        .name(name)
        .connection_timeout(config.ack_timeout)
        .request_timeout(Some(config.ack_timeout))
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let pipeline = events_pipeline.clone();
            let violations = violations.clone();
            async move {
                if let Event::ServerError(async_nats::ServerError::Other(text)) = &event {
                    violations.record(text);
                }
                log_event(&pipeline, event)
            }
        });

    options.connect(addrs).await.map_err(|err| {
        let kind = if is_tls_failure(&err) {
            ConnectErrorKind::Tls
        } else {
            err.kind()
        };
        match kind {
            ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                Error::fatal(format!(
                    "NATS at {url} refused the connection ({kind}); check `token`, \
                     `user`/`password`, `nkey_seed` or `creds_file` and the server's \
                     authorization settings"
                ))
                .with_source(err)
            }
            ConnectErrorKind::Tls => Error::fatal(format!(
                "TLS with NATS at {url} failed; check `tls_ca`, `tls_cert`, `tls_key` and that \
                 the server has TLS enabled"
            ))
            .with_source(err),
            ConnectErrorKind::ServerParse => {
                Error::fatal(format!("nats sink: cannot use `url` {url}")).with_source(err)
            }
            ConnectErrorKind::Dns
            | ConnectErrorKind::TimedOut
            | ConnectErrorKind::Io
            | ConnectErrorKind::MaxReconnects => {
                Error::transient(format!("cannot reach NATS at {url}")).with_source(err)
            }
        }
    })
}

/// Whether a connect error is a refused TLS handshake (an untrusted or invalid
/// certificate), which async-nats reports as an IO error: rustls fails the handshake with
/// an `InvalidData` IO error. Retrying cannot fix it.
fn is_tls_failure(err: &async_nats::ConnectError) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                return true;
            }
        }
        if c.to_string().contains("certificate") {
            return true;
        }
        cause = c.source();
    }
    false
}

fn reconnect_delay(attempts: usize) -> Duration {
    let exponent = u32::try_from(attempts.saturating_sub(1))
        .unwrap_or(u32::MAX)
        .min(16);
    FIRST_RECONNECT_DELAY
        .saturating_mul(2u32.saturating_pow(exponent))
        .min(MAX_RECONNECT_DELAY)
}

/// The permission violations the server reported (`-ERR 'Permissions Violation for
/// Publish to "..."'`). The server drops such a publish without an answer, so a batch
/// that then misses its acks fails fatally with the server's words instead of being
/// retried forever.
#[derive(Clone, Default)]
pub(crate) struct Violations(Arc<Mutex<Option<String>>>);

impl Violations {
    fn record(&self, text: &str) {
        if text.to_ascii_lowercase().contains("permissions violation") {
            if let Ok(mut last) = self.0.lock() {
                *last = Some(text.trim_matches('\'').to_string());
            }
        }
    }

    /// The latest violation not reported yet.
    fn take(&self) -> Option<String> {
        self.0.lock().ok().and_then(|mut last| last.take())
    }
}

fn log_event(pipeline: &str, event: Event) {
    match event {
        Event::Connected => info!(pipeline = %pipeline, "nats connected"),
        Event::Disconnected => warn!(pipeline = %pipeline, "nats disconnected, reconnecting"),
        Event::LameDuckMode => warn!(pipeline = %pipeline, "nats server entering lame duck mode"),
        Event::SlowConsumer(sid) => warn!(pipeline = %pipeline, sid, "nats slow consumer"),
        Event::ServerError(err) => warn!(pipeline = %pipeline, error = %err, "nats server error"),
        Event::ClientError(err) => warn!(pipeline = %pipeline, error = %err, "nats client error"),
        other => debug!(pipeline = %pipeline, event = %other, "nats event"),
    }
}

fn jetstream_context(client: &Client, config: &NatsConfig) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.ack_timeout)
        .ack_timeout(config.ack_timeout)
        .max_ack_inflight(config.max_pending)
        .backpressure_on_inflight(true)
        .build(client.clone())
}

/// The subjects a stream must capture for this configuration.
fn capture_subjects(config: &NatsConfig) -> Result<Vec<String>> {
    match &config.stream_subjects {
        Some(subjects) => Ok(subjects.clone()),
        None => stream::derive_subjects(&config.subject),
    }
}

impl NatsSink {
    /// Connects to NATS for pipeline `pipeline`.
    ///
    /// In JetStream mode, creates `stream` when configured and missing; without `stream`,
    /// checks that some stream captures the subjects and fails fatally, saying how to
    /// create one, when none does. In core NATS mode, logs once that delivery is at most
    /// once.
    ///
    /// Errors: transient when the server cannot be reached (retry later), fatal on
    /// invalid configuration, refused credentials, TLS failures or a missing stream.
    pub async fn connect(config: NatsConfig, pipeline: &str) -> Result<NatsSink> {
        let violations = Violations::default();
        let client = connect_client(&config, pipeline, violations.clone()).await?;
        let url = config.redacted_url();
        let info = client.server_info();
        info!(
            pipeline = %pipeline,
            url = %url,
            server = %info.server_name,
            version = %info.version,
            max_payload = info.max_payload,
            jetstream = config.jetstream,
            "nats sink connected"
        );
        let js = if config.jetstream {
            let js = jetstream_context(&client, &config);
            let subjects = capture_subjects(&config)?;
            match &config.stream {
                Some(name) => {
                    let ensured =
                        stream::ensure_stream(&js, name, &subjects, config.duplicate_window)
                            .await?;
                    if let Ensured::Existing { subjects: existing } = ensured {
                        let uncovered = subjects.iter().filter(|s| !stream::captures(&existing, s));
                        for subject in uncovered {
                            // Another stream may capture it (checked again below when the
                            // stream is exclusive, which needs them all in one).
                            let others = stream::overlapping_streams(&js, subject).await?;
                            if !others.iter().any(|(_, s)| stream::captures(s, subject)) {
                                return Err(Error::fatal(format!(
                                    "stream {name:?} exists with subjects {existing:?}, which do \
                                     not capture {subject:?}; add it to the stream (`nats \
                                     stream edit {name} --subjects ...`) or change `subject`"
                                )));
                            }
                        }
                    }
                }
                None => {
                    for subject in &subjects {
                        let overlapping = stream::overlapping_streams(&js, subject).await?;
                        if overlapping.is_empty() {
                            return Err(stream::missing_stream_error(
                                config.subject.as_str(),
                                subject,
                            ));
                        }
                        if !overlapping
                            .iter()
                            .any(|(_, s)| stream::captures(s, subject))
                        {
                            // Events whose subject no stream captures fail when they are
                            // published ("no JetStream stream captures ..."); others go.
                            warn!(
                                pipeline = %pipeline,
                                subject = %subject,
                                streams = ?overlapping,
                                "no JetStream stream captures every subject the template \
                                 can make; events on the others will fail"
                            );
                        }
                    }
                }
            }
            Some(js)
        } else {
            warn!(
                pipeline = %pipeline,
                "nats sink uses core NATS (jetstream = false): delivery is at most once; \
                 messages published while no subscriber listens are lost"
            );
            None
        };
        let chain = match &js {
            Some(js) if config.is_exclusive() => Some(chain_for(js, &config, pipeline).await?),
            _ => None,
        };
        Ok(NatsSink {
            inner: Arc::new(Inner {
                client,
                js,
                subject: config.subject,
                format: config.format,
                ack_timeout: config.ack_timeout,
                stream: config.stream,
                duplicate_window: config.duplicate_window,
                url,
                pipeline: pipeline.to_string(),
                dead_letter_covered: Mutex::new(HashSet::new()),
                chain,
                violations,
            }),
        })
    }

    /// The underlying async-nats client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }
}

/// The order chain of an exclusive stream: the one stream that captures every subject
/// of the sink, with the id of the last message it holds.
async fn chain_for(js: &jetstream::Context, config: &NatsConfig, pipeline: &str) -> Result<Chain> {
    let subjects = capture_subjects(config)?;
    let mut owner: Option<String> = None;
    for subject in &subjects {
        // Each stream knows only its own last id: a chain cannot span two streams.
        let found = match stream::overlapping_streams(js, subject).await?.as_slice() {
            [] => {
                return Err(stream::missing_stream_error(
                    config.subject.as_str(),
                    subject,
                ))
            }
            [(one, captured)] => {
                if !stream::captures(captured, subject) {
                    return Err(Error::fatal(format!(
                        "exclusive_stream needs every subject of the sink in one stream, but \
                         stream {one:?} captures only part of {subject:?} (its subjects: \
                         {captured:?}); add {subject:?} to it (`nats stream edit {one} \
                         --subjects ...`), or set exclusive_stream = false"
                    )));
                }
                one.clone()
            }
            [(first, _), rest @ ..] => {
                let rest: Vec<String> = rest.iter().map(|(n, _)| format!("{n:?}")).collect();
                return Err(Error::fatal(format!(
                    "exclusive_stream needs every subject of the sink in one stream, but \
                     streams {first:?} and {} share {subject:?}; give the sink one stream \
                     (`stream`), or set exclusive_stream = false",
                    rest.join(" and ")
                )));
            }
        };
        if let Some(wanted) = config.stream.as_ref().or(owner.as_ref()) {
            if *wanted != found {
                return Err(Error::fatal(format!(
                    "exclusive_stream needs every subject of the sink in one stream, \
                     {wanted:?}, but stream {found:?} captures {subject:?}; change `subject` \
                     or `stream_subjects`, or set exclusive_stream = false"
                )));
            }
        }
        owner = Some(found);
    }
    let name = owner.ok_or_else(|| Error::fatal("nats sink: no subjects to publish to"))?;
    let last = stream::last_message_id(js, &name).await?;
    info!(
        pipeline = %pipeline,
        stream = %name,
        last = last.as_deref().unwrap_or(""),
        "exclusive stream: every publish names its predecessor (Nats-Expected-Last-Msg-Id)"
    );
    // Acknowledged ids still recognised as ours (a server that lost its latest messages
    // names an older one); every unacknowledged one is recognised in any case.
    let capacity = config.max_pending.saturating_mul(2).max(32_768);
    Ok(Chain::new(name, last, capacity))
}

/// Awaits `future` for at most `limit`. Queueing a publish is almost always done at the
/// first poll; only when it is not is the timer set up (once per event otherwise).
async fn within<F: std::future::Future>(
    limit: Duration,
    future: F,
) -> std::result::Result<F::Output, tokio::time::error::Elapsed> {
    let mut future = std::pin::pin!(future);
    match futures::poll!(future.as_mut()) {
        std::task::Poll::Ready(output) => Ok(output),
        std::task::Poll::Pending => tokio::time::timeout(limit, future).await,
    }
}

/// A publish queued with a reply subject, or why its event can never be sent.
enum Queued {
    Ack(PublishAckFuture),
    Rejected(Rejection),
}

/// One publish awaiting its ack.
struct InFlight {
    index: usize,
    subject: async_nats::Subject,
    ack: PublishAckFuture,
    /// Publishes without a reply subject went before it in the batch, and its ack is
    /// what says they were stored.
    vouches: bool,
}

impl Inner {
    fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Fails fast while the connection is down. Publishes queued then would be written
    /// after the reconnect, possibly after messages that were lost with the old
    /// connection, so refusing them keeps the window for reordering small.
    fn ensure_connected(&self) -> Result<()> {
        if let Some(violation) = self.violations.take() {
            return Err(self.permission_error(&violation));
        }
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            state => Err(Error::transient(format!(
                "the connection to NATS at {} is down ({state}); it is being re-established",
                self.url
            ))),
        }
    }

    fn permission_error(&self, violation: &str) -> Error {
        Error::fatal(format!(
            "NATS at {} refused the sink: {violation}; grant the connecting user publish \
             permission on every subject the template makes (and `$JS.API.>` for JetStream) \
             and subscribe permission on `_INBOX.>`",
            self.url
        ))
    }

    /// A transient timeout, or the fatal permission error that explains it.
    fn timed_out(&self, what: &str) -> Error {
        if let Some(violation) = self.violations.take() {
            return self.permission_error(&violation);
        }
        Error::transient(format!(
            "{what} within ack_timeout ({:?}); NATS at {} is unreachable or overloaded",
            self.ack_timeout, self.url
        ))
    }

    /// Classifies a failed JetStream publish or ack of the event at `index`.
    async fn publish_error(
        &self,
        js: &jetstream::Context,
        index: usize,
        subject: &str,
        err: async_nats::jetstream::context::PublishError,
    ) -> std::result::Result<Rejection, Error> {
        match err.kind() {
            PublishErrorKind::StreamNotFound => {
                // No responders: either no stream captures the subject, or none could
                // answer right now (a leader election). Ask the API which one it is.
                match stream::stream_for_subject(js, subject).await {
                    Ok(None) => Err(stream::missing_stream_error(subject, subject)),
                    Ok(Some(name)) => Err(Error::transient(format!(
                        "stream {name:?} did not answer the publish to {subject:?} (no \
                         responders)"
                    ))),
                    Err(e) => Err(e),
                }
            }
            PublishErrorKind::TimedOut => {
                Err(self.timed_out(&format!("no JetStream ack for the publish to {subject:?}")))
            }
            PublishErrorKind::BrokenPipe => Err(Error::transient(format!(
                "the connection to NATS at {} closed before the ack of a publish to \
                 {subject:?}",
                self.url
            ))),
            PublishErrorKind::MaxPayloadExceeded => Ok(Rejection {
                index,
                error: Error::per_event(format!(
                    "the NATS server refused the message to {subject:?} as too large"
                ))
                .with_source(err),
            }),
            PublishErrorKind::MaxAckPending => Err(Error::transient(
                "too many publishes await their acks (max_pending)",
            )),
            PublishErrorKind::WrongLastMessageId | PublishErrorKind::WrongLastSequence => {
                Err(Error::fatal(format!(
                    "JetStream refused the publish to {subject:?} on an expected-last check \
                     the sink never sets; check the stream's configuration"
                ))
                .with_source(err))
            }
            PublishErrorKind::Other => {
                let api = std::error::Error::source(&err)
                    .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
                    .cloned();
                match api {
                    Some(api) if api.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
                        Ok(Rejection {
                            index,
                            error: Error::per_event(format!(
                                "the stream capturing {subject:?} refused the message as larger \
                                 than its max_msg_size ({api})"
                            )),
                        })
                    }
                    Some(api) => Err(Error::transient(format!(
                        "JetStream refused the publish to {subject:?}: {api}"
                    ))),
                    None => Err(
                        Error::transient(format!("publishing to {subject:?} failed"))
                            .with_source(err),
                    ),
                }
            }
        }
    }

    /// Awaits the acks of a batch in publish order. Runs in its own task so that acks
    /// (and the `max_pending` permits they hold) are released while the batch is still
    /// being published.
    async fn drive_acks(
        self: Arc<Self>,
        js: jetstream::Context,
        batch: Arc<[Envelope]>,
        mut acks: mpsc::UnboundedReceiver<InFlight>,
    ) -> Result<Vec<Rejection>> {
        let mut rejected = Vec::new();
        let mut last_acked = None;
        while let Some(InFlight {
            index,
            subject,
            ack,
            vouches,
        }) = acks.recv().await
        {
            match ack.await {
                Ok(ack) => {
                    trace!(
                        stream = %ack.stream,
                        sequence = ack.sequence,
                        duplicate = ack.duplicate,
                        "publish acked"
                    );
                    last_acked = Some(index);
                }
                Err(err) => match (&self.chain, err.kind()) {
                    (Some(chain), PublishErrorKind::WrongLastMessageId) => {
                        let description = std::error::Error::source(&err)
                            .map(|s| s.to_string())
                            .unwrap_or_default();
                        return Err(match chain.refusal(&subject, &description) {
                            Refusal::Transient(e) | Refusal::Fatal(e) => e,
                        });
                    }
                    _ => {
                        let rejection = self.publish_error(&js, index, &subject, err).await?;
                        if vouches {
                            // The stream refused this event for itself, which says nothing
                            // of the unacknowledged publishes before it.
                            return Err(Error::transient(format!(
                                "the stream refused the event at index {index} of the batch, \
                                 whose ack was to confirm the publishes before it; the batch \
                                 is resent, each publish acknowledged"
                            ))
                            .with_source(rejection.error));
                        }
                        if let Some(chain) = &self.chain {
                            chain.refused(&batch[index].id);
                        }
                        rejected.push(rejection);
                    }
                },
            }
        }
        if let (Some(chain), Some(index)) = (&self.chain, last_acked) {
            chain.acknowledged(&batch[index].id);
        }
        Ok(rejected)
    }

    async fn send_jetstream(
        self: &Arc<Self>,
        js: &jetstream::Context,
        batch: Arc<[Envelope]>,
    ) -> Result<Pending> {
        self.ensure_connected()?;
        let max_payload = self.max_payload();
        let (tx, rx) = mpsc::unbounded_channel();
        let driver: JoinHandle<Result<Vec<Rejection>>> =
            tokio::spawn(Arc::clone(self).drive_acks(js.clone(), Arc::clone(&batch), rx));
        let mut rejected = Vec::new();
        let mut encoder = BatchEncoder::new(&self.subject, self.format, max_payload);
        // The id the next publish must follow, when publishes are chained; and whether
        // every publish is acknowledged, or only the batch's last (see `crate::chain`).
        let (mut before, ack_each) = match (&self.chain, batch.first()) {
            (Some(chain), Some(first)) => {
                let start = chain.begin(&first.id);
                (start.before, start.resend)
            }
            _ => (None, true),
        };
        // The last publish sent without a reply subject and not vouched for yet by an
        // acknowledged one after it, with the id it followed.
        let mut unvouched: Option<(usize, Option<String>)> = None;
        // Whether any publish of the batch went without a reply subject.
        let mut sent_unacked = false;
        let mut acks_failed = false;
        for (index, event) in batch.iter().enumerate() {
            let Outgoing {
                subject,
                headers,
                body,
            } = match encoder.encode(event, before.as_deref()) {
                Ok(message) => message,
                Err(error) => {
                    debug!(pipeline = %self.pipeline, index, error = %error, "event rejected");
                    rejected.push(Rejection { index, error });
                    continue;
                }
            };
            if let Some(chain) = &self.chain {
                chain.publishing(&event.id);
            }
            let acked = ack_each || index + 1 == batch.len();
            let ack = if acked {
                match self
                    .queue_acked(js, index, subject.clone(), headers, body)
                    .await
                {
                    Ok(Queued::Ack(ack)) => Some(ack),
                    Ok(Queued::Rejected(rejection)) => {
                        rejected.push(rejection);
                        continue;
                    }
                    Err(error) => {
                        driver.abort();
                        return Err(error);
                    }
                }
            } else {
                match self.queue_unacked(index, &subject, headers, body).await {
                    Ok(None) => {
                        sent_unacked = true;
                        None
                    }
                    Ok(Some(rejection)) => {
                        rejected.push(rejection);
                        continue;
                    }
                    Err(error) => {
                        driver.abort();
                        return Err(error);
                    }
                }
            };
            if let Some(chain) = &self.chain {
                if chain.published(&event.id) {
                    unvouched = match ack {
                        Some(_) => None,
                        None => Some((index, before.clone())),
                    };
                    let before = before.get_or_insert_with(String::new);
                    before.clear();
                    before.push_str(&event.id);
                }
            }
            if let Some(ack) = ack {
                let in_flight = InFlight {
                    index,
                    subject,
                    ack,
                    vouches: sent_unacked,
                };
                acks_failed = self.hand_over(&tx, acks_failed, in_flight);
            }
        }
        // The batch's last event was not published (rejected before it left), so no
        // acknowledged publish vouches for the ones before it: publish the last of those
        // again, asking for an ack. JetStream answers it as a duplicate when it was stored.
        if let Some((index, followed)) = unvouched {
            let queued = match encoder.encode(&batch[index], followed.as_deref()) {
                Ok(Outgoing {
                    subject,
                    headers,
                    body,
                }) => self
                    .queue_acked(js, index, subject.clone(), headers, body)
                    .await
                    .map(|queued| (subject, queued)),
                Err(error) => Err(Error::transient(format!(
                    "nats sink: event {} could not be encoded again to confirm its batch",
                    batch[index].id
                ))
                .with_source(error)),
            };
            match queued {
                Ok((subject, Queued::Ack(ack))) => {
                    let in_flight = InFlight {
                        index,
                        subject,
                        ack,
                        vouches: true,
                    };
                    self.hand_over(&tx, acks_failed, in_flight);
                }
                Ok((_, Queued::Rejected(rejection))) => {
                    driver.abort();
                    return Err(Error::transient(format!(
                        "nats sink: event {} was published, but could not be published \
                         again to confirm its batch; the batch is resent",
                        batch[index].id
                    ))
                    .with_source(rejection.error));
                }
                Err(error) => {
                    driver.abort();
                    return Err(error);
                }
            }
        }
        drop(tx);
        Ok(Box::pin(async move {
            let mut from_acks = driver.await.map_err(|e| {
                Error::fatal("nats sink: the task awaiting publish acks failed").with_source(e)
            })??;
            rejected.append(&mut from_acks);
            rejected.sort_by_key(|r| r.index);
            Ok(BatchOutcome { rejected })
        }))
    }

    /// Queues a JetStream publish that asks for an ack: the ack's future, or the event's
    /// rejection when the publish cannot be sent at all.
    async fn queue_acked(
        &self,
        js: &jetstream::Context,
        index: usize,
        subject: async_nats::Subject,
        headers: async_nats::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<Queued> {
        let published = within(
            self.ack_timeout,
            js.publish_with_headers(subject.clone(), headers, body),
        )
        .await;
        match published {
            Ok(Ok(ack)) => Ok(Queued::Ack(ack)),
            Ok(Err(err)) => self
                .publish_error(js, index, &subject, err)
                .await
                .map(Queued::Rejected),
            Err(_) => Err(self.timed_out(&format!(
                "could not queue the publish to {:?} (connection down, or max_pending acks \
                 outstanding)",
                subject.as_str()
            ))),
        }
    }

    /// Queues a publish without a reply subject, vouched for by an acknowledged publish
    /// after it in the chain: the event's rejection when it cannot be sent at all.
    async fn queue_unacked(
        &self,
        index: usize,
        subject: &async_nats::Subject,
        headers: async_nats::HeaderMap,
        body: bytes::Bytes,
    ) -> Result<Option<Rejection>> {
        let published = within(
            self.ack_timeout,
            self.client
                .publish_with_headers(subject.clone(), headers, body),
        )
        .await;
        match published {
            Ok(Ok(())) => Ok(None),
            Ok(Err(err)) => match err.kind() {
                async_nats::client::PublishErrorKind::MaxPayloadExceeded
                | async_nats::client::PublishErrorKind::InvalidSubject => Ok(Some(Rejection {
                    index,
                    error: Error::per_event(format!(
                        "NATS refused the message to {:?}",
                        subject.as_str()
                    ))
                    .with_source(err),
                })),
                async_nats::client::PublishErrorKind::Send => Err(Error::transient(format!(
                    "the connection to NATS at {} is closed",
                    self.url
                ))
                .with_source(err)),
            },
            Err(_) => Err(self.timed_out(&format!(
                "could not queue the publish to {:?} (connection down)",
                subject.as_str()
            ))),
        }
    }

    /// Hands an ack to the batch's ack task; returns whether the task has failed (then
    /// the ack is dropped). Once the ack task failed, its error resolves the batch and
    /// later acks are not awaited, but the rest of the batch is still published: the
    /// chain must pass through every event of the batch, or the next batch would name a
    /// predecessor from the middle of this one, and every resend of it would be refused
    /// again.
    fn hand_over(
        &self,
        tx: &mpsc::UnboundedSender<InFlight>,
        failed: bool,
        in_flight: InFlight,
    ) -> bool {
        if failed {
            return true;
        }
        let index = in_flight.index;
        if tx.send(in_flight).is_err() {
            debug!(
                pipeline = %self.pipeline,
                index,
                "the batch already failed; publishing its rest without awaiting acks"
            );
            return true;
        }
        false
    }

    async fn send_core(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        self.ensure_connected()?;
        let max_payload = self.max_payload();
        let mut rejected = Vec::new();
        let mut encoder = BatchEncoder::new(&self.subject, self.format, max_payload);
        for (index, event) in batch.iter().enumerate() {
            // Nats-Msg-Id means nothing to core NATS, but it is kept so that subscribers
            // can deduplicate by it.
            let Outgoing {
                subject,
                headers,
                body,
            } = match encoder.encode(event, None) {
                Ok(message) => message,
                Err(error) => {
                    rejected.push(Rejection { index, error });
                    continue;
                }
            };
            let published = within(
                self.ack_timeout,
                self.client
                    .publish_with_headers(subject.clone(), headers, body),
            )
            .await;
            let subject: &str = &subject;
            match published {
                Ok(Ok(())) => {}
                Ok(Err(err)) => match err.kind() {
                    async_nats::client::PublishErrorKind::MaxPayloadExceeded
                    | async_nats::client::PublishErrorKind::InvalidSubject => {
                        rejected.push(Rejection {
                            index,
                            error: Error::per_event(format!(
                                "NATS refused the message to {subject:?}"
                            ))
                            .with_source(err),
                        });
                    }
                    async_nats::client::PublishErrorKind::Send => {
                        return Err(Error::transient(format!(
                            "the connection to NATS at {} is closed",
                            self.url
                        ))
                        .with_source(err))
                    }
                },
                Err(_) => {
                    return Err(
                        self.timed_out(&format!("could not queue the publish to {subject:?}"))
                    )
                }
            }
        }
        let client = self.client.clone();
        let ack_timeout = self.ack_timeout;
        let url = self.url.clone();
        Ok(Box::pin(async move {
            match tokio::time::timeout(ack_timeout, client.flush()).await {
                Ok(Ok(())) => Ok(BatchOutcome { rejected }),
                Ok(Err(err)) => Err(
                    Error::transient(format!("flushing to NATS at {url} failed")).with_source(err),
                ),
                Err(_) => Err(Error::transient(format!(
                    "flushing to NATS at {url} did not finish within ack_timeout \
                     ({ack_timeout:?})"
                ))),
            }
        }))
    }

    /// The subject of a dead-letter destination: rendered for the event when it is a
    /// template.
    fn dead_letter_subject(&self, destination: &str, event: &Envelope) -> Result<String> {
        let subject = if destination.contains('{') {
            Template::parse(destination)
                .map_err(|e| {
                    Error::fatal(format!(
                        "dead-letter destination {destination:?} is not a valid template"
                    ))
                    .with_source(e)
                })?
                .render(event)
        } else {
            destination.to_string()
        };
        if let Some(why) = invalid_subject(&subject) {
            return Err(Error::fatal(format!(
                "dead-letter subject {subject:?} {why}; fix the pipeline's dead-letter \
                 destination"
            )));
        }
        Ok(subject)
    }

    async fn ensure_dead_letter_stream(
        &self,
        js: &jetstream::Context,
        subject: &str,
    ) -> Result<()> {
        let known = self
            .dead_letter_covered
            .lock()
            .map(|set| set.contains(subject))
            .unwrap_or(false);
        if known {
            return Ok(());
        }
        if let Some(stream) = &self.stream {
            let dlq_stream = format!("{stream}_DLQ");
            stream::cover_subject(js, &dlq_stream, subject, self.duplicate_window).await?;
        }
        if let Some(chain) = &self.chain {
            if stream::stream_for_subject(js, subject).await?.as_deref() == Some(chain.stream()) {
                return Err(Error::fatal(format!(
                    "dead-letter subject {subject:?} is captured by stream {:?}, which \
                     exclusive_stream reserves for the pipeline's events in order; choose a \
                     dead-letter subject outside it (the default is outflow.dlq.<pipeline>)",
                    chain.stream()
                )));
            }
        }
        if let Ok(mut set) = self.dead_letter_covered.lock() {
            set.insert(subject.to_string());
        }
        Ok(())
    }
}

#[async_trait]
impl EventSink for NatsSink {
    /// Publishes every event of the batch, in order, on the one connection, and returns
    /// a future of their acks.
    ///
    /// Events that can never be delivered (too large for the server's `max_payload`, a
    /// subject or header NATS cannot carry, refused by the stream as too large) are
    /// listed in the outcome. A publish that cannot be queued within `ack_timeout` fails
    /// the batch with a transient error.
    async fn send(&self, batch: Arc<[Envelope]>) -> Result<Pending> {
        match &self.inner.js {
            Some(js) => self.inner.send_jetstream(js, batch).await,
            None => self.inner.send_core(batch).await,
        }
    }

    /// Publishes the envelope as JSON to `destination` (a subject, or a template
    /// rendered for the event) with `Nats-Msg-Id` = `<id>:dlq` and the reason in the
    /// `outflow-error` header, and waits for the JetStream ack (in core NATS mode, for
    /// the flush). With `stream` configured, a dead-letter subject no stream captures is
    /// added to the stream `<stream>_DLQ`, created when missing.
    async fn dead_letter(&self, destination: &str, event: &Envelope, reason: &str) -> Result<()> {
        let inner = &self.inner;
        inner.ensure_connected()?;
        let subject = inner.dead_letter_subject(destination, event)?;
        let Message {
            subject,
            headers,
            body,
        } = encode::dead_letter_message(subject, event, reason, inner.max_payload())?;
        match &inner.js {
            Some(js) => {
                inner.ensure_dead_letter_stream(js, &subject).await?;
                let published = tokio::time::timeout(
                    inner.ack_timeout,
                    js.publish_with_headers(subject.clone(), headers, body),
                )
                .await
                .map_err(|_| {
                    inner.timed_out(&format!("could not queue the dead letter to {subject:?}"))
                })?;
                let result = match published {
                    Ok(ack) => ack.await.map(|_| ()),
                    Err(err) => Err(err),
                };
                if let Err(err) = result {
                    let rejection = inner.publish_error(js, 0, &subject, err).await?;
                    return Err(rejection.error);
                }
            }
            None => {
                tokio::time::timeout(
                    inner.ack_timeout,
                    inner
                        .client
                        .publish_with_headers(subject.clone(), headers, body),
                )
                .await
                .map_err(|_| {
                    inner.timed_out(&format!("could not queue the dead letter to {subject:?}"))
                })?
                .map_err(|e| {
                    Error::transient(format!("publishing the dead letter to {subject:?} failed"))
                        .with_source(e)
                })?;
                tokio::time::timeout(inner.ack_timeout, inner.client.flush())
                    .await
                    .map_err(|_| inner.timed_out("flushing the dead letter did not finish"))?
                    .map_err(|e| {
                        Error::transient("flushing the dead letter failed").with_source(e)
                    })?;
            }
        }
        info!(
            pipeline = %inner.pipeline,
            subject = %subject,
            id = %event.id,
            "event dead-lettered"
        );
        Ok(())
    }

    /// Flushes what is queued on the connection and closes it. Acks of batches already
    /// sent are awaited by their [`Pending`] futures, not here.
    async fn close(&self) -> Result<()> {
        let inner = &self.inner;
        match tokio::time::timeout(inner.ack_timeout, inner.client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Err(Error::transient("flushing before close failed").with_source(err))
            }
            Err(_) => return Err(inner.timed_out("flushing before close did not finish")),
        }
        inner
            .client
            .drain()
            .await
            .map_err(|e| Error::transient("closing the NATS connection failed").with_source(e))?;
        info!(pipeline = %inner.pipeline, "nats sink closed");
        Ok(())
    }
}

/// Connects and checks what the sink needs, without publishing: the server answers,
/// JetStream is enabled (in JetStream mode), and a stream captures the subjects, or
/// `stream` names one that exists or would be created. Returns one line per finding.
pub async fn check(config: &NatsConfig) -> Result<Vec<String>> {
    let client = connect_client(config, "check", Violations::default()).await?;
    let url = config.redacted_url();
    let info = client.server_info();
    let mut report = vec![format!(
        "connected to NATS at {url} (server {} version {}, max_payload {} bytes)",
        info.server_name, info.version, info.max_payload
    )];
    if !config.jetstream {
        report.push(
            "core NATS mode (jetstream = false): delivery is at most once, no stream is used"
                .to_string(),
        );
        return Ok(report);
    }
    let js = jetstream_context(&client, config);
    let subjects = capture_subjects(config)?;
    match &config.stream {
        Some(name) => match stream::stream_info(&js, name).await? {
            Some(info) => {
                report.push(format!(
                    "stream {name:?} exists with subjects {:?} and duplicate window {:?}",
                    info.config.subjects, info.config.duplicate_window
                ));
                for subject in &subjects {
                    match stream::stream_for_subject(&js, subject).await? {
                        Some(owner) => report.push(format!(
                            "subjects {subject:?} are captured by stream {owner:?}"
                        )),
                        None => return Err(stream::missing_stream_error(subject, subject)),
                    }
                }
            }
            None => {
                for subject in &subjects {
                    if let Some(owner) = stream::stream_for_subject(&js, subject).await? {
                        return Err(Error::fatal(format!(
                            "stream {name:?} would be created with subjects {subjects:?}, but \
                             stream {owner:?} already captures {subject:?}; remove `stream` \
                             to publish into {owner:?}, or change `subject`"
                        )));
                    }
                }
                report.push(format!(
                    "stream {name:?} does not exist; it will be created with subjects \
                     {subjects:?} and duplicate window {:?}",
                    config.duplicate_window
                ));
            }
        },
        None => {
            for subject in &subjects {
                match stream::stream_for_subject(&js, subject).await? {
                    Some(owner) => report.push(format!(
                        "subjects {subject:?} are captured by stream {owner:?}"
                    )),
                    None => {
                        return Err(stream::missing_stream_error(
                            config.subject.as_str(),
                            subject,
                        ))
                    }
                }
            }
        }
    }
    if let Err(err) = client.drain().await {
        debug!(error = %err, "closing the check connection failed");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_to_its_cap() {
        assert_eq!(reconnect_delay(0), FIRST_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(1), FIRST_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(2), FIRST_RECONNECT_DELAY * 2);
        assert_eq!(reconnect_delay(100), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(usize::MAX), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn derived_or_configured_capture_subjects() {
        let mut c = NatsConfig::new("nats://x:4222");
        assert_eq!(capture_subjects(&c).unwrap(), ["outbox.event.*"]);
        c.stream_subjects = Some(vec!["outbox.>".into()]);
        assert_eq!(capture_subjects(&c).unwrap(), ["outbox.>"]);
    }
}
