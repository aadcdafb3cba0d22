//! The Postgres source of outflow: logical replication with `pgoutput`.

pub mod decoder;
pub mod lsn;
pub mod values;
