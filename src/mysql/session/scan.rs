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

#[cfg(test)]
mod tests {
    use super::*;

    fn effects(sql: &str) -> Vec<Effect> {
        analyze(sql.as_bytes())
            .parts
            .into_iter()
            .flat_map(|p| p.effects)
            .collect()
    }

    #[test]
    fn a_quoted_string_cut_by_a_trailing_backslash_does_not_panic_the_scan() {
        // issue 9, observation 1: `;'\` and friends panicked the session task
        for sql in [&b";'\\"[..], b"CREATE '\\", b"SELECT GET_LOCK('\\"] {
            let p = analyze(sql);
            assert_eq!(p.parts.len(), 1, "{:?}", String::from_utf8_lossy(sql));
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
        assert_eq!(p.parts.len(), 3);
        assert_eq!(p.parts[1].effects, [Effect::LockTables]);
        assert_eq!(
            p.parts[2].effects[0],
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
    fn routine_definitions_have_no_effects_and_say_so() {
        let kinds = |sql: &str| -> Vec<Kind> {
            analyze(sql.as_bytes())
                .parts
                .iter()
                .map(|p| p.kind)
                .collect()
        };
        for sql in [
            "CREATE PROCEDURE p() DO RELEASE_ALL_LOCKS()",
            "create or replace definer = app@localhost procedure p() select 1",
            "CREATE DEFINER='a'@'%' FUNCTION f() RETURNS INT RETURN GET_LOCK('x', 0)",
            "CREATE DEFINER=CURRENT_USER TRIGGER t BEFORE INSERT ON x FOR EACH ROW SET @a = 1",
            "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DROP TEMPORARY TABLE t",
            "ALTER EVENT e DO UNLOCK TABLES",
            "CREATE ALGORITHM = MERGE SQL SECURITY INVOKER VIEW v AS SELECT RELEASE_ALL_LOCKS()",
        ] {
            let p = analyze(sql.as_bytes());
            assert_eq!(kinds(sql), [Kind::Definition], "{sql}");
            assert!(p.parts[0].effects.is_empty(), "{sql}");
        }
        let body = "CREATE PROCEDURE p() BEGIN DO RELEASE_ALL_LOCKS(); UNLOCK TABLES; END";
        assert_eq!(
            kinds(body),
            [Kind::Definition, Kind::Plain, Kind::Plain],
            "the scan splits the body; the session places it by the server's answer"
        );
        // tables named like what a routine definition defines are still tables
        assert_eq!(
            effects("CREATE TEMPORARY TABLE event (a int)"),
            [Effect::CreateTemp("event".into())]
        );
        assert_eq!(kinds("CREATE TABLE function (a int)"), [Kind::Plain]);
    }

    #[test]
    fn calls_compound_statements_and_computed_texts_are_opaque() {
        for sql in [
            "CALL p()",
            "call db.p(1, @x)",
            "BEGIN NOT ATOMIC SELECT 1; END",
            "IF 1 THEN DO 1; END IF",
            "lbl: LOOP LEAVE lbl; END LOOP",
            "WHILE 0 DO SELECT 1; END WHILE",
            "EXECUTE IMMEDIATE @q",
            "EXECUTE IMMEDIATE CONCAT('SELECT ', 1)",
            "EXECUTE IMMEDIATE 'CALL p()'",
        ] {
            assert!(analyze(sql.as_bytes()).opaque(), "{sql}");
        }
        for sql in ["BEGIN", "begin work", "SELECT IF(1, 2, 3)", "EXECUTE s"] {
            assert!(!analyze(sql.as_bytes()).opaque(), "{sql}");
        }
    }

    #[test]
    fn executed_texts_are_scanned_for_their_effects() {
        assert_eq!(
            effects("EXECUTE IMMEDIATE 'SELECT GET_LOCK(''job'', 0)'"),
            [Effect::GetLock(Some("job".into()))]
        );
        assert_eq!(
            effects("EXECUTE s1 USING @a"),
            [Effect::Execute("s1".into())]
        );
        let runs = analyze_prepared(b"PREPARE s FROM 'DO GET_LOCK(''j'', 0)'").unwrap();
        assert_eq!(runs.parts[0].effects, [Effect::GetLock(Some("j".into()))]);
        assert_eq!(analyze_prepared(b"PREPARE s FROM @q"), None);
        // deep nesting stops being followed, and never recurses without bound
        let mut sql = String::from("DO 1");
        for _ in 0..12 {
            sql = format!("EXECUTE IMMEDIATE '{}'", sql.replace('\'', "''"));
        }
        assert!(analyze(sql.as_bytes()).opaque());
    }

    #[test]
    fn locks_taken_and_released_by_other_statements_are_seen() {
        assert_eq!(effects("FLUSH TABLES t FOR EXPORT"), [Effect::LockTables]);
        assert_eq!(effects("BACKUP STAGE START"), [Effect::BackupLock(true)]);
        assert_eq!(effects("BACKUP STAGE END"), [Effect::BackupLock(false)]);
        assert_eq!(effects("BACKUP LOCK t"), [Effect::BackupLock(true)]);
        assert_eq!(effects("SET ROLE admin"), [Effect::SetRole(true)]);
        assert_eq!(effects("SET ROLE NONE"), [Effect::SetRole(false)]);
    }

    #[test]
    fn user_variables_and_tracking_settings_are_told_apart_from_other_changes() {
        let p = |sql: &str| analyze(sql.as_bytes());
        for sql in [
            "SET sql_mode = ''",
            "SET NAMES utf8mb4",
            "USE app",
            "SET @@wait_timeout = 5",
        ] {
            assert!(p(sql).changes && !p(sql).uservars, "{sql}");
        }
        for sql in [
            "SET @a = 1",
            "SET sql_mode = '', @a = 2",
            "SELECT @a := 1",
            "SELECT 1 INTO @x",
            "CALL p()",
            "EXECUTE s",
        ] {
            assert!(p(sql).uservars, "{sql}");
        }
        assert!(p("SET session_track_schema = OFF").tracking);
        assert!(p("set @@SESSION_TRACK_system_variables = ''").tracking);
        assert!(!p("SELECT 1").tracking);
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
            assert!(p.parts.len() <= 1, "{sql}");
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
        assert!(p.parts.iter().all(|p| p.effects.is_empty()));
        assert!(
            p.changes,
            "an unscanned text may have changed carried state"
        );
        assert!(!p.unknown_effects);
        sql.extend_from_slice(b"; CREATE TEMPORARY TABLE tt (a int)");
        let p = analyze(&sql);
        assert!(p.parts.iter().all(|p| p.effects.is_empty()));
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
            proptest::prop_assert!(p.parts.len() <= sql.len().max(1));
            let mut s = crate::mysql::session::Session::new();
            let p = s.before_query(&sql);
            s.after_query(p, crate::mysql::session::Outcome { error: false, results: 1 });
        }

        #[test]
        fn the_scan_never_panics_on_arbitrary_bytes(
            sql in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)
        ) {
            let p = analyze(&sql);
            proptest::prop_assert!(p.parts.len() <= sql.len().max(1));
        }
    }
}
