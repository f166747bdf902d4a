//! TLS and the PROXY protocol, against the real `switchyard` binary, real MariaDB servers
//! started with TLS (and `proxy_protocol_networks`), the real `mariadb` client and PyMySQL.
//!
//! The certificates are a throwaway CA and server certificates made with the `openssl` CLI in
//! the test's scratch directory. Client addresses are told apart on loopback by connecting from
//! 127.0.0.2 (all of 127.0.0.0/8 is local on Linux), while the proxy reaches MariaDB from
//! 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use support::pki::{rustls_client, Pki};
use support::{
    closed_within, connect_from, http, relay, scratch_dir, wait_until, Backend, Behaviour, Service,
};
use switchyard_server::proxy_protocol;
use switchyard_testkit::{MariaDb, MariaDbOptions};

const USER: &str = "app";
const PASSWORD: &str = "app-pw";
/// ER_SECURE_TRANSPORT_REQUIRED.
const ER_SECURE_TRANSPORT_REQUIRED: &str = "3159";
/// How long a test waits for something the proxy should do well within it.
const PATIENCE: Duration = Duration::from_secs(15);

/// The CA and the MariaDB servers of this binary: two backends with TLS, for moves.
struct World {
    pki: Pki,
    dbs: Vec<MariaDb>,
}

fn world() -> Option<&'static World> {
    static WORLD: OnceLock<Option<World>> = OnceLock::new();
    WORLD
        .get_or_init(|| {
            let pki = Pki::new()?;
            let (cert, key) = pki.issue("mariadb", "mariadb backend");
            let mut dbs = Vec::new();
            for _ in 0..2 {
                let db = MariaDb::start_with(MariaDbOptions {
                    args: vec![
                        format!("--ssl-ca={}", pki.ca().display()),
                        format!("--ssl-cert={}", cert.display()),
                        format!("--ssl-key={}", key.display()),
                        // the proxy (127.0.0.1) may send PROXY headers; clients elsewhere not
                        "--proxy-protocol-networks=127.0.0.1/32,localhost".to_string(),
                    ],
                    ..MariaDbOptions::default()
                })?;
                db.sql(&format!(
                    "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; GRANT ALL ON *.* TO '{USER}'@'%';"
                ));
                dbs.push(db);
            }
            Some(World { pki, dbs })
        })
        .as_ref()
}

/// A `mysql`-mode config with both MariaDBs, `proxy_extra` inside `proxy:` and `backends_extra`
/// inside `backends:`.
fn mysql_config(
    w: &World,
    proxy: SocketAddr,
    admin: SocketAddr,
    proxy_extra: &str,
    backends_extra: &str,
) -> String {
    let list = w
        .dbs
        .iter()
        .map(|d| format!("\"{}\"", d.addr()))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "proxy: {{ listen: {proxy}, protocol: mysql, workers: 1, {proxy_extra} }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [{list}], {backends_extra} }}\n\
         health_check: {{ interval: 200ms, max_retries: 0, dial_timeout: 1s }}\n\
         mysql: {{ users: [{{ name: {USER}, password: {PASSWORD} }}] }}\n\
         log: {{ level: debug }}\n"
    )
}

/// `proxy.tls` with `cert` and `key`, and `backends.tls` verifying MariaDB with the test CA.
fn tls_keys(w: &World, cert: &Path, key: &Path, required: bool) -> (String, String) {
    (
        format!(
            "tls: {{ cert: \"{}\", key: \"{}\", required: {required} }}",
            cert.display(),
            key.display()
        ),
        format!("tls: {{ enable: true, ca: \"{}\" }}", w.pki.ca().display()),
    )
}

/// A `mysql`-mode service over both MariaDBs, with TLS to clients (a certificate named `name`,
/// `required` or not) and TLS to backends (with `backends_extra` beside it), once both
/// backends are healthy. Returns the service and the certificate and key files it serves.
fn tls_service(
    w: &World,
    name: &str,
    required: bool,
    backends_extra: &str,
) -> (Service, PathBuf, PathBuf) {
    let (cert, key) = w.pki.issue(name, &format!("switchyard {name}"));
    let (front, back) = tls_keys(w, &cert, &key, required);
    let svc = Service::start_with(|p, a| {
        mysql_config(w, p, a, &front, &format!("{back}, {backends_extra}"))
    });
    svc.wait_healthy(2);
    (svc, cert, key)
}

