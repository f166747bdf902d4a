//! Session state: what the proxy must carry to another backend, and what keeps a session where
//! it is.
//!
//! The server is the source of truth for what it can report: at a move the proxy reads the
//! changed session variables (`information_schema.SYSTEM_VARIABLES`, session value differing from
//! global), the user variables (`information_schema.USER_VARIABLES`) and the current schema from
//! the old backend, restores them on the target and compares a digest query on both. That costs
//! nothing per command and catches changes made by any means (stored procedures, `SET STATEMENT`,
//! `SET NAMES`). What the server cannot report — SQL `PREPARE`d statement texts, temporary
//! tables, `GET_LOCK`s, `LOCK TABLES`, `HANDLER`s, XA — is learnt by a conservative scan of the
//! client's statements. Binary prepared statements are re-prepared on the target and their ids
//! are virtualised, so the client keeps the ids it was given. The queries are MariaDB's
//! (`information_schema` tables of MariaDB 10.2+); on a MySQL backend the snapshot fails and the
//! session stays (`RedirectFailed`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use super::backend::{Backend, QueryError, Rows};
use super::packet::status;

/// One binary prepared statement, under the id the client knows.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// Its id on the current backend.
    pub backend_id: u32,
    /// The statement text the client prepared.
    pub sql: Vec<u8>,
    /// Parameter count.
    pub params: u16,
    /// Column count.
    pub columns: u16,
    /// Parameter types last bound by an execute (2 bytes each).
    pub types: Option<Vec<u8>>,
    /// Re-prepared by a move: the next execute must bind types even if the client does not.
    pub needs_types: bool,
    /// A cursor is open on it.
    pub cursor: bool,
    /// Long data was sent and not yet consumed by an execute.
    pub long_data: bool,
    /// Executing it may change carried state (the scan of its text says so).
    pub changes: bool,
}

/// Why a session cannot move now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// Short-lived (a transaction): keep the redirect and move when it ends.
    Wait(&'static str),
    /// Held until the client releases it (temporary table, lock, …): refuse this redirect.
    Refuse(&'static str),
}

/// What the proxy knows of one session beyond what the server reports.
#[derive(Debug, Default)]
pub struct Session {
    /// Server status flags after the last response.
    pub status: u16,
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
    pub stmts: HashMap<u32, Stmt>,
    next_stmt_id: u32,
    /// Set when the proxy lost track of something for good.
    pub lost: Option<&'static str>,
    /// The state the last move carried (`None`: the login's defaults). Valid while `changed`
    /// is false: then a move re-applies it instead of reading the session from the server.
    carried: Option<Snapshot>,
    /// The session may have changed carried state (variables, schema) since its login or its
    /// last move: a move must read the whole state from the server.
    changed: bool,
}

/// An effect a statement has on untracked session state, applied when its response is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `CREATE TEMPORARY TABLE name`.
    CreateTemp(String),
    /// `DROP [TEMPORARY] TABLE names`.
    DropTables(Vec<String>),
    /// `LOCK TABLES` / `FLUSH TABLES WITH READ LOCK`.
    LockTables,
    /// `UNLOCK TABLES`.
    UnlockTables,
    /// `GET_LOCK('name', …)`; `None` when the name is not a literal.
    GetLock(Option<String>),
    /// `RELEASE_ALL_LOCKS()`.
    ReleaseAllLocks,
    /// `PREPARE name FROM 'text'` (the whole statement) or `FROM @var` (`None`).
    Prepare(String, Option<Vec<u8>>),
    /// `DEALLOCATE PREPARE name` / `DROP PREPARE name`.
    Deallocate(String),
    /// `HANDLER t OPEN`.
    HandlerOpen(String),
    /// `HANDLER t CLOSE`.
    HandlerClose(String),
    /// `XA START` / `XA BEGIN`.
    XaStart,
    /// `XA COMMIT` / `XA ROLLBACK`.
    XaEnd,
}

/// Effects of one client query, waiting for its response.
#[derive(Debug, Default)]
pub struct Pending {
    effects: Vec<Effect>,
    statements: usize,
    /// Some statement may change carried state (session or user variables, schema).
    changes: bool,
}

