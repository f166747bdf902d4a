//! Issue 9, observations 2 and 3, and what pins a session: a move never loses an open
//! transaction or a lock, against two real MariaDB servers and real clients.
//!
//! Each test forces a redirect (its backend is drained and the router rebalances) at the moment
//! a move would lose something, then checks on the servers themselves that nothing was lost and
//! that the session stayed where its state is. The last tests check what the proxy's session
//! tracking does to the packets a client sees.

use std::sync::OnceLock;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use switchyard::wire::{caps, status, Frame, NativeSecret, Response};
use switchyard::{Rebalance, SetDrained};
use switchyard_server::mysql::backend::Backend;
use switchyard_server::mysql::MysqlUsers;
use switchyard_testkit::MariaDb;

mod support;

const USER: &str = "app";
const PASSWORD: &str = "app-pw";

/// Procedures every backend has: one that opens a transaction and then fails, one that takes a
/// user lock.
const PROCEDURES: &str = "DELIMITER //
CREATE PROCEDURE app1.fail_in_trx(x INT) BEGIN
  START TRANSACTION; INSERT INTO app1.pin_t (v) VALUES (x); SELECT * FROM app1.missing;
END//
CREATE PROCEDURE app1.take_lock(n VARCHAR(64)) BEGIN DO GET_LOCK(n, 0); END//
DELIMITER ;";

fn servers() -> Option<&'static (MariaDb, MariaDb)> {
    static S: OnceLock<Option<(MariaDb, MariaDb)>> = OnceLock::new();
    S.get_or_init(|| {
        let a = MariaDb::start()?;
        let b = MariaDb::start()?;
        for db in [&a, &b] {
            db.sql(&format!(
                "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
                 GRANT ALL ON *.* TO '{USER}'@'%'; \
                 CREATE DATABASE app1; \
                 CREATE TABLE app1.pin_t (id INT AUTO_INCREMENT PRIMARY KEY, v INT); \
                 SET GLOBAL log_output = 'TABLE', general_log = 1;"
            ));
            db.sql(PROCEDURES);
        }
        Some((a, b))
    })
    .as_ref()
}

use support::mysql_proxy::Proxy;

/// The in-process proxy over `backends`, for the test user.
async fn proxy(backends: &[String]) -> Proxy {
    let mut users = MysqlUsers::new();
    users.add(USER, Some(PASSWORD), None).unwrap();
    support::mysql_proxy::start(
        backends,
        users,
        Duration::from_secs(2),
        Duration::from_millis(100),
    )
    .await
}

fn addr(db: &MariaDb) -> String {
    db.addr().to_string()
}

fn both() -> Option<(&'static MariaDb, &'static MariaDb, [String; 2])> {
    let (a, b) = servers()?;
    Some((a, b, [addr(a), addr(b)]))
}

async fn connect_to(port: u16) -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .prefer_socket(false);
    Conn::new(opts).await.unwrap()
}

async fn port(c: &mut Conn) -> u16 {
    c.query_first("SELECT @@port").await.unwrap().unwrap()
}

