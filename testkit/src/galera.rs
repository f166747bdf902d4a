//! A real 3-node MariaDB Galera cluster on loopback, for tests whose backends must share data.
//!
//! Each node has its own temp dir, SQL port, gmcast port, IST port and SST port. The cluster is
//! seeded fast: node 1 bootstraps alone, stops cleanly, and its data dir is copied to nodes 2 and
//! 3, which then join by IST in about a second instead of two mariabackup SSTs (each one sleeps
//! 10 s in Debian's `wsrep_sst_mariabackup` before streaming). mariabackup SST stays configured,
//! with `root:` as its account: it is what a node restarted after [`Galera::kill9`] falls back to
//! when IST cannot serve it. (rsync SST fails as root here: its daemon cannot write the datadir.)

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::proc::{
    find_binary, free_port, is_root, log_tail, skip_or_fail, ServerProcess, TempDir,
};

/// Where Debian's `galera-4` puts the provider.
const PROVIDER: &str = "/usr/lib/galera/libgalera_smm.so";
/// How many nodes the cluster has.
pub const NODES: usize = 3;
/// How long one node may take to reach `Synced` (a joiner falling back to SST needs ~15 s).
const NODE_STARTUP: Duration = Duration::from_secs(120);
/// How long a clean shutdown may take before the node is killed.
const SHUTDOWN: Duration = Duration::from_secs(30);

/// The ports of one node.
#[derive(Debug, Clone, Copy)]
struct Ports {
    sql: u16,
    gmcast: u16,
    ist: u16,
    sst: u16,
}

/// One node: its directory layout and, while it runs, its process.
#[derive(Debug)]
struct Node {
    name: String,
    ports: Ports,
    dir: PathBuf,
    process: Mutex<Option<ServerProcess>>,
}

impl Node {
    fn cnf(&self) -> PathBuf {
        self.dir.join("my.cnf")
    }
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }
    fn socket(&self) -> PathBuf {
        self.dir.join("sock")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("mariadb.log")
    }
    fn lock(&self) -> MutexGuard<'_, Option<ServerProcess>> {
        self.process.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A 3-node Galera cluster of real `mariadbd` processes on `127.0.0.1`, each with a passwordless
/// `root` over its unix socket (for [`Galera::sql`]). Node indexes are `0..NODES`.
///
/// All methods take `&self`, so one cluster can be shared by a whole test binary
/// ([`Galera::shared`]) and still have nodes killed and restarted. Dropping it kills every node
/// and removes the directory.
#[derive(Debug)]
pub struct Galera {
    // Field order matters: the processes die before their directory is removed.
    nodes: Vec<Node>,
    server: PathBuf,
    client: PathBuf,
    started_in: Duration,
    dir: TempDir,
}

