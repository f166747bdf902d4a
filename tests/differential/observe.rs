//! What the tester compares: each command's answer reduced to what a client can rely on, and
//! the session's state at its end. Ids that legitimately differ between two runs (statement ids,
//! connection ids, error message text) are left out here, never patched over later.

use std::fmt;

use switchyard_testkit::mysql_client::{status, Column, OkInfo, Outcome, Part, Prepared};

/// Status flags that are session state a client can see (the others depend on plans, on what
/// the server sends unasked, or on session tracking the proxy may ask for).
pub const STATUS_MASK: u16 = status::IN_TRANS
    | status::AUTOCOMMIT
    | status::MORE_RESULTS
    | status::CURSOR_EXISTS
    | status::LAST_ROW_SENT
    | status::NO_BACKSLASH_ESCAPES
    | status::IN_TRANS_READONLY;

/// An OK or EOF, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    affected_rows: u64,
    last_insert_id: u64,
    status: u16,
    warnings: u16,
    info: String,
}

impl From<&OkInfo> for Done {
    fn from(ok: &OkInfo) -> Self {
        Done {
            affected_rows: ok.affected_rows,
            last_insert_id: ok.last_insert_id,
            status: ok.status & STATUS_MASK,
            warnings: ok.warnings,
            info: ok.info.clone(),
        }
    }
}

/// One result, reduced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Res {
    /// A statement without rows.
    Ok(Done),
    /// A result set.
    Rows {
        columns: Vec<Column>,
        rows: Vec<Vec<Option<String>>>,
        end: Done,
    },
}

/// What one command got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Obs {
    /// Results, then the error that ended them (code and SQLSTATE).
    Answer(Vec<Res>, Option<(u16, String)>),
    /// A prepared statement's shape (not its id).
    Prepared {
        params: usize,
        columns: Vec<Column>,
        warnings: u16,
    },
    /// The command has no answer.
    Silent,
    /// The connection broke (the client saw an I/O or protocol error).
    Broken(String),
}

impl Obs {
    /// From a command's outcome.
    pub fn answer(o: &Outcome) -> Obs {
        let parts = o
            .parts
            .iter()
            .map(|p| match p {
                Part::Ok(ok) => Res::Ok(Done::from(ok)),
                Part::Rows { columns, rows, end } => Res::Rows {
                    columns: columns.clone(),
                    rows: rows
                        .iter()
                        .map(|r| {
                            r.iter()
                                .map(|v| v.as_ref().map(|b| String::from_utf8_lossy(b).into()))
                                .collect()
                        })
                        .collect(),
                    end: Done::from(end),
                },
            })
            .collect();
        let err = o.error.as_ref().map(|e| (e.code, e.state.clone()));
        Obs::Answer(parts, err)
    }

    /// From a prepare's answer.
    pub fn prepared(p: &Prepared) -> Obs {
        Obs::Prepared {
            params: p.params.len(),
            columns: p.columns.clone(),
            warnings: p.warnings,
        }
    }

    /// Whether this is a broken connection.
    pub fn is_broken(&self) -> bool {
        matches!(self, Obs::Broken(_))
    }
}

impl fmt::Display for Obs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Obs::Answer(parts, err) => {
                let mut first = true;
                for p in parts {
                    if !first {
                        write!(f, " | ")?;
                    }
                    first = false;
                    match p {
                        Res::Ok(d) => write!(
                            f,
                            "OK affected={} insert_id={} status={:#06x} warnings={}{}",
                            d.affected_rows,
                            d.last_insert_id,
                            d.status,
                            d.warnings,
                            if d.info.is_empty() {
                                String::new()
                            } else {
                                format!(" info={:?}", d.info)
                            }
                        )?,
                        Res::Rows { columns, rows, end } => {
                            let names: Vec<&str> =
                                columns.iter().map(|c| c.name.as_str()).collect();
                            write!(f, "rows [{}]", names.join(", "))?;
                            let shown: Vec<String> = rows
                                .iter()
                                .take(6)
                                .map(|r| {
                                    let vs: Vec<String> = r
                                        .iter()
                                        .map(|v| v.clone().unwrap_or_else(|| "NULL".into()))
                                        .collect();
                                    format!("({})", vs.join(", "))
                                })
                                .collect();
                            write!(f, " {}", shown.join(" "))?;
                            if rows.len() > 6 {
                                write!(f, " …{} rows", rows.len())?;
                            }
                            write!(
                                f,
                                " end status={:#06x} warnings={}",
                                end.status, end.warnings
                            )?;
                        }
                    }
                }
                if let Some((code, state)) = err {
                    if !first {
                        write!(f, " | ")?;
                    }
                    write!(f, "ERROR {code} ({state})")?;
                }
                Ok(())
            }
            Obs::Prepared {
                params,
                columns,
                warnings,
            } => write!(
                f,
                "prepared params={params} columns={} warnings={warnings}",
                columns.len()
            ),
            Obs::Silent => write!(f, "(no answer)"),
            Obs::Broken(why) => write!(f, "CONNECTION BROKEN: {why}"),
        }
    }
}

