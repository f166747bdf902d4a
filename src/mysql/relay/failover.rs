//! An unplanned backend loss (`kill -9`, a host lost, a server shutting down): the session goes
//! on on a healthy backend when the proxy can prove it carries the session's state, and the
//! client is told exactly what was lost otherwise.
//!
//! The state a re-attach restores cannot be read from the lost backend, so it is kept current
//! while the backend lives: read once after login, and read afresh at the next safe point after
//! anything may have changed it ([`Relay::keep_carried`]: one round trip, the move's snapshot).
//! A loss between commands re-attaches at once; a side-effect-free read in flight is re-run;
//! an open transaction is replayed ([`super::replay`]) and, with its answers all the same, goes
//! on; any other statement in flight gets an error (a write's fate is unknown and it is never
//! re-run, nor is a `COMMIT`). The router hears of the loss at once
//! ([`crate::entry::Rerouter::suspect`]).

use switchyard::wire::{
    caps, cmd, code, get_u32, marker, parse_err, sqlstate, Frame, NativeSecret, PacketError,
    Response,
};
use tokio::time::Instant;
use tracing::{info, warn};

use super::loss::{Attached, Refusal, Unreplayed, TRANSACTION_LOST};
use super::{backend_err, BackendError, End, Relay};
use crate::mysql::backend::{Backend, QueryError};
use crate::mysql::session::{self, readonly, Pin, Snapshot, StateError};

/// MariaDB's "server shutdown in progress": sent to idle sessions before a clean stop closes them.
pub(super) const ER_SERVER_SHUTDOWN: u16 = 1053;
/// "Query execution was interrupted": a read whose result was cut off by the loss; re-running it
/// is safe.
const ER_QUERY_INTERRUPTED: u16 = 1317;
/// "Got error during COMMIT": the answer to a `COMMIT` (or a statement that may have committed)
/// was lost with its backend, so whether the transaction committed is unknown. Unlike 1213 it
/// does not say "rolled back": an application must check before it runs the transaction again.
const ER_ERROR_DURING_COMMIT: u16 = 1180;
/// SQL state of [`ER_QUERY_INTERRUPTED`].
const STATE_INTERRUPTED: &str = "70100";
/// The client library's "Lost connection to server during query", sent as a server error: the
/// statement's fate is unknown, exactly what a client seeing its connection drop would conclude.
const CR_SERVER_LOST: u16 = 2013;
/// Sequence id of an error that answers the command the client sends (or sent) next.
const NEXT_COMMAND_SEQ: u8 = 1;
/// Backends one re-attach tries (a new backend that refuses the login or the restore is
/// reported suspect, and the next is tried).
const REATTACH_TRIES: u32 = 2;
/// Message of the rollback error.
const ROLLED_BACK: &str =
    "switchyard: the backend was lost; the transaction was rolled back, run it again";

/// Whether a backend error means the backend (or the path to it) is gone, rather than a
/// protocol violation the proxy must not paper over.
pub(super) fn is_loss(e: &BackendError) -> bool {
    fn packet(e: &PacketError) -> bool {
        matches!(
            e,
            PacketError::Closed | PacketError::Truncated { .. } | PacketError::Io(_)
        )
    }
    match e {
        BackendError::Packet(p) => packet(p),
        BackendError::Io(_) | BackendError::ShuttingDown(_) => true,
        BackendError::Snapshot(QueryError::Packet(p))
        | BackendError::Proxy(QueryError::Packet(p)) => packet(p),
        _ => false,
    }
}

/// What the session logs in with elsewhere: its handshake response (asking for session
/// tracking), negotiated capabilities and secret.
pub(super) type Credentials = (Response, u32, NativeSecret);

/// How a command whose backend was lost in flight ends.
pub(super) enum InFlight {
    /// Re-run it (the session re-attached).
    Rerun(Frame),
    /// The client got its answer (an error); the session goes on.
    Answered,
}

impl Relay {
    /// Right after login: reads the session's schema and last insert id, so the state a
    /// re-attach restores is known from the start.
    pub(super) async fn read_login_state(&mut self) -> Result<(), End> {
        if !self.cfg.failover.reattach {
            return Ok(());
        }
        let mut snap = Snapshot::login_defaults();
        match self.backend.query(&snap.digest_sql).await {
            Ok(rows) => {
                snap.digest = rows.into_iter().next().unwrap_or_default();
                self.session.refreshed(snap);
            }
            Err(QueryError::Server(e)) => self.refresh_refused = Some(e.to_string()),
            Err(e) => return Err(backend_err(BackendError::Proxy(e))),
        }
        Ok(())
    }

