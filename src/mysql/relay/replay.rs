//! Transaction replay: the relay's side of the transaction log ([`TxLog`]). Each command of an
//! open transaction is recorded with a checksum of its answer; when the backend is lost
//! mid-transaction the session re-attaches with the state the transaction began from, runs the
//! log again on the new backend, and goes on only if every answer is the same — otherwise the
//! new backend's transaction is rolled back and the client gets the rollback error.
//!
//! Why that is sound: the replay is a new transaction running the same statements later. When
//! every answer the client received is identical, the client cannot tell it from a transaction
//! that ran entirely at that later time, so nothing it saw or will commit is wrong. A `COMMIT`
//! is never in the log (the log ends with the transaction), and one lost in flight is never run
//! again (`failover`).

use switchyard::wire::{cmd, put_packet, status, PacketError};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::loss::{Attached, Refusal, Unreplayed};
use super::moves::quit;
use super::{BackendError, Relay};
use crate::mysql::backend::Backend;
use crate::mysql::session::stmts::write_id;
use crate::mysql::session::txlog::{self, After, AnswerSum, Class, Entry, NotReplayable, Start};
use crate::mysql::session::{readonly, Pin};
use crate::mysql::tracker::{Kind, Next, Tracker};

/// Why a transaction's log cannot start from the state the session is in.
const STATE_NOT_EXACT: &str =
    "the session's state was not exactly known when the transaction began";
const STATE_REFUSED: &str = "the session's state could not be read when the transaction began";
const ONE_SHOT: &str = "a one-shot SET TRANSACTION applied to the transaction";
const UNVERIFIED: &str = "a failed statement may have begun the transaction earlier";
const NO_LOGIN: &str = "the proxy cannot log in as the session's user elsewhere";
const HELD: &str = "the session held state a re-attach cannot carry (a lock, a temporary table, …)";
const XA: &str = "an XA transaction";
/// Why a command's answer makes its transaction unreplayable.
const LOCAL_INFILE: &str = "LOAD DATA LOCAL INFILE";
/// How long the rollback of a failed replay may take at most, when the deadline leaves less.
const ROLLBACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// `switchyard_failover_replayed_total` results.
const OK: &str = "ok";
const MISMATCH: &str = "mismatch";
const OVERFLOW: &str = "overflow";
const TIMEOUT: &str = "timeout";

/// How a replayed log ended short of its end.
#[derive(Debug)]
enum RunError {
    /// Command `at` got another answer; `clean`: the backend waits for the next command (a
    /// `ROLLBACK` can be sent), otherwise it is mid-exchange and is only closed.
    Diverged { at: usize, clean: bool },
    /// The backend failed.
    Broken(BackendError),
}

impl Relay {
    /// Before a command is forwarded (its statement id mapped): starts recording it when the
    /// transaction log wants it — inside a replayable transaction, or when a transaction may
    /// begin with it. `client_stmt`: an execute's client statement id; `begins`: the scan saw a
    /// transaction statement in a query. Costs a few flag tests otherwise.
    pub(super) fn record_command(
        &mut self,
        payload: &[u8],
        continued: bool,
        client_stmt: Option<u32>,
        begins: bool,
        may_commit: bool,
    ) {
        if !self.txlog.enabled() {
            return;
        }
        self.txlog.forget_current();
        if txlog::classify(payload, continued) != Class::Logged {
            return;
        }
        let open = self.txlog.is_open();
        let start = if open && !may_commit {
            if !self.txlog.replayable() {
                return;
            }
            None
        } else {
            // a transaction may begin with it: one `BEGIN`, or (autocommit off, no transaction
            // open) any statement that commits nothing
            let lone_begin = begins
                && payload.first() == Some(&cmd::QUERY)
                && readonly::begins_transaction(payload.get(1..).unwrap_or_default());
            let implicit = !open && !self.session.autocommit() && !may_commit;
            if !lone_begin && !implicit {
                return;
            }
            Some(self.start_state(open))
        };
        let kept = match client_stmt {
            Some(id) => self.session.replay_payload(id, payload),
            None => payload.to_vec(),
        };
        self.txlog.record(kept, start);
    }

    /// The state a transaction beginning with the next command begins from, when it is exactly
    /// known and nothing else decides the transaction's course; `open`: a transaction is open
    /// now (the command ends it first).
    fn start_state(&self, open: bool) -> Start {
        if self.refresh_refused.is_some() {
            return Err(STATE_REFUSED);
        }
        if self.credentials().is_err() {
            return Err(NO_LOGIN);
        }
        if self.session.one_shot_pending() {
            return Err(ONE_SHOT);
        }
        if !open && self.session.trx_unverified() {
            return Err(UNVERIFIED);
        }
        self.session.exact_state().cloned().ok_or(STATE_NOT_EXACT)
    }

    /// One packet of the answer to the command in flight (after the tracker saw it).
    pub(super) fn record_answer(&mut self, payload: &[u8]) {
        self.txlog.feed(payload, self.tracker.carrier);
    }

