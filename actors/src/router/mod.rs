//! `ScoreRouter`: the actor that owns the score table and talks to connections and its observer.
//!
//! Inbound: routes ([`Route`], [`ConnCreated`]), connection events ([`RedirectSucceeded`],
//! [`RedirectFailed`], [`ConnClosed`], [`BackendSuspect`]), observer reports ([`BackendsChanged`],
//! [`BackendsListed`]) and operator requests ([`SetDrained`], [`DrainThenClose`], [`Rebalance`],
//! [`RedirectConnections`], queries). Outbound: [`crate::Redirect`] and
//! [`crate::CloseConnection`] to connections and [`Refresh`] to its observer.
//!
//! The actor is a thin shell: every decision is made by the plain `ScoreTable` (in `table`),
//! tested on its own; the shell turns each message into one call, reads the clock, runs the
//! periodic tick, parks routes in the wait queue (`queue`) while every backend is at its cap,
//! and times drains. Nothing is behind a lock: the actor is the only owner.

mod backend;
mod config;
mod messages;
mod policy;
mod queue;
mod table;

use std::collections::HashMap;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::conn::ConnHandle;
use crate::discovery::BackendFetcher;
use crate::error::{InvariantError, RouteError, RouterError};
use crate::health::{HealthCheck, HealthCheckConfig};
use crate::model::{BackendHealth, BackendInst, BackendSnapshot};
use crate::observation::{BackendsChanged, BackendsListed, GetObserved, Refresh, StopObserver};
use crate::observer::BackendObserver;
use queue::RouteQueue;
use table::{ConnLink, Delivery, ScoreTable};

pub use config::RouterConfig;
pub use messages::{
    BackendSuspect, BackendWeight, CheckInvariants, ConnClosed, ConnCount, ConnCreated,
    DrainThenClose, GetBackends, GetDrained, GetRouting, PeerLoad, Rebalance, RedirectConnections,
    RedirectFailed, RedirectSucceeded, RefreshBackends, Route, RoutingState, ServerVersion,
    SetDrained, StopRouter,
};
pub use policy::{
    valid_weight, RoutePolicy, COOLDOWN_LIMIT, COOLDOWN_PUBLISH_INTERVALS, SLOW_START_FLOOR,
};

/// The table reaches a connection through its handle: a full mailbox is `Busy`, a closed one
/// (the actor stopped or panicked) is `Gone`.
impl ConnLink for ConnHandle {
    fn id(&self) -> u64 {
        ConnHandle::id(self)
    }

    fn redirect(&self, to: BackendInst) -> Delivery {
        match self.try_redirect(to) {
            Ok(()) => Delivery::Sent,
            Err(SendError::Full(_)) => Delivery::Busy,
            Err(SendError::Closed(_)) => Delivery::Gone,
        }
    }

    fn close(&self, reason: &str) -> Delivery {
        if !self.closable() {
            // alive, but built without a close recipient: it can only be moved
            return Delivery::Busy;
        }
        match self.try_close(reason) {
            Ok(()) => Delivery::Sent,
            Err(SendError::Full(_)) => Delivery::Busy,
            Err(SendError::Closed(_)) => Delivery::Gone,
        }
    }
}

/// Where the router's observer listens, when it has one.
struct ObserverLink {
    refresh: Recipient<Refresh>,
    stop: Recipient<StopObserver>,
    observed: Recipient<GetObserved>,
}

/// Routes new connections to the least-loaded healthy backend and moves connections off busy,
/// failing or drained backends.
///
/// Score of a backend = status score + conn score; smaller is idler. See the module docs for the
/// messages it handles.
pub struct ScoreRouter {
    table: ScoreTable<ConnHandle>,
    observer: Option<ObserverLink>,
    /// Routes waiting for a backend with room, first come first served.
    queue: RouteQueue,
    /// Per backend, the number of its latest [`DrainThenClose`]: a timer whose number is no
    /// longer there was cancelled (undrain, or a newer drain).
    drain_timers: HashMap<String, u64>,
    next_drain_timer: u64,
}

impl ScoreRouter {
    /// A router with no observer: feed it [`BackendsChanged`] yourself.
    pub fn new(cfg: RouterConfig) -> ScoreRouter {
        let policy = RoutePolicy::default();
        ScoreRouter {
            queue: RouteQueue::new(policy.queue_limit),
            table: ScoreTable::new(cfg),
            observer: None,
            drain_timers: HashMap::new(),
            next_drain_timer: 0,
        }
    }

