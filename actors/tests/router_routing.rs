//! Routing and accounting of `ScoreRouter`: which backend a route gets, how scores follow
//! connections through their life, and how the selector walks the candidates.

mod common;

use std::collections::{HashMap, HashSet};

use actix::prelude::*;
use common::Tester;
use switchyard::*;

#[actix_rt::test]
async fn no_backend_returns_no_backend() {
    let mut t = Tester::new();
    assert_eq!(t.route().await.unwrap_err(), RouteError::NoBackend);
    let b = t.add_backends(1).await;
    t.kill(&b[0]).await;
    assert_eq!(t.route().await.unwrap_err(), RouteError::NoBackend);
    t.check().await;
}

#[actix_rt::test]
async fn routes_go_to_the_lowest_score_backend() {
    let mut t = Tester::new();
    let b = t.add_backends(3).await;
    t.add_conns(30).await;
    t.check_balanced(0).await;
    // A slow backend is used only when the others are much busier.
    t.set_health(
        &b[0],
        BackendHealth {
            status: BackendStatus::RunSlow,
            ..Default::default()
        },
    )
    .await;
    t.add_conns(30).await;
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_count, 10);
    assert_eq!(t.snapshot(&b[1]).await.unwrap().conn_count, 25);
    t.check().await;
}

#[actix_rt::test]
async fn balanced_after_routing_scale_out_scale_in_and_closes() {
    let mut t = Tester::new();
    t.add_backends(2).await;
    t.add_conns(100).await;
    t.check_balanced(0).await;
    // Scale out: new routes go to the new backends first, rebalance evens the rest.
    let added = t.add_backends(2).await;
    t.add_conns(20).await;
    for a in &added {
        assert_eq!(t.snapshot(a).await.unwrap().conn_count, 10);
    }
    t.rebalance_to_rest().await;
    t.check_ratio(1.2).await;
    t.check().await;
    // Scale in: a dead backend's connections all move off.
    t.kill(&added[0]).await;
    t.rebalance_to_rest().await;
    assert!(
        t.snapshot(&added[0]).await.is_none(),
        "dead backend emptied and dropped"
    );
    t.check_ratio(1.2).await;
    // Closes on one backend: rebalance evens it out again.
    let first = Tester::backend_name(0);
    t.close_on(&first, 30).await;
    t.rebalance_to_rest().await;
    t.check_ratio(1.2).await;
    t.check().await;
}

#[actix_rt::test]
async fn scores_stay_ordered_through_the_redirect_lifecycle() {
    let mut t = Tester::new();
    let b = t.add_backends(1).await;
    t.add_conns(10).await;
    let b2 = t.add_backends(1).await;
    let (from, to) = (&b[0], &b2[0]);
    // Start: the whole point moves to the target at once.
    assert_eq!(t.rebalance(4).await, 4);
    assert_eq!(t.snapshot(from).await.unwrap().conn_score, 6);
    assert_eq!(t.snapshot(from).await.unwrap().conn_count, 10);
    assert_eq!(t.snapshot(to).await.unwrap().conn_score, 4);
    assert_eq!(t.snapshot(to).await.unwrap().conn_count, 0);
    t.check().await;
    // Two succeed, two fail.
    let moving: Vec<u64> = t
        .conns
        .iter()
        .filter(|(_, c)| c.redirecting.is_some())
        .map(|(id, _)| *id)
        .collect();
    t.finish_redirect(moving[0], true).await;
    t.finish_redirect(moving[1], true).await;
    t.check().await;
    t.finish_redirect(moving[2], false).await;
    t.finish_redirect(moving[3], false).await;
    let (f, g) = (
        t.snapshot(from).await.unwrap(),
        t.snapshot(to).await.unwrap(),
    );
    assert_eq!((f.conn_count, f.conn_score), (8, 8));
    assert_eq!((g.conn_count, g.conn_score), (2, 2));
    t.check().await;
}

