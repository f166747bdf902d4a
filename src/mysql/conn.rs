//! `MysqlConn`: the actor for one MySQL-protocol client, and the relay task it drives.
//!
//! Inbound: [`Redirect`] from the router and [`CloseAtSafePoint`] from the service (drain,
//! shutdown). Outbound: exactly one of `RedirectSucceeded` / `RedirectFailed` / `ConnClosed` per
//! redirect, through the connection's [`Registration`] (whose `Drop` reports `ConnClosed`). The
//! actor only forwards control to the relay task over a [`control`] link; the task owns both sockets and
//! all session state, relays one command at a time, and acts on control only at a safe point —
//! between commands — so a move never splits a response and a client command that arrives
//! during a move simply waits in its socket.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use actix::prelude::*;
use switchyard::wire::{code, sqlstate, OutBuf, PacketReader};
use switchyard::{BackendInst, Redirect};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use super::backend::Backend;
use super::relay::{ClientSide, End, Relay, Turn};
use super::session::Session;
use super::tracker::Tracker;
use super::MysqlConfig;
use crate::entry::{ConnStart, Counted};

/// Close the session at its next safe point (drain, graceful shutdown).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct CloseAtSafePoint;

/// Control from the actor to its relay task.
#[derive(Debug)]
pub(super) enum Control {
    /// Move to this backend at the next safe point.
    Redirect(BackendInst),
    /// Close at the next safe point.
    Close,
}

/// The link from the actor to its relay task. The task runs inside the actor's context (same
/// thread, same tokio task), so a shared queue and a `Notify` do what a channel would, in about
/// a tenth of the memory of a tokio `mpsc` channel (whose first block of slots is allocated up
/// front, in every idle session).
#[derive(Default)]
struct Link {
    queue: RefCell<VecDeque<Control>>,
    /// The actor is gone.
    closed: Cell<bool>,
    wake: Notify,
}

/// A control link: the actor's end and the relay task's end.
pub(super) fn control() -> (ControlTx, ControlRx) {
    let link = Rc::new(Link::default());
    (ControlTx(link.clone()), ControlRx(link))
}

/// The actor's end of the [`control`] link; dropping it closes the link.
pub(super) struct ControlTx(Rc<Link>);

impl ControlTx {
    /// Queues `c` for the relay task, which takes it at its next safe point (dropped when the
    /// task has ended: its `ConnClosed` already answered for the connection).
    pub(super) fn send(&self, c: Control) {
        if Rc::strong_count(&self.0) > 1 {
            self.0.queue.borrow_mut().push_back(c);
            self.0.wake.notify_one();
        }
    }
}

impl Drop for ControlTx {
    fn drop(&mut self) {
        self.0.closed.set(true);
        self.0.wake.notify_one();
    }
}

/// The relay task's end of the [`control`] link.
pub(super) struct ControlRx(Rc<Link>);

impl ControlRx {
    /// The next control message; `None` once the actor is gone. Cancel-safe: a message is only
    /// taken when this returns it.
    pub(super) async fn recv(&mut self) -> Option<Control> {
        loop {
            if let Some(c) = self.0.queue.borrow_mut().pop_front() {
                return Some(c);
            }
            if self.0.closed.get() {
                return None;
            }
            self.0.wake.notified().await;
        }
    }
}

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
        let fut = run(*start, ctx.address().recipient(), rx);
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

impl Handler<CloseAtSafePoint> for MysqlConn {
    type Result = ();
    fn handle(&mut self, _: CloseAtSafePoint, _: &mut Context<Self>) {
        self.ctrl.send(Control::Close);
    }
}

async fn run(start: Start, redirect: Recipient<Redirect>, ctrl: ControlRx) {
    let Start { mut conn, cfg } = start;
    // from (about) accept: routing and connecting count against the login's time too
    let login_deadline = tokio::time::Instant::now() + conn.login_timeout();
    let id = conn.id();
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
    };
    let routed = match conn.connect(redirect).await {
        Ok(routed) => routed,
        Err(e) => {
            let msg = format!("switchyard: {e}");
            client
                .send_err(0, code::ER_UNKNOWN_ERROR, sqlstate::GENERAL, &msg)
                .await;
            info!(conn_id = id, client = %peer, reason = %e, "client closed: no backend");
            return;
        }
    };
    let backend = Backend::from_stream(routed.registration.backend().to_string(), routed.backend);
    let mut relay = Relay {
        id,
        peer,
        client,
        backend,
        session: Session::new(),
        tracker: Tracker::new(0),
        login: None,
        link: routed.registration,
        cfg,
        ctrl,
        pending: None,
        closing: false,
        turn: Turn::Server(0),
    };
    let end = relay.serve(login_deadline).await;
    match &end {
        End::Client(_) => {
            warn!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "closing client")
        }
        End::Backend(_) => {
            warn!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "closing session")
        }
        _ => {
            debug!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "session ended")
        }
    }
    // dropping the relay drops its registration: ConnClosed on the backend it is on now
}
