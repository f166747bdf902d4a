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
use mysql_async::{Conn, OptsBuilder};
use support::{echo, free_port, http, wait_until, Backend, Behaviour, Service};
use switchyard_testkit::MariaDb;

const USER: &str = "app";
const PASSWORD: &str = "app-pw";

/// A config with health checks off (every listed backend counts as healthy) and no rebalancing.
fn config(
    proxy: SocketAddr,
    admin: SocketAddr,
    protocol: &str,
    backends: &[&str],
    extra: &str,
) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: {protocol}, connect_timeout: 1s }}\n\
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

/// Both backends listed and healthy (health checks are off, so that is as soon as discovered).
fn wait_listed(svc: &Service) {
    svc.wait_healthy(2);
}

#[test]
fn every_counter_moves_in_tcp_mode() {
    let live = Backend::start(Behaviour::Echo);
    let dead = format!("127.0.0.1:{}", free_port());
    let svc = Service::start_with(|p, a| config(p, a, "tcp", &[&live.addr, &dead], ""));
    wait_listed(&svc);

    // Only the dead backend is routable: the client is closed, both failures are counted.
    post(&svc, &format!("/backends/{}/drain", live.addr));
    let mut refused = svc.client();
    let mut buf = [0u8; 1];
    assert!(
        matches!(refused.read(&mut buf), Ok(0) | Err(_)),
        "a client with no reachable backend is closed"
    );
    wait_for(&svc, "switchyard_route_failures_total", "= 1", |v| v == 1.0);
    let dead_series = format!("switchyard_backend_connect_failures_total{{backend=\"{dead}\"}}");
    wait_for(&svc, &dead_series, ">= 1", |v| v >= 1.0);
    post(&svc, &format!("/backends/{}/undrain", live.addr));

    let mut c = svc.client();
    let data = vec![42u8; 10_000];
    assert_eq!(echo(&mut c, &data).expect("echo through the proxy"), data);
    wait_for(&svc, "switchyard_routes_total", "= 1", |v| v == 1.0);
    wait_for(&svc, "switchyard_connections_active", "= 1", |v| v == 1.0);
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
    let text = metrics(&svc);
    assert_eq!(
        sample(&text, "switchyard_connections_accepted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "switchyard_route_failures_total"), Some(1.0));

    drop((c, refused));
    wait_for(&svc, "switchyard_connections_active", "back to 0", |v| {
        v == 0.0
    });
}

async fn mysql_connect(svc: &Service) -> Result<Conn, mysql_async::Error> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(svc.proxy.port())
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .prefer_socket(false);
    Conn::new(opts).await
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
    wait_listed(&svc);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_rt = rt.enter(); // clients are dropped inside it

    // Only the dead backend is routable: the client gets an error naming it.
    post(&svc, &format!("/backends/{live}/drain"));
    let Err(e) = rt.block_on(mysql_connect(&svc)) else {
        panic!("a login with no reachable backend must fail");
    };
    match e {
        mysql_async::Error::Server(e) => {
            assert_eq!(e.code, 1105, "{e:?}");
            assert!(e.message.contains(&dead), "{}", e.message);
        }
        other => panic!("expected the proxy's error packet, got {other}"),
    }
    wait_for(&svc, "switchyard_route_failures_total", "= 1", |v| v == 1.0);
    let dead_series = format!("switchyard_backend_connect_failures_total{{backend=\"{dead}\"}}");
    wait_for(&svc, &dead_series, ">= 1", |v| v >= 1.0);
    post(&svc, &format!("/backends/{live}/undrain"));

    let mut c = rt
        .block_on(mysql_connect(&svc))
        .expect("log in through the proxy");
    let big: String = rt
        .block_on(c.query_first("SELECT REPEAT('x', 10000)"))
        .expect("query")
        .expect("a row");
    assert_eq!(big.len(), 10_000);
    wait_for(&svc, "switchyard_routes_total", "= 1", |v| v == 1.0);
    wait_for(&svc, "switchyard_connections_active", "= 1", |v| v == 1.0);
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
    let text = metrics(&svc);
    assert_eq!(
        sample(&text, "switchyard_connections_accepted_total"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(sample(&text, "switchyard_route_failures_total"), Some(1.0));

    rt.block_on(c.disconnect()).expect("disconnect");
    wait_for(&svc, "switchyard_connections_active", "back to 0", |v| {
        v == 0.0
    });
}
