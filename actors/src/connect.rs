//! Getting a new connection onto a backend, and keeping its registration honest until it ends.
//!
//! [`Connector`] is "route, connect, register" written once, for every kind of connection: it
//! tries each healthy backend at most once, through a [`BackendSelector`] and a caller-supplied
//! connect future under a timeout. A failed connect is reported (the route is taken back) and
//! asks the router to refresh its view, since the backend may be down before a health check
//! noticed. Success registers the connection and yields a [`Registration`]: the connection's
//! voice towards the router afterwards, whose `Drop` reports `ConnClosed`, so a connection that
//! ends any way at all, a panic included, leaves no accounting behind.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;
use thiserror::Error;
use tracing::debug;

use crate::conn::ConnHandle;
use crate::error::RouteError;
use crate::model::BackendInst;
use crate::selector::BackendSelector;
use crate::{ConnClosed, ConnCreated, RedirectFailed, RedirectSucceeded, RefreshBackends, Route};

/// Any error a caller's connect future may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why one connect attempt failed.
#[derive(Debug, Error)]
pub enum AttemptError {
    /// The connect did not finish within the connector's timeout.
    #[error("connect timed out after {0:?}")]
    TimedOut(Duration),
    /// The connect future returned an error.
    #[error(transparent)]
    Failed(BoxError),
}

/// One backend that could not be connected to, and why.
#[derive(Debug, Error)]
#[error("{backend}: {error}")]
pub struct ConnectFailure {
    /// The backend's address.
    pub backend: String,
    /// What went wrong.
    pub error: AttemptError,
}

/// Why a connection found no backend. Either way it names every backend tried and why it failed.
#[derive(Debug, Error)]
pub enum ConnectError {
    /// Every backend the router offered was tried once and failed.
    #[error("every backend failed: {}", Tried(.tried))]
    AllFailed {
        /// The backends tried, in order.
        tried: Vec<ConnectFailure>,
    },
    /// The router had no (more) backend to offer, or is gone.
    #[error("{source}{}", After(.tried))]
    Route {
        /// The backends tried before the route failed (often none).
        tried: Vec<ConnectFailure>,
        /// What the router said.
        source: RouteError,
    },
}

impl ConnectError {
    /// Every backend tried, in order, with why it failed.
    pub fn tried(&self) -> &[ConnectFailure] {
        match self {
            ConnectError::AllFailed { tried } | ConnectError::Route { tried, .. } => tried,
        }
    }
}

/// `a: why; b: why`.
struct Tried<'a>(&'a [ConnectFailure]);

impl fmt::Display for Tried<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, failure) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{failure}")?;
        }
        Ok(())
    }
}

/// ` (after a: why; b: why)`, or nothing when nothing was tried.
struct After<'a>(&'a [ConnectFailure]);

impl fmt::Display for After<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        write!(f, " (after {})", Tried(self.0))
    }
}

/// A connection that reached a backend and is registered on it.
pub struct Connected<T> {
    /// What the connect future returned (a socket, a client, …).
    pub conn: T,
    /// The backend it reached.
    pub backend: BackendInst,
    /// Its registration; dropping it reports `ConnClosed`.
    pub registration: Registration,
    /// Backends tried before, that failed (already reported to the router); for metrics.
    pub failures: Vec<ConnectFailure>,
}

/// The router's inboxes a registered connection reports to.
#[derive(Clone)]
struct Link {
    closed: Recipient<ConnClosed>,
    succeeded: Recipient<RedirectSucceeded>,
    failed: Recipient<RedirectFailed>,
}

impl Link {
    fn new<R>(router: &Addr<R>) -> Self
    where
        R: Actor + Handler<ConnClosed> + Handler<RedirectSucceeded> + Handler<RedirectFailed>,
        R::Context: ToEnvelope<R, ConnClosed>
            + ToEnvelope<R, RedirectSucceeded>
            + ToEnvelope<R, RedirectFailed>,
    {
        Self {
            closed: router.clone().recipient(),
            succeeded: router.clone().recipient(),
            failed: router.clone().recipient(),
        }
    }
}

/// Routes one new connection and connects it, trying each backend at most once.
///
/// Unlike [`BackendSelector::next`], which starts over once every candidate was returned, the
/// connector stops there: a client waits for at most one connect timeout per backend.
pub struct Connector {
    selector: BackendSelector,
    refresh: Recipient<RefreshBackends>,
    link: Link,
    timeout: Duration,
}

