//! Several routers sharing one pool through `PeerLoad`: routes follow the global load, and a
//! rebalance by several instances on the same global view converges without oscillating.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{manual_cfg, Tester};
use switchyard::*;

/// Connections per backend held by `t`.
fn own(t: &Tester) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for c in t.conns.values() {
        *m.entry(c.backend.clone()).or_default() += 1;
    }
    m
}

/// Every instance hears the sum of the others' counts, as the service's cluster poll sends it.
async fn exchange(ts: &mut [Tester]) {
    let owns: Vec<HashMap<String, usize>> = ts.iter().map(own).collect();
    for (i, t) in ts.iter_mut().enumerate() {
        let mut conns: HashMap<String, usize> = HashMap::new();
        for (j, o) in owns.iter().enumerate() {
            if i != j {
                for (b, n) in o {
                    *conns.entry(b.clone()).or_default() += n;
                }
            }
        }
        t.peer_load(conns).await;
    }
}

/// Global connections by backend, over every instance.
fn global(ts: &[Tester]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in ts {
        for (b, n) in own(t) {
            *m.entry(b).or_default() += n;
        }
    }
    m
}

fn ratio(g: &BTreeMap<String, usize>, backends: &[String]) -> f64 {
    let counts: Vec<usize> = backends
        .iter()
        .map(|b| g.get(b).copied().unwrap_or(0))
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0) as f64;
    let min = counts.iter().copied().min().unwrap_or(0) as f64;
    max / min.max(1.0)
}

#[actix_rt::test]
async fn three_instances_on_one_global_view_converge_without_moving_any_connection_twice() {
    tokio::time::pause();
    let cfg = RouterConfig {
        rebalance_interval: Duration::from_millis(10),
        ..RouterConfig::default()
    };
    let mut ts: Vec<Tester> = (0..3).map(|_| Tester::with_cfg(cfg.clone())).collect();
    // Backend 1 is down while A and B take 30 clients each; C has none.
    for t in ts.iter_mut() {
        let b = t.add_backends(2).await;
        t.kill(&b[1]).await;
    }
    let backends = vec![Tester::backend_name(0), Tester::backend_name(1)];
    ts[0].add_conns(30).await;
    ts[1].add_conns(30).await;
    exchange(&mut ts).await;
    // Backend 1 returns everywhere; each instance acts on the same global view (60, 0).
    for t in ts.iter_mut() {
        t.set_health(&backends[1], BackendHealth::healthy()).await;
    }
    let start = tokio::time::Instant::now();
    let mut converged_at = None;
    // 3 s of router time: ticks every 10 ms, moves answered at once, views exchanged every 100 ms
    // (so every instance acts ten ticks on a view before it hears of the others' moves).
    for step in 1..=300u32 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        for t in ts.iter_mut() {
            t.flush().await;
            t.finish_redirects(true).await;
        }
        if step % 10 == 0 {
            exchange(&mut ts).await;
        }
        let g = global(&ts);
        if ratio(&g, &backends) <= 1.2 {
            converged_at.get_or_insert(start.elapsed());
        } else {
            assert!(
                converged_at.is_none(),
                "balance swung back after converging: {g:?} at step {step}"
            );
        }
    }
    let converged_at = converged_at.expect("the pool converged");
    assert!(
        converged_at <= Duration::from_millis(500),
        "converged only after {converged_at:?}"
    );
    let g = global(&ts);
    assert!(ratio(&g, &backends) <= 1.2, "{g:?}");
    assert_eq!(g.values().sum::<usize>(), 60, "no connection lost: {g:?}");
    let mut moves = 0;
    for t in &ts {
        for (id, c) in &t.conns {
            assert!(c.moves <= 1, "connection {id} moved {} times", c.moves);
            moves += c.moves;
        }
        t.check().await;
    }
    assert!(moves <= 30, "{moves} moves for an excess of 30");
}

#[actix_rt::test]
async fn new_routes_go_where_the_whole_pool_is_idle() {
    let mut t = Tester::with_cfg(manual_cfg());
    let b = t.add_backends(2).await;
    t.peer_load(HashMap::from([(b[0].clone(), 20)])).await;
    t.add_conns(20).await;
    assert_eq!(own(&t).get(&b[1]).copied(), Some(20), "{:?}", own(&t));
    // A further client ties the pool (20/20): either backend is fair now.
    t.add_conns(2).await;
    assert_eq!(own(&t).get(&b[0]).copied().unwrap_or(0), 1);
    t.check().await;
}

#[actix_rt::test]
async fn peers_that_drop_out_leave_the_score() {
    let mut t = Tester::with_cfg(manual_cfg());
    let b = t.add_backends(2).await;
    t.peer_load(HashMap::from([(b[0].clone(), 50)])).await;
    let score = |t: &Vec<BackendSnapshot>, a: &str| t.iter().find(|s| s.addr == a).unwrap().score;
    assert_eq!(score(&t.backends().await, &b[0]), 50);
    t.peer_load(HashMap::new()).await;
    assert_eq!(score(&t.backends().await, &b[0]), 0);
    t.add_conns(2).await;
    assert_eq!(
        own(&t).len(),
        2,
        "alone again, routes spread: {:?}",
        own(&t)
    );
}

#[actix_rt::test]
async fn an_instance_moves_only_its_share_of_the_excess_per_view() {
    let mut t = Tester::with_cfg(manual_cfg());
    let b = t.add_backends(2).await;
    t.kill(&b[1]).await;
    t.add_conns(30).await;
    // Peers hold 30 more on backend 0: global (60, 0), excess 30, this instance's share 15.
    t.peer_load(HashMap::from([(b[0].clone(), 30)])).await;
    t.set_health(&b[1], BackendHealth::healthy()).await;
    t.peer_load(HashMap::from([(b[0].clone(), 29)])).await;
    let moved = t.rebalance(100).await;
    t.finish_redirects(true).await;
    assert_eq!(moved, 15, "(59 − 29.5) × 30 ÷ 59 = 15");
    assert_eq!(t.rebalance(100).await, 0, "nothing more on the same view");
    t.check().await;
}