#[actix_rt::test]
async fn closing_a_redirecting_connection_releases_the_target() {
    let mut t = Tester::new();
    let b = t.add_backends(1).await;
    let ids = t.add_conns(2).await;
    let b2 = t.add_backends(1).await;
    assert_eq!(t.rebalance(1).await, 1);
    assert_eq!(t.snapshot(&b2[0]).await.unwrap().conn_score, 1);
    let moving = ids
        .iter()
        .copied()
        .find(|id| t.conns[id].redirecting.is_some())
        .unwrap();
    t.close(moving).await;
    assert_eq!(t.snapshot(&b2[0]).await.unwrap().conn_score, 0);
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_score, 1);
    t.check().await;
}

#[actix_rt::test]
async fn failed_connect_takes_the_pending_point_back() {
    let mut t = Tester::new();
    let b = t.add_backends(1).await;
    t.route().await.unwrap();
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_score, 1);
    t.finish(&b[0], false).await;
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_score, 0);
    t.check().await;
}

#[actix_rt::test]
async fn concurrent_routes_before_finish_stay_balanced() {
    let mut t = Tester::new();
    t.add_backends(5).await;
    let mut routed = Vec::new();
    for _ in 0..50 {
        routed.push(t.route().await.unwrap().addr().to_string());
    }
    let mut per: HashMap<String, usize> = HashMap::new();
    for r in &routed {
        *per.entry(r.clone()).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 10), "{per:?}");
    t.check().await;
    for r in routed {
        t.finish(&r, true).await;
    }
    t.check_balanced(0).await;
    t.check().await;
}

#[actix_rt::test]
async fn selectors_in_flight_at_once_stay_balanced() {
    let mut t = Tester::new();
    t.add_backends(4).await;
    let router = t.router.clone();
    let mut selectors: Vec<BackendSelector> =
        (0..40).map(|_| BackendSelector::new(&router)).collect();
    let picks = futures::future::join_all(selectors.iter_mut().map(|s| s.next())).await;
    let mut per: HashMap<String, usize> = HashMap::new();
    for p in picks {
        *per.entry(p.unwrap().addr().to_string()).or_default() += 1;
    }
    assert!(per.values().all(|n| *n == 10), "{per:?}");
    drop(selectors); // never finished: every pending point is released
    let snaps = t.backends().await;
    assert!(snaps.iter().all(|b| b.conn_score == 0), "{snaps:?}");
}

#[actix_rt::test]
async fn selector_returns_distinct_backends_then_starts_over() {
    let mut t = Tester::new();
    t.add_backends(3).await;
    let mut sel = BackendSelector::new(&t.router);
    let mut seen = HashSet::new();
    for _ in 0..3 {
        let b = sel.next().await.unwrap();
        assert!(
            seen.insert(b.addr().to_string()),
            "returned twice: {}",
            b.addr()
        );
        sel.finish(None);
    }
    // Every candidate returned once: it starts over.
    let again = sel.next().await.unwrap();
    assert!(seen.contains(again.addr()));
    sel.finish(None);
    let snaps = t.backends().await;
    assert!(snaps.iter().all(|b| b.conn_score == 0));
}

#[actix_rt::test]
async fn selector_finish_registers_the_connection() {
    let mut t = Tester::new();
    let b = t.add_backends(1).await;
    let mut sel = BackendSelector::new(&t.router);
    let inst = sel.next().await.unwrap();
    assert_eq!(inst.addr(), b[0]);
    let conn = common::FakeConn::detached(77).start();
    sel.finish(Some(ConnHandle::new(77, conn.recipient())));
    assert_eq!(t.conn_count().await, 1);
    let s = t.snapshot(&b[0]).await.unwrap();
    assert_eq!((s.conn_count, s.conn_score), (1, 1));
}

#[actix_rt::test]
async fn handle_follows_status() {
    let mut t = Tester::new();
    let b = t.add_backends(1).await;
    let inst = t.route().await.unwrap();
    assert!(inst.healthy());
    t.kill(&b[0]).await;
    assert!(!inst.healthy(), "a held handle sees the router's new view");
    t.set_health(&b[0], BackendHealth::healthy()).await;
    assert!(inst.healthy());
}

