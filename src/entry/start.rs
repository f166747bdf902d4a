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
    BackendSuspect, CloseConnection, ConnHandle, ConnectError, Connector, Redirect, Registration,
    ScoreRouter,
};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::front::{DoorError, Passed, Via};
use super::{socket, Entry, LiveGuard, NewConn, Stream};
use crate::metrics::ProxyMetrics;

/// One connection's start: its client socket, its live-count guard, and how to reach a backend.
pub struct ConnStart {
    id: u64,
    peer: Option<SocketAddr>,
    /// The address the client reached (this proxy's, or a balancer's from its PROXY header).
    local: Option<SocketAddr>,
    client: Option<Stream>,
    entry: Entry,
    _live: LiveGuard,
}

/// A backend connection, registered with the router.
pub struct Routed {
    /// The backend socket, tuned (TLS when `backends.tls` starts at connect).
    pub backend: Stream,
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
            local: client.local_addr().ok(),
            client: Some(Stream::Plain(client)),
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
            local: client.local_addr().ok(),
            client: Some(Stream::Plain(client)),
            entry: entry.clone(),
            _live: entry.live.enter(),
        }
    }

    /// A connection with no client socket of its own (the demo's simulated clients).
    pub fn without_client(id: u64, entry: &Entry) -> Self {
        Self {
            id,
            peer: None,
            local: None,
            client: None,
            entry: entry.clone(),
            _live: entry.live.enter(),
        }
    }

    /// The connection's id, unique among the router's connections.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The client's address, for logs (`None` without a client socket); once past the door,
    /// the one its balancer's PROXY header names.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The address the client reached: this proxy's, or the one its balancer's header names.
    pub fn local(&self) -> Option<SocketAddr> {
        self.local
    }

    /// The TLS and PROXY protocol settings this connection was accepted with.
    pub fn door(&self) -> &super::Door {
        &self.entry.door
    }

    /// Takes the client through the door ([`super::Door::pass`]: PROXY header, and TLS when
    /// `tls_now`) within `proxy.login_timeout`. The future owns what it needs (so an actor can
    /// run it with `ctx.wait`); hand its result to [`ConnStart::passed`].
    pub fn pass_door(
        &mut self,
        tls_now: bool,
    ) -> impl Future<Output = Result<Passed, DoorError>> + 'static {
        let client = self.client.take();
        let (door, peer, limit) = (self.entry.door.clone(), self.peer, self.entry.login_timeout);
        async move {
            match client {
                Some(Stream::Plain(tcp)) => door.pass(tcp, peer, tls_now, limit).await,
                Some(other) => Ok(Passed {
                    client: other,
                    peer,
                    local: None,
                }),
                None => Err(DoorError::Io(std::io::ErrorKind::NotConnected.into())),
            }
        }
    }

    /// Takes back the client after [`ConnStart::pass_door`], with the address its header named.
    pub fn passed(&mut self, passed: Passed) {
        self.client = Some(passed.client);
        self.peer = passed.peer.or(self.peer);
        self.local = passed.local.or(self.local);
    }

    /// Logs and counts a client turned away at the door.
    pub fn refused_at_door(&self, e: &DoorError) {
        info!(conn_id = self.id, peer = ?self.peer, reason = %e, "client refused at the door");
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
    pub fn take_client(&mut self) -> Option<Stream> {
        self.client.take()
    }

    /// For an actor that starts routed: connects as [`ConnStart::connect`] (registering the
    /// actor's address for `Redirect`s and for `CloseConnection`, a drain's timeout) while the
    /// actor handles no message, then runs `on_routed`; when no backend is reachable, logs why
    /// and stops the actor.
    pub fn connect_then<A>(
        &self,
        ctx: &mut Context<A>,
        on_routed: impl FnOnce(&mut A, Routed, &mut Context<A>) + 'static,
    ) where
        A: Actor<Context = Context<A>> + Handler<Redirect> + Handler<CloseConnection>,
    {
        let (id, peer) = (self.id, self.peer);
        let routed = self.connect(ctx.address().recipient(), Some(ctx.address().recipient()));
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
    /// registering this connection with `redirect` as where the router sends `Redirect`s and
    /// `close` (if any) as where a drain's timeout sends `CloseConnection`.
    ///
    /// When every backend is at `balance.max_conns_per_backend` the route waits in the
    /// router's queue (`balance.queue_timeout`); the error then says so
    /// ([`switchyard::RouteError::is_overload`]).
    ///
    /// The future owns what it needs, so an actor can run it with `ctx.wait`.
    pub fn connect(
        &self,
        redirect: Recipient<Redirect>,
        close: Option<Recipient<CloseConnection>>,
    ) -> impl Future<Output = Result<Routed, ConnectError>> + 'static {
        self.rerouter(redirect, close).connect()
    }

    /// What this connection needs to route and connect again later, on its own (a session
    /// re-attaching after its backend was lost), and to report a backend suspect: the router,
    /// where it sends `Redirect`s and `CloseConnection`, and how backends are reached (TLS,
    /// PROXY header naming this client).
    pub fn rerouter(
        &self,
        redirect: Recipient<Redirect>,
        close: Option<Recipient<CloseConnection>>,
    ) -> Rerouter {
        Rerouter {
            id: self.id,
            router: self.entry.router.clone(),
            timeout: self.entry.connect_timeout,
            metrics: self.entry.metrics.clone(),
            redirect,
            close,
            via: self.entry.door.backend.clone(),
            client: self.peer,
            local: self.local,
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
    close: Option<Recipient<CloseConnection>>,
    via: Via,
    client: Option<SocketAddr>,
    local: Option<SocketAddr>,
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
    /// registering this connection there, through [`Via::connect`] (PROXY header, and TLS when
    /// it starts at connect). The future owns what it needs.
    pub fn connect(&self) -> impl Future<Output = Result<Routed, ConnectError>> + 'static {
        let this = self.clone();
        let handle = ConnHandle::new(self.id, self.redirect.clone());
        let handle = match self.close.clone() {
            Some(close) => handle.with_close(close),
            None => handle,
        };
        async move {
            let (router, timeout, metrics) = (&this.router, this.timeout, &this.metrics);
            let (via, client, local) = (&this.via, this.client, this.local);
            let connected = Connector::new(router, timeout)
                .connect(handle, |inst| async move {
                    via.connect(inst.addr(), timeout, client, local).await
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
