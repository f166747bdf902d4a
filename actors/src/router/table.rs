//! `ScoreTable`: the router's state and every decision it makes, as a plain struct with no actix.
//!
//! It owns the backends (counters and score index), the connection table and the redirect
//! bookkeeping; the actor shell in `router` only turns messages into calls here. Connections are
//! reached through a [`ConnLink`] and time is passed in, so the table is tested directly, with no
//! actors and no clock.
//!
//! Backends are kept in two ordered sets keyed by score, so a route is the first entry of one set
//! and a rebalance step reads the ends of both: O(log n) in the number of backends, where the
//! reference router walks a linked list. The route path's helpers carry `#[inline]`: the table
//! sits in its own module, so without the hint they are not inlined into the actor's handlers
//! (measured: +2% instructions per route and release, back to parity with it).
//!
//! The operator's controls live here too, as plain rules ([`RoutePolicy`]): weights and the
//! slow-start ramp only change a backend's key, a backend at its cap leaves the routable
//! ordering, and panic mode (too few healthy backends) routes by a scan over every known one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::backend::{Backend, Name, ScoreIndex};
use super::config::RouterConfig;
use super::policy::RoutePolicy;
use crate::error::{ObserveError, RouteError, RouterError};
use crate::model::{BackendHealth, BackendInst, BackendSnapshot, BackendStatus};

/// What became of a redirect request handed to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// It is in the connection's mailbox; an answer will follow.
    Sent,
    /// The connection's mailbox is full: treated as a failed redirect, retried after back-off.
    Busy,
    /// The connection is gone (its actor stopped or panicked): no answer will ever come.
    Gone,
}

/// How the table reaches one registered connection.
pub(crate) trait ConnLink {
    /// The connection's id, unique among the connections of one table.
    fn id(&self) -> u64;
    /// Asks the connection to move to `to`, without waiting.
    fn redirect(&self, to: BackendInst) -> Delivery;
    /// Asks the connection to close (a drain's timeout passed), without waiting.
    fn close(&self, reason: &str) -> Delivery;
}

/// Where a connection is in the redirect lifecycle.
#[derive(Debug, Clone, PartialEq)]
enum Phase {
    /// Settled on its backend.
    Steady,
    /// Asked to move to `to`; its point of conn score already counts there. `rebalance`: a
    /// rebalance move off a healthy backend, after which the connection cools down (see
    /// `cooldown.rs`).
    Redirecting { to: Name, rebalance: bool },
    /// Its last redirect failed at `at`; not asked again before the back-off.
    Failed { at: Instant },
}

#[derive(Debug)]
struct Conn<C> {
    link: C,
    backend: Name,
    /// Arrival order on its backend: the smallest is the longest resident.
    seq: u64,
    phase: Phase,
    /// When a rebalance move (cooldown on) last landed it here: it is no rebalance candidate
    /// until that rebalance is over (`cooldown.rs`).
    rebalanced_at: Option<Instant>,
}

