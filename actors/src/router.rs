//! `ScoreRouter`: the actor that owns the backend table and every connection's place in it.
//!
//! Inbound: routes ([`Route`], [`ConnCreated`]), connection events ([`RedirectSucceeded`],
//! [`RedirectFailed`], [`ConnClosed`]), observer reports ([`BackendsChanged`]) and operator
//! requests ([`SetDrained`], [`Rebalance`], [`RedirectConnections`], queries). Outbound:
//! [`Redirect`] to connections and [`Refresh`] to its observer.
//!
//! Backends are kept in two ordered sets keyed by score, so a route is the first entry of one set
//! and a rebalance step reads the ends of both: O(log n) in the number of backends, where the
//! reference router walks a linked list. Nothing is behind a lock: the actor is the only owner.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::conn::ConnHandle;
use crate::discovery::BackendFetcher;
use crate::error::{ObserveError, RouteError, RouterError};
use crate::health::{HealthCheck, HealthCheckConfig};
use crate::model::{BackendHealth, BackendInst, BackendSnapshot, BackendStatus};
use crate::observer::{BackendObserver, GetObserved, Refresh, StopObserver};

/// Tuning of routing and rebalancing.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Period of the rebalance tick; zero turns the tick off (tests then send [`Rebalance`]).
    pub rebalance_interval: Duration,
    /// Connections asked to move per tick: bounds the churn one tick can cause.
    pub conns_per_tick: usize,
    /// Rebalance only while busiest / (idlest + 1) is at least this.
    pub max_score_ratio: f64,
    /// A connection whose redirect failed is not asked again for this long.
    pub redirect_fail_backoff: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            rebalance_interval: Duration::from_millis(10),
            conns_per_tick: 10,
            max_score_ratio: 1.2,
            redirect_fail_backoff: Duration::from_secs(3),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Messages
// ---------------------------------------------------------------------------------------------

/// Pick a backend for a new connection, skipping `excluded` (addresses already tried).
///
/// The chosen backend's conn score is raised by one at once, so routes that arrive before any
/// connection finishes still spread out; [`ConnCreated`] settles it.
#[derive(Debug, Clone, Default, Message)]
#[rtype(result = "Result<BackendInst, RouteError>")]
pub struct Route {
    /// Addresses not to return.
    pub excluded: Vec<String>,
}

/// The outcome of a route: `Some` = connected and registered, `None` = the connect failed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ConnCreated {
    /// The backend the route returned.
    pub backend: String,
    /// The new connection, or `None` when connecting failed.
    pub conn: Option<ConnHandle>,
}

/// A connection finished moving from `from` to `to`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RedirectSucceeded {
    /// Where it was.
    pub from: String,
    /// Where it is now.
    pub to: String,
    /// Its id.
    pub conn_id: u64,
}

/// A connection could not move and stays on `from`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RedirectFailed {
    /// Where it stays.
    pub from: String,
    /// Where it was asked to go.
    pub to: String,
    /// Its id.
    pub conn_id: u64,
}

/// A connection ended (possibly mid-redirect).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ConnClosed {
    /// The backend it was on.
    pub addr: String,
    /// Its id.
    pub conn_id: u64,
}

/// The observer's report: backends whose health changed, or why discovery failed.
#[derive(Debug, Clone, Default, Message)]
#[rtype(result = "()")]
pub struct BackendsChanged {
    /// Changed backends and their new health (only changes; an empty map is "no change").
    pub backends: HashMap<String, BackendHealth>,
    /// Set when the cycle failed; routes are refused with it until a later cycle succeeds.
    pub error: Option<ObserveError>,
}

/// Ask the observer for a cycle now.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct RefreshBackends;

/// Ask every connection to redirect to the backend it is on (a testing aid: exercises the whole
/// move path without changing the balance).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), RouterError>")]
pub struct RedirectConnections;

/// Run one rebalance step now, moving at most `max_conns` connections.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Rebalance {
    /// Upper bound of connections asked to move.
    pub max_conns: usize,
}

