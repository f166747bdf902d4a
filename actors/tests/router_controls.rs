//! The router's operator controls through its messages: the FIFO wait queue behind
//! `max_conns_per_backend`, its timeout, and drain-then-close. Time is tokio's paused clock.

use std::collections::HashMap;
use std::time::Duration;

use actix::prelude::*;
use switchyard::*;

fn router(policy: RoutePolicy) -> Addr<ScoreRouter> {
    let cfg = RouterConfig {
        rebalance_interval: Duration::ZERO,
        ..RouterConfig::default()
    };
    let router = ScoreRouter::new(cfg).with_policy(policy).start();
    router.do_send(BackendsChanged {
        backends: HashMap::from([("a".to_string(), BackendHealth::healthy())]),
        error: None,
    });
    router
}

/// A connection that counts the closes it is asked for.
struct Conn {
    closes: std::rc::Rc<std::cell::Cell<u32>>,
}

impl Actor for Conn {
    type Context = Context<Self>;
}

impl Handler<Redirect> for Conn {
    type Result = ();
    fn handle(&mut self, _: Redirect, _: &mut Context<Self>) {}
}

impl Handler<CloseConnection> for Conn {
    type Result = ();
    fn handle(&mut self, _: CloseConnection, _: &mut Context<Self>) {
        self.closes.set(self.closes.get() + 1);
    }
}

/// Registers connection `id` on `backend` (after a route there).
fn register(
    router: &Addr<ScoreRouter>,
    id: u64,
    backend: &str,
) -> std::rc::Rc<std::cell::Cell<u32>> {
    let closes = std::rc::Rc::default();
    let conn = Conn {
        closes: std::rc::Rc::clone(&closes),
    }
    .start();
    let handle = ConnHandle::new(id, conn.clone().recipient()).with_close(conn.recipient());
    router.do_send(ConnCreated {
        backend: backend.to_string(),
        conn: Some(handle),
    });
    closes
}

#[actix_rt::test]
async fn routes_wait_in_arrival_order_for_a_backend_with_room() {
    tokio::time::pause();
    let r = router(RoutePolicy {
        max_conns_per_backend: 1,
        queue_timeout: Duration::from_secs(5),
        ..RoutePolicy::default()
    });
    let first = r
        .send(Route::default())
        .await
        .unwrap()
        .expect("room for one");
    register(&r, 1, first.addr());

    // three more park, in this order
    let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
    for n in 0..3u64 {
        let (router, tx) = (r.clone(), tx.clone());
        actix_rt::spawn(async move {
            let got = router.send(Route::default()).await.unwrap();
            let _ = tx.send((n, got));
        });
        // let each send reach the router before the next
        tokio::task::yield_now().await;
        r.send(CheckInvariants).await.unwrap().unwrap();
    }
    assert_eq!(r.send(GetRouting).await.unwrap().queue_len, 3);

    // each close makes room for exactly the next in line
    for n in 0..3u64 {
        r.do_send(ConnClosed {
            addr: "a".into(),
            conn_id: n + 1,
        });
        let (who, got) = order.recv().await.expect("one served");
        assert_eq!(who, n, "served first come, first served");
        register(&r, n + 2, got.expect("room").addr());
    }
    assert_eq!(r.send(GetRouting).await.unwrap().queue_len, 0);
    r.send(CheckInvariants).await.unwrap().unwrap();
}

#[actix_rt::test]
async fn a_route_that_waits_past_queue_timeout_is_refused_and_leaves_no_count() {
    tokio::time::pause();
    let r = router(RoutePolicy {
        max_conns_per_backend: 1,
        queue_timeout: Duration::from_secs(5),
        ..RoutePolicy::default()
    });
    let first = r
        .send(Route::default())
        .await
        .unwrap()
        .expect("room for one");
    register(&r, 1, first.addr());
    let started = tokio::time::Instant::now();
    let got = r.send(Route::default()).await.unwrap();
    assert_eq!(got, Err(RouteError::QueueTimeout(Duration::from_secs(5))));
    assert!(started.elapsed() >= Duration::from_secs(5));
    assert_eq!(r.send(GetRouting).await.unwrap().queue_len, 0);

    // room appears after the waiter gave up: nothing is handed to it
    r.do_send(ConnClosed {
        addr: "a".into(),
        conn_id: 1,
    });
    r.send(CheckInvariants).await.unwrap().unwrap();
    let snap = r.send(GetBackends).await.unwrap();
    assert_eq!(snap[0].conn_score, 0, "no route left pending: {snap:?}");
}

#[actix_rt::test]
async fn drain_then_close_closes_what_is_left_once_the_timeout_passes() {
    tokio::time::pause();
    let r = router(RoutePolicy::default());
    let inst = r.send(Route::default()).await.unwrap().expect("a");
    let closes = register(&r, 1, inst.addr());
    r.send(DrainThenClose {
        addr: "a".into(),
        timeout: Duration::from_secs(30),
    })
    .await
    .unwrap()
    .expect("known");
    tokio::time::sleep(Duration::from_secs(29)).await;
    r.send(CheckInvariants).await.unwrap().unwrap();
    assert_eq!(closes.get(), 0, "not before the timeout");
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.send(CheckInvariants).await.unwrap().unwrap();
    assert_eq!(closes.get(), 1);
}

#[actix_rt::test]
async fn undraining_before_the_timeout_cancels_the_close() {
    tokio::time::pause();
    let r = router(RoutePolicy::default());
    let inst = r.send(Route::default()).await.unwrap().expect("a");
    let closes = register(&r, 1, inst.addr());
    r.send(DrainThenClose {
        addr: "a".into(),
        timeout: Duration::from_secs(30),
    })
    .await
    .unwrap()
    .expect("known");
    r.send(SetDrained {
        addr: "a".into(),
        drained: false,
    })
    .await
    .unwrap()
    .expect("known");
    tokio::time::sleep(Duration::from_secs(31)).await;
    r.send(CheckInvariants).await.unwrap().unwrap();
    assert_eq!(closes.get(), 0);
    assert_eq!(
        r.send(DrainThenClose {
            addr: "nowhere".into(),
            timeout: Duration::from_secs(1)
        })
        .await
        .unwrap(),
        Err(RouterError::UnknownBackend("nowhere".into()))
    );
}