fn backend_of(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

async fn set_drained(p: &Proxy, backend: &str, drained: bool) {
    p.router
        .send(SetDrained {
            addr: backend.to_string(),
            drained,
        })
        .await
        .unwrap()
        .unwrap();
}

/// Drains `from` and asks the router to move its sessions, without a word to the session (a
/// query would refresh what the proxy knows of it), then gives the session a moment to act on
/// the redirect. Returns the drained backend: the caller undrains it.
async fn force_redirect(p: &Proxy, from: u16) -> String {
    let from = backend_of(from);
    set_drained(p, &from, true).await;
    p.router.send(Rebalance { max_conns: 10 }).await.unwrap();
    // the redirect reaches the session through the router; nothing to wait on from here
    tokio::time::sleep(Duration::from_millis(300)).await;
    from
}

/// Polls the session's backend for a while, asking the router to move sessions off drained
/// backends before each look (a refused redirect is not retried on its own: these routers never
/// rebalance by themselves); true when it is still `on` throughout.
async fn stays_on(p: &Proxy, c: &mut Conn, on: u16, for_how_long: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + for_how_long;
    while tokio::time::Instant::now() < deadline {
        p.router.send(Rebalance { max_conns: 10 }).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        if port(c).await != on {
            return false;
        }
    }
    true
}

/// Waits until the session left `from`; true when it did within `within`.
async fn leaves(p: &Proxy, c: &mut Conn, from: u16, within: Duration) -> bool {
    !stays_on(p, c, from, within).await
}

/// Rows with `v` on a server.
fn rows_with(db: &MariaDb, v: i64) -> i64 {
    db.sql(&format!("SELECT COUNT(*) FROM app1.pin_t WHERE v = {v}"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether user lock `name` is free on a server.
fn lock_free(db: &MariaDb, name: &str) -> bool {
    db.sql(&format!("SELECT IS_FREE_LOCK('{name}')")).trim() == "1"
}

fn server_on(port: u16) -> &'static MariaDb {
    let (a, b) = servers().unwrap();
    if a.port() == port {
        a
    } else {
        b
    }
}

/// Observation 2: the transaction a failed multi-statement opened must survive a redirect: the
/// session stays on its backend until COMMIT, and the row is there afterwards.
#[actix_rt::test]
async fn a_failed_multi_statement_that_opened_a_transaction_stays_until_commit() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    let before = port(&mut c).await;
    let r = c
        .query_drop("BEGIN; INSERT INTO app1.pin_t (v) VALUES (4242); SELECT * FROM app1.missing")
        .await;
    assert!(
        matches!(r, Err(mysql_async::Error::Server(ref e)) if e.code == 1146),
        "{r:?}"
    );
    let waits_before = support::migrations_refused("in_transaction");
    let from = force_redirect(&p, before).await;
    assert!(
        stays_on(&p, &mut c, before, Duration::from_millis(600)).await,
        "the session moved inside the transaction"
    );
    assert!(
        support::migrations_refused("in_transaction") > waits_before,
        "the wait is counted by reason"
    );
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(
        rows_with(server_on(before), 4242),
        1,
        "the committed row is on the session's backend"
    );
    assert!(
        leaves(&p, &mut c, before, Duration::from_secs(5)).await,
        "after COMMIT the redirect goes ahead"
    );
    set_drained(&p, &from, false).await;
    c.disconnect().await.unwrap();
}

/// Observation 2, by a procedure: `CALL` opens a transaction and then fails.
#[actix_rt::test]
async fn a_failed_call_that_opened_a_transaction_stays_until_commit() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    let before = port(&mut c).await;
    let r = c.query_drop("CALL app1.fail_in_trx(4343)").await;
    assert!(
        matches!(r, Err(mysql_async::Error::Server(ref e)) if e.code == 1146),
        "{r:?}"
    );
    let from = force_redirect(&p, before).await;
    assert!(
        stays_on(&p, &mut c, before, Duration::from_millis(600)).await,
        "the session moved inside the transaction"
    );
    c.query_drop("COMMIT").await.unwrap();
    assert_eq!(rows_with(server_on(before), 4343), 1);
    set_drained(&p, &from, false).await;
    c.disconnect().await.unwrap();
}

/// Observation 3: `GET_LOCK` through a binary prepared statement (how JDBC and Go run
/// server-side prepares) keeps the session where the lock is.
#[actix_rt::test]
async fn a_user_lock_taken_by_a_binary_execute_keeps_the_session() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    let before = port(&mut c).await;
    let got: i64 = c
        .exec_first("SELECT GET_LOCK('pin_binary', 0)", ())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, 1);
    let refusals = support::migrations_refused("user_lock");
    let from = force_redirect(&p, before).await;
    assert!(
        stays_on(&p, &mut c, before, Duration::from_millis(600)).await,
        "the session moved away from its lock"
    );
    assert!(!lock_free(server_on(before), "pin_binary"), "lock released");
    assert!(
        support::migrations_refused("user_lock") > refusals,
        "the refusal is counted by reason"
    );
    // released: the next redirect finds it free and moves
    c.query_drop("DO RELEASE_LOCK('pin_binary')").await.unwrap();
    assert!(leaves(&p, &mut c, before, Duration::from_secs(5)).await);
    set_drained(&p, &from, false).await;
    c.disconnect().await.unwrap();
}

/// Observation 3: `GET_LOCK` inside `PREPARE … FROM` text, run by `EXECUTE`.
#[actix_rt::test]
async fn a_user_lock_taken_by_execute_of_a_sql_prepared_statement_keeps_the_session() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    let before = port(&mut c).await;
    c.query_drop("PREPARE take FROM 'DO GET_LOCK(''pin_sql'', 0)'")
        .await
        .unwrap();
    c.query_drop("EXECUTE take").await.unwrap();
    let from = force_redirect(&p, before).await;
    assert!(
        stays_on(&p, &mut c, before, Duration::from_millis(600)).await,
        "the session moved away from its lock"
    );
    assert!(!lock_free(server_on(before), "pin_sql"), "lock released");
    set_drained(&p, &from, false).await;
    c.disconnect().await.unwrap();
}

