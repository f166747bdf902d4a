//! The router's side of a connection: the handle it keeps and the one message it sends.
//!
//! A connection is any actor that handles [`Redirect`]; the router holds only a
//! [`ConnHandle`] (id + recipient), so it never blocks on a connection and never owns one.

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

/// How the router reaches one registered connection.
#[derive(Clone)]
pub struct ConnHandle {
    id: u64,
    redirect: Recipient<Redirect>,
}

impl ConnHandle {
    /// A handle for connection `id` that receives redirects at `redirect`.
    ///
    /// `id` must be unique among the connections of one router.
    pub fn new(id: u64, redirect: Recipient<Redirect>) -> Self {
        Self { id, redirect }
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
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandle").field("id", &self.id).finish()
    }
}
