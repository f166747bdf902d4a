//! A minimal, blocking, raw MySQL client for tests that must send what drivers send but their
//! APIs hide: `COM_SET_OPTION`, `COM_STMT_RESET`, `COM_STMT_FETCH`, long data, an execute of a
//! closed statement id. It returns every answer as plain data ([`Outcome`]) so two runs can be
//! compared field by field. `mysql_native_password` only; no TLS, no compression.
//!
//! Peer bytes are read with bounds checks throughout: a malformed answer is a
//! [`ClientError::Protocol`], never a panic.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use sha1::{Digest, Sha1};

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

/// Command bytes.
mod cmd {
    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;
}

/// First bytes of answer packets.
const OK: u8 = 0x00;
const EOF: u8 = 0xFE;
const ERR: u8 = 0xFF;
const LOCAL_INFILE: u8 = 0xFB;
/// A NULL column in a text row.
const NULL_VALUE: u8 = 0xFB;
/// Continuation of a packet of the maximal length.
const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// `utf8mb4_general_ci`.
const UTF8MB4: u8 = 45;
/// The column flag of unsigned numbers.
const UNSIGNED_FLAG: u16 = 0x20;
/// Plugins this client can answer.
const NATIVE: &str = "mysql_native_password";

/// Why the client gave up on the connection (an ERR answer is not one: it is in [`Outcome`]).
#[derive(Debug)]
pub enum ClientError {
    /// The socket failed or timed out.
    Io(std::io::Error),
    /// The server broke the protocol (or this client does not know that part of it).
    Protocol(String),
    /// Login was refused.
    Login(ServerError),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Io(e) => write!(f, "i/o: {e}"),
            ClientError::Protocol(m) => write!(f, "protocol: {m}"),
            ClientError::Login(e) => write!(f, "login refused: {e}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(e)
    }
}