// ---------------------------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------------------------

/// Runs the `mariadb` CLI against the proxy with `args` and `-e sql`: (success, stdout+stderr).
fn mariadb_cli(port: u16, args: &[&str], sql: &str) -> (bool, String) {
    let out = Command::new("mariadb")
        .args(["--no-defaults", "-h127.0.0.1", "--protocol=TCP", "-N", "-B"])
        .arg(format!("-P{port}"))
        .arg(format!("-u{USER}"))
        .arg(format!("-p{PASSWORD}"))
        .args(args)
        .args(["-e", sql])
        .output()
        .expect("run the mariadb client");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Debian's python3, where python3-pymysql is installed.
fn python() -> Option<&'static str> {
    let ok = |p: &str| {
        Command::new(p)
            .args(["-c", "import pymysql"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| ok(p))
        .or_else(|| switchyard_testkit::skip_or_fail("python3 with PyMySQL is not installed"))
}

/// PyMySQL, connecting with an ssl context that verifies the proxy against the CA. `body` runs
/// with `conn` and the helpers `q(conn, sql)` (first row) and `cn(conn)` (the common name of
/// the certificate the client was shown); it prints its results.
const PY_PRELUDE: &str = r#"
import os, ssl, sys, time, pymysql
port, ca, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
def connect():
    ctx = ssl.create_default_context(cafile=ca)
    return pymysql.connect(host="127.0.0.1", port=port, user="app", password="app-pw",
                           ssl=ctx, connect_timeout=10)
def q(conn, sql):
    with conn.cursor() as c:
        c.execute(sql)
        return c.fetchone()
def cn(conn):
    subject = dict(x[0] for x in conn._sock.getpeercert()["subject"])
    return subject["commonName"]
def wait_go():
    while not os.path.exists(go):
        time.sleep(0.05)
"#;

/// A PyMySQL script running in the background; its output lines are read as they come.
struct Py {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
    go: PathBuf,
}

impl Py {
    fn start(python: &str, port: u16, ca: &Path, body: &str) -> Py {
        let dir = scratch_dir();
        let script = dir.join("client.py");
        std::fs::write(&script, format!("{PY_PRELUDE}\n{body}\n")).expect("write script");
        let go = dir.join("go");
        let mut child = Command::new(python)
            .arg("-u")
            .arg(&script)
            .arg(port.to_string())
            .arg(ca)
            .arg(&go)
            .stdout(Stdio::piped())
            .spawn()
            .expect("run python3");
        let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Py { child, lines, go }
    }

    /// The next line the script prints (panics if it ends first).
    fn line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(l)) => l,
            other => {
                let status = self.child.wait();
                panic!("the PyMySQL script ended early ({other:?}, {status:?})")
            }
        }
    }

    /// Lets a script waiting in `wait_go()` go on.
    fn go(&self) {
        std::fs::write(&self.go, b"go").expect("write go file");
    }

    fn finish(mut self) {
        let status = self.child.wait().expect("wait for python");
        assert!(status.success(), "the PyMySQL script failed: {status}");
    }
}

