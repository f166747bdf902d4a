//! Running a script: the cluster's schema and users, resetting the data, one run straight to a
//! Galera node or through switchyard with a move forced before every command, and the checks at
//! the end of a session.
//!
//! A forced move is `POST /redirect`, then a wait (with a deadline) until the session has dealt
//! with it: `switchyard_migrations_total` grew (moved, or refused) or the log says the redirect
//! waits for a safe point (a transaction). A waiting redirect is re-examined after every
//! command, so then the tester waits for that next verdict instead of posting again.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_testkit::mysql_client::{Client, ClientError, Options, Outcome};
use switchyard_testkit::Galera;

use crate::gen::LOCKS;
use crate::observe::{Obs, Trace};
use crate::script::{Cmd, Script};
use crate::support::{http, Service};
use crate::USERS;

/// The account the tester resets data and watches connections with.
const ADMIN: (&str, &str) = ("sy_admin", "sy-admin-pw");
/// A statement id no prepare gave out (for a slot never prepared).
const UNKNOWN_ID: u32 = 0x7777;
/// How long a session's server threads may take to go away after it closed.
const QUIET_WITHIN: Duration = Duration::from_secs(20);
/// How long a forced move may take to settle before the tester goes on without knowing.
const SETTLE_WITHIN: Duration = Duration::from_secs(3);
/// The debug log line of a redirect kept until a safe point (`Relay::hold`, src/mysql/relay/moves.rs).
const WAITS_MARK: &str = "redirect waits for a safe point";

/// Creates the schema, procedures and users once per cluster and sets the globals that make
/// two runs on different nodes comparable.
pub fn prepare_cluster(g: &Galera) {
    let (au, ap) = ADMIN;
    let mut users = format!(
        "CREATE USER IF NOT EXISTS '{au}'@'%' IDENTIFIED BY '{ap}'; \
         GRANT ALL ON *.* TO '{au}'@'%';"
    );
    for (u, p) in USERS {
        users.push_str(&format!(
            "CREATE USER IF NOT EXISTS '{u}'@'%' IDENTIFIED BY '{p}'; GRANT ALL ON *.* TO '{u}'@'%';"
        ));
    }
    g.sql(0, &users);
    for node in 0..g.addrs().len() {
        // Auto-increment as on a single server (Galera spreads it by node), and every read
        // waits until the node has applied what the cluster committed before it.
        g.sql(
            node,
            "SET GLOBAL wsrep_auto_increment_control = OFF; \
             SET GLOBAL auto_increment_increment = 1; SET GLOBAL auto_increment_offset = 1; \
             SET GLOBAL wsrep_sync_wait = 15",
        );
    }
    let mut admin = admin(g.addr(0));
    for sql in [
        "DROP DATABASE IF EXISTS dt",
        "DROP DATABASE IF EXISTS dt2",
        "CREATE DATABASE dt",
        "CREATE DATABASE dt2",
        "CREATE TABLE dt.t (id INT AUTO_INCREMENT PRIMARY KEY, k INT, v VARCHAR(32))",
        "CREATE TABLE dt.u (id INT PRIMARY KEY, n INT)",
        "CREATE TABLE dt2.w (id INT AUTO_INCREMENT PRIMARY KEY, v VARCHAR(32))",
        "CREATE PROCEDURE dt.p_ins(x INT) BEGIN \
           INSERT INTO dt.t (k, v) VALUES (x, 'proc'); SELECT ROW_COUNT(), LAST_INSERT_ID(); END",
        "CREATE PROCEDURE dt.p_begin_fail() BEGIN \
           START TRANSACTION; INSERT INTO dt.t (k, v) VALUES (7, 'pbf'); \
           SELECT * FROM dt.missing; END",
        "CREATE PROCEDURE dt.p_lock() BEGIN DO GET_LOCK('lk_proc', 0); END",
    ] {
        must(&mut admin, sql);
    }
}

/// An admin connection whose reads do not wait for the cluster (so watching the process list
/// works even while a node's applier is blocked); [`Env`] turns the wait on for node 1's data.
fn admin(addr: SocketAddr) -> Client {
    let opts = Options::new(ADMIN.0, ADMIN.1);
    let mut c =
        Client::connect(addr, &opts).unwrap_or_else(|e| panic!("admin login on {addr}: {e}"));
    must(&mut c, "SET SESSION wsrep_sync_wait = 0");
    c
}

fn must(c: &mut Client, sql: &str) -> Outcome {
    match c.query(sql) {
        Ok(o) if o.error.is_none() => o,
        Ok(o) => panic!("{sql}: {:?}", o.error),
        Err(e) => panic!("{sql}: {e}"),
    }
}

