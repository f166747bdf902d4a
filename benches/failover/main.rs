//! The failover benchmark (issue 10), run by `benches/failover_bench.sh`: what clients see when
//! one node of a real 3-node Galera cluster is killed with `kill -9` under load, through
//! switchyard and through HAProxy (`mode tcp`, `leastconn`, TCP checks every second) in the same
//! run, interleaved round by round.
//!
//! Each round and path: a fresh proxy in front of the three nodes; `IDLE` idle `mysql_async`
//! sessions, each with a user variable and a binary prepared statement; `READERS` sessions
//! running autocommit point selects back to back; `THREADS` writers running sysbench's
//! `oltp_read_write` transaction ([`oltp`]; the tables are made by `sysbench prepare`).
//! `KILL_AT` seconds in, one node is killed (a real SIGKILL); `CHECK_AFTER` seconds later every
//! idle session runs its statement and reads its variable back; the load runs `AFTER` seconds
//! past the kill. Then the node is restarted (IST) for the next run.
//!
//! Reported per path (every round, and medians): client errors by kind (writers' by phase —
//! statement or COMMIT — and code, the proxy's own answers marked `/switchyard`; readers';
//! idle sessions'), the stall (p99 and max latency of transactions and reads in flight at the
//! kill or started within 5 s of it), the time until the dead node is out of the route
//! (switchyard: `/backends` shows it suspect or down; HAProxy: its stats say `DOWN`), and
//! switchyard's failover counters.
//!
//! Knobs (environment): SWITCHYARD_BIN (required: a release build), ROUNDS (5), IDLE (1000),
//! THREADS (16), READERS (4), KILL_AT (10), AFTER (30), CHECK_AFTER (10), PATHS
//! ("switchyard haproxy"), OUT (markdown summary file, default failover-bench-results.md),
//! KEEP_WORK=1 (keep the proxies' logs).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use switchyard_testkit::{free_port, Galera, TempDir};

mod clients;
mod oltp;
mod proxy;

use clients::*;
use proxy::*;

const USER: &str = "sb";
const PASSWORD: &str = "sb";
const TABLES: u32 = 4;
const TABLE_SIZE: u32 = 10_000;
/// How many idle sessions log in at once.
const OPEN_AT_ONCE: usize = 32;
/// Readers' statements started this long after the kill count towards the stall.
const STALL_WINDOW: Duration = Duration::from_secs(5);
/// How long a proxy may take to see every node healthy, and a dead node out of its route.
const PROXY_WAIT: Duration = Duration::from_secs(30);

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The knobs of one benchmark run.
#[derive(Debug, Clone)]
struct Knobs {
    bin: PathBuf,
    rounds: usize,
    idle: usize,
    threads: usize,
    readers: usize,
    kill_at: Duration,
    after: Duration,
    check_after: Duration,
    paths: Vec<Via>,
}

/// One path's figures in one round.
#[derive(Debug, Default, Clone)]
struct RunResult {
    committed: u64,
    trx_errors: Kinds,
    trx_errors_before: u64,
    trx_stall_p99_ms: f64,
    trx_stall_max_ms: f64,
    reader_errors: Kinds,
    reader_stall_p99_ms: f64,
    reader_stall_max_ms: f64,
    idle_open_errors: Kinds,
    idle_errors: Kinds,
    idle_slowest_ms: f64,
    out_of_route_ms: Option<f64>,
    counters: BTreeMap<String, f64>,
}

