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
use super::stmts::{Stmt, Stmts, UnknownStmt};

/// `COM_SET_OPTION` values (`enum_mysql_set_option`): multi-statements on or off.
pub const MULTI_STATEMENTS_ON: u16 = 0;
/// See [`MULTI_STATEMENTS_ON`].
pub const MULTI_STATEMENTS_OFF: u16 = 1;

/// Why a session whose query was too long to scan cannot move (see `scan::SCAN_MAX`).
const UNSCANNED: &str = "query too long to scan may have changed untracked state";

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
    /// The last `COM_SET_OPTION` the server accepted (multi-statements on or off), re-sent to a
    /// move's target, whose login repeats the client's original capabilities. It lives in the
    /// connection's capabilities, so a reset or a change of user keeps it.
    set_option: Option<u16>,
    /// A one-shot `SET TRANSACTION …` (no `SESSION`) waits for the session's next transaction.
    ///
    /// It is not carried but waited out, because the proxy cannot know when it is used up: the
    /// server drops it at the end of the next transaction, and in autocommit mode that is the
    /// end of the next statement that touched a transactional table — `SELECT 1` or `SET @a`
    /// leave it, `SELECT * FROM innodb_t` or `COMMIT` take it. Re-applied on a target after
    /// it was used, it would give the client's next transaction the wrong isolation level or
    /// access mode. So the move waits until a statement that surely settles it (`BEGIN`,
    /// `START TRANSACTION`, `COMMIT`, `ROLLBACK`, `XA`, or any response reporting an open
    /// transaction, which then holds the move itself). Drivers send it right before
    /// `START TRANSACTION`, so the wait is one command long.
    tx_once: bool,
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
            set_option: None,
            tx_once: false,
        }
    }

    /// Why the session cannot move now, if it cannot.
    pub fn blocker(&self) -> Option<Blocker> {
        if let Some(r) = self.lost {
            return Some(Blocker::Refuse(r));
        }
        if self.in_transaction() || self.xa {
            return Some(Blocker::Wait("transaction open"));
        }
        if self.tx_once {
            return Some(Blocker::Wait(
                "SET TRANSACTION waits for the next transaction",
            ));
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

    /// Whether closing the session at a safe point (drain, shutdown) must wait: the client is
    /// inside a transaction, or has sent statement long data not yet executed. What only keeps
    /// a session from moving — a pending one-shot `SET TRANSACTION` among it — would end with
    /// the session anyway, and does not delay closing.
    pub fn closing_waits(&self) -> bool {
        self.in_transaction() || self.xa || self.stmts.iter().any(|(_, s)| s.long_data)
    }

    /// The server status flags a response ended with.
    pub fn set_status(&mut self, flags: u16) {
        self.status = flags;
        if self.in_transaction() {
            // the transaction took the one-shot characteristics; it holds the move itself
            self.tx_once = false;
        }
    }

    fn in_transaction(&self) -> bool {
        self.status & (status::IN_TRANS | status::IN_TRANS_READONLY) != 0
    }

    /// `COM_SET_OPTION` with `option` succeeded.
    pub fn set_option(&mut self, option: u16) {
        if matches!(option, MULTI_STATEMENTS_ON | MULTI_STATEMENTS_OFF) {
            self.set_option = Some(option);
        }
    }

    /// The `COM_SET_OPTION` a move's target must get, if the session sent one.
    pub fn option_to_restore(&self) -> Option<u16> {
        self.set_option
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
        if pending.unknown_effects {
            self.lost = Some(UNSCANNED);
        }
        if pending.effects.is_empty() {
            return;
        }
        // a failed multi-statement query ran an unknown prefix of its statements
        let unsure = error && pending.statements > 1;
        if unsure && pending.effects.iter().any(|e| !e.safe_when_unsure()) {
            self.lost = Some("error inside a multi-statement query with session effects");
            return;
        }
        for e in pending.effects {
            self.apply(e, error, unsure);
        }
        if self.in_transaction() {
            self.tx_once = false;
        }
    }

    fn apply(&mut self, e: Effect, error: bool, unsure: bool) {
        match (e, error) {
            // unsure whether it ran: assume it did, and wait for the next transaction
            (Effect::TxOnce, _) if !error || unsure => self.tx_once = true,
            // unsure whether it ran: keep waiting
            (Effect::TxBoundary, false) => self.tx_once = false,
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
            (Effect::TxOnce, false) => {}
        }
    }

    /// The server reset the session (`COM_CHANGE_USER`, `COM_RESET_CONNECTION`): everything the
    /// proxy tracked is gone with it.
    pub fn reset(&mut self) {
        let mut stmts = std::mem::take(&mut self.stmts);
        stmts.clear();
        let set_option = self.set_option;
        *self = Session::new();
        // statement ids keep counting: an id of the old session never names a new statement
        self.stmts = stmts;
        self.set_option = set_option;
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
    /// returns the client's id, or the id the session does not have (the command must then not
    /// reach the backend).
    pub fn map_stmt(&self, payload: &mut [u8]) -> Result<u32, UnknownStmt> {
        self.stmts.map(payload)
    }

    /// A `COM_STMT_PREPARE` failed.
    pub fn prepare_failed(&mut self) {
        self.stmts.prepare_failed();
    }

    /// Whether executing statement `id` may change carried state.
    pub fn stmt_changes(&self, id: u32) -> bool {
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
        assert_eq!(s.map_stmt(&mut close), Err(UnknownStmt(first)));
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
        assert_eq!(s.map_stmt(&mut p), Ok(id));
        assert_eq!(p[1..], 8u32.to_le_bytes());
    }

    fn query(s: &mut Session, sql: &str, error: bool, status_after: u16) {
        let p = s.before_query(sql.as_bytes());
        if !error {
            s.set_status(status_after);
        }
        s.after_query(p, error);
    }

    const IDLE: u16 = status::AUTOCOMMIT;
    const IN_TRANS: u16 = status::AUTOCOMMIT | status::IN_TRANS;
    const ONE_SHOT: Option<Blocker> = Some(Blocker::Wait(
        "SET TRANSACTION waits for the next transaction",
    ));

    #[test]
    fn a_one_shot_set_transaction_waits_until_a_transaction_settles_it() {
        // issue 9.6: a move between `SET TRANSACTION READ ONLY` and `BEGIN` lost it
        let mut s = Session::new();
        query(
            &mut s,
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            false,
            IDLE,
        );
        assert_eq!(s.blocker(), ONE_SHOT);
        // statements that may leave it pending keep the wait
        for sql in ["SELECT 1", "SET @a = 1", "SELECT * FROM t", "USE app"] {
            query(&mut s, sql, false, IDLE);
            assert_eq!(s.blocker(), ONE_SHOT, "{sql}");
        }
        query(&mut s, "START TRANSACTION", false, IN_TRANS);
        assert_eq!(s.blocker(), Some(Blocker::Wait("transaction open")));
        query(&mut s, "COMMIT", false, IDLE);
        assert_eq!(s.blocker(), None);
        // scoped forms change a carried variable instead
        query(&mut s, "SET SESSION TRANSACTION READ ONLY", false, IDLE);
        assert_eq!(s.blocker(), None);
        // a failed one-shot did not happen; COMMIT and ROLLBACK settle one
        query(&mut s, "SET TRANSACTION READ ONLY", true, IDLE);
        assert_eq!(s.blocker(), None);
        for end in ["COMMIT", "rollback", "BEGIN WORK"] {
            query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
            query(&mut s, end, false, IDLE);
            assert_eq!(s.blocker(), None, "{end}");
        }
        // a transaction opened by autocommit=0 takes it
        query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
        query(&mut s, "SELECT * FROM t", false, status::IN_TRANS);
        query(&mut s, "COMMIT", false, 0);
        assert_eq!(s.blocker(), None);
    }

    #[test]
    fn closing_waits_for_a_transaction_or_long_data_but_not_for_a_one_shot() {
        let mut s = Session::new();
        query(&mut s, "SET TRANSACTION READ ONLY", false, IDLE);
        assert_eq!(s.blocker(), ONE_SHOT);
        assert!(!s.closing_waits());
        query(&mut s, "BEGIN", false, IN_TRANS);
        assert!(s.closing_waits());
        query(&mut s, "COMMIT", false, IDLE);
        let id = s.add_stmt(1, b"SELECT ?".to_vec(), 1, 1);
        s.stmt_long_data(id);
        assert!(s.closing_waits());
        s.stmt_executed(id, false, IDLE);
        assert!(!s.closing_waits());
    }

    #[test]
    fn a_failed_multi_statement_query_assumes_a_one_shot_ran_and_keeps_waiting() {
        let mut s = Session::new();
        query(&mut s, "SET TRANSACTION READ ONLY; SELECT nope", true, IDLE);
        assert_eq!(s.blocker(), ONE_SHOT);
        query(&mut s, "COMMIT; SELECT nope", true, IDLE);
        assert_eq!(s.blocker(), ONE_SHOT, "unsure whether COMMIT ran");
        query(&mut s, "SET TRANSACTION READ ONLY; BEGIN", false, IN_TRANS);
        query(&mut s, "COMMIT", false, IDLE);
        assert_eq!(s.blocker(), None);
        // and `BEGIN`/`COMMIT` alone in a failed multi-statement query never pin a session
        query(
            &mut s,
            "BEGIN; INSERT INTO t VALUES (1); SELECT nope",
            true,
            IDLE,
        );
        assert_eq!(s.lost, None);
    }

    #[test]
    fn set_option_is_kept_for_the_target_and_survives_a_reset() {
        let mut s = Session::new();
        assert_eq!(s.option_to_restore(), None);
        s.set_option(MULTI_STATEMENTS_ON);
        s.set_option(7);
        assert_eq!(s.option_to_restore(), Some(MULTI_STATEMENTS_ON));
        s.reset();
        s.set_option(MULTI_STATEMENTS_OFF);
        s.reset();
        assert_eq!(s.option_to_restore(), Some(MULTI_STATEMENTS_OFF));
    }

    #[test]
    fn a_query_too_long_to_scan_pins_the_session_only_when_it_may_have_effects() {
        let long = |tail: &str| {
            let mut q = String::from("INSERT INTO t VALUES ('");
            q.push_str(&"x".repeat(super::super::scan::SCAN_MAX));
            q.push_str("')");
            q.push_str(tail);
            q
        };
        let mut s = Session::new();
        query(&mut s, &long(""), false, IDLE);
        assert_eq!(s.blocker(), None);
        assert!(s.changed(), "unscanned: carried state is read in full");
        query(
            &mut s,
            &long("; CREATE TEMPORARY TABLE tt (a int)"),
            false,
            IDLE,
        );
        assert_eq!(s.blocker(), Some(Blocker::Refuse(UNSCANNED)));
    }
}
