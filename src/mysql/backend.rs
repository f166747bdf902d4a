//! One backend connection, and the small client the proxy speaks on it by itself: logging in to a
//! move target as the session's user, and text queries to snapshot and restore session state.
//!
//! The relay and the mini client share the same reader and writer, so a move can read a
//! session's state from the old backend at a safe point without any second connection.

use std::net::SocketAddr;
use std::time::Duration;

use switchyard::wire::{
    self, caps, cmd, get_lenenc, get_lenenc_str, is_terminator, marker, more_results,
    parse_auth_switch, parse_err, parse_ok, put_packet, ssl_request, terminator_status, ErrInfo,
    Frame, Greeting, HandshakeError, NativeSecret, OutBuf, PacketError, PacketReader, Response,
    NATIVE_PASSWORD,
};

use super::tracker::{Kind, Next, PrepareOk, Tracker};
use crate::entry::{Stream, StreamRead, StreamWrite, Via};

/// Sequence id of the handshake response, or of the SSL request before it.
const RESPONSE_SEQ: u8 = 1;
/// Largest packet a server may send during a login (a greeting, an auth switch).
pub const LOGIN_MAX_PAYLOAD: usize = 64 * 1024;
/// Largest packet of an answer to the proxy's own queries that is not a row (OK, ERR, column
/// count and definitions, EOF): such packets are small; a longer one breaks the exchange.
const MAX_META_PACKET: usize = 1 << 20;

/// A connected backend: address, reader, writer and the capabilities of the session on it.
pub struct Backend {
    /// `host:port` as the router names it.
    pub addr: String,
    /// Packets from the server.
    pub reader: PacketReader<StreamRead>,
    /// Bytes to the server.
    pub writer: StreamWrite,
    /// Bytes to send; holds a pooled buffer only while bytes are queued (or a long command is
    /// on its way).
    pub out: OutBuf,
    /// The session negotiated `CLIENT_DEPRECATE_EOF` (set by whoever completes the login).
    pub deprecate_eof: bool,
    /// The proxy negotiated `CLIENT_SESSION_TRACK` with the server (whatever the client asked):
    /// OK packets may carry session-state information.
    pub session_track: bool,
    /// How this session reaches backends (TLS, PROXY header), for its logins and its moves.
    pub link: Link,
    /// The server's id for this connection (from its greeting, once the proxy logged in):
    /// what a `KILL` names when a replay on it has to be stopped.
    pub thread_id: u32,
    /// What the server's greeting offered (0 until one was read): a login finished for a client
    /// that left starts TLS as the client's own login would have.
    pub server_caps: u32,
}

/// How one session reaches its backends: `backends.tls` and `backends.send_proxy_protocol`,
/// with the client's address for the header.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// TLS and PROXY protocol settings.
    pub via: Via,
    /// The client, as the PROXY header names it.
    pub client: Option<SocketAddr>,
    /// The address the client reached.
    pub local: Option<SocketAddr>,
}

/// Why a query the proxy sent failed.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// Framing or socket error: the connection is unusable.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The server answered with an error.
    #[error("server error: {0}")]
    Server(ErrInfo),
    /// The answer did not have the expected shape.
    #[error("unexpected answer: {0}")]
    Shape(&'static str),
    /// The answer's rows were longer than the bytes the caller allowed; it was read to its end
    /// (so later answers stay readable) but not kept.
    #[error("answer over its size cap")]
    TooLarge,
}

/// One packet where a row may stand.
enum RowPacket {
    /// The row, or `None` when it did not fit the budget (read and dropped).
    Row(Option<Vec<u8>>),
    /// The terminator ending the rows, with its status flags.
    End(u16),
    /// An error instead of further rows.
    Err(ErrInfo),
}

/// Rows of a text result set: each value raw, `None` for SQL NULL.
pub type Rows = Vec<Vec<Option<Vec<u8>>>>;

impl Backend {
    /// Connects to `addr` (TCP only, tuned like every proxied socket; the greeting is not read).
    pub async fn connect(addr: &str, timeout: Duration) -> std::io::Result<Self> {
        let stream = crate::entry::connect_backend(addr, timeout).await?;
        Ok(Self::from_stream(addr.to_string(), stream))
    }