impl Session {
    /// A fresh session.
    pub fn new() -> Self {
        Self {
            status: status::AUTOCOMMIT,
            next_stmt_id: 1,
            ..Default::default()
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
        if self.stmts.values().any(|s| s.long_data) {
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
        if self.stmts.values().any(|s| s.cursor) {
            return Some(Blocker::Refuse("cursor open"));
        }
        None
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

    /// A move carried `snap` to the new backend: the session is in that state there.
    pub fn moved(&mut self, snap: Snapshot) {
        self.carried = Some(snap);
        self.changed = false;
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
    }

    /// The server reset the session (`COM_CHANGE_USER`, `COM_RESET_CONNECTION`): everything the
    /// proxy tracked is gone with it.
    pub fn reset(&mut self) {
        let next = self.next_stmt_id;
        *self = Session::new();
        self.next_stmt_id = next;
        // the login defaults of the new user (and a character set the target login would not
        // repeat): read the state from the server at the next move
        self.changed = true;
    }

    /// Registers a statement the backend prepared as `backend_id`; returns the client's id.
    pub fn add_stmt(&mut self, backend_id: u32, sql: Vec<u8>, params: u16, columns: u16) -> u32 {
        let id = self.next_stmt_id;
        self.next_stmt_id = self.next_stmt_id.wrapping_add(1).max(1);
        self.stmts.insert(
            id,
            Stmt {
                backend_id,
                params,
                columns,
                types: None,
                needs_types: false,
                cursor: false,
                long_data: false,
                changes: analyze(&sql).changes,
                sql,
            },
        );
        id
    }
}

// ---------------------------------------------------------------------------------------------
// Statement scan
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Keyword or identifier, upper-cased when unquoted; backquoted names keep their case.
    Word(String, bool),
    Str(Vec<u8>),
    Var,
    Punct(u8),
}

struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    fn new(s: &'a [u8]) -> Self {
        Self { s, i: 0 }
    }

    fn skip_space(&mut self) {
        let s = self.s;
        while self.i < s.len() {
            let c = s[self.i];
            if c.is_ascii_whitespace() {
                self.i += 1;
            } else if c == b'#'
                || (c == b'-'
                    && s.get(self.i + 1) == Some(&b'-')
                    && s.get(self.i + 2).is_none_or(|c| c.is_ascii_whitespace()))
            {
                while self.i < s.len() && s[self.i] != b'\n' {
                    self.i += 1;
                }
            } else if c == b'/' && s.get(self.i + 1) == Some(&b'*') {
                if s.get(self.i + 2) == Some(&b'!') {
                    // executable comment: its contents are code
                    self.i += 3;
                    while self.i < s.len() && s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                } else if s.get(self.i + 2) == Some(&b'M') && s.get(self.i + 3) == Some(&b'!') {
                    self.i += 4;
                    while self.i < s.len() && s[self.i].is_ascii_digit() {
                        self.i += 1;
                    }
                } else {
                    self.i += 2;
                    while self.i < s.len()
                        && !(s[self.i] == b'*' && s.get(self.i + 1) == Some(&b'/'))
                    {
                        self.i += 1;
                    }
                    self.i = (self.i + 2).min(s.len());
                }
            } else if c == b'*' && s.get(self.i + 1) == Some(&b'/') {
                // end of an executable comment
                self.i += 2;
            } else {
                return;
            }
        }
    }

    /// The next token and where it starts.
    fn next_tok(&mut self) -> Option<(Tok, usize)> {
        self.skip_space();
        let s = self.s;
        let start = self.i;
        let c = *s.get(self.i)?;
        let is_word = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
        let tok = if is_word(c) {
            while self.i < s.len() && is_word(s[self.i]) {
                self.i += 1;
            }
            Tok::Word(
                String::from_utf8_lossy(&s[start..self.i]).to_ascii_uppercase(),
                false,
            )
        } else if c == b'`' {
            Tok::Word(
                String::from_utf8_lossy(&self.quoted(b'`')).into_owned(),
                true,
            )
        } else if c == b'\'' || c == b'"' {
            Tok::Str(self.quoted(c))
        } else if c == b'@' && s.get(self.i + 1) != Some(&b'@') {
            self.i += 1;
            match s.get(self.i) {
                Some(&q @ (b'`' | b'\'' | b'"')) => {
                    self.quoted(q);
                }
                _ => {
                    while self.i < s.len() && (is_word(s[self.i]) || s[self.i] == b'.') {
                        self.i += 1;
                    }
                }
            }
            Tok::Var
        } else {
            self.i += 1;
            Tok::Punct(c)
        };
        Some((tok, start))
    }

    /// A quoted token's contents (escapes resolved roughly: enough for names).
    fn quoted(&mut self, q: u8) -> Vec<u8> {
        let s = self.s;
        self.i += 1;
        let mut out = Vec::new();
        while self.i < s.len() {
            let c = s[self.i];
            if c == b'\\' && q != b'`' {
                if let Some(&n) = s.get(self.i + 1) {
                    out.push(n);
                }
                // a backslash at the very end escapes nothing: never step past the end
                self.i = (self.i + 2).min(s.len());
            } else if c == q {
                if s.get(self.i + 1) == Some(&q) {
                    out.push(q);
                    self.i += 2;
                } else {
                    self.i += 1;
                    return out;
                }
            } else {
                out.push(c);
                self.i += 1;
            }
        }
        out
    }
}

/// Splits a query into statements: tokens and the byte range of each statement.
fn statements(sql: &[u8]) -> Vec<(Vec<Tok>, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut lx = Lexer::new(sql);
    let mut toks = Vec::new();
    let mut start = None;
    let mut end = 0;
    while let Some((t, at)) = lx.next_tok() {
        if t == Tok::Punct(b';') {
            if let Some(s) = start.take() {
                out.push((std::mem::take(&mut toks), s..end));
            }
            continue;
        }
        start.get_or_insert(at);
        toks.push(t);
        end = lx.i;
    }
    if let Some(s) = start {
        out.push((toks, s..end));
    }
    out
}

fn word(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Word(w, false)) => Some(w.as_str()),
        _ => None,
    }
}

