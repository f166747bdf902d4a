//! `BackendSelector`: one connection's view of routing.
//!
//! A connection asks [`BackendSelector::next`] for a backend, tries to connect, and reports the
//! outcome with [`BackendSelector::finish`]. It talks to any router that handles [`Route`] and
//! [`ConnCreated`] ([`crate::ScoreRouter`] or [`crate::StaticRouter`]), through recipients, so the
//! connection does not depend on which router it has.

use actix::dev::ToEnvelope;
use actix::prelude::*;

use crate::conn::ConnHandle;
use crate::error::RouteError;
use crate::model::BackendInst;
use crate::router::{ConnCreated, Route};

/// Hands out backends for one connection attempt sequence.
///
/// `next` never returns a backend it already returned until every candidate has been tried
/// once; then it starts over. A route that is never finished (the selector dropped, or `next`
/// called again) is reported as failed, so the router's pending count cannot leak.
pub struct BackendSelector {
    route: Recipient<Route>,
    created: Recipient<ConnCreated>,
    excluded: Vec<String>,
    current: Option<BackendInst>,
}

impl BackendSelector {
    /// A selector that routes through `router`.
    pub fn new<R>(router: &Addr<R>) -> Self
    where
        R: Actor + Handler<Route> + Handler<ConnCreated>,
        R::Context: ToEnvelope<R, Route> + ToEnvelope<R, ConnCreated>,
    {
        Self {
            route: router.clone().recipient(),
            created: router.clone().recipient(),
            excluded: Vec::new(),
            current: None,
        }
    }

    /// The next backend to try.
    pub async fn next(&mut self) -> Result<BackendInst, RouteError> {
        match self.next_untried().await {
            Err(RouteError::NoBackend) if !self.excluded.is_empty() => {
                // Every candidate was returned once: start over.
                self.excluded.clear();
                self.next_untried().await
            }
            other => other,
        }
    }

    /// Like [`BackendSelector::next`], but never starts over: `Err(NoBackend)` once every
    /// candidate was returned. [`crate::Connector`] stops there, so it tries each backend once.
    pub(crate) async fn next_untried(&mut self) -> Result<BackendInst, RouteError> {
        self.finish(None);
        let inst = self.route_once().await?;
        self.excluded.push(inst.addr().to_string());
        self.current = Some(inst.clone());
        Ok(inst)
    }

    /// Reports the outcome of the last `next`: `Some` = connected and registered with this
    /// handle, `None` = the connect failed. Does nothing when there is no route outstanding.
    pub fn finish(&mut self, conn: Option<ConnHandle>) {
        if let Some(inst) = self.current.take() {
            self.created.do_send(ConnCreated {
                backend: inst.addr().to_string(),
                conn,
            });
        }
    }

    async fn route_once(&self) -> Result<BackendInst, RouteError> {
        self.route
            .send(Route {
                excluded: self.excluded.clone(),
            })
            .await
            .map_err(|_| RouteError::RouterGone)?
    }
}

impl Drop for BackendSelector {
    fn drop(&mut self) {
        self.finish(None);
    }
}
