//! `BackendObserver` and its wiring to the router, with scripted discovery and health doubles.
//! Every wait is on a message or a channel, never on a sleep.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use common::{manual_cfg, Tester};
use switchyard::*;
use switchyard_testkit::Collector;
use tokio::sync::{mpsc, Notify};

/// Discovery whose answer the test sets; reports each call on a channel.
struct ScriptedFetcher {
    list: Rc<RefCell<Result<Vec<String>, FetchError>>>,
    calls: mpsc::UnboundedSender<()>,
    gate: Option<Rc<Notify>>,
}

impl BackendFetcher for ScriptedFetcher {
    async fn get_backend_list(&self) -> Result<HashMap<String, BackendInfo>, FetchError> {
        let _ = self.calls.send(());
        if let Some(gate) = &self.gate {
            gate.notified().await;
        }
        let list = self.list.borrow().clone()?;
        Ok(list
            .into_iter()
            .map(|a| (a, BackendInfo::default()))
            .collect())
    }
}

/// Health the test sets per backend; healthy when unset.
#[derive(Clone, Default)]
struct ScriptedHealth {
    health: Rc<RefCell<HashMap<String, BackendHealth>>>,
}

impl HealthCheck for ScriptedHealth {
    async fn check(&self, addr: &str, _: &BackendInfo) -> BackendHealth {
        self.health.borrow().get(addr).cloned().unwrap_or_default()
    }
}

struct Rig {
    list: Rc<RefCell<Result<Vec<String>, FetchError>>>,
    health: ScriptedHealth,
    calls: mpsc::UnboundedReceiver<()>,
    reports: mpsc::UnboundedReceiver<BackendsChanged>,
    observer: Addr<BackendObserver<ScriptedFetcher, ScriptedHealth>>,
    _collector: Addr<Collector>,
}

fn slow_cfg() -> HealthCheckConfig {
    HealthCheckConfig {
        interval: Duration::from_secs(3600),
        ..HealthCheckConfig::default()
    }
}

fn rig(addrs: &[&str], cfg: HealthCheckConfig, gate: Option<Rc<Notify>>) -> Rig {
    let list = Rc::new(RefCell::new(Ok(addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>())));
    let (calls_tx, calls) = mpsc::unbounded_channel();
    let (collector, reports) = Collector::start_new();
    let health = ScriptedHealth::default();
    let observer = BackendObserver::new(
        ScriptedFetcher {
            list: list.clone(),
            calls: calls_tx,
            gate,
        },
        health.clone(),
        cfg,
        collector.clone().recipient(),
    )
    .start();
    Rig {
        list,
        health,
        calls,
        reports,
        observer,
        _collector: collector,
    }
}

impl Rig {
    async fn next_report(&mut self) -> BackendsChanged {
        self.reports.recv().await.expect("observer reports")
    }

    async fn cycle(&mut self) -> BackendsChanged {
        self.observer.send(Refresh).await.unwrap();
        self.next_report().await
    }
}

#[actix_rt::test]
async fn first_cycle_reports_healthy_backends() {
    let mut r = rig(&["a:1", "b:1"], slow_cfg(), None);
    let first = r.next_report().await;
    assert!(first.error.is_none());
    assert_eq!(first.backends.len(), 2);
    // Nothing changed: it still reports (that clears an earlier error), with no backends.
    let second = r.cycle().await;
    assert!(second.backends.is_empty() && second.error.is_none());
}

#[actix_rt::test]
async fn unhealthy_and_removed_backends_are_reported_down() {
    let mut r = rig(&["a:1", "b:1"], slow_cfg(), None);
    r.next_report().await;
    r.health
        .health
        .borrow_mut()
        .insert("a:1".into(), BackendHealth::down("refused"));
    *r.list.borrow_mut() = Ok(vec!["a:1".into()]);
    let rep = r.cycle().await;
    assert_eq!(rep.backends["a:1"].ping_err.as_deref(), Some("refused"));
    assert_eq!(
        rep.backends["b:1"].ping_err.as_deref(),
        Some("removed from backend list")
    );
    assert_eq!(rep.backends["b:1"].status, BackendStatus::CannotConnect);
}