/// A possibly qualified name starting at `toks[i]`, lower-cased; returns it and the index after.
fn name_at(toks: &[Tok], i: usize) -> Option<(String, usize)> {
    let mut i = i;
    let mut last;
    loop {
        last = match toks.get(i)? {
            Tok::Word(w, _) => w.to_ascii_lowercase(),
            _ => return None,
        };
        i += 1;
        if toks.get(i) == Some(&Tok::Punct(b'.')) {
            i += 1;
            continue;
        }
        return Some((last, i));
    }
}

fn cheap_contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle))
}

const FIRST_WORDS: &[&str] = &[
    "CREATE",
    "DROP",
    "LOCK",
    "UNLOCK",
    "FLUSH",
    "PREPARE",
    "DEALLOCATE",
    "HANDLER",
    "XA",
];

/// Statements that cannot change session or user variables or the current schema when their
/// text neither assigns (`:=`) nor selects `INTO @var`. Anything else (`SET`, `USE`, `CALL`,
/// `EXECUTE`, `DROP` — of the current database —, an unknown word) counts as a change.
const STATELESS_FIRST_WORDS: &[&str] = &[
    "SELECT",
    "INSERT",
    "UPDATE",
    "DELETE",
    "REPLACE",
    "WITH",
    "VALUES",
    "TABLE",
    "SHOW",
    "DESC",
    "DESCRIBE",
    "EXPLAIN",
    "BEGIN",
    "START",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "RELEASE",
    "CREATE",
    "ALTER",
    "TRUNCATE",
    "LOCK",
    "UNLOCK",
    "HANDLER",
    "XA",
    "DO",
    "CHECKSUM",
    "ANALYZE",
    "CHECK",
    "OPTIMIZE",
    "REPAIR",
    "KILL",
    "HELP",
];

/// Whether one statement (first word, text) may change carried state. Conservative: the
/// text tests are on raw bytes, so `:=` or `INTO @` inside a string literal count too.
fn statement_changes(first: Option<&str>, text: &[u8]) -> bool {
    let Some(first) = first else {
        return !text.is_empty();
    };
    !STATELESS_FIRST_WORDS.contains(&first)
        || (first == "BEGIN" && !plain_begin(text))
        || cheap_contains(text, b":=")
        || (text.contains(&b'@') && into_var(text))
}

/// `BEGIN` or `BEGIN WORK`, not MariaDB's compound `BEGIN NOT ATOMIC … END`.
fn plain_begin(text: &[u8]) -> bool {
    let mut lx = Lexer::new(text);
    lx.next_tok();
    match lx.next_tok() {
        None => true,
        Some((Tok::Word(w, false), _)) if w == "WORK" => lx.next_tok().is_none(),
        Some(_) => false,
    }
}

/// `INTO` followed by a user variable (`SELECT … INTO @v`), on raw bytes.
fn into_var(text: &[u8]) -> bool {
    let mut lx = Lexer::new(text);
    let mut prev_into = false;
    while let Some((t, _)) = lx.next_tok() {
        if prev_into && t == Tok::Var {
            return true;
        }
        prev_into = matches!(&t, Tok::Word(w, false) if w == "INTO");
    }
    false
}

/// The first word of a statement, past opening parentheses.
fn first_word(toks: &[Tok]) -> Option<&str> {
    toks.iter()
        .find(|t| **t != Tok::Punct(b'('))
        .and_then(|t| word(Some(t)))
}

