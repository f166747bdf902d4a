//! Every counter in `/metrics` moves, in both protocols: the real `switchyard` binary, a live
//! backend (an echo server for `tcp`, a real MariaDB for `mysql`) and a port nobody listens on.
//!
//! Health checks are off, so the router keeps offering the dead port: draining the live backend
//! leaves only the dead one (a route failure, with a connect failure named by backend), and
//! undraining it lets the next client through.

mod support;

use std::io::Read;
use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::Conn;
use support::{echo, free_port, http, mysql_opts, wait_until, Backend, Behaviour, Service};
use switchyard_testkit::MariaDb;

const USER: &str = "app";
const PASSWORD: &str = "app-pw";

/// A config with health checks off (every listed backend counts as healthy), no rebalancing, and
/// one worker thread (so a client that kills its worker would show in the next one).
fn config(
    proxy: SocketAddr,
    admin: SocketAddr,
    protocol: &str,
    backends: &[&str],
    extra: &str,
) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: {protocol}, connect_timeout: 1s, workers: 1 }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [{}] }}\n\
         health_check: {{ enable: false, interval: 100ms }}\n\
         balance: {{ max_score_ratio: 1000.0 }}\n\
         log: {{ level: debug }}\n\
         {extra}",
        backends.join(", ")
    )
}

