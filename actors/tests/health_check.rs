//! `DefaultHealthCheck` against loopback doubles (status 200/500/garbage, greetings good and bad,
//! silent and refused ports), against a real MariaDB, and inside a `BackendObserver` (hysteresis,
//! a 500-backend cycle with hung ones). Waits are on messages and on the checks themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use switchyard::*;
use switchyard_testkit::doubles::{
    err_packet, mysql_greeting, packet, refused_addr, HttpBehaviour, HttpDouble, SqlBehaviour,
    SqlDouble,
};
use switchyard_testkit::Collector;
use switchyard_testkit::MariaDb;
use tokio::sync::mpsc;

/// Fast timeouts; `retries` retries 20 ms apart, 300 ms to connect or to greet.
fn cfg(retries: u32) -> HealthCheckConfig {
    HealthCheckConfig {
        max_retries: retries,
        retry_interval: Duration::from_millis(20),
        dial_timeout: Duration::from_millis(300),
        ..HealthCheckConfig::default()
    }
}

fn no_status() -> BackendInfo {
    BackendInfo::default()
}

fn status_at(http: &HttpDouble) -> BackendInfo {
    BackendInfo {
        ip: "127.0.0.1".into(),
        status_port: http.addr().port(),
    }
}

fn reason(h: &BackendHealth) -> &str {
    h.ping_err.as_deref().unwrap_or("")
}

#[actix_rt::test]
async fn a_greeting_server_is_healthy_with_the_version_it_announces() {
    let sql = SqlDouble::start(SqlBehaviour::Greet("8.0.11-TiDB-v8.5.0".into())).await;
    let h = DefaultHealthCheck::new(cfg(0))
        .check(&sql.addr().to_string(), &no_status())
        .await;
    assert_eq!(h, BackendHealth::healthy_with_version("8.0.11-TiDB-v8.5.0"));
}

#[actix_rt::test]
async fn status_200_and_a_greeting_is_healthy() {
    let http = HttpDouble::start(HttpBehaviour::Status(200)).await;
    let sql = SqlDouble::start(SqlBehaviour::Greet("8.0.11-TiDB-v8.5.0".into())).await;
    let h = DefaultHealthCheck::new(cfg(0))
        .check(&sql.addr().to_string(), &status_at(&http))
        .await;
    assert_eq!(h.status, BackendStatus::Healthy, "{h}");
    assert_eq!(http.accepted(), 1);
    assert_eq!(sql.accepted(), 1);
}

#[actix_rt::test]
async fn status_500_is_down_at_once_without_retries_or_touching_the_sql_port() {
    let http = HttpDouble::start(HttpBehaviour::Status(500)).await;
    let sql = SqlDouble::start(SqlBehaviour::Greet("v".into())).await;
    let h = DefaultHealthCheck::new(cfg(3))
        .check(&sql.addr().to_string(), &status_at(&http))
        .await;
    assert_eq!(h.status, BackendStatus::CannotConnect);
    assert!(reason(&h).contains("returned 500"), "{h}");
    assert_eq!(http.accepted(), 1, "a non-200 answer is not retried");
    assert_eq!(sql.accepted(), 0);
}

#[actix_rt::test]
async fn a_status_port_answering_garbage_is_down_with_a_reason() {
    let http = HttpDouble::start(HttpBehaviour::Raw(
        b"\x00\x01garbage that is not HTTP\r\n\r\n".to_vec(),
    ))
    .await;
    let sql = SqlDouble::start(SqlBehaviour::Greet("v".into())).await;
    let h = DefaultHealthCheck::new(cfg(1))
        .check(&sql.addr().to_string(), &status_at(&http))
        .await;
    assert_eq!(h.status, BackendStatus::CannotConnect);
    assert!(
        reason(&h).starts_with("status port http://127.0.0.1:"),
        "{h}"
    );
    assert_eq!(sql.accepted(), 0);
}