/// The effects of a query text on state the server does not report, and whether it may change
/// state a move carries.
pub fn analyze(sql: &[u8]) -> Pending {
    // fast path: one statement whose first word is not interesting and no lock functions
    let has_semicolon = sql.contains(&b';');
    let has_lock_fn = cheap_contains(sql, b"get_lock") || cheap_contains(sql, b"release_all_locks");
    if !has_semicolon && !has_lock_fn {
        let mut lx = Lexer::new(sql);
        let mut first = lx.next_tok();
        while let Some((Tok::Punct(b'('), _)) = first {
            first = lx.next_tok();
        }
        match first {
            Some((Tok::Word(w, false), _)) if FIRST_WORDS.contains(&w.as_str()) => {}
            first => {
                let first = match &first {
                    Some((Tok::Word(w, false), _)) => Some(w.as_str()),
                    Some(_) => Some(""),
                    None => None,
                };
                return Pending {
                    effects: Vec::new(),
                    statements: 1,
                    changes: statement_changes(first, sql),
                };
            }
        }
    }
    let stmts = statements(sql);
    let mut p = Pending {
        effects: Vec::new(),
        statements: stmts.len(),
        changes: false,
    };
    for (toks, range) in &stmts {
        let text = sql.get(range.clone()).unwrap_or_default();
        p.changes |= statement_changes(Some(first_word(toks).unwrap_or("")), text);
        statement_effects(toks, text, &mut p.effects);
        if has_lock_fn {
            for (i, t) in toks.iter().enumerate() {
                match word(Some(t)) {
                    Some("GET_LOCK") if toks.get(i + 1) == Some(&Tok::Punct(b'(')) => {
                        let name = match (toks.get(i + 2), toks.get(i + 3)) {
                            (Some(Tok::Str(n)), Some(Tok::Punct(b','))) => {
                                Some(String::from_utf8_lossy(n).into_owned())
                            }
                            _ => None,
                        };
                        p.effects.push(Effect::GetLock(name));
                    }
                    Some("RELEASE_ALL_LOCKS") => p.effects.push(Effect::ReleaseAllLocks),
                    _ => {}
                }
            }
        }
    }
    p
}

fn statement_effects(toks: &[Tok], text: &[u8], out: &mut Vec<Effect>) {
    let w = |i: usize| word(toks.get(i));
    match w(0) {
        Some("CREATE") => {
            let mut i = 1;
            if w(i) == Some("OR") && w(i + 1) == Some("REPLACE") {
                i += 2;
            }
            if w(i) == Some("TEMPORARY") && w(i + 1) == Some("TABLE") {
                i += 2;
                if w(i) == Some("IF") && w(i + 1) == Some("NOT") && w(i + 2) == Some("EXISTS") {
                    i += 3;
                }
                if let Some((name, _)) = name_at(toks, i) {
                    out.push(Effect::CreateTemp(name));
                }
            }
        }
        Some("DROP") => {
            let mut i = 1;
            if w(i) == Some("PREPARE") {
                if let Some((name, _)) = name_at(toks, 2) {
                    out.push(Effect::Deallocate(name));
                }
                return;
            }
            if w(i) == Some("TEMPORARY") {
                i += 1;
            }
            if !matches!(w(i), Some("TABLE" | "TABLES")) {
                return;
            }
            i += 1;
            if w(i) == Some("IF") && w(i + 1) == Some("EXISTS") {
                i += 2;
            }
            let mut names = Vec::new();
            while let Some((name, next)) = name_at(toks, i) {
                names.push(name);
                if toks.get(next) != Some(&Tok::Punct(b',')) {
                    break;
                }
                i = next + 1;
            }
            out.push(Effect::DropTables(names));
        }
        Some("LOCK") if matches!(w(1), Some("TABLE" | "TABLES")) => out.push(Effect::LockTables),
        Some("UNLOCK") if matches!(w(1), Some("TABLE" | "TABLES")) => {
            out.push(Effect::UnlockTables)
        }
        Some("FLUSH") if toks.iter().any(|t| word(Some(t)) == Some("LOCK")) => {
            out.push(Effect::LockTables)
        }
        Some("PREPARE") => {
            if let Some((name, i)) = name_at(toks, 1) {
                if w(i) == Some("FROM") {
                    match toks.get(i + 1) {
                        Some(Tok::Str(_)) => out.push(Effect::Prepare(name, Some(text.to_vec()))),
                        _ => out.push(Effect::Prepare(name, None)),
                    }
                }
            }
        }
        Some("DEALLOCATE") if w(1) == Some("PREPARE") => {
            if let Some((name, _)) = name_at(toks, 2) {
                out.push(Effect::Deallocate(name));
            }
        }
        Some("HANDLER") => {
            if let Some((name, i)) = name_at(toks, 1) {
                match w(i) {
                    Some("OPEN") => out.push(Effect::HandlerOpen(name)),
                    Some("CLOSE") => out.push(Effect::HandlerClose(name)),
                    _ => {}
                }
            }
        }
        Some("XA") => match w(1) {
            Some("START" | "BEGIN") => out.push(Effect::XaStart),
            Some("COMMIT" | "ROLLBACK") => out.push(Effect::XaEnd),
            _ => {}
        },
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot and restore
// ---------------------------------------------------------------------------------------------

/// Why a session's state could not be carried.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// A snapshot or restore query failed.
    #[error("{step}: {source}")]
    Query {
        /// Which step.
        step: &'static str,
        /// The failure.
        source: QueryError,
    },
    /// The target's digest differs from the source's.
    #[error("state digest differs after restore ({0})")]
    Digest(String),
    /// A statement could not be re-prepared identically.
    #[error("re-prepared statement differs: {0}")]
    Prepare(String),
    /// A named lock is still held.
    #[error("GET_LOCK held")]
    LockHeld,
}

/// A changed session variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysVar {
    /// Lower-cased name.
    pub name: String,
    /// `VARIABLE_TYPE` of `information_schema.SYSTEM_VARIABLES`.
    pub ty: String,
    /// Session value (`None` for NULL).
    pub value: Option<String>,
}