/// Number of registered connections.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "usize")]
pub struct ConnCount;

/// The server version last announced by a healthy backend (empty when none yet).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "String")]
pub struct ServerVersion;

/// Every backend, ascending by score.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<BackendSnapshot>")]
pub struct GetBackends;

/// Addresses of the backends an operator drained, sorted.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<String>")]
pub struct GetDrained;

/// Drain (`true`) or undrain (`false`) a backend. A drained backend gets no new routes and its
/// connections are moved off by rebalance; it is kept while drained even if down and empty.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), RouterError>")]
pub struct SetDrained {
    /// The backend's SQL address.
    pub addr: String,
    /// Drain or undrain.
    pub drained: bool,
}

/// Stop the router. Under an [`actix::Supervisor`] it restarts with its tables intact;
/// otherwise it stops for good and stops its observer.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct StopRouter;

/// Check the router's internal invariants; `Err` describes the first broken one.
/// Tests send it after every step.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), String>")]
pub struct CheckInvariants;

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

type Name = Arc<str>;

/// Where a connection is in the redirect lifecycle.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Settled on its backend.
    Steady,
    /// Asked to move to `to`; its point of conn score already counts there.
    Redirecting { to: Name },
    /// Its last redirect failed at `at`; not asked again before the back-off.
    Failed { at: Instant },
}

#[derive(Debug)]
struct Conn {
    handle: ConnHandle,
    backend: Name,
    /// Arrival order on its backend: the smallest is the longest resident.
    seq: u64,
    phase: Phase,
}

#[derive(Debug)]
struct Backend {
    name: Name,
    /// Its number in the score index.
    slot: u32,
    inst: BackendInst,
    health: BackendHealth,
    drained: bool,
    /// Registered connections by arrival: `seq -> conn id`.
    conns: BTreeMap<u64, u64>,
    /// Routes handed out and not yet finished.
    pending: i64,
    /// Redirects heading here.
    incoming: i64,
    /// Redirects leaving from here.
    outgoing: i64,
}

impl Backend {
    fn new(name: Name, slot: u32, health: BackendHealth) -> Self {
        Self {
            slot,
            inst: BackendInst::new(name.to_string(), health.status.routable()),
            name,
            health,
            drained: false,
            conns: BTreeMap::new(),
            pending: 0,
            incoming: 0,
            outgoing: 0,
        }
    }

    /// conn score = connections + pending routes + incoming redirects − outgoing redirects.
    fn conn_score(&self) -> i64 {
        self.conns.len() as i64 + self.pending + self.incoming - self.outgoing
    }

    fn score(&self) -> i64 {
        self.health.status.score() + self.conn_score()
    }

    fn routable(&self) -> bool {
        self.health.status.routable() && !self.drained
    }

    /// Down, empty and not held by an operator: nothing refers to it any more.
    fn droppable(&self) -> bool {
        self.health.status == BackendStatus::CannotConnect
            && !self.drained
            && self.conns.is_empty()
            && self.conn_score() <= 0
            && self.pending == 0
            && self.incoming == 0
    }

    fn snapshot(&self) -> BackendSnapshot {
        BackendSnapshot {
            addr: self.name.to_string(),
            health: self.health.clone(),
            score: self.score(),
            conn_count: self.conns.len(),
            conn_score: self.conn_score(),
        }
    }
}

/// The two orderings of backends, kept in step with their scores.
///
/// Keys hold a backend's slot number, not its name: every route and release rewrites keys, and
/// with connections spread evenly scores tie, so the key compare must be cheap.
#[derive(Debug, Default)]
struct ScoreIndex {
    /// Backends that may receive routes, ascending score: the first is the idlest.
    routable: BTreeSet<(i64, u32)>,
    /// Backends with connections, ascending (drained, score): the last is the busiest; a drained
    /// backend sorts above every other so its connections move first.
    loaded: BTreeSet<(bool, i64, u32)>,
    /// Slot number → backend name.
    names: Vec<Option<Name>>,
    /// Slots of dropped backends, for reuse.
    free: Vec<u32>,
}

