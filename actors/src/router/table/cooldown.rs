//! The rebalance cooldown: a connection a rebalance moved off a healthy backend is no rebalance
//! candidate again until that rebalance is over — the pool has looked even to this router for
//! `RoutePolicy::rebalance_cooldown` since the connection landed — or, at the latest,
//! `RoutePolicy::cooldown_limit` after it landed.
//!
//! Why: instances of a cluster see each other's moves only a publish and a read later, and route
//! new sessions meanwhile on a view without them. The returning backend overshoots, and the
//! longest-resident connections an instance holds there are the very ones it just moved, so the
//! next view would move them straight back. Cooling them lets the sessions that never moved even
//! the pool out instead. A fixed time is not enough: evening out by the others' sessions alone
//! takes several views, and a cooldown that ends first moves the moved ones anyway. Drains and
//! failing backends ignore it: those moves cannot wait.

use tokio::time::Instant;

use super::{Conn, ConnLink, ScoreTable};
use crate::router::backend::Backend;

impl<C: ConnLink> ScoreTable<C> {
    /// A rebalance moved `c` and is not over: the pool has not looked even for a whole cooldown
    /// since `c` landed, and the cooldown's limit has not passed.
    pub(super) fn cooling(&self, c: &Conn<C>, now: Instant) -> bool {
        let Some(landed) = c.rebalanced_at else {
            return false;
        };
        let cooldown = self.policy.rebalance_cooldown;
        // a limit past what an `Instant` can hold never comes
        let within_limit = landed
            .checked_add(self.policy.cooldown_limit())
            .is_none_or(|end| now < end);
        !cooldown.is_zero()
            && within_limit
            && self.settled_through.is_none_or(|settled| landed > settled)
    }

    /// Before a rebalance step: whether the pool looks even now (no move wanted, as the step's
    /// own stopping rules judge it), and so since when it has. Once it has for a whole
    /// cooldown, every move that landed a cooldown ago or earlier is over, for good: a pool that
    /// turns uneven later is a new rebalance, in which those connections may move again.
    pub(super) fn note_balance(&mut self, now: Instant) {
        if !self.pool_even() {
            self.even_since = None;
            return;
        }
        let even = *self.even_since.get_or_insert(now);
        let cooldown = self.policy.rebalance_cooldown;
        if let Some(through) = now.checked_sub(cooldown).filter(|t| *t >= even) {
            self.settled_through = Some(through);
        }
    }

    /// No move wanted: nothing to move, nowhere to move to, or the busiest backend is neither
    /// drained nor busy enough against the idlest (in panic mode, not drained).
    fn pool_even(&self) -> bool {
        let (Some(&(drained, _, busy)), Some(&(_, idle))) =
            (self.index.loaded.last(), self.index.routable.first())
        else {
            return true;
        };
        if drained {
            return false;
        }
        if self.panic || busy == idle {
            return true;
        }
        let (Some(b), Some(i)) = (
            self.backends.get(self.index.name(busy)),
            self.backends.get(self.index.name(idle)),
        ) else {
            return true;
        };
        b.weighted_score() / i.weighted_score_plus_one() < self.cfg.max_score_ratio
    }

    /// This instance's connections on `b` that a rebalance may move now: the share of an excess
    /// it can act on (cooling ones would only sit in the budget unspent).
    pub(super) fn rebalance_movable(&self, b: &Backend, now: Instant) -> usize {
        b.conns
            .values()
            .filter(|id| self.conns.get(id).is_some_and(|c| !self.cooling(c, now)))
            .count()
    }

    /// When the first cooldown still running at `now` reaches its limit, if any: the table's
    /// rebalance room grows then even if the pool never looked even, which the cluster budget
    /// treats like a new view (`peers.rs`).
    pub(super) fn next_cooldown_end(&self, now: Instant) -> Option<Instant> {
        let limit = self.policy.cooldown_limit();
        self.conns
            .values()
            .filter(|c| self.cooling(c, now))
            .filter_map(|c| c.rebalanced_at)
            .filter_map(|landed| landed.checked_add(limit))
            .min()
    }
}
