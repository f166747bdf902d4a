//! Typed errors at the library's borders.
//!
//! Each is `Clone` because it travels inside messages: a fetch error is reported by the observer,
//! kept by the router and returned to every route until discovery works again.

use thiserror::Error;

use crate::model::BackendStatus;

/// Discovery could not produce a backend list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("fetch backend list: {msg}")]
pub struct FetchError {
    msg: String,
}

impl FetchError {
    /// A fetch error with a human-readable reason.
    pub fn new(msg: impl Into<String>) -> Self {
        Self { msg: msg.into() }
    }

    /// The reason, without the "fetch backend list" prefix.
    pub fn message(&self) -> &str {
        &self.msg
    }
}

/// Why the last observer cycle produced no backend list.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObserveError {
    /// Discovery failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
}

/// Why a route was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    /// No backend is routable (none known, all down, or all excluded).
    #[error("no available backend")]
    NoBackend,
    /// The last discovery failed, so the router will not guess.
    #[error("backend discovery failed: {0}")]
    Observe(#[from] ObserveError),
    /// The router actor is gone (stopped, or its system shut down).
    #[error("router is not running")]
    RouterGone,
    /// Every candidate backend holds `max_conns_per_backend` connections (the router queues
    /// such a route; this is what a caller of the synchronous core sees).
    #[error("every backend is at max_conns_per_backend")]
    AllFull,
    /// The route waited its whole `queue_timeout` for a backend with room.
    #[error("no backend had room within queue_timeout ({0:?})")]
    QueueTimeout(std::time::Duration),
    /// The wait queue already holds `queue_limit` routes.
    #[error("every backend is at max_conns_per_backend and the wait queue is full")]
    QueueFull,
}

impl RouteError {
    /// The router is at its limits (the proxy's "too many connections"), rather than out of
    /// backends.
    pub fn is_overload(&self) -> bool {
        matches!(
            self,
            RouteError::AllFull | RouteError::QueueTimeout(_) | RouteError::QueueFull
        )
    }
}

/// Errors of router-wide operations such as [`crate::RedirectConnections`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouterError {
    /// The router actor is gone.
    #[error("router is not running")]
    RouterGone,
    /// The named backend is not known to the router.
    #[error("unknown backend {0}")]
    UnknownBackend(String),
}

/// A broken invariant of the router's tables: which one, and the numbers that disagree.
///
/// It is never expected: [`crate::CheckInvariants`] returns it so tests can check after every
/// step, and a debug build checks after every message and panics with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvariantError {
    /// A registered connection names a backend the router does not know.
    #[error("conn {conn_id} is on backend {backend}, which the router does not know")]
    ConnOnUnknownBackend {
        /// The connection.
        conn_id: u64,
        /// The backend it names.
        backend: String,
    },
    /// A registered connection is missing from its backend's list.
    #[error("conn {conn_id} is missing from the list of backend {backend}")]
    ConnNotListed {
        /// The connection.
        conn_id: u64,
        /// Its backend.
        backend: String,
    },
    /// A connection is redirecting to a backend the router does not know.
    #[error("conn {conn_id} is redirecting to backend {to}, which the router does not know")]
    RedirectToUnknownBackend {
        /// The connection.
        conn_id: u64,
        /// The redirect's target.
        to: String,
    },
    /// More routes were finished on a backend than were handed out.
    #[error("backend {backend}: pending routes {pending} < 0")]
    NegativePending {
        /// The backend.
        backend: String,
        /// Its pending count.
        pending: i64,
    },
    /// A backend's redirect counters differ from what its connections' phases add up to.
    #[error(
        "backend {backend}: incoming/outgoing {incoming}/{outgoing} \
         but its connections say {counted_incoming}/{counted_outgoing}"
    )]
    RedirectCounts {
        /// The backend.
        backend: String,
        /// Its counter of redirects heading to it.
        incoming: i64,
        /// Its counter of redirects leaving it.
        outgoing: i64,
        /// Connections redirecting to it.
        counted_incoming: i64,
        /// Its connections that are redirecting elsewhere.
        counted_outgoing: i64,
    },
    /// The health flag connections read disagrees with the backend's status.
    #[error(
        "backend {backend}: its handle says healthy = {handle_healthy}, its status is {status}"
    )]
    HandleHealth {
        /// The backend.
        backend: String,
        /// What [`crate::BackendInst::healthy`] returns.
        handle_healthy: bool,
        /// Its status.
        status: BackendStatus,
    },
    /// A backend's slot in the score index belongs to another backend (or to none).
    #[error("backend {backend}: slot {slot} names another backend")]
    SlotNamesAnother {
        /// The backend.
        backend: String,
        /// Its slot number.
        slot: u32,
    },
    /// The backends list a different number of connections than are registered.
    #[error("{listed} connections listed on backends, {registered} registered")]
    ConnCount {
        /// Connections in the backends' lists.
        listed: usize,
        /// Connections in the connection table.
        registered: usize,
    },
    /// The ordering of routable backends is out of step with their scores.
    #[error("routable ordering out of step: {indexed} entries, the backends make {expected}")]
    RoutableIndex {
        /// Entries in the ordering.
        indexed: usize,
        /// Entries the backends' current scores make.
        expected: usize,
    },
    /// The ordering of backends with connections is out of step with their scores.
    #[error("loaded ordering out of step: {indexed} entries, the backends make {expected}")]
    LoadedIndex {
        /// Entries in the ordering.
        indexed: usize,
        /// Entries the backends' current scores make.
        expected: usize,
    },
}
