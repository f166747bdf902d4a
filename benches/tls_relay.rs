//! What TLS costs the proxy itself per relayed query, apart from the clients' and servers' own TLS
//! work (which, on a shared machine, decides most of `benches/tls_bench.sh`'s ratio).
//!
//! One thread relays a point-select-sized request and response between a front socket and a
//! backend socket the way the mysql relay does (a `PacketReader` in, an `OutBuf` out, one write
//! per flight), through the service's own `Stream` halves and TLS setup; the client and the
//! backend run on another thread, so the relaying thread's CPU time (user and system, from
//! `getrusage(RUSAGE_THREAD)`) is the proxy's alone. Paths are interleaved round by round and
//! each figure is the median of the rounds.
//!
//! `cargo bench --bench tls_relay` (`TLS_RELAY_QUERIES`, `TLS_RELAY_ROUNDS` to change the size).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use switchyard::wire::{OutBuf, PacketReader};
use switchyard_server::entry::{Stream, StreamRead, StreamWrite};
use switchyard_server::tls::{BackendTls, FrontTls};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Queries relayed per path and round.
const QUERIES: u64 = 20_000;
/// Rounds per path.
const ROUNDS: usize = 5;
/// `COM_QUERY` of an `oltp_point_select`, with its header.
const REQUEST: &[u8] = b"\x24\x00\x00\x00\x03SELECT c FROM sbtest1 WHERE id=5034";
/// Packets of its answer (column count, column definition, row, OK as EOF).
const RESPONSE_PACKETS: usize = 4;
/// Bytes of one row's `c` column in sysbench's tables.
const C_LEN: usize = 120;

/// The answer: four packets, about 200 bytes, as MariaDB sends it in one write.
fn response() -> Vec<u8> {
    let mut out = Vec::new();
    let mut put = |seq: u8, payload: &[u8]| {
        let len = u32::try_from(payload.len()).expect("short").to_le_bytes();
        out.extend_from_slice(&[len[0], len[1], len[2], seq]);
        out.extend_from_slice(payload);
    };
    put(1, &[1]);
    put(
        2,
        b"\x03def\x06sbtest\x08sbtest1\x08sbtest1\x01c\x01c\x0c\x08\x00\x78\x00\x00\x00\xfe\x01\x10\x00\x00\x00",
    );
    let mut row = vec![u8::try_from(C_LEN).expect("short")];
    row.extend(std::iter::repeat_n(b'7', C_LEN));
    put(3, &row);
    put(4, b"\xfe\x00\x00\x02\x00\x00\x00");
    out
}

/// A throwaway CA and a certificate for 127.0.0.1 in `dir`: (CA, cert, key).
fn pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let ok = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "openssl {args:?} failed (is the openssl CLI installed?)"
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
        ],
        &[
            "-subj",
            "/CN=bench CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("write ext");
    run(&[
        &["req"][..],
        &ec,
        &[
            "-nodes", "-keyout", "s.key", "-out", "s.csr", "-subj", "/CN=s",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "s.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "s.pem",
        "-days",
        "1",
        "-extfile",
        "ext",
    ]);
    (dir.join("ca.pem"), dir.join("s.pem"), dir.join("s.key"))
}

/// The peers' TLS: a client trusting the CA (the "sysbench" side) and a server with the
/// certificate (the "MariaDB" side).
struct PeerTls {
    client: tokio_rustls::TlsConnector,
    server: tokio_rustls::TlsAcceptor,
}

impl PeerTls {
    fn new(ca: &Path, cert: &Path, key: &Path) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).expect("ca") {
            roots.add(c.expect("ca cert")).expect("add ca");
        }
        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let chain = CertificateDer::pem_file_iter(cert)
            .expect("cert")
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, PrivateKeyDer::from_pem_file(key).expect("key"))
            .expect("server config");
        Self {
            client: Arc::new(client).into(),
            server: Arc::new(server).into(),
        }
    }
}

/// Which sides of the relay speak TLS.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Sides {
    front: bool,
    back: bool,
}

