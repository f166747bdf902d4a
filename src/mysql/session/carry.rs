//! Carrying a session: the snapshot read from the old backend at a safe point, and its restore
//! on the target, each in as few round trips as possible (queries are pipelined).
//!
//! The server is the source of truth for what it can report. Its first answer checks what the
//! session must not leave behind: an open transaction (`@@in_transaction`) and named locks.
//! The changed system variables are named by the server's session tracking ([`super::known`]),
//! so their values come with the digest query; without tracking they are read from
//! `information_schema.SYSTEM_VARIABLES` (session value differing from global). User variables
//! come from `information_schema.USER_VARIABLES` when the session may have changed them. The
//! state is written to the target, and the digest query must then read the same on both. The
//! queries are MariaDB's (10.2+); on a MySQL backend the snapshot fails and the session stays.

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
    /// The server says a transaction is open (after a failed command left it unverified).
    #[error("transaction open")]
    InTransaction,
}

/// A changed session variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysVar {
    /// Lower-cased name.
    pub name: String,
    /// `VARIABLE_TYPE` of `information_schema.SYSTEM_VARIABLES`; empty when the variable is known
    /// from the server's session tracking (its value then decides how it is quoted).
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

/// The proxy's own settings ([`TRACKING_SQL`]): set on every backend by the proxy, never carried.
const PROXY_OWNED_PREFIX: &str = "session_track_";

/// The proxy's session-tracking settings, sent after every login (the client's and a move's)
/// and after a reset, with `CLIENT_SESSION_TRACK` negotiated: the server then reports in OK
/// packets every system variable and schema change and the transaction state.
pub const TRACKING_SQL: &str = "SET SESSION session_track_system_variables = '*', \
     session_track_schema = ON, session_track_state_change = ON, \
     session_track_transaction_info = 'STATE'";

/// Whether a move carries system variable `name` (lower-cased).
pub fn restorable(name: &str) -> bool {
    !NOT_RESTORED.contains(&name) && !name.starts_with(PROXY_OWNED_PREFIX)
}

/// The session's changed system variables. Every query the proxy reads rows from has an explicit
/// `LIMIT`: it overrides the session's `sql_select_limit`, which would otherwise cut the answer.
const SYSVARS_SQL: &str = "SELECT LOWER(VARIABLE_NAME), VARIABLE_TYPE, SESSION_VALUE \
     FROM information_schema.SYSTEM_VARIABLES WHERE VARIABLE_SCOPE = 'SESSION' \
     AND (NOT (SESSION_VALUE <=> GLOBAL_VALUE) OR VARIABLE_NAME IN \
     ('CHARACTER_SET_CLIENT','CHARACTER_SET_CONNECTION','CHARACTER_SET_RESULTS','COLLATION_CONNECTION')) \
     LIMIT 18446744073709551615";

/// The session's user variables (with an explicit `LIMIT`, as [`SYSVARS_SQL`]).
const USERVARS_SQL: &str = "SELECT VARIABLE_NAME, VARIABLE_TYPE, CHARACTER_SET_NAME, \
     VARIABLE_VALUE FROM information_schema.USER_VARIABLES LIMIT 18446744073709551615";

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
    /// Takes the system variables' values from the digest row (read on the old backend), for
    /// variables known by name only.
    fn sysvar_values_from_digest(&mut self) {
        for (i, v) in self.sysvars.iter_mut().enumerate() {
            v.value = text(self.digest.get(1 + i).unwrap_or(&None));
        }
    }

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

/// `SELECT @@in_transaction, IS_USED_LOCK('a') <=> CONNECTION_ID(), …`: what the session must
/// not leave behind.
fn check_sql(names: &[String]) -> String {
    let mut sql = String::from("SELECT @@in_transaction");
    for n in names {
        sql.push_str(", IS_USED_LOCK(");
        quote_str(&mut sql, n);
        sql.push_str(") <=> CONNECTION_ID()");
    }
    sql
}