/// The failover counters from switchyard's `/metrics` (`name{labels}` → value), and the stall
/// histogram's p99 bucket bound.
fn failover_counters(text: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for l in text.lines() {
        if l.starts_with('#') || !l.starts_with("switchyard_failover_") {
            continue;
        }
        let Some((name, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        if let Some(le) = name
            .strip_prefix("switchyard_failover_stall_seconds_bucket{le=\"")
            .and_then(|r| r.strip_suffix("\"}"))
        {
            buckets.push((le.parse().unwrap_or(f64::INFINITY), v));
            continue;
        }
        m.insert(
            name.trim_start_matches("switchyard_failover_").to_string(),
            v,
        );
    }
    if let Some(&(_, total)) = buckets.last() {
        if total > 0.0 {
            let p99 = buckets
                .iter()
                .find(|(_, n)| *n >= total * 0.99)
                .map_or(f64::INFINITY, |(le, _)| *le);
            m.insert("stall_p99_bucket_s".into(), p99);
        }
    }
    m
}

fn percentile(mut v: Vec<f64>, q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 - 1.0) * q).round() as usize;
    v[i.min(v.len() - 1)]
}

async fn run(
    k: &Knobs,
    g: &Galera,
    path: Via,
    round: usize,
    node: usize,
    work: &Path,
) -> RunResult {
    let tag = format!("{}-{round}", path.name());
    let http = reqwest::Client::new();
    let proxy = start_proxy(k, path, g, work, &tag);
    proxy.wait_routable(&http, 3).await;
    let (idle, idle_open_errors) = open_idle(&proxy, k.idle).await;
    eprintln!(
        "  {tag}: {} idle sessions open ({} failed)",
        idle.len(),
        idle_open_errors.values().sum::<u64>()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let log: ReadLog = Arc::default();
    let readers = start_readers(&proxy, k.readers, stop.clone(), log.clone());
    let killed = Arc::new(std::sync::OnceLock::new());
    let trx: Arc<Mutex<oltp::Log>> = Arc::default();
    let writers = oltp::start(
        proxy.opts(),
        k.threads,
        stop.clone(),
        killed.clone(),
        trx.clone(),
    );
    tokio::time::sleep(k.kill_at).await;

    let killed_at = Instant::now();
    let _ = killed.set(killed_at);
    g.kill9(node);
    let dead = g.addr(node).to_string();
    let dead_name = format!("n{node}");
    let mut out_of_route = None;
    while killed_at.elapsed() < PROXY_WAIT {
        if let Some(r) = proxy.routable(&http).await {
            if !r.contains(&dead) && !r.contains(&dead_name) {
                out_of_route = Some(killed_at.elapsed().as_secs_f64() * 1e3);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let wait = k.check_after.saturating_sub(killed_at.elapsed());
    tokio::time::sleep(wait).await;
    let (idle_errors, idle_slowest) = check_idle(idle).await;
    tokio::time::sleep(k.after.saturating_sub(killed_at.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for r in readers.into_iter().chain(writers) {
        let _ = r.await;
    }
    let counters = failover_counters(&proxy.metrics(&http).await);
    drop(proxy);

    // in flight at the kill, or started within the window after it
    let in_window = |started: Instant, took: Duration| {
        started + took >= killed_at && started <= killed_at + STALL_WINDOW
    };
    let trx = std::mem::take(&mut *trx.lock().unwrap_or_else(|p| p.into_inner()));
    let trx_window: Vec<f64> = trx
        .latencies
        .iter()
        .filter(|(s, t)| in_window(*s, *t))
        .map(|(_, t)| t.as_secs_f64() * 1e3)
        .collect();
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(|p| p.into_inner()));
    let mut reader_errors = Kinds::new();
    let mut window = Vec::new();
    for (started, took, err) in log {
        if let Some(e) = err {
            *reader_errors.entry(e).or_default() += 1;
        }
        if in_window(started, took) {
            window.push(took.as_secs_f64() * 1e3);
        }
    }
    RunResult {
        committed: trx.committed,
        trx_errors: trx.errors,
        trx_errors_before: trx.errors_before,
        trx_stall_p99_ms: percentile(trx_window.clone(), 0.99),
        trx_stall_max_ms: trx_window.iter().copied().fold(0.0, f64::max),
        reader_errors,
        reader_stall_p99_ms: percentile(window.clone(), 0.99),
        reader_stall_max_ms: window.iter().copied().fold(0.0, f64::max),
        idle_open_errors,
        idle_errors,
        idle_slowest_ms: idle_slowest.as_secs_f64() * 1e3,
        out_of_route_ms: out_of_route,
        counters,
    }
}

fn line(path: Via, round: usize, node: usize, r: &RunResult) -> String {
    let c = |n: &str| r.counters.get(n).copied().unwrap_or(0.0);
    let replayed: Vec<String> = r
        .counters
        .iter()
        .filter(|(n, _)| n.starts_with("replayed_total"))
        .map(|(n, v)| format!("{}={v}", n.trim_start_matches("replayed_total")))
        .collect();
    let fo_errors: Vec<String> = r
        .counters
        .iter()
        .filter(|(n, _)| n.starts_with("errors_total"))
        .map(|(n, v)| format!("{}={v}", n.trim_start_matches("errors_total")))
        .collect();
    format!(
        "| {} | {round} | n{node} | {} | {} ({}) | {:.0} / {:.0} | {} | {} ({:.0} ms) | {} | {:.0} / {:.0} | {} | {} | {} | {} |",
        path.name(),
        r.committed,
        fmt_kinds(&r.trx_errors),
        r.trx_errors_before,
        r.trx_stall_p99_ms,
        r.trx_stall_max_ms,
        fmt_kinds(&r.reader_errors),
        fmt_kinds(&r.idle_errors),
        r.idle_slowest_ms,
        fmt_kinds(&r.idle_open_errors),
        r.reader_stall_p99_ms,
        r.reader_stall_max_ms,
        r.out_of_route_ms.map_or("never".into(), |v| format!("{v:.0} ms")),
        if path == Via::Switchyard {
            format!(
                "{} (stall p99 ≤ {} ms)",
                c("reattached_total"),
                c("stall_p99_bucket_s") * 1e3
            )
        } else {
            "–".into()
        },
        if replayed.is_empty() { "–".into() } else { replayed.join(" ") },
        if fo_errors.is_empty() { "–".into() } else { fo_errors.join(" ") },
    )
}

fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max.min(65_536);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line
    let Ok(bin) = std::env::var("SWITCHYARD_BIN") else {
        eprintln!("failover bench: set SWITCHYARD_BIN to a release build (benches/failover_bench.sh does)");
        std::process::exit(2);
    };
    let paths = std::env::var("PATHS").unwrap_or_else(|_| "switchyard haproxy".into());
    let k = Knobs {
        bin: PathBuf::from(bin),
        rounds: env_or("ROUNDS", 5),
        idle: env_or("IDLE", 1000),
        threads: env_or("THREADS", 16),
        readers: env_or("READERS", 4),
        kill_at: Duration::from_secs(env_or("KILL_AT", 10)),
        after: Duration::from_secs(env_or("AFTER", 30)),
        check_after: Duration::from_secs(env_or("CHECK_AFTER", 10)),
        paths: paths
            .split_whitespace()
            .filter_map(|p| match p {
                "switchyard" => Some(Via::Switchyard),
                "haproxy" => Some(Via::Haproxy),
                _ => None,
            })
            .collect(),
    };
    raise_fd_limit();
    let out = std::env::var("OUT").unwrap_or_else(|_| "failover-bench-results.md".into());
    let started = Instant::now();
    let Some(g) = Galera::start() else {
        eprintln!("failover bench: no Galera cluster (see above)");
        std::process::exit(2);
    };
    eprintln!("galera: 3 nodes synced in {:?}", g.started_in());
    let work = TempDir::new("failover-bench");
    let work_dir = work.path().to_path_buf();
    // KEEP_WORK: kept even when a run panics
    let _work = if std::env::var_os("KEEP_WORK").is_some() {
        eprintln!("work dir (kept): {}", work_dir.display());
        std::mem::forget(work);
        None
    } else {
        Some(work)
    };
    let setup = |g: &Galera| {
        for i in 0..3 {
            g.sql(i, "SET GLOBAL max_connections = 4000");
        }
    };
    setup(&g);
    g.sql(
        0,
        &format!(
            "CREATE DATABASE sbtest; CREATE USER {USER}@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON *.* TO {USER}@'%'"
        ),
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    // sysbench prepares its tables straight on node 1
    {
        let direct = format!("--mysql-port={}", g.addr(0).port());
        let status = Command::new("sysbench")
            .args([
                "oltp_read_write",
                "--db-driver=mysql",
                "--mysql-host=127.0.0.1",
                &direct,
                &format!("--mysql-user={USER}"),
                &format!("--mysql-password={PASSWORD}"),
                "--mysql-db=sbtest",
                &format!("--tables={TABLES}"),
                &format!("--table-size={TABLE_SIZE}"),
                "--threads=4",
                "prepare",
            ])
            .stdout(Stdio::null())
            .status()
            .expect("sysbench prepare");
        assert!(status.success(), "sysbench prepare failed");
    }
    eprintln!(
        "prepared {TABLES} × {TABLE_SIZE} rows in {:?}",
        started.elapsed()
    );

    let mut results: BTreeMap<Via, Vec<RunResult>> = BTreeMap::new();
    let mut lines = Vec::new();
    for round in 1..=k.rounds {
        let node = 1 + (round - 1) % 2; // node 1 or 2: node 0 holds the prepared tables' origin
        let mut order = k.paths.clone();
        if round % 2 == 0 {
            order.reverse();
        }
        for &path in &order {
            for i in 0..3 {
                if !g.is_running(i) {
                    g.restart(i);
                }
            }
            setup(&g);
            eprintln!("round {round}: {} (kill node {node})", path.name());
            let r = rt.block_on(run(&k, &g, path, round, node, &work_dir));
            let l = line(path, round, node, &r);
            eprintln!("{l}");
            lines.push(l);
            results.entry(path).or_default().push(r);
        }
    }
    for i in 0..3 {
        if !g.is_running(i) {
            g.restart(i);
        }
    }

    let mut md = String::new();
    md.push_str(&format!(
        "# failover benchmark\n\n{} rounds; oltp_read_write transactions on {} writers ({} × {} rows), {} idle sessions, {} readers; kill -9 at {} s, {} s after; idle sessions checked {} s after the kill. {:?} in all.\n\n",
        k.rounds, k.threads, TABLES, TABLE_SIZE, k.idle, k.readers, k.kill_at.as_secs(), k.after.as_secs(), k.check_after.as_secs(), started.elapsed()
    ));
    md.push_str("| path | round | killed | committed trx | trx errors from the kill on, by phase and code (before it) | trx latency p99 / max ms near the kill | reader errors | idle errors (slowest check) | idle login errors | reader latency p99 / max ms near the kill | out of route | re-attached (proxy's stall histogram) | replayed | failover errors |\n");
    md.push_str("|---|---:|---|---:|---|---:|---|---|---|---:|---:|---:|---|---|\n");
    for l in &lines {
        md.push_str(l);
        md.push('\n');
    }
    md.push_str("\nMedians over rounds:\n\n| path | committed trx | trx errors from the kill on | reader errors | idle errors | reader stall p99 / max ms | out of route ms |\n|---|---:|---:|---:|---:|---:|---:|\n");
    for (path, rs) in &results {
        let med = |f: &dyn Fn(&RunResult) -> f64| percentile(rs.iter().map(f).collect(), 0.5);
        md.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} |\n",
            path.name(),
            med(&|r| r.committed as f64),
            med(&|r| r.trx_errors.values().sum::<u64>() as f64),
            med(&|r| r.reader_errors.values().sum::<u64>() as f64),
            med(&|r| r.idle_errors.values().sum::<u64>() as f64),
            med(&|r| r.reader_stall_p99_ms),
            med(&|r| r.reader_stall_max_ms),
            med(&|r| r.out_of_route_ms.unwrap_or(f64::NAN)),
        ));
    }
    std::fs::write(&out, &md).expect("write results");
    println!("{md}");
}