    /// At a safe point: when something may have changed the carried state since it was last
    /// read, reads it again (one round trip), so a loss can be hidden. Skipped where a re-attach
    /// would be refused anyway (a pinned session, a user without credentials).
    pub(super) async fn keep_carried(&mut self) -> Result<(), End> {
        if !self.cfg.failover.reattach
            || self.refresh_refused.is_some()
            || self.session.exact_state().is_some()
            || self.session.blocker().is_some()
            || self.login.as_ref().is_none_or(|l| l.secret.is_none())
        {
            return Ok(());
        }
        match session::snapshot(&mut self.backend, &mut self.session, self.cfg.max_snapshot).await {
            Ok(snap) => self.session.refreshed(snap),
            // the check found one open: read again once it ends
            Err(StateError::InTransaction) => {}
            Err(StateError::Query {
                source: e @ (QueryError::Packet(_) | QueryError::Shape(_)),
                ..
            }) => return Err(backend_err(BackendError::Snapshot(e))),
            Err(e) => self.refresh_refused = Some(e.to_string()),
        }
        Ok(())
    }

    /// A command may have changed what [`Relay::keep_carried`] could not read before: try again.
    pub(super) fn state_may_have_changed(&mut self) {
        self.refresh_refused = None;
    }

    /// Whether `first`, run inside a transaction, may commit it (see [`readonly::may_commit`]);
    /// any command other than a query or a binary execute of a statement that stays in its
    /// transaction counts.
    pub(super) fn may_commit(&self, first: &Frame) -> bool {
        let p = first.payload();
        match first.first() {
            cmd::QUERY => readonly::may_commit(p.get(1..).unwrap_or_default()),
            cmd::STMT_EXECUTE => get_u32(p, 1)
                .and_then(|id| self.session.stmt_sql(id))
                .is_none_or(readonly::may_commit),
            cmd::STMT_FETCH | cmd::PING | cmd::STMT_RESET | cmd::STMT_SEND_LONG_DATA => false,
            _ => true,
        }
    }

    /// The copy of a command worth keeping for a re-run: a single-packet, side-effect-free read
    /// in autocommit mode with no transaction open (a `SELECT`/`SHOW` the scan proves pure, a
    /// binary execute of one, a ping), or a plain `BEGIN`/`COMMIT`/`ROLLBACK` there.
    pub(super) fn rerunnable(&self, first: &Frame) -> Option<Frame> {
        if !self.cfg.failover.reattach || first.continued() || !self.session.autocommit_idle() {
            return None;
        }
        let p = first.payload();
        let arg = p.get(1..).unwrap_or_default();
        let safe = match first.first() {
            cmd::QUERY => readonly::retry_safe(arg) || readonly::transaction_boundary(arg),
            cmd::STMT_EXECUTE => get_u32(p, 1)
                .and_then(|id| self.session.stmt_sql(id))
                .is_some_and(readonly::retry_safe),
            cmd::PING => true,
            _ => false,
        };
        safe.then(|| Frame::new(first.seq(), p))
    }

