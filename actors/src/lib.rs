//! # switchyard — the embeddable actor system
//!
//! A connection router for database proxies, as actix actors that talk only in typed messages:
//!
//! - [`BackendObserver`] fetches the backend list ([`BackendFetcher`]), checks each backend
//!   ([`HealthCheck`]) and reports changes as [`BackendsChanged`];
//! - [`ScoreRouter`] keeps every backend's score (status + connections) and every connection's
//!   place, answers [`Route`]s with the least-loaded healthy backend, and rebalances by sending
//!   [`Redirect`] to connections on busy, failing or drained backends;
//! - a connection (your actor) uses a [`BackendSelector`] to pick a backend, registers with a
//!   [`ConnHandle`], and answers each [`Redirect`] with [`RedirectSucceeded`],
//!   [`RedirectFailed`] or [`ConnClosed`].
//!
//! Nothing is shared behind a lock; the one shared value is the health flag inside
//! [`BackendInst`], an atomic the router stores and connections read.

mod conn;
mod default_check;
mod discovery;
mod error;
mod etcd;
mod health;
mod model;
mod observer;
mod router;
mod selector;
mod static_router;

pub use conn::{ConnHandle, Redirect};
pub use default_check::DefaultHealthCheck;
pub use discovery::{BackendFetcher, StaticFetcher};
pub use error::{FetchError, ObserveError, RouteError, RouterError};
pub use etcd::EtcdFetcher;
pub use health::{HealthCheck, HealthCheckConfig, Probe};
pub use model::{BackendHealth, BackendInfo, BackendInst, BackendSnapshot, BackendStatus};
pub use observer::{BackendObserver, Refresh, StopObserver};
pub use router::{
    BackendsChanged, CheckInvariants, ConnClosed, ConnCount, ConnCreated, GetBackends, GetDrained,
    Rebalance, RedirectConnections, RedirectFailed, RedirectSucceeded, RefreshBackends, Route,
    RouterConfig, ScoreRouter, ServerVersion, SetDrained, StopRouter,
};
pub use selector::BackendSelector;
pub use static_router::StaticRouter;
