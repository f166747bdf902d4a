//! The tracked state of one session, and the [`Pin`]s it derives: a plain struct with methods,
//! fed by the relay before and after each command, so it is tested without sockets.
//!
//! Only this file changes the state: the relay calls a hook per command (`before_query`,
//! `after_query`, the statement-table methods) and per status packet (`set_status`,
//! `server_reports`), the move asks [`Session::blocker`] and, once carried, calls
//! [`Session::moved`].

use std::collections::{BTreeMap, BTreeSet};

use switchyard::wire::{status, StateChange};

use super::known::{Known, Plan};
use super::pin::Pin;
use super::scan::{analyze, analyze_prepared, Effect, Kind, Pending};
use super::snapshot::Snapshot;
use super::stmts::{Stmt, Stmts, UnknownStmt};

/// `COM_SET_OPTION` values (`enum_mysql_set_option`): multi-statements on or off.
pub const MULTI_STATEMENTS_ON: u16 = 0;
/// See [`MULTI_STATEMENTS_ON`].
pub const MULTI_STATEMENTS_OFF: u16 = 1;

/// Why a session whose query was too long to scan cannot move (see `scan::SCAN_MAX`).
const UNSCANNED: &str = "query too long to scan may have changed untracked state";

/// What a response said, for the hooks after it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// It ended in ERR.
    pub error: bool,
    /// Results completed before its end: in a multi-statement query, the statements that ran.
    pub results: u32,
}

/// A SQL-level prepared statement (`PREPARE name FROM '…'`).
#[derive(Debug, Clone)]
struct Prepared {
    /// The whole `PREPARE` statement, re-run on a move's target.
    statement: Vec<u8>,
    /// What `EXECUTE name` does (`None`: a text the scan cannot read).
    runs: Option<Pending>,
}

