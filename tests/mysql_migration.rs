//! `protocol: mysql` against two real MariaDB servers and a real client (`mysql_async`): login
//! pass-through, moving sessions with their state, what waits and what stays, large packets,
//! a target that dies mid-move, and hostile clients.
//!
//! Tests run at the actor level: a `ScoreRouter` fed `BackendsChanged` directly and a loopback
//! listener that starts one `MysqlConn` per client, so they need no service binary.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use switchyard::{BackendHealth, BackendsChanged, GetBackends, Rebalance, SetDrained};
use switchyard_server::mysql::MysqlUsers;
use switchyard_testkit::MariaDb;

mod support;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USER: &str = "app";
const PASSWORD: &str = "app-pw";
/// A user configured by `password_hash` only.
const HASH_USER: &str = "hashed";
const HASH_PW: &str = "hash-pw";

fn servers() -> Option<&'static (MariaDb, MariaDb)> {
    static S: OnceLock<Option<(MariaDb, MariaDb)>> = OnceLock::new();
    S.get_or_init(|| {
        let a = MariaDb::start()?;
        let b = MariaDb::start()?;
        for db in [&a, &b] {
            db.sql(&format!(
                "SET GLOBAL max_allowed_packet = 67108864; \
                 CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
                 GRANT ALL ON *.* TO '{USER}'@'%'; \
                 CREATE USER '{HASH_USER}'@'%' IDENTIFIED BY '{HASH_PW}'; \
                 GRANT ALL ON *.* TO '{HASH_USER}'@'%'; \
                 CREATE DATABASE app1; CREATE TABLE app1.t (id INT PRIMARY KEY, v LONGBLOB);"
            ));
        }
        Some((a, b))
    })
    .as_ref()
}

use support::mysql_proxy::Proxy;

/// The in-process proxy over `backends` for `users`.
async fn proxy(backends: &[String], users: MysqlUsers) -> Proxy {
    support::mysql_proxy::start(
        backends,
        users,
        Duration::from_secs(2),
        Duration::from_millis(200),
    )
    .await
}

fn users() -> MysqlUsers {
    let mut u = MysqlUsers::new();
    u.add(USER, Some(PASSWORD), None).unwrap();
    u
}

fn addr(db: &MariaDb) -> String {
    db.addr().to_string()
}

async fn connect(p: &Proxy, user: &str, pw: &str) -> Result<Conn, mysql_async::Error> {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(p.addr.port())
        .user(Some(user))
        .pass(Some(pw))
        .prefer_socket(false);
    Conn::new(opts).await
}

async fn port(c: &mut Conn) -> u16 {
    c.query_first("SELECT @@port").await.unwrap().unwrap()
}

fn backend_of(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Drains `from`, asks the router to rebalance, and undrains it again once the session left
/// (or `wait` ran out). Returns the session's port afterwards.
async fn drain_and_move(p: &Proxy, c: &mut Conn, wait: Duration) -> u16 {
    let before = port(c).await;
    let from = backend_of(before);
    p.router
        .send(SetDrained {
            addr: from.clone(),
            drained: true,
        })
        .await
        .unwrap()
        .unwrap();
    p.router.send(Rebalance { max_conns: 10 }).await.unwrap();
    let deadline = tokio::time::Instant::now() + wait;
    let mut now = before;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = port(c).await;
        if now != before {
            break;
        }
    }
    p.router
        .send(SetDrained {
            addr: from,
            drained: false,
        })
        .await
        .unwrap()
        .unwrap();
    now
}