/// Observation 3: a lock taken inside a procedure cannot be seen or checked by name, so the
/// session is pinned (`unknown_state`) until a reset clears everything.
#[actix_rt::test]
async fn a_user_lock_taken_inside_a_procedure_pins_the_session_until_a_reset() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    let before = port(&mut c).await;
    c.query_drop("CALL app1.take_lock('pin_proc')")
        .await
        .unwrap();
    let refusals = support::migrations_refused("unknown_state");
    let from = force_redirect(&p, before).await;
    assert!(
        stays_on(&p, &mut c, before, Duration::from_millis(600)).await,
        "the session moved away from its lock"
    );
    assert!(!lock_free(server_on(before), "pin_proc"), "lock released");
    assert!(support::migrations_refused("unknown_state") > refusals);
    c.reset().await.unwrap();
    assert!(
        leaves(&p, &mut c, before, Duration::from_secs(5)).await,
        "a reset released everything: the session may move"
    );
    set_drained(&p, &from, false).await;
    c.disconnect().await.unwrap();
}

/// Observation 3, conversely: `RELEASE_ALL_LOCKS` inside a routine body does not run when the
/// routine is created, so it must not make the proxy forget a lock.
#[actix_rt::test]
async fn a_release_inside_a_routine_definition_does_not_forget_a_held_lock() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    let before = port(&mut c).await;
    c.query_drop("DO GET_LOCK('pin_body', 0)").await.unwrap();
    c.query_drop(
        "CREATE OR REPLACE PROCEDURE app1.release_all() \
         BEGIN DO RELEASE_ALL_LOCKS(); DROP TEMPORARY TABLE IF EXISTS x; END",
    )
    .await
    .unwrap();
    let from = force_redirect(&p, before).await;
    assert!(
        stays_on(&p, &mut c, before, Duration::from_millis(600)).await,
        "the session moved away from its lock"
    );
    assert!(!lock_free(server_on(before), "pin_body"), "lock released");
    set_drained(&p, &from, false).await;
    c.disconnect().await.unwrap();
}

/// A raw client with exactly `client_caps`, logged in through `addr`.
async fn raw_client(addr: &str, client_caps: u32) -> Backend {
    let mut b = Backend::connect(addr, Duration::from_secs(2))
        .await
        .unwrap();
    let resp = Response {
        caps: client_caps,
        max_packet: 1 << 24,
        charset: 45,
        user: USER.into(),
        auth: Vec::new(),
        plugin: "mysql_native_password".into(),
    };
    b.login(
        &resp,
        caps::PROTOCOL_41,
        &NativeSecret::from_password(PASSWORD),
    )
    .await
    .unwrap();
    b
}

/// Sends `sql` and returns every packet of the answer, raw.
async fn answer(b: &mut Backend, sql: &str, deprecate_eof: bool) -> Vec<Frame> {
    let _ = b.send_query(sql);
    b.flush().await.unwrap();
    let mut out = Vec::new();
    loop {
        let first = b.reader.frame().await.unwrap();
        let head = first.first();
        let p = first.payload().to_vec();
        out.push(first);
        match head {
            0xFF => return out,
            0x00 if status_of(&p, true) & status::MORE_RESULTS != 0 => continue,
            0x00 => return out,
            _ => {}
        }
        for _ in 0..head {
            out.push(b.reader.frame().await.unwrap());
        }
        if !deprecate_eof {
            out.push(b.reader.frame().await.unwrap());
        }
        loop {
            let f = b.reader.frame().await.unwrap();
            let p = f.payload().to_vec();
            out.push(f);
            let longest = if deprecate_eof { 0xFF_FFFF } else { 9 };
            let end = p.starts_with(&[0xFE]) && p.len() < longest;
            if p.starts_with(&[0xFF]) {
                return out;
            }
            if end {
                if status_of(&p, deprecate_eof) & status::MORE_RESULTS == 0 {
                    return out;
                }
                break;
            }
        }
    }
}

/// Status flags of an OK (or EOF) payload.
fn status_of(p: &[u8], ok: bool) -> u16 {
    if !ok {
        return u16::from_le_bytes([p[3], p[4]]);
    }
    let ok = switchyard::wire::parse_ok(p).unwrap();
    ok.status
}

