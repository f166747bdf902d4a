//! A minimal, blocking, raw MySQL client for tests that must send what drivers send but their
//! APIs hide: `COM_SET_OPTION`, `COM_STMT_RESET`, `COM_STMT_FETCH`, long data, an execute of a
//! closed statement id. It returns every answer as plain data ([`Outcome`]) so two runs can be
//! compared field by field. `mysql_native_password` only; no TLS, no compression.
//!
//! Peer bytes are read with bounds checks throughout: a malformed answer is a
//! [`ClientError::Protocol`], never a panic.

mod types;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use types::proto;
pub use types::{
    caps, status, ClientError, Column, OkInfo, Options, Outcome, Param, Part, Prepared,
    ServerError, Value,
};
use wire::{
    is_end, native_scramble, parse_binary_row, parse_column, parse_err, parse_text_row, put_lenenc,
    Reader, EOF, ERR, LOCAL_INFILE, MAX_PAYLOAD, NATIVE, OK, UTF8MB4,
};

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
