//! `MysqlConn`: the actor for one MySQL-protocol client, and the relay task it drives.
//!
//! Inbound: [`Redirect`] from the router and [`CloseAtSafePoint`] from the service (drain,
//! shutdown). Outbound: exactly one of `RedirectSucceeded` / `RedirectFailed` / `ConnClosed` per
//! redirect, through the connection's [`Registration`] (whose `Drop` reports `ConnClosed`). The
//! actor only forwards control to the relay task over a channel; the task owns both sockets and
//! all session state, relays one command at a time, and acts on control only at a safe point —
//! between commands — so a move never splits a response and a client command that arrives
//! during a move simply waits in its socket.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchyard::{BackendInst, Redirect, Registration};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::backend::{Backend, QueryError};
use super::handshake::{self, Greeting, HandshakeError, NativeSecret, Response};
use super::packet::{self, caps, err_payload, flush, put_packet, Frame, PacketError, PacketReader};
use super::session::{self, Blocker, Pending, Session};
use super::tracker::{cmd, Kind, Next, Tracker};
use super::{Credential, MysqlConfig};
use crate::entry::{ConnStart, Counted};

/// `ER_UNKNOWN_ERROR`: what a client is told when no backend can take it.
const ER_UNKNOWN_ERROR: u16 = 1105;

/// Close the session at its next safe point (drain, graceful shutdown).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct CloseAtSafePoint;

#[derive(Debug)]
enum Control {
    Redirect(BackendInst),
    Close,
}

struct Start {
    conn: ConnStart,
    cfg: Arc<MysqlConfig>,
}

/// One MySQL-protocol client connection (see the module docs).
pub struct MysqlConn {
    ctrl: mpsc::UnboundedSender<Control>,
    rx: Option<mpsc::UnboundedReceiver<Control>>,
    start: Option<Start>,
    on_stop: Option<Box<dyn FnOnce()>>,
}

impl MysqlConn {
    /// A connection actor for a started client connection (`conn` holds the client socket).
    pub fn new(conn: ConnStart, cfg: Arc<MysqlConfig>) -> Self {
        let (ctrl, rx) = mpsc::unbounded_channel();
        Self {
            ctrl,
            rx: Some(rx),
            start: Some(Start { conn, cfg }),
            on_stop: None,
        }
    }

    /// Runs `f` when the actor is gone, however it ended (it runs from `Drop`).
    pub fn on_stop(mut self, f: impl FnOnce() + 'static) -> Self {
        self.on_stop = Some(Box::new(f));
        self
    }
}

impl Actor for MysqlConn {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (Some(start), Some(rx)) = (self.start.take(), self.rx.take()) else {
            ctx.stop();
            return;
        };
        let fut = run(start, ctx.address().recipient(), rx);
        ctx.spawn(fut.into_actor(self).map(|_, _, ctx| ctx.stop()));
    }
}

impl Drop for MysqlConn {
    fn drop(&mut self) {
        if let Some(f) = self.on_stop.take() {
            f();
        }
    }
}

impl Handler<Redirect> for MysqlConn {
    type Result = ();
    fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
        // if the task has ended, its ConnClosed already answered for this connection
        let _ = self.ctrl.send(Control::Redirect(msg.to));
    }
}

impl Handler<CloseAtSafePoint> for MysqlConn {
    type Result = ();
    fn handle(&mut self, _: CloseAtSafePoint, _: &mut Context<Self>) {
        let _ = self.ctrl.send(Control::Close);
    }
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client quit")]
    Quit,
    #[error("client closed the connection")]
    ClientClosed,
    #[error("client protocol violation: {0}")]
    Client(PacketError),
    #[error("backend {0}")]
    Backend(String),
    #[error("login failed")]
    LoginFailed,
    #[error("closed at a safe point (drain or shutdown)")]
    Drained,
}

fn client_err(e: PacketError) -> End {
    match e {
        PacketError::Closed => End::ClientClosed,
        e => End::Client(e),
    }
}

fn backend_err(e: impl std::fmt::Display) -> End {
    End::Backend(e.to_string())
}

/// What the session needs to log in again elsewhere.
struct Login {
    response: Response,
    negotiated: u32,
    secret: Option<NativeSecret>,
}