fn proto<T>(what: impl Into<String>) -> Result<T, ClientError> {
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
    fn kind(&self) -> u8 {
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

/// A logged-in connection.
pub struct Client {
    stream: TcpStream,
    seq: u8,
    caps: u32,
    salt: Vec<u8>,
    connection_id: u32,
    /// Columns of each statement's open cursor, for `COM_STMT_FETCH`.
    cursors: HashMap<u32, Vec<Column>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("connection_id", &self.connection_id)
            .field("caps", &format_args!("{:#x}", self.caps))
            .finish()
    }
}

impl Client {
    /// Connects to `addr` and logs in.
    pub fn connect(addr: SocketAddr, opts: &Options) -> Result<Client, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, opts.timeout)?;
        stream.set_read_timeout(Some(opts.timeout))?;
        stream.set_write_timeout(Some(opts.timeout))?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            seq: 0,
            caps: 0,
            salt: Vec::new(),
            connection_id: 0,
            cursors: HashMap::new(),
        };
        c.login(opts)?;
        Ok(c)
    }

    /// The connection id from the greeting (the proxy forwards the first backend's).
    pub fn connection_id(&self) -> u32 {
        self.connection_id
    }

    /// The capabilities in force (asked for and offered).
    pub fn capabilities(&self) -> u32 {
        self.caps
    }

    fn login(&mut self, opts: &Options) -> Result<(), ClientError> {
        let g = self.read_packet()?;
        if g.first() == Some(&ERR) {
            return Err(ClientError::Login(parse_err(&g)?));
        }
        let mut r = Reader::new(&g);
        if r.u8()? != 10 {
            return proto("greeting is not protocol v10");
        }
        r.nul_str()?;
        self.connection_id = r.u32()?;
        let mut salt = r.bytes(8)?.to_vec();
        r.u8()?;
        let caps_low = u32::from(r.u16()?);
        r.u8()?;
        r.u16()?;
        let caps_high = u32::from(r.u16()?);
        let server_caps = caps_low | (caps_high << 16);
        let salt_len = usize::from(r.u8()?);
        r.bytes(10)?;
        if server_caps & caps::SECURE_CONNECTION != 0 {
            let n = salt_len.saturating_sub(8).max(13);
            let part2 = r.bytes(n.min(r.remaining()))?;
            salt.extend_from_slice(part2);
        }
        while salt.last() == Some(&0) {
            salt.pop();
        }
        self.salt = salt;

        let mut want = caps::LONG_PASSWORD
            | caps::LONG_FLAG
            | caps::PROTOCOL_41
            | caps::TRANSACTIONS
            | caps::SECURE_CONNECTION
            | caps::MULTI_RESULTS
            | caps::PS_MULTI_RESULTS
            | caps::PLUGIN_AUTH
            | caps::PLUGIN_AUTH_LENENC;
        if opts.db.is_some() {
            want |= caps::CONNECT_WITH_DB;
        }
        if opts.multi_statements {
            want |= caps::MULTI_STATEMENTS;
        }
        if opts.deprecate_eof {
            want |= caps::DEPRECATE_EOF;
        }
        self.caps = want & server_caps;
        if self.caps & caps::PROTOCOL_41 == 0 {
            return proto("server does not speak protocol 4.1");
        }
        let auth = native_scramble(&opts.password, &self.salt);
        let mut p = Vec::with_capacity(128);
        p.extend_from_slice(&self.caps.to_le_bytes());
        p.extend_from_slice(&(16u32 << 20).to_le_bytes());
        p.push(UTF8MB4);
        p.extend_from_slice(&[0; 23]);
        p.extend_from_slice(opts.user.as_bytes());
        p.push(0);
        put_lenenc(&mut p, auth.len() as u64);
        p.extend_from_slice(&auth);
        if let Some(db) = &opts.db {
            if self.caps & caps::CONNECT_WITH_DB != 0 {
                p.extend_from_slice(db.as_bytes());
                p.push(0);
            }
        }
        p.extend_from_slice(NATIVE.as_bytes());
        p.push(0);
        self.write_packet(&p)?;
        self.finish_auth(&opts.password)
    }

    /// Reads the server's answer to a login or change-user, answering an auth switch.
    fn finish_auth(&mut self, password: &str) -> Result<(), ClientError> {
        loop {
            let p = self.read_packet()?;
            match p.first() {
                Some(&OK) => return Ok(()),
                Some(&ERR) => return Err(ClientError::Login(parse_err(&p)?)),
                Some(&EOF) => {
                    let mut r = Reader::new(&p);
                    r.u8()?;
                    let plugin = r.nul_str()?;
                    if plugin != NATIVE {
                        return proto(format!("auth switch to unsupported plugin {plugin}"));
                    }
                    let mut salt = r.rest().to_vec();
                    while salt.last() == Some(&0) {
                        salt.pop();
                    }
                    self.salt = salt;
                    let auth = native_scramble(password, &self.salt);
                    self.write_packet(&auth)?;
                }
                Some(b) => return proto(format!("unexpected auth packet {b:#x}")),
                None => return proto("empty auth packet"),
            }
        }
    }

    /// `COM_QUERY`: all results of `sql`.
    pub fn query(&mut self, sql: &str) -> Result<Outcome, ClientError> {
        self.command(cmd::QUERY, sql.as_bytes())?;
        self.read_results(false)
    }

    /// `COM_INIT_DB`.
    pub fn init_db(&mut self, db: &str) -> Result<Outcome, ClientError> {
        self.command(cmd::INIT_DB, db.as_bytes())?;
        self.read_results(false)
    }

    /// `COM_PING`.
    pub fn ping(&mut self) -> Result<Outcome, ClientError> {
        self.command(cmd::PING, &[])?;
        self.read_results(false)
    }

    /// `COM_SET_OPTION`: multi-statements on (`true`) or off.
    pub fn set_multi_statements(&mut self, on: bool) -> Result<Outcome, ClientError> {
        let option: u16 = if on { 0 } else { 1 };
        self.command(cmd::SET_OPTION, &option.to_le_bytes())?;
        // Answered with an EOF packet (OK with a 0xFE header under DEPRECATE_EOF), or ERR.
        let p = self.read_packet()?;
        let mut out = Outcome::default();
        match p.first() {
            Some(&ERR) => out.error = Some(parse_err(&p)?),
            Some(&OK) => out.parts.push(Part::Ok(self.parse_ok(&p)?)),
            Some(&EOF) => out.parts.push(Part::Ok(self.parse_end(&p)?)),
            _ => return proto("unexpected answer to COM_SET_OPTION"),
        }
        Ok(out)
    }

    /// `COM_RESET_CONNECTION`.
    pub fn reset_connection(&mut self) -> Result<Outcome, ClientError> {
        self.cursors.clear();
        self.command(cmd::RESET_CONNECTION, &[])?;
        self.read_results(false)
    }

    /// `COM_CHANGE_USER` to `user` with `password`, starting in `db`. A refusal is an error in
    /// the [`Outcome`] (the server then closes the connection).
    pub fn change_user(
        &mut self,
        user: &str,
        password: &str,
        db: Option<&str>,
    ) -> Result<Outcome, ClientError> {
        self.cursors.clear();
        let auth = native_scramble(password, &self.salt);
        let mut p = Vec::with_capacity(64);
        p.extend_from_slice(user.as_bytes());
        p.push(0);
        p.push(auth.len() as u8);
        p.extend_from_slice(&auth);
        p.extend_from_slice(db.unwrap_or("").as_bytes());
        p.push(0);
        p.extend_from_slice(&u16::from(UTF8MB4).to_le_bytes());
        p.extend_from_slice(NATIVE.as_bytes());
        p.push(0);
        self.command(cmd::CHANGE_USER, &p)?;
        match self.finish_auth(password) {
            Ok(()) => Ok(Outcome {
                parts: vec![Part::Ok(OkInfo::default())],
                error: None,
            }),
            Err(ClientError::Login(e)) => Ok(Outcome {
                parts: Vec::new(),
                error: Some(e),
            }),
            Err(e) => Err(e),
        }
    }

    /// `COM_STMT_PREPARE`: the statement, or the server's error.
    pub fn prepare(&mut self, sql: &str) -> Result<Result<Prepared, ServerError>, ClientError> {
        self.command(cmd::STMT_PREPARE, sql.as_bytes())?;
        let p = self.read_packet()?;
        match p.first() {
            Some(&ERR) => return Ok(Err(parse_err(&p)?)),
            Some(&OK) => {}
            _ => return proto("unexpected answer to COM_STMT_PREPARE"),
        }
        let mut r = Reader::new(&p);
        r.u8()?;
        let id = r.u32()?;
        let ncols = r.u16()?;
        let nparams = r.u16()?;
        r.u8()?;
        let warnings = if r.remaining() >= 2 { r.u16()? } else { 0 };
        let params = self.read_defs(usize::from(nparams))?;
        let columns = self.read_defs(usize::from(ncols))?;
        Ok(Ok(Prepared {
            id,
            params,
            columns,
            warnings,
        }))
    }

    /// Reads `n` column definitions and, without `DEPRECATE_EOF`, the EOF after them.
    fn read_defs(&mut self, n: usize) -> Result<Vec<Column>, ClientError> {
        let mut defs = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let p = self.read_packet()?;
            defs.push(parse_column(&p)?);
        }
        if n > 0 && self.caps & caps::DEPRECATE_EOF == 0 {
            let p = self.read_packet()?;
            if !is_end(&p) {
                return proto("definitions not followed by EOF");
            }
        }
        Ok(defs)
    }

    /// `COM_STMT_EXECUTE` of statement `id` with `params`. `send_types` sends the parameter
    /// types (drivers send them on the first execute and when they change; without them the
    /// server uses the last types bound). `cursor` asks for a read-only cursor: rows then come
    /// from [`Client::fetch`].
    pub fn execute(
        &mut self,
        id: u32,
        params: &[Param],
        send_types: bool,
        cursor: bool,
    ) -> Result<Outcome, ClientError> {
        let mut p = Vec::with_capacity(32);
        p.extend_from_slice(&id.to_le_bytes());
        p.push(u8::from(cursor));
        p.extend_from_slice(&1u32.to_le_bytes());
        if !params.is_empty() {
            let mut bitmap = vec![0u8; params.len().div_ceil(8)];
            for (i, v) in params.iter().enumerate() {
                if *v == Param::Null {
                    if let Some(b) = bitmap.get_mut(i / 8) {
                        *b |= 1 << (i % 8);
                    }
                }
            }
            p.extend_from_slice(&bitmap);
            p.push(u8::from(send_types));
            if send_types {
                for v in params {
                    p.push(v.kind());
                    p.push(0);
                }
            }
            for v in params {
                match v {
                    Param::Null | Param::LongData => {}
                    Param::Int(i) => p.extend_from_slice(&i.to_le_bytes()),
                    Param::Text(s) => {
                        put_lenenc(&mut p, s.len() as u64);
                        p.extend_from_slice(s.as_bytes());
                    }
                }
            }
        }
        self.command(cmd::STMT_EXECUTE, &p)?;
        let out = self.read_results(true)?;
        if let Some(Part::Rows { columns, end, .. }) = out.parts.last() {
            if end.status & status::CURSOR_EXISTS != 0 {
                self.cursors.insert(id, columns.clone());
            }
        }
        Ok(out)
    }

    /// `COM_STMT_FETCH`: up to `rows` rows of statement `id`'s open cursor.
    pub fn fetch(&mut self, id: u32, rows: u32) -> Result<Outcome, ClientError> {
        let mut p = Vec::with_capacity(8);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&rows.to_le_bytes());
        self.command(cmd::STMT_FETCH, &p)?;
        let columns = self.cursors.get(&id).cloned().unwrap_or_default();
        let mut got = Vec::new();
        loop {
            let p = self.read_packet()?;
            match p.first() {
                Some(&ERR) => {
                    return Ok(Outcome {
                        parts: Vec::new(),
                        error: Some(parse_err(&p)?),
                    })
                }
                _ if is_end(&p) => {
                    let end = self.parse_end(&p)?;
                    return Ok(Outcome {
                        parts: vec![Part::Rows {
                            columns,
                            rows: got,
                            end,
                        }],
                        error: None,
                    });
                }
                _ => got.push(parse_binary_row(&p, &columns)?),
            }
        }
    }

    /// `COM_STMT_SEND_LONG_DATA` for parameter `param` of statement `id` (no answer).
    pub fn send_long_data(&mut self, id: u32, param: u16, data: &[u8]) -> Result<(), ClientError> {
        let mut p = Vec::with_capacity(6 + data.len());
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&param.to_le_bytes());
        p.extend_from_slice(data);
        self.command(cmd::STMT_SEND_LONG_DATA, &p)
    }

    /// `COM_STMT_CLOSE` (no answer).
    pub fn close_stmt(&mut self, id: u32) -> Result<(), ClientError> {
        self.cursors.remove(&id);
        self.command(cmd::STMT_CLOSE, &id.to_le_bytes())
    }

    /// `COM_STMT_RESET`.
    pub fn reset_stmt(&mut self, id: u32) -> Result<Outcome, ClientError> {
        self.cursors.remove(&id);
        self.command(cmd::STMT_RESET, &id.to_le_bytes())?;
        self.read_results(false)
    }

    /// `COM_QUIT`, then closes the socket.
    pub fn quit(mut self) {
        let _ = self.command(cmd::QUIT, &[]);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    /// Sends one command packet (sequence 0).
    fn command(&mut self, code: u8, body: &[u8]) -> Result<(), ClientError> {
        self.seq = 0;
        let mut p = Vec::with_capacity(1 + body.len());
        p.push(code);
        p.extend_from_slice(body);
        self.write_packet(&p)
    }

    /// Reads the results of one command until one without `MORE_RESULTS`, or an error.
    fn read_results(&mut self, binary: bool) -> Result<Outcome, ClientError> {
        let mut out = Outcome::default();
        loop {
            let p = self.read_packet()?;
            let more = match p.first() {
                Some(&ERR) => {
                    out.error = Some(parse_err(&p)?);
                    return Ok(out);
                }
                Some(&OK) => {
                    let ok = self.parse_ok(&p)?;
                    let more = ok.status & status::MORE_RESULTS != 0;
                    out.parts.push(Part::Ok(ok));
                    more
                }
                Some(&LOCAL_INFILE) => return proto("LOCAL INFILE request (not asked for)"),
                Some(_) => {
                    let mut r = Reader::new(&p);
                    let n = r.lenenc()?;
                    let Ok(n) = usize::try_from(n) else {
                        return proto("column count out of range");
                    };
                    let (part, more) = self.read_rows(n, binary)?;
                    let failed = matches!(part, RowsEnd::Error(_));
                    match part {
                        RowsEnd::Done(part) => out.parts.push(part),
                        RowsEnd::Error(e) => out.error = Some(e),
                    }
                    if failed {
                        return Ok(out);
                    }
                    more
                }
                None => return proto("empty answer packet"),
            };
            if !more {
                return Ok(out);
            }
        }
    }

    fn read_rows(&mut self, n: usize, binary: bool) -> Result<(RowsEnd, bool), ClientError> {
        let mut columns = Vec::with_capacity(n.min(256));
        for _ in 0..n {
            let p = self.read_packet()?;
            columns.push(parse_column(&p)?);
        }
        if self.caps & caps::DEPRECATE_EOF == 0 {
            let p = self.read_packet()?;
            if !is_end(&p) {
                return proto("column definitions not followed by EOF");
            }
            let end = self.parse_end(&p)?;
            if end.status & status::CURSOR_EXISTS != 0 {
                let more = end.status & status::MORE_RESULTS != 0;
                let part = Part::Rows {
                    columns,
                    rows: Vec::new(),
                    end,
                };
                return Ok((RowsEnd::Done(part), more));
            }
        }
        let mut rows = Vec::new();
        loop {
            let p = self.read_packet()?;
            if p.first() == Some(&ERR) {
                return Ok((RowsEnd::Error(parse_err(&p)?), false));
            }
            if is_end(&p) {
                let end = self.parse_end(&p)?;
                let more = end.status & status::MORE_RESULTS != 0;
                let part = Part::Rows { columns, rows, end };
                return Ok((RowsEnd::Done(part), more));
            }
            rows.push(if binary {
                parse_binary_row(&p, &columns)?
            } else {
                parse_text_row(&p, columns.len())?
            });
        }
    }

    /// An EOF packet, or under `DEPRECATE_EOF` the OK packet with a 0xFE header.
    fn parse_end(&self, p: &[u8]) -> Result<OkInfo, ClientError> {
        if self.caps & caps::DEPRECATE_EOF != 0 && p.len() > 5 {
            return self.parse_ok(p);
        }
        let mut r = Reader::new(p);
        r.u8()?;
        let warnings = if r.remaining() >= 2 { r.u16()? } else { 0 };
        let status = if r.remaining() >= 2 { r.u16()? } else { 0 };
        Ok(OkInfo {
            status,
            warnings,
            ..OkInfo::default()
        })
    }

    fn parse_ok(&self, p: &[u8]) -> Result<OkInfo, ClientError> {
        let mut r = Reader::new(p);
        r.u8()?;
        let affected_rows = r.lenenc()?;
        let last_insert_id = r.lenenc()?;
        let status = r.u16()?;
        let warnings = r.u16()?;
        let info = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(OkInfo {
            affected_rows,
            last_insert_id,
            status,
            warnings,
            info,
        })
    }

    /// Writes `payload` as one logical packet: chunks of at most 16 MiB - 1, and an empty one
    /// after a chunk of exactly that size.
    fn write_packet(&mut self, payload: &[u8]) -> Result<(), ClientError> {
        let mut out = Vec::with_capacity(payload.len() + 8);
        let mut rest = payload;
        loop {
            let (chunk, tail) = rest.split_at(rest.len().min(MAX_PAYLOAD));
            out.extend_from_slice(&(chunk.len() as u32).to_le_bytes()[..3]);
            out.push(self.seq);
            self.seq = self.seq.wrapping_add(1);
            out.extend_from_slice(chunk);
            rest = tail;
            if chunk.len() < MAX_PAYLOAD {
                break;
            }
        }
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// One logical packet (joining continuation packets).
    fn read_packet(&mut self) -> Result<Vec<u8>, ClientError> {
        let mut payload = Vec::new();
        loop {
            let mut head = [0u8; 4];
            self.stream.read_exact(&mut head)?;
            let len = usize::from(head[0]) | usize::from(head[1]) << 8 | usize::from(head[2]) << 16;
            self.seq = head[3].wrapping_add(1);
            let start = payload.len();
            payload.resize(start + len, 0);
            if let Some(buf) = payload.get_mut(start..) {
                self.stream.read_exact(buf)?;
            }
            if len < MAX_PAYLOAD {
                return Ok(payload);
            }
        }
    }
}

enum RowsEnd {
    Done(Part),
    Error(ServerError),
}

/// Whether `p` ends a result set: an EOF packet, or under `DEPRECATE_EOF` the 0xFE-headed OK.
fn is_end(p: &[u8]) -> bool {
    p.first() == Some(&EOF) && p.len() < MAX_PAYLOAD
}

/// `SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))`; empty for an empty password.
fn native_scramble(password: &str, salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password.as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(salt);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

fn parse_err(p: &[u8]) -> Result<ServerError, ClientError> {
    let mut r = Reader::new(p);
    r.u8()?;
    let code = r.u16()?;
    let state = if r.peek() == Some(b'#') {
        r.u8()?;
        String::from_utf8_lossy(r.bytes(5)?).into_owned()
    } else {
        String::new()
    };
    Ok(ServerError {
        code,
        state,
        message: String::from_utf8_lossy(r.rest()).into_owned(),
    })
}

fn parse_column(p: &[u8]) -> Result<Column, ClientError> {
    let mut r = Reader::new(p);
    let _catalog = r.lenenc_str()?;
    let schema = r.lenenc_str()?;
    let table = r.lenenc_str()?;
    let org_table = r.lenenc_str()?;
    let name = r.lenenc_str()?;
    let org_name = r.lenenc_str()?;
    let _fixed_len = r.lenenc()?;
    Ok(Column {
        schema,
        table,
        org_table,
        name,
        org_name,
        charset: r.u16()?,
        length: r.u32()?,
        kind: r.u8()?,
        flags: r.u16()?,
        decimals: r.u8()?,
    })
}

fn parse_text_row(p: &[u8], n: usize) -> Result<Vec<Value>, ClientError> {
    let mut r = Reader::new(p);
    let mut row = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        if r.peek() == Some(NULL_VALUE) {
            r.u8()?;
            row.push(None);
        } else {
            let len = r.lenenc()?;
            let Ok(len) = usize::try_from(len) else {
                return proto("value length out of range");
            };
            row.push(Some(r.bytes(len)?.to_vec()));
        }
    }
    Ok(row)
}

fn parse_binary_row(p: &[u8], columns: &[Column]) -> Result<Vec<Value>, ClientError> {
    let mut r = Reader::new(p);
    if r.u8()? != OK {
        return proto("binary row without its 0x00 header");
    }
    let bitmap = r.bytes((columns.len() + 7 + 2) / 8)?.to_vec();
    let mut row = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let bit = i + 2;
        let null = bitmap
            .get(bit / 8)
            .is_some_and(|b| b & (1 << (bit % 8)) != 0);
        if null {
            row.push(None);
            continue;
        }
        let unsigned = c.flags & UNSIGNED_FLAG != 0;
        let text = match c.kind {
            0x01 => {
                let b = r.u8()?;
                if unsigned {
                    b.to_string()
                } else {
                    (b as i8).to_string()
                }
            }
            0x02 | 0x0d => {
                let v = r.u16()?;
                if unsigned || c.kind == 0x0d {
                    v.to_string()
                } else {
                    (v as i16).to_string()
                }
            }
            0x03 | 0x09 => {
                let v = r.u32()?;
                if unsigned {
                    v.to_string()
                } else {
                    (v as i32).to_string()
                }
            }
            0x08 => {
                let v = r.u64()?;
                if unsigned {
                    v.to_string()
                } else {
                    (v as i64).to_string()
                }
            }
            0x04 => f32::from_le_bytes(r.array()?).to_string(),
            0x05 => f64::from_le_bytes(r.array()?).to_string(),
            0x07 | 0x0a | 0x0c => {
                let n = usize::from(r.u8()?);
                let b = r.bytes(n)?;
                let get = |i: usize| b.get(i).copied().unwrap_or(0);
                let year = u16::from_le_bytes([get(0), get(1)]);
                let micros = u32::from_le_bytes([get(7), get(8), get(9), get(10)]);
                format!(
                    "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{micros:06}",
                    get(2),
                    get(3),
                    get(4),
                    get(5),
                    get(6)
                )
            }
            0x0b => {
                let n = usize::from(r.u8()?);
                let b = r.bytes(n)?;
                let get = |i: usize| b.get(i).copied().unwrap_or(0);
                let days = u32::from_le_bytes([get(1), get(2), get(3), get(4)]);
                let micros = u32::from_le_bytes([get(8), get(9), get(10), get(11)]);
                format!(
                    "{}{days}d {:02}:{:02}:{:02}.{micros:06}",
                    if get(0) == 1 { "-" } else { "" },
                    get(5),
                    get(6),
                    get(7)
                )
            }
            0x06 => String::new(),
            _ => {
                let len = r.lenenc()?;
                let Ok(len) = usize::try_from(len) else {
                    return proto("value length out of range");
                };
                row.push(Some(r.bytes(len)?.to_vec()));
                continue;
            }
        };
        row.push(Some(text.into_bytes()));
    }
    Ok(row)
}

