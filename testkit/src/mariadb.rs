//! A real MariaDB server in a temporary directory.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::netns::NetNs;
use crate::proc::{
    find_binary, free_port, is_root, log_tail, skip_or_fail, ServerProcess, TempDir,
};

/// How [`MariaDb::start_with`] runs the server; the default is [`MariaDb::start`]'s.
#[derive(Debug, Default)]
pub struct MariaDbOptions<'a> {
    /// Run inside this namespace, listening on its inside address (default: this namespace,
    /// 127.0.0.1). Drop the server before the namespace.
    pub netns: Option<&'a NetNs>,
    /// Resolve client addresses (no `--skip-name-resolve`): only then does the server keep its
    /// host cache, which counts aborted connects and blocks a host past `max_connect_errors`.
    pub name_resolve: bool,
    /// More server options, e.g. `--max-connect-errors=5`.
    pub args: Vec<String>,
}

/// The first byte of a greeting (protocol version 10).
const PROTOCOL_V10: u8 = 10;
/// The first byte of an ERR packet.
const ERR_MARKER: u8 = 0xFF;

/// How long a fresh server may take to greet.
const STARTUP: Duration = Duration::from_secs(60);

/// A MariaDB server listening on `127.0.0.1:<free port>` and on a socket in its own temp dir,
/// with a passwordless `root` reachable over that socket (for [`MariaDb::sql`]).
///
/// Dropping it kills the server and removes the directory.
#[derive(Debug)]
pub struct MariaDb {
    // Field order matters: the process dies before its directory is removed.
    process: ServerProcess,
    ip: IpAddr,
    port: u16,
    socket: PathBuf,
    client: PathBuf,
    dir: TempDir,
}

impl MariaDb {
    /// Initializes a data directory with `mariadb-install-db` and starts `mariadbd` on it; returns
    /// when the server sends its greeting. `None` (after printing why) when the binaries are
    /// missing, unless servers are required. Takes a few seconds: share one per test binary with
    /// [`MariaDb::shared`] where the tests allow.
    pub fn start() -> Option<MariaDb> {
        MariaDb::start_with(MariaDbOptions::default())
    }