    /// The backend broke between commands (or while the proxy read the session's state): the
    /// session re-attaches elsewhere, or the client is told why not and the session ends. `e`
    /// that is no loss ends the session as before.
    pub(super) async fn lost_idle(&mut self, e: End) -> Result<(), End> {
        let End::Backend(be) = e else {
            return Err(e);
        };
        if !is_loss(&be) {
            return Err(End::Backend(be));
        }
        let started = Instant::now();
        let lost = self.backend.addr.clone();
        self.reroute.suspect(&lost, be.to_string());
        let in_trx =
            !self.session.autocommit_idle() && self.session.blocker() == Some(Pin::InTransaction);
        let mut reason = TRANSACTION_LOST;
        if in_trx && self.txlog.enabled() {
            match self.replay_transaction(false).await {
                Ok(_) => {
                    crate::metrics::failover_stall(started.elapsed());
                    info!(conn_id = self.id, from = %lost, to = %self.backend.addr, took_ms = started.elapsed().as_millis() as u64, error = %be, "backend lost inside a transaction; transaction replayed, session goes on");
                    return Ok(());
                }
                Err(Unreplayed::Refused(refusal)) => {
                    crate::metrics::failover_stall(started.elapsed());
                    return Err(self.refuse_in_transaction(&refusal).await);
                }
                Err(u) => {
                    info!(conn_id = self.id, from = %lost, outcome = %u, "transaction lost with its backend; the client gets the rollback error");
                    reason = u.reason();
                }
            }
        }
        let r = self.reattach(in_trx).await;
        crate::metrics::failover_stall(started.elapsed());
        match r {
            Ok(()) => {
                crate::metrics::failover_reattached();
                if in_trx {
                    // its next command learns that the transaction is gone
                    self.doomed = Some(reason);
                }
                info!(conn_id = self.id, from = %lost, to = %self.backend.addr, in_transaction = in_trx, took_ms = started.elapsed().as_millis() as u64, error = %be, "backend lost between commands; session re-attached");
                Ok(())
            }
            Err(refusal) if in_trx => Err(self.refuse_in_transaction(&refusal).await),
            Err(refusal) => {
                let msg = format!(
                    "switchyard: the backend was lost and the session cannot go on: {refusal}"
                );
                self.refuse(NEXT_COMMAND_SEQ, &refusal, &msg).await;
                Err(End::Lost(msg))
            }
        }
    }

    /// The backend broke while a command was in flight, the client having been sent part of
    /// its response when `sent`. `rerun`: the command's copy when it is a read that may run
    /// again; `may_rerun`: it has not been run again too often yet (inside a transaction, it
    /// runs again after the transaction's replay); `answer_seq`: the sequence id an answer in its
    /// place carries.
    pub(super) async fn lost_in_flight(
        &mut self,
        e: BackendError,
        rerun: Option<Frame>,
        may_rerun: bool,
        may_commit: bool,
        sent: bool,
        answer_seq: u8,
    ) -> Result<InFlight, End> {
        let started = Instant::now();
        let lost = self.backend.addr.clone();
        self.reroute.suspect(&lost, e.to_string());
        let in_trx = !self.session.autocommit_idle();
        let read = rerun.is_some();
        let mut trx_reason = TRANSACTION_LOST;
        if in_trx && !may_commit && !sent && may_rerun && self.txlog.enabled() {
            // nothing of the answer reached the client: replay, then run it again
            self.client.out.clear();
            match self.replay_transaction(true).await {
                Ok(Some(payload)) => {
                    crate::metrics::failover_stall(started.elapsed());
                    info!(conn_id = self.id, from = %lost, to = %self.backend.addr, error = %e, "backend lost during a statement inside a transaction; transaction replayed, running the statement again");
                    return Ok(InFlight::Rerun(Frame::new(0, &payload)));
                }
                Ok(None) => {}
                Err(Unreplayed::Refused(refusal)) => {
                    crate::metrics::failover_stall(started.elapsed());
                    let msg = format!("switchyard: the backend was lost during the statement and the session cannot go on: {refusal}");
                    self.refuse(answer_seq, &refusal, &msg).await;
                    return Err(End::Lost(msg));
                }
                Err(u) => {
                    info!(conn_id = self.id, from = %lost, outcome = %u, "transaction lost with its backend; the client gets the rollback error");
                    trx_reason = u.reason();
                }
            }
        }
        if let (Some(frame), false) = (rerun, sent) {
            // nothing of the answer reached the client: run it again, elsewhere
            self.client.out.clear();
            return match self.reattach(false).await {
                Ok(()) => {
                    crate::metrics::failover_stall(started.elapsed());
                    crate::metrics::failover_reattached();
                    crate::metrics::failover_retried();
                    info!(conn_id = self.id, from = %lost, to = %self.backend.addr, error = %e, "backend lost during a read; re-running it on the new backend");
                    Ok(InFlight::Rerun(frame))
                }
                Err(refusal) => {
                    crate::metrics::failover_stall(started.elapsed());
                    let msg = format!("switchyard: the backend was lost during the statement and the session cannot go on: {refusal}");
                    self.refuse(answer_seq, &refusal, &msg).await;
                    Err(End::Lost(msg))
                }
            };
        }
        // the client gets what it was sent, then the error in place of the rest
        let seq = if sent {
            self.tracker.next_seq()
        } else {
            self.client.out.clear();
            answer_seq
        };
        let (code, state, msg, goes_on) = if in_trx && may_commit {
            (
                ER_ERROR_DURING_COMMIT,
                sqlstate::GENERAL,
                "switchyard: the backend was lost before the COMMIT was answered; whether the transaction committed is unknown",
                false,
            )
        } else if in_trx {
            (
                code::ER_LOCK_DEADLOCK,
                sqlstate::SERIALIZATION_FAILURE,
                ROLLED_BACK,
                true,
            )
        } else if read {
            (
                ER_QUERY_INTERRUPTED,
                STATE_INTERRUPTED,
                "switchyard: the backend was lost while sending the result; run the statement again",
                true,
            )
        } else {
            (
                CR_SERVER_LOST,
                sqlstate::GENERAL,
                "switchyard: lost connection to the backend during the statement; its outcome is unknown",
                false,
            )
        };
        let reason = if in_trx && may_commit {
            "commit_unknown"
        } else if in_trx {
            trx_reason
        } else if read {
            "read_interrupted"
        } else {
            "outcome_unknown"
        };
        crate::metrics::failover_error(reason);
        warn!(conn_id = self.id, backend = %lost, error = %e, reason, "backend lost during a statement");
        let _ = self.client.flush().await;
        self.client.send_err(seq, code, state, msg).await;
        if !goes_on {
            crate::metrics::failover_stall(started.elapsed());
            return Err(End::Lost(msg.to_string()));
        }
        let r = self.reattach(in_trx).await;
        crate::metrics::failover_stall(started.elapsed());
        match r {
            Ok(()) => {
                crate::metrics::failover_reattached();
                info!(conn_id = self.id, from = %lost, to = %self.backend.addr, "session re-attached after the error");
                Ok(InFlight::Answered)
            }
            Err(refusal) => {
                crate::metrics::failover_error(refusal.label());
                Err(End::Lost(refusal.to_string()))
            }
        }
    }