impl ScoreIndex {
    fn remove(&mut self, b: &Backend) {
        let score = b.score();
        if b.routable() {
            self.routable.remove(&(score, b.slot));
        }
        if !b.conns.is_empty() {
            self.loaded.remove(&(b.drained, score, b.slot));
        }
    }

    fn insert(&mut self, b: &Backend) {
        let score = b.score();
        if b.routable() {
            self.routable.insert((score, b.slot));
        }
        if !b.conns.is_empty() {
            self.loaded.insert((b.drained, score, b.slot));
        }
    }

    /// A slot number for a new backend.
    fn allocate(&mut self, name: Name) -> u32 {
        match self.free.pop() {
            Some(slot) => {
                self.names[slot as usize] = Some(name);
                slot
            }
            None => {
                self.names.push(Some(name));
                (self.names.len() - 1) as u32
            }
        }
    }

    fn release(&mut self, slot: u32) {
        self.names[slot as usize] = None;
        self.free.push(slot);
    }

    fn name(&self, slot: u32) -> &Name {
        self.names[slot as usize]
            .as_ref()
            .expect("indexed slot has a backend")
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
    cfg: RouterConfig,
    backends: HashMap<Name, Backend>,
    index: ScoreIndex,
    conns: HashMap<u64, Conn>,
    next_seq: u64,
    observe_error: Option<ObserveError>,
    server_version: String,
    observer: Option<ObserverLink>,
}

impl ScoreRouter {
    /// A router with no observer: feed it [`BackendsChanged`] yourself.
    pub fn new(cfg: RouterConfig) -> ScoreRouter {
        ScoreRouter {
            cfg,
            backends: HashMap::new(),
            index: ScoreIndex::default(),
            conns: HashMap::new(),
            next_seq: 0,
            observe_error: None,
            server_version: String::new(),
            observer: None,
        }
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
        let observer = BackendObserver::new(fetcher, health_check, health, receiver).start();
        let mut router = ScoreRouter::new(cfg);
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

    /// Applies `f` to a backend, keeping the score index in step.
    fn update<R>(&mut self, name: &str, f: impl FnOnce(&mut Backend) -> R) -> Option<R> {
        let b = self.backends.get_mut(name)?;
        self.index.remove(b);
        let r = f(b);
        self.index.insert(b);
        Some(r)
    }

    /// The backend's interned name, creating it as down (with a warning) when unknown, so the
    /// accounting of an event about it still holds.
    fn name_or_create_down(&mut self, addr: &str, event: &'static str) -> Name {
        if let Some((name, _)) = self.backends.get_key_value(addr) {
            return name.clone();
        }
        warn!(backend = %addr, event, "event names an unknown backend; adding it as down");
        let name: Name = Arc::from(addr);
        let slot = self.index.allocate(name.clone());
        let b = Backend::new(
            name.clone(),
            slot,
            BackendHealth::down("not reported by the observer"),
        );
        self.index.insert(&b);
        self.backends.insert(name.clone(), b);
        name
    }

    fn drop_if_empty(&mut self, name: &str) {
        if self.backends.get(name).is_some_and(Backend::droppable) {
            if let Some(b) = self.backends.remove(name) {
                self.index.remove(&b);
                self.index.release(b.slot);
                info!(backend = %name, "backend removed");
            }
        }
    }

    /// The synchronous core of [`Route`]: what the handler does, callable on a router that is
    /// not running as an actor (an application that owns it some other way, or a benchmark
    /// that puts this very scoring behind a lock to price the actor's messaging).
    pub fn route(&mut self, excluded: &[String]) -> Result<BackendInst, RouteError> {
        if let Some(err) = &self.observe_error {
            return Err(err.clone().into());
        }
        let index = &self.index;
        let chosen = index
            .routable
            .iter()
            .map(|(_, slot)| index.name(*slot))
            .find(|name| !excluded.iter().any(|e| e.as_str() == &***name))
            .cloned();
        let Some(name) = chosen else {
            debug!(
                excluded = excluded.len(),
                "no routable backend; asking for a refresh"
            );
            self.refresh_observer();
            return Err(RouteError::NoBackend);
        };
        let inst = self.update(&name, |b| {
            b.pending += 1;
            b.inst.clone()
        });
        inst.ok_or(RouteError::NoBackend)
    }

    /// The synchronous core of [`ConnCreated`] (see [`ScoreRouter::route`]).
    pub fn conn_created(&mut self, backend: &str, conn: Option<ConnHandle>) {
        let name = self.name_or_create_down(backend, "conn created");
        match conn {
            Some(handle) => {
                let id = handle.id();
                if let Some(old) = self.conns.get(&id) {
                    warn!(conn_id = id, backend = %old.backend, "connection id registered twice; replacing it");
                    self.forget_conn(id);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                self.update(&name, |b| {
                    if b.pending > 0 {
                        b.pending -= 1;
                    } else {
                        warn!(backend = %b.name, conn_id = id, "connection registered without a route");
                    }
                    b.conns.insert(seq, id);
                });
                self.conns.insert(
                    id,
                    Conn {
                        handle,
                        backend: name,
                        seq,
                        phase: Phase::Steady,
                    },
                );
                debug!(backend = %backend, conn_id = id, "connection registered");
            }
            None => {
                self.update(&name, |b| {
                    if b.pending > 0 {
                        b.pending -= 1;
                    } else {
                        warn!(backend = %b.name, "failed route reported without a route");
                    }
                });
                self.drop_if_empty(&name);
            }
        }
    }

    /// Removes a connection from the tables, undoing its redirect's point on the target.
    fn forget_conn(&mut self, id: u64) -> Option<Conn> {
        let conn = self.conns.remove(&id)?;
        let redirecting_to = match &conn.phase {
            Phase::Redirecting { to } => Some(to.clone()),
            _ => None,
        };
        self.update(&conn.backend, |b| {
            b.conns.remove(&conn.seq);
            if redirecting_to.is_some() {
                b.outgoing -= 1;
            }
        });
        if let Some(to) = &redirecting_to {
            self.update(to, |b| b.incoming -= 1);
            self.drop_if_empty(to);
        }
        self.drop_if_empty(&conn.backend);
        Some(conn)
    }

    fn conn_closed(&mut self, addr: &str, id: u64) {
        match self.forget_conn(id) {
            Some(conn) => {
                if &*conn.backend != addr {
                    warn!(conn_id = id, reported = %addr, known = %conn.backend, "connection closed on a backend other than the one it was registered on");
                }
                debug!(backend = %conn.backend, conn_id = id, "connection closed");
            }
            None => warn!(backend = %addr, conn_id = id, "close of an unknown connection"),
        }
    }

    /// The target of a connection's redirect in flight, if `id` is mid-redirect.
    fn redirect_target(&self, id: u64, event: &str) -> Option<(Name, Name)> {
        let Some(conn) = self.conns.get(&id) else {
            warn!(
                conn_id = id,
                event, "redirect result for an unknown connection"
            );
            return None;
        };
        match &conn.phase {
            Phase::Redirecting { to } => Some((conn.backend.clone(), to.clone())),
            _ => {
                warn!(
                    conn_id = id,
                    event, "redirect result for a connection not redirecting"
                );
                None
            }
        }
    }

    fn redirect_succeeded(&mut self, from: &str, to: &str, id: u64) {
        let Some((known_from, known_to)) = self.redirect_target(id, "succeeded") else {
            return;
        };
        if &*known_from != from || &*known_to != to {
            warn!(conn_id = id, from, to, %known_from, %known_to, "redirect result disagrees with the router; trusting the router");
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let old_seq = conn.seq;
        conn.seq = seq;
        conn.backend = known_to.clone();
        conn.phase = Phase::Steady;
        self.update(&known_from, |b| {
            b.conns.remove(&old_seq);
            b.outgoing -= 1;
        });
        self.update(&known_to, |b| {
            b.incoming -= 1;
            b.conns.insert(seq, id);
        });
        info!(conn_id = id, from = %known_from, to = %known_to, "connection moved");
        self.drop_if_empty(&known_from);
    }

    fn redirect_failed(&mut self, from: &str, to: &str, id: u64) {
        let Some((known_from, known_to)) = self.redirect_target(id, "failed") else {
            return;
        };
        if &*known_from != from || &*known_to != to {
            warn!(conn_id = id, from, to, %known_from, %known_to, "redirect result disagrees with the router; trusting the router");
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.phase = Phase::Failed { at: Instant::now() };
        }
        self.update(&known_from, |b| b.outgoing -= 1);
        self.update(&known_to, |b| b.incoming -= 1);
        info!(conn_id = id, from = %known_from, to = %known_to, "connection could not move; backing off");
        self.drop_if_empty(&known_to);
    }

    /// The synchronous core of [`BackendsChanged`] (see [`ScoreRouter::route`]).
    pub fn backends_changed(&mut self, msg: BackendsChanged) {
        if let Some(err) = msg.error {
            if self.observe_error.as_ref() != Some(&err) {
                warn!(error = %err, "backend discovery failed; refusing new routes until it recovers");
            }
            self.observe_error = Some(err);
            return;
        }
        if self.observe_error.take().is_some() {
            info!("backend discovery recovered");
        }
        for (addr, health) in msg.backends {
            if health.status == BackendStatus::Healthy && !health.server_version.is_empty() {
                self.server_version = health.server_version.clone();
            }
            if let Some((name, _)) = self.backends.get_key_value(addr.as_str()) {
                let name = name.clone();
                self.update(&name, |b| {
                    if b.health.status != health.status {
                        info!(backend = %b.name, from = %b.health.status, to = %health.status,
                              reason = health.ping_err.as_deref().unwrap_or(""), "backend status changed");
                    }
                    b.inst.set_healthy(health.status.routable());
                    b.health = health;
                });
                self.drop_if_empty(&name);
            } else if health.status != BackendStatus::CannotConnect {
                info!(backend = %addr, status = %health.status, "backend added");
                let name: Name = Arc::from(addr.as_str());
                let slot = self.index.allocate(name.clone());
                let b = Backend::new(name.clone(), slot, health);
                self.index.insert(&b);
                self.backends.insert(name, b);
            }
        }
    }

    /// Asks `id` to move to `to`, moving one point of conn score with it.
    fn redirect_conn(&mut self, id: u64, to: &Name, now: Instant) {
        let Some(inst) = self.backends.get(to).map(|b| b.inst.clone()) else {
            return;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let from = conn.backend.clone();
        if conn.handle.try_redirect(inst) {
            conn.phase = Phase::Redirecting { to: to.clone() };
            self.update(&from, |b| b.outgoing += 1);
            self.update(to, |b| b.incoming += 1);
            debug!(conn_id = id, from = %from, to = %to, "redirect requested");
        } else {
            // The connection is gone or swamped: treat as a failed redirect; its close will follow.
            conn.phase = Phase::Failed { at: now };
            debug!(conn_id = id, from = %from, "connection did not take the redirect");
        }
    }

    /// One rebalance step: up to `max_conns` moves from the busiest to the idlest backend.
    fn rebalance(&mut self, max_conns: usize) {
        let now = Instant::now();
        for _ in 0..max_conns {
            let Some(&(drained, busy_score, busy_slot)) = self.index.loaded.last() else {
                break;
            };
            let Some(&(idle_score, idle_slot)) = self.index.routable.first() else {
                break;
            };
            if busy_slot == idle_slot {
                break;
            }
            let busiest = self.index.name(busy_slot).clone();
            let idlest = self.index.name(idle_slot).clone();
            if !drained
                && (busy_score as f64) / ((idle_score + 1) as f64) < self.cfg.max_score_ratio
            {
                break;
            }
            let backoff = self.cfg.redirect_fail_backoff;
            let Some(b) = self.backends.get(&busiest) else {
                break;
            };
            let candidate = b.conns.values().copied().find(|id| {
                self.conns.get(id).is_some_and(|c| match c.phase {
                    Phase::Steady => true,
                    Phase::Redirecting { .. } => false,
                    Phase::Failed { at } => at + backoff <= now,
                })
            });
            let Some(id) = candidate else {
                break;
            };
            debug!(from = %busiest, to = %idlest, busy_score, idle_score, conn_id = id, "rebalance");
            self.redirect_conn(id, &idlest, now);
        }
    }

    fn redirect_all(&mut self) {
        let now = Instant::now();
        let targets: Vec<(u64, Name)> = self
            .conns
            .iter()
            .filter(|(_, c)| !matches!(c.phase, Phase::Redirecting { .. }))
            .map(|(id, c)| (*id, c.backend.clone()))
            .collect();
        for (id, backend) in targets {
            self.redirect_conn(id, &backend, now);
        }
    }

    fn set_drained(&mut self, addr: &str, drained: bool) -> Result<(), RouterError> {
        let changed = self
            .update(addr, |b| {
                std::mem::replace(&mut b.drained, drained) != drained
            })
            .ok_or_else(|| RouterError::UnknownBackend(addr.to_string()))?;
        if changed {
            info!(backend = %addr, drained, "backend drain changed");
        }
        self.drop_if_empty(addr);
        Ok(())
    }

    /// Checks that the indexes and counters agree with the connection table.
    pub fn debug_assert_invariants(&self) -> Result<(), String> {
        let mut incoming: HashMap<&str, i64> = HashMap::new();
        let mut outgoing: HashMap<&str, i64> = HashMap::new();
        for (id, c) in &self.conns {
            let b = self
                .backends
                .get(&c.backend)
                .ok_or_else(|| format!("conn {id} on unknown backend {}", c.backend))?;
            if b.conns.get(&c.seq) != Some(id) {
                return Err(format!("conn {id} missing from backend {}", c.backend));
            }
            if let Phase::Redirecting { to } = &c.phase {
                if !self.backends.contains_key(to) {
                    return Err(format!("conn {id} redirecting to unknown backend {to}"));
                }
                *incoming.entry(to).or_default() += 1;
                *outgoing.entry(&c.backend).or_default() += 1;
            }
        }
        let mut routable = BTreeSet::new();
        let mut loaded = BTreeSet::new();
        let mut listed = 0;
        for (name, b) in &self.backends {
            listed += b.conns.len();
            if b.pending < 0 {
                return Err(format!("backend {name}: pending {} < 0", b.pending));
            }
            let (i, o) = (
                incoming.get(&**name).copied().unwrap_or(0),
                outgoing.get(&**name).copied().unwrap_or(0),
            );
            if b.incoming != i || b.outgoing != o {
                return Err(format!(
                    "backend {name}: incoming/outgoing {}/{} but connections say {i}/{o}",
                    b.incoming, b.outgoing
                ));
            }
            if b.inst.healthy() != b.health.status.routable() {
                return Err(format!("backend {name}: handle health out of step"));
            }
            let score = b.score();
            if self
                .index
                .names
                .get(b.slot as usize)
                .and_then(Option::as_ref)
                != Some(name)
            {
                return Err(format!("backend {name}: slot {} names another", b.slot));
            }
            if b.routable() {
                routable.insert((score, b.slot));
            }
            if !b.conns.is_empty() {
                loaded.insert((b.drained, score, b.slot));
            }
        }
        if listed != self.conns.len() {
            return Err(format!(
                "{listed} connections listed on backends, {} registered",
                self.conns.len()
            ));
        }
        if routable != self.index.routable || loaded != self.index.loaded {
            return Err("score index out of step with the backends".into());
        }
        Ok(())
    }

    fn check(&self) {
        #[cfg(debug_assertions)]
        if self.conns.len() <= 20_000 {
            if let Err(e) = self.debug_assert_invariants() {
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
        if !self.cfg.rebalance_interval.is_zero() {
            let max = self.cfg.conns_per_tick;
            ctx.run_interval(self.cfg.rebalance_interval, move |act, _| {
                act.rebalance(max);
            });
        }
    }
}

impl Supervised for ScoreRouter {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        warn!(
            backends = self.backends.len(),
            conns = self.conns.len(),
            "router restarting; keeping its tables and asking for a refresh"
        );
        self.refresh_observer();
    }
}

impl Handler<Route> for ScoreRouter {
    type Result = Result<BackendInst, RouteError>;
    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        let r = self.route(&msg.excluded);
        self.check();
        r
    }
}

impl Handler<ConnCreated> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: ConnCreated, _: &mut Context<Self>) {
        self.conn_created(&msg.backend, msg.conn);
        self.check();
    }
}

impl Handler<RedirectSucceeded> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: RedirectSucceeded, _: &mut Context<Self>) {
        self.redirect_succeeded(&msg.from, &msg.to, msg.conn_id);
        self.check();
    }
}

impl Handler<RedirectFailed> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: RedirectFailed, _: &mut Context<Self>) {
        self.redirect_failed(&msg.from, &msg.to, msg.conn_id);
        self.check();
    }
}