/// What the proxy knows of one session beyond what the server reports.
#[derive(Debug)]
pub struct Session {
    /// Server status flags after the last OK or EOF.
    status: u16,
    /// The server's transaction-state tracker says a transaction is open.
    trx_open: bool,
    /// The last statement-running command ended in ERR: whether it left a transaction open is
    /// unknown until the next status packet or a check with the server.
    trx_unverified: bool,
    temp_tables: BTreeSet<String>,
    named_locks: BTreeSet<String>,
    unknown_lock: bool,
    table_locks: bool,
    backup_lock: bool,
    role: bool,
    handlers: BTreeSet<String>,
    xa: bool,
    /// SQL-level prepared statements by lower-cased name.
    sql_prepared: BTreeMap<String, Prepared>,
    /// SQL-level prepared statements whose text the proxy cannot know (`FROM @var`).
    sql_prepared_unknown: BTreeSet<String>,
    /// Binary prepared statements by client id.
    stmts: Stmts,
    /// Set when something ran that the proxy cannot see into; cleared only by a reset.
    unknown: Option<&'static str>,
    /// The carried state and what changed since.
    known: Known,
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
    /// A `SAVEPOINT` made under `autocommit = 0`: the server keeps it until `COMMIT`/`ROLLBACK`
    /// even while it reports no transaction, so the session waits as if inside one.
    savepoint: bool,
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
            trx_open: false,
            trx_unverified: false,
            temp_tables: BTreeSet::new(),
            named_locks: BTreeSet::new(),
            unknown_lock: false,
            table_locks: false,
            backup_lock: false,
            role: false,
            handlers: BTreeSet::new(),
            xa: false,
            sql_prepared: BTreeMap::new(),
            sql_prepared_unknown: BTreeSet::new(),
            stmts: Stmts::default(),
            unknown: None,
            known: Known::default(),
            set_option: None,
            tx_once: false,
            savepoint: false,
        }
    }

    /// Why the session cannot move now, if it cannot: what ends on its own first (a close at a
    /// safe point waits for it), then what refuses. Named locks are not here: they are checked
    /// with the server at the move.
    pub fn blocker(&self) -> Option<Pin> {
        if self.xa {
            return Some(Pin::Xa);
        }
        if self.in_transaction() || self.savepoint {
            return Some(Pin::InTransaction);
        }
        self.held()
    }

    /// What the session holds besides an open transaction that a move or a re-attach cannot
    /// carry, in the order [`Session::blocker`] names it. A re-attach of a session whose
    /// transaction was lost checks this: the transaction is gone, the rest must not be.
    pub fn held(&self) -> Option<Pin> {
        if self.xa {
            return Some(Pin::Xa);
        }
        if self.tx_once {
            return Some(Pin::OneShotTransaction);
        }
        if self.stmts.iter().any(|(_, s)| s.long_data) {
            return Some(Pin::LongData);
        }
        if self.unknown.is_some() {
            return Some(Pin::UnknownState);
        }
        if !self.temp_tables.is_empty() {
            return Some(Pin::TemporaryTable);
        }
        if self.table_locks || self.backup_lock {
            return Some(Pin::TableLock);
        }
        if self.unknown_lock {
            return Some(Pin::UserLock);
        }
        if !self.handlers.is_empty() {
            return Some(Pin::Handler);
        }
        if !self.sql_prepared_unknown.is_empty() {
            return Some(Pin::PreparedFromVariable);
        }
        if self.stmts.iter().any(|(_, s)| s.cursor) {
            return Some(Pin::OpenCursor);
        }
        if self.role {
            return Some(Pin::Role);
        }
        None
    }

    /// What made the state unknown, for logs.
    pub fn unknown_because(&self) -> Option<&'static str> {
        self.unknown
    }

    /// Whether closing the session at a safe point (drain, shutdown) must wait: the client is
    /// inside a transaction, or has sent statement long data not yet executed. What only keeps
    /// a session from moving — a pending one-shot `SET TRANSACTION` among it — would end with
    /// the session anyway, and does not delay closing.
    pub fn closing_waits(&self) -> bool {
        self.in_transaction()
            || self.savepoint
            || self.xa
            || self.stmts.iter().any(|(_, s)| s.long_data)
    }

    /// The server status flags a response ended with.
    pub fn set_status(&mut self, flags: u16) {
        self.status = flags;
        if self.in_transaction() {
            // the transaction took the one-shot characteristics; it holds the move itself
            self.tx_once = false;
        }
    }

    /// A transaction is open, as the status flags or the server's transaction tracker say.
    fn in_transaction(&self) -> bool {
        self.status & (status::IN_TRANS | status::IN_TRANS_READONLY) != 0 || self.trx_open
    }

    /// Whether the server says a transaction is open: what the replay log follows.
    pub fn transaction_open(&self) -> bool {
        self.in_transaction()
    }

    /// Whether autocommit is on, as the last status flags say: off, a statement outside a
    /// transaction begins one.
    pub fn autocommit(&self) -> bool {
        self.status & status::AUTOCOMMIT != 0
    }

    /// A one-shot `SET TRANSACTION …` waits for the next transaction (see `tx_once`).
    pub fn one_shot_pending(&self) -> bool {
        self.tx_once
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

    /// The proxy lost track of something (a statement it cannot see into, a text too long to
    /// follow): the session stays until a reset clears everything.
    pub fn lose(&mut self, why: &'static str) {
        self.unknown.get_or_insert(why);
    }

    /// Whether the transaction state must be checked with the server before the session moves
    /// or closes (see [`Session::verified`]).
    pub fn trx_unverified(&self) -> bool {
        self.trx_unverified
    }

    /// The server answered whether a transaction is open. The check ran the proxy's own query,
    /// whose answer may have carried reports the session never saw: read everything at the next
    /// move.
    pub fn verified(&mut self, in_transaction: bool) {
        self.trx_unverified = false;
        if in_transaction {
            self.status |= status::IN_TRANS;
        }
        self.known.mark_unknown();
    }

    /// Session-state information from an OK packet (the server tracks the session for the
    /// proxy): changed variables, transaction state.
    pub fn server_reports<'a>(&mut self, changes: impl Iterator<Item = StateChange<'a>>) {
        for c in changes {
            match c {
                StateChange::SystemVariable { name, .. } => self.known.sysvar_changed(name),
                StateChange::TransactionState(st) => {
                    self.trx_open = matches!(st.first(), Some(b'T' | b'I'));
                }
                StateChange::Malformed => self.known.mark_unknown(),
                StateChange::Schema(_) => self.known.digest_changed(),
                StateChange::StateChanged | StateChange::Other(_) => {}
            }
        }
    }

    /// Whether reports may be waiting in the server (see [`Known::set_reports_pending`]).
    pub fn reports_pending(&mut self, pending: bool) {
        self.known.set_reports_pending(pending);
    }

    /// The proxy turned the server's session tracking on for this session (or could not).
    pub fn set_tracking(&mut self, on: bool) {
        self.known.set_tracking(on);
    }

    /// Whether the server tracks this session for the proxy.
    pub fn tracking(&self) -> bool {
        self.known.tracking()
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
        self.sql_prepared.values().map(|p| p.statement.as_slice())
    }

    /// Scans a `COM_QUERY` text for what it does.
    pub fn before_query(&self, sql: &[u8]) -> Pending {
        analyze(sql)
    }

    /// What the next move must read from the old backend, and what it already knows.
    pub fn plan(&self) -> Plan {
        self.known.plan()
    }

    /// True when the next move reads nothing from `information_schema`.
    pub fn exact(&self) -> bool {
        self.known.exact()
    }

    /// Something (a command the proxy does not follow, a failed move) may have changed carried
    /// state: the next move reads it all from the server.
    pub fn mark_changed(&mut self) {
        self.known.mark_unknown();
    }

    /// A move carried `snap` to a new backend (tracking the session for the proxy when
    /// `tracking`), where the binary statements were re-prepared under new ids (`ids`: client id
    /// → backend id).
    pub fn moved(&mut self, snap: Snapshot, ids: &[(u32, u32)], tracking: bool) {
        self.known.moved(snap, tracking);
        self.trx_open = false;
        self.trx_unverified = false;
        self.stmts.moved(ids);
    }

    /// The state as last read from the backend, when nothing carried may have changed since:
    /// what a session whose backend was lost is restored from. `None` when it may have changed,
    /// or was never read.
    pub fn exact_state(&self) -> Option<&Snapshot> {
        self.known.unchanged().then(|| self.known.base()).flatten()
    }

    /// The state was read afresh from the session's own backend (`snap`): it is the carried
    /// state now, as after a move, without one.
    pub fn refreshed(&mut self, snap: Snapshot) {
        let tracking = self.known.tracking();
        self.known.moved(snap, tracking);
    }

    /// The current schema or `LAST_INSERT_ID()` may have changed (`COM_INIT_DB`, an OK packet
    /// with an insert id, a statement naming `LAST_INSERT_ID`): the state last read no longer
    /// shows them.
    pub fn digest_changed(&mut self) {
        self.known.digest_changed();
    }

    /// The backend holding the session's transaction was lost, and the transaction with it: the
    /// session goes on outside one, on its new backend.
    pub fn transaction_lost(&mut self) {
        self.status &= !(status::IN_TRANS | status::IN_TRANS_READONLY);
        self.trx_open = false;
        self.trx_unverified = false;
        self.tx_once = false;
    }

    /// The open transaction was replayed on the session's new backend, after [`Session::moved`]
    /// restored the state it began from: the server's status after the replay (`status`, `None`
    /// when nothing ran) is the session's again, the transaction check stays as it was before the
    /// loss (`unverified`), and the statements replayed may have changed carried state, which is
    /// read afresh at the next safe point, as after the statements themselves.
    pub fn replayed(&mut self, status: Option<u16>, unverified: bool) {
        if let Some(flags) = status {
            self.status = flags;
        }
        self.trx_unverified = unverified;
        self.known.mark_unknown();
        self.known.digest_changed();
    }

    /// An execute of binary statement `id` as a transaction's replay log keeps it (see
    /// [`super::stmts::Stmts::replay_payload`]).
    pub fn replay_payload(&self, id: u32, payload: &[u8]) -> Vec<u8> {
        self.stmts.replay_payload(id, payload)
    }

    /// The SQL text of binary statement `id` (a client id), if the session has it.
    pub fn stmt_sql(&self, id: u32) -> Option<&[u8]> {
        self.stmts
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, s)| s.sql.as_slice())
    }

    /// Whether the session runs in autocommit mode with no transaction open: a statement's
    /// effects are then its own, and a read may be re-run elsewhere.
    pub fn autocommit_idle(&self) -> bool {
        self.status & status::AUTOCOMMIT != 0 && !self.in_transaction() && !self.xa
    }

    /// A statement-running command (`COM_QUERY`, `COM_STMT_EXECUTE`) ended: after an ERR the
    /// server may hold unseen reports and the transaction state is unverified.
    pub fn statement_ended(&mut self, error: bool) {
        self.trx_unverified = error;
        if error {
            self.known.set_reports_pending(true);
        }
    }

    /// Applies a query's effects once its response is complete: those of the statements that
    /// ran, as `outcome` tells (in a multi-statement query that failed, the statements before the
    /// failing one ran, the failing one failed, and none after it ran).
    pub fn after_query(&mut self, pending: Pending, outcome: Outcome) {
        // also on error: a multi-statement query may have run its first statements
        self.known
            .after_query(pending.changes, pending.uservars, pending.tracking);
        if pending.unknown_effects {
            self.lose(UNSCANNED);
        }
        let results = usize::try_from(outcome.results).unwrap_or(usize::MAX);
        let total = pending.parts.len();
        for (i, part) in pending.parts.into_iter().enumerate() {
            let failed = outcome.error && i == results;
            if i >= results && !failed {
                if !outcome.error && (part.kind != Kind::Plain || !part.effects.is_empty()) {
                    // the server ran fewer statements than the scan found: its split was wrong
                    self.lose("a multi-statement query the scan split differently");
                }
                return;
            }
            match part.kind {
                Kind::Definition => {
                    // this statement and the rest of the query may be a routine's body, which
                    // does not run now; but when the server ran more, statements followed it
                    if !failed && results > i + 1 && i + 1 < total {
                        self.lose("statements after a routine definition in one query");
                    }
                    return;
                }
                Kind::Opaque => {
                    self.lose("a statement the proxy cannot see into (CALL, compound, EXECUTE)");
                    return;
                }
                Kind::Plain => {
                    for e in part.effects {
                        self.apply(e, failed);
                    }
                }
            }
        }
        if self.in_transaction() {
            self.tx_once = false;
        }
    }

    /// A binary statement `id` was executed: what its text does, applied as for a query.
    pub fn stmt_ran(&mut self, id: u32, error: bool) {
        let Some(runs) = self.stmts.runs(id).filter(|r| !r.inert()).cloned() else {
            return;
        };
        let outcome = Outcome {
            error,
            results: u32::from(!error),
        };
        self.after_query(runs, outcome);
    }

    fn apply(&mut self, e: Effect, error: bool) {
        match (e, error) {
            (Effect::Prepare(name, _), true) | (Effect::Deallocate(name), _) => {
                // a failed PREPARE deallocates a statement of the same name
                self.sql_prepared.remove(&name);
                self.sql_prepared_unknown.remove(&name);
            }
            (Effect::Execute(name), error) => self.execute(&name, error),
            // a lock may be taken before a later part of the statement fails; it is checked at
            // the move anyway
            (Effect::GetLock(Some(n)), _) => {
                self.named_locks.insert(n);
            }
            (Effect::GetLock(None), _) => self.unknown_lock = true,
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
            (Effect::BackupLock(on), false) => self.backup_lock = on,
            (Effect::SetRole(on), false) => self.role = on,
            (Effect::ReleaseAllLocks, false) => {
                self.named_locks.clear();
                self.unknown_lock = false;
            }
            (Effect::Prepare(name, Some(statement)), false) => {
                self.sql_prepared_unknown.remove(&name);
                let runs = analyze_prepared(&statement);
                self.sql_prepared.insert(name, Prepared { statement, runs });
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
            (Effect::TxOnce, false) => self.tx_once = true,
            (Effect::TxBoundary, false) => {
                self.tx_once = false;
                self.savepoint = false;
            }
            (Effect::Savepoint, false) => {
                self.savepoint |= self.status & status::AUTOCOMMIT == 0;
            }
        }
    }

    /// `EXECUTE name`: what the statement prepared under that name does.
    fn execute(&mut self, name: &str, error: bool) {
        let runs = self.sql_prepared.get(name).map(|p| p.runs.clone());
        match runs {
            Some(Some(runs)) if !runs.opaque() => {
                for part in runs.parts {
                    if part.kind != Kind::Plain {
                        self.lose("EXECUTE of a statement the proxy cannot see into");
                    }
                    for e in part.effects {
                        self.apply(e, error);
                    }
                }
            }
            // unknown text, or a name the proxy never saw prepared: if it ran, anything may
            // have happened
            _ if !error => self.lose("EXECUTE of a statement the proxy cannot see into"),
            _ => {}
        }
    }

    /// The server reset the session (`COM_CHANGE_USER`, `COM_RESET_CONNECTION`): everything the
    /// proxy tracked is gone with it, and the server's tracking with the proxy's settings.
    pub fn reset(&mut self) {
        let mut stmts = std::mem::take(&mut self.stmts);
        stmts.clear();
        let set_option = self.set_option;
        let mut known = std::mem::take(&mut self.known);
        known.reset();
        *self = Session::new();
        // statement ids keep counting: an id of the old session never names a new statement
        self.stmts = stmts;
        self.known = known;
        self.known.set_tracking(false);
        self.set_option = set_option;
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
mod tests;
