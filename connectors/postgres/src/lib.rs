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
//! Cargo features: `source` (on by default) builds the replication source, with its
//! connections, TLS and async runtime. Without it (`default-features = false`) the crate is
//! only the decoder ([`decoder`], [`lsn`]) and the value mapping ([`values`]), which is what
//! the fuzz target in `connectors/postgres/fuzz` builds.
//!
//! ```no_run
//! # #[cfg(feature = "source")] {
//! use outflow_postgres::{PostgresConfig, PostgresSource};
//!
//! let mut config = PostgresConfig::new("postgres://outflow@127.0.0.1/shop");
//! config.slot = "outflow_orders".into();
//! let source = PostgresSource::new(config, "orders")?;
//! # }
//! # Ok::<(), outflow_core::Error>(())
//! ```

#[cfg(feature = "source")]
mod config;
pub mod decoder;
#[cfg(feature = "source")]
mod events;
pub mod lsn;
#[cfg(feature = "source")]
mod setup;
#[cfg(feature = "source")]
mod source;
#[cfg(feature = "source")]
mod tls;
pub mod values;

#[cfg(feature = "source")]
pub use config::{
    redact_url, Mode, OutboxColumns, PostgresConfig, SslMode, DEFAULT_MESSAGE_PREFIX,
    DEFAULT_PUBLICATION, DEFAULT_READ_AHEAD, DEFAULT_RECONNECT_MAX, DEFAULT_RECONNECT_MIN,
    DEFAULT_SLOT, DEFAULT_SLOT_BUSY_TIMEOUT, DEFAULT_STATUS_INTERVAL, DEFAULT_TABLE,
};
pub use lsn::Lsn;
#[cfg(feature = "source")]
pub use source::{check, PostgresSource};
