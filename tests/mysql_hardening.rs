//! `protocol: mysql` hardening (issue 9, observation 6 and "Hardening" / "Bounded memory"), against
//! two real MariaDB servers: unknown statement ids, `COM_SET_OPTION`, a one-shot `SET
//! TRANSACTION`, `LOCAL INFILE` data of exactly 16 MiB, a frozen old backend during a move, and the
//! size caps of the snapshot and of the statement scan.
//!
//! Like `mysql_migration.rs`, tests run at the actor level (a `ScoreRouter` and a loopback
//! listener starting one `MysqlConn` per client). Where `mysql_async` cannot say what a test
//! needs (`COM_SET_OPTION`, `LOCAL INFILE` chunking) the proxy's own small client speaks raw.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use switchyard::wire::{caps, cmd, marker, put_packet, NativeSecret, Response, MAX_PAYLOAD};
use switchyard::{GetBackends, Rebalance, SetDrained};
use switchyard_server::mysql::backend::Backend;
use switchyard_server::mysql::MysqlUsers;
use switchyard_testkit::MariaDb;

mod support;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const USER: &str = "app";
const PASSWORD: &str = "app-pw";
/// The proxy's `move_timeout` in these tests.
const MOVE_TIMEOUT: Duration = Duration::from_secs(2);

fn servers() -> Option<&'static (MariaDb, MariaDb)> {
    static S: OnceLock<Option<(MariaDb, MariaDb)>> = OnceLock::new();
    S.get_or_init(|| {
        let a = MariaDb::start()?;
        let b = MariaDb::start()?;
        for db in [&a, &b] {
            db.sql(&format!(
                "SET GLOBAL max_allowed_packet = 67108864; SET GLOBAL local_infile = ON; \
                 CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
                 GRANT ALL ON *.* TO '{USER}'@'%'; \
                 CREATE DATABASE app1; CREATE TABLE app1.t (id INT PRIMARY KEY, v LONGBLOB); \
                 CREATE TABLE app1.lines (l LONGTEXT);"
            ));
        }
        Some((a, b))
    })
    .as_ref()
}

use support::mysql_proxy::{add_backends, Proxy};

/// The in-process proxy over `backends`, for the test user.
async fn proxy(backends: &[String]) -> Proxy {
    let mut users = MysqlUsers::new();
    users.add(USER, Some(PASSWORD), None).unwrap();
    support::mysql_proxy::start(backends, users, MOVE_TIMEOUT, Duration::from_millis(200)).await
}

fn addr(db: &MariaDb) -> String {
    db.addr().to_string()
}

async fn connect(p: &Proxy) -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(p.addr.port())
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .prefer_socket(false);
    Conn::new(opts).await.unwrap()
}

async fn port(c: &mut Conn) -> u16 {
    c.query_first("SELECT @@port").await.unwrap().unwrap()
}

/// Drains (or undrains) `addr` and, when draining, asks the router to move sessions off it.
async fn set_drained(p: &Proxy, addr: &str, drained: bool) {
    p.router
        .send(SetDrained {
            addr: addr.to_string(),
            drained,
        })
        .await
        .unwrap()
        .unwrap();
    if drained {
        p.router.send(Rebalance { max_conns: 10 }).await.unwrap();
    }
}

fn backend_of(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// Drains the session's backend and undrains it once the session left (or `wait` ran out).
/// Returns the session's port afterwards.
async fn drain_and_move(p: &Proxy, c: &mut Conn, wait: Duration) -> u16 {
    let before = port(c).await;
    set_drained(p, &backend_of(before), true).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut now = before;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = port(c).await;
        if now != before {
            break;
        }
    }
    set_drained(p, &backend_of(before), false).await;
    now
}

/// A session through the proxy spoken by the proxy's own small client, with exactly `caps`
/// asked for (so a test chooses e.g. whether multi-statements are on).
async fn raw_client(p: &Proxy, want: u32) -> Backend {
    let mut raw = Backend::connect(&p.addr.to_string(), Duration::from_secs(2))
        .await
        .unwrap();
    let resp = Response {
        caps: want,
        max_packet: 1 << 30,
        charset: 45,
        user: USER.into(),
        auth: Vec::new(),
        plugin: "mysql_native_password".into(),
    };
    let secret = NativeSecret::from_password(PASSWORD);
    raw.login(&resp, caps::PROTOCOL_41, &secret).await.unwrap();
    raw
}