/// One run of a script: what each command got, the session's state at the end, and the tables
/// after the session closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// One observation per command run (a broken connection ends the list).
    pub obs: Vec<Obs>,
    /// `name = value` lines read inside the session at its end.
    pub end_state: Vec<(String, String)>,
    /// `table: rows` after the session closed.
    pub tables: Vec<(String, String)>,
}

/// Where two traces first differ.
#[derive(Debug, Clone)]
pub struct Divergence {
    /// The command (1-based), or `None` for the end-of-session checks.
    pub at: Option<usize>,
    /// What.
    pub what: String,
    /// The direct run's side.
    pub direct: String,
    /// The proxied run's side.
    pub proxied: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(n) => writeln!(f, "diverges at command {n}: {}", self.what)?,
            None => writeln!(f, "diverges at the end: {}", self.what)?,
        }
        writeln!(f, "  direct:  {}", self.direct)?;
        write!(f, "  proxied: {}", self.proxied)
    }
}

/// The first difference between the direct run `a` and the proxied run `b`.
pub fn compare(a: &Trace, b: &Trace) -> Option<Divergence> {
    for (i, pair) in a.obs.iter().zip(b.obs.iter()).enumerate() {
        if pair.0 != pair.1 {
            let (what, direct, proxied) = detail(pair.0, pair.1);
            return Some(Divergence {
                at: Some(i + 1),
                what,
                direct,
                proxied,
            });
        }
    }
    if a.obs.len() != b.obs.len() {
        return Some(Divergence {
            at: Some(a.obs.len().min(b.obs.len()) + 1),
            what: "one run stopped early".into(),
            direct: format!("{} commands run", a.obs.len()),
            proxied: format!("{} commands run", b.obs.len()),
        });
    }
    for (x, y) in a.end_state.iter().zip(b.end_state.iter()) {
        if x != y {
            return Some(Divergence {
                at: None,
                what: format!("session state {}", x.0),
                direct: x.1.clone(),
                proxied: y.1.clone(),
            });
        }
    }
    if a.end_state.len() != b.end_state.len() {
        return Some(Divergence {
            at: None,
            what: "session state checks".into(),
            direct: format!("{:?}", a.end_state),
            proxied: format!("{:?}", b.end_state),
        });
    }
    for (x, y) in a.tables.iter().zip(b.tables.iter()) {
        if x != y {
            return Some(Divergence {
                at: None,
                what: format!("table {} after the session", x.0),
                direct: x.1.clone(),
                proxied: y.1.clone(),
            });
        }
    }
    None
}

/// What differs between two answers, shown as the whole answers unless only column
/// definitions differ (which the one-line form does not show).
fn detail(a: &Obs, b: &Obs) -> (String, String, String) {
    if let (Obs::Answer(pa, ea), Obs::Answer(pb, eb)) = (a, b) {
        if ea == eb && pa.len() == pb.len() {
            for (x, y) in pa.iter().zip(pb.iter()) {
                if let (Res::Rows { columns: ca, .. }, Res::Rows { columns: cb, .. }) = (x, y) {
                    if let Some((c, d)) = ca.iter().zip(cb.iter()).find(|(c, d)| c != d) {
                        return (
                            format!("column definition of {:?}", c.name),
                            format!("{c:?}"),
                            format!("{d:?}"),
                        );
                    }
                }
            }
        }
    }
    ("different answers".into(), a.to_string(), b.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_testkit::mysql_client::ServerError;

    fn ok(status: u16) -> Outcome {
        Outcome {
            parts: vec![Part::Ok(OkInfo {
                status,
                ..OkInfo::default()
            })],
            error: None,
        }
    }

    #[test]
    fn a_lost_transaction_flag_is_a_divergence_but_an_unasked_flag_is_not() {
        let trace = |o: &Outcome| Trace {
            obs: vec![Obs::answer(o)],
            end_state: vec![],
            tables: vec![],
        };
        let in_tx = trace(&ok(status::IN_TRANS | status::AUTOCOMMIT));
        let lost = trace(&ok(status::AUTOCOMMIT));
        let tracked = trace(&ok(status::IN_TRANS | status::AUTOCOMMIT | 0x4000));
        assert!(compare(&in_tx, &lost).is_some());
        assert!(compare(&in_tx, &tracked).is_none());
    }

    #[test]
    fn errors_compare_by_code_and_state_not_by_message() {
        let err = |msg: &str| Outcome {
            parts: vec![],
            error: Some(ServerError {
                code: 1146,
                state: "42S02".into(),
                message: msg.into(),
            }),
        };
        assert_eq!(Obs::answer(&err("a")), Obs::answer(&err("b")));
    }
}