    /// Tells the client why its session ends (sequence id `seq`), and counts it.
    async fn refuse(&mut self, seq: u8, refusal: &Refusal, msg: &str) {
        self.refuse_with(
            seq,
            refusal,
            (code::ER_UNKNOWN_ERROR, sqlstate::COMM_LINK_FAILURE),
            msg,
        )
        .await;
    }

    /// Between commands, a session whose transaction was lost with its backend cannot go on
    /// either (state it held is gone, or no backend took it): the answer to its next command is
    /// the rollback error — certain, since the transaction died uncommitted with its backend —
    /// naming why the session ends, so a driver runs the transaction again on a new connection
    /// rather than treating an unknown error as fatal. Counted under the refusal's label.
    async fn refuse_in_transaction(&mut self, refusal: &Refusal) -> End {
        let msg = format!(
            "switchyard: the backend was lost; the transaction was rolled back, and the session \
             cannot go on ({refusal}): reconnect and run it again"
        );
        let rollback = (code::ER_LOCK_DEADLOCK, sqlstate::SERIALIZATION_FAILURE);
        self.refuse_with(NEXT_COMMAND_SEQ, refusal, rollback, &msg)
            .await;
        End::Lost(msg)
    }

    /// Sends the error (`code` and SQL state) that ends the session, and counts its reason.
    async fn refuse_with(
        &mut self,
        seq: u8,
        refusal: &Refusal,
        (code, state): (u16, &str),
        msg: &str,
    ) {
        crate::metrics::failover_error(refusal.label());
        warn!(conn_id = self.id, backend = %self.backend.addr, reason = refusal.label(), detail = %refusal, code, "backend lost; closing the session");
        self.client.out.clear();
        self.client.send_err(seq, code, state, msg).await;
    }

    /// A command arriving after the session's transaction was lost between commands: answered
    /// with the rollback error, not run (`COM_QUIT` still ends the session).
    pub(super) async fn answer_doomed(&mut self, first: &Frame) -> Result<bool, End> {
        if first.first() == cmd::QUIT {
            return Ok(false);
        }
        let Some(reason) = self.doomed.take() else {
            return Ok(false);
        };
        let last = self.skip_rest(first).await?;
        crate::metrics::failover_error(reason);
        self.client
            .answer_err(
                last.wrapping_add(1),
                code::ER_LOCK_DEADLOCK,
                sqlstate::SERIALIZATION_FAILURE,
                ROLLED_BACK,
            )
            .await?;
        Ok(true)
    }

