//! What one statement does, from its tokens: how far the scan sees into it (plain, opaque, a
//! definition whose body does not run now) and its effects on state the server does not report.
//! [`super::scan`] splits a query into statements and calls these per statement.

use super::lex::{name_at, word, Tok};

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
    /// `EXECUTE name`: the effects of the statement prepared under that name.
    Execute(String),
    /// `SET ROLE name` (`false`: `SET ROLE NONE`).
    SetRole(bool),
    /// `BACKUP STAGE …` / `BACKUP LOCK t` (`true`), `BACKUP STAGE END` / `BACKUP UNLOCK`.
    BackupLock(bool),
    /// `SET TRANSACTION …` without `SESSION` or `GLOBAL`: characteristics for the next
    /// transaction only, which the server does not report.
    TxOnce,
    /// `BEGIN`, `START TRANSACTION`, `COMMIT`, `ROLLBACK`, `XA …`: a transaction starts (and
    /// takes the one-shot characteristics) or ends (and drops them).
    TxBoundary,
}

/// How far the scan can see into one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Its effects are all in its text.
    #[default]
    Plain,
    /// It runs code the scan cannot see (`CALL`, a compound statement, `EXECUTE IMMEDIATE` of a
    /// computed text): it may have changed anything.
    Opaque,
    /// It defines a routine, trigger, event or view: nothing in it runs now, and the rest of
    /// the query may be its body.
    Definition,
}

/// First words of compound statements, which MariaDB runs outside stored programs too.
const COMPOUND_FIRST_WORDS: &[&str] = &["IF", "CASE", "LOOP", "WHILE", "REPEAT", "FOR", "DECLARE"];

/// What a `CREATE`/`ALTER` may define whose body does not run now.
const DEFINED: &[&str] = &[
    "PROCEDURE",
    "FUNCTION",
    "TRIGGER",
    "EVENT",
    "PACKAGE",
    "VIEW",
];

/// Words that may stand between `CREATE`/`ALTER` and what it defines.
const DEFINITION_PREFIX: &[&str] = &[
    "OR",
    "REPLACE",
    "AGGREGATE",
    "SQL",
    "SECURITY",
    "DEFINER",
    "INVOKER",
    "ALGORITHM",
    "UNDEFINED",
    "MERGE",
    "TEMPTABLE",
    "CURRENT_USER",
    "CURRENT_ROLE",
    "IF",
    "NOT",
    "EXISTS",
];

/// Tokens looked at after `CREATE`/`ALTER` for what it defines.
const DEFINITION_LOOKAHEAD: usize = 12;

/// The first word of a statement, past opening parentheses.
pub(super) fn first_word(toks: &[Tok]) -> Option<&str> {
    toks.iter()
        .find(|t| **t != Tok::Punct(b'('))
        .and_then(|t| word(Some(t)))
}

/// How far the scan sees into a statement (see [`Kind`]).
pub(super) fn statement_kind(toks: &[Tok]) -> Kind {
    let Some(first) = first_word(toks) else {
        return Kind::Plain;
    };
    let labelled = toks.get(1) == Some(&Tok::Punct(b':'));
    let compound =
        COMPOUND_FIRST_WORDS.contains(&first) || (first == "BEGIN" && !plain_begin_toks(toks));
    if first == "CALL" || compound || labelled {
        return Kind::Opaque;
    }
    if matches!(first, "CREATE" | "ALTER") && defines_code(toks) {
        return Kind::Definition;
    }
    Kind::Plain
}

/// `BEGIN` or `BEGIN WORK` as tokens.
fn plain_begin_toks(toks: &[Tok]) -> bool {
    match toks.get(1) {
        None => true,
        Some(Tok::Word(w, false)) if w == "WORK" => toks.len() == 2,
        Some(_) => false,
    }
}

/// Whether a `CREATE`/`ALTER` defines a routine, trigger, event or view: the defined word comes
/// right after the optional `OR REPLACE`, `DEFINER = user`, `SQL SECURITY …`, `ALGORITHM = …`.
fn defines_code(toks: &[Tok]) -> bool {
    let mut i = 1;
    while i < DEFINITION_LOOKAHEAD.min(toks.len()) {
        match toks.get(i) {
            Some(Tok::Word(w, false)) if DEFINED.contains(&w.as_str()) => return true,
            Some(Tok::Word(w, false)) if w == "DEFINER" => {
                // DEFINER = user[@host]: the user may be any word or string
                i += 2;
                if toks.get(i + 1) == Some(&Tok::Var) {
                    i += 1;
                }
            }
            Some(Tok::Word(w, false)) if DEFINITION_PREFIX.contains(&w.as_str()) => {}
            Some(Tok::Punct(b'=' | b'(' | b')')) => {}
            _ => return false,
        }
        i += 1;
    }
    false
}

/// `GET_LOCK('name', …)` and `RELEASE_ALL_LOCKS()` anywhere in a statement.
pub(super) fn lock_functions(toks: &[Tok], out: &mut Vec<Effect>) {
    for (i, t) in toks.iter().enumerate() {
        match word(Some(t)) {
            Some("GET_LOCK") if toks.get(i + 1) == Some(&Tok::Punct(b'(')) => {
                let name = match (toks.get(i + 2), toks.get(i + 3)) {
                    (Some(Tok::Str(n)), Some(Tok::Punct(b','))) => {
                        Some(String::from_utf8_lossy(n).into_owned())
                    }
                    _ => None,
                };
                out.push(Effect::GetLock(name));
            }
            Some("RELEASE_ALL_LOCKS") => out.push(Effect::ReleaseAllLocks),
            _ => {}
        }
    }
}

/// The effects of one statement on untracked state (`text`: the statement's bytes).
pub(super) fn statement_effects(toks: &[Tok], text: &[u8], out: &mut Vec<Effect>) {
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
        // FLUSH TABLES … WITH READ LOCK / FOR EXPORT hold locks until UNLOCK TABLES
        Some("FLUSH")
            if toks
                .iter()
                .any(|t| matches!(word(Some(t)), Some("LOCK" | "EXPORT"))) =>
        {
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
        Some("EXECUTE") if w(1) != Some("IMMEDIATE") => {
            if let Some((name, _)) = name_at(toks, 1) {
                out.push(Effect::Execute(name));
            }
        }
        Some("SET") if w(1) == Some("ROLE") => out.push(Effect::SetRole(w(2) != Some("NONE"))),
        // BACKUP STAGE …/BACKUP LOCK t hold locks until BACKUP STAGE END/BACKUP UNLOCK
        Some("BACKUP") => match (w(1), w(2)) {
            (Some("STAGE"), Some("END")) | (Some("UNLOCK"), _) => {
                out.push(Effect::BackupLock(false))
            }
            (Some("STAGE" | "LOCK"), _) => out.push(Effect::BackupLock(true)),
            _ => {}
        },
        // `SET SESSION TRANSACTION …` changes a variable the snapshot carries; without a scope
        // it holds for the next transaction only
        Some("SET") if w(1) == Some("TRANSACTION") => out.push(Effect::TxOnce),
        Some("BEGIN") if plain_begin_toks(toks) => out.push(Effect::TxBoundary),
        Some("START") if w(1) == Some("TRANSACTION") => out.push(Effect::TxBoundary),
        Some("COMMIT" | "ROLLBACK") => out.push(Effect::TxBoundary),
        _ => {}
    }
}