    /// Connects to `addr` as `link` says (a PROXY header first when asked), keeping `link` for
    /// the login's TLS upgrade.
    pub async fn connect_like(addr: &str, timeout: Duration, link: &Link) -> std::io::Result<Self> {
        let mut tcp = crate::entry::connect_backend(addr, timeout).await?;
        link.via
            .send_header(&mut tcp, link.client, link.local)
            .await?;
        let mut b = Self::from_stream(addr.to_string(), tcp);
        b.link = link.clone();
        Ok(b)
    }

    /// Wraps a connected stream.
    pub fn from_stream(addr: String, stream: impl Into<Stream>) -> Self {
        let (r, w) = stream.into().into_split();
        Self {
            addr,
            reader: PacketReader::new(r),
            writer: w,
            out: OutBuf::new(),
            deprecate_eof: false,
            session_track: false,
            link: Link::default(),
            thread_id: 0,
            server_caps: 0,
        }
    }

    /// `backends.tls` is on and this connection has not started it yet.
    pub fn owes_tls(&mut self) -> bool {
        self.link.via.tls.is_some() && !self.reader.get_mut().is_tls()
    }

    /// When `backends.tls` is on: sends the SSL request (sequence 1; `caps`, `max_packet` and
    /// `charset` as the handshake response will say) and runs the TLS handshake, so the
    /// response goes encrypted with sequence id 2. Returns the response's sequence id (1
    /// without TLS). A server whose greeting (`server_caps`) does not offer TLS is refused.
    pub async fn start_tls(
        &mut self,
        server_caps: u32,
        caps: u32,
        max_packet: u32,
        charset: u8,
    ) -> Result<u8, HandshakeError> {
        let Some(tls) = self.link.via.tls.clone() else {
            return Ok(RESPONSE_SEQ);
        };
        if server_caps & caps::SSL == 0 {
            return Err(HandshakeError::Tls(format!(
                "{} does not offer TLS (backends.tls.enable is set)",
                self.addr
            )));
        }
        let seq = put_packet(
            &mut self.out,
            RESPONSE_SEQ,
            &ssl_request(caps, max_packet, charset),
        );
        self.flush().await.map_err(PacketError::from)?;
        if self.reader.has_buffered() {
            return Err(HandshakeError::Unexpected);
        }
        let r = std::mem::replace(self.reader.get_mut(), StreamRead::Gone);
        let w = std::mem::replace(&mut self.writer, StreamWrite::Gone);
        let Some(Stream::Plain(tcp)) = Stream::reunite(r, w) else {
            return Err(HandshakeError::Tls("the connection is TLS already".into()));
        };
        let tls = tls
            .connect(&self.addr, tcp)
            .await
            .map_err(|e| HandshakeError::Tls(e.to_string()))?;
        let (r, w) = tls.into_split();
        *self.reader.get_mut() = r;
        self.writer = w;
        Ok(seq)
    }

