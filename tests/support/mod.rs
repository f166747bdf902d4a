//! Helpers for the end-to-end tests: the real `switchyard` binary with a temporary config,
//! loopback backends that echo (or reset, or hang), and a minimal HTTP client for the admin API.
//!
//! Everything is std threads and blocking sockets, so a test reads as the steps a person would
//! take; every wait polls a condition with a deadline rather than sleeping a fixed time.

#![allow(dead_code)]

pub mod mysql_proxy;
pub mod pki;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Polls `cond` every 20 ms until it holds or `within` passes; panics naming `what` on timeout.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting for: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// A unique scratch directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "switchyard-e2e-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

// ---------------------------------------------------------------------------------------------
// Backends
// ---------------------------------------------------------------------------------------------

/// How a loopback backend treats each connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Echo every byte.
    Echo,
    /// Echo `n` bytes, then reset the connection (RST).
    ResetAfter(usize),
    /// Echo `n` bytes, then neither read nor write, keeping the connection open.
    HangAfter(usize),
}

/// Open backend connections by id: `kill` shuts them all; each removes itself when it ends, so
/// its socket really closes (a clone left here would keep it open).
type Conns = Arc<Mutex<HashMap<u64, TcpStream>>>;

/// A loopback TCP backend on its own threads; `kill` closes the listener and every connection.
pub struct Backend {
    pub addr: String,
    stop: Arc<AtomicBool>,
    conns: Conns,
    accepted: Arc<AtomicU64>,
    acceptor: Option<thread::JoinHandle<()>>,
}

impl Backend {
    pub fn start(behaviour: Behaviour) -> Backend {
        Backend::start_on("127.0.0.1:0", behaviour)
    }