/// A switchyard config in `protocol: mysql` over the cluster's nodes.
pub fn switchyard_config(proxy: SocketAddr, admin: SocketAddr, nodes: &[SocketAddr]) -> String {
    let list: Vec<String> = nodes.iter().map(|a| a.to_string()).collect();
    let users: Vec<String> = USERS
        .iter()
        .map(|(u, p)| format!("{{ name: {u}, password: {p} }}"))
        .collect();
    format!(
        "proxy: {{ listen: {proxy}, protocol: mysql }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [{}] }}\n\
         health_check: {{ interval: 500ms, max_retries: 0, retry_interval: 100ms, dial_timeout: 2s }}\n\
         mysql: {{ users: [{}] }}\n\
         log: {{ level: debug }}\n",
        list.join(", "),
        users.join(", ")
    )
}

/// How the forced moves went, over all proxied runs.
#[derive(Debug, Default, Clone, Copy)]
pub struct MoveStats {
    /// Redirects that moved the session.
    pub moved: u64,
    /// Redirects the session refused (or that failed).
    pub refused: u64,
    /// Verdicts "waits for a safe point".
    pub waited: u64,
    /// Waits that hit the deadline without a verdict.
    pub unsettled: u64,
}

/// The cluster, the switchyard in front of it, and admin connections to every node.
pub struct Env {
    galera: &'static Galera,
    svc: Service,
    admins: Vec<Client>,
    log: Option<File>,
    waits_seen: u64,
    partial: String,
    /// Totals of the forced moves.
    pub stats: MoveStats,
}

impl Env {
    /// Starts switchyard in front of `galera` and waits until it sees every node healthy.
    pub fn new(galera: &'static Galera) -> Env {
        let nodes = galera.addrs();
        let svc = Service::start_with(|p, a| switchyard_config(p, a, &nodes));
        svc.wait_healthy(nodes.len());
        let mut admins: Vec<Client> = nodes.iter().map(|a| admin(*a)).collect();
        // Node 1's admin resets and reads the data: it must see every committed write.
        must(&mut admins[0], "SET SESSION wsrep_sync_wait = 15");
        let log = File::open(svc.dir.join("switchyard.log")).ok();
        Env {
            galera,
            svc,
            admins,
            log,
            waits_seen: 0,
            partial: String::new(),
            stats: MoveStats::default(),
        }
    }

    /// switchyard's log so far (for failure messages).
    pub fn service_log(&self) -> String {
        self.svc.log()
    }

    /// Runs `script` on node `seed % 3` directly (`proxied` false) or through switchyard with a
    /// move forced before every command and before the end-of-session checks.
    pub fn run(&mut self, script: &Script, proxied: bool) -> Trace {
        self.quiesce();
        self.reset_data();
        let addr = if proxied {
            self.svc.proxy
        } else {
            let nodes = self.galera.addrs();
            nodes[(script.seed % nodes.len() as u64) as usize]
        };
        let mut opts = Options::new(USERS[0].0, USERS[0].1);
        opts.db = Some("dt".into());
        opts.deprecate_eof = script.deprecate_eof;
        let mut trace = Trace {
            obs: Vec::new(),
            end_state: Vec::new(),
            tables: Vec::new(),
        };
        match Client::connect(addr, &opts) {
            Ok(mut client) => {
                let mut mover = proxied.then(Mover::default);
                if proxied {
                    self.wait_conns(1);
                }
                let mut slots: HashMap<u8, u32> = HashMap::new();
                for cmd in &script.cmds {
                    if let Some(m) = mover.as_mut() {
                        self.force_move(m);
                    }
                    let obs = exec(&mut client, &mut slots, cmd);
                    let broken = obs.is_broken();
                    trace.obs.push(obs);
                    if broken {
                        break;
                    }
                }
                if !trace.obs.iter().any(Obs::is_broken) {
                    if let Some(m) = mover.as_mut() {
                        self.force_move(m);
                    }
                    trace.end_state = end_state(&mut client);
                }
                client.quit();
            }
            Err(e) => trace.obs.push(Obs::Broken(format!("login: {e}"))),
        }
        self.quiesce();
        trace.tables = self.tables();
        trace
    }

