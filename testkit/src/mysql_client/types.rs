//! The client's data: what it asks for (capabilities, [`Options`], [`Param`]) and what it
//! returns ([`Outcome`] and its parts), kept apart from the wire code that fills them.

use std::fmt;
use std::time::Duration;

/// Capability flags this client may ask for (`CLIENT_*`).
pub mod caps {
    /// New, more secure passwords.
    pub const LONG_PASSWORD: u32 = 0x1;
    /// Column flags in column definitions.
    pub const LONG_FLAG: u32 = 0x4;
    /// A schema may be named at login.
    pub const CONNECT_WITH_DB: u32 = 0x8;
    /// The 4.1 protocol.
    pub const PROTOCOL_41: u32 = 0x200;
    /// Status flags in EOF packets.
    pub const TRANSACTIONS: u32 = 0x2000;
    /// 4.1 authentication.
    pub const SECURE_CONNECTION: u32 = 0x8000;
    /// Several statements in one `COM_QUERY`.
    pub const MULTI_STATEMENTS: u32 = 0x1_0000;
    /// Several result sets for one command.
    pub const MULTI_RESULTS: u32 = 0x2_0000;
    /// Several result sets for one binary execute (`CALL`).
    pub const PS_MULTI_RESULTS: u32 = 0x4_0000;
    /// Auth plugin names in the handshake.
    pub const PLUGIN_AUTH: u32 = 0x8_0000;
    /// Length-encoded auth response.
    pub const PLUGIN_AUTH_LENENC: u32 = 0x20_0000;
    /// No EOF packets: result sets end in an OK packet with a 0xFE header.
    pub const DEPRECATE_EOF: u32 = 0x100_0000;
}

/// Server status flags (`SERVER_*`) the tests look at.
pub mod status {
    /// A transaction is open.
    pub const IN_TRANS: u16 = 0x1;
    /// Autocommit is on.
    pub const AUTOCOMMIT: u16 = 0x2;
    /// Another result follows.
    pub const MORE_RESULTS: u16 = 0x8;
    /// A cursor was opened by the execute.
    pub const CURSOR_EXISTS: u16 = 0x40;
    /// The fetch returned the cursor's last row.
    pub const LAST_ROW_SENT: u16 = 0x80;
    /// `NO_BACKSLASH_ESCAPES` is in `sql_mode`.
    pub const NO_BACKSLASH_ESCAPES: u16 = 0x200;
    /// The open transaction is read-only.
    pub const IN_TRANS_READONLY: u16 = 0x2000;
}

/// Why the client gave up on the connection (an ERR answer is not one: it is in [`Outcome`]).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed or timed out.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The server broke the protocol (or this client does not know that part of it).
    #[error("protocol: {0}")]
    Protocol(String),
    /// Login was refused.
    #[error("login refused: {0}")]
    Login(ServerError),
}

pub(super) fn proto<T>(what: impl Into<String>) -> Result<T, ClientError> {
    Err(ClientError::Protocol(what.into()))
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// The error number (`1064`, …).
    pub code: u16,
    /// The five-character SQLSTATE.
    pub state: String,
    /// The message.
    pub message: String,
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ERROR {} ({}): {}", self.code, self.state, self.message)
    }
}

/// An OK packet, or the EOF packet that ends a result set (then `affected_rows`,
/// `last_insert_id` and `info` are empty).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OkInfo {
    /// Rows changed.
    pub affected_rows: u64,
    /// `LAST_INSERT_ID()` as the server reports it.
    pub last_insert_id: u64,
    /// Server status flags.
    pub status: u16,
    /// Warnings of the statement.
    pub warnings: u16,
    /// The human-readable info (`Rows matched: 1  Changed: 1  Warnings: 0`).
    pub info: String,
}

/// A column definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Schema.
    pub schema: String,
    /// Table alias.
    pub table: String,
    /// Table.
    pub org_table: String,
    /// Column alias.
    pub name: String,
    /// Column.
    pub org_name: String,
    /// Character set number.
    pub charset: u16,
    /// Maximum length.
    pub length: u32,
    /// Type byte (`MYSQL_TYPE_*`).
    pub kind: u8,
    /// Column flags.
    pub flags: u16,
    /// Decimals.
    pub decimals: u8,
}

/// One value: `None` is SQL NULL; binary-protocol values are rendered as text the way the text
/// protocol would (numbers in decimal, dates as `YYYY-MM-DD hh:mm:ss.ffffff`).
pub type Value = Option<Vec<u8>>;

/// One result of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// A statement without rows.
    Ok(OkInfo),
    /// A result set, with the packet that ended it.
    Rows {
        /// The columns.
        columns: Vec<Column>,
        /// The rows.
        rows: Vec<Vec<Value>>,
        /// The EOF or OK that ended the rows (or the metadata, when a cursor was opened).
        end: OkInfo,
    },
}

/// Everything a command answered: its results in order, then the error that ended it, if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Results before the end or the error.
    pub parts: Vec<Part>,
    /// The ERR packet that ended the answer.
    pub error: Option<ServerError>,
}

impl Outcome {
    /// The status flags of the last result (`None` after an error or with no result).
    pub fn last_status(&self) -> Option<u16> {
        if self.error.is_some() {
            return None;
        }
        self.parts.last().map(|p| match p {
            Part::Ok(ok) => ok.status,
            Part::Rows { end, .. } => end.status,
        })
    }

    /// The first column of the first row of the first result set, as text.
    pub fn scalar(&self) -> Option<String> {
        self.parts.iter().find_map(|p| match p {
            Part::Rows { rows, .. } => rows.first().and_then(|r| r.first()).map(|v| match v {
                Some(b) => String::from_utf8_lossy(b).into_owned(),
                None => "NULL".to_string(),
            }),
            Part::Ok(_) => None,
        })
    }
}

/// A statement prepared with `COM_STMT_PREPARE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The id the server (or proxy) gave it.
    pub id: u32,
    /// Parameter definitions.
    pub params: Vec<Column>,
    /// Result column definitions.
    pub columns: Vec<Column>,
    /// Warnings of the prepare.
    pub warnings: u16,
}

/// A parameter of a binary execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    /// SQL NULL.
    Null,
    /// A signed 64-bit integer.
    Int(i64),
    /// A string.
    Text(String),
    /// The value was sent before with [`Client::send_long_data`]: typed as a string, and
    /// (as libmysql does) left out of the execute packet.
    LongData,
}

impl Param {
    pub(super) fn kind(&self) -> u8 {
        match self {
            Param::Null => 0x06,
            Param::Int(_) => 0x08,
            Param::Text(_) | Param::LongData => 0xFD,
        }
    }
}

/// How to log in.
#[derive(Debug, Clone)]
pub struct Options {
    /// User name.
    pub user: String,
    /// Password (cleartext, for the `mysql_native_password` scramble).
    pub password: String,
    /// Schema to start in.
    pub db: Option<String>,
    /// Ask for `CLIENT_DEPRECATE_EOF` (modern drivers do).
    pub deprecate_eof: bool,
    /// Ask for `CLIENT_MULTI_STATEMENTS`.
    pub multi_statements: bool,
    /// Read timeout for every answer.
    pub timeout: Duration,
}

impl Options {
    /// `user`/`password`, no schema, classic EOF packets, multi-statements on, 10 s timeout.
    pub fn new(user: &str, password: &str) -> Options {
        Options {
            user: user.to_string(),
            password: password.to_string(),
            db: None,
            deprecate_eof: false,
            multi_statements: true,
            timeout: Duration::from_secs(10),
        }
    }
}