/// A user variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserVar {
    /// Name as the server reports it.
    pub name: String,
    /// `INT`, `DECIMAL`, `DOUBLE` or `VARCHAR`.
    pub ty: String,
    /// Character set (strings).
    pub charset: Option<String>,
    /// Value as text (numbers) — strings are taken from the digest as hex.
    pub value: Option<String>,
}

/// What a move carries: read from the old backend, written to the new one.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Changed session variables.
    pub sysvars: Vec<SysVar>,
    /// User variables.
    pub uservars: Vec<UserVar>,
    /// The digest query.
    pub digest_sql: String,
    /// Its one row on the old backend: schema, then variable values.
    pub digest: Vec<Option<Vec<u8>>>,
}

/// Session-only or read-only variables never restored.
const NOT_RESTORED: &[&str] = &[
    "pseudo_thread_id",
    "timestamp",
    "warning_count",
    "error_count",
];

const SYSVARS_SQL: &str = "SELECT LOWER(VARIABLE_NAME), VARIABLE_TYPE, SESSION_VALUE \
     FROM information_schema.SYSTEM_VARIABLES WHERE VARIABLE_SCOPE = 'SESSION' \
     AND (NOT (SESSION_VALUE <=> GLOBAL_VALUE) OR VARIABLE_NAME IN \
     ('CHARACTER_SET_CLIENT','CHARACTER_SET_CONNECTION','CHARACTER_SET_RESULTS','COLLATION_CONNECTION'))";

const USERVARS_SQL: &str = "SELECT VARIABLE_NAME, VARIABLE_TYPE, CHARACTER_SET_NAME, \
     VARIABLE_VALUE FROM information_schema.USER_VARIABLES";

fn text(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

fn quote_ident(out: &mut String, name: &str) {
    out.push('`');
    out.push_str(&name.replace('`', "``"));
    out.push('`');
}

fn quote_str(out: &mut String, v: &str) {
    if v.bytes().all(|b| (0x20..0x7F).contains(&b) && b != b'\\') {
        out.push('\'');
        out.push_str(&v.replace('\'', "''"));
        out.push('\'');
    } else {
        out.push_str("CONVERT(X'");
        for b in v.bytes() {
            let _ = write!(out, "{b:02X}");
        }
        out.push_str("' USING utf8mb4)");
    }
}

fn is_number(v: &str) -> bool {
    !v.is_empty()
        && v.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'))
}

impl Snapshot {
    /// The state right after a login: nothing to restore; the digest checks the schema.
    pub fn login_defaults() -> Self {
        Self {
            sysvars: Vec::new(),
            uservars: Vec::new(),
            digest_sql: digest_sql(&[], &[]),
            digest: Vec::new(),
        }
    }
}

/// Reads the answers to queries queued on `b`, in order. A server error is kept in its slot;
/// a broken stream (framing, unexpected shape) ends the reading, since nothing after it can be
/// trusted.
async fn answers(
    b: &mut Backend,
    seqs: &[u8],
) -> Result<Vec<Result<Rows, QueryError>>, QueryError> {
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        match b.read_answer(seq).await {
            Err(e @ (QueryError::Packet(_) | QueryError::Shape(_))) => return Err(e),
            r => out.push(r),
        }
    }
    Ok(out)
}

/// `SELECT IS_USED_LOCK('a') <=> CONNECTION_ID(), …`.
fn lock_check_sql(names: &[String]) -> String {
    let mut sql = String::from("SELECT ");
    for (i, n) in names.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("IS_USED_LOCK(");
        quote_str(&mut sql, n);
        sql.push_str(") <=> CONNECTION_ID()");
    }
    sql
}

