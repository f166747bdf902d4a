//! `StaticRouter`: first configured backend not excluded, counts, never moves anything.

use actix::prelude::*;
use switchyard::*;

struct Nobody;

impl Actor for Nobody {
    type Context = Context<Self>;
}

impl Handler<Redirect> for Nobody {
    type Result = ();
    fn handle(&mut self, _: Redirect, _: &mut Context<Self>) {
        panic!("a static router never redirects");
    }
}

#[actix_rt::test]
async fn static_router_returns_the_first_backend_not_excluded() {
    let router = StaticRouter::new(vec!["a:1".into(), "b:1".into()]).start();
    let mut sel = BackendSelector::new(&router);
    assert_eq!(sel.next().await.unwrap().addr(), "a:1");
    assert_eq!(sel.next().await.unwrap().addr(), "b:1");
    // Both tried: starts over.
    assert_eq!(sel.next().await.unwrap().addr(), "a:1");
    let conn = Nobody.start();
    sel.finish(Some(ConnHandle::new(1, conn.recipient())));
    assert_eq!(router.send(ConnCount).await.unwrap(), 1);
    router.send(RedirectConnections).await.unwrap().unwrap();
    router.send(RefreshBackends).await.unwrap();
    router
        .send(ConnClosed {
            addr: "a:1".into(),
            conn_id: 1,
        })
        .await
        .unwrap();
    assert_eq!(router.send(ConnCount).await.unwrap(), 0);
}

#[actix_rt::test]
async fn static_router_with_no_backends_returns_no_backend() {
    let router = StaticRouter::new(vec![]).start();
    let mut sel = BackendSelector::new(&router);
    assert_eq!(sel.next().await.unwrap_err(), RouteError::NoBackend);
}

#[actix_rt::test]
async fn selector_reports_a_gone_router() {
    let router = ScoreRouter::new(RouterConfig::default()).start();
    let mut sel = BackendSelector::new(&router);
    router.send(StopRouter).await.unwrap();
    assert_eq!(sel.next().await.unwrap_err(), RouteError::RouterGone);
}
