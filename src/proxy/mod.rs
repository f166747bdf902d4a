//! The proxy: a listener that accepts clients and one connection actor per client.
//!
//! [`listener::ProxyListener`] accepts, tunes the socket and hands each client to a worker
//! arbiter, where [`start_conn`] starts the connection actor for the configured protocol. That
//! `match` is the seam for protocols: `tcp` is [`tcp_conn::TcpConn`]; `mysql` is
//! [`crate::mysql::MysqlConn`], which moves sessions at safe points and is kept in
//! [`sessions::MysqlSessions`] while it lives, so shutdown can close it at its next safe point.

pub mod copy;
pub mod listener;
pub mod sessions;
pub mod tcp_conn;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchyard::ScoreRouter;

use crate::config::Protocol;
use crate::metrics::ProxyMetrics;

/// What every connection actor of one proxy shares: where to route and what to count.
#[derive(Clone)]
pub struct ProxyShared {
    /// The router connections register with.
    pub router: Addr<ScoreRouter>,
    /// Metric handles.
    pub metrics: ProxyMetrics,
    /// Open client connections.
    pub live: LiveConns,
    /// Timeout of one backend connect.
    pub connect_timeout: Duration,
    /// `protocol: mysql` settings (users for moves, timeouts).
    pub mysql: Arc<crate::mysql::MysqlConfig>,
    /// The live `protocol: mysql` sessions (empty in `tcp` mode).
    pub sessions: Addr<sessions::MysqlSessions>,
}

/// A new client, accepted and tuned, on its way to a worker arbiter.
pub struct NewConn {
    /// Unique among this process's connections.
    pub id: u64,
    /// The client socket (non-blocking), re-registered on the worker's runtime.
    pub client: std::net::TcpStream,
    /// The client's address, for logs.
    pub peer: SocketAddr,
    /// Routing and accounting.
    pub shared: ProxyShared,
    /// Counts this client as open from the moment it was accepted, so a shutdown that starts
    /// while it is on its way to a worker still waits for it.
    pub live: LiveGuard,
}

/// Starts the connection actor for `protocol` on the current arbiter.
///
/// Must run on the arbiter that will own the connection (the listener calls it through
/// `Arbiter::spawn_fn`), because the client socket is registered with that arbiter's reactor.
pub fn start_conn(protocol: Protocol, conn: NewConn) {
    match protocol {
        Protocol::Tcp => tcp_conn::TcpConn::start_new(conn, tcp_conn::Moves::Refuse),
        Protocol::Mysql => {
            let (id, sessions) = (conn.id, conn.shared.sessions.clone());
            let gone = sessions.clone();
            let started = crate::mysql::start_proxied(conn, move || {
                gone.do_send(sessions::Unregister { id })
            });
            // sent before the actor can stop, from the same thread, so Unregister follows it
            if let Some(addr) = started {
                sessions.do_send(sessions::Register {
                    id,
                    close: addr.recipient(),
                });
            }
        }
    }
}

/// Count of open client connections, shared by the listener, the connections and shutdown.
///
/// An atomic, not actor state: connections live on several arbiters and shutdown polls it.
#[derive(Debug, Clone, Default)]
pub struct LiveConns(Arc<AtomicUsize>);

impl LiveConns {
    /// Open connections now.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::Acquire)
    }

    /// Counts one connection until the guard drops.
    pub fn enter(&self) -> LiveGuard {
        self.0.fetch_add(1, Ordering::AcqRel);
        LiveGuard(self.0.clone())
    }
}

/// One open connection in [`LiveConns`].
#[derive(Debug)]
pub struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
