//! Every corner of `ScoreRouter`'s rebalance step.

mod common;

use std::time::Duration;

use actix::prelude::*;
use common::{manual_cfg, Tester};
use switchyard::*;

#[actix_rt::test]
async fn rebalance_with_no_backend_moves_nothing() {
    let mut t = Tester::new();
    assert_eq!(t.rebalance(10).await, 0);
    t.check().await;
}

#[actix_rt::test]
async fn rebalance_with_one_backend_moves_nothing() {
    let mut t = Tester::new();
    t.add_backends(1).await;
    t.add_conns(20).await;
    assert_eq!(t.rebalance(10).await, 0);
    t.check().await;
}

#[actix_rt::test]
async fn rebalance_when_already_balanced_moves_nothing() {
    let mut t = Tester::new();
    t.add_backends(3).await;
    t.add_conns(31).await;
    assert_eq!(t.rebalance(10).await, 0);
}

#[actix_rt::test]
async fn rebalance_when_all_backends_are_down_moves_nothing() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    t.add_conns(10).await;
    for a in &b {
        t.kill(a).await;
    }
    assert_eq!(t.rebalance(10).await, 0);
    t.check().await;
}

#[actix_rt::test]
async fn rebalance_moves_at_most_the_step_bound() {
    let mut t = Tester::new();
    t.add_backends(1).await;
    t.add_conns(100).await;
    t.add_backends(1).await;
    assert_eq!(t.rebalance(7).await, 7);
    t.finish_redirects(true).await;
    assert_eq!(t.rebalance(7).await, 7);
    t.check().await;
}

#[actix_rt::test]
async fn rebalance_moves_the_longest_resident_connection_first() {
    let mut t = Tester::new();
    t.add_backends(1).await;
    let ids = t.add_conns(10).await;
    t.add_backends(1).await;
    assert_eq!(t.rebalance(3).await, 3);
    let moving: Vec<u64> = ids
        .iter()
        .copied()
        .filter(|id| t.conns[id].redirecting.is_some())
        .collect();
    assert_eq!(moving, ids[..3].to_vec());
}

#[actix_rt::test]
async fn dead_backend_is_emptied_then_dropped() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    t.add_conns(10).await;
    t.kill(&b[0]).await;
    // Still known while it has connections.
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_count, 5);
    assert_eq!(t.rebalance(100).await, 5);
    t.finish_redirects(true).await;
    assert!(t.snapshot(&b[0]).await.is_none());
    assert_eq!(t.snapshot(&b[1]).await.unwrap().conn_count, 10);
    t.check().await;
}

#[actix_rt::test]
async fn no_second_redirect_while_one_is_in_flight() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    t.add_conns(4).await;
    t.kill(&b[0]).await;
    assert_eq!(t.rebalance(100).await, 2);
    // Nothing answered yet: the same connections are not asked again (flush asserts it).
    assert_eq!(t.rebalance(100).await, 0);
    t.check().await;
}

#[actix_rt::test]
async fn failed_redirect_backs_off_before_a_retry() {
    tokio::time::pause();
    let mut t = Tester::with_cfg(RouterConfig {
        redirect_fail_backoff: Duration::from_secs(3),
        ..manual_cfg()
    });
    let b = t.add_backends(2).await;
    t.add_conns(2).await;
    t.kill(&b[0]).await;
    assert_eq!(t.rebalance(10).await, 1);
    t.finish_redirects(false).await;
    assert_eq!(t.rebalance(10).await, 0, "within back-off");
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(t.rebalance(10).await, 0, "still within back-off");
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(t.rebalance(10).await, 1, "retried after back-off");
    t.check().await;
}

#[actix_rt::test]
async fn too_few_connections_to_move_stays_put() {
    let mut t = Tester::new();
    t.add_backends(1).await;
    t.add_conns(1).await;
    t.add_backends(1).await;
    // 1 / (0 + 1) < 1.2: moving one connection would only swap the imbalance.
    assert_eq!(t.rebalance(10).await, 0);
    t.add_conns(1).await; // goes to the idle one
    t.check_balanced(0).await;
}

#[actix_rt::test]
async fn a_stopped_connection_is_forgotten_when_asked_to_move() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    let ids = t.add_conns(2).await;
    t.kill(&b[0]).await;
    let on_dead = ids
        .iter()
        .copied()
        .find(|id| t.conns[id].backend == b[0])
        .unwrap();
    // The connection's actor is gone before the router asks it to move, and it never said
    // `ConnClosed`: the router forgets it instead of redirecting it every back-off.
    let addr = t.conns[&on_dead].addr.clone();
    addr.send(StopFake).await.ok();
    assert_eq!(t.rebalance(10).await, 0);
    t.conns.remove(&on_dead);
    assert!(t.snapshot(&b[0]).await.is_none(), "down and empty: dropped");
    t.check().await;
}