impl Handler<ConnClosed> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: ConnClosed, _: &mut Context<Self>) {
        self.conn_closed(&msg.addr, msg.conn_id);
        self.check();
    }
}

impl Handler<BackendsChanged> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: BackendsChanged, _: &mut Context<Self>) {
        self.backends_changed(msg);
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
        self.redirect_all();
        self.check();
        Ok(())
    }
}

impl Handler<Rebalance> for ScoreRouter {
    type Result = ();
    fn handle(&mut self, msg: Rebalance, _: &mut Context<Self>) {
        self.rebalance(msg.max_conns);
        self.check();
    }
}

impl Handler<ConnCount> for ScoreRouter {
    type Result = usize;
    fn handle(&mut self, _: ConnCount, _: &mut Context<Self>) -> usize {
        self.conns.len()
    }
}

impl Handler<ServerVersion> for ScoreRouter {
    type Result = String;
    fn handle(&mut self, _: ServerVersion, _: &mut Context<Self>) -> String {
        self.server_version.clone()
    }
}

impl Handler<GetBackends> for ScoreRouter {
    type Result = Vec<BackendSnapshot>;
    fn handle(&mut self, _: GetBackends, _: &mut Context<Self>) -> Self::Result {
        let mut all: Vec<BackendSnapshot> = self.backends.values().map(Backend::snapshot).collect();
        all.sort_by(|a, b| a.score.cmp(&b.score).then_with(|| a.addr.cmp(&b.addr)));
        all
    }
}

impl Handler<GetDrained> for ScoreRouter {
    type Result = Vec<String>;
    fn handle(&mut self, _: GetDrained, _: &mut Context<Self>) -> Self::Result {
        let mut drained: Vec<String> = self
            .backends
            .values()
            .filter(|b| b.drained)
            .map(|b| b.name.to_string())
            .collect();
        drained.sort();
        drained
    }
}

impl Handler<SetDrained> for ScoreRouter {
    type Result = Result<(), RouterError>;
    fn handle(&mut self, msg: SetDrained, _: &mut Context<Self>) -> Self::Result {
        let r = self.set_drained(&msg.addr, msg.drained);
        self.check();
        r
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
    type Result = Result<(), String>;
    fn handle(&mut self, _: CheckInvariants, _: &mut Context<Self>) -> Self::Result {
        self.debug_assert_invariants()
    }
}
