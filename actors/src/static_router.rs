//! `StaticRouter`: a fixed list, the first that is not excluded, no balancing.
//!
//! It handles the same routing and connection messages as [`crate::ScoreRouter`], so a
//! [`crate::BackendSelector`] and a connection work against either; it never moves a connection.

use std::collections::HashMap;

use actix::prelude::*;
use tracing::warn;

use crate::error::{RouteError, RouterError};
use crate::model::{BackendHealth, BackendInst, BackendSnapshot};
use crate::router::{
    ConnClosed, ConnCount, ConnCreated, GetBackends, RedirectConnections, RedirectFailed,
    RedirectSucceeded, RefreshBackends, Route, ServerVersion,
};

/// Routes every connection to the first configured backend not excluded.
pub struct StaticRouter {
    backends: Vec<BackendInst>,
    /// Registered connections per backend address.
    conns: HashMap<String, usize>,
}

impl StaticRouter {
    /// A router over `addrs`, in order of preference.
    pub fn new(addrs: Vec<String>) -> StaticRouter {
        StaticRouter {
            backends: addrs
                .into_iter()
                .map(|a| BackendInst::new(a, true))
                .collect(),
            conns: HashMap::new(),
        }
    }
}

impl Actor for StaticRouter {
    type Context = Context<Self>;
}

impl Handler<Route> for StaticRouter {
    type Result = Result<BackendInst, RouteError>;
    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        self.backends
            .iter()
            .find(|b| !msg.excluded.iter().any(|e| e == b.addr()))
            .cloned()
            .ok_or(RouteError::NoBackend)
    }
}

impl Handler<ConnCreated> for StaticRouter {
    type Result = ();
    fn handle(&mut self, msg: ConnCreated, _: &mut Context<Self>) {
        if msg.conn.is_some() {
            *self.conns.entry(msg.backend).or_default() += 1;
        }
    }
}

impl Handler<ConnClosed> for StaticRouter {
    type Result = ();
    fn handle(&mut self, msg: ConnClosed, _: &mut Context<Self>) {
        match self.conns.get_mut(&msg.addr) {
            Some(n) if *n > 0 => *n -= 1,
            _ => {
                warn!(backend = %msg.addr, conn_id = msg.conn_id, "close of an unknown connection")
            }
        }
    }
}

impl Handler<RedirectSucceeded> for StaticRouter {
    type Result = ();
    fn handle(&mut self, msg: RedirectSucceeded, _: &mut Context<Self>) {
        // It never asks for moves, but keep the counts right if a connection moved anyway.
        if let Some(n) = self.conns.get_mut(&msg.from).filter(|n| **n > 0) {
            *n -= 1;
            *self.conns.entry(msg.to).or_default() += 1;
        }
    }
}

impl Handler<RedirectFailed> for StaticRouter {
    type Result = ();
    fn handle(&mut self, _: RedirectFailed, _: &mut Context<Self>) {}
}

impl Handler<RefreshBackends> for StaticRouter {
    type Result = ();
    fn handle(&mut self, _: RefreshBackends, _: &mut Context<Self>) {}
}

impl Handler<RedirectConnections> for StaticRouter {
    type Result = Result<(), RouterError>;
    fn handle(&mut self, _: RedirectConnections, _: &mut Context<Self>) -> Self::Result {
        Ok(())
    }
}

impl Handler<ConnCount> for StaticRouter {
    type Result = usize;
    fn handle(&mut self, _: ConnCount, _: &mut Context<Self>) -> usize {
        self.conns.values().sum()
    }
}

impl Handler<ServerVersion> for StaticRouter {
    type Result = String;
    fn handle(&mut self, _: ServerVersion, _: &mut Context<Self>) -> String {
        String::new()
    }
}

impl Handler<GetBackends> for StaticRouter {
    type Result = Vec<BackendSnapshot>;
    fn handle(&mut self, _: GetBackends, _: &mut Context<Self>) -> Self::Result {
        self.backends
            .iter()
            .map(|b| {
                let n = self.conns.get(b.addr()).copied().unwrap_or(0);
                BackendSnapshot {
                    addr: b.addr().to_string(),
                    health: BackendHealth::healthy(),
                    score: n as i64,
                    conn_count: n,
                    conn_score: n as i64,
                    suspect: false,
                }
            })
            .collect()
    }
}
