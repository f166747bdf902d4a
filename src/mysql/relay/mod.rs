//! The relay task of one MySQL session: it owns both sockets and all session state, relays one
//! command at a time, and acts on control (redirect, close) only at a safe point, between
//! commands, so a move never splits a response.
//!
//! Split by phase: [`login`] passes the first login through, [`command`] parses each command,
//! runs the session's before/after hooks around it and forwards it and its response, and
//! [`moves`] carries the session to another backend; [`abandon`] finishes a backend login the
//! client gave up on; [`failover`] hides a backend lost unplanned, and [`replay`] runs a lost
//! transaction again on the new backend; [`loss`] holds how either ends when it cannot go on. This file holds the loop that chooses between them and the errors that
//! end a session.

mod abandon;
mod command;
mod failover;
mod login;
mod loss;
mod moves;
mod replay;
mod track;

pub(super) use abandon::Turn;

use std::sync::Arc;
use std::time::Duration;

use switchyard::wire::{
    err_payload, marker, parse_err, put_packet, Frame, HandshakeError, NativeSecret, OutBuf,
    PacketError, PacketReader, Response,
};
use switchyard::{BackendInst, Registration};
use tracing::{debug, info, warn};

use super::backend::{Backend, QueryError};
use super::control::{Control, ControlRx};
use super::session::{Pin, Session, TxLog};
use super::tracker::{TrackError, Tracker};
use super::MysqlConfig;
use crate::entry::{Counted, Rerouter, StreamRead, StreamWrite};

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub(super) enum End {
    #[error("client quit")]
    Quit,
    #[error("client closed the connection")]
    ClientClosed,
    #[error("client protocol violation: {0}")]
    Client(#[source] PacketError),
    #[error("backend {0}")]
    Backend(#[from] BackendError),
    #[error("login failed")]
    LoginFailed,
    #[error("client TLS handshake: {0}")]
    ClientTls(#[source] std::io::Error),
    #[error("plain-text client refused: proxy.tls.required is set")]
    TlsRequired,
    #[error("login did not finish within proxy.login_timeout")]
    LoginTimeout,
    #[error("closed at a safe point (drain or shutdown)")]
    Drained,
    /// The backend was lost and the session could not go on elsewhere; the client was told why.
    #[error("backend lost: {0}")]
    Lost(String),
}

/// What went wrong on the backend side of a session.
#[derive(Debug, thiserror::Error)]
pub(super) enum BackendError {
    /// Framing: the connection closed, or sent a packet out of sequence or too long.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// Writing to the backend failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Its greeting was no v10 greeting (or an ERR: too many connections, host blocked).
    #[error(transparent)]
    Greeting(#[from] HandshakeError),
    /// A response that does not follow the protocol.
    #[error(transparent)]
    Protocol(#[from] TrackError),
    /// The old backend failed while the proxy read the session's state for a move.
    #[error(transparent)]
    Snapshot(#[from] QueryError),
    /// The backend failed one of the proxy's own queries (session tracking, a transaction
    /// check).
    #[error("proxy query: {0}")]
    Proxy(#[source] QueryError),
    /// The server said it is shutting down (sent to idle sessions before it closes them).
    #[error("server shutting down: {0}")]
    ShuttingDown(String),
    /// The backend closed while the session was relayed as raw bytes.
    #[error("closed during raw relay")]
    ClosedInRawRelay,
    /// The old backend stopped answering during a move's snapshot, and did not recover.
    #[error("stopped answering during a move")]
    Unresponsive,
}

/// Reports a redirect of connection `id` from `from` to `to` that did not happen, and why (also
/// while the session's state is borrowed by a move).
fn refused(link: &Option<Registration>, id: u64, from: &str, to: &BackendInst, reason: &str) {
    crate::metrics::migration(false, Duration::ZERO);
    info!(conn_id = id, from, to = %to.addr(), reason, "redirect refused");
    if let Some(link) = link {
        link.redirect_failed(to.addr());
    }
}

/// Counts and logs one redirect a session cannot follow now, and why: the one place reasons are
/// counted (`switchyard_migrations_refused_total{reason}`). `detail` says more for the log.
pub(super) fn pinned(conn_id: u64, to: &BackendInst, pin: Pin, detail: Option<&str>) {
    crate::metrics::migration_refused(pin);
    debug!(conn_id, to = %to.addr(), reason = pin.label(), waits = pin.waits(), detail, "session cannot move now");
}

/// A client-side read error: a close between packets is the client leaving, anything else a
/// protocol violation.
fn client_err(e: PacketError) -> End {
    match e {
        PacketError::Closed => End::ClientClosed,
        e => End::Client(e),
    }
}

/// A backend-side error of any kind.
fn backend_err(e: impl Into<BackendError>) -> End {
    End::Backend(e.into())
}

/// What the session needs to log in again elsewhere.
pub(super) struct Login {
    response: Response,
    negotiated: u32,
    secret: Option<NativeSecret>,
}

/// The client's socket: packets in, a pooled buffer out (neither holds memory while the session
/// is idle). Both halves count what crosses them into `bytes_in_total` / `bytes_out_total`.
pub(super) struct ClientSide {
    pub(super) reader: PacketReader<Counted<StreamRead>>,
    pub(super) writer: Counted<StreamWrite>,
    pub(super) out: OutBuf,
    /// Writes of response bytes so far: a read interrupted by a backend loss is re-run only when
    /// none of its response reached the client.
    pub(super) writes: u64,
}

impl ClientSide {
    async fn flush(&mut self) -> Result<(), End> {
        if !self.out.is_empty() {
            self.writes = self.writes.wrapping_add(1);
        }
        self.out
            .flush_to(&mut self.writer)
            .await
            .map_err(|e| client_err(e.into()))
    }

    /// Queues `f` for the client; a long one is written at once, straight from the reader's
    /// buffer, so it is never copied into `out` (see [`OutBuf::put_or_write`]).
    pub(super) async fn relay(&mut self, f: &Frame) -> Result<(), End> {
        self.out
            .put_or_write(&mut self.writer, f.raw())
            .await
            .map_err(|e| client_err(e.into()))
    }

    /// Sends an ERR packet with sequence id `seq`; the session is usually over, so a failed
    /// write is not worth reporting.
    pub(super) async fn send_err(&mut self, seq: u8, code: u16, state: &str, msg: &str) {
        let _ = self.answer_err(seq, code, state, msg).await;
    }

    /// Answers a command with an ERR packet (sequence id `seq`) and goes on.
    pub(super) async fn answer_err(
        &mut self,
        seq: u8,
        code: u16,
        state: &str,
        msg: &str,
    ) -> Result<(), End> {
        put_packet(&mut self.out, seq, &err_payload(code, state, msg));
        self.flush().await
    }
}

/// The relay task's state (see the module docs).
pub(super) struct Relay {
    pub(super) id: u64,
    pub(super) peer: String,
    pub(super) client: ClientSide,
    pub(super) backend: Backend,
    pub(super) session: Session,
    pub(super) tracker: Tracker,
    pub(super) login: Option<Login>,
    /// The registration on the backend the session is on (`None` only while a re-attach
    /// looks for a new one).
    pub(super) link: Option<Registration>,
    /// Routes and connects again when the backend is lost; reports suspects.
    pub(super) reroute: Rerouter,
    /// Why the state could not be read afresh, until the session changes it again: a re-attach
    /// then refuses with it.
    pub(super) refresh_refused: Option<String>,
    /// The session's transaction was lost between two commands and the session re-attached:
    /// its next command is answered with the rollback error, not run. The reason it is counted
    /// under (`switchyard_failover_errors_total{reason}`).
    pub(super) doomed: Option<&'static str>,
    /// The open transaction's replay log (`failover.replay_transactions`).
    pub(super) txlog: TxLog,
    pub(super) cfg: Arc<MysqlConfig>,
    pub(super) ctrl: ControlRx,
    /// A redirect waiting for the next safe point.
    pub(super) pending: Option<BackendInst>,
    /// Why the pending redirect waits, once counted (each redirect counts a reason once).
    pub(super) waiting: Option<Pin>,
    /// The client asked for `CLIENT_SESSION_TRACK`: it gets the server's session-state
    /// information unchanged; otherwise the proxy removes it.
    pub(super) client_tracks: bool,
    /// Close at the next safe point.
    pub(super) closing: bool,
    /// What to tell the client in an ERR packet when it is closed there (a drain's timeout).
    pub(super) close_error: Option<String>,
    /// Whose packet the backend's login waits for (`Done` once logged in).
    pub(super) turn: Turn,
    /// How far the client's sequence ids in the login run ahead of the backend's (a TLS
    /// upgrade on one side only takes one id there).
    pub(super) seq_shift: u8,
}

impl Relay {
    /// Logs in (by `login_deadline`), then relays commands until the session ends; returns why
    /// it ended. A login that fails on the client's side is finished cleanly on the backend.
    pub(super) async fn serve(&mut self, login_deadline: tokio::time::Instant) -> End {
        let failed = match tokio::time::timeout_at(login_deadline, self.login()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => {
                self.tell_login_timeout().await;
                Some(End::LoginTimeout)
            }
        };
        if let Some(e) = failed {
            if !matches!(e, End::Backend(_)) {
                // the client is done with: it need not wait for the backend's side
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut self.client.writer).await;
                self.finish_abandoned_login().await;
            }
            return e;
        }
        if let Err(e) = self.enable_tracking().await {
            return e;
        }
        if let Err(e) = self.read_login_state().await {
            return e;
        }
        loop {
            if let Err(e) = self.at_safe_point().await {
                return e;
            }
            if let Err(e) = self.keep_carried().await {
                if let Err(e) = self.lost_idle(e).await {
                    return e;
                }
                continue;
            }
            // between commands: buffers that grew for long packets are freed
            self.client.reader.release();
            self.client.out.release();
            self.backend.reader.release();
            self.backend.out.release();
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
                if let Err(e) = self.lost_idle(e).await {
                    return e;
                }
            }
        }
    }

    fn on_control(&mut self, c: Option<Control>) {
        match c {
            Some(Control::Redirect(to)) => {
                self.waiting = None;
                if let Some(old) = self.pending.replace(to) {
                    self.failed(&old, "superseded by a newer redirect");
                }
            }
            Some(Control::Close) => self.closing = true,
            Some(Control::CloseWithError(why)) => {
                self.closing = true;
                self.close_error = Some(why);
            }
            None => {}
        }
    }

    /// A backend packet between commands: passed on to the client.
    async fn unsolicited(&mut self, f: Result<Frame, PacketError>) -> Result<(), End> {
        let f = f.map_err(backend_err)?;
        if let Some(lost) = self.unsolicited_err(&f) {
            return Err(backend_err(lost));
        }
        // e.g. the server's "connection was killed" ERR before it closes
        if f.first() == marker::ERR {
            let e = parse_err(f.payload());
            warn!(conn_id = self.id, backend = %self.backend.addr, error = %e, "backend sent an error between commands");
        }
        self.client.out.extend_from_slice(f.raw());
        self.client.flush().await
    }

    /// Reports a redirect to `to` that did not happen.
    fn failed(&self, to: &BackendInst, reason: &str) {
        refused(&self.link, self.id, &self.backend.addr, to, reason);
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
                _ = &mut down => return Err(backend_err(BackendError::ClosedInRawRelay)),
                c = self.ctrl.recv() => match c {
                    Some(Control::Redirect(to)) => {
                        pinned(self.id, &to, crate::mysql::session::Pin::RawRelay, None);
                        crate::metrics::migration(false, Duration::ZERO);
                        if let Some(link) = &self.link {
                            link.redirect_failed(to.addr());
                        }
                    }
                    // untracked bytes: no point is safe for an ERR, so close as is
                    Some(Control::Close | Control::CloseWithError(_)) => return Err(End::Drained),
                    None => {}
                },
            }
        }
    }
}
