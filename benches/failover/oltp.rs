//! The writers' workload: sysbench's `oltp_read_write` transaction, statement for statement
//! (10 point selects, 4 range selects, an index and a non-index update, a delete and an insert
//! of the same id, all as binary prepared statements, then COMMIT), on `mysql_async`.
//!
//! Not sysbench itself: sysbench 1.0.20 on Debian's libmariadb crashes (a segfault inside
//! libmariadb) when it reconnects after a lost connection, through either proxy, so it cannot
//! run past a node's death. Like sysbench with `--mysql-ignore-errors=all`, a writer rolls back
//! and starts the next transaction after an error, and reconnects after a lost connection.

use super::*;
use rand::rngs::SmallRng;
use rand::{Rng as _, SeedableRng as _};

/// What the writers saw.
#[derive(Debug, Default)]
pub struct Log {
    /// Transactions whose COMMIT returned OK.
    pub committed: u64,
    /// Errors from the kill on, by `phase kind` (`statement 1213`, `commit io`, …).
    pub errors: Kinds,
    /// Errors before the kill (Galera's certification conflicts: 1213 all along).
    pub errors_before: u64,
    /// (start, latency) of every committed transaction.
    pub latencies: Vec<(Instant, Duration)>,
}

/// The kind of error, telling the proxy's own answers (`…/switchyard`) from the server's.
fn kind_of(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) if s.message.starts_with("switchyard") => {
            format!("{}/switchyard", s.code)
        }
        other => kind(other),
    }
}

fn lost(e: &mysql_async::Error) -> bool {
    !matches!(e, mysql_async::Error::Server(_))
}

fn text(rng: &mut SmallRng, n: usize) -> String {
    (0..n)
        .map(|_| char::from(b'0' + rng.gen_range(0..10u8)))
        .collect()
}

/// One transaction; the phase that failed (`statement` or `commit`) with its error.
async fn transaction(
    c: &mut Conn,
    rng: &mut SmallRng,
) -> Result<(), (&'static str, mysql_async::Error)> {
    let st = |e| ("statement", e);
    c.query_drop("BEGIN").await.map_err(st)?;
    let t = |rng: &mut SmallRng| rng.gen_range(1..=TABLES);
    let id = |rng: &mut SmallRng| rng.gen_range(1..=TABLE_SIZE);
    for _ in 0..10 {
        let (t, id) = (t(rng), id(rng));
        c.exec_drop(format!("SELECT c FROM sbtest{t} WHERE id=?"), (id,))
            .await
            .map_err(st)?;
    }
    for q in [
        "SELECT c FROM sbtest{t} WHERE id BETWEEN ? AND ?",
        "SELECT SUM(k) FROM sbtest{t} WHERE id BETWEEN ? AND ?",
        "SELECT c FROM sbtest{t} WHERE id BETWEEN ? AND ? ORDER BY c",
        "SELECT DISTINCT c FROM sbtest{t} WHERE id BETWEEN ? AND ? ORDER BY c",
    ] {
        let (t, lo) = (t(rng), id(rng).min(TABLE_SIZE - 99));
        c.exec_drop(q.replace("{t}", &t.to_string()), (lo, lo + 99))
            .await
            .map_err(st)?;
    }
    let (tt, i) = (t(rng), id(rng));
    c.exec_drop(format!("UPDATE sbtest{tt} SET k=k+1 WHERE id=?"), (i,))
        .await
        .map_err(st)?;
    let (tt, i, v) = (t(rng), id(rng), text(rng, 120));
    c.exec_drop(format!("UPDATE sbtest{tt} SET c=? WHERE id=?"), (v, i))
        .await
        .map_err(st)?;
    let (tt, i) = (t(rng), id(rng));
    c.exec_drop(format!("DELETE FROM sbtest{tt} WHERE id=?"), (i,))
        .await
        .map_err(st)?;
    let (k, cv, pad) = (id(rng), text(rng, 120), text(rng, 60));
    c.exec_drop(
        format!("INSERT INTO sbtest{tt} (id, k, c, pad) VALUES (?, ?, ?, ?)"),
        (i, k, cv, pad),
    )
    .await
    .map_err(st)?;
    c.query_drop("COMMIT").await.map_err(|e| ("commit", e))
}

/// `n` writers until `stop`; errors count as from the kill on once `killed` is set.
pub fn start(
    opts: OptsBuilder,
    n: usize,
    stop: Arc<AtomicBool>,
    killed: Arc<std::sync::OnceLock<Instant>>,
    log: Arc<Mutex<Log>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let opts = opts.stmt_cache_size(64);
    (0..n)
        .map(|w| {
            let (opts, stop, killed, log) =
                (opts.clone(), stop.clone(), killed.clone(), log.clone());
            tokio::spawn(async move {
                let mut rng = SmallRng::seed_from_u64(w as u64 + 1);
                let mut conn: Option<Conn> = None;
                let record = |phase: &str, k: String| {
                    let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                    if killed.get().is_some() {
                        *l.errors.entry(format!("{phase} {k}")).or_default() += 1;
                    } else {
                        l.errors_before += 1;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let c = match conn.as_mut() {
                        Some(c) => c,
                        None => match Conn::new(opts.clone()).await {
                            Ok(c) => conn.insert(c),
                            Err(e) => {
                                record("connect", kind_of(&e));
                                tokio::time::sleep(Duration::from_millis(10)).await;
                                continue;
                            }
                        },
                    };
                    let started = Instant::now();
                    match transaction(c, &mut rng).await {
                        Ok(()) => {
                            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
                            l.committed += 1;
                            l.latencies.push((started, started.elapsed()));
                        }
                        Err((phase, e)) => {
                            record(phase, kind_of(&e));
                            if lost(&e) || c.query_drop("ROLLBACK").await.is_err() {
                                conn = None;
                            }
                        }
                    }
                }
                if let Some(c) = conn {
                    let _ = c.disconnect().await;
                }
            })
        })
        .collect()
}
