//! The operator's controls on the table: the policy, weights from the observer's list, the
//! slow-start ramp, panic mode and its route, and closing a drained backend's connections.
//! Each only moves counters and keys through the table's `update`, so the invariants hold.

use std::collections::HashMap;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{ConnLink, Delivery, ScoreTable};
use crate::error::RouteError;
use crate::model::{BackendHealth, BackendInst};
use crate::router::backend::{Backend, Name};
use crate::router::policy::RoutePolicy;

impl<C: ConnLink> ScoreTable<C> {
    /// Sets the operator's controls; a new cap applies to the backends known already.
    pub(crate) fn set_policy(&mut self, policy: RoutePolicy) {
        let cap = policy.max_conns_per_backend as i64;
        self.policy = policy;
        let names: Vec<Name> = self.backends.keys().cloned().collect();
        for name in names {
            self.update(&name, |b| b.cap = cap);
        }
        self.update_panic();
    }

    /// The operator's controls.
    pub(crate) fn policy(&self) -> &RoutePolicy {
        &self.policy
    }

    /// Whether the table is in panic mode.
    pub(crate) fn panic(&self) -> bool {
        self.panic
    }

    /// Every backend's weight, effective weight and occupancy, sorted by address: those the
    /// table holds, then listed ones it does not (never healthy yet), at their listed weight.
    pub(crate) fn weights(&self) -> Vec<(String, f64, f64, i64)> {
        let mut all: Vec<_> = self
            .backends
            .values()
            .map(|b| (b.name.to_string(), b.weight, b.eff_weight, b.occupancy()))
            .collect();
        if let Some(listed) = &self.listed {
            all.extend(
                listed
                    .iter()
                    .filter(|(a, _)| !self.backends.contains_key(a.as_str()))
                    .map(|(a, w)| (a.clone(), *w, *w, 0)),
            );
        }
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// The weight the observer's list gives `addr` (1 when unlisted).
    pub(crate) fn listed_weight(&self, addr: &str) -> f64 {
        self.listed
            .as_ref()
            .and_then(|l| l.get(addr))
            .copied()
            .unwrap_or(1.0)
    }

    /// Recomputes panic mode from the known backends, logging each entry and exit once.
    pub(crate) fn update_panic(&mut self) {
        let (healthy, known) = match &self.listed {
            Some(listed) => (
                listed
                    .keys()
                    .filter(|a| {
                        self.backends
                            .get(a.as_str())
                            .is_some_and(|b| b.health.status.routable())
                    })
                    .count(),
                listed.len(),
            ),
            None => (
                self.backends
                    .values()
                    .filter(|b| b.health.status.routable())
                    .count(),
                self.backends.len(),
            ),
        };
        let panic = self.policy.panics(healthy, known);
        if panic != self.panic {
            let threshold = self.policy.panic_threshold;
            if panic {
                warn!(healthy, known, threshold, "PANIC MODE: too few healthy backends; routing to every known backend that is not drained");
            } else {
                warn!(
                    healthy,
                    known, threshold, "panic mode over: routing to healthy backends only"
                );
            }
            self.panic = panic;
            metrics::gauge!("switchyard_panic_mode").set(if panic { 1.0 } else { 0.0 });
        }
    }

    /// Moves every slow-starting backend's effective weight to where its ramp is at `now`.
    #[inline]
    pub(crate) fn refresh_ramps(&mut self, now: Instant) {
        if self.ramping.is_empty() {
            return;
        }
        let policy = self.policy.clone();
        let ramping = std::mem::take(&mut self.ramping);
        for name in ramping {
            let still = self
                .update(&name, |b| match b.ramp_from {
                    Some(from) => {
                        let share = policy.ramp(now.saturating_duration_since(from));
                        b.eff_weight = b.weight * share;
                        if share >= 1.0 {
                            b.ramp_from = None;
                            debug!(backend = %b.name, "slow start finished");
                        }
                        b.ramp_from.is_some()
                    }
                    None => false,
                })
                .unwrap_or(false);
            if still {
                self.ramping.push(name);
            }
        }
    }

    /// Starts `name`'s slow start at `now` (when slow start is on).
    pub(crate) fn start_ramp(&mut self, name: &Name, now: Instant) {
        if self.policy.slow_start.is_zero() {
            return;
        }
        let floor = self.policy.ramp(std::time::Duration::ZERO);
        self.update(name, |b| {
            b.ramp_from = Some(now);
            b.eff_weight = b.weight * floor;
        });
        if !self.ramping.contains(name) {
            self.ramping.push(name.clone());
        }
        info!(backend = %name, over = ?self.policy.slow_start, "slow start");
    }

    /// Ends `name`'s slow start (it went down).
    pub(crate) fn stop_ramp(&mut self, name: &Name) {
        self.update(name, |b| {
            b.ramp_from = None;
            b.eff_weight = b.weight;
        });
        self.ramping.retain(|n| n != name);
    }

    /// Applies the observer's full list: weights change at once, and which backends count as
    /// known for panic mode.
    pub(crate) fn set_listing(&mut self, listed: HashMap<String, f64>, now: Instant) {
        let names: Vec<Name> = self.backends.keys().cloned().collect();
        for name in names {
            let Some(&weight) = listed.get(&*name) else {
                continue;
            };
            let share = self
                .backends
                .get(&name)
                .and_then(|b| b.ramp_from)
                .map_or(1.0, |from| {
                    self.policy.ramp(now.saturating_duration_since(from))
                });
            self.update(&name, |b| {
                if b.weight != weight {
                    info!(backend = %b.name, from = b.weight, to = weight, "backend weight changed");
                }
                b.weight = weight;
                b.eff_weight = weight * share;
            });
        }
        self.listed = Some(listed);
        self.update_panic();
    }

    /// Why no backend could be routed to: every candidate at its cap (the caller may queue),
    /// or none at all.
    pub(crate) fn none_routable(
        &self,
        excluded: &[String],
        candidate: impl Fn(&Backend) -> bool,
    ) -> RouteError {
        let all_full = self.policy.max_conns_per_backend > 0
            && self.backends.values().any(|b| {
                candidate(b) && b.full() && !excluded.iter().any(|e| e.as_str() == &*b.name)
            });
        if all_full {
            RouteError::AllFull
        } else {
            RouteError::NoBackend
        }
    }

    /// Panic mode's route: the least-loaded (by weight, health ignored) known backend that is
    /// not drained, at its cap or excluded. One the table does not hold yet is added as down,
    /// so its connections are accounted like any other.
    pub(crate) fn route_panic(&mut self, excluded: &[String]) -> Result<BackendInst, RouteError> {
        let known: Vec<String> = match &self.listed {
            Some(listed) => listed.keys().cloned().collect(),
            None => self.backends.keys().map(|n| n.to_string()).collect(),
        };
        let chosen = known
            .into_iter()
            .filter(|a| !excluded.iter().any(|e| e == a))
            .filter_map(|a| match self.backends.get(a.as_str()) {
                Some(b) if b.drained || b.full() => None,
                Some(b) => Some((b.load(), a)),
                None => Some((0.0, a)),
            })
            .min_by(|x, y| x.0.total_cmp(&y.0).then_with(|| x.1.cmp(&y.1)));
        let Some((_, addr)) = chosen else {
            return Err(self.none_routable(excluded, |b| !b.drained));
        };
        let name = match self.backends.get_key_value(addr.as_str()) {
            Some((name, _)) => name.clone(),
            None => self.add_backend(
                &addr,
                BackendHealth::down("not healthy; routed in panic mode"),
            ),
        };
        debug!(backend = %name, "route in panic mode");
        self.update(&name, |b| {
            b.pending += 1;
            b.inst.clone()
        })
        .ok_or(RouteError::NoBackend)
    }

    /// Asks every connection on `addr` to close (a drain's timeout passed); returns how many
    /// took the request. Connections mid-redirect away are asked too: the move did not finish
    /// in time either.
    pub(crate) fn close_conns_on(&mut self, addr: &str, reason: &str) -> usize {
        let Some(b) = self.backends.get(addr) else {
            return 0;
        };
        let ids: Vec<u64> = b.conns.values().copied().collect();
        let mut closed = 0;
        for id in ids {
            let Some(conn) = self.conns.get(&id) else {
                continue;
            };
            match conn.link.close(reason) {
                Delivery::Sent => closed += 1,
                Delivery::Busy => {
                    warn!(conn_id = id, backend = %addr, "connection did not take the close request")
                }
                Delivery::Gone => {
                    warn!(conn_id = id, backend = %addr, "connection is gone without closing; forgetting it");
                    self.forget_conn(id);
                }
            }
        }
        closed
    }

    /// Whether `addr` is known and drained.
    pub(crate) fn is_drained(&self, addr: &str) -> bool {
        self.backends.get(addr).is_some_and(|b| b.drained)
    }
}
