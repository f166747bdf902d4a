//! What a move carries, as data: the changed system variables, the user variables and the
//! digest row read on the old backend, and the SQL that writes them to a target. Reading and
//! restoring over a backend is [`super::carry`]'s; this module does no I/O, so the session's
//! bookkeeping ([`super::state`], [`super::known`]) can hold a snapshot without depending on it.

use std::fmt::Write as _;

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

/// The proxy's own settings ([`TRACKING_SQL`]): set on every backend by the proxy, never carried.
const PROXY_OWNED_PREFIX: &str = "session_track_";

/// Whether a move carries system variable `name` (lower-cased).
pub fn restorable(name: &str) -> bool {
    !NOT_RESTORED.contains(&name) && !name.starts_with(PROXY_OWNED_PREFIX)
}

/// An explicit `LIMIT` on every `SELECT` the proxy runs on a client's session: it overrides the
/// session's `sql_select_limit`, which would otherwise cut the proxy's answers short.
pub(super) const NO_LIMIT: &str = " LIMIT 18446744073709551615";

/// The variable [`SYSVARS_SQL`] overrides while it reads: always carried, its value taken from
/// the digest (which reads it unaltered).
pub(super) const BIG_SELECTS: &str = "sql_big_selects";

pub(super) fn text(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(|b| String::from_utf8_lossy(b).into_owned())
}

pub(super) fn quote_ident(out: &mut String, name: &str) {
    out.push('`');
    out.push_str(&name.replace('`', "``"));
    out.push('`');
}

pub(super) fn quote_str(out: &mut String, v: &str) {
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
    pub(super) fn sysvar_values_from_digest(&mut self) {
        for (i, v) in self.sysvars.iter_mut().enumerate() {
            let d = self.digest.get(1 + i).unwrap_or(&None);
            v.value = match (v.name == BIG_SELECTS, d.as_deref()) {
                // the digest reads it as 0/1; the variable is set as OFF/ON
                (true, Some(b"0")) => Some("OFF".into()),
                (true, Some(b"1")) => Some("ON".into()),
                _ => text(d),
            };
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

/// `SELECT DATABASE(), @@session.v…, <user variables…>`: one row that must read the same on
/// both backends.
pub(super) fn digest_sql(sysvars: &[SysVar], uservars: &[UserVar]) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
