//! Tests of the statement scan: effects per statement, the fast path, caps on long texts.

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
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
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