/// Capabilities of a plain raw client: no multi-statements, no `DEPRECATE_EOF`.
const RAW_CAPS: u32 = caps::MYSQL
    | caps::PROTOCOL_41
    | caps::SECURE_CONNECTION
    | caps::PLUGIN_AUTH
    | caps::MULTI_RESULTS;

async fn raw_port(raw: &mut Backend) -> u16 {
    let rows = raw.query("SELECT @@port").await.unwrap();
    let v = rows[0][0].clone().unwrap();
    String::from_utf8(v).unwrap().parse().unwrap()
}

/// [`drain_and_move`] for a raw client.
async fn drain_and_move_raw(p: &Proxy, raw: &mut Backend, wait: Duration) -> u16 {
    let before = raw_port(raw).await;
    set_drained(p, &backend_of(before), true).await;
    let deadline = tokio::time::Instant::now() + wait;
    let mut now = before;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        now = raw_port(raw).await;
        if now != before {
            break;
        }
    }
    set_drained(p, &backend_of(before), false).await;
    now
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// Issue 9.6: a client statement id the proxy does not know (closed, never prepared) was
/// forwarded unmapped; after a move, where the session's statements were re-prepared under new
/// ids, it named another statement — executing it ran that one, closing it closed that one.
#[actix_rt::test]
async fn an_unknown_statement_id_gets_1243_and_never_reaches_another_statement_after_a_move() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut c = connect(&p).await;
    let one = c.prep("SELECT 'one'").await.unwrap();
    let two = c.prep("SELECT 'two'").await.unwrap();
    c.close(one.clone()).await.unwrap();
    let e = c.exec_drop(&one, ()).await.unwrap_err();
    assert_eq!(server_code(&e), Some(1243), "{e}");
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after, "the session should have moved");
    // on the target, `two` was re-prepared first: under the backend id `one` had before
    match c.exec_first::<String, _, _>(&one, ()).await {
        Err(e) => {
            assert_eq!(server_code(&e), Some(1243), "{e}");
            assert!(e.to_string().contains("mysqld_stmt_execute"), "{e}");
        }
        Ok(v) => panic!("a closed statement id ran another statement: {v:?}"),
    }
    // closing it again is answered by nothing and closes nothing else
    c.close(one.clone()).await.unwrap();
    let v: String = c.exec_first(&two, ()).await.unwrap().unwrap();
    assert_eq!(v, "two");
    c.disconnect().await.unwrap();
}

/// Issue 9.6: `COM_SET_OPTION` (multi-statements on/off) was not carried: after a move the
/// session had the option its login asked for.
#[actix_rt::test]
async fn com_set_option_is_carried_by_a_move() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut raw = raw_client(&p, RAW_CAPS).await;
    assert!(
        raw.query("SELECT 1; SELECT 2").await.is_err(),
        "multi-statements are off after this login"
    );
    set_option(&mut raw, 0).await;
    assert_eq!(raw.query("SELECT 1; SELECT 2").await.unwrap().len(), 2);
    let before = raw_port(&mut raw).await;
    let after = drain_and_move_raw(&p, &mut raw, Duration::from_secs(5)).await;
    assert_ne!(before, after, "the session should have moved");
    let rows = raw
        .query("SELECT 1; SELECT 2")
        .await
        .expect("multi-statements still on after the move");
    assert_eq!(rows.len(), 2);
    // and off again, carried back
    set_option(&mut raw, 1).await;
    let back = drain_and_move_raw(&p, &mut raw, Duration::from_secs(5)).await;
    assert_eq!(back, before);
    assert!(
        raw.query("SELECT 1; SELECT 2").await.is_err(),
        "multi-statements still off after the second move"
    );
}

/// Sends `COM_SET_OPTION` (0: multi-statements on, 1: off) and reads its EOF.
async fn set_option(raw: &mut Backend, option: u16) {
    raw.send_command(cmd::SET_OPTION, &option.to_le_bytes());
    raw.flush().await.unwrap();
    let f = raw.reader.frame_seq(1).await.unwrap();
    assert_eq!(f.first(), marker::EOF, "COM_SET_OPTION answered {f:?}");
}

