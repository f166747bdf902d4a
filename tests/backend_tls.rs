//! `backends.tls` where sessions are not the only ones to speak it, against the real binary: the
//! health check's probe, against a real MariaDB that takes only TLS logins
//! (`require_secure_transport=ON`), and `tcp` mode, against a TLS-terminating echo server on
//! loopback (rustls, certificates from a throwaway CA made with the `openssl` CLI); and a session
//! re-attached after its backend was killed (issue 10), which must reach the new backend over
//! TLS and with the PROXY header naming its client, as its first backend was reached.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::pki::{rustls_server, Pki};
use support::{relay, wait_until, Service};
use switchyard_testkit::{MariaDb, MariaDbOptions};

/// The user the health probe logs in as (`health_check.probe_user`'s default).
const PROBE_USER: &str = "switchyard_check";
/// How long a test waits for something the proxy should do well within it.
const PATIENCE: Duration = Duration::from_secs(15);
/// Probes seen over TLS before the counters are compared (at a 200 ms interval: about a second).
const PROBES: u64 = 5;

/// `backends.tls` verifying against the CA certificate in `ca`, and `extra` beside it.
fn backends_tls(ca: &Path, extra: &str) -> String {
    format!("tls: {{ enable: true, ca: \"{}\"{extra} }}", ca.display())
}

// ---------------------------------------------------------------------------------------------
// The health probe against a MariaDB that requires TLS
// ---------------------------------------------------------------------------------------------

/// A MariaDB with TLS and `require_secure_transport=ON`, and a password-less probe user (so a
/// probe that signs off over TLS is let in, where a plain one is refused).
fn tls_only_mariadb(pki: &Pki) -> Option<MariaDb> {
    let (cert, key) = pki.issue("mariadb", "mariadb requiring tls");
    let db = MariaDb::start_with(MariaDbOptions {
        args: vec![
            format!("--ssl-ca={}", pki.ca().display()),
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
            "--require-secure-transport=ON".to_string(),
        ],
        ..MariaDbOptions::default()
    })?;
    db.sql(&format!("CREATE USER '{PROBE_USER}'@'%';"));
    Some(db)
}

/// A global status counter of `db`.
fn status(db: &MariaDb, name: &str) -> u64 {
    let out = db.sql(&format!("SHOW GLOBAL STATUS LIKE '{name}'"));
    out.split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("status {name}: {out:?}"))
}

fn mysql_config(proxy: SocketAddr, admin: SocketAddr, db: &MariaDb, tls: &str) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: mysql, workers: 1 }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [\"{}\"], {tls} }}\n\
         health_check: {{ interval: 200ms, max_retries: 0, dial_timeout: 1s }}\n\
         mysql: {{ users: [{{ name: app, password: pw }}] }}\n\
         log: {{ level: debug }}\n",
        db.addr()
    )
}

#[test]
fn a_mariadb_that_requires_tls_is_healthy_and_sees_each_probe_log_in_over_tls() {
    let Some(pki) = Pki::new() else { return };
    let Some(db) = tls_only_mariadb(&pki) else {
        return;
    };
    let tls = backends_tls(&pki.ca(), "");
    let svc = Service::start_with(|p, a| mysql_config(p, a, &db, &tls));
    svc.wait_healthy(1);
    let version = svc.backends()[0]["server_version"].clone();
    assert!(
        version.as_str().is_some_and(|v| v.contains("MariaDB")),
        "the version comes from the greeting: {version}"
    );
    // from here on, only the probe talks to the server
    let (tls0, aborted0) = (status(&db, "Ssl_accepts"), status(&db, "Aborted_connects"));
    wait_until("probes over TLS", PATIENCE, || {
        status(&db, "Ssl_accepts") >= tls0 + PROBES
    });
    assert_eq!(
        status(&db, "Aborted_connects"),
        aborted0,
        "each probe's sign-off was a TLS login the server let in, not a plain one refused \
         with 3159 (which it counts as an aborted connect)\n{}",
        svc.log()
    );
}

#[test]
fn a_client_that_leaves_after_the_greeting_is_signed_off_over_tls_on_a_mariadb_that_requires_it() {
    let Some(pki) = Pki::new() else { return };
    let Some(db) = tls_only_mariadb(&pki) else {
        return;
    };
    let tls = backends_tls(&pki.ca(), "");
    let svc = Service::start_with(|p, a| mysql_config(p, a, &db, &tls));
    svc.wait_healthy(1);
    let aborted0 = status(&db, "Aborted_connects");
    for _ in 0..3 {
        // the greeting's header, then goodbye before any login
        let mut c = svc.client();
        let mut header = [0u8; 4];
        c.read_exact(&mut header).expect("the greeting");
    }
    wait_until("the proxy finished the three logins", PATIENCE, || {
        svc.log()
            .matches("abandoned login finished on the backend")
            .count()
            == 3
    });
    assert_eq!(
        status(&db, "Aborted_connects"),
        aborted0,
        "the proxy finished each login over TLS, as the client's would have gone\n{}",
        svc.log()
    );
}