impl Connector {
    /// A connector routing through `router` ([`crate::ScoreRouter`] or
    /// [`crate::StaticRouter`]), giving each connect attempt `timeout`.
    pub fn new<R>(router: &Addr<R>, timeout: Duration) -> Self
    where
        R: Actor
            + Handler<Route>
            + Handler<ConnCreated>
            + Handler<RefreshBackends>
            + Handler<ConnClosed>
            + Handler<RedirectSucceeded>
            + Handler<RedirectFailed>,
        R::Context: ToEnvelope<R, Route>
            + ToEnvelope<R, ConnCreated>
            + ToEnvelope<R, RefreshBackends>
            + ToEnvelope<R, ConnClosed>
            + ToEnvelope<R, RedirectSucceeded>
            + ToEnvelope<R, RedirectFailed>,
    {
        Self {
            selector: BackendSelector::new(router),
            refresh: router.clone().recipient(),
            link: Link::new(router),
            timeout,
        }
    }

    /// Connects with `connect` to the backends the router offers, one after the other, until
    /// one succeeds; registers it as `handle` there.
    ///
    /// Each failure takes its route back (`ConnCreated` with no connection) and sends
    /// `RefreshBackends`. When none succeeds the error names every backend tried.
    pub async fn connect<T, E, F, Fut>(
        mut self,
        handle: ConnHandle,
        mut connect: F,
    ) -> Result<Connected<T>, ConnectError>
    where
        F: FnMut(BackendInst) -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Into<BoxError>,
    {
        let mut failures = Vec::new();
        loop {
            let inst = match self.selector.next_untried().await {
                Ok(inst) => inst,
                Err(RouteError::NoBackend) if !failures.is_empty() => {
                    return Err(ConnectError::AllFailed { tried: failures });
                }
                Err(source) => {
                    return Err(ConnectError::Route {
                        tried: failures,
                        source,
                    })
                }
            };
            let error = match tokio::time::timeout(self.timeout, connect(inst.clone())).await {
                Ok(Ok(conn)) => {
                    let conn_id = handle.id();
                    self.selector.finish(Some(handle));
                    let registration = Registration {
                        conn_id,
                        backend: inst.addr().to_string(),
                        link: self.link,
                    };
                    return Ok(Connected {
                        conn,
                        backend: inst,
                        registration,
                        failures,
                    });
                }
                Ok(Err(e)) => AttemptError::Failed(e.into()),
                Err(_) => AttemptError::TimedOut(self.timeout),
            };
            debug!(conn_id = handle.id(), backend = %inst.addr(), error = %error, "backend connect failed; trying the next");
            self.selector.finish(None);
            self.refresh.do_send(RefreshBackends);
            failures.push(ConnectFailure {
                backend: inst.addr().to_string(),
                error,
            });
        }
    }
}

/// A connection's registration with its router: where it is, and its voice for moves.
///
/// Made by [`Connector::connect`] once the connection is registered. Dropping it sends `ConnClosed` for the backend it is on now, so the router forgets the
/// connection however it ends: returned, stopped, or unwound by a panic (a count that cannot
/// leak is a drop guard). After a move, [`Registration::redirect_succeeded`] both reports the
/// move and updates where the close will be reported.
pub struct Registration {
    conn_id: u64,
    backend: String,
    link: Link,
}

impl Registration {
    /// The connection's id.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// The backend the connection is on now.
    pub fn backend(&self) -> &str {
        &self.backend
    }

    /// The connection moved to `to`: reports `RedirectSucceeded` and remembers `to`.
    pub fn redirect_succeeded(&mut self, to: &str) {
        let from = std::mem::replace(&mut self.backend, to.to_string());
        self.link.succeeded.do_send(RedirectSucceeded {
            from,
            to: to.to_string(),
            conn_id: self.conn_id,
        });
    }

    /// The connection could not move to `to` and stays: reports `RedirectFailed`.
    pub fn redirect_failed(&self, to: &str) {
        self.link.failed.do_send(RedirectFailed {
            from: self.backend.clone(),
            to: to.to_string(),
            conn_id: self.conn_id,
        });
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("conn_id", &self.conn_id)
            .field("backend", &self.backend)
            .finish()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // `do_send` never blocks and ignores a router that is gone, so this is safe to run
        // while a panic unwinds.
        self.link.closed.do_send(ConnClosed {
            addr: std::mem::take(&mut self.backend),
            conn_id: self.conn_id,
        });
    }
}