/// Issue 9.6: `SET TRANSACTION READ ONLY` (no SESSION) holds for the session's next transaction
/// only, and the server does not report it: a move in between lost it, and that transaction
/// then wrote.
#[actix_rt::test]
async fn a_one_shot_set_transaction_holds_the_move_until_the_next_transaction_used_it() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut c = connect(&p).await;
    c.query_drop("SET TRANSACTION READ ONLY").await.unwrap();
    let before = port(&mut c).await;
    set_drained(&p, &backend_of(before), true).await;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            port(&mut c).await,
            before,
            "moved while a one-shot SET TRANSACTION was pending"
        );
    }
    c.query_drop("BEGIN").await.unwrap();
    let e = c
        .query_drop("INSERT INTO app1.t (id, v) VALUES (7000, 'x')")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), Some(1792), "{e}");
    c.query_drop("ROLLBACK").await.unwrap();
    let mut moved = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if port(&mut c).await != before {
            moved = true;
            break;
        }
    }
    set_drained(&p, &backend_of(before), false).await;
    assert!(moved, "the session should move once the transaction ended");
    c.disconnect().await.unwrap();
}

/// Issue 9.6: `LOCAL INFILE` data sent in a chunk of exactly 16 MiB − 1 bytes ends that packet
/// with an empty continuation packet; the proxy took it for the end of the data and then waited
/// for the server while the server waited for the data's real end.
#[actix_rt::test]
async fn local_infile_data_of_exactly_one_full_packet_passes_through() {
    let Some((a, _)) = servers() else { return };
    let p = proxy(&[addr(a)]).await;
    let mut raw = raw_client(&p, RAW_CAPS | caps::LOCAL_FILES).await;
    raw.query("DELETE FROM app1.lines").await.unwrap();
    // 16383 lines of 1024 bytes and a last one of 1023: exactly one full packet
    let mut data = Vec::with_capacity(MAX_PAYLOAD);
    while data.len() + 1024 <= MAX_PAYLOAD {
        data.extend(std::iter::repeat_n(b'x', 1023));
        data.push(b'\n');
    }
    data.extend(std::iter::repeat_n(b'y', MAX_PAYLOAD - data.len()));
    assert_eq!(data.len(), MAX_PAYLOAD);
    let load = async {
        let seq = raw.send_query("LOAD DATA LOCAL INFILE 'lines.txt' INTO TABLE app1.lines");
        raw.flush().await.unwrap();
        let req = raw.reader.frame_seq(seq).await.unwrap();
        assert_eq!(req.first(), marker::LOCAL_INFILE, "{req:?}");
        // the full packet and its empty continuation, then the empty packet ending the data
        let seq = put_packet(&mut raw.out, seq.wrapping_add(1), &data);
        let seq = put_packet(&mut raw.out, seq, &[]);
        raw.flush().await.unwrap();
        raw.reader.frame_seq(seq).await.unwrap()
    };
    let ok = tokio::time::timeout(Duration::from_secs(30), load)
        .await
        .expect("LOAD DATA LOCAL of one full packet hung");
    assert_eq!(ok.first(), marker::OK, "{ok:?}");
    let rows = raw.query("SELECT COUNT(*) FROM app1.lines").await.unwrap();
    assert_eq!(rows[0][0].as_deref(), Some(&b"16384"[..]));
}

/// A TCP forwarder in front of a real server whose answers can be held, as a backend stopped
/// with SIGSTOP looks to the proxy. It reports how many bytes the proxy sent through it.
struct Freezer {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    sent: watch::Receiver<usize>,
}

