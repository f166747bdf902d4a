//! Transaction replay against the real cluster: one node is killed while transactions on it
//! are (a) idle after a binary UPDATE and a SELECT, (b) running a slow statement, (c) holding a
//! read another client changed since, (d) over a tiny `max_replay_bytes`, (e) past an answered
//! `COMMIT` with the statement after it in flight, (f) behind a proxy with replay off, (g) waiting
//! in their replay on a row lock past `failover.timeout`, and (h) in a session holding a
//! temporary table, and (i) after an `INSERT` that generated an auto-increment id. (a) and (b)
//! go on and commit exactly once; (c), (d), (f) and (g) get 1213 with nothing of them committed
//! (and (g)'s stuck replay is killed at once); (h) and (i) cannot go on (a temporary table, and
//! a `LAST_INSERT_ID()` that died with the node) and get 1213 naming why, then their connection
//! closes; (e) gets 1180 and its commit stands once. The metrics count each outcome.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::Conn;
use switchyard_server::mysql::FailoverConfig;
use switchyard_testkit::Galera;

use super::{all_nodes_up, opts, port, proxy, proxy_with, KILLS, PASSWORD, USER};

/// The value of one counter series (`name{labels}`) in this process's metrics.
fn counter(series: &str) -> f64 {
    let text = switchyard_server::metrics::install().render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// `switchyard_failover_replayed_total{result}`.
fn replayed(result: &str) -> f64 {
    counter(&format!(
        "switchyard_failover_replayed_total{{result=\"{result}\"}}"
    ))
}

/// `switchyard_failover_errors_total{reason}`.
fn failover_errors(reason: &str) -> f64 {
    counter(&format!(
        "switchyard_failover_errors_total{{reason=\"{reason}\"}}"
    ))
}

/// The server error code of a client error (0: not a server error).
fn code(e: &mysql_async::Error) -> u16 {
    match e {
        mysql_async::Error::Server(s) => s.code,
        _ => 0,
    }
}

/// Connection options straight to a node, bypassing the proxy.
fn opts_direct(node: SocketAddr) -> mysql_async::OptsBuilder {
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(node.ip().to_string())
        .tcp_port(node.port())
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .prefer_socket(false)
}

/// A new session through `proxy` on the node whose SQL port is `node`. Sessions that land
/// elsewhere stay open in `elsewhere` until one lands there: a closed one would leave the loads
/// as they were, and the same least-loaded node would get every try.
async fn on_node(proxy: SocketAddr, node: u16, elsewhere: &mut Vec<Conn>) -> Conn {
    for _ in 0..30 {
        let mut c = Conn::new(opts(proxy)).await.unwrap();
        if port(&mut c).await == node {
            return c;
        }
        elsewhere.push(c);
    }
    panic!("no new session lands on the node at port {node}");
}

/// `n` of every row of `rp.t` by id, as node `node` sees it.
fn rows(g: &Galera, node: usize) -> String {
    g.sql(
        node,
        "SELECT GROUP_CONCAT(id, '=', n ORDER BY id) FROM rp.t",
    )
    .trim()
    .to_string()
}

/// Waits until every running node shows `want` (Galera applies a write set on the other nodes
/// an instant after the commit returns).
async fn wait_rows(g: &Galera, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    for node in 0..g.addrs().len() {
        if !g.is_running(node) {
            continue;
        }
        while rows(g, node) != want {
            assert!(
                Instant::now() < deadline,
                "node {node} shows {}, want {want}",
                rows(g, node)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[actix::test]
async fn a_transaction_lost_with_its_node_is_replayed_elsewhere_and_goes_on_or_gets_1213() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("switchyard_server=debug,switchyard=info")
        .with_test_writer()
        .try_init();
    let Some(g) = Galera::shared() else { return };
    let _turn = KILLS.lock().await;
    all_nodes_up(g);
    switchyard_server::metrics::install();
    g.sql(
        0,
        &format!(
            "CREATE USER IF NOT EXISTS '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON *.* TO '{USER}'@'%'; \
             DROP DATABASE IF EXISTS rp; CREATE DATABASE rp; \
             CREATE TABLE rp.t (id INT PRIMARY KEY, n INT NOT NULL); \
             CREATE TABLE rp.auto (id INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL); \
             INSERT INTO rp.t VALUES (1, 0), (2, 0), (3, 0), (4, 0), (5, 0), (6, 0), (7, 0), (8, 0)"
        ),
    );
    wait_rows(g, "1=0,2=0,3=0,4=0,5=0,6=0,7=0,8=0").await;
    let (proxy, _router) = proxy(g).await;
    // a log bound that BEGIN fits and the UPDATE after it does not
    let tiny = FailoverConfig {
        max_replay_bytes: 32,
        ..Default::default()
    };
    let (tiny, _tiny_router) = proxy_with(g, tiny).await;
    let off = FailoverConfig {
        replay_transactions: false,
        ..Default::default()
    };
    let (off, _off_router) = proxy_with(g, off).await;
    let short = FailoverConfig {
        timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let (short, _short_router) = proxy_with(g, short).await;

    // (a) idle inside a transaction, after a binary UPDATE and a SELECT
    let mut a = Conn::new(opts(proxy)).await.unwrap();
    let victim = port(&mut a).await;
    let victim_node = g.addrs().iter().position(|s| s.port() == victim).unwrap();
    let mut elsewhere = Vec::new();
    a.query_drop("BEGIN").await.unwrap();
    a.exec_drop("UPDATE rp.t SET n = n + ? WHERE id = ?", (10, 1))
        .await
        .unwrap();
    let seen: Option<i64> = a
        .query_first("SELECT n FROM rp.t WHERE id = 2")
        .await
        .unwrap();
    assert_eq!(seen, Some(0));

    // (c) a transaction that read a row another client then changed
    let mut c = on_node(proxy, victim, &mut elsewhere).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("UPDATE rp.t SET n = n + 100 WHERE id = 4")
        .await
        .unwrap();
    let seen: Option<i64> = c
        .query_first("SELECT n FROM rp.t WHERE id = 3")
        .await
        .unwrap();
    assert_eq!(seen, Some(0));
    let other = (victim_node + 1) % g.addrs().len();
    g.sql(other, "UPDATE rp.t SET n = 7 WHERE id = 3");

    // (d) a transaction whose log passed max_replay_bytes
    let mut d = on_node(tiny, victim, &mut elsewhere).await;
    d.query_drop("BEGIN").await.unwrap();
    d.query_drop("UPDATE rp.t SET n = n + 1000 WHERE id = 5")
        .await
        .unwrap();

    // (f) a transaction behind a proxy with replay off
    let mut f = on_node(off, victim, &mut elsewhere).await;
    f.query_drop("BEGIN").await.unwrap();
    f.query_drop("UPDATE rp.t SET n = n + 5 WHERE id = 7")
        .await
        .unwrap();

    // (g) a transaction whose replay waits for a row lock longer than failover.timeout: every
    // other node has the row locked by a transaction of its own
    let mut lockers = Vec::new();
    for node in (0..g.addrs().len()).filter(|&n| n != victim_node) {
        let mut l = Conn::new(opts_direct(g.addr(node))).await.unwrap();
        l.query_drop("BEGIN").await.unwrap();
        l.query_drop("SELECT n FROM rp.t WHERE id = 8 FOR UPDATE")
            .await
            .unwrap();
        lockers.push(l);
    }
    let mut w = on_node(short, victim, &mut elsewhere).await;
    w.query_drop("BEGIN").await.unwrap();
    w.query_drop("UPDATE rp.t SET n = n + 1 WHERE id = 8")
        .await
        .unwrap();

    // (h) a transaction in a session with a temporary table from before it: the table is lost
    // with its node, so the session cannot go on (not a 1213 that leaves it silently gone)
    let mut h = on_node(proxy, victim, &mut elsewhere).await;
    h.query_drop("CREATE TEMPORARY TABLE rp.scratch (a INT)")
        .await
        .unwrap();
    h.query_drop("BEGIN").await.unwrap();
    h.query_drop("SELECT COUNT(*) FROM rp.scratch")
        .await
        .unwrap();

    // (i) a transaction that generated an auto-increment id: on another node the id differs
    // (Galera gives each node its own offset), so the replay mismatches, and the session's
    // LAST_INSERT_ID() died with the node
    let mut i = on_node(proxy, victim, &mut elsewhere).await;
    i.query_drop("BEGIN").await.unwrap();
    i.query_drop("INSERT INTO rp.auto (v) VALUES (1)")
        .await
        .unwrap();

    // (b) a slow statement in flight inside a transaction (the slow ones start last, so both
    // still run at the kill)
    let mut b = on_node(proxy, victim, &mut elsewhere).await;
    b.query_drop("BEGIN").await.unwrap();
    b.query_drop("UPDATE rp.t SET n = n + 1 WHERE id = 2")
        .await
        .unwrap();
    let b = tokio::spawn(async move {
        let r = b
            .query_first::<(i64, i64), _>("SELECT SLEEP(4) AS b, n FROM rp.t WHERE id = 2")
            .await;
        let commit = b.query_drop("COMMIT").await;
        (r, commit)
    });

    // (e) a COMMIT answered, and the statement after it in flight: 1180, never replayed
    let mut e = on_node(proxy, victim, &mut elsewhere).await;
    e.query_drop("BEGIN").await.unwrap();
    e.query_drop("UPDATE rp.t SET n = n + 10000 WHERE id = 6")
        .await
        .unwrap();
    let e = tokio::spawn(async move { e.query_drop("COMMIT; SELECT SLEEP(10) AS e").await });

    // both sleeps run on the victim, and the change to row 3 reached every node
    let deadline = Instant::now() + Duration::from_secs(20);
    let sleeping = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'User sleep'";
    while g.sql(victim_node, sleeping).trim() != "2" {
        assert!(Instant::now() < deadline, "the slow statements never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_rows(g, "1=0,2=0,3=7,4=0,5=0,6=10000,7=0,8=0").await;
    let before = [
        replayed("ok"),
        replayed("mismatch"),
        replayed("overflow"),
        replayed("timeout"),
        failover_errors("transaction_lost"),
        failover_errors("commit_unknown"),
    ];

    g.kill9(victim_node);
    // (a) and (b) are replayed as the proxy notices the loss: (a) between commands, before its
    // client sends anything more
    let deadline = Instant::now() + Duration::from_secs(20);
    while replayed("ok") - before[0] < 2.0 {
        assert!(
            Instant::now() < deadline,
            "the transactions were not replayed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // (a) goes on in its transaction, on another node, and commits once
    let n: Option<i64> = a
        .query_first("SELECT n FROM rp.t WHERE id = 1")
        .await
        .expect("the replayed transaction goes on");
    assert_eq!(n, Some(10), "the transaction sees its own replayed write");
    a.exec_drop("UPDATE rp.t SET n = n + ? WHERE id = ?", (1, 1))
        .await
        .unwrap();
    a.query_drop("COMMIT").await.expect("COMMIT after a replay");
    assert_ne!(port(&mut a).await, victim);

    // (b) the statement in flight is answered after the replay, and the transaction commits
    let (r, commit) = b.await.unwrap();
    assert_eq!(
        r.expect("the statement in flight is answered"),
        Some((0, 1))
    );
    commit.expect("COMMIT after a replay with a statement in flight");

    // (c) another answer: rolled back, 1213 for the next statement, then the session goes on
    let err = c
        .query_drop("COMMIT")
        .await
        .expect_err("the replay mismatched");
    assert_eq!(code(&err), 1213, "{err}");
    let one: Option<i64> = c.query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));

    // (d) the log overflowed: 1213
    let err = d
        .query_drop("COMMIT")
        .await
        .expect_err("the log overflowed");
    assert_eq!(code(&err), 1213, "{err}");

    // (f) replay off: 1213, as before replay existed
    let err = f.query_drop("COMMIT").await.expect_err("replay is off");
    assert_eq!(code(&err), 1213, "{err}");

    // (g) the replay timed out: its stuck statement was killed at once (not after the server's
    // 50 s lock wait), and the client gets 1213
    let stuck = "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE INFO = 'UPDATE rp.t SET n = n + 1 WHERE id = 8'";
    let deadline = Instant::now() + Duration::from_secs(15);
    while replayed("timeout") - before[3] < 1.0
        || (0..g.addrs().len())
            .filter(|&n| g.is_running(n))
            .any(|n| g.sql(n, stuck).trim() != "0")
    {
        assert!(Instant::now() < deadline, "the stuck replay was not ended");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let err = w
        .query_drop("COMMIT")
        .await
        .expect_err("the replay timed out");
    assert_eq!(code(&err), 1213, "{err}");
    for mut l in lockers {
        l.query_drop("ROLLBACK").await.unwrap();
    }

    // (h) told what was lost
    let err = h
        .query_drop("COMMIT")
        .await
        .expect_err("a temporary table cannot be re-attached");
    assert!(err.to_string().contains("temporary_table"), "{err}");
    assert_eq!(
        code(&err),
        1213,
        "rolled back, and told why it cannot go on: {err}"
    );

    // (i) the replay mismatched and the session's state is not exactly known: rolled back,
    // told why, and closed (nothing of it committed: checked below)
    let err = i
        .query_drop("COMMIT")
        .await
        .expect_err("an auto-increment insert cannot be replayed on another node");
    assert_eq!(code(&err), 1213, "{err}");
    assert!(err.to_string().contains("not exactly known"), "{err}");
    assert!(
        i.query_drop("SELECT 1").await.is_err(),
        "the session was closed"
    );

    // (e) the COMMIT was answered before the statement after it was lost: 1180
    let err = e
        .await
        .unwrap()
        .expect_err("a statement lost after a COMMIT");
    assert_eq!(code(&err), 1180, "{err}");

    // committed exactly once each; nothing of (c), (d), (f) or (g)
    wait_rows(g, "1=11,2=1,3=7,4=0,5=0,6=10000,7=0,8=0").await;
    for node in (0..g.addrs().len()).filter(|&n| g.is_running(n)) {
        assert_eq!(g.sql(node, "SELECT COUNT(*) FROM rp.auto").trim(), "0");
    }
    let after = [
        replayed("ok"),
        replayed("mismatch"),
        replayed("overflow"),
        replayed("timeout"),
        failover_errors("transaction_lost"),
        failover_errors("commit_unknown"),
    ];
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(
        delta,
        [2.0, 2.0, 1.0, 1.0, 4.0, 1.0],
        "replayed ok, mismatch, overflow, timeout; errors transaction_lost, commit_unknown"
    );
    for c in elsewhere {
        let _ = c.disconnect().await;
    }
}