    /// The same router with the operator's controls (slow start, per-backend caps and the wait
    /// queue, panic mode); [`ScoreRouter::new`] has them all off. Set it before the router
    /// starts: `ScoreRouter::observed(..).with_policy(p)`.
    pub fn with_policy(mut self, policy: RoutePolicy) -> ScoreRouter {
        self.queue = RouteQueue::new(policy.queue_limit);
        self.table.set_policy(policy);
        self
    }

    /// Starts a router and a [`BackendObserver`] that reports to it. Stopping the router for
    /// good stops the observer.
    pub fn start_observed<F, H>(
        cfg: RouterConfig,
        fetcher: F,
        health_check: H,
        health: HealthCheckConfig,
    ) -> Addr<ScoreRouter>
    where
        F: BackendFetcher,
        H: HealthCheck,
    {
        ScoreRouter::create(|ctx| ScoreRouter::observed(cfg, fetcher, health_check, health, ctx))
    }

    /// Builds a router inside `ctx` with its observer started; for
    /// `actix::Supervisor::start(|ctx| ScoreRouter::observed(.., ctx))`.
    pub fn observed<F, H>(
        cfg: RouterConfig,
        fetcher: F,
        health_check: H,
        health: HealthCheckConfig,
        ctx: &mut Context<ScoreRouter>,
    ) -> ScoreRouter
    where
        F: BackendFetcher,
        H: HealthCheck,
    {
        let receiver = ctx.address().recipient::<BackendsChanged>();
        let fall = health.fall;
        let observer = BackendObserver::new(fetcher, health_check, health, receiver)
            .with_listing(ctx.address().recipient())
            .start();
        let mut router = ScoreRouter::new(cfg);
        router
            .table
            .set_suspect_reports(fall.max(1).saturating_add(1));
        router.observer = Some(ObserverLink {
            refresh: observer.clone().recipient(),
            stop: observer.clone().recipient(),
            observed: observer.recipient(),
        });
        router
    }

    fn refresh_observer(&self) {
        if let Some(link) = &self.observer {
            link.refresh.do_send(Refresh);
        }
    }

    /// The synchronous core of [`Route`]: what the handler does, callable on a router that is
    /// not running as an actor (an application that owns it some other way, or a benchmark
    /// that puts this very scoring behind a lock to price the actor's messaging).
    ///
    /// It never queues: where the actor would park the route, it returns `AllFull`.
    pub fn route(&mut self, excluded: &[String]) -> Result<BackendInst, RouteError> {
        let r = self.table.route(excluded, Instant::now());
        if matches!(r, Err(RouteError::NoBackend)) {
            debug!(
                excluded = excluded.len(),
                "no routable backend; asking for a refresh"
            );
            self.refresh_observer();
        }
        r
    }

    /// The synchronous core of [`ConnCreated`] (see [`ScoreRouter::route`]).
    pub fn conn_created(&mut self, backend: &str, conn: Option<ConnHandle>) {
        self.table.conn_created(backend, conn);
    }

    /// The synchronous core of [`BackendsChanged`] (see [`ScoreRouter::route`]).
    pub fn backends_changed(&mut self, msg: BackendsChanged) {
        self.table
            .backends_changed(msg.backends, msg.error, Instant::now());
    }

    /// Routes now, or parks the route at the back of the wait queue when every candidate is at
    /// its cap (or others already wait: first come, first served).
    fn route_or_park(&mut self, excluded: Vec<String>) -> Parked {
        self.serve_queue();
        if self.queue.len() == 0 {
            match self.route(&excluded) {
                Err(RouteError::AllFull) => {}
                other => return Parked::Now(other),
            }
        }
        if self.table.policy().queue_timeout.is_zero() {
            return Parked::Now(Err(RouteError::AllFull));
        }
        match self.queue.push(excluded) {
            Some(rx) => {
                metrics::counter!("switchyard_route_queue_waits_total").increment(1);
                self.queue_gauge();
                Parked::Waiting(rx)
            }
            None => {
                warn!("route wait queue full; refusing the route");
                Parked::Now(Err(RouteError::QueueFull))
            }
        }
    }

    /// Hands routes to parked waiters, front first, while backends have room.
    fn serve_queue(&mut self) {
        let table = &mut self.table;
        let mut taken_back = Vec::new();
        let served = self.queue.serve(
            |excluded| table.route(excluded, Instant::now()),
            |inst| taken_back.push(inst),
        );
        for inst in taken_back {
            self.table.conn_created(inst.addr(), None);
        }
        if served > 0 {
            debug!(served, "parked routes served");
            self.queue_gauge();
        }
    }

    fn queue_gauge(&mut self) {
        metrics::gauge!("switchyard_route_queue_length").set(self.queue.len() as f64);
    }