    /// Sends the buffered output.
    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush_to(&mut self.writer).await
    }

    /// Queues a relayed packet; a long one is written at once, straight from the reader's
    /// buffer, so it is never copied into `out` (see [`OutBuf::put_or_write`]).
    pub async fn relay(&mut self, f: &Frame) -> std::io::Result<()> {
        self.out.put_or_write(&mut self.writer, f.raw()).await
    }

    /// Logs in as the session's user with `mysql_native_password`; `session_caps` are the
    /// capabilities negotiated by the original login, which the target must match. Asks for
    /// `CLIENT_SESSION_TRACK` when `client` does and the server offers it (see
    /// [`Backend::session_track`]).
    pub async fn login(
        &mut self,
        client: &Response,
        session_caps: u32,
        secret: &NativeSecret,
    ) -> Result<(), HandshakeError> {
        self.reader.set_max_payload(LOGIN_MAX_PAYLOAD);
        let g = self.reader.frame_seq(0).await?;
        let greeting = Greeting::parse(g.payload())?;
        self.thread_id = greeting.connection_id;
        let server_caps = greeting.caps & !caps::HIDDEN;
        let missing = session_caps & !server_caps;
        if missing != 0 {
            return Err(HandshakeError::Capabilities(missing));
        }
        let mut resp = client.build_native(server_caps, secret, &greeting.salt);
        let session_track = client.caps & server_caps & caps::SESSION_TRACK != 0;
        let resp_caps = wire::get_arr(&resp, 0).map_or(0, u32::from_le_bytes);
        let seq = self
            .start_tls(greeting.caps, resp_caps, client.max_packet, client.charset)
            .await?;
        if self.reader.get_mut().is_tls() {
            if let Some(b) = resp.get_mut(..4) {
                b.copy_from_slice(&(resp_caps | caps::SSL).to_le_bytes());
            }
        }
        let mut seq = put_packet(&mut self.out, seq, &resp);
        self.flush().await.map_err(PacketError::from)?;
        loop {
            let f = self.reader.frame_seq(seq).await?;
            seq = seq.wrapping_add(1);
            match f.first() {
                marker::OK => break,
                marker::ERR => return Err(HandshakeError::Refused(parse_err(f.payload()))),
                marker::AUTH_SWITCH => {
                    let (plugin, salt) = parse_auth_switch(f.payload());
                    if plugin != NATIVE_PASSWORD {
                        return Err(HandshakeError::Plugin(plugin));
                    }
                    seq = put_packet(&mut self.out, seq, &secret.scramble(&salt));
                    self.flush().await.map_err(PacketError::from)?;
                }
                _ => return Err(HandshakeError::Unexpected),
            }
        }
        self.reader.set_max_payload(wire::MAX_PAYLOAD);
        self.deprecate_eof = session_caps & caps::DEPRECATE_EOF != 0;
        self.session_track = session_track;
        Ok(())
    }

    /// Queues a command (not flushed); returns the sequence id its answer starts at. Several
    /// queued commands go out in one write and are answered in order (pipelining).
    pub fn send_command(&mut self, command: u8, arg: &[u8]) -> u8 {
        let mut p = Vec::with_capacity(1 + arg.len());
        p.push(command);
        p.extend_from_slice(arg);
        put_packet(&mut self.out, 0, &p)
    }

    /// Queues a text query (not flushed); returns the sequence id its answer starts at.
    pub fn send_query(&mut self, sql: &str) -> u8 {
        self.send_command(cmd::QUERY, sql.as_bytes())
    }

    /// Reads the answer to a queued query or command: the rows of its result sets (none for
    /// an OK or EOF). A server error is returned after its ERR packet, so later answers stay
    /// readable.
    pub async fn read_answer(&mut self, seq: u8) -> Result<Rows, QueryError> {
        let mut unbounded = usize::MAX;
        self.read_answer_within(seq, &mut unbounded).await
    }

    /// [`Backend::read_answer`], keeping at most `budget` bytes (what it reads is taken off
    /// `budget`). Over it the answer is still read to its end, and [`QueryError::TooLarge`]
    /// returned.
    pub async fn read_answer_within(
        &mut self,
        seq: u8,
        budget: &mut usize,
    ) -> Result<Rows, QueryError> {
        self.flush().await.map_err(PacketError::from)?;
        let mut rows = Vec::new();
        self.read_result(seq, &mut rows, budget).await?;
        Ok(rows)
    }

    /// Sends a command whose answer is one OK or ERR (e.g. `COM_INIT_DB`, a `SET`).
    pub async fn command_ok(&mut self, command: u8, arg: &[u8]) -> Result<(), QueryError> {
        let seq = self.send_command(command, arg);
        self.read_answer(seq).await.map(drop)
    }

    /// Runs a text query and returns the rows of its result sets.
    pub async fn query(&mut self, sql: &str) -> Result<Rows, QueryError> {
        let seq = self.send_query(sql);
        self.read_answer(seq).await
    }

    /// Reads a text response starting at `seq`; rows of every result set go to `rows` while
    /// they fit `budget`.
    async fn read_result(
        &mut self,
        seq: u8,
        rows: &mut Rows,
        budget: &mut usize,
    ) -> Result<(), QueryError> {
        let mut seq = seq;
        let mut over = false;
        let done = |over: bool| {
            if over {
                Err(QueryError::TooLarge)
            } else {
                Ok(())
            }
        };
        loop {
            let first = self.meta_packet(&mut seq, budget).await?;
            let n = match first.first() {
                Some(&marker::OK) => {
                    let ok = parse_ok(&first).ok_or(QueryError::Shape("short OK"))?;
                    if more_results(ok.status) {
                        continue;
                    }
                    return done(over);
                }
                Some(&marker::ERR) => return Err(QueryError::Server(parse_err(&first))),
                // `COM_SET_OPTION` and the like answer with a bare EOF
                Some(&marker::EOF) if is_terminator(&first, self.deprecate_eof) => {
                    return done(over)
                }
                Some(&marker::LOCAL_INFILE) => {
                    return Err(QueryError::Shape("LOCAL INFILE request"))
                }
                _ => {
                    let mut pos = 0;
                    get_lenenc(&first, &mut pos).ok_or(QueryError::Shape("column count"))?
                }
            };
            for _ in 0..n {
                self.meta_packet(&mut seq, budget).await?;
            }
            if !self.deprecate_eof {
                let p = self.meta_packet(&mut seq, budget).await?;
                if p.first() != Some(&marker::EOF) {
                    return Err(QueryError::Shape("expected EOF after columns"));
                }
            }
            let status = loop {
                let p = match self.row_packet(&mut seq, budget).await? {
                    RowPacket::Err(e) => return Err(QueryError::Server(e)),
                    RowPacket::End(status) => break status,
                    RowPacket::Row(None) => {
                        over = true;
                        continue;
                    }
                    RowPacket::Row(Some(p)) => p,
                };
                if over {
                    continue;
                }
                let mut pos = 0;
                let mut row = Vec::with_capacity(usize::try_from(n).unwrap_or(0).min(4096));
                for _ in 0..n {
                    let v = get_lenenc_str(&p, &mut pos).ok_or(QueryError::Shape("row"))?;
                    row.push(v.map(<[u8]>::to_vec));
                }
                rows.push(row);
            };
            if !more_results(status) {
                return done(over);
            }
        }
    }

    /// A whole logical packet that is no row (at most [`MAX_META_PACKET`] bytes), starting at
    /// sequence id `*seq`; moves `*seq` past it and takes its length off `budget`.
    async fn meta_packet(
        &mut self,
        seq: &mut u8,
        budget: &mut usize,
    ) -> Result<Vec<u8>, QueryError> {
        let (last, p) = self.reader.logical(*seq, MAX_META_PACKET).await?;
        *seq = last.wrapping_add(1);
        *budget = budget.saturating_sub(p.len());
        Ok(p)
    }

    /// The packet where a row may stand, starting at sequence id `*seq`: a row is kept while
    /// it fits `budget` (and taken off it), and otherwise read to its end and dropped.
    async fn row_packet(
        &mut self,
        seq: &mut u8,
        budget: &mut usize,
    ) -> Result<RowPacket, QueryError> {
        let f = self.reader.frame_seq(*seq).await?;
        *seq = seq.wrapping_add(1);
        if !f.continued() {
            if f.first() == marker::ERR {
                return Ok(RowPacket::Err(parse_err(f.payload())));
            }
            if is_terminator(f.payload(), self.deprecate_eof) {
                let status = terminator_status(f.payload(), self.deprecate_eof).unwrap_or(0);
                return Ok(RowPacket::End(status));
            }
        }
        let mut row = Vec::new();
        let mut keep = true;
        let mut f = f;
        loop {
            let len = f.payload().len();
            if keep && len <= *budget {
                *budget -= len;
                row.extend_from_slice(f.payload());
            } else {
                keep = false;
                *budget = 0;
            }
            if !f.continued() {
                return Ok(RowPacket::Row(keep.then_some(row)));
            }
            f = self.reader.frame_seq(*seq).await?;
            *seq = seq.wrapping_add(1);
        }
    }
}