async fn freezer(real: SocketAddr) -> Freezer {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (frozen, frozen_rx) = watch::channel(false);
    let (sent_tx, sent) = watch::channel(0usize);
    tokio::spawn(async move {
        while let Ok((client, _)) = l.accept().await {
            let Ok(server) = TcpStream::connect(real).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let sent_tx = sent_tx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = cr.read(&mut buf).await {
                    if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent_tx.send_modify(|s| *s += n);
                }
            });
            let mut frozen_rx = frozen_rx.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 || frozen_rx.wait_for(|f| !*f).await.is_err() {
                        break;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Freezer { addr, frozen, sent }
}

/// A session on a frozen backend, a redirect to `b` under way: returns the proxy, the client,
/// the freezer and the old backend's port once the proxy has sent its snapshot queries into the
/// frozen backend.
async fn frozen_mid_move(a: &MariaDb, b: &MariaDb) -> (Proxy, Conn, Freezer) {
    let mut f = freezer(a.addr()).await;
    let p = proxy(&[f.addr.to_string()]).await;
    let mut c = connect(&p).await;
    c.query_drop("SET @keep = 'me'").await.unwrap();
    assert_eq!(port(&mut c).await, a.port());
    add_backends(&p.router, &[addr(b)]).await;
    f.frozen.send_replace(true);
    let sent = *f.sent.borrow_and_update();
    set_drained(&p, &f.addr.to_string(), true).await;
    // the snapshot's queries went in; their answers are held
    f.sent.wait_for(|s| *s > sent).await.unwrap();
    (p, c, f)
}

/// Issue 9 hardening: the snapshot had no bound, so a frozen old backend hung the drain and the
/// client. Now the move fails after `move_timeout`; a backend that recovers within one more
/// `move_timeout` keeps the session, and the client's waiting command runs there.
#[actix_rt::test]
async fn a_frozen_old_backend_fails_the_move_in_time_and_keeps_the_session_when_it_recovers() {
    let Some((a, b)) = servers() else { return };
    let refusals = support::migrations_refused("move_timeout");
    let (p, mut c, f) = frozen_mid_move(a, b).await;
    let started = tokio::time::Instant::now();
    let query = tokio::spawn(async move {
        let r: Option<(u16, String)> = c.query_first("SELECT @@port, @keep").await.unwrap();
        (r.unwrap(), c)
    });
    tokio::time::sleep(MOVE_TIMEOUT + Duration::from_millis(500)).await;
    f.frozen.send_replace(false);
    let ((on, keep), c) = tokio::time::timeout(Duration::from_secs(10), query)
        .await
        .expect("the client hung")
        .unwrap();
    assert!(started.elapsed() < 2 * MOVE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(
        on,
        a.port(),
        "the move must have failed at its timeout: the session stays where it was"
    );
    assert_eq!(keep, "me");
    assert!(
        support::migrations_refused("move_timeout") > refusals,
        "the refusal is counted by its reason"
    );
    set_drained(&p, &f.addr.to_string(), false).await;
    c.disconnect().await.unwrap();
}

/// Issue 9 hardening: an old backend that stays frozen closes the session with an error packet
/// (after `move_timeout` for the move and one more for the backend to recover), and the router
/// forgets it.
#[actix_rt::test]
async fn an_old_backend_that_stays_frozen_closes_the_session_with_an_error() {
    let Some((a, b)) = servers() else { return };
    let (p, mut c, _f) = frozen_mid_move(a, b).await;
    let started = tokio::time::Instant::now();
    let r = tokio::time::timeout(
        2 * MOVE_TIMEOUT + Duration::from_secs(3),
        c.query_first::<u16, _>("SELECT @@port"),
    )
    .await
    .expect("the client hung on a frozen backend");
    let e = r.unwrap_err();
    assert_eq!(server_code(&e), Some(1105), "{e}");
    assert!(started.elapsed() >= MOVE_TIMEOUT);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let snaps = p.router.send(GetBackends).await.unwrap();
        let count = snaps.iter().map(|s| s.conn_count).sum::<usize>();
        if count == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the router still counts {count} connection(s)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 9 bounded memory: the snapshot read answers without bound (a 6 MiB user variable was
/// read twice, once as hex). Over its size cap the move is refused and the session stays, state
/// intact; once the variable is small again the session moves.
#[actix_rt::test]
async fn a_session_whose_snapshot_is_over_the_cap_stays_with_its_state() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut c = connect(&p).await;
    c.query_drop("SET @big = REPEAT('b', 6 * 1024 * 1024), @small = 1")
        .await
        .unwrap();
    let before = port(&mut c).await;
    let refusals = support::migrations_refused("snapshot_too_large");
    let after = drain_and_move(&p, &mut c, Duration::from_millis(800)).await;
    assert_eq!(before, after, "a snapshot over the cap must not move");
    assert!(
        support::migrations_refused("snapshot_too_large") > refusals,
        "the refusal is counted by its reason"
    );
    let (len, small): (u64, i64) = c
        .query_first("SELECT LENGTH(@big), @small")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((len, small), (6 * 1024 * 1024, 1));
    c.query_drop("SET @big = NULL").await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after, "the session moves once its state is small");
    let small: i64 = c.query_first("SELECT @small").await.unwrap().unwrap();
    assert_eq!(small, 1);
    c.disconnect().await.unwrap();
}

/// Issue 9 bounded memory: a query over 16 MiB was scanned only in its first packet, so a
/// temporary table created at its end went unseen and a move dropped it.
#[actix_rt::test]
async fn a_query_over_16_mib_with_a_temporary_table_at_its_end_keeps_the_session() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut c = connect(&p).await;
    let pad = "p".repeat(17 * 1024 * 1024);
    let sql = format!("SELECT LENGTH('{pad}'); CREATE TEMPORARY TABLE app1.tail_tmp (a INT)");
    c.query_drop(sql).await.unwrap();
    c.query_drop("INSERT INTO app1.tail_tmp VALUES (3)")
        .await
        .unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_millis(800)).await;
    assert_eq!(before, after, "a session with a temporary table must stay");
    let v: i64 = c
        .query_first("SELECT a FROM app1.tail_tmp")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v, 3);
    c.disconnect().await.unwrap();
}

