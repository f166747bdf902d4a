//! The entry path every client connection takes, whatever its protocol: accepted → counted as
//! live (or refused over `proxy.max_connections`) → tuned → routed → connected → registered with
//! the router.
//!
//! It sits below both `proxy` (the listener and `tcp` connections) and `mysql`, so neither
//! imports the other: the listener hands each [`NewConn`] to a [`StartConn`] chosen by the
//! service, and every connection kind begins with a [`ConnStart`].

mod front;
mod live;
mod socket;
mod start;
pub(crate) mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchyard::ScoreRouter;

pub use front::{Door, DoorError, Passed, Via};
pub use live::{LiveConns, LiveGuard};
pub use socket::{connect_backend, tune, Counted};
pub use start::{ConnStart, Rerouter, Routed};
pub use stream::{Stream, StreamRead, StreamWrite, Tls};

use crate::metrics::ProxyMetrics;

/// [`Entry::login_timeout`] of [`Entry::new`], as `proxy.login_timeout`'s default.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// [`Entry::half_close_timeout`] of [`Entry::new`], as `proxy.half_close_timeout`'s default.
const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// What every connection of one proxy shares: where to route, what to count, how long to wait,
/// and how many may be open at once.
#[derive(Clone)]
pub struct Entry {
    /// The router connections register with.
    pub router: Addr<ScoreRouter>,
    /// Metric handles.
    pub metrics: ProxyMetrics,
    /// Open client connections.
    pub live: LiveConns,
    /// Bound on one backend connect (`proxy.connect_timeout`).
    pub connect_timeout: Duration,
    /// Bound from accept to a finished login (`proxy.login_timeout`), for protocols that log in.
    pub login_timeout: Duration,
    /// How long a half-closed `tcp` connection may stay silent (`proxy.half_close_timeout`).
    pub half_close_timeout: Duration,
    /// Most client connections open at once (`proxy.max_connections`); 0 = no cap.
    pub max_connections: usize,
    /// Bytes a client over `max_connections` is sent before it is closed: the protocol's
    /// "too many connections" (empty: closed without a word, as in `tcp` mode).
    pub refusal: Arc<[u8]>,
    /// TLS and PROXY protocol, towards clients and backends (plain and headerless by default).
    pub door: Door,
}

impl Entry {
    /// An entry routing through `router`, counting into the installed metrics recorder (a no-op
    /// when none is installed) and into a fresh live count driving `switchyard_connections_active`.
    /// The other limits take their config defaults (no connection cap); set the fields to change
    /// them.
    pub fn new(router: Addr<ScoreRouter>, connect_timeout: Duration) -> Self {
        let metrics = ProxyMetrics::new();
        Self {
            router,
            live: LiveConns::with_gauge(metrics.active.clone()),
            metrics,
            connect_timeout,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            half_close_timeout: DEFAULT_HALF_CLOSE_TIMEOUT,
            max_connections: 0,
            refusal: Arc::from(&[][..]),
            door: Door::default(),
        }
    }
}

/// A new client, accepted, on its way to a worker arbiter.
pub struct NewConn {
    /// Unique among this process's connections.
    pub id: u64,
    /// The client socket (non-blocking), re-registered on the worker's runtime.
    pub client: std::net::TcpStream,
    /// The client's address, for logs.
    pub peer: SocketAddr,
    /// Routing and accounting.
    pub entry: Entry,
    /// Counts this client as open from the moment it was accepted, so a shutdown that starts
    /// while it is on its way to a worker still waits for it.
    pub live: LiveGuard,
}

/// Starts the connection actor for one accepted client, on the arbiter it is called on (the one
/// that will own the connection). The service picks one per protocol.
pub type StartConn = Arc<dyn Fn(NewConn) + Send + Sync>;
