//! # switchyard-testkit — real servers and loopback doubles for switchyard's tests
//!
//! Health checks and discovery are only worth something against the servers they will meet, so
//! the tests start a real MariaDB ([`MariaDb`]) and a real etcd ([`Etcd`]) from the binaries
//! Debian ships (`mariadb-server`, `etcd-server`), each in its own temporary directory on free
//! loopback ports. Tests whose backends must share data, as production pools do, get a real
//! 3-node MariaDB Galera cluster ([`Galera`]); the differential tester talks to it with a small
//! raw MySQL client ([`mysql_client`]) that can send every command a driver can. Bad behaviour that no real server shows on demand (a truncated greeting, a port
//! that never speaks) comes from the small tokio servers in [`doubles`]. What a server does only
//! for a non-loopback peer (MariaDB's host cache, `max_connect_errors`) is seen through a
//! network namespace and veth pair the test makes and removes ([`NetNs`], with
//! [`MariaDbOptions::netns`]).
//!
//! When a binary is missing the helpers print why and return `None`, and the test skips —
//! unless `SWITCHYARD_REQUIRE_SERVERS=1` (set by CI), where a missing server fails the test.
//! A server that is installed but fails to start always fails the test, with the tail of its log.

mod collector;
pub mod doubles;
mod etcd;
mod galera;
mod mariadb;
pub mod mysql_client;
mod netns;
mod proc;

pub use collector::Collector;
pub use etcd::Etcd;
pub use galera::Galera;
pub use mariadb::{MariaDb, MariaDbOptions};
pub use netns::NetNs;
pub use proc::{free_port, require_servers, skip_or_fail, TempDir};
