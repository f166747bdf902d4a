//! The operator's routing controls, against the real `switchyard` binary and loopback echo
//! backends: weights, the per-backend cap and its FIFO wait queue (a close in `tcp` mode, ERR
//! 1040 in `mysql` mode against real MariaDB), panic mode and drain-then-close.
//! Every wait polls a condition with a deadline.

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use support::{
    closed_within, echo, free_port, http, mysql_opts, wait_until, Backend, Behaviour, Service,
};
use switchyard_testkit::MariaDb;

/// How long a test waits for something the proxy should do well within it.
const PATIENCE: Duration = Duration::from_secs(10);

/// The value of the sample `series` (name with labels, exactly as rendered) in `/metrics`.
fn metric(svc: &Service, series: &str) -> Option<f64> {
    let (code, body) = http(svc.admin, "GET", "/metrics").expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn wait_metric(svc: &Service, series: &str, want: f64) {
    wait_until(&format!("{series} = {want}"), PATIENCE, || {
        metric(svc, series) == Some(want)
    });
}

/// Connections registered per backend, by address.
fn count_on(svc: &Service, addr: &str) -> u64 {
    svc.conn_counts()
        .into_iter()
        .find(|(a, _)| a == addr)
        .map_or(0, |(_, n)| n)
}

fn total(svc: &Service) -> u64 {
    svc.conn_counts().iter().map(|(_, n)| n).sum()
}

/// A client that has echoed once, so it is routed, connected and registered.
fn routed_client(svc: &Service) -> TcpStream {
    let mut c = svc.client();
    assert_eq!(echo(&mut c, b"hi").expect("echo through the proxy"), b"hi");
    c
}

/// An echo server on a port chosen before it listens (so the service can be configured with a
/// backend that comes up later). Stops with the test.
struct LateEcho {
    stop: Arc<AtomicBool>,
}

impl LateEcho {
    fn on(port: u16) -> LateEcho {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the late backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).expect("blocking");
                        thread::spawn(move || {
                            let mut buf = [0u8; 4096];
                            while let Ok(n) = c.read(&mut buf) {
                                if n == 0 || c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        LateEcho { stop }
    }
}

impl Drop for LateEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

// ---------------------------------------------------------------------------------------------
// Weights
// ---------------------------------------------------------------------------------------------

#[test]
fn a_backend_of_weight_3_takes_three_times_the_clients_of_one_of_weight_1() {
    let heavy = Backend::start(Behaviour::Echo);
    let light = Backend::start(Behaviour::Echo);
    let weighted = format!("{{ addr: \"{}\", weight: 3 }}", heavy.addr);
    let svc = Service::start(&[&weighted, &light.addr], "");
    svc.wait_healthy(2);

    let clients: Vec<TcpStream> = (0..40).map(|_| routed_client(&svc)).collect();
    wait_until("40 connections registered", PATIENCE, || total(&svc) == 40);
    let (h, l) = (count_on(&svc, &heavy.addr), count_on(&svc, &light.addr));
    assert!(
        (28..=32).contains(&h) && h + l == 40,
        "{h}:{l} is not about 3:1"
    );

    let views = svc.backends();
    let weight_of = |addr: &str| {
        views
            .iter()
            .find(|b| b["addr"] == addr)
            .and_then(|b| b["weight"].as_f64())
    };
    assert_eq!(weight_of(&heavy.addr), Some(3.0), "{views:?}");
    assert_eq!(weight_of(&light.addr), Some(1.0), "{views:?}");
    assert_eq!(
        metric(
            &svc,
            &format!("switchyard_backend_weight{{backend=\"{}\"}}", heavy.addr)
        ),
        Some(3.0)
    );
    drop(clients);
}

// ---------------------------------------------------------------------------------------------
// Per-backend cap and the wait queue
// ---------------------------------------------------------------------------------------------

const QUEUE: &str = "switchyard_route_queue_length";

#[test]
fn clients_over_the_cap_wait_and_are_served_first_come_first_served() {
    let backend = Backend::start(Behaviour::Echo);
    let svc = Service::start(
        &[&backend.addr],
        "balance: { max_conns_per_backend: 1, queue_timeout: 30s }\n",
    );
    svc.wait_healthy(1);
    let first = routed_client(&svc);

    let mut second = svc.client();
    wait_metric(&svc, QUEUE, 1.0);
    let mut third = svc.client();
    wait_metric(&svc, QUEUE, 2.0);
    // both write now; only the one at the front of the queue may get its echo first
    second.write_all(b"two").expect("write");
    third.write_all(b"three").expect("write");

    drop(first);
    let mut got = [0u8; 3];
    second
        .read_exact(&mut got)
        .expect("the second client is served first");
    assert_eq!(&got, b"two");
    wait_metric(&svc, QUEUE, 1.0);
    assert_eq!(total(&svc), 1, "the cap holds while the third waits");

    drop(second);
    let mut got = [0u8; 5];
    third.read_exact(&mut got).expect("then the third");
    assert_eq!(&got, b"three");
    wait_metric(&svc, QUEUE, 0.0);
    assert_eq!(
        metric(&svc, "switchyard_route_queue_waits_total"),
        Some(2.0)
    );
}

#[test]
fn a_tcp_client_that_waits_past_queue_timeout_is_closed() {
    let backend = Backend::start(Behaviour::Echo);
    let svc = Service::start(
        &[&backend.addr],
        "balance: { max_conns_per_backend: 1, queue_timeout: 200ms }\n",
    );
    svc.wait_healthy(1);
    let mut first = routed_client(&svc);

    let mut late = svc.client();
    assert!(closed_within(PATIENCE, &mut late, "the client over the cap").is_empty());
    wait_metric(&svc, "switchyard_route_queue_timeouts_total", 1.0);
    wait_metric(&svc, QUEUE, 0.0);
    assert_eq!(
        echo(&mut first, b"still").expect("the first goes on"),
        b"still"
    );
    drop(first);
    wait_until("the first unregistered", PATIENCE, || total(&svc) == 0);
    let _next = routed_client(&svc);
}

// ---------------------------------------------------------------------------------------------
// Panic mode
// ---------------------------------------------------------------------------------------------

#[test]
fn with_too_few_healthy_backends_panic_mode_routes_to_every_known_one() {
    let up = Backend::start(Behaviour::Echo);
    let (p1, p2) = (free_port(), free_port());
    let (late1, late2) = (format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}"));
    // rise: 1000 keeps the late backends "down" in the proxy's eyes once they do listen
    let svc = Service::start_with(|proxy, admin| {
        format!(
            "proxy: {{ listen: {proxy}, protocol: tcp }}\n\
             admin: {{ listen: {admin} }}\n\
             backends: {{ static: [{}, {late1}, {late2}] }}\n\
             health_check: {{ interval: 100ms, max_retries: 0, retry_interval: 50ms, dial_timeout: 300ms, rise: 1000 }}\n\
             balance: {{ panic_threshold: 0.5 }}\n\
             log: {{ level: debug }}\n",
            up.addr
        )
    });
    svc.wait_healthy(1);
    wait_metric(&svc, "switchyard_panic_mode", 1.0);
    assert!(
        svc.backends().iter().all(|b| b["panic"] == true),
        "{:?}",
        svc.backends()
    );
    assert!(
        svc.log().contains("PANIC MODE"),
        "panic mode is logged loudly"
    );

    let _e1 = LateEcho::on(p1);
    let _e2 = LateEcho::on(p2);
    let clients: Vec<TcpStream> = (0..30).map(|_| routed_client(&svc)).collect();
    wait_until("30 connections registered", PATIENCE, || total(&svc) == 30);
    for addr in [&up.addr, &late1, &late2] {
        let n = count_on(&svc, addr);
        assert!(
            (8..=12).contains(&n),
            "{addr} has {n} of 30: {:?}",
            svc.conn_counts()
        );
    }
    drop(clients);
}

#[test]
fn with_panic_mode_off_a_lone_healthy_backend_takes_every_client() {
    let up = Backend::start(Behaviour::Echo);
    let p1 = free_port();
    let late1 = format!("127.0.0.1:{p1}");
    let svc = Service::start_with(|proxy, admin| {
        format!(
            "proxy: {{ listen: {proxy}, protocol: tcp }}\n\
             admin: {{ listen: {admin} }}\n\
             backends: {{ static: [{}, {late1}] }}\n\
             health_check: {{ interval: 100ms, max_retries: 0, retry_interval: 50ms, dial_timeout: 300ms, rise: 1000 }}\n\
             balance: {{ panic_threshold: 0 }}\n",
            up.addr
        )
    });
    svc.wait_healthy(1);
    let _e1 = LateEcho::on(p1);
    let clients: Vec<TcpStream> = (0..6).map(|_| routed_client(&svc)).collect();
    wait_until("6 connections registered", PATIENCE, || total(&svc) == 6);
    assert_eq!(count_on(&svc, &up.addr), 6);
    assert_eq!(metric(&svc, "switchyard_panic_mode"), Some(0.0));
    drop(clients);
}

// ---------------------------------------------------------------------------------------------
// Drain then close
// ---------------------------------------------------------------------------------------------

#[test]
fn drain_with_a_timeout_closes_tcp_clients_left_on_the_backend_and_a_plain_drain_does_not() {
    let a = Backend::start(Behaviour::Echo);
    let b = Backend::start(Behaviour::Echo);
    let svc = Service::start(&[&a.addr, &b.addr], "");
    svc.wait_healthy(2);
    let mut clients: Vec<TcpStream> = (0..4).map(|_| routed_client(&svc)).collect();
    wait_until("4 registered", PATIENCE, || total(&svc) == 4);
    assert_eq!(count_on(&svc, &a.addr), 2);

    let (code, body) = http(
        svc.admin,
        "POST",
        &format!("/backends/{}/drain?timeout=nonsense", a.addr),
    )
    .expect("POST");
    assert_eq!(code, 400, "{body}");

    let (code, body) =
        http(svc.admin, "POST", &format!("/backends/{}/drain", b.addr)).expect("POST plain drain");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http(
        svc.admin,
        "POST",
        &format!("/backends/{}/drain?timeout=300ms", a.addr),
    )
    .expect("POST drain with timeout");
    assert_eq!(code, 200, "{body}");

    wait_until("a's clients closed", PATIENCE, || {
        count_on(&svc, &a.addr) == 0
    });
    let mut closed = 0;
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        match echo(c, b"ping") {
            Ok(got) => assert_eq!(got, b"ping"),
            Err(_) => closed += 1,
        }
    }
    assert_eq!(closed, 2, "exactly the clients on the timed-out backend");
    assert_eq!(count_on(&svc, &b.addr), 2, "a plain drain closes nothing");
    for c in &clients {
        let _ = c.shutdown(Shutdown::Both);
    }
    let (code, _) = http(svc.admin, "POST", "/backends/10.9.9.9:1/drain?timeout=1s").expect("POST");
    assert_eq!(code, 404);
}

// ---------------------------------------------------------------------------------------------
// mysql mode, real MariaDB
// ---------------------------------------------------------------------------------------------

const USER: &str = "app";
const PASSWORD: &str = "app-pw";
/// MySQL's "Too many connections".
const ER_CON_COUNT_ERROR: u16 = 1040;

fn mysql_config(proxy: SocketAddr, admin: SocketAddr, backend: &str, balance: &str) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: mysql, workers: 1 }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [\"{backend}\"] }}\n\
         health_check: {{ enable: false, interval: 1h }}\n\
         balance: {{ {balance} }}\n\
         mysql: {{ users: [{{ name: {USER}, password: {PASSWORD} }}] }}\n\
         log: {{ level: debug }}\n"
    )
}

