//! `TcpConn`: the actor for one proxied client in `tcp` mode.
//!
//! It starts like every connection ([`ConnStart`]: route, connect each backend at most once,
//! register), then leaves the bytes to a copy loop ([`super::copy`]) and handles only control:
//! [`Redirect`] (answered with `RedirectFailed` at once: a raw TCP stream has no safe point to
//! move at), `CloseConnection` (a drain's timeout: closed at once, a raw stream has no safer
//! point) and its own end (its [`Registration`] reports `ConnClosed` when dropped).
//!
//! The copy loop is a task of its own, not a future in the actor's context: it wakes for every
//! chunk, and inside the context each wake-up would also poll the actor's mailbox and every
//! item spawned there. The actor waits only on the task's end, and aborts it when it stops.

use std::time::Instant;

use actix::prelude::*;
use switchyard::{CloseConnection, Redirect, Registration};
use tokio::task::AbortHandle;
use tracing::{debug, info};

use super::copy;
use crate::entry::{ConnStart, NewConn, Stream};

/// Whether a connection may move between backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moves {
    /// Every `Redirect` is answered with `RedirectFailed`.
    Refuse,
}

/// One client connection and, once routed, its backend.
pub struct TcpConn {
    start: ConnStart,
    moves: Moves,
    /// Set once routed; dropping it (with the actor) unregisters the connection.
    registration: Option<Registration>,
    /// The copy task, aborted when the actor stops (e.g. its arbiter shuts down).
    copy: Option<AbortHandle>,
}

impl TcpConn {
    /// Starts the actor for `conn` on the current arbiter.
    pub fn start_new(conn: NewConn, moves: Moves) {
        let Some(start) = ConnStart::adopt(conn) else {
            return;
        };
        TcpConn {
            start,
            moves,
            registration: None,
            copy: None,
        }
        .start();
    }

    fn id(&self) -> u64 {
        self.start.id()
    }
}

impl Actor for TcpConn {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.start.door().is_open() {
            self.route(ctx);
            return;
        }
        // PROXY header and TLS first: a client refused at the door costs no backend
        let door = self.start.pass_door(true);
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(door).map(|r, act, ctx| match r {
                Ok(passed) => {
                    act.start.passed(passed);
                    act.route(ctx);
                }
                Err(e) => {
                    act.start.refused_at_door(&e);
                    ctx.stop();
                }
            }),
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(copy) = self.copy.take() {
            copy.abort();
        }
    }
}

impl TcpConn {
    fn route(&mut self, ctx: &mut Context<Self>) {
        self.start.connect_then(ctx, |act: &mut Self, routed, ctx| {
            act.registration = Some(routed.registration);
            act.forward(routed.backend, ctx);
        });
    }

    fn forward(&mut self, backend: Stream, ctx: &mut Context<Self>) {
        let Some(client) = self.start.take_client() else {
            ctx.stop();
            return;
        };
        let metrics = self.start.metrics();
        let (bytes_in, bytes_out) = (metrics.bytes_in.clone(), metrics.bytes_out.clone());
        let half_close = self.start.half_close_timeout();
        let copy = async move {
            match (client, backend) {
                (Stream::Plain(client), Stream::Plain(backend)) => {
                    let r =
                        copy::bidirectional(&client, &backend, &bytes_in, &bytes_out, half_close)
                            .await;
                    drop((client, backend));
                    r
                }
                (client, backend) => {
                    copy::bidirectional_streams(client, backend, &bytes_in, &bytes_out, half_close)
                        .await
                }
            }
        };
        let task = actix::spawn(copy);
        self.copy = Some(task.abort_handle());
        ctx.spawn(task.into_actor(self).map(|r, act, ctx| {
            let backend = act.registration.as_ref().map_or("", |r| r.backend());
            match r {
                Ok(Ok(())) => debug!(conn_id = act.id(), backend, "connection finished"),
                Ok(Err(e)) => {
                    debug!(conn_id = act.id(), backend, error = %e, "connection ended with an error")
                }
                Err(e) => debug!(conn_id = act.id(), backend, error = %e, "copy task ended"),
            }
            act.copy = None;
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
                let Some(registration) = &self.registration else {
                    return;
                };
                registration.redirect_failed(msg.to.addr());
                crate::metrics::migration(false, started.elapsed());
            }
        }
    }
}

/// A drain's timeout passed: a raw stream has no safe point, so it closes now (stopping the
/// actor aborts the copy task and drops the registration, which reports `ConnClosed`).
impl Handler<CloseConnection> for TcpConn {
    type Result = ();

    fn handle(&mut self, msg: CloseConnection, ctx: &mut Context<Self>) {
        let backend = self.registration.as_ref().map_or("", |r| r.backend());
        info!(conn_id = self.id(), backend, reason = %msg.reason, "closing connection");
        ctx.stop();
    }
}
