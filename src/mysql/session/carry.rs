//! Carrying a session: the snapshot read from the old backend at a safe point, and its restore
//! on the target, each in as few round trips as possible (queries are pipelined).
//!
//! The server is the source of truth for what it can report: the changed session variables
//! (`information_schema.SYSTEM_VARIABLES`, session value differing from global), the user
//! variables (`information_schema.USER_VARIABLES`) and the current schema are read from the old
//! backend, written to the target, and a digest query must then read the same on both. The
//! queries are MariaDB's (10.2+); on a MySQL backend the snapshot fails and the session stays.
//! Every query here is shaped to be immune to the client's session settings: an explicit `LIMIT`
//! (`sql_select_limit`), `sql_big_selects` (`max_join_size`), backquoted names and hex or
//! `''`-doubled literals (`ANSI_QUOTES`, `NO_BACKSLASH_ESCAPES`).

use std::fmt::Write as _;

use switchyard::wire::cmd;

use super::state::Session;
use crate::mysql::backend::{Backend, QueryError, Rows};

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
    /// The target's digest differs from the source's, first in this column.
    #[error("state digest differs after restore (column {column})")]
    Digest {
        /// The first column that differs (0: the schema).
        column: usize,
    },
    /// A statement could not be re-prepared on the target.
    #[error("re-prepare: {0}")]
    Prepare(#[source] QueryError),
    /// A statement was re-prepared with other parameter or column counts.
    #[error("re-prepared statement differs: parameter or column count")]
    PrepareDiffers,
    /// A named lock is still held.
    #[error("GET_LOCK held")]
    LockHeld,
    /// The old backend's answers for the snapshot were longer than the snapshot's size cap
    /// (`max_snapshot`): large user variables, say. Read to their end, but not kept.
    #[error("session state over the snapshot size cap")]
    TooLarge,
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
    /// Its one row on the old backend: schema, then variable values, then `LAST_INSERT_ID()`.
    pub digest: Vec<Option<Vec<u8>>>,
}

/// Session-only or read-only variables never restored.
const NOT_RESTORED: &[&str] = &[
    "pseudo_thread_id",
    "timestamp",
    "warning_count",
    "error_count",
];

/// An explicit `LIMIT` on every `SELECT` the proxy runs on a client's session: it overrides the
/// session's `sql_select_limit`, which would otherwise cut the proxy's answers short.
const NO_LIMIT: &str = " LIMIT 18446744073709551615";

/// The session's `max_join_size` could refuse a read of `information_schema` (error 1104), so
/// the read runs with `sql_big_selects` on; its session value is then read by the digest
/// instead (see [`BIG_SELECTS`]).
const SYSVARS_SQL: &str = "SET STATEMENT sql_big_selects = 1 FOR \
     SELECT LOWER(VARIABLE_NAME), VARIABLE_TYPE, SESSION_VALUE \
     FROM information_schema.SYSTEM_VARIABLES WHERE VARIABLE_SCOPE = 'SESSION' \
     AND (NOT (SESSION_VALUE <=> GLOBAL_VALUE) OR VARIABLE_NAME IN \
     ('CHARACTER_SET_CLIENT','CHARACTER_SET_CONNECTION','CHARACTER_SET_RESULTS','COLLATION_CONNECTION',\
     'SQL_BIG_SELECTS')) LIMIT 18446744073709551615";

/// The variable [`SYSVARS_SQL`] overrides while it reads: always carried, its value taken from
/// the digest (which reads it unaltered).
const BIG_SELECTS: &str = "sql_big_selects";

