//! Safe points and moves: between two commands the relay closes a draining session, or carries
//! the session to the backend a redirect named — or says why it cannot.
//!
//! A move logs in to the target while the old backend reports the session's state (the two run
//! side by side), restores and verifies that state on the target in one round trip, then swaps
//! backends — all within `mysql.move_timeout`. Any failure leaves the session where it was,
//! except a broken old backend, which ends it. An old backend that does not answer the snapshot
//! in time fails the move at once (the router is never kept waiting), and keeps the session
//! only if it answers within one more `move_timeout`: its answers must be read to their end
//! before anything else can be relayed on it.

use switchyard::wire::{caps, cmd, code, put_packet, sqlstate, HandshakeError, NativeSecret};
use switchyard::BackendInst;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{backend_err, pinned, refused, BackendError, End, Relay};
use crate::mysql::backend::{Backend, QueryError};
use crate::mysql::session::{self, Pin, StateError};

/// Sequence id of the error that closes a session between commands: the answer to the command
/// the client sends (or already sent) next.
const CLOSING_ERR_SEQ: u8 = 1;

/// Why a move did not happen.
#[derive(Debug, thiserror::Error)]
enum MoveError {
    /// The session never finished its login.
    #[error("target: not logged in")]
    NotLoggedIn,
    /// The target did not accept a connection.
    #[error("target: connect: {0}")]
    Connect(#[source] std::io::Error),
    /// The target refused the session's user, or its capabilities differ.
    #[error("target: login: {0}")]
    Login(#[source] HandshakeError),
    /// The state could not be read, restored or verified.
    #[error("state: {0}")]
    State(#[source] StateError),
    /// The old backend broke while reporting the state: the session cannot go on there either.
    #[error("old backend: {0}")]
    OldBackend(#[source] QueryError),
    /// The move took longer than `mysql.move_timeout`.
    #[error("move timed out")]
    Timeout,
    /// The old backend did not answer the snapshot within `mysql.move_timeout`; the redirect
    /// was reported failed then. What became of the old backend after.
    #[error("old backend did not answer the snapshot in time")]
    Late(Late),
}

/// What an old backend that missed the move's deadline did within one more `move_timeout`.
#[derive(Debug)]
enum Late {
    /// It answered the snapshot to its end: the session goes on there.
    Recovered,
    /// It broke.
    Broke(QueryError),
    /// It still has not answered.
    Frozen,
}

/// The reason a redirect is refused with when the old backend misses the move's deadline.
const SNAPSHOT_LATE: &str = "old backend did not answer the snapshot within move_timeout";

impl Relay {
    /// Between two commands: closes a draining session, or moves to a pending redirect's
    /// target when the session allows it.
    pub(super) async fn at_safe_point(&mut self) -> Result<(), End> {
        if self.closing && self.session.trx_unverified() {
            // closing now would roll back a transaction a failed command may have begun
            self.verify_transaction().await?;
        }
        let blocker = self.session.blocker();
        if self.closing && !self.session.closing_waits() {
            if let Some(why) = self.close_error.take() {
                // between commands, as a server's own "connection was killed": sequence 0, read
                // by the client as the answer to its next command
                let msg = format!("switchyard: {why}");
                self.client
                    .send_err(0, code::ER_CONNECTION_KILLED, sqlstate::INTERRUPTED, &msg)
                    .await;
            }
            return Err(End::Drained);
        }
        let Some(to) = self.pending.take() else {
            return Ok(());
        };
        match self.movable(to, blocker) {
            // boxed: a move's futures are large and rare; inline they would size every session
            Some((to, secret)) => Box::pin(self.move_to(to, secret)).await,
            None => Ok(()),
        }
    }

    /// The redirect's target and the secret to log in there with, when the session can move
    /// now. Otherwise the redirect waits or is refused ([`Relay::hold`]), and `None`.
    fn movable(
        &mut self,
        to: BackendInst,
        blocker: Option<Pin>,
    ) -> Option<(BackendInst, NativeSecret)> {
        if let Some(pin) = blocker {
            self.hold(to, pin);
            return None;
        }
        let secret = match self.login.as_ref().map(|l| l.secret) {
            None => Err(Pin::NotLoggedIn),
            Some(None) => Err(Pin::UnknownUser),
            Some(Some(secret)) => Ok(secret),
        };
        match secret {
            Ok(secret) => Some((to, secret)),
            Err(pin) => {
                self.hold(to, pin);
                None
            }
        }
    }

    /// A redirect the session cannot follow now because of `pin`: kept for the next safe point
    /// when the state ends on its own (a transaction), refused otherwise (the router retries
    /// after its back-off). Each redirect counts its reason once.
    fn hold(&mut self, to: BackendInst, pin: Pin) {
        let detail = self.session.unknown_because();
        if pin.waits() {
            if self.waiting != Some(pin) {
                self.waiting = Some(pin);
                pinned(self.id, &to, pin, detail);
            }
            // logged at every look: the differential tester waits for this line
            debug!(conn_id = self.id, to = %to.addr(), reason = pin.label(), "redirect waits for a safe point");
            self.pending = Some(to);
            return;
        }
        self.waiting = None;
        pinned(self.id, &to, pin, detail);
        self.failed(&to, pin.label());
    }

    /// Moves to `to` and reports the outcome to the router.
    async fn move_to(&mut self, to: BackendInst, secret: NativeSecret) -> Result<(), End> {
        let started = Instant::now();
        match self.migrate(&to, secret).await {
            Ok(target) => {
                self.waiting = None;
                let old = std::mem::replace(&mut self.backend, target);
                crate::metrics::migration(true, started.elapsed());
                info!(conn_id = self.id, from = %old.addr, to = %self.backend.addr, took_ms = started.elapsed().as_millis() as u64, "session moved");
                if let Some(link) = &mut self.link {
                    link.redirect_succeeded(&self.backend.addr);
                }
                quit(old);
                Ok(())
            }
            Err(MoveError::OldBackend(e)) => {
                self.failed(&to, "old backend failed during snapshot");
                Err(backend_err(e))
            }
            Err(MoveError::State(StateError::InTransaction)) => {
                self.hold(to, Pin::InTransaction);
                Ok(())
            }
            Err(MoveError::State(StateError::LockHeld)) => {
                self.hold(to, Pin::UserLock);
                Ok(())
            }
            Err(MoveError::State(StateError::TooLarge)) => {
                self.hold(to, Pin::SnapshotTooLarge);
                Ok(())
            }
            Err(MoveError::Timeout) => {
                self.hold(to, Pin::MoveTimeout);
                Ok(())
            }
            // already reported when the deadline passed
            Err(MoveError::Late(Late::Recovered)) => {
                info!(conn_id = self.id, backend = %self.backend.addr, "old backend answered late; the session stays");
                Ok(())
            }
            Err(MoveError::Late(Late::Broke(e))) => Err(backend_err(e)),
            Err(MoveError::Late(Late::Frozen)) => {
                warn!(conn_id = self.id, backend = %self.backend.addr, "old backend stopped answering during a move; closing the session");
                self.client
                    .send_err(
                        CLOSING_ERR_SEQ,
                        code::ER_UNKNOWN_ERROR,
                        sqlstate::GENERAL,
                        "switchyard: the backend stopped answering; session closed",
                    )
                    .await;
                Err(backend_err(BackendError::Unresponsive))
            }
            Err(e) => {
                if matches!(e, MoveError::State(_)) {
                    // e.g. a digest that no longer matches the carried state: read it all next time
                    self.session.mark_changed();
                }
                self.failed(&to, &e.to_string());
                Ok(())
            }
        }
    }

    /// Moves the session to `to`: logs in there while the old backend reports the session's
    /// state (the two run side by side), then restores and verifies the state on the target in
    /// one round trip, all before `move_timeout` has passed. Returns the target; the old
    /// backend is left for the caller to close.
    async fn migrate(
        &mut self,
        to: &BackendInst,
        secret: NativeSecret,
    ) -> Result<Backend, MoveError> {
        let login = self.login.as_ref().ok_or(MoveError::NotLoggedIn)?;
        let (mut response, negotiated) = (login.response.clone(), login.negotiated);
        // the proxy's own session tracking, whatever the client asked
        response.caps |= caps::SESSION_TRACK;
        let limit = self.cfg.move_timeout;
        let deadline = Instant::now() + limit;
        let connect_timeout = self.cfg.connect_timeout;
        let addr = to.addr().to_string();
        let link = self.backend.link.clone();
        let target = within(deadline, async {
            let mut b = Backend::connect_like(&addr, connect_timeout, &link)
                .await
                .map_err(MoveError::Connect)?;
            b.login(&response, negotiated, &secret)
                .await
                .map_err(MoveError::Login)?;
            Ok(b)
        });
        let from = self.backend.addr.clone();
        let (target, snap) = {
            let snapshot =
                session::snapshot(&mut self.backend, &mut self.session, self.cfg.max_snapshot);
            tokio::pin!(snapshot);
            let (target, snap) =
                tokio::join!(target, tokio::time::timeout_at(deadline, &mut snapshot));
            let Ok(snap) = snap else {
                drop(target);
                // the router is told now; the session waits for the old backend a while
                // longer, since the snapshot must never stop halfway through its answers
                pinned(self.id, to, Pin::MoveTimeout, Some(SNAPSHOT_LATE));
                refused(&self.link, self.id, &from, to, SNAPSHOT_LATE);
                let late = match tokio::time::timeout(limit, &mut snapshot).await {
                    Err(_) => Late::Frozen,
                    Ok(r) => match r.map_err(snapshot_error) {
                        Err(MoveError::OldBackend(e)) => Late::Broke(e),
                        _ => Late::Recovered,
                    },
                };
                return Err(MoveError::Late(late));
            };
            (target, snap)
        };
        let snap = snap.map_err(snapshot_error)?;
        let mut target = target?;
        let session = &self.session;
        let restored = within(deadline, async {
            session::restore(&mut target, session, &snap, negotiated)
                .await
                .map_err(MoveError::State)
        })
        .await?;
        self.session.moved(snap, &restored.ids, restored.tracking);
        Ok(target)
    }
}

/// A snapshot failure: a broken old backend, or state that cannot be carried.
fn snapshot_error(e: StateError) -> MoveError {
    match e {
        StateError::Query {
            source: e @ (QueryError::Packet(_) | QueryError::Shape(_)),
            ..
        } => MoveError::OldBackend(e),
        e => MoveError::State(e),
    }
}

/// `fut`, or [`MoveError::Timeout`] at `deadline`.
async fn within<T>(
    deadline: Instant,
    fut: impl std::future::Future<Output = Result<T, MoveError>>,
) -> Result<T, MoveError> {
    tokio::time::timeout_at(deadline, fut)
        .await
        .map_err(|_| MoveError::Timeout)?
}

/// Says goodbye to a backend the session left.
pub(super) fn quit(mut old: Backend) {
    actix::spawn(async move {
        put_packet(&mut old.out, 0, &[cmd::QUIT]);
        let _ = old.flush().await;
    });
}
