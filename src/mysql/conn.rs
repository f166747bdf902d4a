//! `MysqlConn`: the actor for one MySQL-protocol client, and the relay task it drives.
//!
//! Inbound: [`Redirect`] from the router and [`CloseAtSafePoint`] from the service (drain,
//! shutdown). Outbound: exactly one of `RedirectSucceeded` / `RedirectFailed` / `ConnClosed` per
//! redirect, through the connection's [`Registration`] (whose `Drop` reports `ConnClosed`). The
//! actor only forwards control to the relay task over a control link (`super::control`); the task owns both sockets and
//! all session state, relays one command at a time, and acts on control only at a safe point —
//! between commands — so a move never splits a response and a client command that arrives
//! during a move simply waits in its socket.

use std::sync::Arc;

use actix::prelude::*;
use switchyard::wire::{code, sqlstate, OutBuf, PacketReader};
use switchyard::{CloseConnection, ConnectError, Redirect};
use tracing::{debug, info, warn};

use super::backend::{Backend, Link};
use super::control::{control, Control, ControlRx, ControlTx};
use super::relay::{ClientSide, End, Relay, Turn};
use super::session::{Session, TxLog};
use super::tracker::Tracker;
use super::MysqlConfig;
use crate::entry::{ConnStart, Counted};

/// Close the session at its next safe point (drain, graceful shutdown).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct CloseAtSafePoint;

struct Start {
    conn: ConnStart,
    cfg: Arc<MysqlConfig>,
}

/// One MySQL-protocol client connection (see the module docs).
pub struct MysqlConn {
    ctrl: ControlTx,
    rx: Option<ControlRx>,
    /// Boxed: taken into the relay task at once, it would otherwise keep its room in the actor
    /// for the session's life.
    start: Option<Box<Start>>,
    on_stop: Option<Box<dyn FnOnce()>>,
}

impl MysqlConn {
    /// A connection actor for a started client connection (`conn` holds the client socket).
    pub fn new(conn: ConnStart, cfg: Arc<MysqlConfig>) -> Self {
        let (ctrl, rx) = control();
        Self {
            ctrl,
            rx: Some(rx),
            start: Some(Box::new(Start { conn, cfg })),
            on_stop: None,
        }
    }

    /// Runs `f` when the actor is gone, however it ended (it runs from `Drop`).
    pub fn on_stop(mut self, f: impl FnOnce() + 'static) -> Self {
        self.on_stop = Some(Box::new(f));
        self
    }
}

impl Actor for MysqlConn {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (Some(start), Some(rx)) = (self.start.take(), self.rx.take()) else {
            ctx.stop();
            return;
        };
        let fut = run(*start, ctx.address(), rx);
        ctx.spawn(fut.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

impl Drop for MysqlConn {
    fn drop(&mut self) {
        if let Some(f) = self.on_stop.take() {
            f();
        }
    }
}

impl Handler<Redirect> for MysqlConn {
    type Result = ();
    fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
        self.ctrl.send(Control::Redirect(msg.to));
    }
}

/// A drain's timeout passed: close at the next safe point (after the running command, outside
/// a transaction), telling the client why.
impl Handler<CloseConnection> for MysqlConn {
    type Result = ();
    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) {
        self.ctrl.send(Control::CloseWithError(msg.reason));
    }
}

impl Handler<CloseAtSafePoint> for MysqlConn {
    type Result = ();
    fn handle(&mut self, _: CloseAtSafePoint, _: &mut Context<Self>) {
        self.ctrl.send(Control::Close);
    }
}

async fn run(start: Start, me: Addr<MysqlConn>, ctrl: ControlRx) {
    let Start { mut conn, cfg } = start;
    // from (about) accept: routing and connecting count against the login's time too
    let login_deadline = tokio::time::Instant::now() + conn.login_timeout();
    let id = conn.id();
    if conn.door().proxy_protocol.is_some() {
        // the PROXY header before routing (TLS comes later, inside the MySQL login)
        match conn.pass_door(false).await {
            Ok(passed) => conn.passed(passed),
            Err(e) => {
                conn.refused_at_door(&e);
                return;
            }
        }
    }
    let Some(client) = conn.take_client() else {
        return;
    };
    let peer = conn.peer().map(|a| a.to_string()).unwrap_or_default();
    let metrics = conn.metrics();
    let (r, w) = client.into_split();
    let mut client = ClientSide {
        reader: PacketReader::new(Counted::new(r, metrics.bytes_in.clone())),
        writer: Counted::new(w, metrics.bytes_out.clone()),
        out: OutBuf::new(),
        writes: 0,
    };
    let reroute = conn.rerouter(me.clone().recipient(), Some(me.recipient()));
    let routed = match reroute.connect().await {
        Ok(routed) => routed,
        Err(e) => {
            let msg = format!("switchyard: {e}");
            let (code, state) = match &e {
                // every backend full for queue_timeout: the server's own "too many connections"
                ConnectError::Route { source, .. } if source.is_overload() => {
                    (code::ER_CON_COUNT_ERROR, sqlstate::CONNECTION_REJECTED)
                }
                _ => (code::ER_UNKNOWN_ERROR, sqlstate::GENERAL),
            };
            client.send_err(0, code, state, &msg).await;
            info!(conn_id = id, client = %peer, reason = %e, "client closed: no backend");
            return;
        }
    };
    let mut backend =
        Backend::from_stream(routed.registration.backend().to_string(), routed.backend);
    backend.link = Link {
        via: conn.door().backend.clone(),
        client: conn.peer(),
        local: conn.local(),
    };
    let mut relay = Relay {
        id,
        peer,
        client,
        backend,
        session: Session::new(),
        tracker: Tracker::new(0),
        login: None,
        link: Some(routed.registration),
        reroute,
        doomed: None,
        txlog: TxLog::new(
            cfg.failover.reattach && cfg.failover.replay_transactions,
            cfg.failover.max_replay_bytes,
        ),
        refresh_refused: None,
        cfg,
        ctrl,
        pending: None,
        waiting: None,
        client_tracks: false,
        closing: false,
        close_error: None,
        turn: Turn::Server(0),
        seq_shift: 0,
    };
    let end = relay.serve(login_deadline).await;
    match &end {
        End::Client(_) => {
            warn!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "closing client")
        }
        End::Backend(_) | End::Lost(_) => {
            warn!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "closing session")
        }
        _ => {
            debug!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "session ended")
        }
    }
    // dropping the relay drops its registration: ConnClosed on the backend it is on now
}
