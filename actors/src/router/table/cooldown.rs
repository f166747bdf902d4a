//! The rebalance cooldown: a connection a rebalance moved off a healthy backend is no rebalance
//! candidate again until `RoutePolicy::rebalance_cooldown` has passed since it landed.
//!
//! Why: instances of a cluster see each other's moves only a publish and a read later, and route
//! new sessions meanwhile on a view without them. The returning backend overshoots, and the
//! longest-resident connections an instance holds there are the very ones it just moved, so the
//! next view would move them straight back. Cooling them lets the sessions that never moved even
//! the pool out instead. Drains and failing backends ignore it: those moves cannot wait.

use tokio::time::Instant;

use super::{Conn, ConnLink, ScoreTable};
use crate::router::backend::Backend;

impl<C> Conn<C> {
    /// A rebalance moved it less than the cooldown ago.
    pub(super) fn cooling(&self, now: Instant) -> bool {
        self.cooling_until.is_some_and(|until| now < until)
    }
}

impl<C: ConnLink> ScoreTable<C> {
    /// This instance's connections on `b` that a rebalance may move now: the share of an excess
    /// it can act on (cooling ones would only sit in the budget unspent).
    pub(super) fn rebalance_movable(&self, b: &Backend, now: Instant) -> usize {
        b.conns
            .values()
            .filter(|id| self.conns.get(id).is_some_and(|c| !c.cooling(now)))
            .count()
    }

    /// When the first cooldown running at `now` ends, if any: the table's rebalance room grows
    /// then, which the cluster budget treats like a new view (`peers.rs`).
    pub(super) fn next_cooldown_end(&self, now: Instant) -> Option<Instant> {
        self.conns
            .values()
            .filter_map(|c| c.cooling_until)
            .filter(|until| now < *until)
            .min()
    }
}