#[actix_rt::test]
async fn login_with_a_wrong_password_gets_1045_and_the_proxy_keeps_serving() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let Err(err) = connect(&p, USER, "wrong").await else {
        panic!("login with a wrong password must fail");
    };
    match err {
        mysql_async::Error::Server(e) => assert_eq!(e.code, 1045),
        other => panic!("expected a server error, got {other}"),
    }
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1);
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn a_session_moves_with_schema_charset_variables_and_sql_prepares() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    c.query_drop(
        "SET sql_mode = 'ANSI_QUOTES,NO_ENGINE_SUBSTITUTION', wait_timeout = 1234; \
         SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
    )
    .await
    .unwrap();
    c.query_drop("USE app1").await.unwrap();
    c.query_drop("SET @n = 42, @s = 'héllo', @d = 1.25, @f = 2.5e0, @z = NULL")
        .await
        .unwrap();
    c.query_drop("PREPARE p1 FROM 'SELECT ? + 1'")
        .await
        .unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after, "the session should have moved");
    let (mode, wt): (String, u64) = c
        .query_first("SELECT @@sql_mode, @@wait_timeout")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(mode, "ANSI_QUOTES,NO_ENGINE_SUBSTITUTION");
    assert_eq!(wt, 1234);
    let (cs, coll, db): (String, String, String) = c
        .query_first("SELECT @@character_set_client, @@collation_connection, DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (cs.as_str(), coll.as_str(), db.as_str()),
        ("utf8mb4", "utf8mb4_unicode_ci", "app1")
    );
    let (n, s, d, f): (i64, String, String, f64) = c
        .query_first("SELECT @n, @s, CAST(@d AS CHAR), @f")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((n, s.as_str(), d.as_str(), f), (42, "héllo", "1.25", 2.5));
    let z: Option<String> = c.query_first("SELECT @z").await.unwrap().unwrap();
    assert_eq!(z, None);
    c.query_drop("SET @x = 9").await.unwrap();
    let r: i64 = c.query_first("EXECUTE p1 USING @x").await.unwrap().unwrap();
    assert_eq!(r, 10);
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn a_session_that_changed_nothing_moves_with_its_login_schema_and_charset() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(p.addr.port())
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .db_name(Some("app1"))
        .prefer_socket(false);
    let mut c = Conn::new(opts).await.unwrap();
    let login_state = "SELECT DATABASE(), @@character_set_client, @@collation_connection";
    let state: (String, String, String) = c.query_first(login_state).await.unwrap().unwrap();
    let first = port(&mut c).await;
    let second = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(first, second, "an unchanged session should move");
    let now: (String, String, String) = c.query_first(login_state).await.unwrap().unwrap();
    assert_eq!(now, state);
    // and again, back to the first backend, still with nothing changed
    let third = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_eq!(third, first);
    let now: (String, String, String) = c.query_first(login_state).await.unwrap().unwrap();
    assert_eq!(now, state);
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn state_changed_after_a_first_move_is_carried_by_the_second_and_third() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    c.query_drop("SET sql_mode = 'ANSI_QUOTES', @a = 'first'")
        .await
        .unwrap();
    let first = port(&mut c).await;
    let second = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(first, second, "first move");
    // changed on the second backend, after the first move
    c.query_drop("SET wait_timeout = 4321").await.unwrap();
    c.query_first::<i64, _>("SELECT @b := 7").await.unwrap();
    c.query_drop("SELECT 'second' INTO @s").await.unwrap();
    c.query_drop("USE app1").await.unwrap();
    let third = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_eq!(third, first, "second move");
    let state = "SELECT @@sql_mode, @@wait_timeout, @a, @b, @s, DATABASE()";
    type State = (String, u64, String, i64, String, String);
    let want: State = (
        "ANSI_QUOTES".into(),
        4321,
        "first".into(),
        7,
        "second".into(),
        "app1".into(),
    );
    let got: State = c.query_first(state).await.unwrap().unwrap();
    assert_eq!(got, want);
    // nothing changed since: the third move re-applies the carried state
    let fourth = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_eq!(fourth, second, "third move");
    let got: State = c.query_first(state).await.unwrap().unwrap();
    assert_eq!(got, want);
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn a_session_in_a_transaction_waits_for_commit_then_moves() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    let before = port(&mut c).await;
    c.query_drop("BEGIN").await.unwrap();
    c.query_drop("INSERT INTO app1.t (id, v) VALUES (1000 + @@port % 1000, 'x')")
        .await
        .unwrap();
    p.router
        .send(SetDrained {
            addr: backend_of(before),
            drained: true,
        })
        .await
        .unwrap()
        .unwrap();
    p.router.send(Rebalance { max_conns: 10 }).await.unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(port(&mut c).await, before, "moved inside a transaction");
    }
    c.query_drop("COMMIT").await.unwrap();
    let mut moved = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if port(&mut c).await != before {
            moved = true;
            break;
        }
    }
    assert!(moved, "the session should move after COMMIT");
    c.query_drop("DELETE FROM app1.t WHERE id >= 1000")
        .await
        .unwrap();
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn a_session_with_a_temporary_table_stays() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    c.query_drop("CREATE TEMPORARY TABLE app1.tmp (a INT)")
        .await
        .unwrap();
    c.query_drop("INSERT INTO app1.tmp VALUES (7)")
        .await
        .unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_millis(600)).await;
    assert_eq!(before, after, "a session with a temporary table must stay");
    let v: i64 = c
        .query_first("SELECT a FROM app1.tmp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 7);
    // once the table is gone the session can move again
    c.query_drop("DROP TEMPORARY TABLE app1.tmp").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after);
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn a_binary_prepared_statement_still_executes_after_a_move() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    let stmt = c.prep("SELECT ? + ?, CONCAT(?, 'x')").await.unwrap();
    let r: (i64, String) = c.exec_first(&stmt, (1, 2, "a")).await.unwrap().unwrap();
    assert_eq!(r, (3, "ax".to_string()));
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after);
    let r: (i64, String) = c.exec_first(&stmt, (20, 22, "b")).await.unwrap().unwrap();
    assert_eq!(r, (42, "bx".to_string()));
    let stmt2 = c.prep("SELECT ? * 2").await.unwrap();
    let r: i64 = c.exec_first(&stmt2, (21,)).await.unwrap().unwrap();
    assert_eq!(r, 42);
    let r: (i64, String) = c.exec_first(&stmt, (1, 1, "c")).await.unwrap().unwrap();
    assert_eq!(r, (2, "cx".to_string()));
    c.close(stmt).await.unwrap();
    c.disconnect().await.unwrap();
}

