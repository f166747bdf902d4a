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
//!
//! ## Health checks and discovery
//!
//! [`DefaultHealthCheck`] probes a backend's HTTP status port (when discovery knows one), then its
//! SQL port, taking the server version from the MySQL greeting; each step has a timeout and
//! bounded retries, and a whole check a hard time bound. [`EtcdFetcher`] reads TiDB's topology
//! (`/topology/tidb/<host:port>/{info,ttl}`) from etcd 3.4+ over etcd's v3 JSON gateway, fails
//! over between endpoints and gives up with a [`FetchError`] after a bounded back-off. `fall` and
//! `rise` in [`HealthCheckConfig`] hold a status change back until several checks in a row agree.
//! Settings and trade-offs: `docs/health-and-discovery.md` in the repository.
//!
//! ## Embedding
//!
//! Start a router with its observer, then let each connection pick a backend through a
//! [`BackendSelector`] and register itself so the router can move it later:
//!
//! ```no_run
//! use actix::prelude::*;
//! use switchyard::*;
//!
//! /// A connection of your application. This one cannot move, so it refuses redirects.
//! struct MyConn {
//!     id: u64,
//!     backend: String,
//!     router: Addr<ScoreRouter>,
//! }
//!
//! impl Actor for MyConn {
//!     type Context = Context<Self>;
//! }
//!
//! impl Handler<Redirect> for MyConn {
//!     type Result = ();
//!     fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
//!         self.router.do_send(RedirectFailed {
//!             from: self.backend.clone(),
//!             to: msg.to.addr().to_string(),
//!             conn_id: self.id,
//!         });
//!     }
//! }
//!
//! #[actix::main]
//! async fn main() {
//!     let health = HealthCheckConfig::default();
//!     let router = ScoreRouter::start_observed(
//!         RouterConfig::default(),
//!         StaticFetcher::new(vec!["127.0.0.1:4000".into(), "127.0.0.1:4001".into()]),
//!         DefaultHealthCheck::new(health.clone()),
//!         health,
//!     );
//!     let mut selector = BackendSelector::new(&router);
//!     let backend = selector.next().await.expect("a healthy backend");
//!     // ... connect to backend.addr(); on failure call selector.finish(None) and try next() ...
//!     let conn = MyConn { id: 1, backend: backend.addr().to_string(), router: router.clone() };
//!     let addr = conn.start();
//!     selector.finish(Some(ConnHandle::new(1, addr.recipient())));
//!     // When the connection ends:
//!     router.do_send(ConnClosed { addr: backend.addr().to_string(), conn_id: 1 });
//! }
//! ```

mod conn;
mod default_check;
mod discovery;
mod error;
mod etcd;
mod health;
mod model;
mod observation;
mod observer;
mod router;
mod selector;
mod static_router;

pub use conn::{ConnHandle, Redirect};
pub use default_check::DefaultHealthCheck;
pub use discovery::{BackendFetcher, StaticFetcher};
pub use error::{FetchError, InvariantError, ObserveError, RouteError, RouterError};
pub use etcd::{EtcdConfig, EtcdFetcher, TOPOLOGY_PREFIX};
pub use health::{HealthCheck, HealthCheckConfig, Probe};
pub use model::{BackendHealth, BackendInfo, BackendInst, BackendSnapshot, BackendStatus};
pub use observation::{BackendsChanged, GetObserved, Refresh, StopObserver};
pub use observer::BackendObserver;
pub use router::{
    CheckInvariants, ConnClosed, ConnCount, ConnCreated, GetBackends, GetDrained, Rebalance,
    RedirectConnections, RedirectFailed, RedirectSucceeded, RefreshBackends, Route, RouterConfig,
    ScoreRouter, ServerVersion, SetDrained, StopRouter,
};
pub use selector::BackendSelector;
pub use static_router::StaticRouter;

/// The README's examples, compiled as doc tests so the embedding example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
