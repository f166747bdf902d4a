//! The idle sessions and the autocommit readers, on `mysql_async`.

use super::*;

/// What a client saw go wrong: the server's error code, or `io` (the connection broke).
pub(crate) fn kind(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => s.code.to_string(),
        mysql_async::Error::Io(_) => "io".into(),
        mysql_async::Error::Driver(_) => "driver".into(),
        _ => "other".into(),
    }
}

/// Counts by kind.
pub(crate) type Kinds = BTreeMap<String, u64>;

pub(crate) fn fmt_kinds(k: &Kinds) -> String {
    if k.is_empty() {
        return "0".into();
    }
    k.iter()
        .map(|(k, n)| format!("{n}×{k}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One idle session: its connection, its statement, the value of its variable.
pub(crate) struct Idle {
    pub(crate) conn: Conn,
    pub(crate) stmt: mysql_async::Statement,
    pub(crate) v: i64,
}

pub(crate) async fn open_idle(p: &Proxy, n: usize) -> (Vec<Idle>, Kinds) {
    let opts = p.opts();
    let results: Vec<Result<Idle, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let opts = opts.clone();
            async move {
                let mut conn = Conn::new(opts).await.map_err(|e| kind(&e))?;
                let v = i as i64 * 7 + 1;
                conn.query_drop(format!("SET @v = {v}"))
                    .await
                    .map_err(|e| kind(&e))?;
                let stmt = conn.prep("SELECT ? + @v").await.map_err(|e| kind(&e))?;
                Ok(Idle { conn, stmt, v })
            }
        })
        .buffer_unordered(OPEN_AT_ONCE)
        .collect()
        .await;
    let mut errors = Kinds::new();
    let mut idle = Vec::new();
    for r in results {
        match r {
            Ok(s) => idle.push(s),
            Err(k) => *errors.entry(k).or_default() += 1,
        }
    }
    (idle, errors)
}

/// Every idle session runs its statement and reads its variable back: errors by kind (a wrong
/// answer counts as `wrong`), and the slowest check.
pub(crate) async fn check_idle(idle: Vec<Idle>) -> (Kinds, Duration) {
    let results: Vec<(Result<(), String>, Duration)> = futures::stream::iter(idle)
        .map(|mut s| async move {
            let started = Instant::now();
            let r = async {
                let got: Option<i64> = s
                    .conn
                    .exec_first(&s.stmt, (1i64,))
                    .await
                    .map_err(|e| kind(&e))?;
                let var: Option<i64> = s
                    .conn
                    .query_first("SELECT @v")
                    .await
                    .map_err(|e| kind(&e))?;
                if got != Some(s.v + 1) || var != Some(s.v) {
                    return Err("wrong".to_string());
                }
                Ok(())
            }
            .await;
            let took = started.elapsed();
            let _ = s.conn.disconnect().await;
            (r, took)
        })
        .buffer_unordered(OPEN_AT_ONCE)
        .collect()
        .await;
    let mut errors = Kinds::new();
    let mut slowest = Duration::ZERO;
    for (r, took) in results {
        slowest = slowest.max(took);
        if let Err(k) = r {
            *errors.entry(k).or_default() += 1;
        }
    }
    (errors, slowest)
}

/// Readers' log: (start, latency, error kind) of every statement.
pub(crate) type ReadLog = Arc<Mutex<Vec<(Instant, Duration, Option<String>)>>>;

pub(crate) fn start_readers(
    p: &Proxy,
    n: usize,
    stop: Arc<AtomicBool>,
    log: ReadLog,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|r| {
            let opts = p.opts();
            let stop = stop.clone();
            let log = log.clone();
            tokio::spawn(async move {
                let mut conn: Option<Conn> = None;
                let mut id = r as u32 * 997;
                while !stop.load(Ordering::Relaxed) {
                    id = id % TABLE_SIZE + 1;
                    let started = Instant::now();
                    let res = async {
                        if conn.is_none() {
                            conn = Some(Conn::new(opts.clone()).await?);
                        }
                        let c = conn.as_mut().expect("just set");
                        c.query_drop(format!("SELECT c FROM sbtest1 WHERE id = {id}"))
                            .await
                    }
                    .await;
                    let err = res.err().map(|e| {
                        conn = None;
                        kind(&e)
                    });
                    let failed = err.is_some();
                    log.lock().unwrap_or_else(|p| p.into_inner()).push((
                        started,
                        started.elapsed(),
                        err,
                    ));
                    if failed {
                        // a proxy with no route yet: do not spin
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                if let Some(c) = conn {
                    let _ = c.disconnect().await;
                }
            })
        })
        .collect()
}