    /// Waits until no test user has a connection on any node (a closed session's server thread
    /// ends a moment after its client left; its locks go with it) and the proxy has none.
    fn quiesce(&mut self) {
        let list: Vec<String> = USERS.iter().map(|(u, _)| format!("'{u}'")).collect();
        let sql = format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER IN ({})",
            list.join(", ")
        );
        let deadline = Instant::now() + QUIET_WITHIN;
        loop {
            let busy: Vec<String> = self
                .admins
                .iter_mut()
                .map(|a| must(a, &sql).scalar().unwrap_or_default())
                .collect();
            if busy.iter().all(|n| n == "0") && self.proxy_conns() == 0 {
                return;
            }
            if Instant::now() > deadline {
                let lists: Vec<String> = (0..self.admins.len())
                    .map(|i| {
                        self.galera
                            .try_sql(i, "SET SESSION wsrep_sync_wait = 0; SHOW FULL PROCESSLIST")
                            .unwrap_or_else(|e| e)
                    })
                    .collect();
                panic!(
                    "test sessions still open after {QUIET_WITHIN:?}: per node {busy:?}, proxy {}\n\
                     process lists:\n{}",
                    self.proxy_conns(),
                    lists.join("\n---\n")
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn proxy_conns(&self) -> u64 {
        self.svc
            .backends()
            .iter()
            .map(|b| b["conn_count"].as_u64().unwrap_or(0))
            .sum()
    }

    fn wait_conns(&self, n: u64) {
        let deadline = Instant::now() + SETTLE_WITHIN;
        while self.proxy_conns() != n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn reset_data(&mut self) {
        let a = &mut self.admins[0];
        for sql in [
            "TRUNCATE dt.t",
            "TRUNCATE dt.u",
            "TRUNCATE dt2.w",
            "INSERT INTO dt.t (k, v) VALUES (1, 'one'), (2, 'two'), (3, 'three'), (2, 'deux'), \
             (5, 'five')",
            "INSERT INTO dt.u (id, n) VALUES (0, 0), (1, 10), (2, 20), (3, 30), (4, 40)",
            "INSERT INTO dt2.w (v) VALUES ('w1'), ('w2')",
        ] {
            must(a, sql);
        }
        // Wait until every node has applied the reset. Galera applies other nodes' writes a
        // moment later; a session that takes LOCK TABLES on a node before that blocks the
        // node's applier, and its next read waits for the applier (wsrep_sync_wait) forever.
        for a in &mut self.admins[1..] {
            must(
                a,
                "SET SESSION wsrep_sync_wait = 15; SELECT COUNT(*) FROM dt.u; \
                 SET SESSION wsrep_sync_wait = 0",
            );
        }
    }

    fn tables(&mut self) -> Vec<(String, String)> {
        let a = &mut self.admins[0];
        [
            ("dt.t", "SELECT id, k, v FROM dt.t ORDER BY id"),
            ("dt.u", "SELECT id, n FROM dt.u ORDER BY id"),
            ("dt2.w", "SELECT id, v FROM dt2.w ORDER BY id"),
        ]
        .iter()
        .map(|(name, sql)| (name.to_string(), Obs::answer(&must(a, sql)).to_string()))
        .collect()
    }

    /// Forces a move attempt before the next command and waits for its verdict.
    fn force_move(&mut self, m: &mut Mover) {
        if m.pending {
            // The kept redirect was looked at again after the last command.
            match self.verdict(m) {
                Some(Verdict::Waits) => return,
                Some(_) => {}
                None => return,
            }
        }
        match http(self.svc.admin, "POST", "/redirect") {
            Some((200, _)) => {}
            other => panic!("POST /redirect: {other:?}"),
        }
        self.verdict(m);
    }

    /// Waits for the next verdict on a redirect; records it.
    fn verdict(&mut self, m: &mut Mover) -> Option<Verdict> {
        let deadline = Instant::now() + SETTLE_WITHIN;
        loop {
            let waits = self.waits_in_log();
            let (ok, failed) = self.migrations();
            let v = if ok > m.moved {
                Some(Verdict::Moved)
            } else if failed > m.failed {
                Some(Verdict::Refused)
            } else if waits > m.waits {
                Some(Verdict::Waits)
            } else {
                None
            };
            if let Some(v) = v {
                m.moved = ok;
                m.failed = failed;
                m.waits = waits;
                m.pending = v == Verdict::Waits;
                match v {
                    Verdict::Moved => self.stats.moved += 1,
                    Verdict::Refused => self.stats.refused += 1,
                    Verdict::Waits => self.stats.waited += 1,
                }
                return Some(v);
            }
            if Instant::now() > deadline {
                self.stats.unsettled += 1;
                m.pending = true;
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// `switchyard_migrations_total` by result: (succeeded, everything else).
    fn migrations(&self) -> (u64, u64) {
        let Some((200, body)) = http(self.svc.admin, "GET", "/metrics") else {
            return (0, 0);
        };
        let mut ok = 0;
        let mut failed = 0;
        for line in body.lines() {
            let Some(rest) = line.strip_prefix("switchyard_migrations_total") else {
                continue;
            };
            let value = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64;
            if rest.contains("\"succeeded\"") {
                ok += value;
            } else {
                failed += value;
            }
        }
        (ok, failed)
    }

    /// How many "waits for a safe point" lines the log has so far.
    fn waits_in_log(&mut self) -> u64 {
        let Some(f) = self.log.as_mut() else {
            return 0;
        };
        let mut new = String::new();
        let _ = f.read_to_string(&mut new);
        self.partial.push_str(&new);
        if let Some(cut) = self.partial.rfind('\n') {
            let complete: String = self.partial.drain(..=cut).collect();
            self.waits_seen += complete.matches(WAITS_MARK).count() as u64;
        }
        self.waits_seen
    }
}

/// What a session did with a redirect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Moved,
    Refused,
    Waits,
}

/// Per-run view of the counters, so each verdict is read once.
#[derive(Debug, Default)]
struct Mover {
    moved: u64,
    failed: u64,
    waits: u64,
    /// The session keeps a redirect until its next safe point.
    pending: bool,
}

fn exec(c: &mut Client, slots: &mut HashMap<u8, u32>, cmd: &Cmd) -> Obs {
    let id = |slots: &HashMap<u8, u32>, s: &u8| slots.get(s).copied().unwrap_or(UNKNOWN_ID);
    let r: Result<Obs, ClientError> = match cmd {
        Cmd::Query(sql) => c.query(sql).map(|o| Obs::answer(&o)),
        Cmd::InitDb(db) => c.init_db(db).map(|o| Obs::answer(&o)),
        Cmd::Ping => c.ping().map(|o| Obs::answer(&o)),
        Cmd::Prepare(slot, sql) => c.prepare(sql).map(|r| match r {
            Ok(p) => {
                slots.insert(*slot, p.id);
                Obs::prepared(&p)
            }
            Err(e) => Obs::Answer(Vec::new(), Some((e.code, e.state))),
        }),
        Cmd::Execute {
            slot,
            params,
            types,
            cursor,
        } => c
            .execute(id(slots, slot), params, *types, *cursor)
            .map(|o| Obs::answer(&o)),
        Cmd::Fetch(slot, n) => c.fetch(id(slots, slot), *n).map(|o| Obs::answer(&o)),
        Cmd::LongData(slot, data) => c
            .send_long_data(id(slots, slot), 0, data.as_bytes())
            .map(|()| Obs::Silent),
        Cmd::Close(slot) => c.close_stmt(id(slots, slot)).map(|()| Obs::Silent),
        Cmd::Reset(slot) => c.reset_stmt(id(slots, slot)).map(|o| Obs::answer(&o)),
        Cmd::SetOption(on) => c.set_multi_statements(*on).map(|o| Obs::answer(&o)),
        Cmd::ResetConnection => c.reset_connection().map(|o| Obs::answer(&o)),
        Cmd::ChangeUser(u) => {
            let (user, pw) = USERS[usize::from(*u) % USERS.len()];
            c.change_user(user, pw, Some("dt")).map(|o| Obs::answer(&o))
        }
    };
    // The text of an i/o error differs by timing (reset vs. EOF): only that it broke counts.
    r.unwrap_or_else(|_| Obs::Broken("connection lost".into()))
}

/// The session's state at its end, read from inside it.
fn end_state(c: &mut Client) -> Vec<(String, String)> {
    let locks: Vec<String> = LOCKS
        .iter()
        .map(|l| format!("IS_USED_LOCK('{l}') = CONNECTION_ID()"))
        .collect();
    let checks = [
        ("in transaction", "SELECT @@in_transaction".to_string()),
        (
            "user locks held (lk_a, lk_b, job, lk_proc)",
            format!("SELECT {}", locks.join(", ")),
        ),
        (
            "variables",
            "SELECT @@autocommit, @@sql_mode, @@time_zone, @@character_set_client, \
             @@character_set_results, @@collation_connection, @@tx_isolation, \
             @@auto_increment_increment, DATABASE(), CURRENT_USER(), @a, @b, HEX(@c), @d, @p"
                .to_string(),
        ),
        (
            "temporary table dt.tmp1",
            "SELECT COUNT(*) FROM dt.tmp1".to_string(),
        ),
    ];
    checks
        .iter()
        .map(|(name, sql)| {
            let got = match c.query(sql) {
                Ok(o) => Obs::answer(&o).to_string(),
                Err(_) => "connection lost".to_string(),
            };
            (name.to_string(), got)
        })
        .collect()
}
