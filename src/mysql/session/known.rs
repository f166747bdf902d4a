//! What the proxy knows of the state a move carries (system and user variables; the schema is
//! read fresh at every move): the state the last move carried (or the login's defaults), and
//! what changed since.
//!
//! With session tracking the server names every system variable a statement changed, so a move
//! reads only their values, in the digest query it runs anyway. Without it — or when the
//! server's reports cannot be trusted to be complete (tracking turned off by the client, a
//! report still waiting in the server after an EOF or an ERR) — any statement the scan says may
//! change variables makes the move read them all from `information_schema`. User variables are
//! never reported by the server: the scan says when they may have changed.

use std::collections::BTreeSet;

use super::snapshot::{in_restore_order, restorable, Snapshot, SysVar, UserVar};

/// System variables that change together: setting one may change the others without the server
/// reporting them (`SET NAMES` reports the character sets but not `collation_connection`;
/// `max_join_size` turns `sql_big_selects` off). A report of one carries the whole group.
const COUPLED: &[&[&str]] = &[
    &[
        "character_set_client",
        "character_set_connection",
        "character_set_results",
        "collation_connection",
    ],
    &["character_set_server", "collation_server"],
    &["character_set_database", "collation_database"],
    &["max_join_size", "sql_big_selects"],
    &["old", "old_mode"],
];

/// The carried state and what changed since (see the module docs).
#[derive(Debug, Default)]
pub struct Known {
    /// The state the last move carried; `None`: the login's defaults.
    base: Option<Snapshot>,
    /// The server reports this session's system-variable changes (`CLIENT_SESSION_TRACK` and the
    /// proxy's `session_track_*` settings, untouched by the client).
    tracking: bool,
    /// System variables the server reported changed since `base`.
    sysvars: BTreeSet<String>,
    /// System variables may have changed without the server naming them.
    sysvars_unknown: bool,
    /// User variables may have changed since `base`.
    uservars_changed: bool,
    /// The server may hold reports the proxy has not seen (the last status packet was an EOF
    /// saying so, or the response ended in ERR).
    reports_pending: bool,
    /// The current schema or `LAST_INSERT_ID()` may differ from `base`'s (a move reads both
    /// afresh; a re-attach cannot).
    digest_changed: bool,
}

/// What a move must read from the old backend, and what it already knows.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Read every changed system variable from `information_schema`.
    pub read_sysvars: bool,
    /// Read the user variables from `information_schema`.
    pub read_uservars: bool,
    /// The system variables to carry when they are not read: names and types; their values
    /// come from the digest.
    pub sysvars: Vec<SysVar>,
    /// The user variables to carry when they are not read.
    pub uservars: Vec<UserVar>,
}

impl Known {
    /// Whether the server reports this session's system-variable changes.
    pub fn tracking(&self) -> bool {
        self.tracking
    }

    /// The proxy turned session tracking on (or could not): from now on the server names every
    /// system variable a statement changes.
    pub fn set_tracking(&mut self, on: bool) {
        self.tracking = on;
    }

    /// A client query ran (or failed): `changes` — it may have changed carried state;
    /// `uservars` — user variables; `touched_tracking` — it named `session_track_*`, so the
    /// server's reports may stop or change shape.
    pub fn after_query(&mut self, changes: bool, uservars: bool, touched_tracking: bool) {
        if touched_tracking && self.tracking {
            self.tracking = false;
            self.sysvars_unknown = true;
        }
        if changes && !self.tracking {
            self.sysvars_unknown = true;
        }
        self.uservars_changed |= uservars;
    }

    /// The server reported a system variable changed (and with it, those [`COUPLED`] to it).
    pub fn sysvar_changed(&mut self, name: &[u8]) {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        if !restorable(&name) {
            return;
        }
        for group in COUPLED.iter().filter(|g| g.contains(&name.as_str())) {
            self.sysvars.extend(group.iter().map(|v| v.to_string()));
        }
        self.sysvars.insert(name);
    }

    /// Whether reports may be waiting in the server: an OK packet delivers them all (`false`);
    /// an EOF that says some are waiting, or an ERR, leaves them there (`true`).
    pub fn set_reports_pending(&mut self, pending: bool) {
        self.reports_pending = pending;
    }

    /// Something may have changed anything carried (a failed move, a command the proxy does not
    /// follow, lost reports): the next move reads it all.
    pub fn mark_unknown(&mut self) {
        self.sysvars_unknown = true;
        self.uservars_changed = true;
    }

