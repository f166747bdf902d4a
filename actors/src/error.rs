//! Typed errors at the library's borders.
//!
//! Each is `Clone` because it travels inside messages: a fetch error is reported by the observer,
//! kept by the router and returned to every route until discovery works again.

use thiserror::Error;

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
