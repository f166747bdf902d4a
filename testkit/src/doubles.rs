//! Loopback doubles: tiny tokio servers that misbehave on request.
//!
//! One [`Double`] serves each accepted connection with a [`Behaviour`]: a [`SqlDouble`] stands in
//! for a backend's SQL port (a proper MySQL greeting, arbitrary bytes, silence, an immediate
//! close), an [`HttpDouble`] for its status port (any status code, garbage, silence). A double
//! counts accepted connections, so a test can tell a retried check from one that gave up at once,
//! and can change behaviour while running. Doubles must be started inside a tokio runtime (an
//! `#[actix_rt::test]` is one); dropping one stops it and closes its connections.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// What a [`SqlDouble`] does with each accepted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqlBehaviour {
    /// Sends a valid MySQL protocol v10 greeting announcing this version, then waits for the
    /// client to hang up.
    Greet(String),
    /// Sends these bytes, then closes.
    Send(Vec<u8>),
    /// Sends these bytes, then keeps the connection open until the client hangs up.
    SendAndHold(Vec<u8>),
    /// Accepts and never says a word (a hung server).
    Silent,
    /// Accepts and closes at once.
    Close,
}

/// What an [`HttpDouble`] answers to each request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpBehaviour {
    /// A well-formed response with this status code and a small JSON body.
    Status(u16),
    /// These bytes verbatim (garbage, a broken status line…), then close.
    Raw(Vec<u8>),
    /// Reads the request and never answers.
    Silent,
}

/// A MySQL v10 initial handshake packet (header included) announcing `version`, shaped like the
/// one MariaDB sends.
pub fn mysql_greeting(version: &str) -> Vec<u8> {
    let mut payload = vec![10u8];
    payload.extend_from_slice(version.as_bytes());
    payload.push(0);
    payload.extend_from_slice(&7u32.to_le_bytes()); // connection id
    payload.extend_from_slice(b"abcdefgh"); // auth-plugin-data part 1
    payload.push(0); // filler
    payload.extend_from_slice(&0xf7feu16.to_le_bytes()); // capabilities, low half
    payload.push(45); // charset utf8mb4_general_ci
    payload.extend_from_slice(&2u16.to_le_bytes()); // status: autocommit
    payload.extend_from_slice(&0x81bfu16.to_le_bytes()); // capabilities, high half
    payload.push(21); // auth-plugin-data length
    payload.extend_from_slice(&[0u8; 10]); // reserved
    payload.extend_from_slice(b"ijklmnopqrst\0"); // auth-plugin-data part 2
    payload.extend_from_slice(b"mysql_native_password\0");
    packet(0, &payload)
}

/// A MySQL ERR packet (header included) as a server sends instead of a greeting, e.g.
/// `err_packet(1129, "Host '10.0.0.1' is blocked because of many connection errors")`.
pub fn err_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = vec![0xffu8];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    packet(0, &payload)
}

/// Frames `payload` as one MySQL packet: 3-byte little-endian length, then the sequence id.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("payload fits a packet");
    let mut out = len.to_le_bytes()[..3].to_vec();
    out.push(seq);
    out.extend_from_slice(payload);
    out
}

/// A loopback address nobody listens on: connecting to it is refused.
pub async fn refused_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    listener.local_addr().expect("local address")
}

/// What a [`Double`] does with each connection it accepts: one async function that serves it.
///
/// The double keeps the behaviour behind a lock and clones it for each connection, so a test
/// can switch it with [`Double::set`] while the double runs; connections already being served
/// keep the behaviour they started with.
pub trait Behaviour: Clone + Send + 'static {
    /// Serves one accepted connection to its end.
    fn serve(self, conn: TcpStream) -> impl Future<Output = ()> + Send + 'static;
}

impl Behaviour for SqlBehaviour {
    fn serve(self, conn: TcpStream) -> impl Future<Output = ()> + Send + 'static {
        serve_sql(conn, self)
    }
}

impl Behaviour for HttpBehaviour {
    fn serve(self, conn: TcpStream) -> impl Future<Output = ()> + Send + 'static {
        serve_http(conn, self)
    }
}

/// A fake port on loopback serving each connection with a [`Behaviour`]: it counts what it
/// accepts, can switch behaviour while running, and stops (closing every connection) when
/// dropped.
#[derive(Debug)]
pub struct Double<B> {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<B>>,
    task: JoinHandle<()>,
}

/// A fake SQL port.
pub type SqlDouble = Double<SqlBehaviour>;

/// A fake HTTP status port.
pub type HttpDouble = Double<HttpBehaviour>;

impl<B: Behaviour> Double<B> {
    /// Listens on a free loopback port with `behaviour`.
    pub async fn start(behaviour: B) -> Double<B> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local address");
        let accepted = Arc::new(AtomicUsize::new(0));
        let behaviour = Arc::new(Mutex::new(behaviour));
        let task = tokio::spawn(serve(listener, accepted.clone(), behaviour.clone()));
        Double {
            addr,
            accepted,
            behaviour,
            task,
        }
    }

    /// The address to connect to (for an HTTP double, its port is the status port).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Changes what later connections get.
    pub fn set(&self, behaviour: B) {
        *self.behaviour.lock().expect("behaviour lock") = behaviour;
    }
}

impl<B> Drop for Double<B> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts forever, serving each connection with the behaviour of the moment in a task owned by
/// this one (so aborting it closes every connection).
async fn serve<B: Behaviour>(
    listener: TcpListener,
    accepted: Arc<AtomicUsize>,
    behaviour: Arc<Mutex<B>>,
) {
    let mut conns = JoinSet::new();
    loop {
        while conns.try_join_next().is_some() {}
        let Ok((conn, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let b = behaviour.lock().expect("behaviour lock").clone();
        conns.spawn(b.serve(conn));
    }
}

async fn serve_sql(mut conn: TcpStream, behaviour: SqlBehaviour) {
    match behaviour {
        SqlBehaviour::Greet(version) => {
            let _ = conn.write_all(&mysql_greeting(&version)).await;
            drain(conn).await;
        }
        SqlBehaviour::Send(bytes) => {
            let _ = conn.write_all(&bytes).await;
            let _ = conn.shutdown().await;
        }
        SqlBehaviour::SendAndHold(bytes) => {
            let _ = conn.write_all(&bytes).await;
            drain(conn).await;
        }
        SqlBehaviour::Silent => drain(conn).await,
        SqlBehaviour::Close => {}
    }
}

async fn serve_http(mut conn: TcpStream, behaviour: HttpBehaviour) {
    // Read the request head (bounded) before answering, as a server would.
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    match behaviour {
        HttpBehaviour::Status(code) => {
            let body = br#"{"connections":0,"version":"8.0.11-TiDB-double","git_hash":"x"}"#;
            let resp = format!(
                "HTTP/1.1 {code} Status\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.write_all(body).await;
            let _ = conn.shutdown().await;
        }
        HttpBehaviour::Raw(bytes) => {
            let _ = conn.write_all(&bytes).await;
            let _ = conn.shutdown().await;
        }
        HttpBehaviour::Silent => drain(conn).await,
    }
}

/// Reads and discards until the peer hangs up, so a held connection is freed when the client
/// gives up.
async fn drain(mut conn: TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
