use std::fmt;

/// What the pipeline should do about an error.
///
/// The kind alone decides the policy: a component says what happened, the pipeline
/// decides whether to retry, route the event, or stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The operation may succeed if repeated: a broker that is down, a lost connection,
    /// a timeout, a 5xx answer. Retried with exponential backoff and jitter, forever.
    Transient,
    /// This one event can never be delivered: too large, rejected by the receiver.
    /// Handled by the pipeline's `on_error` policy (fail, dead_letter or skip).
    PerEvent,
    /// Nothing will succeed until an operator acts: bad configuration, failed
    /// authentication, a missing prerequisite. The pipeline stops.
    Fatal,
}

impl ErrorKind {
    /// A short lowercase name, used as a metric label and in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Transient => "transient",
            ErrorKind::PerEvent => "per_event",
            ErrorKind::Fatal => "fatal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with a kind, a message that says what happened (and, for fatal errors, what
/// to fix), and the underlying cause.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// A result whose error is an outflow [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// A transient error: the operation is retried.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Transient, message)
    }

    /// A per-event error: the event goes to the `on_error` policy.
    pub fn per_event(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PerEvent, message)
    }

    /// A fatal error: the pipeline stops. The message must say what to fix.
    pub fn fatal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fatal, message)
    }

    /// Attaches the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message of this layer, without its causes.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The message followed by every cause, joined by `: `.
    pub fn chain(&self) -> String {
        let mut out = self.message.clone();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let text = c.to_string();
            if !out.ends_with(&text) {
                out.push_str(": ");
                out.push_str(&text);
            }
            cause = c.source();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_joins_causes_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let err = Error::transient("cannot reach nats://127.0.0.1:4222").with_source(io);
        assert_eq!(err.kind(), ErrorKind::Transient);
        assert_eq!(err.to_string(), "cannot reach nats://127.0.0.1:4222");
        assert_eq!(
            err.chain(),
            "cannot reach nats://127.0.0.1:4222: connection refused"
        );
        assert_eq!(ErrorKind::PerEvent.as_str(), "per_event");
    }
}
