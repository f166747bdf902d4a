//! A seeded storm of events against `ScoreRouter`: routes (finished or left pending), connect
//! failures, closes, rebalances, redirect successes, failures and closes mid-redirect, backend
//! flaps, scale-out and drains. After every step the router's scores and counts must equal what
//! the connections themselves believe, and its own invariants must hold.

mod common;

use common::Tester;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use switchyard::*;

async fn storm(seed: u64, steps: usize) {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tester::new();
    t.add_backends(3).await;
    let mut pending: Vec<String> = Vec::new();
    let mut counts = [0usize; 10];
    for step in 0..steps {
        let kind = rng.gen_range(0..10);
        counts[kind] += 1;
        match kind {
            // A connection arrives and connects.
            0 | 1 => {
                if let Ok(inst) = t.route().await {
                    t.finish(inst.addr(), true).await;
                }
            }
            // A route is left pending, or a pending one finishes (connected or not).
            2 => {
                if pending.len() < 5 && rng.gen_bool(0.5) {
                    if let Ok(inst) = t.route().await {
                        pending.push(inst.addr().to_string());
                    }
                } else if !pending.is_empty() {
                    let b = pending.swap_remove(rng.gen_range(0..pending.len()));
                    t.finish(&b, rng.gen_bool(0.7)).await;
                }
            }
            // A connection closes, redirecting or not.
            3 => {
                if let Some(id) = pick(&mut rng, t.conns.keys().copied()) {
                    t.close(id).await;
                }
            }
            4 => {
                let max = rng.gen_range(1..10);
                t.rebalance(max).await;
            }
            // A redirect in flight ends.
            5 | 6 => {
                let moving = t
                    .conns
                    .iter()
                    .filter(|(_, c)| c.redirecting.is_some())
                    .map(|(id, _)| *id);
                if let Some(id) = pick(&mut rng, moving) {
                    t.finish_redirect(id, kind == 5 || rng.gen_bool(0.5)).await;
                }
            }
            // A backend flaps.
            7 => {
                let known: Vec<String> = t.health.keys().cloned().collect();
                if let Some(addr) = pick(&mut rng, known.into_iter()) {
                    let health = match rng.gen_range(0..4) {
                        0 => BackendHealth::down("flap"),
                        1 => BackendHealth {
                            status: BackendStatus::RunSlow,
                            ..Default::default()
                        },
                        _ => BackendHealth::healthy(),
                    };
                    t.set_health(&addr, health).await;
                }
            }
            // Scale out, now and then.
            8 => {
                if t.health.len() < 8 && rng.gen_bool(0.2) {
                    t.add_backends(1).await;
                }
            }
            // An operator drains or undrains.
            _ => {
                let known: Vec<String> = t.health.keys().cloned().collect();
                if let Some(addr) = pick(&mut rng, known.into_iter()) {
                    // Unknown when the router dropped it: that is an error, not a panic.
                    let _ = t.set_drained(&addr, rng.gen_bool(0.3)).await;
                }
            }
        }
        // Checks everything after every step (the tester's check reads the router's view).
        check_step(&t, seed, step).await;
    }
    assert!(
        counts.iter().all(|c| *c > 0),
        "every kind of event ran: {counts:?}"
    );
    assert!(t.conn_count().await > 0 || steps < 100);
}

async fn check_step(t: &Tester, seed: u64, step: usize) {
    let r = t.router.send(CheckInvariants).await.unwrap();
    assert!(r.is_ok(), "seed {seed} step {step}: {r:?}");
    t.check().await;
}

fn pick<T>(rng: &mut SmallRng, items: impl Iterator<Item = T>) -> Option<T> {
    let items: Vec<T> = items.collect();
    if items.is_empty() {
        None
    } else {
        let i = rng.gen_range(0..items.len());
        items.into_iter().nth(i)
    }
}

#[actix_rt::test]
async fn event_storm_keeps_scores_equal_to_what_connections_believe_seed_1() {
    storm(1, 3000).await;
}

#[actix_rt::test]
async fn event_storm_keeps_scores_equal_to_what_connections_believe_seed_2() {
    storm(2, 3000).await;
}

#[actix_rt::test]
async fn event_storm_keeps_scores_equal_to_what_connections_believe_seed_3() {
    storm(0x5eed, 3000).await;
}