/// Reads the session's state from `b` (at a safe point), in as few round trips as it can: one
/// when the session has not changed carried state since its login or last move (the digest of
/// the carried state, read fresh: it also supplies string user variables' values), two
/// otherwise (session and user variables from `information_schema`, then their digest).
/// Named locks are checked in the first round trip.
pub async fn snapshot(b: &mut Backend, s: &mut Session) -> Result<Snapshot, StateError> {
    let q = |step| move |source| StateError::Query { step, source };
    let names: Vec<String> = s.named_locks().iter().cloned().collect();
    let mut seqs = Vec::with_capacity(3);
    if !names.is_empty() {
        seqs.push(b.send_query(&lock_check_sql(&names)));
    }
    let carried =
        (!s.changed()).then(|| s.carried.clone().unwrap_or_else(Snapshot::login_defaults));
    match &carried {
        Some(c) => seqs.push(b.send_query(&c.digest_sql)),
        None => {
            seqs.push(b.send_query(SYSVARS_SQL));
            seqs.push(b.send_query(USERVARS_SQL));
        }
    }
    let mut got = answers(b, &seqs).await.map_err(q("snapshot"))?.into_iter();
    if !names.is_empty() {
        let rows = got
            .next()
            .unwrap_or(Ok(Vec::new()))
            .map_err(q("lock check"))?;
        let row = rows.into_iter().next().unwrap_or_default();
        for (n, v) in names.iter().zip(row) {
            if v.as_deref() == Some(b"1") {
                return Err(StateError::LockHeld);
            }
            s.release_named_lock(n);
        }
    }
    if let Some(mut snap) = carried {
        let rows = got.next().unwrap_or(Ok(Vec::new())).map_err(q("digest"))?;
        snap.digest = rows.into_iter().next().unwrap_or_default();
        return Ok(snap);
    }
    let rows = got
        .next()
        .unwrap_or(Ok(Vec::new()))
        .map_err(q("session variables"))?;
    let mut sysvars: Vec<SysVar> = rows
        .iter()
        .filter_map(|r| {
            Some(SysVar {
                name: text(r.first()?)?,
                ty: text(r.get(1)?).unwrap_or_default(),
                value: text(r.get(2)?),
            })
        })
        .filter(|v| !NOT_RESTORED.contains(&v.name.as_str()))
        .collect();
    // character sets before collations (setting one resets the other), the rest after
    sysvars.sort_by_key(|v| {
        (
            !v.name.starts_with("character_set"),
            !v.name.starts_with("collation"),
            v.name.clone(),
        )
    });
    let rows = got
        .next()
        .unwrap_or(Ok(Vec::new()))
        .map_err(q("user variables"))?;
    let mut uservars: Vec<UserVar> = rows
        .iter()
        .filter_map(|r| {
            Some(UserVar {
                name: text(r.first()?)?,
                ty: text(r.get(1)?).unwrap_or_default(),
                charset: text(r.get(2)?),
                value: text(r.get(3)?),
            })
        })
        .collect();
    uservars.sort_by(|a, b| a.name.cmp(&b.name));
    let digest_sql = digest_sql(&sysvars, &uservars);
    let rows = b.query(&digest_sql).await.map_err(q("digest"))?;
    let digest = rows.into_iter().next().unwrap_or_default();
    Ok(Snapshot {
        sysvars,
        uservars,
        digest_sql,
        digest,
    })
}

/// `SELECT DATABASE(), @@session.v…, <user variables…>`: one row that must read the same on
/// both backends.
fn digest_sql(sysvars: &[SysVar], uservars: &[UserVar]) -> String {
    let mut sql = String::from("SELECT DATABASE()");
    for v in sysvars {
        sql.push_str(", @@session.");
        quote_ident(&mut sql, &v.name);
    }
    for u in uservars {
        if u.ty == "VARCHAR" {
            sql.push_str(", HEX(@");
            quote_ident(&mut sql, &u.name);
            sql.push_str("), COLLATION(@");
            quote_ident(&mut sql, &u.name);
            sql.push(')');
        } else {
            sql.push_str(", @");
            quote_ident(&mut sql, &u.name);
        }
    }
    sql
}

/// The `SET SESSION …` restoring the changed variables (`None` when there are none).
pub fn sysvars_sql(vars: &[SysVar]) -> Option<String> {
    if vars.is_empty() {
        return None;
    }
    let mut sql = String::from("SET ");
    for (i, v) in vars.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str("SESSION ");
        quote_ident(&mut sql, &v.name);
        sql.push_str(" = ");
        match &v.value {
            None => sql.push_str("NULL"),
            Some(val) if (v.ty.contains("INT") || v.ty == "DOUBLE") && is_number(val) => {
                sql.push_str(val)
            }
            Some(val) => quote_str(&mut sql, val),
        }
    }
    Some(sql)
}

