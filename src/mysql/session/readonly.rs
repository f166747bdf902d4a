//! Which statements may be run twice: a read interrupted by a backend loss is re-run on the new
//! backend only when its text proves it has no side effects and does not depend on the session's
//! previous statement.
//!
//! Proof by construction, not by guess: one `SELECT` (or `SHOW`/`DESCRIBE`) with no locking
//! clause, no `INTO`, no assignment and no user variable, whose every function call names a
//! built-in from a fixed list of pure ones. A stored function (which may write) or anything
//! the list does not name makes the statement unsafe. It runs on hostile bytes ([`super::lex`]).

use super::lex::{statements, word, Tok};

/// Longest text considered: a longer one is not tokenized for this and is never re-run.
const MAX_TEXT: usize = 64 * 1024;

/// Words that make a `SELECT` lock, write or read its session's past: never re-run.
const UNSAFE_WORDS: &[&str] = &[
    "INTO",
    "LOCK",
    "UPDATE",
    "SHARE",
    "NOWAIT",
    "SKIP",
    "NEXT",
    "PREVIOUS",
    "SETVAL",
    "NEXTVAL",
    "LASTVAL",
    "PROCEDURE",
];

/// Words that may stand before `(` without calling a function: keywords and operators.
const KEYWORDS_BEFORE_PAREN: &[&str] = &[
    "SELECT",
    "FROM",
    "JOIN",
    "ON",
    "WHERE",
    "AND",
    "OR",
    "NOT",
    "IN",
    "EXISTS",
    "ANY",
    "ALL",
    "SOME",
    "AS",
    "USING",
    "OVER",
    "BY",
    "HAVING",
    "WHEN",
    "THEN",
    "ELSE",
    "CASE",
    "UNION",
    "EXCEPT",
    "INTERSECT",
    "LIKE",
    "BETWEEN",
    "IS",
    "XOR",
    "DIV",
    "MOD",
    "DISTINCT",
    "WITH",
    "VALUES",
    "LIMIT",
    "OFFSET",
    "INTERVAL",
    "RECURSIVE",
    "LATERAL",
    "IGNORE",
    "USE",
    "FORCE",
    "INDEX",
    "KEY",
    "PARTITION",
    "BINARY",
    "ROW",
];

/// Built-in functions that neither write, lock, wait on others, nor read the session's previous
/// statement (`FOUND_ROWS`, `ROW_COUNT`, `LAST_INSERT_ID` — which with an argument also sets it —
/// are left out on purpose, as are `GET_LOCK`, `SLEEP`, `BENCHMARK`, `MASTER_POS_WAIT`, …).
const PURE_FUNCTIONS: &[&str] = &[
    "COUNT",
    "SUM",
    "MIN",
    "MAX",
    "AVG",
    "GROUP_CONCAT",
    "BIT_AND",
    "BIT_OR",
    "BIT_XOR",
    "STD",
    "STDDEV",
    "VARIANCE",
    "CONCAT",
    "CONCAT_WS",
    "COALESCE",
    "IFNULL",
    "NULLIF",
    "IF",
    "ISNULL",
    "LENGTH",
    "CHAR_LENGTH",
    "CHARACTER_LENGTH",
    "SUBSTRING",
    "SUBSTR",
    "LEFT",
    "RIGHT",
    "LOWER",
    "UPPER",
    "LCASE",
    "UCASE",
    "TRIM",
    "LTRIM",
    "RTRIM",
    "REPLACE",
    "REVERSE",
    "REPEAT",
    "LPAD",
    "RPAD",
    "LOCATE",
    "INSTR",
    "POSITION",
    "FIELD",
    "FIND_IN_SET",
    "ELT",
    "HEX",
    "UNHEX",
    "MD5",
    "SHA1",
    "SHA2",
    "CRC32",
    "ABS",
    "CEIL",
    "CEILING",
    "FLOOR",
    "ROUND",
    "TRUNCATE",
    "SIGN",
    "SQRT",
    "POW",
    "POWER",
    "EXP",
    "LN",
    "LOG",
    "LOG2",
    "LOG10",
    "GREATEST",
    "LEAST",
    "CAST",
    "CONVERT",
    "NOW",
    "CURDATE",
    "CURTIME",
    "CURRENT_DATE",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "SYSDATE",
    "UTC_TIMESTAMP",
    "UNIX_TIMESTAMP",
    "FROM_UNIXTIME",
    "DATE",
    "TIME",
    "YEAR",
    "MONTH",
    "DAY",
    "HOUR",
    "MINUTE",
    "SECOND",
    "DATE_FORMAT",
    "DATE_ADD",
    "DATE_SUB",
    "DATEDIFF",
    "TIMESTAMPDIFF",
    "EXTRACT",
    "STR_TO_DATE",
    "JSON_EXTRACT",
    "JSON_VALUE",
    "JSON_OBJECT",
    "JSON_ARRAY",
    "JSON_UNQUOTE",
    "JSON_CONTAINS",
    "JSON_LENGTH",
    "DATABASE",
    "SCHEMA",
    "VERSION",
    "USER",
    "CURRENT_USER",
    "CONNECTION_ID",
    "UUID",
    "RAND",
    "ROW_NUMBER",
    "RANK",
    "DENSE_RANK",
    "LAG",
    "LEAD",
    "FIRST_VALUE",
    "LAST_VALUE",
    "CHAR",
    "ASCII",
    "ORD",
    "FORMAT",
    "INET_ATON",
    "INET_NTOA",
    "BIN",
    "OCT",
    "CONV",
    "MOD",
    "PI",
];

