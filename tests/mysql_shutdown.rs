//! Graceful shutdown in `protocol: mysql`: the real `switchyard` binary in front of a real
//! MariaDB, real clients (`mysql_async`). On SIGTERM an idle session is closed at once and a
//! session inside a transaction only after its COMMIT, so the process exits long before
//! `shutdown_timeout`.

mod support;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use mysql_async::Conn;
use support::{wait_until, Service};
use switchyard_testkit::MariaDb;

const USER: &str = "app";
const PASSWORD: &str = "app-pw";

fn mysql_config(
    proxy: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    backend: std::net::SocketAddr,
) -> String {
    format!(
        "proxy: {{ listen: {proxy}, protocol: mysql }}\n\
         admin: {{ listen: {admin} }}\n\
         backends: {{ static: [{backend}] }}\n\
         health_check: {{ interval: 100ms, max_retries: 0, retry_interval: 50ms, dial_timeout: 2s }}\n\
         mysql: {{ users: [{{ name: {USER}, password: {PASSWORD} }}] }}\n\
         shutdown_timeout: 30s\n\
         log: {{ level: debug }}\n"
    )
}

async fn connect(svc: &Service) -> Conn {
    Conn::new(support::mysql_opts(svc.proxy.port(), USER, PASSWORD))
        .await
        .expect("log in through the proxy")
}

/// Queries `c` every 50 ms until a query fails (the proxy closed the session) or `within`
/// passes; true when it failed.
async fn closed_within(c: &mut Conn, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if c.query_drop("SELECT 1").await.is_err() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn sigterm_closes_idle_sessions_at_once_and_a_transaction_after_its_commit() {
    let Some(db) = MariaDb::start() else { return };
    db.sql(&format!(
        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
         GRANT ALL ON *.* TO '{USER}'@'%'; \
         CREATE DATABASE app1; CREATE TABLE app1.t (id INT PRIMARY KEY);"
    ));
    let mut svc = Service::start_with(|proxy, admin| mysql_config(proxy, admin, db.addr()));
    wait_until("the backend is healthy", Duration::from_secs(10), || {
        svc.backends().iter().any(|b| b["status"] == "healthy")
    });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_rt = rt.enter(); // the clients below are dropped inside it

    let (mut idle, mut in_tx) = rt.block_on(async {
        let mut idle = connect(&svc).await;
        idle.query_drop("SELECT 1")
            .await
            .expect("idle session works");
        let mut in_tx = connect(&svc).await;
        in_tx.query_drop("BEGIN").await.expect("BEGIN");
        in_tx
            .query_drop("INSERT INTO app1.t VALUES (1)")
            .await
            .expect("INSERT in the transaction");
        (idle, in_tx)
    });

    let sigterm = Instant::now();
    svc.signal(libc::SIGTERM);
    assert!(
        rt.block_on(closed_within(&mut idle, Duration::from_secs(5))),
        "the idle session should be closed soon after SIGTERM\n{}",
        svc.log()
    );

    // The transaction is still open: its session and the process stay until it ends.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        svc.child.try_wait().expect("try_wait").is_none(),
        "exited with a transaction open\n{}",
        svc.log()
    );
    rt.block_on(async {
        in_tx
            .query_drop("INSERT INTO app1.t VALUES (2)")
            .await
            .expect("the transaction goes on during shutdown");
        in_tx
            .query_drop("COMMIT")
            .await
            .expect("COMMIT succeeds during shutdown");
    });
    assert!(
        rt.block_on(closed_within(&mut in_tx, Duration::from_secs(5))),
        "the session should be closed after its COMMIT\n{}",
        svc.log()
    );

    let code = svc.wait_exit(Duration::from_secs(10).saturating_sub(sigterm.elapsed()));
    assert_eq!(code, Some(0), "{}", svc.log());
    assert!(
        sigterm.elapsed() < Duration::from_secs(10),
        "took {:?} of a 30 s shutdown_timeout",
        sigterm.elapsed()
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM app1.t").trim(),
        "2",
        "the commit landed"
    );
}

/// A `CALL` that opened a transaction and then failed leaves the proxy without a status packet
/// saying so: before closing the session at SIGTERM the proxy asks the server, and keeps the
/// session until its COMMIT (issue 9, observation 2).
#[test]
fn sigterm_keeps_a_session_whose_failed_call_opened_a_transaction_until_its_commit() {
    let Some(db) = MariaDb::start() else { return };
    db.sql(&format!(
        "CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}'; \
         GRANT ALL ON *.* TO '{USER}'@'%'; \
         CREATE DATABASE app1; CREATE TABLE app1.t (id INT PRIMARY KEY);"
    ));
    db.sql(
        "DELIMITER //
         CREATE PROCEDURE app1.fail_in_trx() BEGIN
           START TRANSACTION; INSERT INTO app1.t VALUES (7); SELECT * FROM app1.missing;
         END//
         DELIMITER ;",
    );
    let mut svc = Service::start_with(|proxy, admin| mysql_config(proxy, admin, db.addr()));
    wait_until("the backend is healthy", Duration::from_secs(10), || {
        svc.backends().iter().any(|b| b["status"] == "healthy")
    });
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let _in_rt = rt.enter();
    let mut c = rt.block_on(connect(&svc));
    let failed = rt.block_on(c.query_drop("CALL app1.fail_in_trx()"));
    assert!(failed.is_err(), "the procedure fails after its INSERT");

    svc.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        svc.child.try_wait().expect("try_wait").is_none(),
        "exited with a transaction open\n{}",
        svc.log()
    );
    rt.block_on(c.query_drop("COMMIT"))
        .expect("COMMIT succeeds during shutdown");
    assert!(
        rt.block_on(closed_within(&mut c, Duration::from_secs(5))),
        "the session should be closed after its COMMIT\n{}",
        svc.log()
    );
    assert_eq!(
        svc.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        svc.log()
    );
    assert_eq!(
        db.sql("SELECT COUNT(*) FROM app1.t").trim(),
        "1",
        "the commit landed"
    );
}