#[actix_rt::test]
async fn fetch_error_is_reported_then_cleared() {
    let mut r = rig(&["a:1"], slow_cfg(), None);
    r.next_report().await;
    *r.list.borrow_mut() = Err(FetchError::new("etcd unreachable"));
    let rep = r.cycle().await;
    assert_eq!(
        rep.error,
        Some(ObserveError::Fetch(FetchError::new("etcd unreachable")))
    );
    *r.list.borrow_mut() = Ok(vec!["a:1".into()]);
    let rep = r.cycle().await;
    assert!(rep.error.is_none());
}

#[actix_rt::test]
async fn disabled_health_check_reports_every_fetched_backend_healthy() {
    let mut r = rig(
        &["a:1"],
        HealthCheckConfig {
            enable: false,
            ..slow_cfg()
        },
        None,
    );
    r.health
        .health
        .borrow_mut()
        .insert("a:1".into(), BackendHealth::down("would fail"));
    let rep = r.cycle().await;
    assert_eq!(rep.backends["a:1"].status, BackendStatus::Healthy);
}

#[actix_rt::test]
async fn refreshes_during_a_cycle_fold_into_one_more() {
    let gate = Rc::new(Notify::new());
    let mut r = rig(&["a:1"], slow_cfg(), Some(gate.clone()));
    r.calls.recv().await.unwrap(); // first cycle is fetching, held at the gate
    for _ in 0..5 {
        r.observer.send(Refresh).await.unwrap();
    }
    gate.notify_one();
    r.next_report().await;
    r.calls.recv().await.unwrap(); // exactly one more cycle
    gate.notify_one();
    r.next_report().await;
    // No third cycle was queued: a fresh refresh starts one now, and it is the next call.
    r.observer.send(Refresh).await.unwrap();
    r.calls.recv().await.unwrap();
    gate.notify_one();
    r.next_report().await;
    assert!(r.calls.try_recv().is_err());
}

#[actix_rt::test]
async fn hysteresis_holds_a_flap_until_fall_checks_fail() {
    let mut r = rig(
        &["a:1"],
        HealthCheckConfig {
            fall: 3,
            rise: 2,
            ..slow_cfg()
        },
        None,
    );
    r.next_report().await;
    r.health
        .health
        .borrow_mut()
        .insert("a:1".into(), BackendHealth::down("timeout"));
    assert!(r.cycle().await.backends.is_empty(), "1st failure held");
    assert!(r.cycle().await.backends.is_empty(), "2nd failure held");
    assert_eq!(
        r.cycle().await.backends["a:1"].status,
        BackendStatus::CannotConnect,
        "3rd failure reported"
    );
    r.health.health.borrow_mut().clear();
    assert!(r.cycle().await.backends.is_empty(), "1st success held");
    assert_eq!(
        r.cycle().await.backends["a:1"].status,
        BackendStatus::Healthy
    );
}

#[actix_rt::test]
async fn a_stopped_observer_sends_nothing_more() {
    let gate = Rc::new(Notify::new());
    let mut r = rig(&["a:1"], slow_cfg(), Some(gate.clone()));
    r.calls.recv().await.unwrap(); // a cycle is in flight
    r.observer.send(StopObserver).await.unwrap();
    gate.notify_one();
    // The observer (and with it the fetcher's channel) is gone: calls closes, no report came.
    assert!(r.calls.recv().await.is_none());
    assert!(r.reports.try_recv().is_err());
    assert!(r.observer.send(Refresh).await.is_err());
}