/// The `SET @…` restoring user variables; string values come from the digest row (hex).
pub fn uservars_sql(snap: &Snapshot) -> Option<String> {
    if snap.uservars.is_empty() {
        return None;
    }
    let mut col = 1 + snap.sysvars.len();
    let mut sql = String::from("SET ");
    for (i, u) in snap.uservars.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push('@');
        quote_ident(&mut sql, &u.name);
        sql.push_str(" = ");
        if u.ty == "VARCHAR" {
            let hex = snap.digest.get(col).cloned().flatten();
            let coll = snap.digest.get(col + 1).cloned().flatten();
            col += 2;
            match hex {
                None => sql.push_str("NULL"),
                Some(h) => {
                    let h = String::from_utf8_lossy(&h).into_owned();
                    let cs = u.charset.clone().unwrap_or_else(|| "binary".into());
                    let _ = write!(sql, "CONVERT(X'{h}' USING ");
                    quote_ident(&mut sql, &cs);
                    sql.push(')');
                    if let Some(c) = coll.filter(|_| cs != "binary") {
                        sql.push_str(" COLLATE ");
                        quote_ident(&mut sql, &String::from_utf8_lossy(&c));
                    }
                }
            }
        } else {
            col += 1;
            match &u.value {
                None => sql.push_str("NULL"),
                Some(v) if is_number(v) => {
                    sql.push_str(v);
                    if u.ty == "DOUBLE" && !v.contains(['e', 'E']) {
                        sql.push_str("e0");
                    }
                }
                Some(v) => quote_str(&mut sql, v),
            }
        }
    }
    Some(sql)
}

