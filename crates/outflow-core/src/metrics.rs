//! Metric names, in one place.
//!
//! Components record through the [`metrics`](https://docs.rs/metrics) facade with these
//! names; the binary installs a Prometheus recorder. Labels take bounded values only:
//! pipeline and connector names, error kinds, never a key or a position.

/// Events read from the source. Labels: `pipeline`.
pub const EVENTS_RECEIVED_TOTAL: &str = "outflow_events_received_total";
/// Events durably acknowledged by the sink. Labels: `pipeline`.
pub const EVENTS_DELIVERED_TOTAL: &str = "outflow_events_delivered_total";
/// Events sent to the dead-letter destination. Labels: `pipeline`.
pub const EVENTS_DEAD_LETTERED_TOTAL: &str = "outflow_events_dead_lettered_total";
/// Events skipped by `on_error = "skip"`. Labels: `pipeline`.
pub const EVENTS_SKIPPED_TOTAL: &str = "outflow_events_skipped_total";
/// Errors by kind. Labels: `pipeline`, `kind` (`transient`, `per_event`, `fatal`).
pub const ERRORS_TOTAL: &str = "outflow_errors_total";
/// Events sent to the sink and not yet acknowledged. Labels: `pipeline`.
pub const IN_FLIGHT_EVENTS: &str = "outflow_in_flight_events";
/// Time from a batch's send to its acknowledgement. Labels: `pipeline`.
pub const BATCH_DURATION_SECONDS: &str = "outflow_batch_duration_seconds";
/// Time from a change's commit in the source to its acknowledgement by the sink.
/// Labels: `pipeline`.
pub const END_TO_END_LAG_SECONDS: &str = "outflow_end_to_end_lag_seconds";
/// Positions committed. Labels: `pipeline`.
pub const CHECKPOINTS_COMMITTED_TOTAL: &str = "outflow_checkpoints_committed_total";
/// Bytes of WAL between the server's current position and the slot's confirmed
/// position. Labels: `pipeline`.
pub const POSTGRES_SLOT_LAG_BYTES: &str = "outflow_postgres_slot_lag_bytes";
/// Source reconnects after a lost connection. Labels: `pipeline`, `connector`.
pub const SOURCE_RECONNECTS_TOTAL: &str = "outflow_source_reconnects_total";