/// Every backend's score and every connection's place; see the module docs.
///
/// Invariant, checked by [`ScoreTable::check_invariants`]: a backend's conn score = its
/// connections + pending routes + redirects heading to it − redirects leaving it, and the score
/// index holds exactly the backends' current scores.
#[derive(Debug)]
pub(crate) struct ScoreTable<C> {
    cfg: RouterConfig,
    backends: HashMap<Name, Backend>,
    index: ScoreIndex,
    conns: HashMap<u64, Conn<C>>,
    next_seq: u64,
    observe_error: Option<ObserveError>,
    server_version: String,
    policy: RoutePolicy,
    /// The observer's full backend list with weights, once it sent one. Until then the table's
    /// own backends are the known ones (and weigh 1).
    listed: Option<HashMap<String, f64>>,
    /// Backends whose slow start has not finished (few: refreshed on every route).
    ramping: Vec<Name>,
    /// Fewer than `policy.panic_threshold` of the known backends are healthy.
    panic: bool,
    /// Other cluster instances' connections by backend (the last `PeerLoad`); empty alone.
    peers: HashMap<String, i64>,
    /// With peers: how many more connections this instance may still move off healthy
    /// backends on the current global view (`peers.rs`); `None` alone (no bound).
    peer_budget: Option<usize>,
    /// The peers' view changed since the last budget was granted.
    peer_view_new: bool,
    /// The routable backends when the last budget was granted.
    granted_routable: Vec<Name>,
    /// When a grant is due without a new view: once a cooldown running at the last grant has
    /// run to its limit and a whole cooldown has passed since that grant (`peers.rs`).
    regrant_at: Option<Instant>,
    /// Since when every rebalance step found the pool even (none wanted a move); `None` while
    /// it is uneven (`cooldown.rs`).
    even_since: Option<Instant>,
    /// Every rebalance move that landed up to this instant is over: the pool has looked even
    /// for a whole cooldown since (`cooldown.rs`).
    settled_through: Option<Instant>,
    /// Clean observer reports that end a suspicion they do not confirm (see
    /// [`ScoreTable::backend_suspect`]).
    suspect_reports: u32,
}

impl<C: ConnLink> ScoreTable<C> {
    /// An empty table: no backends, no connections.
    pub(crate) fn new(cfg: RouterConfig) -> Self {
        Self {
            cfg,
            backends: HashMap::new(),
            index: ScoreIndex::default(),
            conns: HashMap::new(),
            next_seq: 0,
            observe_error: None,
            server_version: String::new(),
            policy: RoutePolicy::default(),
            listed: None,
            ramping: Vec::new(),
            panic: false,
            peers: HashMap::new(),
            peer_budget: None,
            peer_view_new: false,
            granted_routable: Vec::new(),
            regrant_at: None,
            even_since: None,
            settled_through: None,
            suspect_reports: suspect::DEFAULT_SUSPECT_REPORTS,
        }
    }

    /// The tuning it was built with.
    pub(crate) fn config(&self) -> &RouterConfig {
        &self.cfg
    }

    /// Number of known backends.
    pub(crate) fn backend_count(&self) -> usize {
        self.backends.len()
    }

    /// Number of registered connections.
    pub(crate) fn conn_count(&self) -> usize {
        self.conns.len()
    }

    /// The server version last announced by a healthy backend (empty when none yet).
    pub(crate) fn server_version(&self) -> &str {
        &self.server_version
    }

    /// Every backend, ascending by score (then address).
    pub(crate) fn snapshots(&self) -> Vec<BackendSnapshot> {
        let mut all: Vec<BackendSnapshot> = self.backends.values().map(Backend::snapshot).collect();
        all.sort_by(|a, b| a.score.cmp(&b.score).then_with(|| a.addr.cmp(&b.addr)));
        all
    }

    /// Addresses of drained backends, sorted.
    pub(crate) fn drained(&self) -> Vec<String> {
        let mut drained: Vec<String> = self
            .backends
            .values()
            .filter(|b| b.drained)
            .map(|b| b.name.to_string())
            .collect();
        drained.sort();
        drained
    }

    /// Applies `f` to a backend, keeping the score index in step.
    #[inline]
    fn update<R>(&mut self, name: &str, f: impl FnOnce(&mut Backend) -> R) -> Option<R> {
        let b = self.backends.get_mut(name)?;
        self.index.remove(b);
        let r = f(b);
        self.index.insert(b);
        Some(r)
    }

    /// Adds a backend the table does not know yet.
    fn add_backend(&mut self, addr: &str, health: BackendHealth) -> Name {
        let name: Name = Arc::from(addr);
        let slot = self.index.allocate(name.clone());
        let weight = self.listed_weight(addr);
        let cap = self.policy.max_conns_per_backend as i64;
        let mut b = Backend::new(name.clone(), slot, health, weight, cap);
        b.peer = self.peers.get(addr).copied().unwrap_or(0);
        self.index.insert(&b);
        self.backends.insert(name.clone(), b);
        name
    }