/// The value of the sample `series` (name with labels, exactly as rendered), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// `GET /metrics`.
fn metrics(svc: &Service) -> String {
    let (code, body) = http(svc.admin, "GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body
}

/// Waits until `series` reads `cond`, then returns its value.
fn wait_for(svc: &Service, series: &str, what: &str, cond: impl Fn(f64) -> bool) -> f64 {
    let mut last = None;
    wait_until(&format!("{series} {what}"), Duration::from_secs(10), || {
        last = sample(&metrics(svc), series);
        last.is_some_and(&cond)
    });
    last.unwrap_or_default()
}

fn post(svc: &Service, path: &str) {
    let (code, body) = http(svc.admin, "POST", path).expect("admin answers");
    assert_eq!(code, 200, "POST {path}: {body}");
}

/// Drains `live` so only `dead` is routable, runs `client` (a client that must be refused),
/// checks the route failure and the connect failure named by backend, and undrains `live`.
fn refuse_a_client(svc: &Service, live: &str, dead: &str, client: impl FnOnce()) {
    post(svc, &format!("/backends/{live}/drain"));
    client();
    wait_for(svc, "switchyard_route_failures_total", "= 1", |v| v == 1.0);
    let dead_series = format!("switchyard_backend_connect_failures_total{{backend=\"{dead}\"}}");
    wait_for(svc, &dead_series, ">= 1", |v| v >= 1.0);
    post(svc, &format!("/backends/{live}/undrain"));
}

/// After one refused and one served client: the totals of the entry path, and the gauge up.
fn check_one_refused_one_served(svc: &Service) {
    wait_for(svc, "switchyard_routes_total", "= 1", |v| v == 1.0);
    wait_for(svc, "switchyard_connections_active", "= 1", |v| v == 1.0);
    let text = metrics(svc);
    assert_eq!(
        sample(&text, "switchyard_connections_accepted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "switchyard_route_failures_total"), Some(1.0));
}

#[test]
fn every_counter_moves_in_tcp_mode() {
    let live = Backend::start(Behaviour::Echo);
    let dead = format!("127.0.0.1:{}", free_port());
    let svc = Service::start_with(|p, a| config(p, a, "tcp", &[&live.addr, &dead], ""));
    svc.wait_healthy(2);

    refuse_a_client(&svc, &live.addr, &dead, || {
        let mut refused = svc.client();
        let mut buf = [0u8; 1];
        assert!(
            matches!(refused.read(&mut buf), Ok(0) | Err(_)),
            "a client with no reachable backend is closed"
        );
    });

    let mut c = svc.client();
    let data = vec![42u8; 10_000];
    assert_eq!(echo(&mut c, &data).expect("echo through the proxy"), data);
    check_one_refused_one_served(&svc);
    wait_for(&svc, "switchyard_bytes_in_total", "= 10000", |v| {
        v == 10_000.0
    });
    wait_for(&svc, "switchyard_bytes_out_total", "= 10000", |v| {
        v == 10_000.0
    });
    post(&svc, "/redirect");
    wait_for(
        &svc,
        "switchyard_migrations_total{result=\"failed\"}",
        ">= 1 (tcp refuses moves)",
        |v| v >= 1.0,
    );

    drop(c);
    wait_for(&svc, "switchyard_connections_active", "back to 0", |v| {
        v == 0.0
    });
}

#[test]
fn every_counter_moves_in_mysql_mode() {
    let Some(db) = MariaDb::start() else { return };
    db.sql(&format!(
        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%';"
    ));
    let live = db.addr().to_string();
    let dead = format!("127.0.0.1:{}", free_port());
    let users = format!("mysql: {{ users: [{{ name: {USER}, password: {PASSWORD} }}] }}\n");
    let svc = Service::start_with(|p, a| config(p, a, "mysql", &[&live, &dead], &users));
    svc.wait_healthy(2);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_rt = rt.enter(); // clients are dropped inside it
    let login = || Conn::new(mysql_opts(svc.proxy.port(), USER, PASSWORD));

    refuse_a_client(&svc, &live, &dead, || {
        let Err(e) = rt.block_on(login()) else {
            panic!("a login with no reachable backend must fail");
        };
        match e {
            mysql_async::Error::Server(e) => {
                assert_eq!(e.code, 1105, "{e:?}");
                assert!(e.message.contains(&dead), "{}", e.message);
            }
            other => panic!("expected the proxy's error packet, got {other}"),
        }
    });

    let mut c = rt.block_on(login()).expect("log in through the proxy");
    let big: String = rt
        .block_on(c.query_first("SELECT REPEAT('x', 10000)"))
        .expect("query")
        .expect("a row");
    assert_eq!(big.len(), 10_000);
    check_one_refused_one_served(&svc);
    wait_for(&svc, "switchyard_bytes_in_total", "> 0", |v| v > 0.0);
    wait_for(&svc, "switchyard_bytes_out_total", "> 10000", |v| {
        v > 10_000.0
    });

    post(&svc, "/redirect");
    wait_for(
        &svc,
        "switchyard_migrations_total{result=\"succeeded\"}",
        "= 1",
        |v| v == 1.0,
    );
    let one: i64 = rt
        .block_on(c.query_first("SELECT 1"))
        .expect("the moved session works")
        .expect("a row");
    assert_eq!(one, 1);

    rt.block_on(c.disconnect()).expect("disconnect");
    wait_for(&svc, "switchyard_connections_active", "back to 0", |v| {
        v == 0.0
    });
}

#[test]
fn a_session_that_dies_on_a_hostile_query_leaves_no_accounting_behind() {
    let Some(db) = MariaDb::start() else { return };
    db.sql(&format!(
        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%';"
    ));
    let live = db.addr().to_string();
    let users = format!("mysql: {{ users: [{{ name: {USER}, password: {PASSWORD} }}] }}\n");
    let svc = Service::start_with(|p, a| config(p, a, "mysql", &[&live], &users));
    svc.wait_healthy(1);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_rt = rt.enter();
    let login = || Conn::new(mysql_opts(svc.proxy.port(), USER, PASSWORD));
    // A 3-byte query once panicked the session (issue 9): however the session ends, its
    // registration and its live-count guard go with it.
    for _ in 0..3 {
        let mut c = rt.block_on(login()).expect("log in through the proxy");
        let _ = rt.block_on(c.query_drop(";'\\"));
    }
    wait_until("no connection registered", Duration::from_secs(10), || {
        svc.conn_counts().iter().all(|(_, n)| *n == 0)
    });
    wait_for(&svc, "switchyard_connections_active", "back to 0", |v| {
        v == 0.0
    });
    let mut c = rt.block_on(login()).expect("the proxy still serves");
    let one: i64 = rt.block_on(c.query_first("SELECT 1")).unwrap().unwrap();
    assert_eq!(one, 1);
}
