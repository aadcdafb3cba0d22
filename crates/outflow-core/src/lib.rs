//! The stable surface of outflow.
//!
//! Connectors and sinks build against this crate alone. It holds:
//!
//! - [`Envelope`]: the one JSON shape every change takes, whatever its source, with its
//!   data as [`RawJson`] text;
//! - [`ChangeSource`] and [`EventSink`]: the two traits a pipeline is made of, with the
//!   delivery and ordering contract each side must keep;
//! - [`Checkpoint`]: source positions, opaque to everything but their source;
//! - [`Error`] and [`ErrorKind`]: every failure is transient, per-event or fatal, and only
//!   the pipeline decides what to do with a kind;
//! - [`Template`]: destination templates such as `outbox.event.{aggregate_type}`;
//! - [`Format`]: the wire formats `envelope`, `payload` and `cloudevents`.
//!
//! The crate depends on no client SDK and starts no runtime: it uses only tokio's
//! synchronisation primitives, which run on any executor.

pub mod duration;
mod envelope;
mod error;
mod format;
mod json;
pub mod metrics;
mod position;
mod raw;
mod secret;
mod sink;
mod source;
mod template;

pub use envelope::{event_id_from_position, Envelope, Op, SourceInfo, Timestamp};
pub use error::{Error, ErrorKind, Result};
pub use format::{Encoded, Format, HeaderStyle};
pub use position::{Checkpoint, Checkpoints};
pub use raw::{json_string_content, push_json_str, RawJson};
pub use secret::Secret;
pub use sink::{BatchOutcome, EventSink, Pending, Rejection};
pub use source::{ChangeSource, SourceContext, SourceHandle, SourceItem};
pub use template::{Field, Template, TemplateError};