/// Differential tester (`select_limit`): with `sql_select_limit = 2` in force the proxy's own
/// snapshot of `information_schema` came back with 2 rows, so a move carried only part of the
/// state; `max_join_size` refused that read outright; and the restore must quote a string with
/// a quote and a backslash so it survives `NO_BACKSLASH_ESCAPES`.
#[actix_rt::test]
async fn a_move_carries_all_state_whatever_the_session_limits_and_sql_mode() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut c = connect(&p).await;
    c.query_drop(
        "SET @u1 = 1, @u2 = 2, @u3 = 3, @u4 = 'it''s', \
         SESSION div_precision_increment = 2, SESSION group_concat_max_len = 77, \
         SESSION time_zone = '+03:00'",
    )
    .await
    .unwrap();
    c.query_drop("SET SESSION sql_mode = 'ANSI_QUOTES,NO_BACKSLASH_ESCAPES'")
        .await
        .unwrap();
    c.query_drop("SET @s = 'it''s a \\ backslash'")
        .await
        .unwrap();
    c.query_drop("SET sql_select_limit = 2, max_join_size = 1000")
        .await
        .unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after, "the session should have moved");
    let row: (i64, i64, i64, String, String) = c
        .query_first("SELECT @u1, @u2, @u3, @u4, @s")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row, (1, 2, 3, "it's".into(), "it's a \\ backslash".into()));
    let vars: (u64, u64, String, String, u64, u64, u64) = c
        .query_first(
            "SELECT @@div_precision_increment, @@group_concat_max_len, @@time_zone, \
             @@sql_mode, @@sql_select_limit, @@max_join_size, @@sql_big_selects",
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        vars,
        (
            2,
            77,
            "+03:00".into(),
            "ANSI_QUOTES,NO_BACKSLASH_ESCAPES".into(),
            2,
            1000,
            0
        )
    );
    c.disconnect().await.unwrap();
}

/// Differential tester (`session_results`): `LAST_INSERT_ID()` is session state that lasts
/// across statements; a move lost it (the new session said 0).
#[actix_rt::test]
async fn last_insert_id_is_carried_by_a_move() {
    let Some((a, b)) = servers() else { return };
    let p = proxy(&[addr(a), addr(b)]).await;
    let mut c = connect(&p).await;
    c.query_drop("SELECT LAST_INSERT_ID(77)").await.unwrap();
    let before = port(&mut c).await;
    let after = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_ne!(before, after, "the session should have moved");
    let id: u64 = c
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 77);
    // and back, on the snapshot's fast path (no carried state changed since the move)
    c.query_drop("SELECT LAST_INSERT_ID(78)").await.unwrap();
    let back = drain_and_move(&p, &mut c, Duration::from_secs(5)).await;
    assert_eq!(back, before);
    let id: u64 = c
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(id, 78);
    c.disconnect().await.unwrap();
}
