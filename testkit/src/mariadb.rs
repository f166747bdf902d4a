//! A real MariaDB server in a temporary directory.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::proc::{
    find_binary, free_port, is_root, log_tail, skip_or_fail, ServerProcess, TempDir,
};

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
        let mut status = None;
        for _attempt in 0..2 {
            let _ = std::fs::remove_dir_all(&data);
            let mut init = Command::new(&install);
            init.arg("--no-defaults")
                .arg("--auth-root-authentication-method=normal")
                .arg("--skip-test-db")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()));
            if root {
                init.arg("--user=root");
            }
            let out = std::fs::File::create(&install_log).expect("create install log");
            let err = out.try_clone().expect("clone install log handle");
            let st = init
                .stdout(out)
                .stderr(err)
                .status()
                .unwrap_or_else(|e| panic!("run {}: {e}", install.display()));
            status = Some(st);
            if st.success() {
                break;
            }
        }
        let status = status.expect("install ran");
        if !status.success() {
            panic!(
                "mariadb-install-db failed ({status})\n{}",
                log_tail(&install_log, 4096)
            );
        }

        let port = free_port();
        let mut cmd = Command::new(&server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .arg("--skip-name-resolve")
            .arg("--innodb-buffer-pool-size=32M");
        if root {
            cmd.arg("--user=root");
        }
        let process = ServerProcess::spawn(cmd, &log, dir.path());
        let mut db = MariaDb {
            process,
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

    /// The SQL address, `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
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

/// Whether a MySQL v10 greeting arrives on `addr`.
fn greets(addr: SocketAddr) -> bool {
    let Ok(mut conn) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
    let mut head = [0u8; 5];
    conn.read_exact(&mut head).is_ok() && head[4] == 10
}