    /// After a message that may have made room: checks the tables, then serves the queue.
    fn changed(&mut self) {
        self.check();
        self.serve_queue();
    }

    /// Checks that the indexes and counters agree with the connection table.
    pub fn debug_assert_invariants(&self) -> Result<(), InvariantError> {
        self.table.check_invariants()
    }

    /// In a debug build, panics when a message left the tables inconsistent (skipped on very
    /// large tables, where the full check would dominate).
    fn check(&self) {
        #[cfg(debug_assertions)]
        if self.table.conn_count() <= 20_000 {
            if let Err(e) = self.table.check_invariants() {
                panic!("router invariant broken: {e}");
            }
        }
    }
}

impl Drop for ScoreRouter {
    fn drop(&mut self) {
        if let Some(link) = self.observer.take() {
            link.stop.do_send(StopObserver);
        }
    }
}

impl Actor for ScoreRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let cfg = self.table.config();
        if !cfg.rebalance_interval.is_zero() {
            let max = cfg.conns_per_tick;
            ctx.run_interval(cfg.rebalance_interval, move |act, _| {
                act.table.rebalance(max, Instant::now());
            });
        }
    }
}

impl Supervised for ScoreRouter {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        warn!(
            backends = self.table.backend_count(),
            conns = self.table.conn_count(),
            "router restarting; keeping its tables and asking for a refresh"
        );
        self.refresh_observer();
    }
}

/// A route answered at once, or parked in the wait queue.
enum Parked {
    Now(Result<BackendInst, RouteError>),
    Waiting(tokio::sync::oneshot::Receiver<queue::Answer>),
}

/// Answers at once, or (every candidate at its cap) once a backend has room, in arrival order,
/// or with `QueueTimeout` after `queue_timeout`. Waiting never blocks the router's mailbox.
impl Handler<Route> for ScoreRouter {
    type Result = ActorResponse<Self, Result<BackendInst, RouteError>>;
    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        let parked = self.route_or_park(msg.excluded);
        self.check();
        let rx = match parked {
            // the common case: answered in place, no future boxed
            Parked::Now(r) => return ActorResponse::reply(r),
            Parked::Waiting(rx) => rx,
        };
        let timeout = self.table.policy().queue_timeout;
        ActorResponse::r#async(
            async move { tokio::time::timeout(timeout, rx).await }
                .into_actor(self)
                .map(move |r, act, _| match r {
                    Ok(Ok(answer)) => answer,
                    Ok(Err(_)) => Err(RouteError::RouterGone),
                    Err(_) => {
                        metrics::counter!("switchyard_route_queue_timeouts_total").increment(1);
                        act.queue_gauge();
                        warn!(waited = ?timeout, "no backend had room within queue_timeout; refusing the route");
                        Err(RouteError::QueueTimeout(timeout))
                    }
                }),
        )
    }
}

impl Handler<ConnCreated> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: ConnCreated, _: &mut Context<Self>) {
        self.table.conn_created(&msg.backend, msg.conn);
        self.changed();
    }
}

impl Handler<RedirectSucceeded> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: RedirectSucceeded, _: &mut Context<Self>) {
        self.table
            .redirect_succeeded(&msg.from, &msg.to, msg.conn_id, Instant::now());
        self.changed();
    }
}

impl Handler<RedirectFailed> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: RedirectFailed, _: &mut Context<Self>) {
        self.table
            .redirect_failed(&msg.from, &msg.to, msg.conn_id, Instant::now());
        self.changed();
    }
}

impl Handler<ConnClosed> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: ConnClosed, _: &mut Context<Self>) {
        self.table.conn_closed(&msg.addr, msg.conn_id);
        self.changed();
    }
}

impl Handler<BackendsChanged> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: BackendsChanged, _: &mut Context<Self>) {
        self.backends_changed(msg);
        self.changed();
    }
}

impl Handler<BackendsListed> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: BackendsListed, _: &mut Context<Self>) {
        self.table.set_listing(msg.backends, Instant::now());
        self.changed();
    }
}

/// Passive outlier detection: the backend leaves the routes now, and the observer checks it now.
impl Handler<BackendSuspect> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: BackendSuspect, _: &mut Context<Self>) {
        if self.table.backend_suspect(&msg.addr, &msg.reason) {
            self.refresh_observer();
        }
        self.check();
    }
}

impl Handler<RefreshBackends> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, _: RefreshBackends, _: &mut Context<Self>) {
        self.refresh_observer();
    }
}

impl Handler<RedirectConnections> for ScoreRouter {
    type Result = Result<(), RouterError>;
    fn handle(&mut self, _: RedirectConnections, _: &mut Context<Self>) -> Self::Result {
        self.table.redirect_all(Instant::now());
        self.check();
        Ok(())
    }
}

