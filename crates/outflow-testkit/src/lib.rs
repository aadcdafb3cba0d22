//! Test helpers for outflow's crates. Use it as a dev-dependency only.
//!
//! Tests talk to real services that `scripts/services.sh start` runs on this machine without
//! Docker: a Postgres 15 cluster with `wal_level=logical`, a NATS server with JetStream,
//! moto's server for DynamoDB Streams and tansu, a Kafka-protocol broker. The script writes
//! their addresses to `services.env`; [`services()`] reads that file. A missing file, a
//! missing entry or a service that does not answer makes the test panic with
//! "test services are not running: run `scripts/services.sh start` (...)": tests never skip.
//!
//! What the kit offers:
//!
//! - [`services()`] and the checked shortcuts [`pg_url()`], [`nats_url()`],
//!   [`dynamodb_endpoint()`] and [`kafka_brokers()`];
//! - [`fresh_database()`]: a new database on the shared cluster per test, dropped with its
//!   replication slots when the [`TestDb`] is dropped;
//! - [`PrivatePostgres`] and [`PrivateNats`]: throwaway servers of a test's own, which a fault
//!   test may stop, crash and start again on the same port with the same data;
//! - [`PrivateTansu`]: a Kafka-protocol broker of a test's own, which a fault test may
//!   freeze and thaw;
//! - [`unique_name()`] for slots, publications, databases, streams and topics;
//! - [`free_port()`], [`wait_for_tcp()`] and [`ChildGuard`] for tests that run binaries;
//! - [`CutProxy`]: a TCP proxy whose connections a test cuts mid-stream, losing what was in
//!   flight, as a broken network does.
//!
//! ```no_run
//! # async fn example() {
//! let db = outflow_testkit::fresh_database("orders").await;
//! let client = db.connect().await;
//! client.batch_execute("CREATE TABLE t (id bigint primary key)").await.unwrap();
//! let slot = outflow_testkit::unique_name("slot");
//! # let _ = slot;
//! # }
//! ```

mod names;
mod nats;
mod net;
mod postgres;
mod process;
mod proxy;
mod services;
mod tansu;

pub use names::{unique_name, MAX_NAME_LEN};
pub use nats::{subscribe_ready, PrivateNats};
pub use net::{free_port, wait_for_tcp, wait_for_tcp_blocking};
pub use postgres::{connect, fresh_database, PrivatePostgres, TestDb};
pub use process::ChildGuard;
pub use proxy::CutProxy;
pub use services::{
    dynamodb_endpoint, kafka_brokers, nats_url, pg_url, services, services_env_path, Service,
    Services, ServicesError,
};
pub use tansu::PrivateTansu;