    /// The server asked for `LOCAL INFILE` data: the command cannot be replayed.
    pub(super) fn record_infile(&mut self) {
        self.txlog.refuse_current(LOCAL_INFILE);
    }

    /// After a command's answer (and the session's hook after it): the log follows the
    /// transaction the session is in now. `closed`: a `COM_STMT_CLOSE` of this client id.
    pub(super) fn settle_log(
        &mut self,
        payload: &[u8],
        continued: bool,
        may_commit: bool,
        closed: Option<u32>,
    ) {
        if !self.txlog.enabled() {
            return;
        }
        if let Some(id) = closed {
            self.txlog.closed_stmt(id);
        }
        let class = txlog::classify(payload, continued);
        let open = self.session.transaction_open();
        let ends = class != Class::Harmless && may_commit;
        let opening = open && (ends || !self.txlog.is_open());
        let pinned = match opening {
            false => None,
            true => match self.session.held() {
                Some(Pin::Xa) => Some(XA),
                Some(_) => Some(HELD),
                None => (!self.session.named_locks().is_empty()).then_some(HELD),
            },
        };
        self.txlog.settle(After {
            open,
            ends,
            class,
            len: payload.len(),
            pinned,
        });
        if let (true, Some(why)) = (opening, self.txlog.refused()) {
            debug!(conn_id = self.id, why = %why, "transaction began; it cannot be replayed");
        }
    }

    /// The backend was lost inside a transaction: re-attaches with the state the transaction
    /// began from, runs its log on the new backend and compares every answer, all within
    /// `failover.timeout`. On a match the new backend is the session's, in the transaction, and
    /// the command lost in flight (`in_flight`) is returned to run again there. Otherwise the new
    /// backend's transaction is rolled back and dropped; the caller re-attaches the session
    /// outside a transaction and the client gets the rollback error.
    pub(super) async fn replay_transaction(
        &mut self,
        in_flight: bool,
    ) -> Result<Option<Vec<u8>>, Unreplayed> {
        let replay = match self.txlog.take_for_replay(in_flight) {
            Ok(r) => r,
            Err(e) => {
                if e == NotReplayable::Overflow {
                    crate::metrics::failover_replayed(OVERFLOW);
                }
                info!(conn_id = self.id, reason = %e, bytes = self.txlog.bytes(), "transaction lost with its backend is not replayed");
                return Err(Unreplayed::Not(e));
            }
        };
        let started = Instant::now();
        let deadline = started + self.cfg.failover.timeout;
        let negotiated = self.credentials().map_err(Unreplayed::Refused)?.1;
        let unverified = self.session.trx_unverified();
        let Attached {
            mut backend,
            registration,
            restored,
        } = self
            .attach(replay.start(), deadline)
            .await
            .map_err(|refusal| match refusal {
                Refusal::Timeout => {
                    crate::metrics::failover_replayed(TIMEOUT);
                    Unreplayed::Failed(TIMEOUT)
                }
                refusal => Unreplayed::Refused(refusal),
            })?;
        let run = run_log(&mut backend, replay.entries(), &restored.ids, negotiated);
        let failed = match tokio::time::timeout_at(deadline, run).await {
            Ok(Ok(flags)) => match flags {
                Some(f) if f & (status::IN_TRANS | status::IN_TRANS_READONLY) == 0 => {
                    // every answer matched, yet the server has no transaction open
                    Err(RunError::Diverged {
                        at: replay.entries().len(),
                        clean: true,
                    })
                }
                flags => Ok(flags),
            },
            Ok(Err(e)) => Err(e),
            Err(_) => {
                self.kill_stuck(&backend);
                crate::metrics::failover_replayed(TIMEOUT);
                warn!(conn_id = self.id, backend = %backend.addr, entries = replay.entries().len(), "transaction replay took longer than failover.timeout; rolled back");
                return Err(Unreplayed::Failed(TIMEOUT));
            }
        };
        match failed {
            Ok(flags) => {
                let snap = replay.start().clone();
                self.session.moved(snap, &restored.ids, restored.tracking);
                self.session.replayed(flags, unverified);
                crate::metrics::failover_replayed(OK);
                crate::metrics::failover_reattached();
                info!(conn_id = self.id, to = %backend.addr, entries = replay.entries().len(), bytes = replay.bytes(), took_ms = started.elapsed().as_millis() as u64, "transaction replayed; every answer matched");
                self.backend = backend;
                self.link = Some(registration);
                let mut replay = replay;
                let rerun = replay.rerun.take();
                self.txlog.resume(replay);
                Ok(rerun)
            }
            Err(RunError::Diverged { at, clean }) => {
                if clean {
                    rollback(&mut backend, deadline).await;
                }
                quit(backend);
                crate::metrics::failover_replayed(MISMATCH);
                info!(
                    conn_id = self.id,
                    at,
                    entries = replay.entries().len(),
                    "transaction replay got another answer; rolled back"
                );
                Err(Unreplayed::Failed(MISMATCH))
            }
            Err(RunError::Broken(e)) => {
                self.reroute
                    .suspect(&backend.addr, format!("transaction replay: {e}"));
                warn!(conn_id = self.id, backend = %backend.addr, error = %e, "backend failed during a transaction replay");
                Err(Unreplayed::Broken(e.to_string()))
            }
        }
    }

