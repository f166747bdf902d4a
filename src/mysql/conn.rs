//! `MysqlConn`: the actor for one MySQL-protocol client, and the relay task it drives.
//!
//! Inbound: [`Redirect`] from the router and [`CloseAtSafePoint`] from the service (drain,
//! shutdown). Outbound: exactly one of `RedirectSucceeded` / `RedirectFailed` / `ConnClosed` per
//! redirect, through a [`RouterLink`]. The actor only forwards control to the relay task over a
//! channel; the task owns both sockets and all session state, relays one command at a time, and
//! acts on control only at a safe point — between commands — so a move never splits a response
//! and a client command that arrives during a move simply waits in its socket.

use std::sync::Arc;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use switchyard::wire::{code, sqlstate, PacketReader};
use switchyard::{
    BackendInst, BackendSelector, ConnClosed, ConnHandle, Redirect, RedirectFailed,
    RedirectSucceeded,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::backend::Backend;
use super::relay::{ClientSide, End, Relay};
use super::session::Session;
use super::tracker::Tracker;
use super::MysqlConfig;

/// Close the session at its next safe point (drain, graceful shutdown).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct CloseAtSafePoint;

/// Where a connection reports to its router: one recipient per message, so the connection
/// works with any router actor.
#[derive(Clone)]
pub struct RouterLink {
    pub(super) succeeded: Recipient<RedirectSucceeded>,
    pub(super) failed: Recipient<RedirectFailed>,
    pub(super) closed: Recipient<ConnClosed>,
}

impl RouterLink {
    /// A link to `router`.
    pub fn new<R>(router: &Addr<R>) -> Self
    where
        R: Actor + Handler<RedirectSucceeded> + Handler<RedirectFailed> + Handler<ConnClosed>,
        R::Context: ToEnvelope<R, RedirectSucceeded>
            + ToEnvelope<R, RedirectFailed>
            + ToEnvelope<R, ConnClosed>,
    {
        Self {
            succeeded: router.clone().recipient(),
            failed: router.clone().recipient(),
            closed: router.clone().recipient(),
        }
    }

    /// A link from three recipients (for routers behind other actors, and tests).
    pub fn from_recipients(
        succeeded: Recipient<RedirectSucceeded>,
        failed: Recipient<RedirectFailed>,
        closed: Recipient<ConnClosed>,
    ) -> Self {
        Self {
            succeeded,
            failed,
            closed,
        }
    }
}

/// Control from the actor to its relay task.
#[derive(Debug)]
pub(super) enum Control {
    /// Move to this backend at the next safe point.
    Redirect(BackendInst),
    /// Close at the next safe point.
    Close,
}

struct Start {
    client: TcpStream,
    selector: BackendSelector,
    link: RouterLink,
    cfg: Arc<MysqlConfig>,
}

/// One MySQL-protocol client connection (see the module docs).
pub struct MysqlConn {
    id: u64,
    ctrl: mpsc::UnboundedSender<Control>,
    rx: Option<mpsc::UnboundedReceiver<Control>>,
    start: Option<Start>,
    on_stop: Option<Box<dyn FnOnce()>>,
}

impl MysqlConn {
    /// A connection actor for an accepted `client`, routed by `selector`, reporting to `link`.
    /// `id` must be unique among the router's connections.
    pub fn new(
        id: u64,
        client: TcpStream,
        selector: BackendSelector,
        link: RouterLink,
        cfg: Arc<MysqlConfig>,
    ) -> Self {
        let (ctrl, rx) = mpsc::unbounded_channel();
        Self {
            id,
            ctrl,
            rx: Some(rx),
            start: Some(Start {
                client,
                selector,
                link,
                cfg,
            }),
            on_stop: None,
        }
    }

    /// Runs `f` when the actor stops (the service's live-connection count and gauges).
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
        let handle = ConnHandle::new(self.id, ctx.address().recipient());
        let fut = run(self.id, start, handle, rx);
        ctx.spawn(fut.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(f) = self.on_stop.take() {
            f();
        }
    }
}

impl Handler<Redirect> for MysqlConn {
    type Result = ();
    fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
        // if the task has ended, its ConnClosed already answered for this connection
        let _ = self.ctrl.send(Control::Redirect(msg.to));
    }
}

impl Handler<CloseAtSafePoint> for MysqlConn {
    type Result = ();
    fn handle(&mut self, _: CloseAtSafePoint, _: &mut Context<Self>) {
        let _ = self.ctrl.send(Control::Close);
    }
}

async fn run(id: u64, start: Start, handle: ConnHandle, ctrl: mpsc::UnboundedReceiver<Control>) {
    let Start {
        client,
        mut selector,
        link,
        cfg,
    } = start;
    let peer = client
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = client.set_nodelay(true);
    let (r, w) = client.into_split();
    let mut client = ClientSide {
        reader: PacketReader::new(r),
        writer: w,
        out: Vec::with_capacity(16 * 1024),
    };
    let mut backend = None;
    let mut last_err = String::from("no backend");
    for _ in 0..4 {
        match selector.next().await {
            Ok(inst) => match Backend::connect(inst.addr(), cfg.connect_timeout).await {
                Ok(b) => {
                    selector.finish(Some(handle.clone()));
                    backend = Some(b);
                    break;
                }
                Err(e) => {
                    warn!(conn_id = id, backend = %inst.addr(), error = %e, "backend connect failed; trying the next");
                    last_err = e.to_string();
                }
            },
            Err(e) => {
                last_err = e.to_string();
                break;
            }
        }
    }
    drop(selector);
    let Some(backend) = backend else {
        client
            .send_err(
                0,
                code::ER_UNKNOWN_ERROR,
                sqlstate::GENERAL,
                &format!("switchyard: {last_err}"),
            )
            .await;
        info!(conn_id = id, client = %peer, reason = %last_err, "client closed: no backend");
        return;
    };
    let mut relay = Relay {
        id,
        peer,
        client,
        backend,
        session: Session::new(),
        tracker: Tracker::new(0),
        login: None,
        link,
        cfg,
        ctrl,
        pending: None,
        closing: false,
    };
    let end = relay.serve().await;
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
    relay.link.closed.do_send(ConnClosed {
        addr: relay.backend.addr.clone(),
        conn_id: id,
    });
}
