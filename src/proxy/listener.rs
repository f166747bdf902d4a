//! `ProxyListener`: the actor that accepts clients and spreads them over worker arbiters.
//!
//! Accepting runs as a future inside the actor; [`StopAccepting`] stops the actor, which drops
//! the future and with it the listening socket, so shutdown's "stop accepting" is one message.
//! Each accepted socket leaves this thread as a `std` socket and is adopted by its worker's
//! reactor there, so connections spread over all cores. What starts on the worker is the
//! service's [`StartConn`]: the listener does not know the protocol. A client over
//! `proxy.max_connections` is refused right here, before it costs a worker or a backend: it is
//! sent the entry's refusal bytes (if any) and closed.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use crate::entry::{Entry, NewConn, StartConn};

/// Stop accepting; connections already accepted go on.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

/// Accepts clients on one address.
pub struct ProxyListener {
    listener: Option<TcpListener>,
    entry: Entry,
    start: StartConn,
    workers: Vec<ArbiterHandle>,
}

impl ProxyListener {
    /// A listener over an already bound socket; each client is started with `start` on one of
    /// `workers`, round-robin (on the current arbiter when `workers` is empty).
    pub fn new(
        listener: TcpListener,
        entry: Entry,
        start: StartConn,
        workers: Vec<ArbiterHandle>,
    ) -> Self {
        Self {
            listener: Some(listener),
            entry,
            start,
            workers,
        }
    }
}

impl Actor for ProxyListener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let Some(listener) = self.listener.take() else {
            ctx.stop();
            return;
        };
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, "proxy accepting clients");
        }
        let entry = self.entry.clone();
        let start = self.start.clone();
        let workers = self.workers.clone();
        ctx.spawn(accept_loop(listener, entry, start, workers).into_actor(self));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        info!("proxy stopped accepting clients");
    }
}

impl Handler<StopAccepting> for ProxyListener {
    type Result = ();
    fn handle(&mut self, _: StopAccepting, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

async fn accept_loop(
    listener: TcpListener,
    entry: Entry,
    start: StartConn,
    workers: Vec<ArbiterHandle>,
) {
    let mut next_id: u64 = 1;
    let mut turn = 0usize;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: back off briefly.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        entry.metrics.accepted.increment(1);
        let Some(live) = entry.live.try_enter(entry.max_connections) else {
            refuse(stream, peer, &entry);
            continue;
        };
        let id = next_id;
        next_id += 1;
        let client = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                warn!(peer = %peer, error = %e, "cannot hand off client socket");
                continue;
            }
        };
        debug!(conn_id = id, peer = %peer, "client accepted");
        let conn = NewConn {
            id,
            client,
            peer,
            live,
            entry: entry.clone(),
        };
        hand_off(&workers, &mut turn, &start, conn, peer);
    }
}

/// Turns away a client over `proxy.max_connections`: one non-blocking send of the refusal (a
/// fresh socket's send buffer takes a small packet whole; if not, the client gets a bare close)
/// and a close. The client has not been counted as live, so nothing is left to give back.
fn refuse(stream: tokio::net::TcpStream, peer: SocketAddr, entry: &Entry) {
    entry.metrics.refused_max_connections.increment(1);
    if !entry.refusal.is_empty() {
        if let Err(e) = socket2::SockRef::from(&stream).send(&entry.refusal) {
            debug!(peer = %peer, error = %e, "cannot tell a refused client why");
        }
    }
    debug!(peer = %peer, max_connections = entry.max_connections, "client refused: too many connections");
    drop(stream);
}

fn hand_off(
    workers: &[ArbiterHandle],
    turn: &mut usize,
    start: &StartConn,
    conn: NewConn,
    peer: SocketAddr,
) {
    if workers.is_empty() {
        start(conn);
        return;
    }
    let worker = &workers[*turn % workers.len()];
    *turn = turn.wrapping_add(1);
    let start = start.clone();
    if !worker.spawn_fn(move || start(conn)) {
        error!(peer = %peer, "worker arbiter is gone; dropping client");
    }
}