#[actix_rt::test]
async fn server_version_follows_healthy_backends() {
    let mut t = Tester::new();
    assert_eq!(t.router.send(ServerVersion).await.unwrap(), "");
    t.set_health(
        "10.1.1.1:4000",
        BackendHealth::healthy_with_version("8.0.11-TiDB-v7.5.0"),
    )
    .await;
    assert_eq!(
        t.router.send(ServerVersion).await.unwrap(),
        "8.0.11-TiDB-v7.5.0"
    );
}

#[actix_rt::test]
async fn observe_error_is_returned_then_cleared() {
    let mut t = Tester::new();
    t.add_backends(1).await;
    let err = ObserveError::Fetch(FetchError::new("etcd down"));
    t.router
        .send(BackendsChanged {
            backends: HashMap::new(),
            error: Some(err.clone()),
        })
        .await
        .unwrap();
    assert_eq!(t.route().await.unwrap_err(), RouteError::Observe(err));
    t.changed(HashMap::new()).await;
    assert!(t.route().await.is_ok());
}

#[actix_rt::test]
async fn unknown_backend_in_an_event_is_added_as_down() {
    let mut t = Tester::new();
    t.add_backends(1).await;
    let conn = common::FakeConn::detached(5).start();
    t.router
        .send(ConnCreated {
            backend: "192.0.2.1:1".into(),
            conn: Some(ConnHandle::new(5, conn.recipient())),
        })
        .await
        .unwrap();
    let s = t.snapshot("192.0.2.1:1").await.expect("created");
    assert_eq!(s.health.status, BackendStatus::CannotConnect);
    assert_eq!(s.conn_count, 1);
    t.router.send(CheckInvariants).await.unwrap().unwrap();
    // Its connection is moved off by rebalance like any down backend's.
    t.router.send(Rebalance { max_conns: 10 }).await.unwrap();
    t.router.send(CheckInvariants).await.unwrap().unwrap();
}

#[actix_rt::test]
async fn rolling_restart_stays_balanced() {
    let mut t = Tester::new();
    let b = t.add_backends(3).await;
    t.add_conns(90).await;
    for addr in &b {
        t.kill(addr).await;
        t.rebalance_to_rest().await;
        assert!(t.snapshot(addr).await.is_none());
        t.check().await;
        t.set_health(addr, BackendHealth::healthy()).await;
        t.rebalance_to_rest().await;
        t.check_ratio(1.2).await;
        t.check().await;
    }
    assert_eq!(t.conn_count().await, 90);
}

#[actix_rt::test]
async fn redirect_connections_asks_every_connection() {
    let mut t = Tester::new();
    t.add_backends(2).await;
    t.add_conns(6).await;
    t.router.send(RedirectConnections).await.unwrap().unwrap();
    assert_eq!(t.flush().await, 6);
    t.check().await;
    t.finish_redirects(true).await;
    t.check_balanced(0).await;
    t.check().await;
}

#[actix_rt::test]
async fn drained_backend_gets_no_routes_and_is_emptied() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    t.add_conns(10).await;
    t.set_drained(&b[0], true).await.unwrap();
    assert_eq!(t.router.send(GetDrained).await.unwrap(), vec![b[0].clone()]);
    t.add_conns(4).await;
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_count, 5);
    t.rebalance_to_rest().await;
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_count, 0);
    // Drained and down: kept while drained, dropped once undrained.
    t.kill(&b[0]).await;
    assert!(t.snapshot(&b[0]).await.is_some());
    t.set_drained(&b[0], false).await.unwrap();
    assert!(t.snapshot(&b[0]).await.is_none());
    t.check().await;
}

#[actix_rt::test]
async fn draining_an_unknown_backend_is_an_error() {
    let t = Tester::new();
    let r = t.set_drained("nowhere:1", true).await;
    assert_eq!(r, Err(RouterError::UnknownBackend("nowhere:1".into())));
}

#[actix_rt::test]
async fn undrained_backend_takes_routes_again() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    for drained in [true, false] {
        t.set_drained(&b[0], drained).await.unwrap();
    }
    t.add_conns(4).await;
    t.check_balanced(0).await;
}