impl Handler<PeerLoad> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: PeerLoad, _: &mut Context<Self>) {
        self.table.set_peer_load(msg.conns);
    }
}

impl Handler<Rebalance> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: Rebalance, _: &mut Context<Self>) {
        self.table.rebalance(msg.max_conns, Instant::now());
        self.check();
    }
}

impl Handler<ConnCount> for ScoreRouter {
    type Result = usize;
    fn handle(&mut self, _: ConnCount, _: &mut Context<Self>) -> usize {
        self.table.conn_count()
    }
}

impl Handler<ServerVersion> for ScoreRouter {
    type Result = String;
    fn handle(&mut self, _: ServerVersion, _: &mut Context<Self>) -> String {
        self.table.server_version().to_string()
    }
}

impl Handler<GetBackends> for ScoreRouter {
    type Result = Vec<BackendSnapshot>;
    fn handle(&mut self, _: GetBackends, _: &mut Context<Self>) -> Self::Result {
        self.table.snapshots()
    }
}

impl Handler<GetDrained> for ScoreRouter {
    type Result = Vec<String>;
    fn handle(&mut self, _: GetDrained, _: &mut Context<Self>) -> Self::Result {
        self.table.drained()
    }
}

impl Handler<SetDrained> for ScoreRouter {
    type Result = Result<(), RouterError>;
    fn handle(&mut self, msg: SetDrained, _: &mut Context<Self>) -> Self::Result {
        let r = self.table.set_drained(&msg.addr, msg.drained);
        if r.is_ok() {
            // a plain drain or undrain cancels a pending close
            self.drain_timers.remove(&msg.addr);
        }
        self.changed();
        r
    }
}

impl Handler<DrainThenClose> for ScoreRouter {
    type Result = Result<(), RouterError>;
    fn handle(&mut self, msg: DrainThenClose, ctx: &mut Context<Self>) -> Self::Result {
        self.table.set_drained(&msg.addr, true)?;
        self.next_drain_timer += 1;
        let number = self.next_drain_timer;
        self.drain_timers.insert(msg.addr.clone(), number);
        info!(backend = %msg.addr, timeout = ?msg.timeout, "draining; what has not moved by then will be closed");
        let addr = msg.addr;
        ctx.run_later(msg.timeout, move |act, _| {
            if act.drain_timers.get(&addr) != Some(&number) || !act.table.is_drained(&addr) {
                return;
            }
            act.drain_timers.remove(&addr);
            let closed = act
                .table
                .close_conns_on(&addr, "backend drained by the operator; drain timeout passed");
            warn!(backend = %addr, closed, "drain timeout passed; closing the connections still on the backend");
            act.changed();
        });
        self.changed();
        Ok(())
    }
}

impl Handler<GetRouting> for ScoreRouter {
    type Result = MessageResult<GetRouting>;
    fn handle(&mut self, _: GetRouting, _: &mut Context<Self>) -> Self::Result {
        MessageResult(RoutingState {
            panic: self.table.panic(),
            queue_len: self.queue.len(),
            backends: self
                .table
                .weights()
                .into_iter()
                .map(
                    |(addr, weight, effective_weight, occupancy)| BackendWeight {
                        addr,
                        weight,
                        effective_weight,
                        occupancy,
                    },
                )
                .collect(),
        })
    }
}

/// Stops the router's observer (no more health checks or discovery) while the router keeps
/// serving on its last view: the service's first step of a graceful shutdown.
impl Handler<StopObserver> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, _: StopObserver, _: &mut Context<Self>) {
        if let Some(link) = self.observer.take() {
            link.stop.do_send(StopObserver);
            info!("observer stopped; routing on the last known backends");
        }
    }
}

/// Forwards to the observer: every backend it saw last cycle (empty without an observer, or once
/// it is stopped).
impl Handler<GetObserved> for ScoreRouter {
    type Result = ResponseFuture<HashMap<String, BackendHealth>>;
    fn handle(&mut self, _: GetObserved, _: &mut Context<Self>) -> Self::Result {
        let observed = self.observer.as_ref().map(|l| l.observed.clone());
        Box::pin(async move {
            match observed {
                Some(r) => r.send(GetObserved).await.unwrap_or_default(),
                None => HashMap::new(),
            }
        })
    }
}

impl Handler<StopRouter> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, _: StopRouter, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<CheckInvariants> for ScoreRouter {
    type Result = Result<(), InvariantError>;
    fn handle(&mut self, _: CheckInvariants, _: &mut Context<Self>) -> Self::Result {
        self.table.check_invariants()
    }
}
