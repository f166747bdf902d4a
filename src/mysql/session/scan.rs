//! The statement scan: what a client's SQL text does to session state the server does not
//! report (temporary tables, `GET_LOCK`, `LOCK TABLES`, `PREPARE`, `HANDLER`, XA), and whether it
//! may change state a move carries (variables, schema).
//!
//! Conservative by design: a statement it cannot read counts as a change, and the scan runs on
//! hostile bytes, so it never indexes without a check. One statement with an uninteresting first
//! word (the common case) is decided after lexing one token.

use super::long_text::may_have_effects;

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
    /// `SET TRANSACTION …` without `SESSION` or `GLOBAL`: characteristics for the next
    /// transaction only, which the server does not report.
    TxOnce,
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`, `XA …`: a transaction starts (and
    /// takes the one-shot characteristics) or ends (and drops them).
    TxBoundary,
}

impl Effect {
    /// Effects whose loss only keeps a session longer: when a multi-statement query fails the
    /// proxy cannot tell which statements ran, and guessing these wrong is still safe (see
    /// `Session::after_query`).
    pub(super) fn safe_when_unsure(&self) -> bool {
        matches!(self, Effect::TxOnce | Effect::TxBoundary)
    }
}

/// Bytes of query text the scan reads token by token. A longer text (a bulk `INSERT`, up to the
/// protocol's 1 GiB) is not tokenized, so the scan's memory never grows with the query: it is
/// searched, storing nothing, for the words a statement with an [`Effect`] must contain
/// ([`EFFECT_WORDS`](super::long_text::EFFECT_WORDS)); if one is there its effects are unknown, and the session pins.
pub const SCAN_MAX: usize = 1 << 20;

/// Effects of one client query, waiting for its response.
#[derive(Debug, Default)]
pub struct Pending {
    pub(super) effects: Vec<Effect>,
    pub(super) statements: usize,
    /// Some statement may change carried state (session or user variables, schema).
    pub(super) changes: bool,
    /// The text was too long to scan and may have effects the scan tracks: what they are is
    /// unknown, so the session can no longer prove it carries its state.
    pub(super) unknown_effects: bool,
}

impl Pending {
    /// The query went on past the text scanned (a query over 16 MiB) and its rest may have
    /// effects: see [`EffectWatch`](super::long_text::EffectWatch).
    pub fn mark_unknown_effects(&mut self) {
        self.unknown_effects = true;
        self.changes = true;
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    /// Keyword or identifier, upper-cased when unquoted; backquoted names keep their case.
    Word(String, bool),
    Str(Vec<u8>),
    Var,
    Punct(u8),
}

/// A conservative tokenizer: comments skipped (executable comments read as code), quoted
/// strings and names unquoted, everything else one byte at a time. Every read is checked, and
/// every step moves forward or stops at the end, so no input can make it panic or loop.
pub(super) struct Lexer<'a> {
    s: &'a [u8],
    i: usize,
    /// A string held a backslash before its own quote (`'O\'Brien'`): under
    /// `NO_BACKSLASH_ESCAPES` the server ends the string there, and reads what follows as code.
    pub(super) escaped_quote: bool,
}

pub(super) fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

impl<'a> Lexer<'a> {
    pub(super) fn new(s: &'a [u8]) -> Self {
        Self {
            s,
            i: 0,
            escaped_quote: false,
        }
    }

    /// The byte `ahead` places past the current one.
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.s.get(self.i.checked_add(ahead)?).copied()
    }

    /// Moves `n` bytes on, never past the end.
    fn bump(&mut self, n: usize) {
        self.i = self.i.saturating_add(n).min(self.s.len());
    }

    fn skip_while(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek(0).is_some_and(&f) {
            self.bump(1);
        }
    }

    fn skip_space(&mut self) {
        while let Some(c) = self.peek(0) {
            if c.is_ascii_whitespace() {
                self.bump(1);
            } else if c == b'#'
                || (c == b'-'
                    && self.peek(1) == Some(b'-')
                    && self.peek(2).is_none_or(|c| c.is_ascii_whitespace()))
            {
                self.skip_while(|c| c != b'\n');
            } else if c == b'/' && self.peek(1) == Some(b'*') {
                if self.peek(2) == Some(b'!') {
                    // executable comment: its contents are code
                    self.bump(3);
                    self.skip_while(|c| c.is_ascii_digit());
                } else if self.peek(2) == Some(b'M') && self.peek(3) == Some(b'!') {
                    self.bump(4);
                    self.skip_while(|c| c.is_ascii_digit());
                } else {
                    self.bump(2);
                    while self.peek(0).is_some()
                        && !(self.peek(0) == Some(b'*') && self.peek(1) == Some(b'/'))
                    {
                        self.bump(1);
                    }
                    self.bump(2);
                }
            } else if c == b'*' && self.peek(1) == Some(b'/') {
                // end of an executable comment
                self.bump(2);
            } else {
                return;
            }
        }
    }

    /// The next token and where it starts.
    fn next_tok(&mut self) -> Option<(Tok, usize)> {
        self.skip_space();
        let start = self.i;
        let c = self.peek(0)?;
        let tok = if is_word(c) {
            self.skip_while(is_word);
            let w = self.s.get(start..self.i).unwrap_or_default();
            Tok::Word(String::from_utf8_lossy(w).to_ascii_uppercase(), false)
        } else if c == b'`' {
            Tok::Word(
                String::from_utf8_lossy(&self.quoted(b'`')).into_owned(),
                true,
            )
        } else if c == b'\'' || c == b'"' {
            Tok::Str(self.quoted(c))
        } else if c == b'@' && self.peek(1) != Some(b'@') {
            self.bump(1);
            match self.peek(0) {
                Some(q @ (b'`' | b'\'' | b'"')) => {
                    self.quoted(q);
                }
                _ => self.skip_while(|c| is_word(c) || c == b'.'),
            }
            Tok::Var
        } else {
            self.bump(1);
            Tok::Punct(c)
        };
        Some((tok, start))
    }

    /// A quoted token's contents (escapes resolved roughly: enough for names). An unterminated
    /// one runs to the end of the text.
    fn quoted(&mut self, q: u8) -> Vec<u8> {
        let mut out = Vec::new();
        self.quoted_into(q, Some(&mut out));
        out
    }

    /// Steps over a quoted token, copying its contents to `out` when given.
    fn quoted_into(&mut self, q: u8, mut out: Option<&mut Vec<u8>>) {
        self.bump(1);
        while let Some(c) = self.peek(0) {
            if c == b'\\' && q != b'`' {
                // a backslash at the very end escapes nothing (issue 9: `;'\` once stepped
                // past the end here)
                self.escaped_quote |= self.peek(1) == Some(q);
                if let Some(o) = out.as_deref_mut() {
                    o.extend(self.peek(1));
                }
                self.bump(2);
            } else if c == q {
                self.bump(1);
                if self.peek(0) != Some(q) {
                    return;
                }
                if let Some(o) = out.as_deref_mut() {
                    o.push(q);
                }
                self.bump(1);
            } else {
                if let Some(o) = out.as_deref_mut() {
                    o.push(c);
                }
                self.bump(1);
            }
        }
    }

    /// The next word-like span, as [`Lexer::next_tok`] would see it but storing nothing: an
    /// unquoted word, or the contents of a backquoted or double-quoted name (a name in quotes
    /// can still call a function, and `"…"` is a name under `ANSI_QUOTES`). String literals,
    /// comments, variables and punctuation are stepped over.
    pub(super) fn next_word_span(&mut self) -> Option<&'a [u8]> {
        loop {
            self.skip_space();
            let start = self.i;
            let c = self.peek(0)?;
            if is_word(c) {
                self.skip_while(is_word);
                return self.s.get(start..self.i);
            } else if c == b'`' || c == b'"' {
                self.quoted_into(c, None);
                let end = self.i.saturating_sub(1).max(start + 1);
                return self.s.get(start + 1..end);
            } else if c == b'\'' {
                self.quoted_into(c, None);
            } else if c == b'@' {
                self.bump(1);
                match self.peek(0) {
                    Some(q @ (b'`' | b'\'' | b'"')) => self.quoted_into(q, None),
                    _ => self.skip_while(|c| is_word(c) || c == b'.'),
                }
            } else {
                self.bump(1);
            }
        }
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
    if sql.len() > SCAN_MAX {
        return Pending {
            effects: Vec::new(),
            statements: 1,
            changes: true,
            unknown_effects: may_have_effects(sql),
        };
    }
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
                    effects: first
                        .and_then(|w| tx_effect(w, &mut lx, sql))
                        .into_iter()
                        .collect(),
                    statements: 1,
                    changes: statement_changes(first, sql),
                    unknown_effects: false,
                };
            }
        }
    }
    let stmts = statements(sql);
    let mut p = Pending {
        effects: Vec::new(),
        statements: stmts.len(),
        changes: false,
        unknown_effects: false,
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

/// The transaction effect of a statement whose first word is `first` (`lx` just past it),
/// decided without tokenizing the rest: `BEGIN` and `COMMIT` are frequent, and this is the fast
/// path's share of [`statement_effects`].
fn tx_effect(first: &str, lx: &mut Lexer<'_>, text: &[u8]) -> Option<Effect> {
    let mut then_transaction =
        || matches!(lx.next_tok(), Some((Tok::Word(w, false), _)) if w == "TRANSACTION");
    match first {
        "SET" if then_transaction() => Some(Effect::TxOnce),
        "START" if then_transaction() => Some(Effect::TxBoundary),
        "BEGIN" if plain_begin(text) => Some(Effect::TxBoundary),
        "COMMIT" | "ROLLBACK" => Some(Effect::TxBoundary),
        _ => None,
    }
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
        Some("XA") => {
            match w(1) {
                Some("START" | "BEGIN") => out.push(Effect::XaStart),
                Some("COMMIT" | "ROLLBACK") => out.push(Effect::XaEnd),
                _ => {}
            }
            out.push(Effect::TxBoundary);
        }
        // `SET SESSION TRANSACTION …` changes a variable the snapshot carries; without a scope
        // it holds for the next transaction only
        Some("SET") if w(1) == Some("TRANSACTION") => out.push(Effect::TxOnce),
        Some("BEGIN") if plain_begin(text) => out.push(Effect::TxBoundary),
        Some("START") if w(1) == Some("TRANSACTION") => out.push(Effect::TxBoundary),
        Some("COMMIT" | "ROLLBACK") => out.push(Effect::TxBoundary),
        _ => {}
    }
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
    fn unterminated_quotes_comments_and_variables_end_at_the_text() {
        for sql in [
            "SELECT 'abc",
            "SELECT `abc",
            "SELECT @'x",
            "SELECT /* open",
            "SELECT /*!40101 open",
            "PREPARE s FROM '",
            "DROP TABLE a,",
            "-- \n#",
            "\\",
            "'",
            "@",
        ] {
            let p = analyze(sql.as_bytes());
            assert!(p.statements <= 1, "{sql}");
        }
    }

    #[test]
    fn transaction_statements_are_seen_for_a_one_shot_set_transaction() {
        assert_eq!(
            effects("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            vec![Effect::TxOnce]
        );
        assert_eq!(effects("set transaction read only"), vec![Effect::TxOnce]);
        assert!(effects("SET SESSION TRANSACTION READ ONLY").is_empty());
        assert!(effects("SET GLOBAL TRANSACTION READ ONLY").is_empty());
        for sql in [
            "BEGIN",
            "begin work",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "ROLLBACK",
        ] {
            assert_eq!(effects(sql), vec![Effect::TxBoundary], "{sql}");
        }
        assert!(effects("BEGIN NOT ATOMIC SELECT 1; END").is_empty());
        assert!(effects("BEGIN NOT ATOMIC SELECT 1 END").is_empty());
        // one statement is decided on the fast path, several by tokens: the same effects
        assert_eq!(
            effects("SET TRANSACTION READ ONLY; BEGIN"),
            vec![Effect::TxOnce, Effect::TxBoundary]
        );
        assert_eq!(
            effects("SELECT 1; set session transaction read only; commit"),
            vec![Effect::TxBoundary]
        );
        assert_eq!(
            effects("XA START 'x'"),
            vec![Effect::XaStart, Effect::TxBoundary]
        );
    }

    #[test]
    fn a_text_over_the_cap_is_not_scanned_but_searched_for_effect_words() {
        let mut sql = b"INSERT INTO t VALUES ('a;b')".to_vec();
        while sql.len() <= SCAN_MAX {
            sql.extend_from_slice(b", ('a;b')");
        }
        let p = analyze(&sql);
        assert!(p.effects.is_empty());
        assert!(
            p.changes,
            "an unscanned text may have changed carried state"
        );
        assert!(!p.unknown_effects);
        sql.extend_from_slice(b"; CREATE TEMPORARY TABLE tt (a int)");
        let p = analyze(&sql);
        assert!(p.effects.is_empty());
        assert!(p.unknown_effects);
    }

    /// Counts the bytes this thread allocates while enabled (for the memory test below).
    struct CountingAlloc;

    thread_local! {
        static ALLOCATED: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
    }

    // SAFETY: every call is passed to the system allocator unchanged; the count is a side note.
    unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
        unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get().map(|n| n + layout.size())));
            // SAFETY: same layout contract as ours
            unsafe { std::alloc::System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
            // SAFETY: `ptr` came from `System.alloc` with this layout
            unsafe { std::alloc::System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(
            &self,
            ptr: *mut u8,
            layout: std::alloc::Layout,
            new_size: usize,
        ) -> *mut u8 {
            let _ = ALLOCATED.try_with(|a| a.set(a.get().map(|n| n + new_size)));
            // SAFETY: as for `dealloc`
            unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static COUNTING: CountingAlloc = CountingAlloc;

    #[test]
    fn scanning_a_16_mib_statement_allocates_no_tokens() {
        // issue 9, bounded memory: the scan stored every token of a query up to 16 MiB
        let mut sql = b"INSERT INTO t (a, b) VALUES ('x;y', 1)".to_vec();
        while sql.len() < 16 << 20 {
            sql.extend_from_slice(b", ('x;y', @v), (`c`, 2)");
        }
        sql.extend_from_slice(b"; SELECT 1");
        ALLOCATED.with(|a| a.set(Some(0)));
        let p = analyze(&sql);
        let allocated = ALLOCATED.with(|a| a.replace(None)).unwrap_or(0);
        assert!(p.changes && !p.unknown_effects);
        assert!(
            allocated < 4096,
            "scanning 16 MiB allocated {allocated} bytes"
        );
    }

    /// Pieces the scan treats specially, so random texts hit its corners often.
    fn piece() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u8>().prop_map(|b| vec![b]),
            proptest::sample::select(vec![
                "'",
                "\"",
                "`",
                "\\",
                "@",
                "@@",
                ";",
                "/*",
                "*/",
                "/*!",
                "/*M!",
                "--",
                "-- ",
                "#",
                "\n",
                " ",
                ",",
                ".",
                "(",
                ":=",
                "SELECT ",
                "CREATE ",
                "TEMPORARY ",
                "TABLE ",
                "DROP ",
                "LOCK ",
                "PREPARE ",
                "FROM ",
                "GET_LOCK(",
                "RELEASE_ALL_LOCKS",
                "HANDLER ",
                "XA ",
                "INTO ",
                "BEGIN ",
                "x",
                "1",
            ])
            .prop_map(|s| s.as_bytes().to_vec()),
        ]
    }

    proptest::proptest! {
        #[test]
        fn the_scan_never_panics_and_ends_on_any_bytes(
            pieces in proptest::collection::vec(piece(), 0..64)
        ) {
            let sql = pieces.concat();
            let p = analyze(&sql);
            proptest::prop_assert!(p.statements <= sql.len().max(1));
            let mut s = crate::mysql::session::Session::new();
            let p = s.before_query(&sql);
            s.after_query(p, false);
        }

        #[test]
        fn the_scan_never_panics_on_arbitrary_bytes(
            sql in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let p = analyze(&sql);
            proptest::prop_assert!(p.statements <= sql.len().max(1));
        }
    }
}
