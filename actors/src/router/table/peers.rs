//! The cluster's share of the table: other instances' per-backend connections (`PeerLoad`)
//! added to every score, and the damping that keeps several instances acting on one global view
//! from moving the same excess several times over.
//!
//! Each instance may move, per new view of its peers, at most its own share of each backend's
//! excess: excess × own ÷ global. The shares of all instances add up to the excess once, so they
//! converge in one exchange instead of overshooting and swinging back. "Own" counts only the
//! connections a rebalance may move now (not those cooling down after a move, `cooldown.rs`).

use std::collections::HashMap;

use tokio::time::Instant;
use tracing::{debug, info};

use super::{ConnLink, ScoreTable};
use crate::router::backend::Name;

impl<C: ConnLink> ScoreTable<C> {
    /// Takes the peers' connections by backend. A view that differs from the last one grants a
    /// new move budget (this instance's share of the excess); an unchanged one grants nothing, so
    /// the same information is never acted on twice. An empty view means no peers: the table
    /// balances its own connections alone, unbounded, as without a cluster.
    pub(crate) fn set_peer_load(&mut self, conns: HashMap<String, usize>) {
        let conns: HashMap<String, i64> = conns
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(a, n)| (a, i64::try_from(n).unwrap_or(i64::MAX)))
            .collect();
        let changed = conns != self.peers;
        if changed && (conns.is_empty() != self.peers.is_empty()) {
            info!(
                peers_hold = conns.values().sum::<i64>(),
                "peer load {}",
                if conns.is_empty() {
                    "gone: balancing own connections alone"
                } else {
                    "known: balancing on the cluster's view"
                }
            );
        }
        self.peers = conns;
        let names: Vec<Name> = self.backends.keys().cloned().collect();
        for name in names {
            let peer = self.peers.get(&*name).copied().unwrap_or(0);
            self.update(&name, |b| b.peer = peer);
        }
        if changed {
            self.peer_view_new = true;
        }
    }

    /// Before a rebalance step: with peers, grants a new move budget when the view changed
    /// since the last grant — the peers' loads, or which backends may take connections (a
    /// backend back from down or undrained is new room that no earlier grant covered) — or,
    /// with the view quiet for a whole cooldown since the last grant, a cooldown counted out of
    /// that grant ended: those connections may move again, and a quiet cluster sends no new view
    /// to let them. Only a quiet view: a grant at every cooldown's end would act again and again
    /// on peers' counts that do not show their own moves yet, undoing the damping.
    pub(crate) fn refresh_peer_budget(&mut self, now: Instant) {
        if self.peers.is_empty() {
            self.peer_budget = None;
            return;
        }
        let mut routable: Vec<Name> = self
            .backends
            .values()
            .filter(|b| b.health.status.routable() && !b.drained)
            .map(|b| b.name.clone())
            .collect();
        routable.sort();
        let cooled = self.regrant_at.is_some_and(|at| at <= now);
        if self.peer_view_new
            || self.peer_budget.is_none()
            || routable != self.granted_routable
            || cooled
        {
            let budget = self.own_share_of_excess(now);
            debug!(budget, cooled, "new cluster view: move budget");
            self.peer_budget = Some(budget);
            self.peer_view_new = false;
            self.granted_routable = routable;
            // a time past what an `Instant` can hold never comes
            let quiet_until = now.checked_add(self.policy.rebalance_cooldown);
            self.regrant_at = self
                .next_cooldown_end(now)
                .zip(quiet_until)
                .map(|(end, quiet)| end.max(quiet));
        }
    }

    /// This instance's share of the connections above the fair share, summed over backends:
    /// for each backend, (global − fair) × own ÷ global, where fair is the mean weighted load of
    /// the routable backends times its weight and own counts the connections a rebalance may
    /// move at `now`. Rounded down, so instances that each hold a fraction of a move leave it
    /// rather than all making it.
    fn own_share_of_excess(&self, now: Instant) -> usize {
        let routable = || {
            self.backends
                .values()
                .filter(|b| b.health.status.routable() && !b.drained)
        };
        let total: f64 = routable().map(|b| b.global_score().max(0) as f64).sum();
        let weight: f64 = routable().map(|b| b.eff_weight).sum();
        if weight <= 0.0 {
            return 0;
        }
        let mean = total / weight;
        let share: f64 = routable()
            .map(|b| {
                let global = b.global_score();
                if global <= 0 {
                    return 0.0;
                }
                let excess = (global as f64 - mean * b.eff_weight).max(0.0);
                excess * self.rebalance_movable(b, now) as f64 / global as f64
            })
            .sum();
        share.floor() as usize
    }
}