/// Stops a fake connection's actor, as a crashed connection would.
#[derive(Message)]
#[rtype(result = "()")]
struct StopFake;

impl Handler<StopFake> for common::FakeConn {
    type Result = ();
    fn handle(&mut self, _: StopFake, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[actix_rt::test]
async fn periodic_tick_rebalances_without_being_asked() {
    tokio::time::pause();
    let mut t = Tester::with_cfg(RouterConfig::default());
    t.add_backends(1).await;
    t.add_conns(100).await;
    t.add_backends(1).await;
    tokio::time::advance(Duration::from_millis(11)).await;
    assert_eq!(t.flush().await, 10, "one tick moves conns_per_tick");
    t.finish_redirects(true).await;
    t.check().await;
}

/// A connection whose handler panics on [`Crash`]: actix stops the actor and closes its mailbox,
/// and it never reports `ConnClosed`.
struct Crashing;

impl Actor for Crashing {
    type Context = Context<Self>;
}

impl Handler<Redirect> for Crashing {
    type Result = ();
    fn handle(&mut self, _: Redirect, _: &mut Context<Self>) {}
}

#[derive(Message)]
#[rtype(result = "()")]
struct Crash;

impl Handler<Crash> for Crashing {
    type Result = ();
    fn handle(&mut self, _: Crash, _: &mut Context<Self>) {
        panic!("connection handler panicked (on purpose, in a test)");
    }
}

/// Registers a connection on `backend` whose actor then panics; returns its id.
async fn crashed_conn_on(t: &Tester, backend: &str, others: &[String]) -> u64 {
    const ID: u64 = 1_000_000;
    let inst = t
        .router
        .send(Route {
            excluded: others.to_vec(),
        })
        .await
        .unwrap()
        .expect("a route");
    assert_eq!(inst.addr(), backend);
    let conn = Crashing.start();
    t.router
        .send(ConnCreated {
            backend: backend.to_string(),
            conn: Some(ConnHandle::new(ID, conn.clone().recipient())),
        })
        .await
        .unwrap();
    assert!(conn.send(Crash).await.is_err(), "the handler panicked");
    assert!(!conn.connected(), "the mailbox is closed");
    ID
}

#[actix_rt::test]
async fn rebalance_forgets_a_connection_whose_actor_panicked() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    crashed_conn_on(&t, &b[0], &b[1..]).await;
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_count, 1);
    t.set_drained(&b[0], true).await.unwrap();
    assert_eq!(t.rebalance(10).await, 0);
    let s = t.snapshot(&b[0]).await.expect("kept while drained");
    assert_eq!((s.conn_count, s.conn_score), (0, 0));
    assert_eq!(
        t.snapshot(&b[1]).await.unwrap().conn_score,
        0,
        "no point left on the target"
    );
    t.check().await;
}

#[actix_rt::test]
async fn redirect_connections_forgets_a_connection_whose_actor_panicked_and_asks_the_rest() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    t.add_conns(4).await;
    crashed_conn_on(&t, &b[0], &b[1..]).await;
    assert_eq!(t.conn_count().await, 5);
    t.router.send(RedirectConnections).await.unwrap().unwrap();
    assert_eq!(t.flush().await, 4, "the live connections are asked");
    assert_eq!(t.conn_count().await, 4);
    assert_eq!(t.snapshot(&b[0]).await.unwrap().conn_count, 2);
    t.check().await;
    t.finish_redirects(true).await;
    t.check().await;
}

#[actix_rt::test]
async fn a_late_close_of_a_connection_forgotten_after_a_panic_changes_nothing() {
    let mut t = Tester::new();
    let b = t.add_backends(2).await;
    let id = crashed_conn_on(&t, &b[0], &b[1..]).await;
    t.set_drained(&b[0], true).await.unwrap();
    assert_eq!(t.rebalance(10).await, 0);
    assert_eq!(t.conn_count().await, 0, "forgotten");
    let before = t.backends().await;
    // A drop guard's `ConnClosed` may still arrive: nothing is taken off twice.
    t.router
        .send(ConnClosed {
            addr: b[0].clone(),
            conn_id: id,
        })
        .await
        .unwrap();
    assert_eq!(t.backends().await, before);
    t.check().await;
}