    /// The backend's interned name, creating it as down (with a warning) when unknown, so the
    /// accounting of an event about it still holds.
    #[inline]
    fn name_or_create_down(&mut self, addr: &str, event: &'static str) -> Name {
        if let Some((name, _)) = self.backends.get_key_value(addr) {
            return name.clone();
        }
        warn!(backend = %addr, event, "event names an unknown backend; adding it as down");
        self.add_backend(addr, BackendHealth::down("not reported by the observer"))
    }

    #[inline]
    fn drop_if_empty(&mut self, name: &str) {
        if self.backends.get(name).is_some_and(Backend::droppable) {
            if let Some(b) = self.backends.remove(name) {
                self.index.remove(&b);
                self.index.release(b.slot);
                info!(backend = %name, "backend removed");
                self.update_panic();
            }
        }
    }

    /// The lowest-(weighted-)score routable backend not in `excluded`; its pending count goes
    /// up by one. In panic mode, the least-loaded known backend whatever its health.
    ///
    /// `AllFull` when candidates are left but all at their cap; `NoBackend` when none is left;
    /// the last discovery error while discovery is failing.
    #[inline]
    pub(crate) fn route(
        &mut self,
        excluded: &[String],
        now: Instant,
    ) -> Result<BackendInst, RouteError> {
        if let Some(err) = &self.observe_error {
            return Err(err.clone().into());
        }
        self.refresh_ramps(now);
        if self.panic {
            return self.route_panic(excluded);
        }
        let index = &self.index;
        let chosen = index
            .routable
            .iter()
            .map(|(_, slot)| index.name(*slot))
            .find(|name| !excluded.iter().any(|e| e.as_str() == &***name))
            .cloned();
        let Some(name) = chosen else {
            return Err(self.none_routable(excluded, |b| b.healthy() && !b.drained));
        };
        let inst = self.update(&name, |b| {
            b.pending += 1;
            b.inst.clone()
        });
        inst.ok_or(RouteError::NoBackend)
    }