const TRACK_SCRIPT: &[&str] = &[
    "USE app1",
    "SET @a = 1, sql_mode = 'ANSI_QUOTES'",
    "BEGIN",
    "SELECT 1",
    "COMMIT",
    "PREPARE s FROM 'SELECT 1'",
    "SET autocommit = 0",
    "SELECT 2; SELECT 3",
    "ROLLBACK",
    "SET autocommit = 1",
];

/// Item 2 of issue 9: the proxy asks the backend for session tracking; a client that did not ask
/// for it sees exactly the packets a direct connection sees, with and without
/// `CLIENT_DEPRECATE_EOF`.
#[actix_rt::test]
async fn a_client_without_session_tracking_sees_the_same_packets_as_a_direct_one() {
    let Some((a, _)) = servers() else { return };
    let p = proxy(&[addr(a)]).await;
    let base = caps::PROTOCOL_41
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::MULTI_STATEMENTS
        | caps::MULTI_RESULTS;
    for deprecate in [false, true] {
        let client_caps = base | if deprecate { caps::DEPRECATE_EOF } else { 0 };
        let mut direct = raw_client(&addr(a), client_caps).await;
        let mut proxied = raw_client(&p.addr.to_string(), client_caps).await;
        for sql in TRACK_SCRIPT {
            let want: Vec<Vec<u8>> = answer(&mut direct, sql, deprecate)
                .await
                .iter()
                .map(|f| f.raw().to_vec())
                .collect();
            let got: Vec<Vec<u8>> = answer(&mut proxied, sql, deprecate)
                .await
                .iter()
                .map(|f| f.raw().to_vec())
                .collect();
            assert_eq!(got, want, "{sql} (deprecate_eof: {deprecate})");
        }
    }
}

/// A client that asked for session tracking gets the server's session-state information through
/// the proxy unchanged.
#[actix_rt::test]
async fn a_client_with_session_tracking_gets_the_state_information() {
    let Some((a, _)) = servers() else { return };
    let p = proxy(&[addr(a)]).await;
    let client_caps = caps::PROTOCOL_41
        | caps::SECURE_CONNECTION
        | caps::PLUGIN_AUTH
        | caps::SESSION_TRACK
        | caps::DEPRECATE_EOF;
    let mut proxied = raw_client(&p.addr.to_string(), client_caps).await;
    let use_db = answer(&mut proxied, "USE app1", true).await;
    let ok = use_db[0].payload();
    assert_ne!(status_of(ok, true) & 0x4000, 0, "{ok:?}");
    assert!(
        ok.windows(4).any(|w| w == b"app1"),
        "the schema change is reported: {ok:?}"
    );
}

/// With session tracking, a session that changed only system variables and the schema moves
/// without the proxy reading `information_schema` on its backend.
#[actix_rt::test]
async fn a_move_of_a_tracked_session_reads_no_information_schema() {
    let Some((_, _, backends)) = both() else {
        return;
    };
    let p = proxy(&backends).await;
    let mut c = connect_to(p.addr.port()).await;
    c.query_drop("SET sql_mode = 'ANSI_QUOTES', wait_timeout = 1234, max_join_size = 1000")
        .await
        .unwrap();
    c.query_drop("SET NAMES latin1 COLLATE latin1_bin")
        .await
        .unwrap();
    c.query_drop("USE app1").await.unwrap();
    let thread: u64 = c
        .query_first("SELECT CONNECTION_ID()")
        .await
        .unwrap()
        .unwrap();
    let before = port(&mut c).await;
    let from = force_redirect(&p, before).await;
    assert!(leaves(&p, &mut c, before, Duration::from_secs(5)).await);
    set_drained(&p, &from, false).await;
    let got: (String, u64, String, String) = c
        .query_first("SELECT @@sql_mode, @@wait_timeout, @@collation_connection, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        got,
        (
            "ANSI_QUOTES".into(),
            1234,
            "latin1_bin".into(),
            "app1".into()
        )
    );
    let big_selects: (u64, u64) = c
        .query_first("SELECT @@max_join_size, @@sql_big_selects")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        big_selects,
        (1000, 0),
        "variables set together move together"
    );
    let reads = server_on(before).sql(&format!(
        "SELECT COUNT(*) FROM mysql.general_log WHERE thread_id = {thread} \
         AND argument LIKE '%information_schema%'"
    ));
    assert_eq!(reads.trim(), "0", "the move read information_schema");
    c.disconnect().await.unwrap();
}
