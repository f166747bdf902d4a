//! One backend's counters ([`Backend`]) and the two orderings that keep backends sorted by score
//! ([`ScoreIndex`]).
//!
//! Plain data with no actix: the score table owns both and keeps them in step, removing a
//! backend's keys before it changes and inserting them after. The orderings are keyed by
//! *weighted* score ([`Backend::key`]): status score + conn score ÷ effective weight, in fixed
//! point, so a backend of weight 3 holds three times the connections of one of weight 1 at the
//! same key, and with every weight 1 the order is the plain score's.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tokio::time::Instant;

use crate::model::{BackendHealth, BackendInst, BackendSnapshot, BackendStatus};

/// A backend's interned address: cloned into every connection, compared by content.
pub(crate) type Name = Arc<str>;

/// Fixed-point scale of [`Backend::key`]: a micro-connection, fine enough that weights such as
/// 1, 2 or 3 never tie where their loads differ, coarse enough that a status score of 10⁷ plus
/// any connection count stays far inside an `i64`.
const KEY_SCALE: f64 = 1_000_000.0;

/// What the router knows of one backend.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) name: Name,
    /// Its number in the score index.
    pub(crate) slot: u32,
    pub(crate) inst: BackendInst,
    pub(crate) health: BackendHealth,
    pub(crate) drained: bool,
    /// A connection reported it failing ([`super::BackendSuspect`]): clean observer reports
    /// seen since, while the health check has not confirmed it either way.
    pub(crate) suspect: Option<u32>,
    /// Registered connections by arrival: `seq -> conn id`.
    pub(crate) conns: BTreeMap<u64, u64>,
    /// Routes handed out and not yet finished.
    pub(crate) pending: i64,
    /// Redirects heading here.
    pub(crate) incoming: i64,
    /// Redirects leaving from here.
    pub(crate) outgoing: i64,
    /// Its weight (config or discovery), > 0: it takes `weight` times a weight-1 backend's share.
    pub(crate) weight: f64,
    /// The weight routes see now: `weight` scaled by its slow-start ramp (the key uses this).
    pub(crate) eff_weight: f64,
    /// When its slow start began, while the ramp is not finished.
    pub(crate) ramp_from: Option<Instant>,
    /// Most connections it may hold (`max_conns_per_backend`); 0 = no cap.
    pub(crate) cap: i64,
    /// Connections other instances of the cluster hold on it (their last [`super::PeerLoad`]);
    /// 0 without a cluster. Part of the score, never of this router's own accounting.
    pub(crate) peer: i64,
}

impl Backend {
    pub(crate) fn new(name: Name, slot: u32, health: BackendHealth, weight: f64, cap: i64) -> Self {
        Self {
            weight,
            eff_weight: weight,
            ramp_from: None,
            cap,
            slot,
            inst: BackendInst::new(name.to_string(), health.status.routable()),
            name,
            health,
            drained: false,
            suspect: None,
            conns: BTreeMap::new(),
            pending: 0,
            incoming: 0,
            outgoing: 0,
            peer: 0,
        }
    }

    /// conn score = connections + pending routes + incoming redirects − outgoing redirects.
    pub(crate) fn conn_score(&self) -> i64 {
        self.conns.len() as i64 + self.pending + self.incoming - self.outgoing
    }

    /// Own conn score plus the peers' connections: the cluster-wide load routing compares.
    pub(crate) fn global_score(&self) -> i64 {
        self.conn_score() + self.peer
    }

    pub(crate) fn score(&self) -> i64 {
        self.health.status.score() + self.global_score()
    }

    /// Connections on it or on their way: registered + pending routes + incoming redirects
    /// (a connection leaving still holds its backend connection until it has moved).
    pub(crate) fn occupancy(&self) -> i64 {
        self.conns.len() as i64 + self.pending + self.incoming
    }

    /// At its cap: no more routes or moves to it.
    pub(crate) fn full(&self) -> bool {
        self.cap > 0 && self.occupancy() >= self.cap
    }

    /// Conn score per unit of effective weight: what routing and rebalancing compare.
    pub(crate) fn load(&self) -> f64 {
        self.global_score() as f64 / self.eff_weight
    }