#[actix_rt::test]
async fn a_hung_status_port_times_out_after_dial_timeout() {
    let http = HttpDouble::start(HttpBehaviour::Silent).await;
    let sql = SqlDouble::start(SqlBehaviour::Greet("v".into())).await;
    let started = Instant::now();
    let h = DefaultHealthCheck::new(cfg(0))
        .check(&sql.addr().to_string(), &status_at(&http))
        .await;
    assert!(reason(&h).contains("timed out after 300ms"), "{h}");
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[actix_rt::test]
async fn a_refused_status_port_is_final_at_once() {
    let dead = refused_addr().await;
    let info = BackendInfo {
        ip: "127.0.0.1".into(),
        status_port: dead.port(),
    };
    let started = Instant::now();
    let h = DefaultHealthCheck::new(HealthCheckConfig {
        retry_interval: Duration::from_secs(5),
        ..cfg(3)
    })
    .check("127.0.0.1:1", &info)
    .await;
    assert!(reason(&h).to_lowercase().contains("refused"), "{h}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused must not be retried"
    );
}

#[actix_rt::test]
async fn a_disabled_check_answers_healthy_at_once_without_touching_the_backend() {
    let off = HealthCheckConfig {
        enable: false,
        ..cfg(3)
    };
    let http = HttpDouble::start(HttpBehaviour::Status(500)).await;
    let sql = SqlDouble::start(SqlBehaviour::Greet("v".into())).await;
    let h = DefaultHealthCheck::new(off.clone())
        .check(&sql.addr().to_string(), &status_at(&http))
        .await;
    assert_eq!(h, BackendHealth::healthy());
    assert_eq!(http.accepted(), 0, "no status request");
    assert_eq!(sql.accepted(), 0, "no SQL connection");
    // nobody listens there: a probe would have been refused
    let dead = refused_addr().await;
    let h = DefaultHealthCheck::new(off)
        .check(&dead.to_string(), &no_status())
        .await;
    assert_eq!(h, BackendHealth::healthy());
}

#[actix_rt::test]
async fn a_refused_sql_port_is_final_at_once() {
    let dead = refused_addr().await;
    let started = Instant::now();
    let h = DefaultHealthCheck::new(HealthCheckConfig {
        retry_interval: Duration::from_secs(5),
        ..cfg(3)
    })
    .check(&dead.to_string(), &no_status())
    .await;
    assert_eq!(h.status, BackendStatus::CannotConnect);
    assert!(reason(&h).to_lowercase().contains("refused"), "{h}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused must not be retried"
    );
}

#[actix_rt::test]
async fn a_truncated_greeting_is_down_after_the_retries() {
    let mut truncated = mysql_greeting("8.0.11");
    truncated.truncate(12);
    let sql = SqlDouble::start(SqlBehaviour::Send(truncated)).await;
    let h = DefaultHealthCheck::new(cfg(2))
        .check(&sql.addr().to_string(), &no_status())
        .await;
    assert!(reason(&h).contains("truncated greeting"), "{h}");
    assert_eq!(sql.accepted(), 3, "one try and two retries");
}

#[actix_rt::test]
async fn an_oversized_greeting_is_down_without_being_read_or_retried() {
    let mut huge = vec![0xff, 0xff, 0xff, 0x00, 10];
    huge.extend_from_slice(&[b'x'; 1000]);
    let sql = SqlDouble::start(SqlBehaviour::SendAndHold(huge)).await;
    let h = DefaultHealthCheck::new(cfg(2))
        .check(&sql.addr().to_string(), &no_status())
        .await;
    assert!(reason(&h).contains("exceeds the 65536-byte limit"), "{h}");
    assert_eq!(sql.accepted(), 1);
}

#[actix_rt::test]
async fn an_err_greeting_is_down_with_the_servers_message() {
    let sql = SqlDouble::start(SqlBehaviour::Send(err_packet(
        1129,
        "Host '10.0.0.7' is blocked because of many connection errors; unblock with 'mariadb-admin flush-hosts'",
    )))
    .await;
    let h = DefaultHealthCheck::new(cfg(2))
        .check(&sql.addr().to_string(), &no_status())
        .await;
    assert_eq!(h.status, BackendStatus::CannotConnect);
    assert!(
        reason(&h).contains("ERROR 1129: Host '10.0.0.7' is blocked"),
        "{h}"
    );
    assert_eq!(sql.accepted(), 1, "a refusal by the server is not retried");
}

#[actix_rt::test]
async fn a_greeting_of_another_protocol_version_is_down() {
    let sql = SqlDouble::start(SqlBehaviour::Send(packet(0, b"\x095.0.0\0"))).await;
    let h = DefaultHealthCheck::new(cfg(0))
        .check(&sql.addr().to_string(), &no_status())
        .await;
    assert!(reason(&h).contains("unsupported protocol version 9"), "{h}");
}

#[actix_rt::test]
async fn a_port_that_never_speaks_is_down_within_the_bound() {
    let sql = SqlDouble::start(SqlBehaviour::Silent).await;
    let hc = DefaultHealthCheck::new(HealthCheckConfig {
        dial_timeout: Duration::from_millis(150),
        ..cfg(1)
    });
    let started = Instant::now();
    let h = hc.check(&sql.addr().to_string(), &no_status()).await;
    let took = started.elapsed();
    assert!(reason(&h).contains("no greeting within 150ms"), "{h}");
    assert_eq!(sql.accepted(), 2);
    assert!(
        took >= Duration::from_millis(300),
        "two reads timed out: {took:?}"
    );
    assert!(
        took <= hc.check_bound() + Duration::from_millis(200),
        "{took:?} > bound {:?}",
        hc.check_bound()
    );
}

#[actix_rt::test]
async fn the_tcp_probe_only_connects() {
    let sql = SqlDouble::start(SqlBehaviour::Silent).await;
    let started = Instant::now();
    let h = DefaultHealthCheck::new(HealthCheckConfig {
        probe: Probe::Tcp,
        ..cfg(0)
    })
    .check(&sql.addr().to_string(), &no_status())
    .await;
    assert_eq!(h, BackendHealth::healthy());
    assert!(started.elapsed() < Duration::from_millis(300));
}

#[actix_rt::test]
async fn a_check_that_failed_passes_again_when_the_server_recovers() {
    let sql = SqlDouble::start(SqlBehaviour::Close).await;
    let hc = DefaultHealthCheck::new(cfg(0));
    let addr = sql.addr().to_string();
    assert!(reason(&hc.check(&addr, &no_status()).await).contains("before any greeting"));
    sql.set(SqlBehaviour::Greet("8.0.11".into()));
    assert_eq!(
        hc.check(&addr, &no_status()).await,
        BackendHealth::healthy_with_version("8.0.11")
    );
}

#[actix_rt::test]
async fn status_tls_probes_the_status_port_over_https() {
    let http = HttpDouble::start(HttpBehaviour::Status(200)).await;
    let sql = SqlDouble::start(SqlBehaviour::Greet("v".into())).await;
    let h = DefaultHealthCheck::new(HealthCheckConfig {
        status_tls: true,
        ..cfg(0)
    })
    .check(&sql.addr().to_string(), &status_at(&http))
    .await;
    // The double speaks plain HTTP, so the TLS handshake fails: proof that HTTPS was used.
    assert!(
        reason(&h).starts_with("status port https://127.0.0.1:"),
        "{h}"
    );
    assert_eq!(sql.accepted(), 0);
}

/// A `MakeWriter` that keeps everything logged, for asserting on log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[actix_rt::test]
async fn a_failure_reason_is_logged_once_per_change_not_per_check() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sql = SqlDouble::start(SqlBehaviour::Close).await;
    let addr = sql.addr().to_string();
    let hc = DefaultHealthCheck::new(cfg(0));
    for _ in 0..3 {
        hc.check(&addr, &no_status()).await;
    }
    sql.set(SqlBehaviour::Send(packet(0, b"\x095.0\0")));
    for _ in 0..3 {
        hc.check(&addr, &no_status()).await;
    }
    sql.set(SqlBehaviour::Greet("8.0.11".into()));
    for _ in 0..3 {
        hc.check(&addr, &no_status()).await;
    }
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("health check failed"), 2, "one per reason:\n{text}");
    assert_eq!(count("before any greeting"), 1, "{text}");
    assert_eq!(count("protocol version 9"), 1, "{text}");
    assert_eq!(count("health check passed again"), 1, "{text}");
}