    /// Ends a replay that is still running on `b` after the deadline (a lock wait, a slow
    /// statement): a `KILL` from a second session of the same user on the same server rolls
    /// its transaction back at once, rather than when the server notices the closed socket.
    /// Best effort, in the background, within `failover.timeout`.
    fn kill_stuck(&self, b: &Backend) {
        let Ok((response, negotiated, secret)) = self.credentials() else {
            return;
        };
        let (addr, thread, link) = (b.addr.clone(), b.thread_id, b.link.clone());
        let (connect, limit) = (self.cfg.connect_timeout, self.cfg.failover.timeout);
        let conn_id = self.id;
        actix::spawn(async move {
            let kill = async {
                let mut k = Backend::connect_like(&addr, connect, &link).await.ok()?;
                k.login(&response, negotiated, &secret).await.ok()?;
                let r = k.query(&format!("KILL CONNECTION {thread}")).await;
                quit(k);
                r.ok()
            };
            let killed = tokio::time::timeout(limit, kill).await.ok().flatten();
            debug!(conn_id, backend = %addr, thread, killed = killed.is_some(), "stuck transaction replay killed");
        });
    }
}

/// Rolls back the failed replay's transaction on `b` (bounded by `deadline`, or a second when
/// that has passed); the connection is closed after anyway, which rolls back too.
async fn rollback(b: &mut Backend, deadline: Instant) {
    let until = deadline.max(Instant::now() + ROLLBACK_TIMEOUT);
    let _ = tokio::time::timeout_at(until, b.query("ROLLBACK")).await;
}

/// Runs the log's commands on `b` one by one (binary statements under their new ids, `ids`:
/// client id → backend id), comparing each answer's checksum with the one the client received.
/// Returns the status flags after the last command (`None`: there was none).
async fn run_log(
    b: &mut Backend,
    entries: &[Entry],
    ids: &[(u32, u32)],
    negotiated: u32,
) -> Result<Option<u16>, RunError> {
    let mut flags = None;
    for (at, e) in entries.iter().enumerate() {
        let (kind, payload) = match e.payload.first().copied() {
            Some(cmd::STMT_EXECUTE) => {
                let Some(p) = for_backend(&e.payload, ids) else {
                    return Err(RunError::Diverged { at, clean: true });
                };
                (Kind::Execute, p)
            }
            _ => (Kind::Query, e.payload.clone()),
        };
        put_packet(&mut b.out, 0, &payload);
        b.flush()
            .await
            .map_err(|e| RunError::Broken(BackendError::Io(e)))?;
        let (sum, st) = answer_sum(b, kind, negotiated).await.map_err(|e| match e {
            AnswerError::Broken(e) => RunError::Broken(e),
            AnswerError::Infile => RunError::Diverged { at, clean: false },
        })?;
        if sum != e.checksum {
            return Err(RunError::Diverged { at, clean: true });
        }
        flags = Some(st);
    }
    Ok(flags)
}

/// An execute payload from the log with the backend's statement id in place of the client's;
/// `None` when the statement was not prepared again.
fn for_backend(payload: &[u8], ids: &[(u32, u32)]) -> Option<Vec<u8>> {
    let client = switchyard::wire::get_u32(payload, 1)?;
    let (_, backend) = ids.iter().find(|(c, _)| *c == client)?;
    let mut p = payload.to_vec();
    write_id(&mut p, *backend);
    Some(p)
}

/// Why an answer could not be read to its end.
enum AnswerError {
    /// The backend failed or broke the protocol.
    Broken(BackendError),
    /// The server asked for `LOCAL INFILE` data (the original answer did not).
    Infile,
}

/// Reads the answer to the command just sent, to its end: its checksum ([`AnswerSum`], as the
/// relay computed it for the client) and its last status flags.
async fn answer_sum(
    b: &mut Backend,
    kind: Kind,
    negotiated: u32,
) -> Result<(u64, u16), AnswerError> {
    let mut t = Tracker::new(negotiated);
    let mut next = t.start(kind, 0);
    let mut sum = AnswerSum::new();
    let broken = |e: PacketError| AnswerError::Broken(BackendError::Packet(e));
    while next == Next::Server {
        let f = b.reader.frame().await.map_err(broken)?;
        t.check_seq(&f).map_err(broken)?;
        next = t
            .on_server(&f)
            .map_err(|e| AnswerError::Broken(BackendError::Protocol(e)))?;
        sum.feed(f.payload(), t.carrier);
    }
    match next {
        Next::Done => Ok((sum.finish(), t.status)),
        _ => Err(AnswerError::Infile),
    }
}