fn put_lenenc(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// A bounds-checked cursor over a packet.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }
    fn bytes(&mut self, n: usize) -> Result<&'a [u8], ClientError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return proto("packet shorter than its fields");
        };
        let s = self.buf.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ClientError> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
    }
    fn u8(&mut self) -> Result<u8, ClientError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, ClientError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32, ClientError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64, ClientError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn lenenc(&mut self) -> Result<u64, ClientError> {
        match self.u8()? {
            0xFC => Ok(u64::from(self.u16()?)),
            0xFD => {
                let b = self.bytes(3)?;
                Ok(b.iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
            }
            0xFE => self.u64(),
            b @ 0..=0xFA => Ok(u64::from(b)),
            b => proto(format!("bad length-encoded integer {b:#x}")),
        }
    }
    fn lenenc_str(&mut self) -> Result<String, ClientError> {
        let n = self.lenenc()?;
        let Ok(n) = usize::try_from(n) else {
            return proto("string length out of range");
        };
        Ok(String::from_utf8_lossy(self.bytes(n)?).into_owned())
    }
    fn nul_str(&mut self) -> Result<String, ClientError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == 0) else {
            return proto("string without its NUL");
        };
        let s = String::from_utf8_lossy(rest.get(..n).unwrap_or_default()).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_ok_packet_is_a_protocol_error_not_a_panic() {
        let c = [0x00u8, 0x01];
        let mut r = Reader::new(&c);
        assert!(r.u8().is_ok());
        assert!(r.lenenc().is_ok());
        assert!(r.lenenc().is_err());
    }

    #[test]
    fn binary_rows_shorter_than_their_columns_are_refused() {
        let col = Column {
            schema: String::new(),
            table: String::new(),
            org_table: String::new(),
            name: "x".into(),
            org_name: "x".into(),
            charset: 63,
            length: 20,
            kind: 0x08,
            flags: 0,
            decimals: 0,
        };
        assert!(parse_binary_row(&[0x00, 0x00, 1, 2, 3], std::slice::from_ref(&col)).is_err());
        let mut ok = vec![0x00, 0x00];
        ok.extend_from_slice(&(-5i64).to_le_bytes());
        assert_eq!(
            parse_binary_row(&ok, &[col]).ok(),
            Some(vec![Some(b"-5".to_vec())])
        );
    }

    #[test]
    fn the_native_scramble_of_an_empty_password_is_empty() {
        assert!(native_scramble("", b"01234567890123456789").is_empty());
        assert_eq!(native_scramble("pw", b"01234567890123456789").len(), 20);
    }

    #[test]
    fn an_err_packet_is_parsed_with_its_sqlstate() {
        let mut p = vec![ERR];
        p.extend_from_slice(&1243u16.to_le_bytes());
        p.extend_from_slice(b"#HY000Unknown prepared statement handler");
        let e = parse_err(&p).ok();
        assert_eq!(e.as_ref().map(|e| e.code), Some(1243));
        assert_eq!(e.map(|e| e.state), Some("HY000".to_string()));
    }
}
