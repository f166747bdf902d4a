//! Safe points and moves: between two commands the relay closes a draining session, or carries
//! the session to the backend a redirect named — or says why it cannot.
//!
//! A move logs in to the target while the old backend reports the session's state (the two run
//! side by side), restores and verifies that state on the target in one round trip, then swaps
//! backends. Any failure leaves the session where it was, except a broken old backend, which
//! ends it.

use std::time::Duration;

use switchyard::wire::{cmd, put_packet, HandshakeError, NativeSecret};
use switchyard::BackendInst;
use tokio::time::Instant;
use tracing::{debug, info};

use super::{backend_err, End, Relay};
use crate::mysql::backend::{Backend, QueryError};
use crate::mysql::session::{self, Blocker, StateError};

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
    /// The target side took longer than `mysql.move_timeout`.
    #[error("move timed out")]
    Timeout,
}

impl Relay {
    /// Between two commands: closes a draining session, or moves to a pending redirect's
    /// target when the session allows it.
    pub(super) async fn at_safe_point(&mut self) -> Result<(), End> {
        let blocker = self.session.blocker();
        if self.closing && !matches!(blocker, Some(Blocker::Wait(_))) {
            return Err(End::Drained);
        }
        let Some(to) = self.pending.take() else {
            return Ok(());
        };
        match self.movable(to, blocker) {
            Some((to, secret)) => self.move_to(to, secret).await,
            None => Ok(()),
        }
    }

    /// The redirect's target and the secret to log in there with, when the session can move
    /// now. Otherwise the redirect waits (a transaction) or is refused, and `None`.
    fn movable(
        &mut self,
        to: BackendInst,
        blocker: Option<Blocker>,
    ) -> Option<(BackendInst, NativeSecret)> {
        match blocker {
            Some(Blocker::Wait(why)) => {
                debug!(conn_id = self.id, to = %to.addr(), why, "redirect waits for a safe point");
                self.pending = Some(to);
                return None;
            }
            Some(Blocker::Refuse(why)) => {
                self.failed(&to, why);
                return None;
            }
            None => {}
        }
        let Some(login) = self.login.as_ref() else {
            self.failed(&to, "not logged in");
            return None;
        };
        let Some(secret) = login.secret else {
            self.failed(&to, "user has no usable entry in mysql.users");
            return None;
        };
        Some((to, secret))
    }

    /// Moves to `to` and reports the outcome to the router.
    async fn move_to(&mut self, to: BackendInst, secret: NativeSecret) -> Result<(), End> {
        let started = Instant::now();
        match self.migrate(&to, secret).await {
            Ok(target) => {
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
                self.failed(&to, &e.to_string());
                Ok(())
            }
        }
    }

    /// Moves the session to `to`: logs in there while the old backend reports the session's
    /// state (the two run side by side), then restores and verifies the state on the target in
    /// one round trip. Returns the target; the old backend is left for the caller to close.
    async fn migrate(
        &mut self,
        to: &BackendInst,
        secret: NativeSecret,
    ) -> Result<Backend, MoveError> {
        let login = self.login.as_ref().ok_or(MoveError::NotLoggedIn)?;
        let (response, negotiated) = (login.response.clone(), login.negotiated);
        let limit = self.cfg.move_timeout;
        let connect_timeout = self.cfg.connect_timeout;
        let addr = to.addr().to_string();
        let target = bounded(limit, async {
            let mut b = Backend::connect(&addr, connect_timeout)
                .await
                .map_err(MoveError::Connect)?;
            b.login(&response, negotiated, &secret)
                .await
                .map_err(MoveError::Login)?;
            Ok(b)
        });
        // both run to completion: the snapshot must never stop halfway through the old
        // backend's answers
        let (target, snap) = tokio::join!(
            target,
            session::snapshot(&mut self.backend, &mut self.session)
        );
        let snap = snap.map_err(|e| match e {
            StateError::Query {
                source: e @ (QueryError::Packet(_) | QueryError::Shape(_)),
                ..
            } => MoveError::OldBackend(e),
            e => MoveError::State(e),
        })?;
        let mut target = target?;
        let session = &self.session;
        let ids = bounded(limit, async {
            session::restore(&mut target, session, &snap, negotiated)
                .await
                .map_err(MoveError::State)
        })
        .await?;
        self.session.moved(snap, &ids);
        Ok(target)
    }
}

/// `fut`, or [`MoveError::Timeout`] after `limit`.
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
