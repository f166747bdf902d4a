//! Passive outlier detection on the table: a backend a connection saw fail leaves the routes at
//! once ([`crate::BackendSuspect`]), and the observer's reports settle it. Kept apart from the
//! health the observer reports, which stays the one source of truth.

use std::collections::HashMap;

use tracing::{debug, info, warn};

use super::{ConnLink, ScoreTable};
use crate::model::BackendHealth;
use crate::router::backend::Name;

/// [`ScoreTable::set_suspect_reports`]'s default: the observer's default `fall` (1) + 1.
pub(super) const DEFAULT_SUSPECT_REPORTS: u32 = 2;

impl<C: ConnLink> ScoreTable<C> {
    /// How many clean observer reports not naming a suspect backend end the suspicion: the
    /// observer's `fall` + 1. One report may come from a cycle that began before the failure;
    /// after it, a backend really down is reported within `fall` cycles.
    pub(crate) fn set_suspect_reports(&mut self, n: u32) {
        self.suspect_reports = n.max(1);
    }

    /// A connection saw `addr` fail: it gets no new routes until the observer's reports settle
    /// it (see [`crate::BackendSuspect`]). True when it was routable until now (the caller then
    /// asks for a health check at once).
    pub(crate) fn backend_suspect(&mut self, addr: &str, reason: &str) -> bool {
        let Some((name, b)) = self.backends.get_key_value(addr) else {
            debug!(backend = %addr, reason, "suspect report for an unknown backend; ignored");
            return false;
        };
        if !b.health.status.routable() {
            return false;
        }
        let name = name.clone();
        let newly = self
            .update(&name, |b| {
                let newly = b.suspect.is_none();
                b.suspect = Some(0);
                b.inst.set_healthy(false);
                newly
            })
            .unwrap_or(false);
        if newly {
            warn!(backend = %addr, reason, "backend suspect: no new routes until the health check settles it");
        }
        newly
    }

    /// One clean observer report: a suspect it names is settled by the health it brings (the
    /// caller applies it); one it does not name has had one more check that did not confirm it,
    /// and is routable again after `suspect_reports` of them.
    pub(super) fn settle_suspects(&mut self, named: &HashMap<String, BackendHealth>) {
        let suspects: Vec<Name> = self
            .backends
            .values()
            .filter(|b| b.suspect.is_some())
            .map(|b| b.name.clone())
            .collect();
        let limit = self.suspect_reports;
        for name in suspects {
            let confirmed = named.contains_key(&*name);
            self.update(&name, |b| {
                let seen = b.suspect.map_or(0, |n| n.saturating_add(1));
                if confirmed || seen >= limit {
                    b.suspect = None;
                    if !confirmed {
                        info!(backend = %b.name, reports = seen, "suspect backend not confirmed by the health check; routable again");
                    }
                } else {
                    b.suspect = Some(seen);
                }
                b.inst.set_healthy(b.healthy());
            });
        }
    }
}