impl Sides {
    fn name(self) -> &'static str {
        match (self.front, self.back) {
            (false, false) => "plain",
            (true, false) => "TLS to clients",
            (false, true) => "TLS to backends",
            (true, true) => "TLS both sides",
        }
    }
}

type Peer = Box<dyn AsyncStream>;
trait AsyncStream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> AsyncStream for T {}

/// Connected loopback pairs: (the proxy's front, the client) and (the proxy's back, the
/// backend). Plain std sockets, so each side registers its own with its own thread's runtime.
fn socket_pairs() -> (
    (std::net::TcpStream, std::net::TcpStream),
    (std::net::TcpStream, std::net::TcpStream),
) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let pair = || {
        let c = std::net::TcpStream::connect(addr).expect("connect");
        let (s, _) = l.accept().expect("accept");
        for s in [&c, &s] {
            s.set_nodelay(true).expect("nodelay");
            s.set_nonblocking(true).expect("nonblocking");
        }
        (c, s)
    };
    let (client, front) = pair();
    let (back, server) = pair();
    ((front, client), (back, server))
}

fn tokio_tcp(s: std::net::TcpStream) -> TcpStream {
    TcpStream::from_std(s).expect("register")
}

/// The proxy's side of a path: its front and back streams, TLS where `sides` says.
async fn proxy_streams(
    sides: Sides,
    front: std::net::TcpStream,
    back: std::net::TcpStream,
    front_tls: &FrontTls,
    back_tls: &BackendTls,
) -> (Stream, Stream) {
    let (front, back) = (tokio_tcp(front), tokio_tcp(back));
    let backend = back.peer_addr().expect("peer").to_string();
    let front = async {
        match sides.front {
            true => front_tls.accept(front).await.expect("front handshake"),
            false => Stream::Plain(front),
        }
    };
    let back = async {
        match sides.back {
            true => back_tls
                .connect(&backend, back)
                .await
                .expect("back handshake"),
            false => Stream::Plain(back),
        }
    };
    tokio::join!(front, back)
}

/// The peers' side: the client and the backend, TLS where `sides` says.
async fn peer_streams(
    sides: Sides,
    client: std::net::TcpStream,
    server: std::net::TcpStream,
    tls: &PeerTls,
) -> (Peer, Peer) {
    let (client, server) = (tokio_tcp(client), tokio_tcp(server));
    let name = ServerName::try_from("127.0.0.1").expect("name");
    let client = async {
        match sides.front {
            true => Box::new(
                tls.client
                    .connect(name, client)
                    .await
                    .expect("client handshake"),
            ) as Peer,
            false => Box::new(client) as Peer,
        }
    };
    let server = async {
        match sides.back {
            true => Box::new(tls.server.accept(server).await.expect("server handshake")) as Peer,
            false => Box::new(server) as Peer,
        }
    };
    tokio::join!(client, server)
}

/// The client and the backend: `queries` requests and answers, on the peers' thread.
async fn peers(mut client: Peer, mut server: Peer, queries: u64) {
    let answer = response();
    let backend = async move {
        let mut req = [0u8; REQUEST.len()];
        loop {
            if server.read_exact(&mut req).await.is_err() {
                return;
            }
            server.write_all(&answer).await.expect("answer");
        }
    };
    let client = async move {
        let mut got = vec![0u8; response().len()];
        for _ in 0..queries {
            client.write_all(REQUEST).await.expect("request");
            client.read_exact(&mut got).await.expect("response");
        }
    };
    // the backend ends when the relay closes its side
    tokio::join!(backend, client);
}

/// The relay: as `mysql::relay` does per command (frames read, queued, one write per flight).
async fn relay(front: Stream, back: Stream, queries: u64) {
    let (fr, mut fw): (StreamRead, StreamWrite) = front.into_split();
    let (br, mut bw) = back.into_split();
    let (mut fr, mut br) = (PacketReader::new(fr), PacketReader::new(br));
    let (mut to_back, mut to_front) = (OutBuf::new(), OutBuf::new());
    for _ in 0..queries {
        let f = fr.frame().await.expect("request");
        to_back.extend_from_slice(f.raw());
        to_back.flush_to(&mut bw).await.expect("to backend");
        for _ in 0..RESPONSE_PACKETS {
            let f = br.frame().await.expect("response packet");
            to_front.extend_from_slice(f.raw());
        }
        to_front.flush_to(&mut fw).await.expect("to client");
    }
}