#[actix_rt::test]
async fn a_real_mariadb_is_healthy_and_announces_its_version() {
    let Some(db) = MariaDb::shared() else { return };
    let h = DefaultHealthCheck::new(HealthCheckConfig {
        dial_timeout: Duration::from_secs(2),
        ..cfg(1)
    })
    .check(&db.addr().to_string(), &no_status())
    .await;
    assert_eq!(h.status, BackendStatus::Healthy, "{h}");
    assert!(h.server_version.contains("MariaDB"), "{h:?}");
    let reported = db.sql("SELECT VERSION()");
    assert!(
        h.server_version.ends_with(reported.trim()),
        "greeting says {:?}, SELECT VERSION() says {reported:?}",
        h.server_version
    );
}

#[actix_rt::test]
async fn a_real_mariadb_refusing_connections_is_down_with_its_message() {
    // A server of its own: the test lowers max_connections, which would disturb a shared one.
    let Some(db) = MariaDb::start() else { return };
    // MariaDB clamps this (to 10); read back what it took.
    let max: usize = db
        .sql("SET GLOBAL max_connections = 1; SELECT @@GLOBAL.max_connections")
        .trim()
        .parse()
        .expect("max_connections is a number");
    // Idle connections hold every regular slot and the extra one kept for SUPER.
    let mut held = Vec::new();
    for _ in 0..=max {
        let mut conn = tokio::net::TcpStream::connect(db.addr()).await.unwrap();
        let mut head = [0u8; 5];
        tokio::io::AsyncReadExt::read_exact(&mut conn, &mut head)
            .await
            .unwrap();
        held.push(conn);
    }
    let h = DefaultHealthCheck::new(HealthCheckConfig {
        dial_timeout: Duration::from_secs(2),
        ..cfg(0)
    })
    .check(&db.addr().to_string(), &no_status())
    .await;
    assert_eq!(h.status, BackendStatus::CannotConnect, "{h}");
    assert!(reason(&h).contains("Too many connections"), "{h}");
}

