//! # switchyard — the embeddable actor system
//!
//! A connection router for database proxies, as actix actors that talk only in typed messages:
//!
//! - [`BackendObserver`] fetches the backend list ([`BackendFetcher`]), checks each backend
//!   ([`HealthCheck`]) and reports changes as [`BackendsChanged`];
//! - [`ScoreRouter`] keeps every backend's score (status + connections) and every connection's
//!   place, answers [`Route`]s with the least-loaded healthy backend, and rebalances by sending
//!   [`Redirect`] to connections on busy, failing or drained backends;
//! - a connection (your actor) reaches a backend through a [`Connector`] (each healthy backend
//!   tried at most once, a failed connect reported and followed by a refresh), keeps the
//!   [`Registration`] it gets, and answers each [`Redirect`] through it with
//!   [`RedirectSucceeded`] or [`RedirectFailed`]; dropping the registration sends
//!   [`ConnClosed`], so a connection that ends any way, a panic included, leaves no count behind.
//!   [`BackendSelector`] is the lower-level step underneath: one route at a time.
//!
//! Operators steer routing with a [`RoutePolicy`] (`ScoreRouter::with_policy`): weights per
//! backend (from the fetcher, reported as [`BackendsListed`]), slow start, a per-backend cap with
//! a FIFO wait queue, panic mode when too few backends are healthy, a rebalance cooldown for
//! instances that share a pool through [`PeerLoad`], and [`DrainThenClose`], which closes
//! ([`CloseConnection`]) what has not moved off a drained backend in time.
//!
//! Nothing is shared behind a lock; the one shared value is the health flag inside
//! [`BackendInst`], an atomic the router stores and connections read.
//!
//! ## Health checks and discovery
//!
//! [`DefaultHealthCheck`] probes a backend's HTTP status port (when discovery knows one), then its
//! SQL port, taking the server version from the MySQL greeting (and going on over TLS when given
//! a rustls configuration: [`backend_tls`]); each step has a timeout and
//! bounded retries, and a whole check a hard time bound. [`EtcdFetcher`] reads TiDB's topology
//! (`/topology/tidb/<host:port>/{info,ttl}`) from etcd 3.4+ over etcd's v3 JSON gateway, fails
//! over between endpoints and gives up with a [`FetchError`] after a bounded back-off. `fall` and
//! `rise` in [`HealthCheckConfig`] hold a status change back until several checks in a row agree.
//! Settings and trade-offs: `docs/health-and-discovery.md` in the repository.
//!
//! ## Embedding
//!
//! Start a router with its observer, then let each connection reach a backend through a
//! [`Connector`], which registers it so the router can move it later:
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use actix::prelude::*;
//! use switchyard::*;
//!
//! /// A connection of your application. This one cannot move, so it refuses redirects.
//! struct MyConn {
//!     id: u64,
//!     router: Addr<ScoreRouter>,
//!     /// Set once connected; dropped with the actor, it tells the router the connection ended.
//!     registration: Option<Registration>,
//! }
//!
//! impl Actor for MyConn {
//!     type Context = Context<Self>;
//!
//!     fn started(&mut self, ctx: &mut Context<Self>) {
//!         let handle = ConnHandle::new(self.id, ctx.address().recipient());
//!         let connect = Connector::new(&self.router, Duration::from_secs(2))
//!             .connect(handle, |backend| {
//!                 tokio::net::TcpStream::connect(backend.addr().to_string())
//!             });
//!         ctx.wait(connect.into_actor(self).map(|connected, conn, ctx| match connected {
//!             Ok(c) => {
//!                 conn.registration = Some(c.registration);
//!                 // ... serve the client over c.conn, the backend socket ...
//!             }
//!             // names every backend tried and why it failed
//!             Err(_no_backend) => ctx.stop(),
//!         }));
//!     }
//! }
//!
//! impl Handler<Redirect> for MyConn {
//!     type Result = ();
//!     fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
//!         if let Some(registration) = &self.registration {
//!             registration.redirect_failed(msg.to.addr());
//!         }
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
//!     MyConn { id: 1, router, registration: None }.start();
//! }
//! ```

pub mod backend_tls;
mod conn;
mod connect;
mod default_check;
mod discovery;
mod error;
mod etcd;
mod etcd_client;
mod health;
mod model;
mod observation;
mod observer;
mod router;
mod selector;
mod static_router;
pub mod wire;

pub use conn::{CloseConnection, ConnHandle, Redirect};
pub use connect::{
    AttemptError, BoxError, ConnectError, ConnectFailure, Connected, Connector, Registration,
};
pub use default_check::DefaultHealthCheck;
pub use discovery::{BackendFetcher, StaticFetcher};
pub use error::{FetchError, InvariantError, ObserveError, RouteError, RouterError};
#[doc(hidden)]
pub use etcd::{fuzz_decode_range, fuzz_parse_info};
pub use etcd::{EtcdFetcher, TOPOLOGY_PREFIX};
pub use etcd_client::{EtcdClient, EtcdConfig, EtcdError, KeyValues};
pub use health::{HealthCheck, HealthCheckConfig, Probe};
pub use model::{BackendHealth, BackendInfo, BackendInst, BackendSnapshot, BackendStatus};
pub use observation::{BackendsChanged, BackendsListed, GetObserved, Refresh, StopObserver};
pub use observer::BackendObserver;
pub use router::{
    valid_weight, BackendSuspect, BackendWeight, CheckInvariants, ConnClosed, ConnCount,
    ConnCreated, DrainThenClose, GetBackends, GetDrained, GetRouting, PeerLoad, Rebalance,
    RedirectConnections, RedirectFailed, RedirectSucceeded, RefreshBackends, Route, RoutePolicy,
    RouterConfig, RoutingState, ScoreRouter, ServerVersion, SetDrained, StopRouter, COOLDOWN_LIMIT,
    COOLDOWN_PUBLISH_INTERVALS, SLOW_START_FLOOR,
};
pub use selector::BackendSelector;
pub use static_router::StaticRouter;

/// The README's examples, compiled as doc tests so the embedding example cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