/// String values are not read here: the digest reads them as hex, which restores them exactly.
const USERVARS_SQL: &str = "SET STATEMENT sql_big_selects = 1 FOR \
     SELECT VARIABLE_NAME, VARIABLE_TYPE, CHARACTER_SET_NAME, \
     IF(VARIABLE_TYPE = 'VARCHAR', NULL, VARIABLE_VALUE) FROM information_schema.USER_VARIABLES \
     LIMIT 18446744073709551615";

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
    budget: &mut usize,
) -> Result<Vec<Result<Rows, QueryError>>, QueryError> {
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        match b.read_answer_within(seq, budget).await {
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
    sql.push_str(NO_LIMIT);
    sql
}

/// Reads the session's state from `b` (at a safe point), in as few round trips as it can: one
/// when the session has not changed carried state since its login or last move (the digest of
/// the carried state, read fresh: it also supplies string user variables' values), two
/// otherwise (session and user variables from `information_schema`, then their digest).
/// Named locks are checked in the first round trip. At most `max` bytes of answers are kept
/// (the snapshot's size cap): a larger state is refused with [`StateError::TooLarge`], the
/// answers read to their end so the session can stay on `b`.
pub async fn snapshot(
    b: &mut Backend,
    s: &mut Session,
    max: usize,
) -> Result<Snapshot, StateError> {
    let mut budget = max;
    let names: Vec<String> = s.named_locks().iter().cloned().collect();
    let mut seqs = Vec::with_capacity(3);
    if !names.is_empty() {
        seqs.push(b.send_query(&lock_check_sql(&names)));
    }
    let carried = s.unchanged_state();
    match &carried {
        Some(c) => seqs.push(b.send_query(&c.digest_sql)),
        None => {
            seqs.push(b.send_query(SYSVARS_SQL));
            seqs.push(b.send_query(USERVARS_SQL));
        }
    }
    let got = answers(b, &seqs, &mut budget)
        .await
        .map_err(step("snapshot"))?;
    let mut got = got.into_iter();
    let mut next = |name| got.next().unwrap_or(Ok(Vec::new())).map_err(step(name));
    if !names.is_empty() {
        let row = first_row(next("lock check")?);
        for (n, v) in names.iter().zip(row) {
            if v.as_deref() == Some(b"1") {
                return Err(StateError::LockHeld);
            }
            s.release_named_lock(n);
        }
    }
    if let Some(mut snap) = carried {
        snap.digest = first_row(next("digest")?);
        return Ok(snap);
    }
    let sysvars = sysvars_from(&next("session variables")?);
    let uservars = uservars_from(&next("user variables")?);
    let digest_sql = digest_sql(&sysvars, &uservars);
    let seq = b.send_query(&digest_sql);
    let digest = first_row(
        b.read_answer_within(seq, &mut budget)
            .await
            .map_err(step("digest"))?,
    );
    let mut sysvars = sysvars;
    for (i, v) in sysvars.iter_mut().enumerate() {
        if v.name == BIG_SELECTS {
            // the digest reads it as 0/1; the variable is set as OFF/ON
            v.value = match digest.get(1 + i) {
                Some(Some(b)) if b.as_slice() == b"0" => Some("OFF".into()),
                Some(Some(b)) if b.as_slice() == b"1" => Some("ON".into()),
                _ => None,
            };
        }
    }
    Ok(Snapshot {
        sysvars,
        uservars,
        digest_sql,
        digest,
    })
}

/// Names the step a query failure happened in.
fn step(step: &'static str) -> impl Fn(QueryError) -> StateError {
    move |source| match source {
        QueryError::TooLarge => StateError::TooLarge,
        source => StateError::Query { step, source },
    }
}

/// The first row of an answer (empty when there is none).
fn first_row(rows: Rows) -> Vec<Option<Vec<u8>>> {
    rows.into_iter().next().unwrap_or_default()
}

/// The changed session variables from [`SYSVARS_SQL`]'s rows, in the order they must be set:
/// character sets before collations (setting one resets the other), the rest after.
fn sysvars_from(rows: &Rows) -> Vec<SysVar> {
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
    sysvars.sort_by_key(|v| {
        (
            !v.name.starts_with("character_set"),
            !v.name.starts_with("collation"),
            v.name.clone(),
        )
    });
    sysvars
}

/// The user variables from [`USERVARS_SQL`]'s rows, by name.
fn uservars_from(rows: &Rows) -> Vec<UserVar> {
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
    uservars
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
    sql.push_str(", LAST_INSERT_ID()");
    sql.push_str(NO_LIMIT);
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
            // a string variable set to NULL keeps its character set and collation
            let value = match hex {
                None => "NULL".to_string(),
                Some(h) => format!("X'{}'", String::from_utf8_lossy(&h)),
            };
            let cs = u.charset.clone().unwrap_or_else(|| "binary".into());
            let _ = write!(sql, "CONVERT({value} USING ");
            quote_ident(&mut sql, &cs);
            sql.push(')');
            if let Some(c) = coll.filter(|_| cs != "binary") {
                sql.push_str(" COLLATE ");
                quote_ident(&mut sql, &String::from_utf8_lossy(&c));
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

/// `SELECT LAST_INSERT_ID(n)` restoring the session's last insert id, the digest's last column
/// (`None` when it is 0, as on a fresh session, or not a plain number).
pub fn last_insert_id_sql(snap: &Snapshot) -> Option<String> {
    let id = snap.digest.last()?.as_deref()?;
    if id.is_empty() || !id.iter().all(u8::is_ascii_digit) || id == b"0" {
        return None;
    }
    Some(format!(
        "SELECT LAST_INSERT_ID({}){NO_LIMIT}",
        String::from_utf8_lossy(id)
    ))
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
    let mut steps = Vec::with_capacity(5);
    if let Some(option) = s.option_to_restore() {
        // the target's login repeated the client's original capabilities
        steps.push((
            "COM_SET_OPTION",
            b.send_command(cmd::SET_OPTION, &option.to_le_bytes()),
        ));
    }
    if let Some(Some(db)) = snap.digest.first() {
        steps.push(("schema", b.send_command(cmd::INIT_DB, db)));
    }
    // user variables before session variables: their SET then runs under the target's login
    // sql_mode, not the client's (its literals are quoted to survive either anyway)
    if let Some(sql) = uservars_sql(snap) {
        steps.push(("user variables", b.send_query(&sql)));
    }
    if let Some(sql) = sysvars_sql(&snap.sysvars) {
        steps.push(("session variables", b.send_query(&sql)));
    }
    if let Some(sql) = last_insert_id_sql(snap) {
        steps.push(("last insert id", b.send_query(&sql)));
    }
    for text in s.sql_prepared() {
        steps.push(("SQL prepared statement", b.send_command(cmd::QUERY, text)));
    }
    let digest_seq = b.send_query(&snap.digest_sql);
    let stmts: Vec<_> = s
        .stmts()
        .map(|(id, st)| (id, st, b.send_command(cmd::STMT_PREPARE, &st.sql)))
        .collect();
    for (name, seq) in steps {
        b.read_answer(seq).await.map_err(step(name))?;
    }
    let digest = first_row(b.read_answer(digest_seq).await.map_err(step("digest"))?);
    if digest != snap.digest {
        let diff = digest
            .iter()
            .zip(&snap.digest)
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        return Err(StateError::Digest { column: diff });
    }
    let mut ids = Vec::with_capacity(stmts.len());
    for (client_id, st, seq) in stmts {
        let ok = b
            .read_prepare(seq, negotiated)
            .await
            .map_err(StateError::Prepare)?;
        if ok.params != st.params || ok.columns != st.columns {
            return Err(StateError::PrepareDiffers);
        }
        ids.push((client_id, ok.stmt_id));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_select_the_proxy_runs_has_an_explicit_limit_against_sql_select_limit() {
        let sysvars = vec![SysVar {
            name: "sql_select_limit".into(),
            ty: "BIGINT UNSIGNED".into(),
            value: Some("2".into()),
        }];
        let uservars = vec![UserVar {
            name: "a".into(),
            ty: "INT".into(),
            charset: None,
            value: Some("1".into()),
        }];
        let digest = digest_sql(&sysvars, &uservars);
        assert_eq!(
            digest,
            "SELECT DATABASE(), @@session.`sql_select_limit`, @`a`, LAST_INSERT_ID() \
             LIMIT 18446744073709551615"
        );
        for sql in [
            SYSVARS_SQL,
            USERVARS_SQL,
            &digest,
            &lock_check_sql(&["job".into()]),
            &Snapshot::login_defaults().digest_sql,
        ] {
            assert!(sql.ends_with(NO_LIMIT), "{sql}");
        }
        // max_join_size must not refuse the reads of information_schema
        assert!(SYSVARS_SQL.starts_with("SET STATEMENT sql_big_selects = 1 FOR SELECT"));
        assert!(USERVARS_SQL.starts_with("SET STATEMENT sql_big_selects = 1 FOR SELECT"));
        assert!(SYSVARS_SQL.contains("'SQL_BIG_SELECTS'"));
    }

    #[test]
    fn the_last_insert_id_is_restored_from_the_digests_last_column() {
        let mut snap = Snapshot::login_defaults();
        snap.digest = vec![Some(b"app".to_vec()), Some(b"42".to_vec())];
        assert_eq!(
            last_insert_id_sql(&snap).as_deref(),
            Some("SELECT LAST_INSERT_ID(42) LIMIT 18446744073709551615")
        );
        snap.digest = vec![None, Some(b"0".to_vec())];
        assert_eq!(last_insert_id_sql(&snap), None, "a fresh session has 0");
        snap.digest = vec![None, Some(b"1; DROP".to_vec())];
        assert_eq!(last_insert_id_sql(&snap), None, "only a plain number");
    }

    #[test]
    fn a_string_with_a_quote_and_a_backslash_is_written_as_hex() {
        let vars = vec![SysVar {
            name: "init_connect".into(),
            ty: "VARCHAR".into(),
            value: Some("it's \\".into()),
        }];
        // hex survives NO_BACKSLASH_ESCAPES and ANSI_QUOTES alike
        assert_eq!(
            sysvars_sql(&vars).unwrap(),
            "SET SESSION `init_connect` = CONVERT(X'69742773205C' USING utf8mb4)"
        );
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
                UserVar {
                    name: "n".into(),
                    ty: "VARCHAR".into(),
                    charset: Some("utf8mb4".into()),
                    value: None,
                },
            ],
            digest_sql: String::new(),
            digest: vec![
                None,
                Some(b"78".to_vec()),
                Some(b"utf8mb4_bin".to_vec()),
                Some(b"1.5".to_vec()),
                None,
                Some(b"utf8mb4_general_ci".to_vec()),
            ],
        };
        // a string set to NULL keeps its collation (its digest would differ otherwise)
        assert_eq!(
            uservars_sql(&snap).unwrap(),
            "SET @`a` = CONVERT(X'78' USING `utf8mb4`) COLLATE `utf8mb4_bin`, @`d` = 1.5e0, \
             @`n` = CONVERT(NULL USING `utf8mb4`) COLLATE `utf8mb4_general_ci`"
        );
    }
}