    /// [`MariaDb::start`] with `opts`.
    pub fn start_with(opts: MariaDbOptions<'_>) -> Option<MariaDb> {
        let (Some(server), Some(install), Some(client)) = (
            find_binary("mariadbd"),
            find_binary("mariadb-install-db"),
            find_binary("mariadb"),
        ) else {
            return skip_or_fail(
                "MariaDB binaries (mariadbd, mariadb-install-db, mariadb) not found; \
                 install Debian's mariadb-server",
            );
        };
        let dir = TempDir::new("mariadb");
        let data = dir.path().join("data");
        let log = dir.path().join("mariadb.log");
        let socket = dir.path().join("sock");
        let root = is_root();

        // A private tmpdir: servers bootstrapped at once in a shared /tmp can trip over each
        // other's temporary tables ("Could not remove temporary table").
        let tmp = dir.path().join("tmp");
        std::fs::create_dir_all(&tmp).expect("create mariadb tmpdir");
        let install_log = dir.path().join("install.log");
        install_db(&install, &data, &tmp, &install_log, &[]);

        let port = free_port();
        let (mut cmd, ip) = match opts.netns {
            Some(ns) => (ns.command(&server), IpAddr::V4(ns.inside())),
            None => (Command::new(&server), IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .arg("--innodb-buffer-pool-size=32M");
        if !opts.name_resolve {
            cmd.arg("--skip-name-resolve");
        }
        if root {
            cmd.arg("--user=root");
        }
        cmd.args(&opts.args);
        let process = ServerProcess::spawn(cmd, &log, dir.path());
        let mut db = MariaDb {
            process,
            ip,
            port,
            socket,
            client,
            dir,
        };
        db.wait_for_greeting();
        Some(db)
    }

    /// One server for the whole test binary, started on first use and killed when the test
    /// process exits. `None` when the binaries are missing (see [`MariaDb::start`]).
    pub fn shared() -> Option<&'static MariaDb> {
        static SHARED: OnceLock<Option<MariaDb>> = OnceLock::new();
        SHARED.get_or_init(MariaDb::start).as_ref()
    }

    fn wait_for_greeting(&mut self) {
        let deadline = Instant::now() + STARTUP;
        loop {
            self.process.assert_running("mariadbd");
            if greets(self.addr()) {
                return;
            }
            if Instant::now() > deadline {
                self.process.fail(&format!(
                    "mariadbd did not greet on {} within {STARTUP:?}",
                    self.addr()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The SQL address: `127.0.0.1:<port>`, or the namespace's inside address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.port)
    }

    /// The SQL port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Runs `sql` as root over the unix socket with the `mariadb` client and returns its output
    /// (tab-separated, no column names). Panics with the client's error on failure.
    pub fn sql(&self, sql: &str) -> String {
        let out = Command::new(&self.client)
            .arg("--no-defaults")
            .arg("-S")
            .arg(&self.socket)
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", self.client.display()));
        if !out.status.success() {
            panic!(
                "mariadb -e {sql:?} failed ({}): {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                log_tail(&self.dir.path().join("mariadb.log"), 2048)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Whether the server answers on `addr`: a MySQL v10 greeting, or an ERR in its place (a server
/// that resolves names refuses a host no account matches before it greets). After a greeting the
/// check logs in as a user that does not exist and reads the refusal: a connection dropped after
/// the greeting would count as an aborted connect against this host, and a refused login does
/// not.
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 4];
    if conn.read_exact(&mut head).is_err() {
        return false;
    }
    let len = u32::from_le_bytes([head[0], head[1], head[2], 0]) as usize;
    let mut greeting = vec![0u8; len];
    if conn.read_exact(&mut greeting).is_err() {
        return false;
    }
    match greeting.first() {
        Some(&PROTOCOL_V10) => {}
        Some(&ERR_MARKER) => return true,
        _ => return false,
    }
    let _ = conn.write_all(&unknown_user_login());
    let mut reply = [0u8; 4];
    if conn.read_exact(&mut reply).is_ok() {
        let len = u32::from_le_bytes([reply[0], reply[1], reply[2], 0]) as usize;
        let _ = conn.read_exact(&mut vec![0u8; len]);
    }
    true
}

/// A protocol-4.1 handshake response (sequence 1) for `testkit_no_such_user`, empty password.
fn unknown_user_login() -> Vec<u8> {
    /// CLIENT_LONG_PASSWORD | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION | CLIENT_PLUGIN_AUTH
    const CAPS: u32 = 0x1 | 0x200 | 0x8000 | 0x8_0000;
    /// utf8mb3_general_ci
    const CHARSET: u8 = 33;
    let mut payload = Vec::with_capacity(80);
    payload.extend_from_slice(&CAPS.to_le_bytes());
    payload.extend_from_slice(&(16u32 << 20).to_le_bytes());
    payload.push(CHARSET);
    payload.extend_from_slice(&[0u8; 23]);
    payload.extend_from_slice(b"testkit_no_such_user\0");
    payload.push(0); // no auth data
    payload.extend_from_slice(b"mysql_native_password\0");
    let len = (payload.len() as u32).to_le_bytes();
    let mut packet = vec![len[0], len[1], len[2], 1];
    packet.extend_from_slice(&payload);
    packet
}

/// Runs `mariadb-install-db` (`install`) into `data`, its output to `log`, with `extra` options
/// after the common ones; panics with the log's tail if it fails twice (it very rarely fails once
/// on a loaded machine).
pub(crate) fn install_db(install: &Path, data: &Path, tmp: &Path, log: &Path, extra: &[&str]) {
    let mut status = None;
    for _attempt in 0..2 {
        let _ = std::fs::remove_dir_all(data);
        let mut init = Command::new(install);
        init.arg("--no-defaults")
            .arg("--auth-root-authentication-method=normal")
            .arg("--skip-test-db")
            .args(extra)
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()));
        if is_root() {
            init.arg("--user=root");
        }
        let out = std::fs::File::create(log).expect("create install log");
        let err = out.try_clone().expect("clone install log handle");
        let st = init
            .stdout(out)
            .stderr(err)
            .status()
            .unwrap_or_else(|e| panic!("run {}: {e}", install.display()));
        status = Some(st);
        if st.success() {
            return;
        }
    }
    panic!(
        "mariadb-install-db failed ({status:?})\n{}",
        log_tail(log, 4096)
    );
}