#[actix_rt::test]
async fn an_empty_router_asks_its_observer_to_refresh() {
    let list = Rc::new(RefCell::new(Ok(vec![])));
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let router = ScoreRouter::start_observed(
        manual_cfg(),
        ScriptedFetcher {
            list: list.clone(),
            calls: calls_tx,
            gate: None,
        },
        ScriptedHealth::default(),
        slow_cfg(),
    );
    calls.recv().await.unwrap(); // the first cycle
    *list.borrow_mut() = Ok(vec!["a:1".into()]);
    let r = router.send(Route::default()).await.unwrap();
    assert_eq!(r.unwrap_err(), RouteError::NoBackend);
    calls.recv().await.unwrap(); // the refresh it asked for
                                 // Once the refreshed list lands, routes succeed (poll the router, not the clock).
    loop {
        if router.send(Route::default()).await.unwrap().is_ok() {
            break;
        }
        calls.recv().await.unwrap();
    }
}

#[actix_rt::test]
async fn stopping_the_router_stops_its_observer() {
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let router = ScoreRouter::start_observed(
        manual_cfg(),
        ScriptedFetcher {
            list: Rc::new(RefCell::new(Ok(vec!["a:1".into()]))),
            calls: calls_tx,
            gate: None,
        },
        ScriptedHealth::default(),
        slow_cfg(),
    );
    calls.recv().await.unwrap();
    router.send(StopRouter).await.unwrap();
    // The observer drops its fetcher when it stops, closing the channel.
    while calls.recv().await.is_some() {}
}

#[actix_rt::test]
async fn supervised_router_restarts_with_its_tables_and_refreshes() {
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let router = Supervisor::start(|ctx| {
        ScoreRouter::observed(
            manual_cfg(),
            ScriptedFetcher {
                list: Rc::new(RefCell::new(Ok(vec!["a:1".into(), "b:1".into()]))),
                calls: calls_tx,
                gate: None,
            },
            ScriptedHealth::default(),
            slow_cfg(),
            ctx,
        )
    });
    calls.recv().await.unwrap();
    let mut t = Tester::with_router(router.clone());
    // Wait for the first report to land: routes succeed.
    while t.router.send(Route::default()).await.unwrap().is_err() {
        calls.recv().await.unwrap();
    }
    // That probe route was never finished: release it the way a selector would.
    let snaps = t.backends().await;
    let pending = snaps
        .iter()
        .find(|b| b.conn_score == 1)
        .unwrap()
        .addr
        .clone();
    router
        .send(ConnCreated {
            backend: pending,
            conn: None,
        })
        .await
        .unwrap();
    t.add_conns(6).await;
    let before = t.backends().await;
    router.send(StopRouter).await.unwrap();
    calls.recv().await.unwrap(); // the restarted router asked for a refresh
    assert_eq!(t.backends().await, before);
    assert_eq!(t.conn_count().await, 6);
    t.check().await;
}

#[actix_rt::test]
async fn the_router_shows_what_its_observer_sees_including_never_healthy_backends() {
    let (calls_tx, mut calls) = mpsc::unbounded_channel();
    let health = ScriptedHealth::default();
    health
        .health
        .borrow_mut()
        .insert("down:1".into(), BackendHealth::down("refused"));
    let router = ScoreRouter::start_observed(
        manual_cfg(),
        ScriptedFetcher {
            list: Rc::new(RefCell::new(Ok(vec!["up:1".into(), "down:1".into()]))),
            calls: calls_tx,
            gate: None,
        },
        health,
        slow_cfg(),
    );
    calls.recv().await.unwrap();
    // The router learns only of the healthy one; the observer knows both.
    let observed = loop {
        let o = router.send(GetObserved).await.unwrap();
        if !o.is_empty() {
            break o;
        }
        router.send(RefreshBackends).await.unwrap();
        calls.recv().await.unwrap();
    };
    assert_eq!(observed["down:1"].status, BackendStatus::CannotConnect);
    assert_eq!(observed["up:1"].status, BackendStatus::Healthy);
    let held: Vec<String> = router
        .send(GetBackends)
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.addr)
        .collect();
    assert!(!held.contains(&"down:1".to_string()));
}