    /// True when the next move reads nothing from `information_schema`.
    pub fn exact(&self) -> bool {
        !self.plan_reads_sysvars() && !self.uservars_changed
    }

    fn plan_reads_sysvars(&self) -> bool {
        self.sysvars_unknown || (self.tracking && self.reports_pending)
    }

    /// What the next move must read, and what it knows.
    pub fn plan(&self) -> Plan {
        let read_sysvars = self.plan_reads_sysvars();
        let base = self.base.as_ref();
        let mut sysvars: Vec<SysVar> = base.map(|b| b.sysvars.clone()).unwrap_or_default();
        if !read_sysvars {
            for name in &self.sysvars {
                if !sysvars.iter().any(|v| &v.name == name) {
                    sysvars.push(SysVar {
                        name: name.clone(),
                        ty: String::new(),
                        value: None,
                    });
                }
            }
        }
        Plan {
            read_sysvars,
            read_uservars: self.uservars_changed,
            sysvars: in_restore_order(sysvars),
            uservars: base.map(|b| b.uservars.clone()).unwrap_or_default(),
        }
    }

    /// Whether nothing carried may have changed since `base` was read: then `base` (or the
    /// login's defaults) is the session's state, exactly, and a session whose backend is lost can
    /// be restored from it.
    pub fn unchanged(&self) -> bool {
        self.sysvars.is_empty()
            && !self.digest_changed
            && !self.sysvars_unknown
            && !self.uservars_changed
            && !self.reports_pending
    }

    /// The current schema or `LAST_INSERT_ID()` may have changed: `base` no longer shows them.
    pub fn digest_changed(&mut self) {
        self.digest_changed = true;
    }

    /// The state last read from a backend (`None`: the login's defaults, never read).
    pub fn base(&self) -> Option<&Snapshot> {
        self.base.as_ref()
    }

    /// A move carried `snap` to a backend where tracking is `tracking`.
    pub fn moved(&mut self, snap: Snapshot, tracking: bool) {
        *self = Known {
            base: Some(snap),
            tracking,
            ..Known::default()
        };
    }

    /// The server reset the session (`COM_RESET_CONNECTION`, `COM_CHANGE_USER`): no user
    /// variables, and system variables at the new user's defaults, which a login elsewhere may
    /// not repeat (its character set): read them at the next move.
    pub fn reset(&mut self) {
        *self = Known {
            tracking: self.tracking,
            sysvars_unknown: true,
            ..Known::default()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tracked_session_names_its_changed_variables_and_reads_nothing() {
        let mut k = Known::default();
        k.set_tracking(true);
        k.after_query(true, false, false);
        k.sysvar_changed(b"SQL_MODE");
        k.sysvar_changed(b"session_track_schema");
        k.sysvar_changed(b"timestamp");
        k.set_reports_pending(false);
        assert!(k.exact());
        let plan = k.plan();
        let names: Vec<_> = plan.sysvars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["sql_mode"]);
        // SET NAMES reports the character sets, not the collation that comes with them
        k.sysvar_changed(b"character_set_client");
        let plan = k.plan();
        let names: Vec<_> = plan.sysvars.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "character_set_client",
                "character_set_connection",
                "character_set_results",
                "collation_connection",
                "sql_mode"
            ]
        );
        k.after_query(true, true, false);
        assert!(k.plan().read_uservars && !k.plan().read_sysvars);
    }

    #[test]
    fn without_tracking_or_with_reports_pending_the_move_reads_everything() {
        let mut k = Known::default();
        k.after_query(false, false, false);
        assert!(k.exact(), "nothing changed since login");
        k.after_query(true, false, false);
        assert!(k.plan().read_sysvars);
        let mut k = Known::default();
        k.set_tracking(true);
        k.set_reports_pending(true);
        assert!(
            k.plan().read_sysvars,
            "a report may be waiting in the server"
        );
        k.set_reports_pending(false);
        k.after_query(false, false, true);
        assert!(
            !k.tracking() && k.plan().read_sysvars,
            "client touched tracking"
        );
        k.moved(Snapshot::login_defaults(), true);
        assert!(k.exact() && k.tracking());
        k.reset();
        assert!(k.plan().read_sysvars && !k.plan().read_uservars);
    }
}
