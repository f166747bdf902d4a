//! The statement scan: what a client's SQL text does to session state the server does not
//! report (temporary tables, `GET_LOCK`, `LOCK TABLES`, `PREPARE`, `HANDLER`, XA), and whether it
//! may change state a move carries (variables, schema).
//!
//! Conservative by design: a statement it cannot read counts as a change, one it cannot see
//! into (`CALL`, a compound statement) is *opaque*, and nothing inside a routine definition
//! counts, since it does not run now. Effects are kept per statement, so that after a failed
//! multi-statement query the session applies only those of the statements that ran. The scan
//! runs on hostile bytes ([`super::lex`]). One statement with a plain first word (the common
//! case) is decided after lexing one token.

use super::lex::{cheap_contains, name_at, statements, word, Lexer, Tok};
use super::long_text::may_have_effects;
use super::statement::{first_word, lock_functions, statement_effects, statement_kind};
pub use super::statement::{Effect, Kind};

/// One statement of a query: what it does, as far as the scan can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Part {
    /// Its effects on untracked state.
    pub(super) effects: Vec<Effect>,
    /// How far the scan saw into it.
    pub(super) kind: Kind,
}

/// Bytes of query text the scan reads token by token. A longer text (a bulk `INSERT`, up to the
/// protocol's 1 GiB) is not tokenized, so the scan's memory never grows with the query: it is
/// searched, storing nothing, for the words a statement with an [`Effect`] must contain
/// ([`EFFECT_WORDS`](super::long_text::EFFECT_WORDS)); if one is there its effects are unknown, and the session pins.
pub const SCAN_MAX: usize = 1 << 20;

/// Effects of one client query, waiting for its response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pending {
    /// Its statements, in order; empty for one statement the fast path decided (no effects,
    /// nothing hidden), so the common query allocates nothing.
    pub(super) parts: Vec<Part>,
    /// Some statement may change carried state (session or user variables, schema).
    pub(super) changes: bool,
    /// Some statement may change user variables (which the server does not report).
    pub(super) uservars: bool,
    /// The text names the `session_track_*` variables, through which the server reports the
    /// session's state to the proxy.
    pub(super) tracking: bool,
    /// The text was too long to scan and may have effects the scan tracks: what they are is
    /// unknown, so the session can no longer prove it carries its state.
    pub(super) unknown_effects: bool,
}

impl Pending {
    /// How many statements the scan found: the results a query that succeeds returns.
    pub fn statements(&self) -> usize {
        self.parts.len().max(1)
    }

    /// True when running it changes nothing the proxy follows (the common `SELECT`).
    pub fn inert(&self) -> bool {
        !self.changes
            && !self.uservars
            && !self.tracking
            && !self.unknown_effects
            && self
                .parts
                .iter()
                .all(|p| p.kind == Kind::Plain && p.effects.is_empty())
    }

    /// Whether a statement opens or ends a transaction (`BEGIN`, `START TRANSACTION`, `COMMIT`,
    /// `ROLLBACK`): the cheap test before the replay log looks closer.
    pub fn may_begin_transaction(&self) -> bool {
        self.parts
            .iter()
            .any(|p| p.effects.contains(&Effect::TxBoundary))
    }

    /// Whether any statement is opaque.
    pub fn opaque(&self) -> bool {
        self.parts.iter().any(|p| p.kind == Kind::Opaque)
    }

    /// The query went on past the text scanned (a query over 16 MiB) and its rest may have
    /// effects: see [`EffectWatch`](super::long_text::EffectWatch).
    pub fn mark_unknown_effects(&mut self) {
        self.unknown_effects = true;
        self.changes = true;
        self.uservars = true;
    }
}

/// First words of statements that may have effects: never decided on the fast path.
const FIRST_WORDS: &[&str] = &[
    "CREATE",
    "ALTER",
    "DROP",
    "LOCK",
    "UNLOCK",
    "FLUSH",
    "PREPARE",
    "DEALLOCATE",
    "EXECUTE",
    "HANDLER",
    "XA",
    "SET",
    "BACKUP",
];

/// How deep `EXECUTE IMMEDIATE 'EXECUTE IMMEDIATE …'` is followed before the statement counts
/// as opaque.
const MAX_NESTING: usize = 4;

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

/// The effects of a query text on state the server does not report, and whether it may change
/// state a move carries.
pub fn analyze(sql: &[u8]) -> Pending {
    analyze_nested(sql, 0)
}

/// The text a `PREPARE name FROM '…'` statement prepares, scanned: what an `EXECUTE name` does.
/// `None` when the statement is not one (then `EXECUTE` runs an unknown text).
pub fn analyze_prepared(statement: &[u8]) -> Option<Pending> {
    let toks: Vec<Tok> = {
        let mut lx = Lexer::new(statement);
        std::iter::from_fn(|| lx.next_tok().map(|(t, _)| t)).collect()
    };
    let (_, i) = name_at(&toks, 1)?;
    match (word(toks.get(i)), toks.get(i + 1)) {
        (Some("FROM"), Some(Tok::Str(text))) => Some(analyze(text)),
        _ => None,
    }
}