#[actix_rt::test]
async fn large_result_sets_and_packets_over_16_mib_pass_intact() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    let rows: Vec<(u64, String)> = c
        .query("SELECT seq, REPEAT('r', 100) FROM app1.seq_1_to_200000")
        .await
        .unwrap();
    assert_eq!(rows.len(), 200_000);
    assert_eq!(rows.iter().map(|r| r.0).sum::<u64>(), 200_000 * 200_001 / 2);
    let big: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    c.exec_drop(
        "REPLACE INTO app1.t (id, v) VALUES (?, ?)",
        (1, big.clone()),
    )
    .await
    .unwrap();
    let back: Vec<u8> = c
        .query_first("SELECT v FROM app1.t WHERE id = 1")
        .await
        .unwrap()
        .unwrap();
    assert!(back == big, "20 MiB value differs after the round trip");
    let text: String = c
        .query_first("SELECT REPEAT('z', 17 * 1024 * 1024)")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(text.len(), 17 * 1024 * 1024);
    // and a move still works afterwards
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after);
    c.disconnect().await.unwrap();
}

/// A backend that dies mid-move: forwards to `real` and cuts both sides after the login's OK.
async fn dying_backend(real: SocketAddr) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut server) = TcpStream::connect(real).await else {
                    return;
                };
                // greeting
                let Some(g) = read_packet(&mut server).await else {
                    return;
                };
                let _ = client.write_all(&g).await;
                // handshake response
                let Some(r) = read_packet(&mut client).await else {
                    return;
                };
                let _ = server.write_all(&r).await;
                // login OK, then the backend "dies"
                let Some(ok) = read_packet(&mut server).await else {
                    return;
                };
                let _ = client.write_all(&ok).await;
            });
        }
    });
    addr
}

async fn read_packet(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut h = [0u8; 4];
    s.read_exact(&mut h).await.ok()?;
    let n = usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16;
    let mut p = vec![0u8; 4 + n];
    p[..4].copy_from_slice(&h);
    s.read_exact(&mut p[4..]).await.ok()?;
    Some(p)
}

#[actix_rt::test]
async fn a_target_that_dies_mid_move_leaves_the_session_where_it_was() {
    let Some((a, _)) = servers() else { return };
    let dying = dying_backend(a.addr()).await;
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for target in [dying, refused] {
        let p = proxy(&[addr(a)], users()).await;
        let mut c = connect(&p, USER, PASSWORD).await.unwrap();
        c.query_drop("SET @keep = 'me'").await.unwrap();
        let before = port(&mut c).await;
        // the target joins only now, so the session is on the real server
        let mut changed = HashMap::new();
        changed.insert(target.to_string(), BackendHealth::healthy());
        p.router
            .send(BackendsChanged {
                backends: changed,
                error: None,
            })
            .await
            .unwrap();
        let after = drain_and_move(&p, &mut c, Duration::from_millis(800)).await;
        assert_eq!(before, after);
        let keep: String = c.query_first("SELECT @keep").await.unwrap().unwrap();
        assert_eq!(keep, "me");
        let snaps = p.router.send(GetBackends).await.unwrap();
        let on_real = snaps
            .iter()
            .find(|s| s.addr == addr(a))
            .map(|s| s.conn_count);
        assert_eq!(
            on_real,
            Some(1),
            "router still counts the session on the old backend"
        );
        c.disconnect().await.unwrap();
    }
}

