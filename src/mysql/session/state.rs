//! The tracked state of one session, and the [`Blocker`]s it derives: a plain struct with
//! methods, fed by the relay before and after each command, so it is tested without sockets.
//!
//! Only this file changes the state: the relay calls a hook per command (`before_query`,
//! `after_query`, the statement-table methods), the move asks [`Session::blocker`] and, once
//! carried, calls [`Session::moved`].

use std::collections::{BTreeMap, BTreeSet};

use switchyard::wire::status;

use super::carry::Snapshot;
use super::scan::{analyze, Effect, Pending};
use super::stmts::{Stmt, Stmts};

/// Why a session cannot move now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Short-lived (a transaction): keep the redirect and move when it ends.
    Wait(&'static str),
    /// Held until the client releases it (temporary table, lock, …): refuse this redirect.
    Refuse(&'static str),
}

/// What the proxy knows of one session beyond what the server reports.
#[derive(Debug)]
pub struct Session {
    /// Server status flags after the last response.
    status: u16,
    temp_tables: BTreeSet<String>,
    named_locks: BTreeSet<String>,
    unknown_lock: bool,
    table_locks: bool,
    handlers: BTreeSet<String>,
    xa: bool,
    /// SQL-level prepared statements: lower-cased name → the `PREPARE` statement text.
    sql_prepared: BTreeMap<String, Vec<u8>>,
    /// SQL-level prepared statements whose text the proxy cannot know (`FROM @var`).
    sql_prepared_unknown: BTreeSet<String>,
    /// Binary prepared statements by client id.
    stmts: Stmts,
    /// Set when the proxy lost track of something for good.
    lost: Option<&'static str>,
    /// The state the last move carried (`None`: the login's defaults). Valid while `changed`
    /// is false: then a move re-applies it instead of reading the session from the server.
    carried: Option<Snapshot>,
    /// The session may have changed carried state (variables, schema) since its login or its
    /// last move: a move must read the whole state from the server.
    changed: bool,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    /// A fresh session.
    pub fn new() -> Self {
        Self {
            status: status::AUTOCOMMIT,
            temp_tables: BTreeSet::new(),
            named_locks: BTreeSet::new(),
            unknown_lock: false,
            table_locks: false,
            handlers: BTreeSet::new(),
            xa: false,
            sql_prepared: BTreeMap::new(),
            sql_prepared_unknown: BTreeSet::new(),
            stmts: Stmts::default(),
            lost: None,
            carried: None,
            changed: false,
        }
    }

    /// Why the session cannot move now, if it cannot.
    pub fn blocker(&self) -> Option<Blocker> {
        if let Some(r) = self.lost {
            return Some(Blocker::Refuse(r));
        }
        if self.status & (status::IN_TRANS | status::IN_TRANS_READONLY) != 0 || self.xa {
            return Some(Blocker::Wait("transaction open"));
        }
        if self.stmts.iter().any(|(_, s)| s.long_data) {
            return Some(Blocker::Wait("statement long data pending"));
        }
        if !self.temp_tables.is_empty() {
            return Some(Blocker::Refuse("temporary tables"));
        }
        if self.table_locks {
            return Some(Blocker::Refuse("LOCK TABLES held"));
        }
        if self.unknown_lock {
            return Some(Blocker::Refuse("GET_LOCK with a computed name"));
        }
        if !self.handlers.is_empty() {
            return Some(Blocker::Refuse("HANDLER open"));
        }
        if !self.sql_prepared_unknown.is_empty() {
            return Some(Blocker::Refuse("PREPARE FROM a user variable"));
        }
        if self.stmts.iter().any(|(_, s)| s.cursor) {
            return Some(Blocker::Refuse("cursor open"));
        }
        None
    }

    /// The server status flags a response ended with.
    pub fn set_status(&mut self, flags: u16) {
        self.status = flags;
    }

    /// The proxy lost track of something for good: the session can never move.
    pub fn lose(&mut self, why: &'static str) {
        self.lost = Some(why);
    }

    /// Named `GET_LOCK` locks the session may hold (checked against the server before a move).
    pub fn named_locks(&self) -> &BTreeSet<String> {
        &self.named_locks
    }

    /// Forgets named locks the server says are not held.
    pub fn release_named_lock(&mut self, name: &str) {
        self.named_locks.remove(name);
    }

    /// SQL-level prepared statements to re-create on a target.
    pub fn sql_prepared(&self) -> impl Iterator<Item = &[u8]> {
        self.sql_prepared.values().map(Vec::as_slice)
    }

    /// Scans a `COM_QUERY` text for effects on untracked state.
    pub fn before_query(&self, sql: &[u8]) -> Pending {
        analyze(sql)
    }

    /// True when the session may have changed carried state since its login or last move.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// Something (a command, a failed move) may have changed carried state: the next move reads
    /// the whole state from the server.
    pub fn mark_changed(&mut self) {
        self.changed = true;
    }

    /// The state to re-apply on a move when nothing changed since the last one (the login's
    /// defaults before any move); `None` when the state must be read from the server.
    pub fn unchanged_state(&self) -> Option<Snapshot> {
        (!self.changed).then(|| {
            self.carried
                .clone()
                .unwrap_or_else(Snapshot::login_defaults)
        })
    }

    /// A move carried `snap` to the new backend, where the binary statements were re-prepared
    /// under new ids (`ids`: client id → backend id): the session is in that state there.
    pub fn moved(&mut self, snap: Snapshot, ids: &[(u32, u32)]) {
        self.carried = Some(snap);
        self.changed = false;
        self.stmts.moved(ids);
    }

    /// Applies a query's effects once its response is complete.
    pub fn after_query(&mut self, pending: Pending, error: bool) {
        // also on error: a multi-statement query may have run its first statements
        self.changed |= pending.changes;
        if pending.effects.is_empty() {
            return;
        }
        if error && pending.statements > 1 {
            self.lost = Some("error inside a multi-statement query with session effects");
            return;
        }
        for e in pending.effects {
            self.apply(e, error);
        }
    }

    fn apply(&mut self, e: Effect, error: bool) {
        match (e, error) {
            (Effect::Prepare(name, _), true) | (Effect::Deallocate(name), _) => {
                // a failed PREPARE deallocates a statement of the same name
                self.sql_prepared.remove(&name);
                self.sql_prepared_unknown.remove(&name);
            }
            (_, true) => {}
            (Effect::CreateTemp(t), false) => {
                self.temp_tables.insert(t);
            }
            (Effect::DropTables(ts), false) => {
                for t in ts {
                    self.temp_tables.remove(&t);
                }
            }
            (Effect::LockTables, false) => self.table_locks = true,
            (Effect::UnlockTables, false) => self.table_locks = false,
            (Effect::GetLock(Some(n)), false) => {
                self.named_locks.insert(n);
            }
            (Effect::GetLock(None), false) => self.unknown_lock = true,
            (Effect::ReleaseAllLocks, false) => {
                self.named_locks.clear();
                self.unknown_lock = false;
            }
            (Effect::Prepare(name, Some(text)), false) => {
                self.sql_prepared_unknown.remove(&name);
                self.sql_prepared.insert(name, text);
            }
            (Effect::Prepare(name, None), false) => {
                self.sql_prepared.remove(&name);
                self.sql_prepared_unknown.insert(name);
            }
            (Effect::HandlerOpen(t), false) => {
                self.handlers.insert(t);
            }
            (Effect::HandlerClose(t), false) => {
                self.handlers.remove(&t);
            }
            (Effect::XaStart, false) => self.xa = true,
            (Effect::XaEnd, false) => self.xa = false,
        }
    }

    /// The server reset the session (`COM_CHANGE_USER`, `COM_RESET_CONNECTION`): everything the
    /// proxy tracked is gone with it.
    pub fn reset(&mut self) {
        let mut stmts = std::mem::take(&mut self.stmts);
        stmts.clear();
        *self = Session::new();
        // statement ids keep counting: an id of the old session never names a new statement
        self.stmts = stmts;
        // the login defaults of the new user (and a character set the target login would not
        // repeat): read the state from the server at the next move
        self.changed = true;
    }

    // -- the statement table ------------------------------------------------------------------

    /// Registers a statement the backend prepared as `backend_id`; returns the client's id.
    pub fn add_stmt(&mut self, backend_id: u32, sql: Vec<u8>, params: u16, columns: u16) -> u32 {
        self.stmts.add(backend_id, sql, params, columns)
    }

    /// Rewrites the client's statement id in a `COM_STMT_*` payload to the backend's, in place;
    /// returns the client's id, `None` when unknown.
    pub fn map_stmt(&self, payload: &mut [u8]) -> Option<u32> {
        self.stmts.map(payload)
    }

    /// Whether executing statement `id` may change carried state (an unknown id may).
    pub fn stmt_changes(&self, id: Option<u32>) -> bool {
        self.stmts.changes(id)
    }

    /// Remembers the parameter types an execute binds; after a move, returns the execute's
    /// payload with the types bound on the old backend added, when it relies on them.
    pub fn bind_stmt_types(&mut self, id: u32, payload: &[u8], continued: bool) -> Option<Vec<u8>> {
        self.stmts.bind_types(id, payload, continued)
    }

    /// `COM_STMT_EXECUTE` of `id` ended (with an error, or with these status flags).
    pub fn stmt_executed(&mut self, id: u32, error: bool, flags: u16) {
        self.stmts.executed(id, error, flags);
    }

    /// `COM_STMT_FETCH` from `id` ended.
    pub fn stmt_fetched(&mut self, id: u32, error: bool, flags: u16) {
        self.stmts.fetched(id, error, flags);
    }

    /// `COM_STMT_RESET` of `id`.
    pub fn reset_stmt(&mut self, id: u32) {
        self.stmts.reset(id);
    }

    /// `COM_STMT_SEND_LONG_DATA` to `id`.
    pub fn stmt_long_data(&mut self, id: u32) {
        self.stmts.long_data_sent(id);
    }

    /// `COM_STMT_CLOSE` of `id`.
    pub fn close_stmt(&mut self, id: u32) {
        self.stmts.close(id);
    }

    /// The binary statements to re-prepare on a target, by client id.
    pub fn stmts(&self) -> impl Iterator<Item = (u32, &Stmt)> {
        self.stmts.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::wire::cmd;

    #[test]
    fn a_failed_query_that_may_change_state_still_marks_the_session() {
        let mut s = Session::new();
        assert!(!s.changed());
        let p = s.before_query(b"SELECT 1");
        s.after_query(p, false);
        assert!(!s.changed());
        let p = s.before_query(b"SET @a = 1; SELECT nope");
        s.after_query(p, true);
        assert!(s.changed());
        s.moved(Snapshot::login_defaults(), &[]);
        assert!(!s.changed());
        s.reset();
        assert!(s.changed());
    }

    #[test]
    fn blockers_follow_the_tracked_state() {
        let mut s = Session::new();
        assert_eq!(s.blocker(), None);
        s.set_status(status::AUTOCOMMIT | status::IN_TRANS);
        assert_eq!(s.blocker(), Some(Blocker::Wait("transaction open")));
        s.set_status(status::AUTOCOMMIT);
        let p = s.before_query(b"CREATE TEMPORARY TABLE t (a int)");
        s.after_query(p, false);
        assert_eq!(s.blocker(), Some(Blocker::Refuse("temporary tables")));
        let p = s.before_query(b"DROP TABLE t");
        s.after_query(p, false);
        assert_eq!(s.blocker(), None);
        let p = s.before_query(b"PREPARE p FROM 'bad sql'");
        s.after_query(p, true);
        assert_eq!(s.sql_prepared().count(), 0);
        s.lose("because");
        assert_eq!(s.blocker(), Some(Blocker::Refuse("because")));
    }

    #[test]
    fn statement_ids_survive_a_reset_without_naming_old_statements() {
        let mut s = Session::new();
        let first = s.add_stmt(10, b"SELECT 1".to_vec(), 0, 1);
        s.stmt_long_data(first);
        assert_eq!(
            s.blocker(),
            Some(Blocker::Wait("statement long data pending"))
        );
        s.reset();
        assert_eq!(s.blocker(), None);
        assert_eq!(s.stmts().count(), 0);
        let second = s.add_stmt(10, b"SELECT 1".to_vec(), 0, 1);
        assert_ne!(first, second);
        let mut close = [cmd::STMT_CLOSE, 0, 0, 0, 0];
        close[1..].copy_from_slice(&first.to_le_bytes());
        assert_eq!(s.map_stmt(&mut close), None);
    }

    #[test]
    fn an_unchanged_session_re_applies_what_the_last_move_carried() {
        let mut s = Session::new();
        assert!(s
            .unchanged_state()
            .is_some_and(|snap| snap.sysvars.is_empty()));
        s.mark_changed();
        assert!(s.unchanged_state().is_none());
        let id = s.add_stmt(3, b"SELECT ?".to_vec(), 1, 1);
        s.moved(Snapshot::login_defaults(), &[(id, 8)]);
        assert!(s.unchanged_state().is_some());
        let mut p = [cmd::STMT_CLOSE, 0, 0, 0, 0];
        p[1..].copy_from_slice(&id.to_le_bytes());
        assert_eq!(s.map_stmt(&mut p), Some(id));
        assert_eq!(p[1..], 8u32.to_le_bytes());
    }
}