fn analyze_nested(sql: &[u8], depth: usize) -> Pending {
    if sql.len() > SCAN_MAX {
        return Pending {
            parts: vec![Part::default()],
            changes: true,
            uservars: true,
            tracking: cheap_contains(sql, b"session_track"),
            unknown_effects: may_have_effects(sql),
        };
    }
    let tracking = cheap_contains(sql, b"session_track");
    let has_lock_fn = cheap_contains(sql, b"get_lock") || cheap_contains(sql, b"release_all_locks");
    if !sql.contains(&b';') && !has_lock_fn {
        if let Some(p) = fast_path(sql, tracking) {
            return p;
        }
    }
    let stmts = statements(sql);
    let mut p = Pending {
        tracking,
        ..Pending::default()
    };
    for (toks, range) in &stmts {
        let text = sql.get(range.clone()).unwrap_or_default();
        let first = Some(first_word(toks).unwrap_or(""));
        let changes = statement_changes(first, text);
        p.changes |= changes;
        p.uservars |= changes && may_set_user_variables(first, text);
        let mut part = Part {
            effects: Vec::new(),
            kind: statement_kind(toks),
        };
        if part.kind == Kind::Definition {
            p.parts.push(part);
            continue;
        }
        statement_effects(toks, text, &mut part.effects);
        if word(toks.first()) == Some("EXECUTE") && word(toks.get(1)) == Some("IMMEDIATE") {
            execute_immediate(toks, depth, &mut part);
        }
        if has_lock_fn {
            lock_functions(toks, &mut part.effects);
        }
        p.parts.push(part);
    }
    p
}

/// One statement whose first word says it has no effects and runs no hidden code: decided
/// after one token. `None` sends the text to the full scan.
fn fast_path(sql: &[u8], tracking: bool) -> Option<Pending> {
    let mut lx = Lexer::new(sql);
    let mut first = lx.next_tok();
    while let Some((Tok::Punct(b'('), _)) = first {
        first = lx.next_tok();
    }
    let first = match &first {
        Some((Tok::Word(w, false), _)) => w.as_str(),
        Some(_) => "",
        None => {
            return Some(Pending {
                tracking,
                ..Pending::default()
            })
        }
    };
    let plain = STATELESS_FIRST_WORDS.contains(&first)
        && !FIRST_WORDS.contains(&first)
        && (first != "BEGIN" || plain_begin(sql));
    if !plain {
        return None;
    }
    let changes = statement_changes(Some(first), sql);
    // a transaction statement is the fast path's one effect; anything else allocates nothing
    let parts = match tx_effect(first, &mut lx, sql) {
        Some(e) => vec![Part {
            effects: vec![e],
            kind: Kind::Plain,
        }],
        None => Vec::new(),
    };
    Some(Pending {
        parts,
        changes,
        uservars: changes,
        tracking,
        unknown_effects: false,
    })
}

/// Whether a statement that may change carried state may change user variables: all but `SET`
/// of system variables only, `USE`, and the like.
fn may_set_user_variables(first: Option<&str>, text: &[u8]) -> bool {
    !matches!(
        first,
        Some("SET" | "USE" | "DROP" | "PREPARE" | "DEALLOCATE")
    ) || has_user_variable(text)
}

/// A `@name` (not `@@name`) anywhere in the text, strings included.
fn has_user_variable(text: &[u8]) -> bool {
    text.iter().enumerate().any(|(i, &c)| {
        c == b'@' && text.get(i + 1) != Some(&b'@') && (i == 0 || text.get(i - 1) != Some(&b'@'))
    })
}

/// `EXECUTE IMMEDIATE 'text'`: the effects of the text; a computed text is opaque.
fn execute_immediate(toks: &[Tok], depth: usize, part: &mut Part) {
    let inner = match toks.get(2) {
        Some(Tok::Str(text)) if depth < MAX_NESTING => analyze_nested(text, depth + 1),
        _ => {
            part.kind = Kind::Opaque;
            return;
        }
    };
    match inner.parts.as_slice() {
        [one] if one.kind == Kind::Plain => part.effects.extend(one.effects.iter().cloned()),
        [] => {}
        _ => part.kind = Kind::Opaque,
    }
}

/// The transaction effect of a statement whose first word is `first` (`lx` just past it),
/// decided without tokenizing the rest: `BEGIN` and `COMMIT` are frequent, and this is the fast
/// path's share of [`statement_effects`].
fn tx_effect(first: &str, lx: &mut Lexer<'_>, text: &[u8]) -> Option<Effect> {
    let next_is = |lx: &mut Lexer<'_>, want: &str| matches!(lx.next_tok(), Some((Tok::Word(w, false), _)) if w == want);
    match first {
        "SET" if next_is(lx, "TRANSACTION") => Some(Effect::TxOnce),
        "START" if next_is(lx, "TRANSACTION") => Some(Effect::TxBoundary),
        "BEGIN" if plain_begin(text) => Some(Effect::TxBoundary),
        "COMMIT" => Some(Effect::TxBoundary),
        // `ROLLBACK TO [SAVEPOINT] name` ends nothing
        "ROLLBACK" if !next_is(lx, "TO") => Some(Effect::TxBoundary),
        "SAVEPOINT" => Some(Effect::Savepoint),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
