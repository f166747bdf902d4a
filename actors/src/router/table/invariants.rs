//! The table's self-check: every index and counter recomputed from the connection table and
//! compared. Its own file because it restates the whole table; tests call it after every step.

use std::collections::{BTreeSet, HashMap};

use super::{ConnLink, Phase, ScoreTable};
use crate::error::InvariantError;

impl<C: ConnLink> ScoreTable<C> {
    /// Checks that the indexes and counters agree with the connection table; the error names
    /// the first invariant found broken.
    pub(crate) fn check_invariants(&self) -> Result<(), InvariantError> {
        let mut incoming: HashMap<&str, i64> = HashMap::new();
        let mut outgoing: HashMap<&str, i64> = HashMap::new();
        for (&conn_id, c) in &self.conns {
            let b = self.backends.get(&c.backend).ok_or_else(|| {
                InvariantError::ConnOnUnknownBackend {
                    conn_id,
                    backend: c.backend.to_string(),
                }
            })?;
            if b.conns.get(&c.seq) != Some(&conn_id) {
                return Err(InvariantError::ConnNotListed {
                    conn_id,
                    backend: c.backend.to_string(),
                });
            }
            if let Phase::Redirecting { to, .. } = &c.phase {
                if !self.backends.contains_key(to) {
                    return Err(InvariantError::RedirectToUnknownBackend {
                        conn_id,
                        to: to.to_string(),
                    });
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
                return Err(InvariantError::NegativePending {
                    backend: name.to_string(),
                    pending: b.pending,
                });
            }
            let counted_incoming = incoming.get(&**name).copied().unwrap_or(0);
            let counted_outgoing = outgoing.get(&**name).copied().unwrap_or(0);
            if b.incoming != counted_incoming || b.outgoing != counted_outgoing {
                return Err(InvariantError::RedirectCounts {
                    backend: name.to_string(),
                    incoming: b.incoming,
                    outgoing: b.outgoing,
                    counted_incoming,
                    counted_outgoing,
                });
            }
            if b.inst.healthy() != b.healthy() {
                return Err(InvariantError::HandleHealth {
                    backend: name.to_string(),
                    handle_healthy: b.inst.healthy(),
                    status: b.health.status,
                });
            }
            if self.index.slot_name(b.slot) != Some(name) {
                return Err(InvariantError::SlotNamesAnother {
                    backend: name.to_string(),
                    slot: b.slot,
                });
            }
            let score = b.key();
            if b.routable() {
                routable.insert((score, b.slot));
            }
            if !b.conns.is_empty() {
                loaded.insert((b.drained, score, b.slot));
            }
        }
        if listed != self.conns.len() {
            return Err(InvariantError::ConnCount {
                listed,
                registered: self.conns.len(),
            });
        }
        if routable != self.index.routable {
            return Err(InvariantError::RoutableIndex {
                indexed: self.index.routable.len(),
                expected: routable.len(),
            });
        }
        if loaded != self.index.loaded {
            return Err(InvariantError::LoadedIndex {
                indexed: self.index.loaded.len(),
                expected: loaded.len(),
            });
        }
        Ok(())
    }
}
