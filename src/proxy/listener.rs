//! `ProxyListener`: the actor that accepts clients and spreads them over worker arbiters.
//!
//! Accepting runs as a future inside the actor; [`StopAccepting`] stops the actor, which drops
//! the future and with it the listening socket, so shutdown's "stop accepting" is one message.
//! Each accepted socket leaves this thread as a `std` socket and is adopted by its worker's
//! reactor there, so connections spread over all cores.

use std::net::SocketAddr;
use std::time::Duration;

use actix::prelude::*;
use tokio::net::TcpListener;
use tracing::{debug, error, info, warn};

use super::{start_conn, NewConn, ProxyShared};
use crate::config::Protocol;

/// Stop accepting; connections already accepted go on.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct StopAccepting;

/// Accepts clients on one address.
pub struct ProxyListener {
    listener: Option<TcpListener>,
    protocol: Protocol,
    shared: ProxyShared,
    workers: Vec<ArbiterHandle>,
}

impl ProxyListener {
    /// A listener over an already bound socket; connections go round-robin to `workers`
    /// (the current arbiter when empty).
    pub fn new(
        listener: TcpListener,
        protocol: Protocol,
        shared: ProxyShared,
        workers: Vec<ArbiterHandle>,
    ) -> Self {
        Self {
            listener: Some(listener),
            protocol,
            shared,
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
            info!(listen = %addr, protocol = ?self.protocol, "proxy accepting clients");
        }
        let shared = self.shared.clone();
        let workers = self.workers.clone();
        let protocol = self.protocol;
        ctx.spawn(accept_loop(listener, protocol, shared, workers).into_actor(self));
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
    protocol: Protocol,
    shared: ProxyShared,
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
        super::tcp_conn::tune(&stream);
        shared.metrics.accepted.increment(1);
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
            live: shared.live.enter(),
            shared: shared.clone(),
        };
        hand_off(&workers, &mut turn, protocol, conn, peer);
    }
}

fn hand_off(
    workers: &[ArbiterHandle],
    turn: &mut usize,
    protocol: Protocol,
    conn: NewConn,
    peer: SocketAddr,
) {
    if workers.is_empty() {
        start_conn(protocol, conn);
        return;
    }
    let worker = &workers[*turn % workers.len()];
    *turn = turn.wrapping_add(1);
    if !worker.spawn_fn(move || start_conn(protocol, conn)) {
        error!(peer = %peer, "worker arbiter is gone; dropping client");
    }
}
