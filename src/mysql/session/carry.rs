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
//! Every query here is shaped to be immune to the client's session settings: an explicit `LIMIT`
//! (`sql_select_limit`), `sql_big_selects` (`max_join_size`), backquoted names and hex or
//! `''`-doubled literals (`ANSI_QUOTES`, `NO_BACKSLASH_ESCAPES`).

use switchyard::wire::cmd;

use super::snapshot::{
    digest_sql, in_restore_order, last_insert_id_sql, quote_str, sysvars_sql, text, uservars_sql,
    Snapshot, SysVar, UserVar, BIG_SELECTS, NO_LIMIT,
};
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
    /// The old backend's answers for the snapshot were longer than the snapshot's size cap
    /// (`max_snapshot`): large user variables, say. Read to their end, but not kept.
    #[error("session state over the snapshot size cap")]
    TooLarge,
}

/// The proxy's session-tracking settings, sent after every login (the client's and a move's)
/// and after a reset, with `CLIENT_SESSION_TRACK` negotiated: the server then reports in OK
/// packets every system variable and schema change and the transaction state.
pub const TRACKING_SQL: &str = "SET SESSION session_track_system_variables = '*', \
     session_track_schema = ON, session_track_state_change = ON, \
     session_track_transaction_info = 'STATE'";

/// The session's `max_join_size` could refuse a read of `information_schema` (error 1104), so
/// the read runs with `sql_big_selects` on; its session value is then read by the digest
/// instead (see [`BIG_SELECTS`]).
const SYSVARS_SQL: &str = "SET STATEMENT sql_big_selects = 1 FOR \
     SELECT LOWER(VARIABLE_NAME), VARIABLE_TYPE, SESSION_VALUE \
     FROM information_schema.SYSTEM_VARIABLES WHERE VARIABLE_SCOPE = 'SESSION' \
     AND (NOT (SESSION_VALUE <=> GLOBAL_VALUE) OR VARIABLE_NAME IN \
     ('CHARACTER_SET_CLIENT','CHARACTER_SET_CONNECTION','CHARACTER_SET_RESULTS','COLLATION_CONNECTION',\
     'SQL_BIG_SELECTS')) LIMIT 18446744073709551615";

/// String values are not read here: the digest reads them as hex, which restores them exactly.
const USERVARS_SQL: &str = "SET STATEMENT sql_big_selects = 1 FOR \
     SELECT VARIABLE_NAME, VARIABLE_TYPE, CHARACTER_SET_NAME, \
     IF(VARIABLE_TYPE = 'VARCHAR', NULL, VARIABLE_VALUE) FROM information_schema.USER_VARIABLES \
     LIMIT 18446744073709551615";

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

/// `SELECT @@in_transaction, IS_USED_LOCK('a') <=> CONNECTION_ID(), …`: what the session must
/// not leave behind.
fn check_sql(names: &[String]) -> String {
    let mut sql = String::from("SELECT @@in_transaction");
    for n in names {
        sql.push_str(", IS_USED_LOCK(");
        quote_str(&mut sql, n);
        sql.push_str(") <=> CONNECTION_ID()");
    }
    sql.push_str(NO_LIMIT);
    sql
}

/// Reads the session's state from `b` (at a safe point), in as few round trips as it can: one
/// when it needs nothing from `information_schema` (the server named every changed system
/// variable, or nothing changed, and user variables did not change: the digest of the known
/// state supplies the values), two otherwise (the variables, then their digest). The first
/// round trip also checks for an open transaction and held named locks.
/// At most `max` bytes of answers are kept (the snapshot's size cap): a larger state is
/// refused with [`StateError::TooLarge`], the answers read to their end so the session can stay
/// on `b`.
pub async fn snapshot(
    b: &mut Backend,
    s: &mut Session,
    max: usize,
) -> Result<Snapshot, StateError> {
    let mut budget = max;
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
    let got = answers(b, &seqs, &mut budget)
        .await
        .map_err(step("snapshot"))?;
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
            let seq = b.send_query(&sql);
            let row = first_row(
                b.read_answer_within(seq, &mut budget)
                    .await
                    .map_err(step("digest"))?,
            );
            (sql, row)
        }
    };
    let mut sysvars = sysvars;
    if plan.read_sysvars {
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
    }
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
            &check_sql(&["job".into()]),
            &Snapshot::login_defaults().digest_sql,
        ] {
            assert!(sql.ends_with(NO_LIMIT), "{sql}");
        }
        // max_join_size must not refuse the reads of information_schema
        assert!(SYSVARS_SQL.starts_with("SET STATEMENT sql_big_selects = 1 FOR SELECT"));
        assert!(USERVARS_SQL.starts_with("SET STATEMENT sql_big_selects = 1 FOR SELECT"));
        assert!(SYSVARS_SQL.contains("'SQL_BIG_SELECTS'"));
    }
}