/// First words of statements that only read and never run code or lock.
const READ_FIRST_WORDS: &[&str] = &["SELECT", "SHOW", "DESC", "DESCRIBE"];

/// `SHOW` targets that describe the session's previous statement: a fresh session answers
/// otherwise.
const SHOW_PAST: &[&str] = &["WARNINGS", "ERRORS", "COUNT", "PROFILE", "PROFILES"];

/// Whether `sql` may be re-run on another backend after a loss (see the module docs).
pub fn retry_safe(sql: &[u8]) -> bool {
    if sql.len() > MAX_TEXT {
        return false;
    }
    let stmts = statements(sql);
    let [(toks, _)] = stmts.as_slice() else {
        return false;
    };
    let Some(first) = word(toks.first()) else {
        return false;
    };
    if !READ_FIRST_WORDS.contains(&first) {
        return false;
    }
    if first == "SHOW" {
        return !SHOW_PAST.contains(&word(toks.get(1)).unwrap_or(""));
    }
    toks.iter().enumerate().all(|(i, t)| match t {
        Tok::Var => false,
        Tok::Punct(b':') => false,
        Tok::Word(w, quoted) => {
            let calls = toks.get(i + 1) == Some(&Tok::Punct(b'('));
            let after_dot = i > 0 && toks.get(i - 1) == Some(&Tok::Punct(b'.'));
            if !quoted && UNSAFE_WORDS.contains(&w.as_str()) {
                return false;
            }
            if !calls {
                return true;
            }
            // `db.f(…)` or `` `f`(…) ``: a stored function
            !quoted
                && !after_dot
                && (KEYWORDS_BEFORE_PAREN.contains(&w.as_str())
                    || PURE_FUNCTIONS.contains(&w.as_str()))
        }
        Tok::Str(_) | Tok::Punct(_) => true,
    })
}

/// Every word a statement that only opens or ends a transaction may have (no `RELEASE`, which
/// ends the session; no `BEGIN NOT ATOMIC`, a compound statement).
const TRANSACTION_WORDS: &[&str] = &[
    "BEGIN",
    "WORK",
    "START",
    "TRANSACTION",
    "READ",
    "ONLY",
    "WRITE",
    "WITH",
    "CONSISTENT",
    "SNAPSHOT",
    "COMMIT",
    "ROLLBACK",
    "AND",
    "NO",
    "CHAIN",
];

/// Whether `sql` only opens or ends a transaction (`BEGIN`, `START TRANSACTION READ ONLY`,
/// `COMMIT`, `ROLLBACK`): with none open, running it again elsewhere changes nothing but where
/// the next transaction starts.
pub fn transaction_boundary(sql: &[u8]) -> bool {
    if sql.len() > MAX_TEXT {
        return false;
    }
    let stmts = statements(sql);
    let [(toks, _)] = stmts.as_slice() else {
        return false;
    };
    matches!(
        word(toks.first()),
        Some("BEGIN" | "START" | "COMMIT" | "ROLLBACK")
    ) && toks
        .iter()
        .all(|t| matches!(t, Tok::Word(w, false) if TRANSACTION_WORDS.contains(&w.as_str())))
}

/// Whether `sql` is one statement that opens a transaction (`BEGIN`, `START TRANSACTION …`) and
/// does nothing else: a transaction's replay log may start with it.
pub fn begins_transaction(sql: &[u8]) -> bool {
    if !transaction_boundary(sql) {
        return false;
    }
    let stmts = statements(sql);
    matches!(
        stmts.as_slice(),
        [(toks, _)] if matches!(word(toks.first()), Some("BEGIN" | "START"))
    )
}

/// First words of statements that never end the transaction they run in: lost in flight inside
/// a transaction, they leave it uncommitted (the server rolls it back as it dies).
const STAYS_IN_TRANSACTION: &[&str] = &[
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
    "SAVEPOINT",
    "RELEASE",
    "DO",
    "ROLLBACK",
];

