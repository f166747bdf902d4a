//! The proxy: a listener that accepts clients, and the `tcp` mode connection actor.
//!
//! [`listener::ProxyListener`] accepts and hands each client to a worker arbiter, where the
//! service's [`crate::entry::StartConn`] starts the connection actor for the configured
//! protocol: [`tcp_conn::TcpConn`] here, or `crate::mysql::MysqlConn`. The listener never names
//! a protocol, so this module and `mysql` do not import each other; both build on
//! [`crate::entry`].

pub mod copy;
pub mod listener;
pub mod tcp_conn;
