//! The proxy's `protocol: mysql` actors in the test process: a `ScoreRouter` (tick off, tests
//! drive rebalances) over healthy backends, and a loopback listener starting one `MysqlConn` per
//! client. The in-process tests (`mysql_migration`, `mysql_pins`, `mysql_hardening`) share it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use switchyard::{BackendHealth, BackendsChanged, RouterConfig, ScoreRouter};
use switchyard_server::entry::{ConnStart, Entry};
use switchyard_server::mysql::{MysqlConfig, MysqlConn, MysqlUsers};
use tokio::net::TcpListener;

/// A running in-process proxy.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Its router, for drains, rebalances and counts.
    pub router: Addr<ScoreRouter>,
}

/// Starts a proxy over `backends` (all healthy) for `users`, with `move_timeout` for moves and
/// `redirect_fail_backoff` before a refused redirect is asked again.
pub async fn start(
    backends: &[String],
    users: MysqlUsers,
    move_timeout: Duration,
    redirect_fail_backoff: Duration,
) -> Proxy {
    let router = ScoreRouter::new(RouterConfig {
        rebalance_interval: Duration::ZERO,
        redirect_fail_backoff,
        ..Default::default()
    })
    .start();
    add_backends(&router, backends).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = Arc::new(MysqlConfig {
        users,
        move_timeout,
        ..Default::default()
    });
    let entry = Entry::new(router.clone(), Duration::from_secs(2));
    actix::spawn(async move {
        let mut id = 0;
        while let Ok((stream, _)) = listener.accept().await {
            id += 1;
            MysqlConn::new(ConnStart::from_stream(id, stream, &entry), cfg.clone()).start();
        }
    });
    Proxy { addr, router }
}

/// Tells `router` that `backends` (and only they) are healthy.
pub async fn add_backends(router: &Addr<ScoreRouter>, backends: &[String]) {
    let changed: HashMap<String, BackendHealth> = backends
        .iter()
        .map(|a| (a.clone(), BackendHealth::healthy()))
        .collect();
    router
        .send(BackendsChanged {
            backends: changed,
            error: None,
        })
        .await
        .unwrap();
}
