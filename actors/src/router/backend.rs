//! One backend's counters ([`Backend`]) and the two orderings that keep backends sorted by score
//! ([`ScoreIndex`]).
//!
//! Plain data with no actix: the score table owns both and keeps them in step, removing a
//! backend's keys before it changes and inserting them after.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::model::{BackendHealth, BackendInst, BackendSnapshot, BackendStatus};

/// A backend's interned address: cloned into every connection, compared by content.
pub(crate) type Name = Arc<str>;

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
}

impl Backend {
    pub(crate) fn new(name: Name, slot: u32, health: BackendHealth) -> Self {
        Self {
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
        }
    }

    /// conn score = connections + pending routes + incoming redirects − outgoing redirects.
    pub(crate) fn conn_score(&self) -> i64 {
        self.conns.len() as i64 + self.pending + self.incoming - self.outgoing
    }

    pub(crate) fn score(&self) -> i64 {
        self.health.status.score() + self.conn_score()
    }

    pub(crate) fn routable(&self) -> bool {
        self.healthy() && !self.drained
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

impl ScoreIndex {
    pub(crate) fn remove(&mut self, b: &Backend) {
        let score = b.score();
        if b.routable() {
            self.routable.remove(&(score, b.slot));
        }
        if !b.conns.is_empty() {
            self.loaded.remove(&(b.drained, score, b.slot));
        }
    }

    #[inline]
    pub(crate) fn insert(&mut self, b: &Backend) {
        let score = b.score();
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
