//! The front door, against the real `switchyard` binary: `proxy.max_connections` (a close in
//! `tcp` mode, MySQL's own "Too many connections" in `mysql` mode), `proxy.half_close_timeout`,
//! `proxy.login_timeout`, and clients that leave mid-login never getting the proxy's own address
//! blocked by MariaDB's `max_connect_errors` (over a veth pair, as the host cache ignores
//! 127.0.0.1).

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;
use support::{closed_within, echo, http, mysql_opts, wait_until, Backend, Behaviour, Service};
use switchyard::wire::ErrInfo;
use switchyard_testkit::doubles::{SqlBehaviour, SqlDouble};
use switchyard_testkit::{MariaDb, MariaDbOptions, NetNs};

const USER: &str = "app";
const PASSWORD: &str = "app-pw";
/// MySQL's "Too many connections".
const ER_CON_COUNT_ERROR: u16 = 1040;
/// "Bad handshake": what the proxy says when a login runs past `proxy.login_timeout`.
const ER_HANDSHAKE_ERROR: u16 = 1043;
/// MariaDB's "Host '…' is blocked because of many connection errors".
const ER_HOST_IS_BLOCKED: u16 = 1129;
/// The first byte of an ERR packet.
const ERR_MARKER: u8 = 0xFF;
/// How long a test waits for something the proxy should do well within it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A config with health checks off, one worker, and `proxy_extra` inside the `proxy:` map.
fn config(
    proxy: SocketAddr,
    admin: SocketAddr,
    protocol: &str,
    backend: &str,
    proxy_extra: &str,
) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: {protocol}, workers: 1, {proxy_extra} }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [\"{backend}\"] }}\n\
         health_check: {{ enable: false, interval: 1h }}\n\
         mysql: {{ users: [{{ name: {USER}, password: {PASSWORD} }}] }}\n\
         log: {{ level: debug }}\n"
    )
}

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

const REFUSED: &str = "switchyard_connections_refused_total{reason=\"max_connections\"}";
const ACTIVE: &str = "switchyard_connections_active";

/// One whole MySQL packet: (sequence id, payload).
fn read_packet(s: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((head[3], payload))
}

/// The code and message of an ERR payload sent in place of the greeting (no SQLSTATE there:
/// the server cannot yet know the client reads protocol 4.1 ERRs).
fn parse_greeting_err(p: &[u8]) -> (u16, String) {
    assert_eq!(p.first(), Some(&ERR_MARKER), "an ERR packet: {p:?}");
    assert!(p.len() >= 3, "an ERR with a code: {p:?}");
    let code = u16::from_le_bytes([p[1], p[2]]);
    (code, String::from_utf8_lossy(&p[3..]).into_owned())
}

