//! The Postgres source of outflow: logical replication with `pgoutput`.
//!
//! [`PostgresSource`] implements [`outflow_core::ChangeSource`]: it creates (or reuses)
//! a logical replication slot and a publication, resumes from the slot's confirmed
//! position, decodes `pgoutput` with its own decoder ([`decoder`]), maps every column
//! value to JSON losslessly ([`values`]), and turns changes into envelopes in one of
//! three modes ([`Mode`]): outbox tables, plain table capture, or logical decoding
//! messages. Positions are confirmed to the server only at transaction boundaries and
//! only once the pipeline committed them. See `docs/connectors/postgres.md`.
//!
//! ```no_run
//! use outflow_postgres::{PostgresConfig, PostgresSource};
//!
//! let mut config = PostgresConfig::new("postgres://outflow@127.0.0.1/shop");
//! config.slot = "outflow_orders".into();
//! let source = PostgresSource::new(config, "orders")?;
//! # Ok::<(), outflow_core::Error>(())
//! ```

mod config;
pub mod decoder;
mod events;
pub mod lsn;
mod setup;
mod source;
mod tls;
pub mod values;

pub use config::{
    redact_url, Mode, OutboxColumns, PostgresConfig, SslMode, DEFAULT_MESSAGE_PREFIX,
    DEFAULT_PUBLICATION, DEFAULT_READ_AHEAD, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN,
    DEFAULT_SLOT, DEFAULT_SLOT_BUSY_TIMEOUT, DEFAULT_STATUS_INTERVAL, DEFAULT_TABLE,
};
pub use lsn::Lsn;
pub use source::{check, PostgresSource};
