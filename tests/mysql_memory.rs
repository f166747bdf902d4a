//! Memory of idle `protocol: mysql` sessions, against a real MariaDB: between commands a session
//! holds no read or write buffer, also after it relayed a long row (its grown buffers are given
//! back, not kept for the session's life).
//!
//! The proxy runs at the actor level on the test's own thread (a `ScoreRouter` and a loopback
//! listener starting one `MysqlConn` per client), so `switchyard::wire::buffers_held` counts
//! exactly the buffers its sessions hold.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use mysql_async::prelude::*;
use mysql_async::{Conn, OptsBuilder};
use switchyard::wire::buffers_held;
use switchyard::{BackendHealth, BackendsChanged, RouterConfig, ScoreRouter};
use switchyard_server::entry::{ConnStart, Entry};
use switchyard_server::mysql::{MysqlConfig, MysqlConn, MysqlUsers};
use switchyard_testkit::MariaDb;
use tokio::net::TcpListener;

const USER: &str = "mem";
const PASSWORD: &str = "mem-pw";
/// The long row: several times any pooled buffer, like the 4 MB rows of issue 9.
const ROW: usize = 4 << 20;

fn server() -> Option<&'static MariaDb> {
    static S: std::sync::OnceLock<Option<MariaDb>> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let db = MariaDb::start()?;
        db.sql(&format!(
            "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
             GRANT ALL ON *.* TO '{USER}'@'%'; \
             CREATE DATABASE m; CREATE TABLE m.big (id INT PRIMARY KEY, b LONGBLOB); \
             INSERT INTO m.big VALUES (1, REPEAT('x', {ROW}));"
        ));
        Some(db)
    })
    .as_ref()
}

/// A router over `db` and a listener starting a `MysqlConn` per client, on this thread.
async fn proxy(db: &MariaDb) -> SocketAddr {
    let router = ScoreRouter::new(RouterConfig {
        rebalance_interval: Duration::ZERO,
        ..Default::default()
    })
    .start();
    let backends: HashMap<String, BackendHealth> =
        HashMap::from([(db.addr().to_string(), BackendHealth::healthy())]);
    router
        .send(BackendsChanged {
            backends,
            error: None,
        })
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut users = MysqlUsers::new();
    users.add(USER, Some(PASSWORD), None).unwrap();
    let cfg = Arc::new(MysqlConfig {
        users,
        ..Default::default()
    });
    let entry = Entry::new(router, Duration::from_secs(2));
    actix::spawn(async move {
        let mut id = 0;
        while let Ok((stream, _)) = listener.accept().await {
            id += 1;
            MysqlConn::new(ConnStart::from_stream(id, stream, &entry), cfg.clone()).start();
        }
    });
    addr
}

async fn connect(addr: SocketAddr) -> Conn {
    let opts = OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(addr.port())
        .user(Some(USER))
        .pass(Some(PASSWORD))
        .prefer_socket(false);
    Conn::new(opts).await.unwrap()
}

/// Lets the sessions run until they wait for their client again; returns the buffers they
/// still hold then. Yields rather than sleeps: everything runs on this thread.
async fn held_once_idle() -> usize {
    for _ in 0..1000 {
        if buffers_held() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    buffers_held()
}

#[actix_rt::test]
async fn idle_sessions_hold_no_buffer_before_or_after_relaying_a_long_row() {
    let Some(db) = server() else { return };
    let addr = proxy(db).await;
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(connect(addr).await);
    }
    assert_eq!(held_once_idle().await, 0, "logged-in idle sessions");

    for c in &mut conns {
        let one: Option<u8> = c.query_first("SELECT 1").await.unwrap();
        assert_eq!(one, Some(1));
    }
    assert_eq!(held_once_idle().await, 0, "after a short query");

    let row: Option<Vec<u8>> = conns[0]
        .query_first("SELECT b FROM m.big WHERE id = 1")
        .await
        .unwrap();
    assert_eq!(row.map(|r| r.len()), Some(ROW));
    assert_eq!(held_once_idle().await, 0, "after relaying a 4 MiB row");

    // the session still works, and a short query after the long row holds nothing either
    let one: Option<u8> = conns[0].query_first("SELECT 1").await.unwrap();
    assert_eq!(one, Some(1));
    assert_eq!(held_once_idle().await, 0);
    for c in conns {
        c.disconnect().await.unwrap();
    }
}