/// Whether `sql`, run inside a transaction, may have committed it: `COMMIT`, a statement with
/// an implicit commit (DDL, `BEGIN`, `SET autocommit = 1`, `LOCK TABLES`, …), or anything the
/// scan cannot name. `ROLLBACK … AND CHAIN` / `ROLLBACK TO SAVEPOINT` / `RELEASE SAVEPOINT`
/// never commit.
pub fn may_commit(sql: &[u8]) -> bool {
    let stmts = statements(sql);
    stmts.iter().any(|(toks, _)| {
        let first = word(toks.first()).unwrap_or("");
        !STAYS_IN_TRANSACTION.contains(&first)
    }) || stmts.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_reads_with_builtins_and_subqueries_may_be_re_run() {
        for sql in [
            "SELECT c FROM sbtest1 WHERE id = 5",
            "select count(*) from t where k in (1, 2, 3)",
            "SELECT a, (SELECT MAX(b) FROM u) FROM t JOIN v ON (t.id = v.id)",
            "SELECT DISTINCT c FROM sbtest1 WHERE id BETWEEN 1 AND 100 ORDER BY c",
            "SHOW TABLES",
            "SHOW VARIABLES LIKE 'wsrep%'",
            "DESCRIBE t",
            "SELECT 1;",
            "SELECT NOW(), CONCAT('a', 'b')",
        ] {
            assert!(retry_safe(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn locking_writing_or_session_dependent_statements_are_never_re_run() {
        for sql in [
            "SELECT c FROM t WHERE id = 1 FOR UPDATE",
            "SELECT c FROM t LOCK IN SHARE MODE",
            "SELECT c INTO @x FROM t",
            "SELECT c FROM t INTO OUTFILE '/tmp/x'",
            "SELECT @a := 1",
            "SELECT @a",
            "SELECT my_func(1)",
            "SELECT db.f(1)",
            "SELECT `count`(1)",
            "SELECT GET_LOCK('a', 1)",
            "SELECT SLEEP(1)",
            "SELECT LAST_INSERT_ID(5)",
            "SELECT FOUND_ROWS()",
            "SELECT NEXT VALUE FOR s",
            "SHOW WARNINGS",
            "SHOW COUNT(*) ERRORS",
            "INSERT INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "CALL p()",
            "SELECT 1; SELECT 2",
            "/* hidden */ DELETE FROM t",
            "SELECT 1 /*!50000 FOR UPDATE */",
            "",
        ] {
            assert!(!retry_safe(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn commit_and_implicit_commits_may_commit_while_dml_never_does() {
        for sql in [
            "COMMIT",
            "commit work",
            "XA COMMIT 'x'",
            "CREATE TABLE t (a INT)",
            "BEGIN",
            "SET autocommit = 1",
            "UPDATE t SET a = 1; COMMIT",
            "",
        ] {
            assert!(may_commit(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "UPDATE t SET a = a + 1 WHERE id = 1",
            "INSERT INTO t VALUES (1)",
            "SELECT * FROM t FOR UPDATE",
            "ROLLBACK",
            "SAVEPOINT s",
            "RELEASE SAVEPOINT s",
        ] {
            assert!(!may_commit(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn only_plain_transaction_boundaries_count_as_boundaries() {
        for sql in [
            "BEGIN",
            "begin work",
            "START TRANSACTION READ ONLY",
            "COMMIT",
            "ROLLBACK AND NO CHAIN",
        ] {
            assert!(transaction_boundary(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "BEGIN NOT ATOMIC SELECT 1; END",
            "COMMIT RELEASE",
            "ROLLBACK TO SAVEPOINT s",
            "BEGIN; DELETE FROM t",
            "SELECT 1",
        ] {
            assert!(!transaction_boundary(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn only_a_lone_begin_or_start_transaction_begins_a_replay_log() {
        for sql in [
            "BEGIN",
            "begin work",
            "START TRANSACTION",
            "START TRANSACTION READ ONLY",
            "START TRANSACTION WITH CONSISTENT SNAPSHOT;",
        ] {
            assert!(begins_transaction(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "COMMIT",
            "COMMIT AND CHAIN",
            "ROLLBACK AND CHAIN",
            "BEGIN; UPDATE t SET a = 1",
            "INSERT INTO t VALUES (1); BEGIN",
            "BEGIN NOT ATOMIC SELECT 1; END",
            "SELECT 1",
        ] {
            assert!(!begins_transaction(sql.as_bytes()), "{sql}");
        }
    }

    #[test]
    fn hostile_bytes_are_refused_without_panicking() {
        for sql in [
            &b"SELECT \xff\xfe("[..],
            b"SELECT '",
            b"SELECT `",
            b"(((",
            b"SELECT f(",
        ] {
            let _ = retry_safe(sql);
            let _ = may_commit(sql);
            let _ = transaction_boundary(sql);
        }
        assert!(!retry_safe(&vec![b'x'; MAX_TEXT + 1]));
    }
}
