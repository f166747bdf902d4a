//! `Connector` and `Registration`: each backend tried once, every failure reported and followed
//! by a refresh, and a registration that reports the connection's end however it ends.
//!
//! A recording router double shows exactly which messages a connection sent; the drop-guard
//! tests use the real `ScoreRouter` and its connection count.

mod common;

use std::future::pending;
use std::time::Duration;

use actix::prelude::*;
use switchyard::*;

/// What the recording router received, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Created { backend: String, registered: bool },
    Refresh,
    Closed { addr: String },
    Succeeded { from: String, to: String },
    Failed { from: String, to: String },
}

/// Routes to the first backend of a fixed list that is not excluded, and records the rest.
struct Recorder {
    backends: Vec<String>,
    log: Vec<Event>,
}

impl Recorder {
    fn start(backends: &[&str]) -> Addr<Recorder> {
        Recorder {
            backends: backends.iter().map(|b| b.to_string()).collect(),
            log: Vec::new(),
        }
        .start()
    }
}

impl Actor for Recorder {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "Vec<Event>")]
struct Log;

impl Handler<Log> for Recorder {
    type Result = MessageResult<Log>;
    fn handle(&mut self, _: Log, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.log.clone())
    }
}

impl Handler<Route> for Recorder {
    type Result = Result<BackendInst, RouteError>;
    fn handle(&mut self, msg: Route, _: &mut Context<Self>) -> Self::Result {
        self.backends
            .iter()
            .find(|b| !msg.excluded.contains(b))
            .map(|b| BackendInst::new(b.clone(), true))
            .ok_or(RouteError::NoBackend)
    }
}

impl Handler<ConnCreated> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ConnCreated, _: &mut Context<Self>) {
        self.log.push(Event::Created {
            backend: msg.backend,
            registered: msg.conn.is_some(),
        });
    }
}

impl Handler<RefreshBackends> for Recorder {
    type Result = ();
    fn handle(&mut self, _: RefreshBackends, _: &mut Context<Self>) {
        self.log.push(Event::Refresh);
    }
}

impl Handler<ConnClosed> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: ConnClosed, _: &mut Context<Self>) {
        self.log.push(Event::Closed { addr: msg.addr });
    }
}

impl Handler<RedirectSucceeded> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: RedirectSucceeded, _: &mut Context<Self>) {
        self.log.push(Event::Succeeded {
            from: msg.from,
            to: msg.to,
        });
    }
}

impl Handler<RedirectFailed> for Recorder {
    type Result = ();
    fn handle(&mut self, msg: RedirectFailed, _: &mut Context<Self>) {
        self.log.push(Event::Failed {
            from: msg.from,
            to: msg.to,
        });
    }
}

/// A connection actor that only exists to be registered; `Boom` makes it panic.
struct Conn {
    /// Held only to be dropped with the actor.
    _registration: Option<Registration>,
    /// Dropped after `registration` (fields drop in order): tells the test the actor is gone.
    _gone: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Actor for Conn {
    type Context = Context<Self>;
}

impl Handler<Redirect> for Conn {
    type Result = ();
    fn handle(&mut self, _: Redirect, _: &mut Context<Self>) {}
}

#[derive(Message)]
#[rtype(result = "()")]
struct Boom;

impl Handler<Boom> for Conn {
    type Result = ();
    fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
        panic!("a connection bug");
    }
}

fn handle(id: u64) -> (Addr<Conn>, ConnHandle) {
    let conn = Conn {
        _registration: None,
        _gone: None,
    }
    .start();
    let h = ConnHandle::new(id, conn.clone().recipient());
    (conn, h)
}

const TIMEOUT: Duration = Duration::from_secs(2);

fn created(backend: &str, registered: bool) -> Event {
    Event::Created {
        backend: backend.into(),
        registered,
    }
}

#[actix_rt::test]
async fn the_first_backend_that_connects_is_registered_and_nothing_is_refreshed() {
    let router = Recorder::start(&["a:1", "b:1"]);
    let (_conn, h) = handle(1);
    let got = Connector::new(&router, TIMEOUT)
        .connect(h, |inst| async move {
            Ok::<_, std::io::Error>(inst.addr().len())
        })
        .await
        .expect("connected");
    assert_eq!(got.backend.addr(), "a:1");
    assert_eq!(got.conn, 3);
    assert!(got.failures.is_empty());
    assert_eq!(got.registration.backend(), "a:1");
    assert_eq!(got.registration.conn_id(), 1);
    assert_eq!(router.send(Log).await.unwrap(), [created("a:1", true)]);
}

#[actix_rt::test]
async fn a_failing_backend_is_reported_refreshed_and_skipped() {
    let router = Recorder::start(&["down:1", "up:1"]);
    let (_conn, h) = handle(1);
    let got = Connector::new(&router, TIMEOUT)
        .connect(h, |inst| async move {
            if inst.addr() == "down:1" {
                Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
            } else {
                Ok(())
            }
        })
        .await
        .expect("connected to the second");
    assert_eq!(got.backend.addr(), "up:1");
    assert_eq!(got.failures.len(), 1);
    assert_eq!(got.failures[0].backend, "down:1");
    assert!(matches!(got.failures[0].error, AttemptError::Failed(_)));
    assert_eq!(
        router.send(Log).await.unwrap(),
        [
            created("down:1", false),
            Event::Refresh,
            created("up:1", true)
        ]
    );
}

