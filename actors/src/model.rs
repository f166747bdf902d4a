//! The backend model: what the router and the observer know about one backend.
//!
//! These are plain values that cross actor borders inside messages. The one shared piece is
//! [`BackendInst`]: a handle a connection keeps while it lives, whose health flag the router flips
//! with an atomic store, so a connection can ask "is my backend still good?" without a message or
//! a lock.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The health of a backend as the observer last saw it.
///
/// Each status carries a score; the router adds it to the backend's connection score, so a
/// backend that is slow or short of memory is chosen only when the healthy ones are much busier,
/// and a backend that is down or has an outdated schema is never chosen.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum BackendStatus {
    /// Serving normally.
    #[default]
    Healthy,
    /// The health check could not reach it (or it was removed from discovery).
    CannotConnect,
    /// Reachable but short of memory.
    MemoryHigh,
    /// Reachable but slow to answer.
    RunSlow,
    /// Reachable but its schema lags the cluster's; routing there would give stale results.
    SchemaOutdated,
}

impl BackendStatus {
    /// The score this status adds to a backend. Large enough for `CannotConnect` and
    /// `SchemaOutdated` that no connection count can make them look idle.
    pub fn score(self) -> i64 {
        match self {
            BackendStatus::Healthy => 0,
            BackendStatus::CannotConnect | BackendStatus::SchemaOutdated => 10_000_000,
            BackendStatus::MemoryHigh | BackendStatus::RunSlow => 5_000,
        }
    }

    /// Whether the router may hand new connections to a backend in this status.
    pub fn routable(self) -> bool {
        !matches!(
            self,
            BackendStatus::CannotConnect | BackendStatus::SchemaOutdated
        )
    }

    /// The name users see in logs and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendStatus::Healthy => "healthy",
            BackendStatus::CannotConnect => "down",
            BackendStatus::MemoryHigh => "memory high",
            BackendStatus::RunSlow => "run slow",
            BackendStatus::SchemaOutdated => "schema outdated",
        }
    }
}

impl fmt::Display for BackendStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One health-check result: the status, why it is not healthy, and the version the server
/// announced in its greeting (the service shows it to clients).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendHealth {
    /// The status the check concluded.
    pub status: BackendStatus,
    /// Why the check failed, kept so the log can say it once when the status changes.
    pub ping_err: Option<String>,
    /// The server version from the backend's handshake, empty when unknown.
    pub server_version: String,
}

impl BackendHealth {
    /// A healthy result with no version known.
    pub fn healthy() -> Self {
        Self::default()
    }

    /// A healthy result that announces `version`.
    pub fn healthy_with_version(version: impl Into<String>) -> Self {
        Self {
            server_version: version.into(),
            ..Self::default()
        }
    }

    /// A `CannotConnect` result with its reason.
    pub fn down(reason: impl Into<String>) -> Self {
        Self {
            status: BackendStatus::CannotConnect,
            ping_err: Some(reason.into()),
            server_version: String::new(),
        }
    }
}

impl fmt::Display for BackendHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "status: {}", self.status)?;
        if let Some(err) = &self.ping_err {
            write!(f, ", err: {err}")?;
        }
        Ok(())
    }
}

/// What discovery knows about a backend besides its SQL address.
///
/// An empty `ip` means no status port is known, and the health check skips the HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BackendInfo {
    /// Host of the status (HTTP) port.
    pub ip: String,
    /// The status (HTTP) port.
    pub status_port: u16,
}

#[derive(Debug)]
struct InstInner {
    addr: String,
    healthy: AtomicBool,
}

/// A cheap, clonable handle to one backend.
///
/// The router hands one out on every route and keeps a clone; when the backend's status changes
/// the router stores the new flag, and every holder sees it on its next `healthy()` call.
#[derive(Debug, Clone)]
pub struct BackendInst {
    inner: Arc<InstInner>,
}

impl BackendInst {
    /// A new handle for `addr` with the given initial health.
    pub fn new(addr: impl Into<String>, healthy: bool) -> Self {
        Self {
            inner: Arc::new(InstInner {
                addr: addr.into(),
                healthy: AtomicBool::new(healthy),
            }),
        }
    }

    /// The backend's SQL address (`host:port`).
    pub fn addr(&self) -> &str {
        &self.inner.addr
    }

    /// Whether the router currently considers this backend routable.
    pub fn healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Acquire)
    }

    /// Updates the flag every clone sees. Only the router (the owner of the truth) calls this.
    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.inner.healthy.store(healthy, Ordering::Release);
    }
}

impl PartialEq for BackendInst {
    fn eq(&self, other: &Self) -> bool {
        self.addr() == other.addr()
    }
}

impl Eq for BackendInst {}

/// A point-in-time view of one backend, for dashboards, tests and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSnapshot {
    /// SQL address.
    pub addr: String,
    /// Last known health.
    pub health: BackendHealth,
    /// Status score + conn score: larger is busier.
    pub score: i64,
    /// Connections registered on it.
    pub conn_count: usize,
    /// Conn score: connections + pending routes + incoming redirects − outgoing redirects.
    pub conn_score: i64,
    /// A connection reported it failing (`BackendSuspect`) since the last health report: it takes
    /// no new routes until the health check clears or confirms it.
    pub suspect: bool,
}