/// CPU time of the calling thread: (user, system).
fn thread_cpu() -> (Duration, Duration) {
    // SAFETY: getrusage writes into the zeroed struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    let d = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    (d(u.ru_utime), d(u.ru_stime))
}

fn current_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One round of one path: the relaying thread's (user, system) µs per query.
fn round(
    sides: Sides,
    front_tls: &FrontTls,
    back_tls: &BackendTls,
    peers_tls: &Arc<PeerTls>,
) -> (f64, f64) {
    let queries = env("TLS_RELAY_QUERIES", QUERIES);
    let ((front, client), (back, server)) = socket_pairs();
    let peers_tls = peers_tls.clone();
    let peer_thread = std::thread::spawn(move || {
        current_thread().block_on(async {
            let (client, server) = peer_streams(sides, client, server, &peers_tls).await;
            peers(client, server, queries).await
        });
    });
    let rt = current_thread();
    let (front, back) = rt.block_on(proxy_streams(sides, front, back, front_tls, back_tls));
    let (u0, s0) = thread_cpu();
    rt.block_on(relay(front, back, queries));
    let (u1, s1) = thread_cpu();
    peer_thread.join().expect("peers");
    let per = |d: Duration| d.as_secs_f64() * 1e6 / queries as f64;
    (per(u1 - u0), per(s1 - s0))
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs.get(xs.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() {
    let dir = std::env::temp_dir().join(format!("switchyard-tls-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let (ca, cert, key) = pki(&dir);
    let front_tls = FrontTls::load(&cert, &key, false).expect("front tls");
    let back_tls = BackendTls::new(Some(&ca), false).expect("backend tls");
    let peers_tls = Arc::new(PeerTls::new(&ca, &cert, &key));
    let paths = [
        Sides {
            front: false,
            back: false,
        },
        Sides {
            front: true,
            back: false,
        },
        Sides {
            front: false,
            back: true,
        },
        Sides {
            front: true,
            back: true,
        },
    ];
    // TLS_RELAY_ONLY=3 (an index into `paths`) measures one path, e.g. under a profiler
    let only = std::env::var("TLS_RELAY_ONLY")
        .ok()
        .and_then(|v| v.parse::<usize>().ok());
    let rounds = env("TLS_RELAY_ROUNDS", ROUNDS as u64) as usize;
    let mut figures: Vec<Vec<(f64, f64)>> = vec![Vec::new(); paths.len()];
    // warm-up: page faults, pools, the CPU's frequency
    let _ = round(paths[3], &front_tls, &back_tls, &peers_tls);
    for r in 0..rounds {
        for i in 0..paths.len() {
            let i = (i + r) % paths.len();
            if only.is_some_and(|o| o != i) {
                continue;
            }
            figures[i].push(round(paths[i], &front_tls, &back_tls, &peers_tls));
        }
    }
    let total = |f: &[(f64, f64)]| median(f.iter().map(|(u, s)| u + s).collect());
    let plain = total(&figures[0]);
    println!(
        "relaying thread CPU per query, median of {rounds} rounds × {} queries:",
        env("TLS_RELAY_QUERIES", QUERIES)
    );
    println!("| path | user µs | system µs | total µs | plain / this |");
    println!("|---|---:|---:|---:|---:|");
    for (path, f) in paths.iter().zip(&figures).filter(|(_, f)| !f.is_empty()) {
        let user = median(f.iter().map(|(u, _)| *u).collect());
        let sys = median(f.iter().map(|(_, s)| *s).collect());
        let t = total(f);
        println!(
            "| {} | {user:.2} | {sys:.2} | {t:.2} | {:.3} |",
            path.name(),
            plain / t
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
