//! The testkit's Galera cluster: it forms, shares writes, and survives a `kill -9` of a node that
//! is then restarted (what issue 10's failover tests build on).

use std::time::{Duration, Instant};

use switchyard_testkit::Galera;

#[test]
fn a_killed_node_rejoins_and_sees_the_writes_made_while_it_was_down() {
    let Some(g) = Galera::start() else { return };
    eprintln!("galera: 3 nodes Synced in {:?}", g.started_in());
    g.sql(
        0,
        "CREATE DATABASE k; CREATE TABLE k.t (id INT PRIMARY KEY)",
    );
    g.sql(0, "INSERT INTO k.t VALUES (1)");
    // every node sees a write made on another
    for node in 0..3 {
        assert_eq!(
            g.sql(
                node,
                "SET SESSION wsrep_sync_wait = 1; SELECT COUNT(*) FROM k.t"
            )
            .trim(),
            "1"
        );
    }

    g.kill9(2);
    assert!(!g.is_running(2), "node 3 still running after kill9");
    // the survivors drop it from the view and keep accepting writes
    let deadline = Instant::now() + Duration::from_secs(30);
    while g.status(0, "wsrep_cluster_size").as_deref() != Some("2") {
        assert!(Instant::now() < deadline, "node 3 never left the view");
        std::thread::sleep(Duration::from_millis(100));
    }
    g.sql(1, "INSERT INTO k.t VALUES (2)");

    let restarted = Instant::now();
    g.restart(2);
    eprintln!("galera: node 3 rejoined in {:?}", restarted.elapsed());
    assert_eq!(
        g.sql(
            2,
            "SET SESSION wsrep_sync_wait = 1; SELECT GROUP_CONCAT(id ORDER BY id) FROM k.t"
        )
        .trim(),
        "1,2"
    );
}