fn server_error(e: mysql_async::Error) -> mysql_async::ServerError {
    match e {
        mysql_async::Error::Server(e) => e,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// One MariaDB on loopback for this binary's `mysql` tests, with the proxy's account.
fn mariadb() -> Option<&'static MariaDb> {
    static DB: OnceLock<Option<MariaDb>> = OnceLock::new();
    DB.get_or_init(|| {
        let db = MariaDb::start()?;
        create_user(&db);
        Some(db)
    })
    .as_ref()
}

fn create_user(db: &MariaDb) {
    db.sql(&format!(
        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%';"
    ));
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------------------
// proxy.max_connections
// ---------------------------------------------------------------------------------------------

#[test]
fn over_max_connections_a_tcp_client_is_closed_at_once_and_a_freed_slot_admits_the_next() {
    let backend = Backend::start(Behaviour::Echo);
    let svc = Service::start_with(|p, a| config(p, a, "tcp", &backend.addr, "max_connections: 2"));
    let mut first = svc.client();
    let mut second = svc.client();
    assert_eq!(echo(&mut first, b"one").expect("first echoed"), b"one");
    assert_eq!(echo(&mut second, b"two").expect("second echoed"), b"two");

    let mut third = svc.client();
    let said = closed_within(PATIENCE, &mut third, "the client over the cap");
    assert!(said.is_empty(), "a tcp client is closed without a word");
    wait_metric(&svc, REFUSED, 1.0);
    assert_eq!(
        metric(&svc, ACTIVE),
        Some(2.0),
        "the refused client never counted"
    );
    assert_eq!(
        echo(&mut second, b"still").expect("admitted clients go on"),
        b"still"
    );

    drop(first);
    wait_metric(&svc, ACTIVE, 1.0);
    let mut fourth = svc.client();
    assert_eq!(
        echo(&mut fourth, b"four").expect("a freed slot admits the next client"),
        b"four"
    );
    assert_eq!(metric(&svc, REFUSED), Some(1.0));
    drop((second, fourth));
    wait_metric(&svc, ACTIVE, 0.0);
}

#[test]
fn over_max_connections_a_mysql_client_gets_error_1040_as_its_first_packet() {
    let Some(db) = mariadb() else { return };
    let backend = db.addr().to_string();
    let svc = Service::start_with(|p, a| config(p, a, "mysql", &backend, "max_connections: 2"));
    let port = svc.proxy.port();
    let rt = runtime();
    let _in_rt = rt.enter();

    let mut a = rt
        .block_on(Conn::new(mysql_opts(port, USER, PASSWORD)))
        .expect("first login");
    let b = rt
        .block_on(Conn::new(mysql_opts(port, USER, PASSWORD)))
        .expect("second login");

    // a real client sees the server's own error
    let e = server_error(
        rt.block_on(Conn::new(mysql_opts(port, USER, PASSWORD)))
            .expect_err("a third login over the cap"),
    );
    assert_eq!(
        (e.code, e.message.as_str()),
        (ER_CON_COUNT_ERROR, "Too many connections"),
        "{e:?}"
    );

    // on the wire: what MariaDB sends over its own cap, an ERR in place of the greeting,
    // sequence 0, then the close
    let mut raw = svc.client();
    let (seq, payload) = read_packet(&mut raw).expect("one packet before the close");
    assert_eq!(seq, 0, "the first packet of the connection");
    assert_eq!(
        parse_greeting_err(&payload),
        (ER_CON_COUNT_ERROR, "Too many connections".to_string())
    );
    assert!(closed_within(PATIENCE, &mut raw, "the refused raw client").is_empty());
    wait_metric(&svc, REFUSED, 2.0);

    let one: u32 = rt
        .block_on(a.query_first("SELECT 1"))
        .expect("admitted sessions go on")
        .expect("a row");
    assert_eq!(one, 1);
    rt.block_on(a.disconnect()).expect("disconnect");
    wait_metric(&svc, ACTIVE, 1.0);
    let c = rt
        .block_on(Conn::new(mysql_opts(port, USER, PASSWORD)))
        .expect("a freed slot admits the next login");
    rt.block_on(async {
        c.disconnect().await.expect("disconnect");
        b.disconnect().await.expect("disconnect");
    });
    wait_metric(&svc, ACTIVE, 0.0);
}

// ---------------------------------------------------------------------------------------------
// proxy.half_close_timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn a_half_closed_tcp_connection_whose_backend_stays_silent_is_closed() {
    // answers 4 bytes, then neither reads (so never sees the FIN) nor writes nor closes
    let backend = Backend::start(Behaviour::HangAfter(4));
    let svc =
        Service::start_with(|p, a| config(p, a, "tcp", &backend.addr, "half_close_timeout: 300ms"));
    let mut c = svc.client();
    assert_eq!(echo(&mut c, b"ping").expect("echoed"), b"ping");
    c.shutdown(Shutdown::Write).expect("half-close");
    assert!(closed_within(PATIENCE, &mut c, "the half-closed connection").is_empty());
    wait_metric(&svc, ACTIVE, 0.0);
}

// ---------------------------------------------------------------------------------------------
// proxy.login_timeout
// ---------------------------------------------------------------------------------------------

#[test]
fn silent_mysql_clients_are_closed_at_the_login_timeout_and_a_normal_login_is_not() {
    let Some(db) = mariadb() else { return };
    let backend = db.addr().to_string();
    let svc = Service::start_with(|p, a| config(p, a, "mysql", &backend, "login_timeout: 1s"));
    // half of them read the greeting, half never read at all
    let mut silent: Vec<TcpStream> = (0..40)
        .map(|i| {
            let mut s = svc.client();
            if i % 2 == 0 {
                let (seq, greeting) = read_packet(&mut s).expect("a greeting");
                assert_eq!((seq, greeting.first()), (0, Some(&10)));
            }
            s
        })
        .collect();
    let rt = runtime();
    let _in_rt = rt.enter();
    let mut logged_in = rt
        .block_on(Conn::new(mysql_opts(svc.proxy.port(), USER, PASSWORD)))
        .expect("a normal login within the timeout");
    for (i, s) in silent.iter_mut().enumerate() {
        closed_within(PATIENCE, s, &format!("silent client {i}"));
    }
    // every silent client is gone, so the login timeout has passed for the logged-in session too
    let one: u32 = rt
        .block_on(logged_in.query_first("SELECT 1"))
        .expect("a logged-in session outlives the login timeout")
        .expect("a row");
    assert_eq!(one, 1);
    wait_metric(&svc, ACTIVE, 1.0);
    rt.block_on(logged_in.disconnect()).expect("disconnect");
    wait_metric(&svc, ACTIVE, 0.0);
}

#[test]
fn a_client_left_waiting_on_a_stalled_backend_login_is_told_why_at_the_login_timeout() {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    // greets, then never answers the handshake response
    let stalls_auth = rt.block_on(SqlDouble::start(SqlBehaviour::Greet(
        "10.11.0-double".into(),
    )));
    // accepts, never greets
    let never_greets = rt.block_on(SqlDouble::start(SqlBehaviour::Silent));
    let start = |backend: &SqlDouble| {
        let addr = backend.addr().to_string();
        Service::start_with(|p, a| config(p, a, "mysql", &addr, "login_timeout: 500ms"))
    };

    let svc = start(&stalls_auth);
    let mut c = svc.client();
    expect_greeting(&mut c);
    c.write_all(&handshake_response(USER, "mysql_native_password"))
        .expect("send the handshake response");
    let (seq, p) = read_packet(&mut c).expect("an answer at the login timeout");
    assert_eq!(seq, 2, "where the server's answer would be");
    let e = ErrInfo::parse(&p).expect("an ERR packet");
    assert_eq!(e.code, ER_HANDSHAKE_ERROR, "{e}");
    assert!(e.message.contains("login_timeout"), "{e}");
    assert!(closed_within(PATIENCE, &mut c, "the timed-out client").is_empty());
    drop(svc);

    let svc = start(&never_greets);
    let mut c = svc.client();
    let (seq, p) = read_packet(&mut c).expect("an answer at the login timeout");
    assert_eq!(seq, 0, "in place of the greeting");
    let (code, msg) = parse_greeting_err(&p);
    assert_eq!(code, ER_HANDSHAKE_ERROR);
    assert!(msg.contains("login_timeout"), "{msg}");
    assert!(closed_within(PATIENCE, &mut c, "the timed-out client").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Aborted connects (issue 9, observation 4)
// ---------------------------------------------------------------------------------------------

/// MariaDB blocks a host after this many aborted connects in a row.
const MAX_CONNECT_ERRORS: usize = 5;

/// Waits until MariaDB has no connection left from `host` (each one that ended mid-handshake
/// has then been counted against it).
fn wait_no_connections_from(db: &MariaDb, host: &str) {
    let sql =
        format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE HOST LIKE '{host}:%'");
    wait_until(&format!("no connections from {host}"), PATIENCE, || {
        db.sql(&sql).trim() == "0"
    });
}

/// A protocol-4.1 handshake response (sequence 1) for `user` announcing `plugin`, no auth data.
fn handshake_response(user: &str, plugin: &str) -> Vec<u8> {
    /// CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
    const CAPS: u32 = 0x1 | 0x200 | 0x8000 | 0x8_0000;
    /// utf8mb3_general_ci
    const CHARSET: u8 = 33;
    let mut p = Vec::new();
    p.extend_from_slice(&CAPS.to_le_bytes());
    p.extend_from_slice(&(16u32 << 20).to_le_bytes());
    p.push(CHARSET);
    p.extend_from_slice(&[0u8; 23]);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    p.push(0); // no auth data
    p.extend_from_slice(plugin.as_bytes());
    p.push(0);
    let len = (p.len() as u32).to_le_bytes();
    [&[len[0], len[1], len[2], 1][..], &p].concat()
}

/// Reads the greeting the proxy passes on; an ERR in its place (MariaDB blocking the proxy's
/// host) fails the test with its message.
fn expect_greeting(c: &mut TcpStream) {
    let (_, greeting) = read_packet(c).expect("a greeting through the proxy");
    if greeting.first() == Some(&ERR_MARKER) {
        let (code, msg) = parse_greeting_err(&greeting);
        panic!("an ERR {code} instead of a greeting: {msg}");
    }
    assert_eq!(
        greeting.first(),
        Some(&10),
        "a v10 greeting, not {greeting:?}"
    );
}

/// The first byte of an auth switch request.
const AUTH_SWITCH: u8 = 0xFE;

/// `n` clients that log in as `USER` announcing a plugin the account does not use, read the
/// server's auth switch request, then hang up mid-exchange.
fn abort_after_auth_switch(svc: &Service, n: usize) {
    for _ in 0..n {
        let mut c = svc.client();
        expect_greeting(&mut c);
        c.write_all(&handshake_response(USER, "client_ed25519"))
            .expect("send the handshake response");
        let (seq, p) = read_packet(&mut c).expect("the server's answer");
        assert_eq!(
            (seq, p.first()),
            (2, Some(&AUTH_SWITCH)),
            "an auth switch request, not {p:?}"
        );
    }
}

/// `n` clients that connect through the proxy, read the greeting, then hang up (`stay` false)
/// or stay silent until the proxy closes them (`stay` true, the login timeout).
fn abort_logins(svc: &Service, n: usize, stay: bool) {
    let mut clients: Vec<TcpStream> = (0..n)
        .map(|_| {
            let mut c = svc.client();
            expect_greeting(&mut c);
            c
        })
        .collect();
    if stay {
        for c in &mut clients {
            closed_within(PATIENCE, c, "a client silent past the login timeout");
        }
    }
}

#[test]
fn clients_that_leave_or_time_out_anywhere_in_a_login_never_get_the_proxy_host_blocked() {
    let Some(ns) = NetNs::create() else { return };
    let opts = MariaDbOptions {
        netns: Some(&ns),
        name_resolve: true,
        args: vec![format!("--max-connect-errors={MAX_CONNECT_ERRORS}")],
    };
    // declared after `ns`, so it is dropped (killed) before the namespace is removed
    let Some(db) = MariaDb::start_with(opts) else {
        return;
    };
    create_user(&db);
    let backend = db.addr().to_string();
    let svc = Service::start_with(|p, a| config(p, a, "mysql", &backend, "login_timeout: 1s"));
    let rt = runtime();
    let _in_rt = rt.enter();
    let login = || {
        rt.block_on(async {
            let mut c = Conn::new(mysql_opts(svc.proxy.port(), USER, PASSWORD)).await?;
            let one: Option<u32> = c.query_first("SELECT 1").await?;
            c.disconnect().await?;
            Ok::<_, mysql_async::Error>(one)
        })
    };
    let must_log_in = |after: &str| match login() {
        Ok(one) => assert_eq!(one, Some(1)),
        Err(e) => panic!(
            "a login after {after} failed: {e}\n\
             (MariaDB counted the proxy's own address {} as aborted connects)",
            ns.outside()
        ),
    };

    abort_logins(&svc, 2 * MAX_CONNECT_ERRORS, false);
    wait_no_connections_from(&db, &ns.outside_name());
    must_log_in(&format!(
        "{} clients hung up mid-login",
        2 * MAX_CONNECT_ERRORS
    ));

    abort_logins(&svc, 2 * MAX_CONNECT_ERRORS, true);
    wait_no_connections_from(&db, &ns.outside_name());
    must_log_in(&format!(
        "{} clients were closed at the login timeout",
        2 * MAX_CONNECT_ERRORS
    ));

    abort_after_auth_switch(&svc, 2 * MAX_CONNECT_ERRORS);
    wait_no_connections_from(&db, &ns.outside_name());
    must_log_in(&format!(
        "{} clients hung up after an auth switch",
        2 * MAX_CONNECT_ERRORS
    ));

    // Control: the same address, dropping connections straight after the greeting, does get
    // blocked, so the logins above passed because the proxy finished the handshakes cleanly.
    for _ in 0..=MAX_CONNECT_ERRORS {
        let mut direct = TcpStream::connect(db.addr()).expect("connect to MariaDB");
        direct
            .set_read_timeout(Some(PATIENCE))
            .expect("read timeout");
        read_packet(&mut direct).expect("a greeting from MariaDB");
        let _ = direct.flush();
    }
    wait_no_connections_from(&db, &ns.outside_name());
    let e = server_error(login().expect_err("the host is blocked now"));
    assert_eq!(e.code, ER_HOST_IS_BLOCKED, "{e:?}");
}
