//! `TcpConn`: the actor for one proxied client in `tcp` mode.
//!
//! It routes with a [`BackendSelector`] (trying the next backend when a connect fails, at most
//! once per backend), registers with the router, then leaves the bytes to a spawned copy loop
//! ([`super::copy`]) and handles only control: [`Redirect`] (answered with `RedirectFailed` at
//! once: a raw TCP stream has no safe point to move at) and its own end (`ConnClosed`).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchyard::{
    BackendSelector, ConnClosed, ConnHandle, Redirect, RedirectFailed, RefreshBackends, RouteError,
};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{copy, LiveGuard, NewConn, ProxyShared};

/// Whether a connection may move between backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moves {
    /// Every `Redirect` is answered with `RedirectFailed`.
    Refuse,
}

/// One client connection and, once routed, its backend.
pub struct TcpConn {
    id: u64,
    peer: SocketAddr,
    shared: ProxyShared,
    moves: Moves,
    /// The client, until the copy loop takes it.
    client: Option<TcpStream>,
    /// The backend this connection is registered on (set once routed).
    backend: Option<String>,
    _live: LiveGuard,
}

impl TcpConn {
    /// Starts the actor for `conn` on the current arbiter.
    pub fn start_new(conn: NewConn, moves: Moves) {
        let live = conn.live;
        conn.shared.metrics.active.increment(1.0);
        let client = match TcpStream::from_std(conn.client) {
            Ok(s) => s,
            Err(e) => {
                warn!(conn_id = conn.id, peer = %conn.peer, error = %e, "cannot adopt client socket");
                conn.shared.metrics.active.decrement(1.0);
                return;
            }
        };
        TcpConn {
            id: conn.id,
            peer: conn.peer,
            shared: conn.shared,
            moves,
            client: Some(client),
            backend: None,
            _live: live,
        }
        .start();
    }
}

/// Connects to a backend chosen by the router, trying each backend at most once.
async fn connect_routed(
    selector: &mut BackendSelector,
    router: &Addr<switchyard::ScoreRouter>,
    timeout: Duration,
    conn_id: u64,
) -> Result<(String, TcpStream), RouteError> {
    let mut tried: Vec<String> = Vec::new();
    loop {
        let inst = selector.next().await?;
        let addr = inst.addr().to_string();
        if tried.contains(&addr) {
            // The selector started over: every backend was tried once.
            selector.finish(None);
            return Err(RouteError::NoBackend);
        }
        match tokio::time::timeout(timeout, TcpStream::connect(&addr)).await {
            Ok(Ok(stream)) => return Ok((addr, stream)),
            Ok(Err(e)) => {
                debug!(conn_id, backend = %addr, error = %e, "backend connect failed; trying the next");
            }
            Err(_) => {
                debug!(conn_id, backend = %addr, "backend connect timed out; trying the next");
            }
        }
        crate::metrics::connect_failed(&addr);
        selector.finish(None);
        router.do_send(RefreshBackends);
        tried.push(addr);
    }
}

/// Low-latency, dead-peer-detecting socket settings, on both sides of the proxy.
pub(crate) fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10));
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot enable TCP keepalive");
    }
}

impl Actor for TcpConn {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let router = self.shared.router.clone();
        let me = ctx.address().recipient::<Redirect>();
        let (id, timeout) = (self.id, self.shared.connect_timeout);
        let routed = async move {
            let mut selector = BackendSelector::new(&router);
            let r = connect_routed(&mut selector, &router, timeout, id).await;
            if r.is_ok() {
                selector.finish(Some(ConnHandle::new(id, me)));
            }
            r
        };
        ctx.wait(routed.into_actor(self).map(|r, act, ctx| match r {
            Ok((addr, backend)) => {
                tune(&backend);
                act.shared.metrics.routes.increment(1);
                debug!(conn_id = act.id, peer = %act.peer, backend = %addr, "routed");
                act.backend = Some(addr);
                act.forward(backend, ctx);
            }
            Err(e) => {
                act.shared.metrics.route_failures.increment(1);
                info!(conn_id = act.id, peer = %act.peer, error = %e, "no backend for client; closing it");
                ctx.stop();
            }
        }));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        self.shared.metrics.active.decrement(1.0);
        if let Some(addr) = self.backend.take() {
            self.shared.router.do_send(ConnClosed {
                addr,
                conn_id: self.id,
            });
        }
    }
}

impl TcpConn {
    fn forward(&mut self, backend: TcpStream, ctx: &mut Context<Self>) {
        let Some(client) = self.client.take() else {
            ctx.stop();
            return;
        };
        let (bytes_in, bytes_out) = (
            self.shared.metrics.bytes_in.clone(),
            self.shared.metrics.bytes_out.clone(),
        );
        let copy = async move {
            let r = copy::bidirectional(&client, &backend, &bytes_in, &bytes_out).await;
            drop((client, backend));
            r
        };
        ctx.spawn(copy.into_actor(self).map(|r, act, ctx| {
            match r {
                Ok(()) => debug!(conn_id = act.id, "connection finished"),
                Err(e) => {
                    debug!(conn_id = act.id, backend = act.backend.as_deref().unwrap_or(""), error = %e, "connection ended with an error")
                }
            }
            ctx.stop();
        }));
    }
}

impl Handler<Redirect> for TcpConn {
    type Result = ();

    fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
        let started = Instant::now();
        match self.moves {
            Moves::Refuse => {
                let Some(from) = self.backend.clone() else {
                    return;
                };
                self.shared.router.do_send(RedirectFailed {
                    from,
                    to: msg.to.addr().to_string(),
                    conn_id: self.id,
                });
                crate::metrics::migration(false, started.elapsed());
            }
        }
    }
}