// ---- Inside the observer ----------------------------------------------------------------------

/// An observer over `addrs` with the real health check; cycles only on `Refresh` (or its start).
fn observe(
    addrs: Vec<String>,
    cfg: HealthCheckConfig,
) -> (
    Addr<BackendObserver<StaticFetcher, DefaultHealthCheck>>,
    mpsc::UnboundedReceiver<BackendsChanged>,
    Addr<Collector>,
) {
    let (collector, rx) = Collector::start_new();
    let cfg = HealthCheckConfig {
        interval: Duration::from_secs(3600),
        ..cfg
    };
    let observer = BackendObserver::new(
        StaticFetcher::new(addrs),
        DefaultHealthCheck::new(cfg.clone()),
        cfg,
        collector.clone().recipient(),
    )
    .start();
    (observer, rx, collector)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<BackendsChanged>) -> BackendsChanged {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a report within 10 s")
        .expect("observer alive")
}

#[actix_rt::test]
async fn fall_3_keeps_a_backend_healthy_through_two_failed_checks_and_reports_the_third() {
    let sql = SqlDouble::start(SqlBehaviour::Greet("8.0.11".into())).await;
    let addr = sql.addr().to_string();
    let (observer, mut rx, _c) = observe(
        vec![addr.clone()],
        HealthCheckConfig {
            fall: 3,
            rise: 2,
            ..cfg(0)
        },
    );
    let first = next(&mut rx).await;
    assert_eq!(first.backends[&addr].status, BackendStatus::Healthy);

    sql.set(SqlBehaviour::Close);
    for failed in 1..=2 {
        observer.do_send(Refresh);
        let report = next(&mut rx).await;
        assert!(
            report.backends.is_empty(),
            "failed check {failed} of 3 must not be reported: {:?}",
            report.backends
        );
    }
    observer.do_send(Refresh);
    let report = next(&mut rx).await;
    assert_eq!(report.backends[&addr].status, BackendStatus::CannotConnect);
    assert!(reason(&report.backends[&addr]).contains("before any greeting"));
    assert_eq!(sql.accepted(), 4);

    // rise: 2 — one good check is not enough to come back.
    sql.set(SqlBehaviour::Greet("8.0.11".into()));
    observer.do_send(Refresh);
    assert!(next(&mut rx).await.backends.is_empty());
    observer.do_send(Refresh);
    let report = next(&mut rx).await;
    assert_eq!(
        report.backends[&addr],
        BackendHealth::healthy_with_version("8.0.11")
    );
}