/// A PyMySQL session through `port` that runs `setup`, prints its backend's port and `before`
/// (Python expressions, space-separated), then, once that backend is drained through the admin
/// API, waits until it answers from another one and prints the port and `after`. Returns what
/// `before` and `after` printed, field by field.
fn moved_session(
    svc: &Service,
    w: &World,
    py: &str,
    port: u16,
    setup: &str,
    before: &str,
    after: &str,
) -> (Vec<String>, Vec<String>) {
    let print_before = match before {
        "" => "print(first)".to_string(),
        _ => format!("print(first, {before})"),
    };
    let mut client = Py::start(
        py,
        port,
        &w.pki.ca(),
        &format!(
            r#"
conn = connect()
{setup}
first = q(conn, "SELECT @@port")[0]
{print_before}
wait_go()
deadline = time.time() + 15
while q(conn, "SELECT @@port")[0] == first and time.time() < deadline:
    time.sleep(0.05)
print(q(conn, "SELECT @@port")[0], {after})
"#
        ),
    );
    let fields = |line: String| -> (String, Vec<String>) {
        let mut f = line.split(' ').map(str::to_string);
        (f.next().unwrap_or_default(), f.collect())
    };
    let (first, before) = fields(client.line());
    let from = w
        .dbs
        .iter()
        .find(|d| d.port().to_string() == first)
        .expect("one of the backends")
        .addr();
    let (code, body) = http(svc.admin, "POST", &format!("/backends/{from}/drain")).expect("drain");
    assert_eq!(code, 200, "{body}");
    client.go();
    let (moved_to, after) = fields(client.line());
    client.finish();
    assert_ne!(moved_to, first, "the session moved\n{}", svc.log());
    (before, after)
}

// ---------------------------------------------------------------------------------------------
// mysql mode: TLS on both sides
// ---------------------------------------------------------------------------------------------