    /// An ERR between commands: a server shutting down (lost, when re-attaching is on) or one
    /// to pass on (a killed connection, which is the operator's will, not a failure).
    pub(super) fn unsolicited_err(&self, f: &Frame) -> Option<BackendError> {
        if f.first() != marker::ERR || !self.cfg.failover.reattach {
            return None;
        }
        let e = parse_err(f.payload());
        (e.code == ER_SERVER_SHUTDOWN).then_some(BackendError::ShuttingDown(e.message))
    }

    /// Opens a session on a healthy backend through the normal route, logs in as the session's
    /// user and restores its exactly known state there; `in_trx`: the lost backend held an open
    /// transaction, which is gone (the session goes on outside one; what else it held must not
    /// be). Within `failover.timeout`.
    async fn reattach(&mut self, in_trx: bool) -> Result<(), Refusal> {
        if !self.cfg.failover.reattach {
            return Err(Refusal::Disabled);
        }
        let held = match in_trx {
            true => self.session.held(),
            false => self.session.blocker(),
        };
        if let Some(pin) = held {
            return Err(Refusal::Pinned(pin));
        }
        if !self.session.named_locks().is_empty() {
            return Err(Refusal::Pinned(Pin::UserLock));
        }
        self.credentials()?;
        if let Some(why) = &self.refresh_refused {
            return Err(Refusal::StateUnknown(why.clone()));
        }
        let snap = self.session.exact_state().cloned().ok_or_else(|| {
            Refusal::StateUnknown("it changed since the proxy last read it".into())
        })?;
        let deadline = Instant::now() + self.cfg.failover.timeout;
        let a = self.attach(&snap, deadline).await?;
        self.session
            .moved(snap, &a.restored.ids, a.restored.tracking);
        if in_trx {
            self.session.transaction_lost();
            self.txlog.clear();
        }
        self.backend = a.backend;
        self.link = Some(a.registration);
        Ok(())
    }

    /// What the session logs in with on a new backend, or why it cannot.
    pub(super) fn credentials(&self) -> Result<Credentials, Refusal> {
        match &self.login {
            None => Err(Refusal::Pinned(Pin::NotLoggedIn)),
            Some(l) => match l.secret {
                None => Err(Refusal::Pinned(Pin::UnknownUser)),
                Some(s) => {
                    let mut response = l.response.clone();
                    response.caps |= caps::SESSION_TRACK;
                    Ok((response, l.negotiated, s))
                }
            },
        }
    }

    /// Routes, connects, logs in and restores `snap` (with the session's prepared statements) on
    /// a healthy backend, by `deadline`; a backend that refuses the login or the restore is
    /// reported suspect and the next one tried. The router forgets the lost backend's session
    /// first. The session itself is not changed: the caller makes the new backend its own.
    pub(super) async fn attach(
        &mut self,
        snap: &Snapshot,
        deadline: Instant,
    ) -> Result<Attached, Refusal> {
        let (response, negotiated, secret) = self.credentials()?;
        // the router forgets the session on the lost backend (and any redirect in flight)
        self.link = None;
        self.pending = None;
        self.waiting = None;
        let reroute = self.reroute.clone();
        let link = self.backend.link.clone();
        let mut last = Refusal::NoBackend("none tried".into());
        for _ in 0..REATTACH_TRIES {
            let session = &self.session;
            let attempt = async {
                let routed = reroute
                    .connect()
                    .await
                    .map_err(|e| Refusal::NoBackend(e.to_string()))?;
                let addr = routed.registration.backend().to_string();
                // the stream came through `Via::connect` (PROXY header); the login's TLS upgrade
                // needs the session's link, as on its first backend
                let mut b = Backend::from_stream(addr.clone(), routed.backend);
                b.link = link.clone();
                let restored = async {
                    b.login(&response, negotiated, &secret)
                        .await
                        .map_err(|e| format!("login: {e}"))?;
                    session::restore(&mut b, session, snap, negotiated)
                        .await
                        .map_err(|e| e.to_string())
                }
                .await;
                match restored {
                    Ok(restored) => Ok(Attached {
                        backend: b,
                        registration: routed.registration,
                        restored,
                    }),
                    Err(e) => {
                        reroute.suspect(&addr, format!("re-attach: {e}"));
                        Err(Refusal::Restore(format!("{addr}: {e}")))
                    }
                }
            };
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(Refusal::Timeout),
                Ok(Err(e @ Refusal::NoBackend(_))) => return Err(e),
                Ok(Err(e)) => last = e,
                Ok(Ok(a)) => return Ok(a),
            }
        }
        Err(last)
    }
}