#[actix_rt::test]
async fn a_cycle_over_500_backends_with_10_hung_takes_about_one_dial_timeout() {
    let dial = Duration::from_millis(500);
    let mut doubles = Vec::new();
    for i in 0..500 {
        let behaviour = if i % 50 == 7 {
            SqlBehaviour::Silent
        } else {
            SqlBehaviour::Greet("8.0.11".into())
        };
        doubles.push(SqlDouble::start(behaviour).await);
    }
    let hung: Vec<String> = doubles
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 50 == 7)
        .map(|(_, d)| d.addr().to_string())
        .collect();
    assert_eq!(hung.len(), 10);
    let addrs: Vec<String> = doubles.iter().map(|d| d.addr().to_string()).collect();

    let started = Instant::now();
    let (_observer, mut rx, _c) = observe(
        addrs,
        HealthCheckConfig {
            dial_timeout: dial,
            ..cfg(0)
        },
    );
    let report = next(&mut rx).await;
    let took = started.elapsed();

    let healthy: HashMap<_, _> = report
        .backends
        .iter()
        .filter(|(_, h)| h.status == BackendStatus::Healthy)
        .collect();
    assert_eq!(healthy.len(), 490);
    assert!(hung.iter().all(|a| !report.backends.contains_key(a)));
    assert!(
        took >= dial,
        "the hung ones wait out the dial timeout: {took:?}"
    );
    // Functional, not a benchmark: about one dial_timeout, far from 10 of them in a row.
    assert!(
        took < dial * 3,
        "cycle took {took:?} for dial_timeout {dial:?}"
    );
}

#[actix_rt::test]
async fn the_mysql_probe_logs_in_and_quits_instead_of_hanging_up() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.write_all(&mysql_greeting("10.11.0-probe")).await.unwrap();
        let mut header = [0u8; 4];
        s.read_exact(&mut header).await.unwrap();
        let len = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        assert_eq!(header[3], 1, "handshake response is packet 1");
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        // OK packet: let the probe in.
        s.write_all(&packet(2, &[0, 0, 0, 2, 0, 0, 0]))
            .await
            .unwrap();
        let mut quit = Vec::new();
        s.read_to_end(&mut quit).await.unwrap();
        (body, quit)
    });
    let h = DefaultHealthCheck::new(cfg(0))
        .check(&addr.to_string(), &no_status())
        .await;
    assert_eq!(h.status, BackendStatus::Healthy, "{h}");
    let (body, quit) = server.await.unwrap();
    let user_at = 4 + 4 + 1 + 23;
    assert!(
        body[user_at..].starts_with(b"switchyard_check\0"),
        "probe user in the handshake response: {body:?}"
    );
    assert_eq!(quit, vec![1, 0, 0, 0, 0x01], "COM_QUIT after being let in");
}

#[actix_rt::test]
async fn a_real_mariadb_counts_no_aborted_connects_from_probes() {
    // Its own server: the aborted-connect counter must see only this test's probes.
    let Some(db) = MariaDb::start() else { return };
    db.sql("CREATE USER 'switchyard_check'@'%'; CREATE USER 'switchyard_check'@'localhost'");
    let aborted = |db: &MariaDb| db.sql("SHOW GLOBAL STATUS LIKE 'Aborted_connects'");
    let before = aborted(&db);
    let hc = DefaultHealthCheck::new(cfg(0));
    for _ in 0..5 {
        let h = hc.check(&db.addr().to_string(), &no_status()).await;
        assert_eq!(h.status, BackendStatus::Healthy, "{h}");
    }
    assert_eq!(aborted(&db), before, "probes ended as clean logins");
    // Hanging up after the greeting (the old probe) is what the server counts.
    let rude = DefaultHealthCheck::new(HealthCheckConfig {
        probe_user: String::new(),
        ..cfg(0)
    });
    rude.check(&db.addr().to_string(), &no_status()).await;
    let mut after = aborted(&db);
    for _ in 0..50 {
        if after != before {
            break;
        }
        // The server counts the abort when it notices the hang-up; ask again until it has.
        tokio::task::yield_now().await;
        after = aborted(&db);
    }
    assert_ne!(after, before, "a bare hang-up is an aborted connect");
}