#[test]
fn the_mariadb_client_and_pymysql_log_in_over_tls_to_a_backend_reached_over_tls() {
    let Some(w) = world() else { return };
    let Some(py) = python() else { return };
    let (svc, _, _) = tls_service(w, "proxy", false, "");
    let port = svc.proxy.port();
    let ca = w.pki.ca();

    // the real client, verifying the proxy's certificate against the CA
    let (ok, out) = mariadb_cli(
        port,
        &[
            "--ssl",
            &format!("--ssl-ca={}", ca.display()),
            "--ssl-verify-server-cert",
        ],
        "SHOW SESSION STATUS LIKE 'Ssl_version'; SELECT CURRENT_USER();",
    );
    assert!(ok, "mariadb --ssl through the proxy: {out}\n{}", svc.log());
    assert!(
        out.contains("Ssl_version\tTLSv1."),
        "the backend sees a TLS session from the proxy: {out}"
    );
    assert!(out.contains("app@%"), "{out}");
    let (ok, out) = mariadb_cli(port, &["--ssl"], "\\s");
    assert!(ok, "{out}");
    assert!(
        out.contains("Cipher in use is"),
        "the client's own connection is encrypted: {out}"
    );

    // PyMySQL with an ssl context
    let mut client = Py::start(
        py,
        port,
        &ca,
        r#"
conn = connect()
print(cn(conn), conn._sock.version(), q(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'")[1], q(conn, "SELECT 6*7")[0])
"#,
    );
    let line = client.line();
    client.finish();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        fields.first().copied(),
        Some("switchyard"),
        "PyMySQL was shown the proxy's certificate: {line}"
    );
    assert!(line.contains("proxy TLSv1."), "{line}");
    assert!(line.ends_with(" 42"), "{line}");
}

#[test]
fn a_plain_client_gets_3159_when_tls_is_required_and_a_plain_backend_login_still_works_without() {
    let Some(w) = world() else { return };
    let (cert, key) = w.pki.issue("required", "switchyard required");
    let (front, _) = tls_keys(w, &cert, &key, true);
    let svc = Service::start_with(|p, a| mysql_config(w, p, a, &front, ""));
    svc.wait_healthy(2);
    let port = svc.proxy.port();
    let (ok, out) = mariadb_cli(port, &["--skip-ssl"], "SELECT 1");
    assert!(!ok, "a plain client is refused: {out}");
    assert!(
        out.contains(ER_SECURE_TRANSPORT_REQUIRED) && out.contains("insecure transport"),
        "the refusal names the reason: {out}"
    );
    // TLS from the client, plain from the proxy to the backend (no backends.tls)
    let (ok, out) = mariadb_cli(
        port,
        &["--ssl", &format!("--ssl-ca={}", w.pki.ca().display())],
        "SHOW SESSION STATUS LIKE 'Ssl_version'",
    );
    assert!(ok, "{out}\n{}", svc.log());
    assert!(
        out.trim_end().ends_with("Ssl_version"),
        "plain from the proxy to the backend: {out:?}"
    );
}

#[test]
fn sighup_serves_a_new_certificate_to_new_clients_while_a_session_goes_on() {
    let Some(w) = world() else { return };
    let Some(py) = python() else { return };
    let (svc, cert, key) = tls_service(w, "reload", true, "");
    let mut client = Py::start(
        py,
        svc.proxy.port(),
        &w.pki.ca(),
        r#"
old = connect()
q(old, "SET @kept = 'still here'")
print(cn(old))
wait_go()
print(q(old, "SELECT @kept")[0])
new = connect()
print(cn(new))
"#,
    );
    assert_eq!(client.line(), "switchyard reload");
    // a broken file first: the current certificate stays
    std::fs::write(&cert, "garbage").expect("break the certificate");
    svc.signal(libc::SIGHUP);
    wait_until("the failed reload is logged", PATIENCE, || {
        svc.log().contains("TLS certificate not reloaded")
    });
    let (ok, out) = mariadb_cli(svc.proxy.port(), &["--ssl"], "SELECT 1");
    assert!(ok, "the old certificate still serves: {out}");
    // now a good one
    let (new_cert, new_key) = w.pki.issue("reload2", "after reload");
    std::fs::copy(&new_cert, &cert).expect("replace the certificate");
    std::fs::copy(&new_key, &key).expect("replace the key");
    svc.signal(libc::SIGHUP);
    wait_until("the reload is logged", PATIENCE, || {
        svc.log().contains("TLS certificate reloaded")
    });
    client.go();
    assert_eq!(
        client.line(),
        "still here",
        "the open session was untouched"
    );
    assert_eq!(
        client.line(),
        "after reload",
        "a new client gets the new certificate"
    );
    client.finish();
}

#[test]
fn a_tls_session_moves_to_another_backend_when_its_backend_is_drained() {
    let Some(w) = world() else { return };
    let Some(py) = python() else { return };
    let (svc, _, _) = tls_service(w, "moves", true, "");
    let (_, after) = moved_session(
        &svc,
        w,
        py,
        svc.proxy.port(),
        r#"q(conn, "SET @carried = 'over tls'")"#,
        "",
        r#"q(conn, "SELECT @carried")[0], q(conn, "SHOW SESSION STATUS LIKE 'Ssl_version'")[1], conn._sock.version()"#,
    );
    assert_eq!(
        after[..2],
        ["over", "tls"],
        "user variables came along: {after:?}"
    );
    assert!(
        after[2].starts_with("TLSv1."),
        "the target is reached over TLS: {after:?}"
    );
    assert!(
        after[3].starts_with("TLSv1."),
        "the client's TLS went on: {after:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// tcp mode
// ---------------------------------------------------------------------------------------------

fn tcp_config(proxy: SocketAddr, admin: SocketAddr, backend: &str, proxy_extra: &str) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: tcp, workers: 1, {proxy_extra} }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [\"{backend}\"] }}\n\
         health_check: {{ enable: false, interval: 1h }}\n\
         log: {{ level: debug }}\n"
    )
}

#[test]
fn in_tcp_mode_tls_is_terminated_on_accept_and_a_plain_client_is_closed_when_required() {
    let Some(pki) = Pki::new() else { return };
    let (cert, key) = pki.issue("tcp", "switchyard tcp");
    let backend = Backend::start(Behaviour::Echo);
    let tls = format!(
        "tls: {{ cert: \"{}\", key: \"{}\", required: true }}",
        cert.display(),
        key.display()
    );
    let svc = Service::start_with(|p, a| tcp_config(p, a, &backend.addr, &tls));
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let conn = rustls::ClientConnection::new(rustls_client(&pki.ca()), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, svc.client());
    tls.write_all(b"hello over tls").expect("write");
    let mut got = [0u8; 14];
    tls.read_exact(&mut got)
        .expect("the echo comes back decrypted");
    assert_eq!(&got, b"hello over tls");
    let mut plain = svc.client();
    plain.write_all(b"hello in clear\r\n").expect("write");
    let said = closed_within(PATIENCE, &mut plain, "a plain client while TLS is required");
    assert!(
        said.is_empty() || said[0] == 0x15,
        "closed, at most with a TLS alert: {said:?}"
    );
    assert_eq!(
        backend.accepted(),
        1,
        "the plain client never reached a backend"
    );
}

// ---------------------------------------------------------------------------------------------
// PROXY protocol
// ---------------------------------------------------------------------------------------------

#[test]
fn a_trusted_balancer_s_client_address_reaches_logs_and_the_backend_through_proxy_protocol() {
    let Some(w) = world() else { return };
    let svc = Service::start_with(|p, a| {
        mysql_config(
            w,
            p,
            a,
            "proxy_protocol: v2, proxy_protocol_from: [127.0.0.2/32]",
            "send_proxy_protocol: true",
        )
    });
    svc.wait_healthy(2);
    // a balancer on 127.0.0.2 saying its client is 203.0.113.7
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let header = proxy_protocol::encode(client, svc.proxy);
    let lb = relay("127.0.0.2", svc.proxy, Some(header.clone()));
    let (ok, out) = mariadb_cli(lb, &[], "SELECT USER()");
    assert!(ok, "{out}\n{}", svc.log());
    assert_eq!(
        out.trim(),
        "app@203.0.113.7",
        "MariaDB saw the balancer's client, not the proxy"
    );
    assert!(
        svc.log().contains("203.0.113.7"),
        "the proxy logs the client's address"
    );

    // the same header from a peer outside proxy_protocol_from: refused, never believed
    let mut untrusted = connect_from("127.0.0.1", svc.proxy);
    untrusted.write_all(&header).expect("write");
    closed_within(PATIENCE, &mut untrusted, "an untrusted peer's header");
    // a trusted peer without a header: refused too
    let mut bare = connect_from("127.0.0.2", svc.proxy);
    bare.write_all(&[0x20, 0, 0, 1, 0x8d, 0xa2, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0, 0])
        .expect("write");
    closed_within(PATIENCE, &mut bare, "a trusted peer without a header");
    // the socket closes a moment before the refusal is logged
    wait_until("both refusals are logged", PATIENCE, || {
        svc.log().matches("client refused at the door").count() == 2
    });
}

#[test]
fn send_proxy_protocol_shows_mariadb_the_client_s_own_address() {
    let Some(w) = world() else { return };
    let svc = Service::start_with(|p, a| mysql_config(w, p, a, "", "send_proxy_protocol: true"));
    svc.wait_healthy(2);
    // the client connects from 127.0.0.2; the proxy reaches MariaDB from 127.0.0.1
    let from_two = relay("127.0.0.2", svc.proxy, None);
    let (ok, out) = mariadb_cli(from_two, &[], "SELECT USER(), @@proxy_protocol_networks");
    assert!(ok, "{out}\n{}", svc.log());
    assert!(
        out.starts_with("app@127.0.0.2\t"),
        "USER() names the client's address, not the proxy's: {out}"
    );
    // and without the header, MariaDB sees the proxy
    let plain = Service::start_with(|p, a| mysql_config(w, p, a, "", ""));
    plain.wait_healthy(2);
    let from_two = relay("127.0.0.2", plain.proxy, None);
    let (ok, out) = mariadb_cli(from_two, &[], "SELECT USER()");
    assert!(ok, "{out}");
    assert_eq!(out.trim(), "app@127.0.0.1");
}

#[test]
fn a_session_that_moves_keeps_telling_the_target_its_client_s_address() {
    let Some(w) = world() else { return };
    let Some(py) = python() else { return };
    let (svc, _, _) = tls_service(w, "ppmove", false, "send_proxy_protocol: true");
    let from_two = relay("127.0.0.2", svc.proxy, None);
    let (before, after) = moved_session(
        &svc,
        w,
        py,
        from_two,
        "",
        r#"q(conn, "SELECT USER()")[0]"#,
        r#"q(conn, "SELECT USER()")[0]"#,
    );
    assert_eq!(before, ["app@127.0.0.2"]);
    assert_eq!(
        after,
        ["app@127.0.0.2"],
        "the target was told the client's address too"
    );
}
