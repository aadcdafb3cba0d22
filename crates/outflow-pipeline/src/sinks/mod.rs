//! Built-in sinks: `stdout`, `file` and `blackhole`.

mod blackhole;
mod file;
mod stdout;

pub use blackhole::{BlackholeConfig, BlackholeSink};
pub use file::{FileSink, FileSinkConfig};
pub use stdout::{StdoutConfig, StdoutSink};

use outflow_core::{Envelope, Format, HeaderStyle};

/// Appends one JSON line per event to `out`.
fn write_lines(out: &mut Vec<u8>, format: Format, events: &[Envelope]) {
    for event in events {
        if format == Format::Envelope {
            event.write_json(out);
        } else {
            out.extend_from_slice(&format.encode(event, HeaderStyle::Dash).body);
        }
        out.push(b'\n');
    }
}

/// Appends one dead-letter line: the destination, the reason and the whole envelope.
fn write_dead_letter(out: &mut Vec<u8>, destination: &str, event: &Envelope, reason: &str) {
    let line = serde_json::json!({
        "dead_letter": {"destination": destination, "reason": reason},
        "event": event,
    });
    serde_json::to_writer(&mut *out, &line).expect("a JSON value always serializes");
    out.push(b'\n');
}