impl Galera {
    /// Starts the cluster and returns once it has 3 members, all `Synced`. `None` (after printing
    /// why) when `mariadbd`, `mariadb-install-db`, `mariadb`, `mariabackup` or the Galera provider
    /// is missing, unless servers are required (`SWITCHYARD_REQUIRE_SERVERS=1`). Takes about 5–10
    /// s ([`Galera::started_in`] says how long): share one per test binary with
    /// [`Galera::shared`].
    pub fn start() -> Option<Galera> {
        let started = Instant::now();
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
        if !Path::new(PROVIDER).is_file() || find_binary("mariadb-backup").is_none() {
            return skip_or_fail(&format!(
                "Galera provider ({PROVIDER}) or mariadb-backup not found; \
                 install Debian's galera-4 and mariadb-backup"
            ));
        }
        let dir = TempDir::new("galera");
        let nodes: Vec<Node> = (0..NODES)
            .map(|i| Node {
                name: format!("node{}", i + 1),
                ports: Ports {
                    sql: free_port(),
                    gmcast: free_port(),
                    ist: free_port(),
                    sst: free_port(),
                },
                dir: dir.path().join(format!("node{}", i + 1)),
                process: Mutex::new(None),
            })
            .collect();
        let cluster_address = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.ports.gmcast))
            .collect::<Vec<_>>()
            .join(",");
        for node in &nodes {
            std::fs::create_dir_all(node.dir.join("tmp")).expect("create galera node dir");
            std::fs::write(node.cnf(), my_cnf(node, &cluster_address))
                .expect("write galera node my.cnf");
        }
        let galera = Galera {
            nodes,
            server,
            client,
            started_in: Duration::ZERO,
            dir,
        };
        galera.install(&install);

        // Seed: bootstrap node 1 once so its data dir carries the cluster's state, stop it
        // cleanly, and give the other nodes copies, so they join by IST.
        galera.bring_up(0, true, None);
        galera.stop(0);
        for node in &galera.nodes[1..] {
            copy_dir(&galera.nodes[0].data(), &node.data());
        }
        galera.bring_up(0, true, None);
        // One joiner at a time: two at once churn for seconds over who is in the primary view.
        for i in 1..NODES {
            galera.bring_up(i, false, None);
        }
        galera.wait_cluster(NODE_STARTUP);
        let mut galera = galera;
        galera.started_in = started.elapsed();
        Some(galera)
    }

    /// One cluster for the whole test binary, started on first use and killed when the test
    /// process exits. `None` when the binaries are missing (see [`Galera::start`]).
    pub fn shared() -> Option<&'static Galera> {
        static SHARED: OnceLock<Option<Galera>> = OnceLock::new();
        SHARED.get_or_init(Galera::start).as_ref()
    }

    /// How long [`Galera::start`] took, from the first check to the last node `Synced`.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The SQL addresses of the nodes, `127.0.0.1:<port>`, in node order.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        (0..NODES).map(|i| self.addr(i)).collect()
    }

    /// The SQL address of node `node`.
    pub fn addr(&self, node: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.nodes[node].ports.sql))
    }

    /// Runs `sql` as root on node `node` over its unix socket with the `mariadb` client and
    /// returns its output (tab-separated, no column names). Panics with the client's error.
    pub fn sql(&self, node: usize, sql: &str) -> String {
        match self.try_sql(node, sql) {
            Ok(out) => out,
            Err(e) => panic!(
                "{} -e {sql:?} failed: {e}\n{}",
                self.nodes[node].name,
                log_tail(&self.nodes[node].log(), 2048)
            ),
        }
    }

    /// [`Galera::sql`] that returns the client's error instead of panicking (a node that is down
    /// or still joining).
    pub fn try_sql(&self, node: usize, sql: &str) -> Result<String, String> {
        let out = Command::new(&self.client)
            .arg("--no-defaults")
            .arg("-S")
            .arg(self.nodes[node].socket())
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .map_err(|e| format!("run {}: {e}", self.client.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A `SHOW GLOBAL STATUS` value of node `node` (`wsrep_cluster_size`, …); `None` when the
    /// node does not answer.
    pub fn status(&self, node: usize, name: &str) -> Option<String> {
        let out = self
            .try_sql(node, &format!("SHOW GLOBAL STATUS LIKE '{name}'"))
            .ok()?;
        out.lines()
            .next()
            .and_then(|l| l.split('\t').nth(1))
            .map(|v| v.trim().to_string())
    }

    /// Kills node `node` with SIGKILL, as a crashed host would, and reaps it. The others notice
    /// after the group's suspect timeout (2 s here) and go on as a 2-node primary component.
    pub fn kill9(&self, node: usize) {
        if let Some(mut p) = self.nodes[node].lock().take() {
            p.kill();
        }
    }

    /// Whether node `node` has a live process (it may still be joining).
    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node]
            .lock()
            .as_mut()
            .is_some_and(ServerProcess::is_running)
    }

    /// Starts node `node` again after [`Galera::kill9`] (a no-op while it runs) and returns once
    /// it is `Synced` and the cluster has all its members again. It recovers its position from
    /// InnoDB and rejoins by IST, or mariabackup SST when the others' gcache no longer covers
    /// the gap.
    pub fn restart(&self, node: usize) {
        if self.is_running(node) {
            return;
        }
        let position = self.recover_position(node);
        self.bring_up(node, false, position.as_deref());
        self.wait_cluster(NODE_STARTUP);
    }

    /// After a crash `grastate.dat` says seqno -1, and the node would ask for a full SST. What
    /// `mysqld_safe` does: `mariadbd --wsrep-recover` reads the last committed position from
    /// InnoDB, and the node starts from there, so it can rejoin by IST.
    fn recover_position(&self, i: usize) -> Option<String> {
        let node = &self.nodes[i];
        let log = node.dir.join("recover.log");
        let _ = std::fs::remove_file(&log);
        let status = Command::new(&self.server)
            .arg(format!("--defaults-file={}", node.cnf().display()))
            .arg("--wsrep-recover")
            .arg(format!("--log-error={}", log.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()?;
        if !status.success() {
            return None;
        }
        let text = std::fs::read_to_string(&log).ok()?;
        let pos = text
            .lines()
            .rev()
            .find_map(|l| l.split("WSREP: Recovered position: ").nth(1))?
            .trim()
            .to_string();
        // "00000000-…:-1" means nothing was recovered: let the node ask for SST.
        (!pos.ends_with(":-1")).then_some(pos)
    }

    /// Waits until every running node reports a cluster of all running nodes, each `Synced`;
    /// panics after `within`.
    pub fn wait_cluster(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let running: Vec<usize> = (0..NODES).filter(|&i| self.is_running(i)).collect();
            let want = running.len().to_string();
            let ok = running.iter().all(|&i| {
                self.status(i, "wsrep_cluster_size").as_deref() == Some(want.as_str())
                    && self.status(i, "wsrep_local_state_comment").as_deref() == Some("Synced")
            });
            if ok {
                return;
            }
            if Instant::now() > deadline {
                let states: Vec<String> = running
                    .iter()
                    .map(|&i| {
                        format!(
                            "{}: size {:?}, state {:?}",
                            self.nodes[i].name,
                            self.status(i, "wsrep_cluster_size"),
                            self.status(i, "wsrep_local_state_comment")
                        )
                    })
                    .collect();
                panic!(
                    "galera cluster not formed within {within:?}: {}\n{}",
                    states.join("; "),
                    log_tail(&self.nodes[0].log(), 2048)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn install(&self, install: &Path) {
        let node = &self.nodes[0];
        // small redo log: the data dir is copied twice while seeding
        crate::mariadb::install_db(
            install,
            &node.data(),
            &node.dir.join("tmp"),
            &node.dir.join("install.log"),
            &["--innodb-log-file-size=16M"],
        );
    }

    /// Starts node `i` and waits until it is `Synced`. A node that exits while starting is
    /// started again, twice at most: now and then the group layer of a joiner aborts at once
    /// ("Failed to set thread schedparams … No such process") and a second start succeeds.
    fn bring_up(&self, i: usize, new_cluster: bool, position: Option<&str>) {
        const ATTEMPTS: usize = 3;
        for attempt in 1..=ATTEMPTS {
            self.launch(i, new_cluster, position);
            match self.wait_synced(i) {
                Ok(()) => return,
                Err(e) if attempt < ATTEMPTS => {
                    let _ = writeln!(
                        std::io::stderr(),
                        "galera: {} failed to start (attempt {attempt}), starting it again: {e}",
                        self.nodes[i].name
                    );
                }
                Err(e) => panic!("{e}\n{}", log_tail(&self.nodes[i].log(), 4096)),
            }
        }
    }

    fn launch(&self, i: usize, new_cluster: bool, position: Option<&str>) {
        self.clear_stale_sst(i);
        let node = &self.nodes[i];
        let mut cmd = Command::new(&self.server);
        // --defaults-file (not --no-defaults): the SST scripts read the node's settings from it,
        // and would otherwise read the system's my.cnf (wrong datadir, logging to syslog).
        cmd.arg(format!("--defaults-file={}", node.cnf().display()));
        if new_cluster {
            cmd.arg("--wsrep-new-cluster");
        }
        if let Some(pos) = position {
            cmd.arg(format!("--wsrep-start-position={pos}"));
        }
        // The watchdog removes the whole cluster's directory once the test process is gone.
        let process = ServerProcess::spawn(cmd, &node.dir.join("stdout.log"), self.dir.path());
        *node.lock() = Some(process);
    }

    /// A joiner that died during an SST leaves the SST script (and its `mariabackup` and
    /// `socat`) running, with `wsrep_sst.pid` naming it: the next start would wait for it
    /// ("Previous SST is not completed") until the startup deadline. Stops them first.
    fn clear_stale_sst(&self, i: usize) {
        let pid_file = self.nodes[i].data().join("wsrep_sst.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return;
        };
        if let Ok(pid) = text.trim().parse::<u32>() {
            let pid = pid.to_string();
            let _ = Command::new("pkill").args(["-9", "-P", &pid]).status();
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        let _ = std::fs::remove_file(&pid_file);
    }

    /// Waits until node `i` is `Synced`; an error when it exits first or takes too long (then
    /// it is killed).
    fn wait_synced(&self, i: usize) -> Result<(), String> {
        let name = &self.nodes[i].name;
        let deadline = Instant::now() + NODE_STARTUP;
        loop {
            if let Some(p) = self.nodes[i].lock().as_mut() {
                if !p.is_running() {
                    return Err(format!("{name} exited during startup"));
                }
            }
            if self.status(i, "wsrep_local_state_comment").as_deref() == Some("Synced") {
                return Ok(());
            }
            if Instant::now() > deadline {
                if let Some(mut p) = self.nodes[i].lock().take() {
                    p.kill();
                }
                return Err(format!("{name} not Synced within {NODE_STARTUP:?}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops node `i` cleanly (SIGTERM), so its `grastate.dat` records its position.
    fn stop(&self, i: usize) {
        let Some(mut p) = self.nodes[i].lock().take() else {
            return;
        };
        if !p.terminate(SHUTDOWN) {
            let _ = writeln!(
                std::io::stderr(),
                "galera: {} ignored SIGTERM for {SHUTDOWN:?}; killed",
                self.nodes[i].name
            );
        }
    }
}

/// The node's `my.cnf`: everything in one file the SST scripts can read too.
fn my_cnf(node: &Node, cluster_address: &str) -> String {
    let d = |p: PathBuf| p.display().to_string();
    let Ports {
        sql,
        gmcast,
        ist,
        sst,
    } = node.ports;
    // Short group timers so a killed node leaves the view in ~2 s, not 15 s; they must keep
    // keepalive_period <= inactive_check_period <= suspect_timeout <= inactive_timeout.
    let provider_options = format!(
        "gmcast.listen_addr=tcp://127.0.0.1:{gmcast};ist.recv_addr=127.0.0.1:{ist};\
         gcache.size=16M;evs.keepalive_period=PT0.5S;evs.inactive_check_period=PT0.5S;\
         evs.suspect_timeout=PT2S;evs.inactive_timeout=PT4S;evs.install_timeout=PT4S"
    );
    let user = if is_root() { "user=root\n" } else { "" };
    format!(
        "[mysqld]\n\
         datadir={data}\n\
         port={sql}\n\
         bind-address=127.0.0.1\n\
         socket={socket}\n\
         tmpdir={tmp}\n\
         pid-file={pid}\n\
         log-error={log}\n\
         {user}\
         skip-name-resolve\n\
         innodb-buffer-pool-size=32M\n\
         innodb-log-file-size=16M\n\
         binlog-format=ROW\n\
         default-storage-engine=InnoDB\n\
         innodb-autoinc-lock-mode=2\n\
         wsrep-on=ON\n\
         wsrep-provider={PROVIDER}\n\
         wsrep-cluster-name=switchyard\n\
         wsrep-cluster-address=gcomm://{cluster_address}\n\
         wsrep-node-name={name}\n\
         wsrep-node-address=127.0.0.1:{gmcast}\n\
         wsrep-provider-options=\"{provider_options}\"\n\
         wsrep-sst-method=mariabackup\n\
         wsrep-sst-auth=root:\n\
         wsrep-sst-receive-address=127.0.0.1:{sst}\n\
         [sst]\n\
         sst-log-archive=0\n",
        data = d(node.data()),
        socket = d(node.socket()),
        tmp = d(node.dir.join("tmp")),
        pid = d(node.dir.join("mariadbd.pid")),
        log = d(node.log()),
        name = node.name,
    )
}

/// `cp -a from to` (the data dir holds only plain files and directories); once more after a
/// failure, which has been seen once on a loaded machine.
fn copy_dir(from: &Path, to: &Path) {
    let mut last = String::new();
    for _attempt in 0..2 {
        let _ = std::fs::remove_dir_all(to);
        let out = Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .output()
            .unwrap_or_else(|e| panic!("run cp: {e}"));
        if out.status.success() {
            return;
        }
        last = format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    panic!("cp -a {} {} failed: {last}", from.display(), to.display());
}