fn mariadb() -> Option<MariaDb> {
    let db = MariaDb::start()?;
    db.sql(&format!(
        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%';"
    ));
    Some(db)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

#[test]
fn mysql_clients_over_the_cap_get_1040_after_queue_timeout_and_a_drain_timeout_ends_sessions() {
    let Some(db) = mariadb() else { return };
    let backend = db.addr().to_string();
    let svc = Service::start_with(|p, a| {
        mysql_config(
            p,
            a,
            &backend,
            "max_conns_per_backend: 1, queue_timeout: 200ms",
        )
    });
    let port = svc.proxy.port();
    let rt = runtime();
    let _in_rt = rt.enter();

    let mut first = rt
        .block_on(Conn::new(mysql_opts(port, USER, PASSWORD)))
        .expect("the first login has room");
    let e = match rt.block_on(Conn::new(mysql_opts(port, USER, PASSWORD))) {
        Err(mysql_async::Error::Server(e)) => e,
        other => panic!("expected a server error, got {other:?}"),
    };
    assert_eq!(e.code, ER_CON_COUNT_ERROR, "{e:?}");
    wait_metric(&svc, "switchyard_route_queue_timeouts_total", 1.0);

    let one: u32 = rt
        .block_on(first.query_first("SELECT 1"))
        .expect("the admitted session goes on")
        .expect("a row");
    assert_eq!(one, 1);

    // drain with a timeout: the idle session is closed at its safe point
    let (code, body) = http(
        svc.admin,
        "POST",
        &format!("/backends/{backend}/drain?timeout=100ms"),
    )
    .expect("POST drain");
    assert_eq!(code, 200, "{body}");
    wait_until("the session is closed", PATIENCE, || total(&svc) == 0);
    // the proxy's ERR 1927 (sequence 0, as a server's own "connection was killed") waits in
    // the socket; the client reads it as the answer to its next command and gives up
    rt.block_on(first.query_drop("SELECT 1"))
        .expect_err("a closed session's next query fails");
}