#[test]
fn a_backend_whose_certificate_the_configured_ca_did_not_sign_is_down_unless_told_to_skip() {
    let Some(pki) = Pki::new() else { return };
    let Some(db) = tls_only_mariadb(&pki) else {
        return;
    };
    let Some(other) = Pki::new() else { return };
    let tls = backends_tls(&other.ca(), "");
    let svc = Service::start_with(|p, a| mysql_config(p, a, &db, &tls));
    wait_until("the refused certificate is logged", PATIENCE, || {
        svc.log().contains("health check failed")
    });
    let log = svc.log();
    assert!(
        log.contains("certificate"),
        "the reason names the certificate: {log}"
    );
    assert_eq!(svc.backends()[0]["status"], "down");

    let skip = backends_tls(&other.ca(), ", insecure_skip_verify: true");
    let svc = Service::start_with(|p, a| mysql_config(p, a, &db, &skip));
    svc.wait_healthy(1);
}

// ---------------------------------------------------------------------------------------------
// tcp mode: TLS from the connect on
// ---------------------------------------------------------------------------------------------

/// A loopback server that terminates TLS with `config` and echoes what it decrypts; counts the
/// handshakes that completed.
struct TlsEcho {
    addr: String,
    handshakes: Arc<AtomicU64>,
}

impl TlsEcho {
    fn start(config: Arc<rustls::ServerConfig>) -> TlsEcho {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr").to_string();
        let handshakes = Arc::new(AtomicU64::new(0));
        let count = handshakes.clone();
        std::thread::spawn(move || {
            for tcp in l.incoming().flatten() {
                let (config, count) = (config.clone(), count.clone());
                std::thread::spawn(move || echo(config, tcp, &count));
            }
        });
        TlsEcho { addr, handshakes }
    }
}

/// One connection of [`TlsEcho`]: handshake, then echo until the peer leaves.
fn echo(config: Arc<rustls::ServerConfig>, mut tcp: TcpStream, handshakes: &AtomicU64) {
    let Ok(mut conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    if conn.complete_io(&mut tcp).is_err() || conn.is_handshaking() {
        return;
    }
    handshakes.fetch_add(1, Ordering::Relaxed);
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = [0u8; 4096];
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 || tls.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

fn tcp_config(
    proxy: SocketAddr,
    admin: SocketAddr,
    backend: &str,
    tls: &str,
    check: bool,
) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: tcp, workers: 1 }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [\"{backend}\"], {tls} }}\n\
         health_check: {{ enable: {check}, interval: 200ms, max_retries: 0, dial_timeout: 1s }}\n\
         log: {{ level: debug }}\n"
    )
}

/// Sends `data` through the proxy and returns what comes back before the proxy closes or
/// `data.len()` bytes arrived.
fn round_trip(svc: &Service, data: &[u8]) -> Vec<u8> {
    let mut c = svc.client();
    c.set_read_timeout(Some(PATIENCE)).expect("timeout");
    let mut got = Vec::new();
    if c.write_all(data).is_err() {
        return got;
    }
    let mut buf = [0u8; 256];
    while got.len() < data.len() {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
        }
    }
    got
}

#[test]
fn in_tcp_mode_backends_tls_encrypts_verifies_the_certificate_and_skips_only_when_told() {
    let Some(pki) = Pki::new() else { return };
    let Some(other) = Pki::new() else { return };
    let (cert, key) = pki.issue("echo", "tls echo");
    let backend = TlsEcho::start(rustls_server(&cert, &key));

    // verified against the right CA: the bytes come back, and the backend answers only inside
    // a TLS session it completed
    let tls = backends_tls(&pki.ca(), "");
    let svc = Service::start_with(|p, a| tcp_config(p, a, &backend.addr, &tls, true));
    svc.wait_healthy(1);
    assert_eq!(round_trip(&svc, b"over tls"), b"over tls", "{}", svc.log());
    drop(svc);

    // a CA that did not sign it: the session is refused (checks off, so only the session's own
    // verification stands in the way) ...
    let wrong = backends_tls(&other.ca(), "");
    let svc = Service::start_with(|p, a| tcp_config(p, a, &backend.addr, &wrong, false));
    let before = backend.handshakes.load(Ordering::Relaxed);
    assert_eq!(round_trip(&svc, b"refused"), b"", "closed, nothing echoed");
    assert_eq!(backend.handshakes.load(Ordering::Relaxed), before);
    wait_until("the refusal is logged", PATIENCE, || {
        svc.log().contains("certificate")
    });
    drop(svc);
    // ... and the health check takes the backend out of routing for it
    let svc = Service::start_with(|p, a| tcp_config(p, a, &backend.addr, &wrong, true));
    wait_until("the failed check is logged", PATIENCE, || {
        svc.log().contains("health check failed")
    });
    assert_eq!(svc.backends()[0]["status"], "down", "{}", svc.log());
    drop(svc);

    // insecure_skip_verify: encrypted, not authenticated
    let skip = backends_tls(&other.ca(), ", insecure_skip_verify: true");
    let svc = Service::start_with(|p, a| tcp_config(p, a, &backend.addr, &skip, true));
    svc.wait_healthy(1);
    assert_eq!(
        round_trip(&svc, b"unverified"),
        b"unverified",
        "{}",
        svc.log()
    );
}