#[actix_rt::test]
async fn when_every_backend_fails_each_is_tried_once_and_the_error_names_them_all() {
    tokio::time::pause();
    let router = Recorder::start(&["refuses:1", "hangs:1"]);
    let (_conn, h) = handle(1);
    let mut attempts = Vec::new();
    let err = Connector::new(&router, TIMEOUT)
        .connect(h, |inst| {
            attempts.push(inst.addr().to_string());
            async move {
                if inst.addr() == "refuses:1" {
                    return Err(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
                }
                pending::<Result<(), std::io::Error>>().await
            }
        })
        .await
        .err()
        .expect("no backend connects");
    assert_eq!(
        attempts,
        ["refuses:1", "hangs:1"],
        "each tried exactly once"
    );
    assert!(matches!(err, ConnectError::AllFailed { .. }), "{err:?}");
    let tried: Vec<&str> = err.tried().iter().map(|f| f.backend.as_str()).collect();
    assert_eq!(tried, ["refuses:1", "hangs:1"]);
    assert!(matches!(
        err.tried()[1].error,
        AttemptError::TimedOut(TIMEOUT)
    ));
    let text = err.to_string();
    assert!(
        text.contains("refuses:1: ") && text.contains("hangs:1: connect timed out"),
        "{text}"
    );
    assert_eq!(
        router.send(Log).await.unwrap(),
        [
            created("refuses:1", false),
            Event::Refresh,
            created("hangs:1", false),
            Event::Refresh
        ]
    );
}

#[actix_rt::test]
async fn with_no_backend_at_all_nothing_is_tried_and_the_route_error_is_returned() {
    let router = Recorder::start(&[]);
    let (_conn, h) = handle(1);
    let err = Connector::new(&router, TIMEOUT)
        .connect(h, |_| async { Ok::<_, std::io::Error>(()) })
        .await
        .err()
        .expect("no backend");
    assert!(
        matches!(
            &err,
            ConnectError::Route {
                source: RouteError::NoBackend,
                tried
            } if tried.is_empty()
        ),
        "{err:?}"
    );
    assert_eq!(err.to_string(), "no available backend");
    assert!(router.send(Log).await.unwrap().is_empty());
}

#[actix_rt::test]
async fn a_registration_reports_moves_and_closes_on_the_backend_it_moved_to() {
    let router = Recorder::start(&["a:1", "b:1"]);
    let mut reg = register(&router, 7).await;
    assert_eq!(reg.backend(), "a:1");
    reg.redirect_failed("b:1");
    reg.redirect_succeeded("b:1");
    assert_eq!(reg.backend(), "b:1");
    drop(reg);
    assert_eq!(
        router.send(Log).await.unwrap(),
        [
            created("a:1", true),
            Event::Failed {
                from: "a:1".into(),
                to: "b:1".into()
            },
            Event::Succeeded {
                from: "a:1".into(),
                to: "b:1".into()
            },
            Event::Closed { addr: "b:1".into() },
        ]
    );
}

/// A `ScoreRouter` with two healthy backends and no periodic rebalance.
async fn score_router() -> Addr<ScoreRouter> {
    let mut t = common::Tester::new();
    t.add_backends(2).await;
    t.router
}

/// Registers connection `id` through a connector whose connects always succeed.
async fn register<R>(router: &Addr<R>, id: u64) -> Registration
where
    R: Handler<Route>
        + Handler<ConnCreated>
        + Handler<RefreshBackends>
        + Handler<ConnClosed>
        + Handler<RedirectSucceeded>
        + Handler<RedirectFailed>
        + Actor<Context = Context<R>>,
{
    let (_conn, h) = handle(id);
    Connector::new(router, TIMEOUT)
        .connect(h, |_| async { Ok::<_, std::io::Error>(()) })
        .await
        .expect("connected")
        .registration
}

#[actix_rt::test]
async fn a_task_that_panics_still_unregisters_its_connection() {
    let router = score_router().await;
    let reg = register(&router, 1).await;
    assert_eq!(router.send(ConnCount).await.unwrap(), 1);
    let task = actix::spawn(async move {
        let _reg = reg;
        panic!("a connection bug");
    });
    assert!(task.await.unwrap_err().is_panic());
    // the task's future (and its registration) is dropped before its join handle resolves
    assert_eq!(router.send(ConnCount).await.unwrap(), 0);
    router.send(CheckInvariants).await.unwrap().unwrap();
}

#[actix_rt::test]
async fn an_actor_that_panics_still_unregisters_its_connection() {
    let router = score_router().await;
    let reg = register(&router, 1).await;
    let (gone_tx, gone) = tokio::sync::oneshot::channel();
    let conn = Conn {
        _registration: Some(reg),
        _gone: Some(gone_tx),
    }
    .start();
    assert_eq!(router.send(ConnCount).await.unwrap(), 1);
    conn.do_send(Boom);
    // resolves once the actor was dropped; its registration dropped just before
    assert!(gone.await.is_err());
    assert_eq!(router.send(ConnCount).await.unwrap(), 0);
    let backends = router.send(GetBackends).await.unwrap();
    assert!(backends.iter().all(|b| b.conn_count == 0), "{backends:?}");
}
