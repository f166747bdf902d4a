//! The router's side of a connection: the handle it keeps and the messages it sends.
//!
//! A connection is any actor that handles [`Redirect`] (and, to be closable by a drain's
//! timeout, [`CloseConnection`]); the router holds only a [`ConnHandle`] (id + recipients), so
//! it never blocks on a connection and never owns one.

use actix::prelude::*;

use crate::model::BackendInst;

/// "Move yourself to `to` when you safely can."
///
/// The connection answers later with exactly one of [`crate::RedirectSucceeded`],
/// [`crate::RedirectFailed`] or, if it ends first, [`crate::ConnClosed`], sent to the router it
/// registered with.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct Redirect {
    /// The backend to move to.
    pub to: BackendInst,
}

/// "Close yourself": you are still on a backend whose drain timeout has passed
/// (`SetDrained` with `close_after`). A connection that can keep a session boundary closes at its
/// next safe point, telling its client `reason` (the mysql proxy sends an ERR packet); one that
/// cannot (raw tcp) closes at once. It ends like any connection: `ConnClosed` follows.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct CloseConnection {
    /// Why, for the client and the log.
    pub reason: String,
}

/// How the router reaches one registered connection.
#[derive(Clone)]
pub struct ConnHandle {
    id: u64,
    redirect: Recipient<Redirect>,
    close: Option<Recipient<CloseConnection>>,
}

impl ConnHandle {
    /// A handle for connection `id` that receives redirects at `redirect`.
    ///
    /// `id` must be unique among the connections of one router.
    pub fn new(id: u64, redirect: Recipient<Redirect>) -> Self {
        Self {
            id,
            redirect,
            close: None,
        }
    }

    /// The same handle, closable: a drain's timeout sends [`CloseConnection`] to `close`.
    /// Without it, a drain can move the connection but never close it.
    pub fn with_close(mut self, close: Recipient<CloseConnection>) -> Self {
        self.close = Some(close);
        self
    }

    /// The connection's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Sends a redirect without waiting. `Full` means the connection is swamped (the router
    /// counts a failed redirect); `Closed` means its actor is gone and will never answer.
    pub(crate) fn try_redirect(&self, to: BackendInst) -> Result<(), SendError<Redirect>> {
        self.redirect.try_send(Redirect { to })
    }

    /// Asks the connection to close; `Closed` also when it has no close recipient.
    pub(crate) fn try_close(&self, reason: &str) -> Result<(), SendError<CloseConnection>> {
        let msg = CloseConnection {
            reason: reason.to_string(),
        };
        match &self.close {
            Some(r) => r.try_send(msg),
            None => Err(SendError::Closed(msg)),
        }
    }

    /// Whether a drain's timeout can close it.
    pub fn closable(&self) -> bool {
        self.close.is_some()
    }
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").field("id", &self.id).finish()
    }
}
