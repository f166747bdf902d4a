//! `ConnStart`: the first steps every connection takes, whatever it speaks.
//!
//! It holds the adopted, tuned client socket until the connection takes it, and the connection's
//! place in the live count (and gauge) until it ends; [`ConnStart::connect`] routes, connects,
//! tunes the backend socket and registers, through the library's `Connector`, counting
//! `routes_total`, `route_failures_total` and `backend_connect_failures_total`. `TcpConn`,
//! `MysqlConn` and the demo's clients all start here, so these steps cannot drift apart.

use std::future::Future;
use std::net::SocketAddr;

use actix::prelude::*;
use switchyard::{
    BackendSuspect, ConnHandle, ConnectError, Connector, Redirect, Registration, ScoreRouter,
};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{socket, Entry, LiveGuard, NewConn};
use crate::metrics::ProxyMetrics;

/// One connection's start: its client socket, its live-count guard, and how to reach a backend.
pub struct ConnStart {
    id: u64,
    peer: Option<SocketAddr>,
    client: Option<TcpStream>,
    entry: Entry,
    _live: LiveGuard,
}

/// A backend connection, registered with the router.
pub struct Routed {
    /// The backend socket, tuned.
    pub backend: TcpStream,
    /// The registration: reports moves, and `ConnClosed` when dropped.
    pub registration: Registration,
}

impl ConnStart {
    /// Adopts a client the listener accepted. Must run on the arbiter that will own the
    /// connection: the socket is registered with that arbiter's reactor here. `None` (logged)
    /// when the socket cannot be adopted; the client is then closed.
    pub fn adopt(conn: NewConn) -> Option<Self> {
        let client = match TcpStream::from_std(conn.client) {
            Ok(c) => c,
            Err(e) => {
                warn!(conn_id = conn.id, peer = %conn.peer, error = %e, "cannot adopt client socket");
                return None;
            }
        };
        socket::tune(&client);
        Some(Self {
            id: conn.id,
            peer: Some(conn.peer),
            client: Some(client),
            entry: conn.entry,
            _live: conn.live,
        })
    }

    /// A client accepted by the caller on the current runtime (tests, embedding applications).
    /// `id` must be unique among the router's connections.
    pub fn from_stream(id: u64, client: TcpStream, entry: &Entry) -> Self {
        socket::tune(&client);
        Self {
            id,
            peer: client.peer_addr().ok(),
            client: Some(client),
            entry: entry.clone(),
            _live: entry.live.enter(),
        }
    }

    /// A connection with no client socket of its own (the demo's simulated clients).
    pub fn without_client(id: u64, entry: &Entry) -> Self {
        Self {
            id,
            peer: None,
            client: None,
            entry: entry.clone(),
            _live: entry.live.enter(),
        }
    }

    /// The connection's id, unique among the router's connections.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address, for logs (`None` without a client socket).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// How long a half-closed connection may stay silent (`proxy.half_close_timeout`).
    pub fn half_close_timeout(&self) -> std::time::Duration {
        self.entry.half_close_timeout
    }

    /// How long this client may take, from accept, to finish logging in (`proxy.login_timeout`).
    pub fn login_timeout(&self) -> std::time::Duration {
        self.entry.login_timeout
    }

    /// The metric handles of this proxy.
    pub fn metrics(&self) -> &ProxyMetrics {
        &self.entry.metrics
    }

    /// The client socket, once: the connection's data path owns it from here.
    pub fn take_client(&mut self) -> Option<TcpStream> {
        self.client.take()
    }

    /// For an actor that starts routed: connects as [`ConnStart::connect`] (registering the
    /// actor's address for `Redirect`s) while the actor handles no message, then runs
    /// `on_routed`; when no backend is reachable, logs why and stops the actor.
    pub fn connect_then<A>(
        &self,
        ctx: &mut Context<A>,
        on_routed: impl FnOnce(&mut A, Routed, &mut Context<A>) + 'static,
    ) where
        A: Actor<Context = Context<A>> + Handler<Redirect>,
    {
        let (id, peer) = (self.id, self.peer);
        let routed = self.connect(ctx.address().recipient());
        ctx.wait(
            actix::fut::wrap_future::<_, A>(routed).map(move |r, act, ctx| match r {
                Ok(routed) => {
                    debug!(conn_id = id, peer = ?peer, backend = %routed.registration.backend(), "routed");
                    on_routed(act, routed, ctx);
                }
                Err(e) => {
                    info!(conn_id = id, peer = ?peer, error = %e, "no backend for client; closing it");
                    ctx.stop();
                }
            }),
        );
    }

    /// Routes and connects to a backend (each at most once, `proxy.connect_timeout` each),
    /// registering this connection with `redirect` as where the router sends `Redirect`s.
    ///
    /// The future owns what it needs, so an actor can run it with `ctx.wait`.
    pub fn connect(
        &self,
        redirect: Recipient<Redirect>,
    ) -> impl Future<Output = Result<Routed, ConnectError>> + 'static {
        self.rerouter(redirect).connect()
    }

    /// What this connection needs to route and connect again later, on its own (a session
    /// re-attaching after its backend was lost), and to report a backend suspect.
    pub fn rerouter(&self, redirect: Recipient<Redirect>) -> Rerouter {
        Rerouter {
            id: self.id,
            router: self.entry.router.clone(),
            timeout: self.entry.connect_timeout,
            metrics: self.entry.metrics.clone(),
            redirect,
        }
    }
}

/// Routes and connects one connection, as often as it needs to: the first time, and again when
/// its backend is lost. Every backend that refused or timed out is reported suspect.
#[derive(Clone)]
pub struct Rerouter {
    id: u64,
    router: Addr<ScoreRouter>,
    timeout: std::time::Duration,
    metrics: ProxyMetrics,
    redirect: Recipient<Redirect>,
}

impl Rerouter {
    /// Tells the router that `addr` failed under this connection (passive outlier detection):
    /// it routes no new connection there until its health check settles it.
    pub fn suspect(&self, addr: &str, reason: impl Into<String>) {
        let reason = reason.into();
        debug!(conn_id = self.id, backend = %addr, reason = %reason, "reporting backend suspect");
        self.router.do_send(BackendSuspect {
            addr: addr.to_string(),
            reason,
        });
    }

    /// Routes and connects to a backend (each at most once, `proxy.connect_timeout` each),
    /// registering this connection there. The future owns what it needs.
    pub fn connect(&self) -> impl Future<Output = Result<Routed, ConnectError>> + 'static {
        let this = self.clone();
        let handle = ConnHandle::new(self.id, self.redirect.clone());
        async move {
            let (router, timeout, metrics) = (&this.router, this.timeout, &this.metrics);
            let connected = Connector::new(router, timeout)
                .connect(handle, |inst| async move {
                    TcpStream::connect(inst.addr()).await
                })
                .await;
            let failures = match &connected {
                Ok(c) => &c.failures[..],
                Err(e) => e.tried(),
            };
            for f in failures {
                crate::metrics::connect_failed(&f.backend);
                this.suspect(&f.backend, f.error.to_string());
            }
            match connected {
                Ok(c) => {
                    socket::tune(&c.conn);
                    metrics.routes.increment(1);
                    Ok(Routed {
                        backend: c.conn,
                        registration: c.registration,
                    })
                }
                Err(e) => {
                    metrics.route_failures.increment(1);
                    Err(e)
                }
            }
        }
    }
}