impl Backend {
    /// Prepares `sql` as a binary statement (`COM_STMT_PREPARE`) and reads the whole answer.
    pub async fn prepare(&mut self, sql: &[u8], negotiated: u32) -> Result<PrepareOk, QueryError> {
        let seq = self.send_command(cmd::STMT_PREPARE, sql);
        self.read_prepare(seq, negotiated).await
    }

    /// Reads the answer to a queued `COM_STMT_PREPARE` starting at `seq`, to its end (also
    /// after an ERR, so later answers stay readable).
    pub async fn read_prepare(
        &mut self,
        seq: u8,
        negotiated: u32,
    ) -> Result<PrepareOk, QueryError> {
        self.flush().await.map_err(PacketError::from)?;
        let mut t = Tracker::new(negotiated);
        let mut next = t.start(Kind::Prepare, seq.wrapping_sub(1));
        let mut err = None;
        while next == Next::Server {
            let f = self.reader.frame().await?;
            t.check_seq(&f)?;
            if f.first() == marker::ERR {
                err = Some(parse_err(f.payload()));
            }
            next = t
                .on_server(&f)
                .map_err(|_| QueryError::Shape("prepare response"))?;
        }
        if let Some(e) = err {
            return Err(QueryError::Server(e));
        }
        t.prepared.ok_or(QueryError::Shape("prepare response"))
    }
}