/// Reads the session's state from `b` (at a safe point), in as few round trips as it can: one
/// when it needs nothing from `information_schema` (the server named every changed system
/// variable, or nothing changed, and user variables did not change: the digest of the known
/// state supplies the values), two otherwise (the variables, then their digest). The first
/// round trip also checks for an open transaction and held named locks.
pub async fn snapshot(b: &mut Backend, s: &mut Session) -> Result<Snapshot, StateError> {
    let names: Vec<String> = s.named_locks().iter().cloned().collect();
    let plan = s.plan();
    let mut seqs = Vec::with_capacity(3);
    seqs.push(b.send_query(&check_sql(&names)));
    if plan.read_sysvars {
        seqs.push(b.send_query(SYSVARS_SQL));
    }
    if plan.read_uservars {
        seqs.push(b.send_query(USERVARS_SQL));
    }
    let known_digest = (!plan.read_sysvars && !plan.read_uservars)
        .then(|| digest_sql(&plan.sysvars, &plan.uservars));
    if let Some(sql) = &known_digest {
        seqs.push(b.send_query(sql));
    }
    let got = answers(b, &seqs).await.map_err(step("snapshot"))?;
    let mut got = got.into_iter();
    let mut next = |name| got.next().unwrap_or(Ok(Vec::new())).map_err(step(name));
    check(s, &names, &first_row(next("check")?))?;
    let sysvars = match plan.read_sysvars {
        true => sysvars_from(&next("session variables")?),
        false => plan.sysvars,
    };
    let uservars = match plan.read_uservars {
        true => uservars_from(&next("user variables")?),
        false => plan.uservars,
    };
    let (digest_sql, digest) = match known_digest {
        Some(sql) => {
            let row = first_row(next("digest")?);
            (sql, row)
        }
        None => {
            let sql = digest_sql(&sysvars, &uservars);
            let row = first_row(b.query(&sql).await.map_err(step("digest"))?);
            (sql, row)
        }
    };
    let mut snap = Snapshot {
        sysvars,
        uservars,
        digest_sql,
        digest,
    };
    if !plan.read_sysvars {
        snap.sysvar_values_from_digest();
    }
    Ok(snap)
}

/// Reads the check row ([`check_sql`]): an open transaction keeps the session (it waits), a
/// held named lock refuses the move; named locks no longer held are forgotten.
fn check(s: &mut Session, names: &[String], row: &[Option<Vec<u8>>]) -> Result<(), StateError> {
    let in_transaction = row.first().cloned().flatten().as_deref() != Some(b"0");
    if in_transaction || s.trx_unverified() {
        s.verified(in_transaction);
    }
    if in_transaction {
        return Err(StateError::InTransaction);
    }
    for (n, v) in names.iter().zip(row.iter().skip(1)) {
        if v.as_deref() == Some(b"1") {
            return Err(StateError::LockHeld);
        }
        s.release_named_lock(n);
    }
    Ok(())
}

/// Names the step a query failure happened in.
fn step(step: &'static str) -> impl Fn(QueryError) -> StateError {
    move |source| StateError::Query { step, source }
}

/// The first row of an answer (empty when there is none).
fn first_row(rows: Rows) -> Vec<Option<Vec<u8>>> {
    rows.into_iter().next().unwrap_or_default()
}

/// The changed session variables from [`SYSVARS_SQL`]'s rows, in the order they must be set:
/// character sets before collations (setting one resets the other), the rest after.
fn sysvars_from(rows: &Rows) -> Vec<SysVar> {
    let vars = rows
        .iter()
        .filter_map(|r| {
            Some(SysVar {
                name: text(r.first()?)?,
                ty: text(r.get(1)?).unwrap_or_default(),
                value: text(r.get(2)?),
            })
        })
        .collect();
    in_restore_order(vars)
}

/// `vars` without those a move never carries, character sets first, then collations, then the
/// rest by name.
pub fn in_restore_order(vars: Vec<SysVar>) -> Vec<SysVar> {
    let mut sysvars: Vec<SysVar> = vars.into_iter().filter(|v| restorable(&v.name)).collect();
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
            Some(val)
                if (v.ty.contains("INT") || v.ty == "DOUBLE" || v.ty.is_empty())
                    && is_number(val) =>
            {
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

/// What a restore set up on the target.
#[derive(Debug)]
pub struct Restored {
    /// The binary statements' new ids, as (client id, target id).
    pub ids: Vec<(u32, u32)>,
    /// The target tracks the session for the proxy ([`TRACKING_SQL`] was accepted).
    pub tracking: bool,
}

/// Turns session tracking on (when the target negotiated it), writes the snapshot, the SQL
/// prepared statements and the binary ones to the target, and checks the digest — all in one
/// round trip (the commands are pipelined; the target is thrown away on any failure, so nothing
/// is read past the first one).
pub async fn restore(
    b: &mut Backend,
    s: &Session,
    snap: &Snapshot,
    negotiated: u32,
) -> Result<Restored, StateError> {
    let tracking_seq = b.session_track.then(|| b.send_query(TRACKING_SQL));
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
    let stmts: Vec<_> = s
        .stmts()
        .map(|(id, st)| (id, st, b.send_command(cmd::STMT_PREPARE, &st.sql)))
        .collect();
    let tracking = match tracking_seq {
        Some(seq) => match b.read_answer(seq).await {
            Ok(_) => true,
            // a server without these variables: the session moves, untracked
            Err(QueryError::Server(_)) => false,
            Err(e) => return Err(step("session tracking")(e)),
        },
        None => false,
    };
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
    Ok(Restored { ids, tracking })
}

#[cfg(test)]
mod tests {
    use super::*;

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
