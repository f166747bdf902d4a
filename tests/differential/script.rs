//! What a session is made of: the commands the tester can send, printed one per line as a
//! reproducible script.

use std::fmt;

use switchyard_testkit::mysql_client::Param;

/// Statement slots a script names its binary prepared statements by; the run maps each slot to
/// the id the server (or proxy) returned, so the two runs can be compared although ids differ.
pub type Slot = u8;

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cmd {
    /// `COM_QUERY` (one statement or several).
    Query(String),
    /// `COM_INIT_DB`.
    InitDb(String),
    /// `COM_PING`.
    Ping,
    /// `COM_STMT_PREPARE` into `slot` (replacing what the slot named; the old statement stays
    /// open).
    Prepare(Slot, String),
    /// `COM_STMT_EXECUTE` of `slot` (a slot never prepared sends an id nobody gave out).
    Execute {
        /// The statement.
        slot: Slot,
        /// Its parameters.
        params: Vec<Param>,
        /// Whether the parameter types are sent (else the server uses the last bound ones).
        types: bool,
        /// Whether a read-only cursor is asked for.
        cursor: bool,
    },
    /// `COM_STMT_FETCH` from `slot`'s cursor.
    Fetch(Slot, u32),
    /// `COM_STMT_SEND_LONG_DATA` for parameter 0 of `slot` (no answer).
    LongData(Slot, String),
    /// `COM_STMT_CLOSE` (no answer); the slot keeps the closed id.
    Close(Slot),
    /// `COM_STMT_RESET`.
    Reset(Slot),
    /// `COM_SET_OPTION`: multi-statements on or off.
    SetOption(bool),
    /// `COM_RESET_CONNECTION`.
    ResetConnection,
    /// `COM_CHANGE_USER` to test user `0` or `1`, into schema `dt`.
    ChangeUser(u8),
}

fn param(p: &Param) -> String {
    match p {
        Param::Null => "NULL".into(),
        Param::Int(i) => i.to_string(),
        Param::Text(s) => format!("'{s}'"),
        Param::LongData => "<long data>".into(),
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cmd::Query(q) => write!(f, "query      {q}"),
            Cmd::InitDb(d) => write!(f, "init_db    {d}"),
            Cmd::Ping => write!(f, "ping"),
            Cmd::Prepare(s, q) => write!(f, "prepare    #{s} {q}"),
            Cmd::Execute {
                slot,
                params,
                types,
                cursor,
            } => {
                let ps: Vec<String> = params.iter().map(param).collect();
                write!(f, "execute    #{slot} ({})", ps.join(", "))?;
                if !types {
                    write!(f, " without types")?;
                }
                if *cursor {
                    write!(f, " with cursor")?;
                }
                Ok(())
            }
            Cmd::Fetch(s, n) => write!(f, "fetch      #{s} {n} rows"),
            Cmd::LongData(s, d) => write!(f, "long_data  #{s} '{d}'"),
            Cmd::Close(s) => write!(f, "close      #{s}"),
            Cmd::Reset(s) => write!(f, "reset      #{s}"),
            Cmd::SetOption(on) => write!(
                f,
                "set_option multi_statements {}",
                if *on { "on" } else { "off" }
            ),
            Cmd::ResetConnection => write!(f, "reset_connection"),
            Cmd::ChangeUser(u) => write!(f, "change_user {}", crate::USERS[usize::from(*u) % 2].0),
        }
    }
}

/// A session: how it logs in and what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script {
    /// The seed that generated it (0 for hand-written ones).
    pub seed: u64,
    /// Whether the client asks for `CLIENT_DEPRECATE_EOF`.
    pub deprecate_eof: bool,
    /// The commands.
    pub cmds: Vec<Cmd>,
}

impl fmt::Display for Script {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "-- seed {:#x}; login as {} into dt{}",
            self.seed,
            crate::USERS[0].0,
            if self.deprecate_eof {
                ", CLIENT_DEPRECATE_EOF"
            } else {
                ""
            }
        )?;
        for (i, c) in self.cmds.iter().enumerate() {
            writeln!(f, "{:>3}  {c}", i + 1)?;
        }
        Ok(())
    }
}