#[actix_rt::test]
async fn a_user_configured_by_password_hash_can_move() {
    let Some((a, b)) = servers() else { return };
    let hash = a.sql(&format!("SELECT PASSWORD('{HASH_PW}')"));
    let mut u = MysqlUsers::new();
    u.add(HASH_USER, None, Some(hash.trim())).unwrap();
    let p = proxy(&[addr(a), addr(b)], u).await;
    let mut c = connect(&p, HASH_USER, HASH_PW).await.unwrap();
    c.query_drop("SET @h = 5").await.unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after);
    let h: i64 = c.query_first("SELECT @h").await.unwrap().unwrap();
    assert_eq!(h, 5);
    c.disconnect().await.unwrap();
    // a user missing from mysql.users is proxied but stays put
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_millis(500)).await;
    assert_eq!(before, after);
    c.disconnect().await.unwrap();
}

/// Reads the greeting, then sends `bytes` as the client's next move; true when the proxy
/// closed the connection (after at most an error packet).
async fn hostile(p: &Proxy, bytes: &[u8], close_after: bool) -> bool {
    let mut s = TcpStream::connect(p.addr).await.unwrap();
    let Some(_greeting) = read_packet(&mut s).await else {
        return false;
    };
    s.write_all(bytes).await.unwrap();
    if close_after {
        let _ = s.shutdown().await;
    }
    let mut buf = vec![0u8; 1024];
    let deadline = Duration::from_secs(3);
    loop {
        match tokio::time::timeout(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[actix_rt::test]
async fn hostile_input_closes_only_that_client() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)], users()).await;
    let mut good = connect(&p, USER, PASSWORD).await.unwrap();
    // absurd length during login
    assert!(hostile(&p, &[0xFF, 0xFF, 0xFF, 1, 0, 0, 0, 0], false).await);
    // wrong sequence id for the handshake response
    assert!(hostile(&p, &[5, 0, 0, 7, 1, 2, 3, 4, 5], false).await);
    // truncated packet, then EOF
    assert!(hostile(&p, &[100, 0, 0, 1, 1, 2, 3], true).await);
    // garbage handshake response
    assert!(hostile(&p, &[3, 0, 0, 1, 0, 0, 0], false).await);
    // after a good login: a command with a wrong sequence id
    let mut raw = switchyard_server::mysql::backend::Backend::connect(
        &p.addr.to_string(),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let resp = switchyard::wire::Response {
        caps: 0x000F_A68D,
        max_packet: 1 << 24,
        charset: 45,
        user: USER.into(),
        auth: Vec::new(),
        plugin: "mysql_native_password".into(),
    };
    let secret = switchyard::wire::NativeSecret::from_password(PASSWORD);
    raw.login(&resp, 0x0000_0200, &secret).await.unwrap();
    raw.out.extend_from_slice(&[
        9, 0, 0, 4, 3, b'S', b'E', b'L', b'E', b'C', b'T', b' ', b'1',
    ]);
    raw.flush().await.unwrap();
    assert!(
        raw.reader.frame().await.is_err(),
        "proxy must close the client"
    );
    let one: i64 = good.query_first("SELECT 1").await.unwrap().unwrap();
    assert_eq!(one, 1, "the other client is unaffected");
    good.disconnect().await.unwrap();
}

/// Issue 9, observation 1: these 3-byte-ish queries once panicked the session task (the
/// statement scan stepped past a trailing backslash), so the client got no answer and the
/// router kept counting a connection that was gone.
#[actix_rt::test]
async fn a_query_ending_in_a_backslash_gets_the_servers_error_and_the_session_lives_on() {
    let Some((a, _)) = servers() else { return };
    let p = proxy(&[addr(a)], users()).await;
    let mut c = connect(&p, USER, PASSWORD).await.unwrap();
    for sql in [";'\\", "CREATE '\\", "SELECT GET_LOCK('\\"] {
        match c.query_drop(sql).await {
            Err(mysql_async::Error::Server(_)) => {}
            other => panic!("{sql:?}: expected the server's error, got {other:?}"),
        }
        let one: i64 = c.query_first("SELECT 1").await.unwrap().unwrap();
        assert_eq!(one, 1, "the session still answers after {sql:?}");
    }
    c.disconnect().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snaps = p.router.send(GetBackends).await.unwrap();
        let count = snaps.iter().map(|s| s.conn_count).sum::<usize>();
        if count == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the router still counts {count} connection(s) after the client left"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
