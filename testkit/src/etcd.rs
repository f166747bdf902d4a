//! A real single-member etcd in a temporary directory, which a test can stop and start again.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proc::{find_binary, free_port, skip_or_fail, ServerProcess, TempDir};

/// How long etcd may take to report healthy.
const STARTUP: Duration = Duration::from_secs(30);

/// An etcd member on `127.0.0.1:<free port>` (clients) and another free port (peers), data in its
/// own temp dir. [`Etcd::stop`] and [`Etcd::restart`] keep the data dir and the ports, so a test
/// can take etcd away mid-run and bring the same keys back.
///
/// Dropping it kills the server and removes the directory.
#[derive(Debug)]
pub struct Etcd {
    // Field order matters: the process dies before its directory is removed.
    process: Option<ServerProcess>,
    binary: PathBuf,
    client_port: u16,
    peer_port: u16,
    dir: TempDir,
}

impl Etcd {
    /// Starts etcd and returns once `/health` says so. `None` (after printing why) when the
    /// `etcd` binary is missing, unless servers are required.
    pub fn start() -> Option<Etcd> {
        let Some(binary) = find_binary("etcd") else {
            return skip_or_fail("etcd binary not found; install Debian's etcd-server");
        };
        let mut etcd = Etcd {
            process: None,
            binary,
            client_port: free_port(),
            peer_port: free_port(),
            dir: TempDir::new("etcd"),
        };
        etcd.launch();
        Some(etcd)
    }

    fn launch(&mut self) {
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new(&self.binary);
        cmd.arg("--name")
            .arg("default")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("default={peer}"))
            // A lone member elects itself sooner with short raft timers.
            .arg("--heartbeat-interval=50")
            .arg("--election-timeout=500");
        let log = self.dir.path().join("etcd.log");
        let mut process = ServerProcess::spawn(cmd, &log, self.dir.path());
        let deadline = Instant::now() + STARTUP;
        loop {
            process.assert_running("etcd");
            if healthy(self.client_addr()) {
                break;
            }
            if Instant::now() > deadline {
                process.fail(&format!("etcd did not become healthy within {STARTUP:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.process = Some(process);
    }

    /// The client URL, `http://127.0.0.1:<port>` (what `EtcdFetcher::new` takes).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// Kills etcd (SIGKILL, like a crash), keeping its data dir. A no-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// Starts etcd again on the same ports and data dir; returns once it is healthy.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    /// Whether the process is up (started and not stopped).
    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

/// Whether `GET /health` on `addr` answers `"health":"true"`.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(2)));
    if conn
        .write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = conn.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