    /// Weighted score, status included: the key of both orderings.
    #[inline]
    pub(crate) fn key(&self) -> i64 {
        if self.eff_weight == 1.0 {
            // the common case, exactly what the float path gives, without a division
            return (self.health.status.score() + self.global_score())
                .saturating_mul(KEY_SCALE as i64);
        }
        weighted_key(self.health.status.score() as f64 + self.load())
    }

    /// Weighted score this backend would have with one more connection: the rebalance ratio's
    /// denominator ("is moving one more here still worth it?").
    pub(crate) fn weighted_score_plus_one(&self) -> f64 {
        self.health.status.score() as f64 + (self.global_score() + 1) as f64 / self.eff_weight
    }

    /// Weighted score, status included, as a plain number.
    pub(crate) fn weighted_score(&self) -> f64 {
        self.health.status.score() as f64 + self.load()
    }

    /// May take new routes: healthy enough, not drained, not at its cap.
    pub(crate) fn routable(&self) -> bool {
        self.healthy() && !self.drained && !self.full()
    }

    /// Healthy as far as the router can tell: the observer says so and no connection reported
    /// it failing since. What its [`BackendInst::healthy`] shows.
    pub(crate) fn healthy(&self) -> bool {
        self.health.status.routable() && self.suspect.is_none()
    }

    /// Down, empty and not held by an operator: nothing refers to it any more.
    pub(crate) fn droppable(&self) -> bool {
        self.health.status == BackendStatus::CannotConnect
            && !self.drained
            && self.conns.is_empty()
            && self.conn_score() <= 0
            && self.pending == 0
            && self.incoming == 0
    }

    pub(crate) fn snapshot(&self) -> BackendSnapshot {
        BackendSnapshot {
            addr: self.name.to_string(),
            health: self.health.clone(),
            score: self.score(),
            conn_count: self.conns.len(),
            conn_score: self.conn_score(),
            suspect: self.suspect.is_some(),
        }
    }
}

/// The two orderings of backends, kept in step with their scores.
///
/// Keys hold a backend's slot number, not its name: every route and release rewrites keys, and
/// with connections spread evenly scores tie, so the key compare must be cheap.
#[derive(Debug, Default)]
pub(crate) struct ScoreIndex {
    /// Backends that may receive routes, ascending score: the first is the idlest.
    pub(crate) routable: BTreeSet<(i64, u32)>,
    /// Backends with connections, ascending (drained, score): the last is the busiest; a drained
    /// backend sorts above every other so its connections move first.
    pub(crate) loaded: BTreeSet<(bool, i64, u32)>,
    /// Slot number → backend name.
    names: Vec<Option<Name>>,
    /// Slots of dropped backends, for reuse.
    free: Vec<u32>,
}

/// A weighted score in the orderings' fixed point (saturating: an `as` cast never wraps).
pub(crate) fn weighted_key(score: f64) -> i64 {
    (score * KEY_SCALE) as i64
}

impl ScoreIndex {
    pub(crate) fn remove(&mut self, b: &Backend) {
        let score = b.key();
        if b.routable() {
            self.routable.remove(&(score, b.slot));
        }
        if !b.conns.is_empty() {
            self.loaded.remove(&(b.drained, score, b.slot));
        }
    }

    #[inline]
    pub(crate) fn insert(&mut self, b: &Backend) {
        let score = b.key();
        if b.routable() {
            self.routable.insert((score, b.slot));
        }
        if !b.conns.is_empty() {
            self.loaded.insert((b.drained, score, b.slot));
        }
    }

    /// A slot number for a new backend.
    pub(crate) fn allocate(&mut self, name: Name) -> u32 {
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

    pub(crate) fn release(&mut self, slot: u32) {
        self.names[slot as usize] = None;
        self.free.push(slot);
    }

    /// The backend in `slot`; every slot in the orderings has one (the invariant check proves it).
    pub(crate) fn name(&self, slot: u32) -> &Name {
        self.names[slot as usize]
            .as_ref()
            .expect("indexed slot has a backend")
    }

    /// The backend in `slot`, or `None` for a free or unknown slot; for the invariant check.
    pub(crate) fn slot_name(&self, slot: u32) -> Option<&Name> {
        self.names.get(slot as usize).and_then(Option::as_ref)
    }
}
