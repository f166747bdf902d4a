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

/// Forwards every [`BackendsListed`] to a channel; answers [`Flush`] after what came before.
struct Listings(tokio::sync::mpsc::UnboundedSender<BackendsListed>);

impl Actor for Listings {
    type Context = Context<Self>;
}

impl Handler<BackendsListed> for Listings {
    type Result = ();
    fn handle(&mut self, msg: BackendsListed, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

impl Handler<Flush> for Listings {
    type Result = ();
    fn handle(&mut self, _: Flush, _: &mut Context<Self>) {}
}

fn unchecked() -> HealthCheckConfig {
    HealthCheckConfig {
        enable: false,
        interval: Duration::from_secs(3600),
        ..HealthCheckConfig::default()
    }
}

#[actix_rt::test]
async fn the_observer_lists_every_backend_with_its_weight_only_when_the_list_changes() {
    let (collector, mut reports) = switchyard_testkit::Collector::start_new();
    let (tx, mut listed) = tokio::sync::mpsc::unbounded_channel();
    let listings = Listings(tx).start();
    let fetcher = StaticFetcher::with_weights(vec![("a:1".into(), 3.0), ("b:1".into(), 1.0)]);
    let observer = BackendObserver::new(
        fetcher,
        DefaultHealthCheck::new(unchecked()),
        unchecked(),
        collector.clone().recipient(),
    )
    .with_listing(listings.clone().recipient())
    .start();
    reports.recv().await.expect("first report");
    let first = listed.recv().await.expect("first list");
    assert_eq!(
        first.backends,
        HashMap::from([("a:1".to_string(), 3.0), ("b:1".to_string(), 1.0)])
    );

    observer.send(Refresh).await.unwrap();
    reports.recv().await.expect("second report");
    listings.send(Flush).await.unwrap();
    assert!(
        listed.try_recv().is_err(),
        "an unchanged list is not sent again"
    );
}

#[actix_rt::test]
async fn an_observed_router_takes_the_weights_its_fetcher_gives() {
    let router = ScoreRouter::start_observed(
        RouterConfig {
            rebalance_interval: Duration::ZERO,
            ..RouterConfig::default()
        },
        StaticFetcher::with_weights(vec![("a:1".into(), 3.0), ("b:1".into(), 1.0)]),
        DefaultHealthCheck::new(unchecked()),
        unchecked(),
    );
    let mut tries = 0;
    let weights = loop {
        let state = router.send(GetRouting).await.unwrap();
        if state.backends.len() == 2 {
            break state.backends;
        }
        tries += 1;
        assert!(
            tries < 10_000,
            "the observer's first cycle never reached the router"
        );
        tokio::task::yield_now().await;
    };
    let w: Vec<(String, f64)> = weights.into_iter().map(|b| (b.addr, b.weight)).collect();
    assert_eq!(w, [("a:1".to_string(), 3.0), ("b:1".to_string(), 1.0)]);
    let mut got = HashMap::<String, usize>::new();
    for _ in 0..8 {
        let inst = router
            .send(Route::default())
            .await
            .unwrap()
            .expect("a route");
        *got.entry(inst.addr().to_string()).or_default() += 1;
    }
    assert_eq!((got["a:1"], got["b:1"]), (6, 2));
}

#[actix_rt::test]
async fn a_backend_back_from_down_takes_a_growing_share_as_the_paused_clock_advances() {
    tokio::time::pause();
    let r = router(RoutePolicy {
        slow_start: Duration::from_secs(10),
        ..RoutePolicy::default()
    });
    let route_n = |n: usize| {
        let r = r.clone();
        async move {
            let mut got = HashMap::<String, usize>::new();
            for _ in 0..n {
                let inst = r.send(Route::default()).await.unwrap().expect("a route");
                *got.entry(inst.addr().to_string()).or_default() += 1;
            }
            got
        }
    };
    route_n(20).await;
    r.send(BackendsChanged {
        backends: HashMap::from([("b".to_string(), BackendHealth::healthy())]),
        error: None,
    })
    .await
    .unwrap();
    // at 10 % of its weight, b is at a's load (20) with 2 routes
    let early = route_n(10).await;
    assert!(early.get("b").copied().unwrap_or(0) <= 3, "{early:?}");
    let state = r.send(GetRouting).await.unwrap();
    let b = state.backends.iter().find(|w| w.addr == "b").expect("b");
    assert!(b.effective_weight < 0.2, "{b:?}");

    tokio::time::advance(Duration::from_secs(10)).await;
    let late = route_n(10).await;
    assert_eq!(
        late.get("b").copied(),
        Some(10),
        "full weight: b catches up: {late:?}"
    );
    let state = r.send(GetRouting).await.unwrap();
    assert!(
        state.backends.iter().all(|w| w.effective_weight == 1.0),
        "{state:?}"
    );
}