    /// A backend on a given address (say, one that was down and comes back where it was).
    pub fn start_on(addr: &str, behaviour: Behaviour) -> Backend {
        let listener = TcpListener::bind(addr).expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr").to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Conns = Arc::default();
        let accepted = Arc::new(AtomicU64::new(0));
        let (s, c, a) = (stop.clone(), conns.clone(), accepted.clone());
        let acceptor = thread::spawn(move || {
            while !s.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        stream.set_nonblocking(false).expect("blocking");
                        let id = a.fetch_add(1, Ordering::Relaxed);
                        if let Ok(clone) = stream.try_clone() {
                            c.lock().unwrap().insert(id, clone);
                        }
                        let (s2, c2) = (s.clone(), c.clone());
                        thread::spawn(move || {
                            serve(stream, behaviour, s2, || {
                                c2.lock().unwrap().remove(&id);
                            })
                        });
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Backend {
            addr,
            stop,
            conns,
            accepted,
            acceptor: Some(acceptor),
        }
    }

    /// Connections accepted so far (health probes included).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Stops listening and closes every connection, as a crashed server would.
    pub fn kill(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        for (_, c) in self.conns.lock().unwrap().drain() {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

fn serve(
    mut stream: TcpStream,
    behaviour: Behaviour,
    stop: Arc<AtomicBool>,
    forget: impl FnOnce(),
) {
    serve_inner(&mut stream, behaviour, &stop);
    forget();
    if let Behaviour::ResetAfter(_) = behaviour {
        // SO_LINGER 0: the close sends RST.
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    }
    drop(stream);
}

fn serve_inner(stream: &mut TcpStream, behaviour: Behaviour, stop: &AtomicBool) {
    let limit = match behaviour {
        Behaviour::Echo => usize::MAX,
        Behaviour::ResetAfter(n) | Behaviour::HangAfter(n) => n,
    };
    let mut done = 0usize;
    let mut buf = [0u8; 16 * 1024];
    while done < limit {
        let want = buf.len().min(limit - done);
        match stream.read(&mut buf[..want]) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
                done += n;
            }
        }
    }
    if let Behaviour::HangAfter(_) = behaviour {
        while !stop.load(Ordering::Acquire) {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The service
// ---------------------------------------------------------------------------------------------

/// The `switchyard` binary running with a temporary config; killed on drop if still running.
pub struct Service {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    pub dir: PathBuf,
}

/// The config used by most tests: fast health checks, the given backends.
pub fn config_yaml(proxy: SocketAddr, admin: SocketAddr, backends: &[&str], extra: &str) -> String {
    let list = backends.join(", ");
    format!(
        "proxy: {{ listen: {proxy}, protocol: tcp }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [{list}] }}\n\
         health_check: {{ interval: 100ms, max_retries: 0, retry_interval: 50ms, dial_timeout: 300ms }}\n\
         log: {{ level: debug }}\n\
         {extra}"
    )
}

impl Service {
    /// Starts the binary with `backends` and waits until the admin API answers.
    pub fn start(backends: &[&str], extra: &str) -> Service {
        Service::start_with(|proxy, admin| config_yaml(proxy, admin, backends, extra))
    }

    /// Starts the binary with the config `yaml(proxy, admin)` (two free addresses) and waits
    /// until the admin API answers.
    pub fn start_with(yaml: impl Fn(SocketAddr, SocketAddr) -> String) -> Service {
        // A free port can be taken by another process between the probe and the bind: a
        // service that could not bind is started again on fresh ports.
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            let proxy: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let dir = scratch_dir();
            let path = dir.join("config.yaml");
            std::fs::write(&path, yaml(proxy, admin)).expect("write config");
            let log = std::fs::File::create(dir.join("switchyard.log")).expect("log file");
            let child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
                .arg("--config")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn switchyard");
            let mut svc = Service {
                child,
                proxy,
                admin,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if http(svc.admin, "GET", "/health").is_some_and(|(code, _)| code == 200) {
                    return svc;
                }
                if let Some(status) = svc.child.try_wait().expect("try_wait") {
                    let log = svc.log();
                    if attempt < ATTEMPTS && log.contains("in use") {
                        break; // a port was taken meanwhile: fresh ports
                    }
                    panic!("switchyard exited early ({status}):\n{log}");
                }
                if Instant::now() >= deadline {
                    panic!(
                        "timed out after 20s waiting for the admin API to answer /health:\n{}",
                        svc.log()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        unreachable!("every attempt either returns or panics")
    }

    /// The service's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("switchyard.log")).unwrap_or_default()
    }

    /// `GET /backends`, parsed.
    /// Waits (up to 10 s) until `n` backends show as healthy in `/backends`.
    pub fn wait_healthy(&self, n: usize) {
        wait_until(
            &format!("{n} healthy backends"),
            Duration::from_secs(10),
            || {
                self.backends()
                    .iter()
                    .filter(|b| b["status"] == "healthy")
                    .count()
                    == n
            },
        );
    }

    pub fn backends(&self) -> Vec<serde_json::Value> {
        let (code, body) = http(self.admin, "GET", "/backends").expect("GET /backends");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str::<Vec<serde_json::Value>>(&body).expect("JSON list")
    }

    /// conn_count per backend address.
    pub fn conn_counts(&self) -> Vec<(String, u64)> {
        self.backends()
            .iter()
            .map(|b| {
                (
                    b["addr"].as_str().unwrap_or_default().to_string(),
                    b["conn_count"].as_u64().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: i32) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig})");
    }

    /// Waits for the process to exit, returning its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut status = None;
        wait_until("switchyard exits", within, || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        });
        status.and_then(|s| s.code())
    }

    /// A connected client socket with a read timeout.
    pub fn client(&self) -> TcpStream {
        let s = TcpStream::connect(self.proxy).expect("connect to proxy");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `mysql_async` options to log in as `user` through the proxy at `port` (over TCP, never the
/// local socket the client would otherwise prefer).
pub fn mysql_opts(port: u16, user: &str, password: &str) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false)
}

/// Writes `data` and reads the same number of bytes back.
pub fn echo(stream: &mut TcpStream, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut w = stream.try_clone()?;
    let out = data.to_vec();
    let writer = thread::spawn(move || w.write_all(&out));
    let mut got = vec![0u8; data.len()];
    let r = stream.read_exact(&mut got);
    writer.join().expect("writer thread")?;
    r.map(|_| got)
}

/// A minimal HTTP/1.1 request; `None` when the server cannot be reached. A POST goes as JSON
/// (`Content-Type: application/json`), as the admin API requires of a POST without a token.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> Option<(u16, String)> {
    let json: &[(&str, &str)] = if method == "POST" {
        &[("Content-Type", "application/json")]
    } else {
        &[]
    };
    http_with(addr, method, path, json)
}

/// [`http`] with exactly the given extra headers (nothing added for a POST).
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}Content-Length: 0\r\n\r\n"
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// How many redirects this test process held back or refused for `reason`
/// (`switchyard_migrations_refused_total{reason}`), for tests that run the proxy's actors in
/// process.
pub fn migrations_refused(reason: &str) -> f64 {
    let text = switchyard_server::metrics::install().render();
    let series = format!("switchyard_migrations_refused_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or(0.0)
}

/// A connection to `to` from `from` (a loopback address other than 127.0.0.1).
pub fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let local: SocketAddr = format!("{from}:0").parse().expect("address");
    sock.bind(&local.into()).expect("bind the client address");
    sock.connect(&to.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    s
}

/// A local port that forwards each connection to `to` from `from`, first sending `header`
/// (a load balancer speaking PROXY protocol, or a client on another address).
pub fn relay(from: &'static str, to: SocketAddr, header: Option<Vec<u8>>) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind relay");
    let port = l.local_addr().expect("addr").port();
    let header = Arc::new(header);
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            let header = header.clone();
            std::thread::spawn(move || {
                let mut up = connect_from(from, to);
                up.set_read_timeout(None).ok();
                if let Some(h) = header.as_ref() {
                    if up.write_all(h).is_err() {
                        return;
                    }
                }
                let (mut c2, mut up2) = (
                    c.try_clone().expect("clone"),
                    up.try_clone().expect("clone"),
                );
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut up2);
                    let _ = up2.shutdown(std::net::Shutdown::Write);
                });
                let (mut c, mut up) = (c, up);
                let _ = std::io::copy(&mut up, &mut c);
                let _ = c.shutdown(std::net::Shutdown::Write);
                let _ = t.join();
            });
        }
    });
    port
}

/// Reads until the peer closes (end of stream or reset) and returns what it sent first; panics
/// naming `what` when it is still open after `within`.
pub fn closed_within(within: Duration, s: &mut TcpStream, what: &str) -> Vec<u8> {
    s.set_read_timeout(Some(within)).expect("read timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("{what}: still open after {within:?} ({e})"),
        }
    }
}