    /// Settles a route on `backend`: registers `conn`, or takes back the pending point when the
    /// connect failed (`None`).
    #[inline]
    pub(crate) fn conn_created(&mut self, backend: &str, conn: Option<C>) {
        let name = self.name_or_create_down(backend, "conn created");
        match conn {
            Some(link) => {
                let id = link.id();
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
                        link,
                        backend: name,
                        seq,
                        phase: Phase::Steady,
                        rebalanced_at: None,
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
    fn forget_conn(&mut self, id: u64) -> Option<Conn<C>> {
        let conn = self.conns.remove(&id)?;
        let redirecting_to = match &conn.phase {
            Phase::Redirecting { to, .. } => Some(to.clone()),
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

    /// A connection ended: it leaves its backend, and a redirect in flight is undone.
    pub(crate) fn conn_closed(&mut self, addr: &str, id: u64) {
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

    /// The source and target of a connection's redirect in flight, if `id` is mid-redirect, and
    /// whether it is a rebalance move.
    fn redirect_target(&self, id: u64, event: &str) -> Option<(Name, Name, bool)> {
        let Some(conn) = self.conns.get(&id) else {
            warn!(
                conn_id = id,
                event, "redirect result for an unknown connection"
            );
            return None;
        };
        match &conn.phase {
            Phase::Redirecting { to, rebalance } => {
                Some((conn.backend.clone(), to.clone(), *rebalance))
            }
            _ => {
                warn!(
                    conn_id = id,
                    event, "redirect result for a connection not redirecting"
                );
                None
            }
        }
    }

    /// A connection moved: it now lives on the target, as its newest arrival. After a rebalance
    /// move it cools down from `now` (when the policy's cooldown is on).
    ///
    /// The router's own record of the move wins over `from`/`to` when they disagree.
    pub(crate) fn redirect_succeeded(&mut self, from: &str, to: &str, id: u64, now: Instant) {
        let Some((known_from, known_to, rebalance)) = self.redirect_target(id, "succeeded") else {
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
        if rebalance && !self.policy.rebalance_cooldown.is_zero() {
            conn.rebalanced_at = Some(now);
        }
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

    /// A connection could not move: its point goes back, and it is not asked again before
    /// `now` + the back-off.
    pub(crate) fn redirect_failed(&mut self, from: &str, to: &str, id: u64, now: Instant) {
        let Some((known_from, known_to, _)) = self.redirect_target(id, "failed") else {
            return;
        };
        if &*known_from != from || &*known_to != to {
            warn!(conn_id = id, from, to, %known_from, %known_to, "redirect result disagrees with the router; trusting the router");
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.phase = Phase::Failed { at: now };
        }
        self.update(&known_from, |b| b.outgoing -= 1);
        self.update(&known_to, |b| b.incoming -= 1);
        info!(conn_id = id, from = %known_from, to = %known_to, "connection could not move; backing off");
        self.drop_if_empty(&known_to);
    }

    /// Applies the observer's report: a discovery error refuses routes until a later report
    /// without one; otherwise known backends take their new health and unknown ones that are
    /// not down are added.
    ///
    /// A backend that becomes routable while another already serves starts its slow start at
    /// `now`; the first ones to serve (at start-up) take full weight at once.
    pub(crate) fn backends_changed(
        &mut self,
        backends: HashMap<String, BackendHealth>,
        error: Option<ObserveError>,
        now: Instant,
    ) {
        if let Some(err) = error {
            if self.observe_error.as_ref() != Some(&err) {
                warn!(error = %err, "backend discovery failed; refusing new routes until it recovers");
            }
            self.observe_error = Some(err);
            return;
        }
        if self.observe_error.take().is_some() {
            info!("backend discovery recovered");
        }
        self.settle_suspects(&backends);
        let serving = self.backends.values().any(|b| b.health.status.routable());
        for (addr, health) in backends {
            if health.status == BackendStatus::Healthy && !health.server_version.is_empty() {
                self.server_version = health.server_version.clone();
            }
            if let Some((name, _)) = self.backends.get_key_value(addr.as_str()) {
                let name = name.clone();
                let became = self.update(&name, |b| {
                    let was = b.health.status.routable();
                    if b.health.status != health.status {
                        info!(backend = %b.name, from = %b.health.status, to = %health.status,
                              reason = health.ping_err.as_deref().unwrap_or(""), "backend status changed");
                    }
                    b.health = health;
                    b.inst.set_healthy(b.healthy());
                    (was, b.health.status.routable())
                });
                match became {
                    Some((false, true)) if serving => self.start_ramp(&name, now),
                    Some((true, false)) => self.stop_ramp(&name),
                    _ => {}
                }
                self.drop_if_empty(&name);
            } else if health.status != BackendStatus::CannotConnect {
                info!(backend = %addr, status = %health.status, "backend added");
                let routable = health.status.routable();
                let name = self.add_backend(&addr, health);
                if routable && serving {
                    self.start_ramp(&name, now);
                }
            }
        }
        self.update_panic();
    }

    /// Asks `id` to move to `to`, moving one point of conn score with it; true when the
    /// connection took the request. `rebalance`: a move off a healthy backend, which cools the
    /// connection down once it lands.
    ///
    /// A connection whose mailbox is full counts as a failed redirect. One that is gone can never
    /// answer or close, so it is forgotten here as if it had closed.
    fn redirect_conn(&mut self, id: u64, to: &Name, now: Instant, rebalance: bool) -> bool {
        let Some(inst) = self.backends.get(to).map(|b| b.inst.clone()) else {
            return false;
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        let from = conn.backend.clone();
        match conn.link.redirect(inst) {
            Delivery::Sent => {
                conn.phase = Phase::Redirecting {
                    to: to.clone(),
                    rebalance,
                };
                self.update(&from, |b| b.outgoing += 1);
                self.update(to, |b| b.incoming += 1);
                debug!(conn_id = id, from = %from, to = %to, "redirect requested");
                true
            }
            Delivery::Busy => {
                // The connection is swamped: treat as a failed redirect and retry after back-off.
                conn.phase = Phase::Failed { at: now };
                debug!(conn_id = id, from = %from, "connection did not take the redirect");
                false
            }
            Delivery::Gone => {
                // Its actor stopped or panicked without `ConnClosed`: no answer or close will
                // ever come, so settle its accounting now as a close would.
                warn!(conn_id = id, backend = %from, "connection is gone without closing; forgetting it");
                self.forget_conn(id);
                false
            }
        }
    }

    /// One rebalance step: up to `max_conns` attempts to move a connection from the busiest to
    /// the idlest backend. Returns how many connections took the request.
    ///
    /// Loads are weighted: it stops once busiest / (idlest with one more connection) is below
    /// `max_score_ratio`. In panic mode only drained backends are emptied: the health that makes
    /// the others look busy is what panic mode does not trust. Off a healthy backend, a
    /// connection a rebalance moved is no candidate until that rebalance is over
    /// (`cooldown.rs`); off a drained or failing one, every connection is.
    pub(crate) fn rebalance(&mut self, max_conns: usize, now: Instant) -> usize {
        self.refresh_ramps(now);
        self.note_balance(now);
        self.refresh_peer_budget(now);
        let mut asked = 0;
        for _ in 0..max_conns {
            let Some(&(drained, _, busy_slot)) = self.index.loaded.last() else {
                break;
            };
            let Some(&(_, idle_slot)) = self.index.routable.first() else {
                break;
            };
            if self.panic && !drained {
                break;
            }
            if busy_slot == idle_slot {
                break;
            }
            let busiest = self.index.name(busy_slot).clone();
            let idlest = self.index.name(idle_slot).clone();
            let (Some(b), Some(idle)) = (self.backends.get(&busiest), self.backends.get(&idlest))
            else {
                break;
            };
            let (busy_score, idle_score) = (b.weighted_score(), idle.weighted_score());
            if !drained && busy_score / idle.weighted_score_plus_one() < self.cfg.max_score_ratio {
                break;
            }
            // With peers, moves off a healthy backend spend this instance's share of the excess.
            let bounded = !drained && b.health.status.routable();
            if bounded && self.peer_budget == Some(0) {
                break;
            }
            let backoff = self.cfg.redirect_fail_backoff;
            let candidate = b.conns.values().copied().find(|id| {
                self.conns.get(id).is_some_and(|c| {
                    let ready = match c.phase {
                        Phase::Steady => true,
                        Phase::Redirecting { .. } => false,
                        Phase::Failed { at } => at + backoff <= now,
                    };
                    ready && !(bounded && self.cooling(c, now))
                })
            });
            let Some(id) = candidate else {
                break;
            };
            debug!(from = %busiest, to = %idlest, busy_score, idle_score, conn_id = id, "rebalance");
            if self.redirect_conn(id, &idlest, now, bounded) {
                asked += 1;
                if bounded {
                    if let Some(left) = &mut self.peer_budget {
                        *left = left.saturating_sub(1);
                    }
                }
            }
        }
        asked
    }

    /// Asks every connection not mid-redirect to move to the backend it is on. Returns how many
    /// took the request.
    pub(crate) fn redirect_all(&mut self, now: Instant) -> usize {
        let targets: Vec<(u64, Name)> = self
            .conns
            .iter()
            .filter(|(_, c)| !matches!(c.phase, Phase::Redirecting { .. }))
            .map(|(id, c)| (*id, c.backend.clone()))
            .collect();
        let mut asked = 0;
        for (id, backend) in targets {
            if self.redirect_conn(id, &backend, now, false) {
                asked += 1;
            }
        }
        asked
    }

    /// Drains or undrains a known backend.
    pub(crate) fn set_drained(&mut self, addr: &str, drained: bool) -> Result<(), RouterError> {
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
}

mod controls;
mod cooldown;
mod invariants;
mod peers;
mod suspect;
#[cfg(test)]
mod tests;
