//! The messages [`crate::ScoreRouter`] handles, beside the actor that handles them.
//!
//! Connections and selectors send the routing and lifecycle events; operators and tests send the
//! rest. [`crate::StaticRouter`] answers the same routing ones, so a connection works with either.
//! The observer's report, [`crate::BackendsChanged`], lives in `observation`, shared with it.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;

use crate::conn::ConnHandle;
use crate::error::{InvariantError, RouteError, RouterError};
use crate::model::{BackendInst, BackendSnapshot};

/// Pick a backend for a new connection, skipping `excluded` (addresses already tried).
///
/// The chosen backend's conn score is raised by one at once, so routes that arrive before any
/// connection finishes still spread out; [`ConnCreated`] settles it.
#[derive(Debug, Clone, Default, Message)]
#[rtype(result = "Result<BackendInst, RouteError>")]
pub struct Route {
    /// Addresses not to return.
    pub excluded: Vec<String>,
}

/// The outcome of a route: `Some` = connected and registered, `None` = the connect failed.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ConnCreated {
    /// The backend the route returned.
    pub backend: String,
    /// The new connection, or `None` when connecting failed.
    pub conn: Option<ConnHandle>,
}

/// A connection finished moving from `from` to `to`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RedirectSucceeded {
    /// Where it was.
    pub from: String,
    /// Where it is now.
    pub to: String,
    /// Its id.
    pub conn_id: u64,
}

/// A connection could not move and stays on `from`.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct RedirectFailed {
    /// Where it stays.
    pub from: String,
    /// Where it was asked to go.
    pub to: String,
    /// Its id.
    pub conn_id: u64,
}

/// A connection ended (possibly mid-redirect).
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct ConnClosed {
    /// The backend it was on.
    pub addr: String,
    /// Its id.
    pub conn_id: u64,
}

/// A connection's passive report that `addr` failed under it: a connect refused or reset, or a
/// session that died mid-command or between commands.
///
/// The router stops routing to `addr` at once (passive outlier detection: the next health check
/// may be seconds away) and asks its observer for a cycle now. It is not a health verdict: the
/// observer's [`crate::BackendsChanged`] stays the one source of truth. A report naming the
/// backend ends the suspicion (down: the health takes over, and its `rise` brings the backend
/// back; healthy: it came back); `fall` + 1 clean reports that do not name it end it too — the
/// check saw the backend healthy, so the failure was the connection's alone. A backend the
/// router does not know, or knows as down already, is left as it is.
#[derive(Debug, Clone, Message)]
#[rtype(result = "()")]
pub struct BackendSuspect {
    /// The backend's SQL address.
    pub addr: String,
    /// What the connection saw, for the log.
    pub reason: String,
}

/// Ask the observer for a cycle now.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct RefreshBackends;

/// Ask every connection to redirect to the backend it is on (a testing aid: exercises the whole
/// move path without changing the balance).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), RouterError>")]
pub struct RedirectConnections;

/// Run one rebalance step now, moving at most `max_conns` connections.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Rebalance {
    /// Upper bound of connections asked to move.
    pub max_conns: usize,
}

/// Number of registered connections.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "usize")]
pub struct ConnCount;

/// The server version last announced by a healthy backend (empty when none yet).
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "String")]
pub struct ServerVersion;

/// Every backend, ascending by score.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<BackendSnapshot>")]
pub struct GetBackends;

/// Addresses of the backends an operator drained, sorted.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Vec<String>")]
pub struct GetDrained;

/// Drain (`true`) or undrain (`false`) a backend. A drained backend gets no new routes and its
/// connections are moved off by rebalance; it is kept while drained even if down and empty.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), RouterError>")]
pub struct SetDrained {
    /// The backend's SQL address.
    pub addr: String,
    /// Drain or undrain.
    pub drained: bool,
}

/// Stop the router. Under an [`actix::Supervisor`] it restarts with its tables intact;
/// otherwise it stops for good and stops its observer.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct StopRouter;

/// Check the router's internal invariants; `Err` names the first broken one and its numbers.
/// Tests send it after every step.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "Result<(), InvariantError>")]
pub struct CheckInvariants;

/// Drain `addr` (as [`SetDrained`] does) and, if connections are still on it once `timeout` has
/// passed, ask each to close ([`crate::CloseConnection`]): the operator's "drain, then close
/// what has not moved". Undraining, or draining it again, before then cancels the close.
#[derive(Debug, Clone, Message)]
#[rtype(result = "Result<(), RouterError>")]
pub struct DrainThenClose {
    /// The backend's SQL address.
    pub addr: String,
    /// How long its connections have to move or finish.
    pub timeout: Duration,
}

/// The router's routing controls as they stand: panic mode, the wait queue and every backend's
/// weight. For the admin API and metrics.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "RoutingState")]
pub struct GetRouting;

/// The answer to [`GetRouting`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoutingState {
    /// Fewer than `panic_threshold` of the known backends are healthy: routes go to every
    /// known, non-drained backend.
    pub panic: bool,
    /// Routes waiting for a backend with room.
    pub queue_len: usize,
    /// Every backend the router holds or its observer lists, sorted by address.
    pub backends: Vec<BackendWeight>,
}

/// One backend's weight as [`GetRouting`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendWeight {
    /// SQL address.
    pub addr: String,
    /// Its configured or discovered weight.
    pub weight: f64,
    /// The weight routes see now: lower than `weight` while it slow-starts.
    pub effective_weight: f64,
    /// Connections on it or on their way (what `max_conns_per_backend` caps).
    pub occupancy: i64,
}

/// The other instances of a cluster hold these connections, by backend address (the sum over
/// every live peer; the service's cluster membership sends it after each read of etcd).
///
/// Routing and rebalance then compare each backend's own load plus this, so new clients go
/// where the whole pool is idle. The router still moves only its own connections, and per new
/// view at most its own share of the excess (excess × own ÷ global), so several instances acting
/// on the same view do not move the excess several times over. An empty map means no peers
/// (or none holding anything): the router balances alone, as without a cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Message)]
#[rtype(result = "()")]
pub struct PeerLoad {
    /// Backend address → connections the peers hold on it.
    pub conns: HashMap<String, usize>,
}
