//! Processes, temporary directories, ports and the skip-or-fail rule shared by the servers.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Whether missing servers fail the test (`SWITCHYARD_REQUIRE_SERVERS=1`, as in CI) instead of
/// skipping it.
pub fn require_servers() -> bool {
    std::env::var("SWITCHYARD_REQUIRE_SERVERS").is_ok_and(|v| v.trim() == "1")
}

/// A test cannot run because of `reason` (typically a missing binary): print why and return
/// `None` so the test can skip — or panic with the reason when [`require_servers`] says so.
pub fn skip_or_fail<T>(reason: &str) -> Option<T> {
    if require_servers() {
        panic!("{reason} (SWITCHYARD_REQUIRE_SERVERS=1, so this is a failure)");
    }
    // Straight to the stderr handle, not `eprintln!`: the test harness captures the macros'
    // output of passing tests, and a skip should be visible in a plain `cargo test`.
    let _ = writeln!(
        std::io::stderr(),
        "skipping: {reason} (set SWITCHYARD_REQUIRE_SERVERS=1 to make this a failure)"
    );
    None
}

/// A loopback port nobody listens on right now (bound, read, released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port");
    listener
        .local_addr()
        .expect("local address of a bound listener")
        .port()
}

/// A directory under the system temp dir, removed (with everything in it) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// A fresh, empty directory named after `prefix`, this process and a counter.
    pub fn new(prefix: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-{prefix}-{}-{}-{nanos:x}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Finds `name` on `PATH` or in the sbin directories (`mariadbd` lives in `/usr/sbin`, often not
/// on a test runner's `PATH`).
pub(crate) fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Whether this process runs as root (mariadbd then needs `--user=root`).
pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// The last `max` bytes of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    format!(
        "--- tail of {} ---\n{}",
        path.display(),
        String::from_utf8_lossy(&buf)
    )
}

/// A server process whose output goes to a log file. Killed on drop; a small watchdog shell also
/// kills it when the test process exits, so a server shared through a `static` (whose drop never
/// runs) does not outlive the test binary.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    log: PathBuf,
}

impl ServerProcess {
    /// Spawns `cmd` with stdout and stderr appended to `log`; `cleanup` is removed by the watchdog
    /// after the test process is gone.
    pub(crate) fn spawn(mut cmd: Command, log: &Path, cleanup: &Path) -> ServerProcess {
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open log {}: {e}", log.display()));
        let err = out.try_clone().expect("clone log file handle");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        // Exits on its own when the server dies first; kills it when the test process dies first.
        let _ = Command::new("sh")
            .arg("-c")
            .arg(
                "while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 0.5; done; \
                 if ! kill -0 \"$1\" 2>/dev/null; then kill -9 \"$2\" 2>/dev/null; rm -rf \"$3\"; fi",
            )
            .arg("watchdog")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .arg(cleanup)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        ServerProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    /// Panics with the log's tail if the process has exited.
    pub(crate) fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "{what} exited during startup ({status})\n{}",
                log_tail(&self.log, 4096)
            );
        }
    }

    /// Panics with `msg` and the log's tail.
    pub(crate) fn fail(&mut self, msg: &str) -> ! {
        self.kill();
        panic!("{msg}\n{}", log_tail(&self.log, 4096));
    }

    /// Whether the process has not exited yet.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Asks the process to stop (SIGTERM) and waits up to `within` for it to exit; kills it
    /// (SIGKILL) after that. True when it exited on its own.
    pub(crate) fn terminate(&mut self, within: Duration) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        false
    }

    /// Kills the process (SIGKILL) and reaps it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