/// Writes the snapshot, the SQL prepared statements and the binary ones to the target, and
/// checks the digest — all in one round trip (the commands are pipelined; the target is thrown
/// away on any failure, so nothing is read past the first one). Returns the binary statements'
/// new ids as (client id, target id).
pub async fn restore(
    b: &mut Backend,
    s: &Session,
    snap: &Snapshot,
    negotiated: u32,
) -> Result<Vec<(u32, u32)>, StateError> {
    use super::tracker::cmd;
    let q = |step| move |source| StateError::Query { step, source };
    let mut steps = Vec::with_capacity(4);
    if let Some(Some(db)) = snap.digest.first() {
        steps.push(("schema", b.send_command(cmd::INIT_DB, db)));
    }
    if let Some(sql) = sysvars_sql(&snap.sysvars) {
        steps.push(("session variables", b.send_query(&sql)));
    }
    if let Some(sql) = uservars_sql(snap) {
        steps.push(("user variables", b.send_query(&sql)));
    }
    for text in s.sql_prepared() {
        steps.push(("SQL prepared statement", b.send_command(cmd::QUERY, text)));
    }
    let digest_seq = b.send_query(&snap.digest_sql);
    let stmts: Vec<(u32, &Stmt, u8)> = s
        .stmts
        .iter()
        .map(|(&id, st)| (id, st, b.send_command(cmd::STMT_PREPARE, &st.sql)))
        .collect();
    for (step, seq) in steps {
        b.read_answer(seq).await.map_err(q(step))?;
    }
    let rows = b.read_answer(digest_seq).await.map_err(q("digest"))?;
    let digest = rows.into_iter().next().unwrap_or_default();
    if digest != snap.digest {
        let diff = digest
            .iter()
            .zip(&snap.digest)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(StateError::Digest(format!("column {diff}")));
    }
    let mut ids = Vec::with_capacity(stmts.len());
    for (client_id, st, seq) in stmts {
        let ok = b
            .read_prepare(seq, negotiated)
            .await
            .map_err(|e| StateError::Prepare(e.to_string()))?;
        if ok.params != st.params || ok.columns != st.columns {
            return Err(StateError::Prepare("parameter or column count".into()));
        }
        ids.push((client_id, ok.stmt_id));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<Effect> {
        analyze(sql.as_bytes()).effects
    }

    #[test]
    fn a_quoted_string_cut_by_a_trailing_backslash_does_not_panic_the_scan() {
        // issue 9, observation 1: `;'\` and friends panicked the session task
        for sql in [&b";'\\"[..], b"CREATE '\\", b"SELECT GET_LOCK('\\"] {
            let p = analyze(sql);
            assert_eq!(p.statements, 1, "{:?}", String::from_utf8_lossy(sql));
        }
    }

    #[test]
    fn plain_queries_have_no_effects() {
        assert!(effects("SELECT c FROM sbtest1 WHERE id=5").is_empty());
        assert!(effects("SET NAMES utf8mb4").is_empty());
        assert!(effects("select 'create temporary table x'").is_empty());
    }

    #[test]
    fn temporary_tables_locks_and_prepares_are_seen() {
        assert_eq!(
            effects("CREATE TEMPORARY TABLE IF NOT EXISTS db.`Tmp` (a int)"),
            vec![Effect::CreateTemp("tmp".into())]
        );
        assert_eq!(
            effects("drop temporary table if exists a, b.c"),
            vec![Effect::DropTables(vec!["a".into(), "c".into()])]
        );
        assert_eq!(effects("LOCK TABLES t WRITE"), vec![Effect::LockTables]);
        assert_eq!(
            effects("SELECT GET_LOCK('job', 10)"),
            vec![Effect::GetLock(Some("job".into()))]
        );
        assert_eq!(
            effects("SELECT GET_LOCK(CONCAT('a', 1), 10)"),
            vec![Effect::GetLock(None)]
        );
        assert_eq!(
            effects("PREPARE s1 FROM 'SELECT ?'"),
            vec![Effect::Prepare(
                "s1".into(),
                Some(b"PREPARE s1 FROM 'SELECT ?'".to_vec())
            )]
        );
        assert_eq!(
            effects("PREPARE s2 FROM @q"),
            vec![Effect::Prepare("s2".into(), None)]
        );
        assert_eq!(
            effects("/* hi */ DEALLOCATE PREPARE S1"),
            vec![Effect::Deallocate("s1".into())]
        );
    }

    #[test]
    fn multi_statements_and_executable_comments_are_scanned() {
        let p = analyze(b"SELECT 1; /*!40000 LOCK TABLES t READ */; PREPARE a FROM 'x;y'");
        assert_eq!(p.statements, 3);
        assert_eq!(p.effects[0], Effect::LockTables);
        assert_eq!(
            p.effects[1],
            Effect::Prepare("a".into(), Some(b"PREPARE a FROM 'x;y'".to_vec()))
        );
    }

    #[test]
    fn only_statements_that_may_change_variables_or_schema_count_as_changes() {
        let changes = |sql: &str| analyze(sql.as_bytes()).changes;
        for sql in [
            "SELECT c FROM sbtest1 WHERE id=5",
            "select @a, @@sql_mode",
            "INSERT INTO t VALUES (@a)",
            "BEGIN",
            "begin work",
            "COMMIT",
            "(SELECT 1) UNION (SELECT 2)",
            "SELECT 1; SELECT 2",
            "/* hint */ UPDATE t SET a = 1",
            "SELECT 1 INTO OUTFILE '/tmp/x'",
        ] {
            assert!(!changes(sql), "{sql}");
        }
        for sql in [
            "SET NAMES utf8mb4",
            "set @a = 1",
            "USE app1",
            "SELECT @a := 1",
            "SELECT 1 INTO @x",
            "select c from t where id = 1 into @c",
            "CALL p()",
            "EXECUTE s1",
            "PREPARE s1 FROM 'SELECT 1'",
            "DROP DATABASE app1",
            "SELECT 1; SET sql_mode = ''",
            "/*!40101 SET NAMES utf8 */",
            "`weird`",
            "BEGIN NOT ATOMIC SET @a = 1; END",
            "IF 1 THEN SET @a = 1; END IF",
        ] {
            assert!(changes(sql), "{sql}");
        }
    }

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
        s.moved(Snapshot::login_defaults());
        assert!(!s.changed());
        s.reset();
        assert!(s.changed());
    }

    #[test]
    fn blockers_follow_the_tracked_state() {
        let mut s = Session::new();
        assert_eq!(s.blocker(), None);
        s.status |= status::IN_TRANS;
        assert_eq!(s.blocker(), Some(Blocker::Wait("transaction open")));
        s.status = status::AUTOCOMMIT;
        let p = s.before_query(b"CREATE TEMPORARY TABLE t (a int)");
        s.after_query(p, false);
        assert_eq!(s.blocker(), Some(Blocker::Refuse("temporary tables")));
        let p = s.before_query(b"DROP TABLE t");
        s.after_query(p, false);
        assert_eq!(s.blocker(), None);
        let p = s.before_query(b"PREPARE p FROM 'bad sql'");
        s.after_query(p, true);
        assert_eq!(s.sql_prepared().count(), 0);
    }

    #[test]
    fn restore_statements_quote_by_type() {
        let vars = vec![
            SysVar {
                name: "sql_mode".into(),
                ty: "SET".into(),
                value: Some("ANSI_QUOTES".into()),
            },
            SysVar {
                name: "wait_timeout".into(),
                ty: "BIGINT UNSIGNED".into(),
                value: Some("123".into()),
            },
            SysVar {
                name: "character_set_results".into(),
                ty: "ENUM".into(),
                value: None,
            },
        ];
        assert_eq!(
            sysvars_sql(&vars).unwrap(),
            "SET SESSION `sql_mode` = 'ANSI_QUOTES', SESSION `wait_timeout` = 123, \
             SESSION `character_set_results` = NULL"
        );
        let snap = Snapshot {
            sysvars: vec![],
            uservars: vec![
                UserVar {
                    name: "a".into(),
                    ty: "VARCHAR".into(),
                    charset: Some("utf8mb4".into()),
                    value: None,
                },
                UserVar {
                    name: "d".into(),
                    ty: "DOUBLE".into(),
                    charset: None,
                    value: Some("1.5".into()),
                },
            ],
            digest_sql: String::new(),
            digest: vec![
                None,
                Some(b"78".to_vec()),
                Some(b"utf8mb4_bin".to_vec()),
                Some(b"1.5".to_vec()),
            ],
        };
        assert_eq!(
            uservars_sql(&snap).unwrap(),
            "SET @`a` = CONVERT(X'78' USING `utf8mb4`) COLLATE `utf8mb4_bin`, @`d` = 1.5e0"
        );
    }
}