/// The client's socket halves count what crosses them into `bytes_in_total` / `bytes_out_total`.
struct ClientSide {
    reader: PacketReader<Counted<OwnedReadHalf>>,
    writer: Counted<OwnedWriteHalf>,
    out: Vec<u8>,
}

impl ClientSide {
    async fn flush(&mut self) -> Result<(), End> {
        flush(&mut self.writer, &mut self.out)
            .await
            .map_err(|e| client_err(e.into()))
    }

    async fn send_err(&mut self, seq: u8, code: u16, state: &str, msg: &str) {
        put_packet(&mut self.out, seq, &err_payload(code, state, msg));
        let _ = self.flush().await;
    }
}

async fn run(start: Start, redirect: Recipient<Redirect>, ctrl: mpsc::UnboundedReceiver<Control>) {
    let Start { mut conn, cfg } = start;
    let id = conn.id();
    let Some(client) = conn.take_client() else {
        return;
    };
    let peer = conn.peer().map(|a| a.to_string()).unwrap_or_default();
    let metrics = conn.metrics();
    let (r, w) = client.into_split();
    let mut client = ClientSide {
        reader: PacketReader::new(Counted::new(r, metrics.bytes_in.clone())),
        writer: Counted::new(w, metrics.bytes_out.clone()),
        out: Vec::with_capacity(16 * 1024),
    };
    let routed = match conn.connect(redirect).await {
        Ok(routed) => routed,
        Err(e) => {
            let msg = format!("switchyard: {e}");
            client.send_err(0, ER_UNKNOWN_ERROR, "HY000", &msg).await;
            info!(conn_id = id, client = %peer, reason = %e, "client closed: no backend");
            return;
        }
    };
    let backend = Backend::from_stream(routed.registration.backend().to_string(), routed.backend);
    let mut relay = Relay {
        id,
        peer,
        client,
        backend,
        session: Session::new(),
        tracker: Tracker::new(0),
        login: None,
        link: routed.registration,
        cfg,
        ctrl,
        pending: None,
        closing: false,
    };
    let end = relay.serve().await;
    match &end {
        End::Client(_) => {
            warn!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "closing client")
        }
        End::Backend(_) => {
            warn!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "closing session")
        }
        _ => {
            debug!(conn_id = id, client = %relay.peer, backend = %relay.backend.addr, reason = %end, "session ended")
        }
    }
    // dropping the relay drops its registration: ConnClosed on the backend it is on now
}

/// Commands whose responses the proxy cannot follow: the session becomes a plain byte relay.
const RAW_COMMANDS: &[u8] = &[0x12, 0x13, 0x14, 0x15, 0x1e, 0xfa];

struct Relay {
    id: u64,
    peer: String,
    client: ClientSide,
    backend: Backend,
    session: Session,
    tracker: Tracker,
    login: Option<Login>,
    link: Registration,
    cfg: Arc<MysqlConfig>,
    ctrl: mpsc::UnboundedReceiver<Control>,
    pending: Option<BackendInst>,
    closing: bool,
}

impl Relay {
    async fn serve(&mut self) -> End {
        if let Err(e) = self.login().await {
            return e;
        }
        loop {
            if let Err(e) = self.at_safe_point().await {
                return e;
            }
            let r = tokio::select! {
                c = self.ctrl.recv() => {
                    self.on_control(c);
                    Ok(())
                }
                f = self.client.reader.frame() => match f {
                    Ok(f) => self.command(f).await,
                    Err(e) => Err(client_err(e)),
                },
                f = self.backend.reader.frame() => self.unsolicited(f).await,
            };
            if let Err(e) = r {
                return e;
            }
        }
    }

    fn on_control(&mut self, c: Option<Control>) {
        match c {
            Some(Control::Redirect(to)) => {
                if let Some(old) = self.pending.replace(to) {
                    self.failed(&old, "superseded by a newer redirect");
                }
            }
            Some(Control::Close) => self.closing = true,
            None => {}
        }
    }

    async fn unsolicited(&mut self, f: Result<Frame, PacketError>) -> Result<(), End> {
        match f {
            Ok(f) => {
                // e.g. the server's "connection was killed" ERR before it closes
                if f.first() == 0xFF {
                    let e = packet::parse_err(f.payload());
                    warn!(conn_id = self.id, backend = %self.backend.addr, error = %e, "backend sent an error between commands");
                }
                self.client.out.extend_from_slice(f.raw());
                self.client.flush().await?;
                Ok(())
            }
            Err(e) => Err(backend_err(e)),
        }
    }