// ---------------------------------------------------------------------------------------------
// A session re-attached after its backend died, over TLS and with the PROXY header
// ---------------------------------------------------------------------------------------------

/// A MariaDB that takes only TLS logins and PROXY headers from the proxy (127.0.0.1), with the
/// session's user and the probe's.
fn tls_and_proxy_protocol_mariadb(pki: &Pki, cert: &Path, key: &Path) -> Option<MariaDb> {
    let db = MariaDb::start_with(MariaDbOptions {
        args: vec![
            format!("--ssl-ca={}", pki.ca().display()),
            format!("--ssl-cert={}", cert.display()),
            format!("--ssl-key={}", key.display()),
            "--require-secure-transport=ON".to_string(),
            "--proxy-protocol-networks=127.0.0.1/32,localhost".to_string(),
        ],
        ..MariaDbOptions::default()
    })?;
    db.sql(&format!(
        "CREATE USER 'app'@'%' IDENTIFIED BY 'pw'; GRANT ALL ON *.* TO 'app'@'%'; \
         CREATE USER '{PROBE_USER}'@'%';"
    ));
    Some(db)
}

/// What a session reports of itself: a user variable, its backend's port, `USER()` (the client
/// address the backend was told) and the cipher of its backend connection.
const WHO: &str = "SELECT @v, @@port, USER(), (SELECT VARIABLE_VALUE FROM \
                   information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher')";

type Who = (Option<i64>, u16, String, String);

#[test]
fn a_session_whose_backend_is_killed_re_attaches_over_tls_and_still_names_its_client() {
    let Some(pki) = Pki::new() else { return };
    let (cert, key) = pki.issue("mariadb", "mariadb requiring tls");
    let mut dbs = Vec::new();
    for _ in 0..2 {
        let Some(db) = tls_and_proxy_protocol_mariadb(&pki, &cert, &key) else {
            return;
        };
        dbs.push(Some(db));
    }
    let addrs: Vec<String> = dbs.iter().flatten().map(|d| d.addr().to_string()).collect();
    let tls = backends_tls(&pki.ca(), "");
    let svc = Service::start_with(|p, a| {
        format!(
            "proxy: {{ listen: {p}, protocol: mysql, workers: 1 }}\n\
             admin: {{ listen: {a} }}\n\
             backends: {{ static: [\"{}\", \"{}\"], {tls}, send_proxy_protocol: true }}\n\
             health_check: {{ interval: 200ms, max_retries: 0, dial_timeout: 1s }}\n\
             mysql: {{ users: [{{ name: app, password: pw }}] }}\n\
             log: {{ level: debug }}\n",
            addrs[0], addrs[1]
        )
    });
    svc.wait_healthy(2);
    // the client connects from 127.0.0.2; the proxy reaches MariaDB from 127.0.0.1
    let port = relay("127.0.0.2", svc.proxy, None);
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_rt = rt.enter(); // the client is dropped inside it
    let mut conn = rt
        .block_on(mysql_async::Conn::new(support::mysql_opts(
            port, "app", "pw",
        )))
        .expect("log in through the proxy");
    use mysql_async::prelude::Queryable as _;
    let before: Who = rt
        .block_on(async {
            conn.query_drop("SET @v = 42").await?;
            conn.query_first(WHO).await
        })
        .expect("query")
        .expect("a row");
    assert_eq!(before.0, Some(42));
    assert_eq!(before.2, "app@127.0.0.2", "the backend was told the client");
    assert!(!before.3.is_empty(), "the backend connection uses TLS");

    // kill -9 the backend the session is on (dropping a MariaDb kills its process)
    let on = dbs
        .iter()
        .position(|d| d.as_ref().is_some_and(|d| d.port() == before.1))
        .expect("the session is on one of the two servers");
    drop(dbs[on].take());

    let after: Who = rt
        .block_on(conn.query_first(WHO))
        .expect("the session goes on after its backend died")
        .expect("a row");
    assert_eq!(after.0, Some(42), "the user variable was carried");
    assert_ne!(after.1, before.1, "the session is on the other server");
    assert_eq!(
        after.2, "app@127.0.0.2",
        "the new backend was told the client too"
    );
    assert!(!after.3.is_empty(), "the new backend connection uses TLS");
    let (_, metrics) = support::http(svc.admin, "GET", "/metrics").expect("metrics");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("switchyard_failover_reattached_total") && l.ends_with(" 1")),
        "one re-attach counted:\n{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("switchyard_failover"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(conn);
}