    fn failed(&self, to: &BackendInst, reason: &str) {
        crate::metrics::migration(false, Duration::ZERO);
        info!(conn_id = self.id, from = %self.backend.addr, to = %to.addr(), reason, "redirect refused");
        self.link.redirect_failed(to.addr());
    }

    // -----------------------------------------------------------------------------------------
    // Login pass-through
    // -----------------------------------------------------------------------------------------

    async fn login(&mut self) -> Result<(), End> {
        const LOGIN_MAX: usize = 64 * 1024;
        self.backend.reader.set_max_payload(LOGIN_MAX);
        self.client.reader.set_max_payload(LOGIN_MAX);
        let mut g = self
            .backend
            .reader
            .frame_seq(0)
            .await
            .map_err(backend_err)?;
        let greeting = match Greeting::parse(g.payload()) {
            Ok(gr) => gr,
            Err(e) => {
                // an ERR greeting (too many connections, host blocked) goes to the client as is
                self.client.out.extend_from_slice(g.raw());
                self.client.flush().await?;
                return Err(backend_err(e));
            }
        };
        greeting.sanitize(g.payload_mut());
        self.client.out.extend_from_slice(g.raw());
        self.client.flush().await?;
        let mut r = self.client.reader.frame_seq(1).await.map_err(client_err)?;
        let response = match Response::parse_and_sanitize(r.payload_mut()) {
            Ok(resp) => resp,
            Err(HandshakeError::TlsRequested) => {
                self.client
                    .send_err(
                        2,
                        1045,
                        "08S01",
                        "switchyard: TLS is not offered by this proxy",
                    )
                    .await;
                return Err(End::LoginFailed);
            }
            Err(e) => {
                self.client
                    .send_err(2, 1043, "08S01", "Bad handshake")
                    .await;
                return Err(End::Client(PacketError::Malformed(match e {
                    HandshakeError::Response(m) => m,
                    _ => "handshake response",
                })));
            }
        };
        self.backend.out.extend_from_slice(r.raw());
        self.backend.flush().await.map_err(backend_err)?;
        let mut seq: u8 = 2;
        let mut plugin = response.plugin.clone();
        let mut salt = greeting.salt.clone();
        let mut auth = (plugin == handshake::NATIVE_PASSWORD).then(|| response.auth.clone());
        let ok = loop {
            tokio::select! {
                f = self.backend.reader.frame() => {
                    let f = f.map_err(backend_err)?;
                    check(&f, &mut seq).map_err(backend_err)?;
                    self.client.out.extend_from_slice(f.raw());
                    self.client.flush().await?;
                    match f.first() {
                        0x00 => break true,
                        0xFF => break false,
                        0xFE => {
                            let (p, s) = handshake::parse_auth_switch(f.payload());
                            plugin = p;
                            salt = s;
                            auth = None;
                        }
                        _ => {}
                    }
                }
                f = self.client.reader.frame() => {
                    let f = f.map_err(client_err)?;
                    check(&f, &mut seq).map_err(End::Client)?;
                    if plugin == handshake::NATIVE_PASSWORD && auth.is_none() {
                        auth = Some(f.payload().to_vec());
                    }
                    self.backend.out.extend_from_slice(f.raw());
                    self.backend.flush().await.map_err(backend_err)?;
                }
            }
        };
        self.backend.reader.set_max_payload(packet::MAX_PAYLOAD);
        self.client.reader.set_max_payload(packet::MAX_PAYLOAD);
        if !ok {
            info!(conn_id = self.id, client = %self.peer, user = %response.user, "login refused by the backend");
            return Err(End::LoginFailed);
        }
        let negotiated = response.caps & greeting.caps & !caps::HIDDEN;
        let native = plugin == handshake::NATIVE_PASSWORD;
        let secret = match self.cfg.users.get(&response.user) {
            None => {
                debug!(conn_id = self.id, user = %response.user, "user not in mysql.users: session cannot move");
                None
            }
            Some(Credential::Secret(s)) => {
                let matches = !native || auth.as_deref() == Some(&s.scramble(&salt)[..]);
                if !matches {
                    warn!(conn_id = self.id, user = %response.user, "configured password does not match the client's login: session cannot move");
                }
                matches.then_some(*s)
            }
            Some(Credential::Hash(h)) => {
                let s = auth
                    .as_deref()
                    .filter(|_| native)
                    .and_then(|a| NativeSecret::recover(a, &salt, h));
                if s.is_none() {
                    warn!(conn_id = self.id, user = %response.user, plugin = %plugin, "could not recover a native-password secret matching password_hash: session cannot move");
                }
                s
            }
        };
        self.tracker = Tracker::new(negotiated);
        self.backend.deprecate_eof = negotiated & caps::DEPRECATE_EOF != 0;
        debug!(conn_id = self.id, client = %self.peer, backend = %self.backend.addr, user = %response.user, movable = secret.is_some(), "logged in");
        self.login = Some(Login {
            response,
            negotiated,
            secret,
        });
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Commands
    // -----------------------------------------------------------------------------------------

    async fn command(&mut self, mut first: Frame) -> Result<(), End> {
        if first.seq() != 0 {
            return Err(End::Client(PacketError::Sequence {
                got: first.seq(),
                want: 0,
            }));
        }
        let code = first.first();
        let Some(kind) = Kind::of(code) else {
            if RAW_COMMANDS.contains(&code) {
                return self.raw_relay(first).await;
            }
            self.client
                .send_err(1, 1047, "08S01", "Unknown command")
                .await;
            return Ok(());
        };
        // before: what the command may change, and statement-id mapping
        let mut pending = Pending::default();
        let mut prepare_sql = None;
        let mut stmt = None;
        match code {
            cmd::QUERY => pending = self.session.before_query(&first.payload()[1..]),
            cmd::STMT_PREPARE => {
                if first.continued() {
                    self.session.lost = Some("prepared statement text over 16 MiB");
                }
                prepare_sql = Some(first.payload()[1..].to_vec());
            }
            cmd::STMT_EXECUTE
            | cmd::STMT_FETCH
            | cmd::STMT_CLOSE
            | cmd::STMT_RESET
            | cmd::STMT_SEND_LONG_DATA => {
                stmt = self.map_stmt(code, &mut first);
                if let Some(rewritten) = stmt.and_then(|id| self.bind_types(id, code, &first)) {
                    first = rewritten;
                }
                let changes = stmt
                    .and_then(|id| self.session.stmts.get(&id))
                    .is_none_or(|s| s.changes);
                if code == cmd::STMT_EXECUTE && changes {
                    self.session.mark_changed();
                }
            }
            // commands that leave variables and schema alone
            cmd::QUIT
            | cmd::FIELD_LIST
            | cmd::STATISTICS
            | cmd::PROCESS_INFO
            | cmd::SET_OPTION
            | cmd::PROCESS_KILL
            | cmd::PING => {}
            // INIT_DB, CREATE_DB / DROP_DB (of the current schema), CHANGE_USER, RESET_CONNECTION, …
            _ => self.session.mark_changed(),
        }
        // forward the command, with its continuation packets
        let mut last = first.seq();
        let mut total = first.payload().len();
        let mut more = first.continued();
        self.backend.out.extend_from_slice(first.raw());
        while more {
            if self.backend.out.len() >= 1 << 20 {
                self.backend.flush().await.map_err(backend_err)?;
            }
            let f = self
                .client
                .reader
                .frame_seq(last.wrapping_add(1))
                .await
                .map_err(client_err)?;
            total += f.payload().len();
            if total > self.cfg.max_packet {
                return Err(End::Client(PacketError::TooLarge {
                    len: total,
                    max: self.cfg.max_packet,
                }));
            }
            last = f.seq();
            more = f.continued();
            self.backend.out.extend_from_slice(f.raw());
        }
        self.backend.flush().await.map_err(backend_err)?;
        if code == cmd::QUIT {
            return Err(End::Quit);
        }
        self.relay_response(kind, last, prepare_sql).await?;
        // after: what the response says
        let t = &self.tracker;
        if !t.error || kind == Kind::Auth {
            self.session.status = t.status;
        }
        match code {
            cmd::QUERY => self.session.after_query(pending, t.error),
            cmd::STMT_EXECUTE => {
                if let Some(s) = stmt.and_then(|id| self.session.stmts.get_mut(&id)) {
                    s.long_data = false;
                    s.cursor = !t.error && t.status & packet::status::CURSOR_EXISTS != 0;
                }
            }
            cmd::STMT_FETCH => {
                if let Some(s) = stmt.and_then(|id| self.session.stmts.get_mut(&id)) {
                    if t.error || t.status & packet::status::LAST_ROW_SENT != 0 {
                        s.cursor = false;
                    }
                }
            }
            cmd::STMT_RESET => {
                if let Some(s) = stmt.and_then(|id| self.session.stmts.get_mut(&id)) {
                    s.cursor = false;
                    s.long_data = false;
                }
            }
            cmd::STMT_SEND_LONG_DATA => {
                if let Some(s) = stmt.and_then(|id| self.session.stmts.get_mut(&id)) {
                    s.long_data = true;
                }
            }
            cmd::STMT_CLOSE => {
                if let Some(id) = stmt {
                    self.session.stmts.remove(&id);
                }
            }
            cmd::RESET_CONNECTION if !t.error => self.session.reset(),
            cmd::CHANGE_USER => self.after_change_user(&first),
            _ => {}
        }
        Ok(())
    }

    /// Rewrites the client's statement id to the backend's; returns the client id.
    fn map_stmt(&mut self, code: u8, f: &mut Frame) -> Option<u32> {
        let id = u32::from_le_bytes(packet::get_arr(f.payload(), 1)?);
        let s = self.session.stmts.get(&id)?;
        f.payload_mut()[1..5].copy_from_slice(&s.backend_id.to_le_bytes());
        if code == cmd::STMT_EXECUTE && f.payload().get(5).is_some_and(|fl| fl & 0x07 != 0) {
            debug!(
                conn_id = self.id,
                stmt = id,
                "execute with a cursor requested"
            );
        }
        Some(id)
    }

    /// Remembers the parameter types an execute binds; after a move, adds them to an execute
    /// that relies on types bound on the old backend.
    fn bind_types(&mut self, id: u32, code: u8, f: &Frame) -> Option<Frame> {
        if code != cmd::STMT_EXECUTE {
            return None;
        }
        let s = self.session.stmts.get_mut(&id)?;
        let n = usize::from(s.params);
        if n == 0 {
            return None;
        }
        let p = f.payload();
        let flag_at = 10 + n.div_ceil(8);
        match p.get(flag_at) {
            Some(1) => {
                let types = p.get(flag_at + 1..flag_at + 1 + 2 * n)?;
                if s.types.as_deref() != Some(types) {
                    s.types = Some(types.to_vec());
                }
                s.needs_types = false;
                None
            }
            Some(0) if s.needs_types && !f.continued() => {
                let types = s.types.clone()?;
                s.needs_types = false;
                let mut np = Vec::with_capacity(p.len() + types.len());
                np.extend_from_slice(&p[..flag_at]);
                np.push(1);
                np.extend_from_slice(&types);
                np.extend_from_slice(&p[flag_at + 1..]);
                (np.len() < packet::MAX_PAYLOAD).then(|| Frame::new(0, &np))
            }
            _ => None,
        }
    }

    fn after_change_user(&mut self, first: &Frame) {
        if !self.tracker.auth_ok {
            return;
        }
        self.session.reset();
        let Some(login) = self.login.as_mut() else {
            return;
        };
        let mut pos = 1;
        let user =
            String::from_utf8_lossy(packet::get_cstr(first.payload(), &mut pos)).into_owned();
        login.secret = match self.cfg.users.get(&user) {
            Some(Credential::Secret(s)) => Some(*s),
            _ => None,
        };
        if login.secret.is_none() {
            debug!(conn_id = self.id, user = %user, "changed user cannot move (no cleartext-derived secret)");
        }
        login.response.user = user;
    }

    /// Relays the response to a command whose last packet carried `last`.
    async fn relay_response(
        &mut self,
        kind: Kind,
        last: u8,
        prepare_sql: Option<Vec<u8>>,
    ) -> Result<(), End> {
        let mut next = self.tracker.start(kind, last);
        let mut prepare_sql = prepare_sql;
        loop {
            match next {
                Next::Done => break,
                Next::Server => {
                    let mut f = self.backend_frame().await?;
                    self.tracker.check_seq(&f).map_err(backend_err)?;
                    next = self.tracker.on_server(&f).map_err(backend_err)?;
                    if let (Some(ok), Some(sql)) = (self.tracker.prepared, prepare_sql.as_ref()) {
                        if f.first() == 0x00 && !f.continued() {
                            let client_id = self.session.add_stmt(
                                ok.stmt_id,
                                sql.clone(),
                                ok.params,
                                ok.columns,
                            );
                            f.payload_mut()[1..5].copy_from_slice(&client_id.to_le_bytes());
                            prepare_sql = None;
                        }
                    }
                    self.client.out.extend_from_slice(f.raw());
                    if self.client.out.len() >= 256 * 1024 {
                        self.client.flush().await?;
                    }
                }
                Next::Client => {
                    self.client.flush().await?;
                    let f = self.client.reader.frame().await.map_err(client_err)?;
                    self.tracker.check_seq(&f).map_err(End::Client)?;
                    next = self.tracker.on_client(&f);
                    self.backend.out.extend_from_slice(f.raw());
                    if next != Next::Client || self.backend.out.len() >= 1 << 20 {
                        self.backend.flush().await.map_err(backend_err)?;
                    }
                }
                Next::Either => {
                    self.client.flush().await?;
                    self.backend.flush().await.map_err(backend_err)?;
                    tokio::select! {
                        f = self.backend.reader.frame() => {
                            let f = f.map_err(backend_err)?;
                            self.tracker.check_seq(&f).map_err(backend_err)?;
                            next = self.tracker.on_server(&f).map_err(backend_err)?;
                            self.client.out.extend_from_slice(f.raw());
                        }
                        f = self.client.reader.frame() => {
                            let f = f.map_err(client_err)?;
                            self.tracker.check_seq(&f).map_err(End::Client)?;
                            self.backend.out.extend_from_slice(f.raw());
                            next = Next::Either;
                        }
                    }
                }
            }
        }
        self.client.flush().await
    }

    /// The next backend packet; flushes what the client is owed before waiting for the network.
    async fn backend_frame(&mut self) -> Result<Frame, End> {
        loop {
            if let Some(f) = self.backend.reader.try_frame().map_err(backend_err)? {
                return Ok(f);
            }
            self.client.flush().await?;
            self.backend.reader.fill().await.map_err(backend_err)?;
        }
    }

    /// Gives up tracking: relays bytes both ways until either side closes.
    async fn raw_relay(&mut self, first: Frame) -> Result<(), End> {
        warn!(
            conn_id = self.id,
            command = first.first(),
            "command the proxy cannot follow; relaying bytes from now on (session cannot move)"
        );
        self.backend.out.extend_from_slice(first.raw());
        let rest = self.client.reader.take_buffered();
        self.backend.out.extend_from_slice(&rest);
        self.backend.flush().await.map_err(backend_err)?;
        let rest = self.backend.reader.take_buffered();
        self.client.out.extend_from_slice(&rest);
        self.client.flush().await?;
        let up = tokio::io::copy(self.client.reader.get_mut(), &mut self.backend.writer);
        let down = tokio::io::copy(self.backend.reader.get_mut(), &mut self.client.writer);
        tokio::pin!(up, down);
        loop {
            tokio::select! {
                _ = &mut up => return Err(End::ClientClosed),
                _ = &mut down => return Err(End::Backend("closed during raw relay".into())),
                c = self.ctrl.recv() => match c {
                    Some(Control::Redirect(to)) => {
                        info!(conn_id = self.id, to = %to.addr(), "redirect refused: raw relay");
                        self.link.redirect_failed(to.addr());
                    }
                    Some(Control::Close) => return Err(End::Drained),
                    None => {}
                },
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // Safe points and moves
    // -----------------------------------------------------------------------------------------

    async fn at_safe_point(&mut self) -> Result<(), End> {
        let blocker = self.session.blocker();
        if self.closing && !matches!(blocker, Some(Blocker::Wait(_))) {
            return Err(End::Drained);
        }
        let Some(to) = self.pending.take() else {
            return Ok(());
        };
        match blocker {
            Some(Blocker::Wait(why)) => {
                debug!(conn_id = self.id, to = %to.addr(), why, "redirect waits for a safe point");
                self.pending = Some(to);
                return Ok(());
            }
            Some(Blocker::Refuse(why)) => {
                self.failed(&to, why);
                return Ok(());
            }
            None => {}
        }
        let Some(login) = self.login.as_ref() else {
            self.failed(&to, "not logged in");
            return Ok(());
        };
        let Some(secret) = login.secret else {
            self.failed(&to, "user has no usable entry in mysql.users");
            return Ok(());
        };
        let started = tokio::time::Instant::now();
        match self.migrate(&to, secret).await {
            Ok((target, ids)) => {
                for (client_id, backend_id) in ids {
                    if let Some(s) = self.session.stmts.get_mut(&client_id) {
                        s.backend_id = backend_id;
                        s.needs_types = s.params > 0;
                    }
                }
                let old = std::mem::replace(&mut self.backend, target);
                crate::metrics::migration(true, started.elapsed());
                info!(conn_id = self.id, from = %old.addr, to = %self.backend.addr, took_ms = started.elapsed().as_millis() as u64, "session moved");
                self.link.redirect_succeeded(&self.backend.addr);
                quit(old);
                Ok(())
            }
            Err(MoveError::OldBackend(e)) => {
                self.failed(&to, "old backend failed during snapshot");
                Err(backend_err(e))
            }
            Err(e) => {
                if matches!(e, MoveError::State(_)) {
                    // e.g. a digest that no longer matches the carried state: read it all next time
                    self.session.mark_changed();
                }
                let reason = e.to_string();
                self.failed(&to, &reason);
                Ok(())
            }
        }
    }

    /// Moves the session to `to`: logs in there while the old backend reports the session's
    /// state (the two run side by side), then restores and verifies the state on the target in
    /// one round trip. On success the old backend is left for the caller to close.
    async fn migrate(
        &mut self,
        to: &BackendInst,
        secret: NativeSecret,
    ) -> Result<(Backend, Vec<(u32, u32)>), MoveError> {
        let Some(login) = self.login.as_ref() else {
            return Err(MoveError::Target("not logged in".into()));
        };
        let (response, negotiated) = (login.response.clone(), login.negotiated);
        let limit = self.cfg.move_timeout;
        let connect_timeout = self.cfg.connect_timeout;
        let addr = to.addr().to_string();
        let target = bounded(limit, async {
            let mut b = Backend::connect(&addr, connect_timeout)
                .await
                .map_err(|e| MoveError::Target(format!("connect: {e}")))?;
            b.login(&response, negotiated, &secret)
                .await
                .map_err(|e| MoveError::Target(format!("login: {e}")))?;
            Ok(b)
        });
        // both run to completion: the snapshot must never stop halfway through the old
        // backend's answers
        let (target, snap) = tokio::join!(
            target,
            session::snapshot(&mut self.backend, &mut self.session)
        );
        let snap = match snap {
            Ok(s) => s,
            Err(session::StateError::Query {
                source: e @ (QueryError::Packet(_) | QueryError::Shape(_)),
                ..
            }) => return Err(MoveError::OldBackend(e.to_string())),
            Err(e) => return Err(MoveError::State(e.to_string())),
        };
        let mut target = target?;
        let session = &self.session;
        let ids = bounded(limit, async {
            session::restore(&mut target, session, &snap, negotiated)
                .await
                .map_err(|e| MoveError::State(e.to_string()))
        })
        .await?;
        self.session.moved(snap);
        Ok((target, ids))
    }
}

#[derive(Debug, thiserror::Error)]
enum MoveError {
    #[error("target: {0}")]
    Target(String),
    #[error("state: {0}")]
    State(String),
    #[error("old backend: {0}")]
    OldBackend(String),
    #[error("move timed out")]
    Timeout,
}

async fn bounded<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, MoveError>>,
) -> Result<T, MoveError> {
    tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| MoveError::Timeout)?
}

/// Says goodbye to a backend the session left.
fn quit(mut old: Backend) {
    actix::spawn(async move {
        put_packet(&mut old.out, 0, &[cmd::QUIT]);
        let _ = old.flush().await;
    });
}

fn check(f: &Frame, seq: &mut u8) -> Result<(), PacketError> {
    if f.seq() != *seq {
        return Err(PacketError::Sequence {
            got: f.seq(),
            want: *seq,
        });
    }
    *seq = seq.wrapping_add(1);
    Ok(())
}
