//! Issue 2 benchmark: rebalance of 10k connections after a scale-out from 1 to 2 backends, with
//! the default [`RouterConfig`] in real time.
//!
//! Each connection is an actor that acknowledges a [`Redirect`] at once with
//! [`RedirectSucceeded`] and counts its moves. The run polls [`GetBackends`] until the busiest
//! backend holds at most 1.2x the connections of the idlest, then reports the time and how many
//! connections moved more than once. A one-shot wall-clock measurement of seconds fits
//! criterion's repeated sampling badly, so this is a plain harness.

use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use switchyard::{
    BackendHealth, BackendsChanged, ConnCount, ConnCreated, ConnHandle, GetBackends, Redirect,
    RedirectSucceeded, Route, RouterConfig, ScoreRouter, StopRouter,
};

/// Connections on the first backend before the scale-out.
const CONNS: u64 = 10_000;
/// Independent runs (each a fresh router and fresh connections).
const RUNS: usize = 3;
/// The target ratio busiest / idlest.
const TARGET_RATIO: f64 = 1.2;
/// Poll period of `GetBackends`.
const POLL: Duration = Duration::from_millis(5);
/// Give up after this long.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Counts unchanged this long mean the router has stopped moving connections.
const STILL_FOR: Duration = Duration::from_millis(300);
/// Extra time watched after convergence, to catch moves the router still makes.
const SETTLE: Duration = Duration::from_millis(500);

const FIRST: &str = "10.0.0.1:4000";
const SECOND: &str = "10.0.0.2:4000";

/// A simulated connection: moves the moment it is asked to.
struct SimConn {
    id: u64,
    backend: String,
    router: Recipient<RedirectSucceeded>,
    moves: u32,
}

impl Actor for SimConn {
    type Context = Context<Self>;
}

impl Handler<Redirect> for SimConn {
    type Result = ();
    fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
        let to = msg.to.addr().to_string();
        let from = std::mem::replace(&mut self.backend, to.clone());
        self.moves += 1;
        self.router.do_send(RedirectSucceeded {
            from,
            to,
            conn_id: self.id,
        });
    }
}

/// How often this connection moved.
#[derive(Message)]
#[rtype(result = "u32")]
struct Moves;

impl Handler<Moves> for SimConn {
    type Result = u32;
    fn handle(&mut self, _: Moves, _: &mut Context<Self>) -> u32 {
        self.moves
    }
}

fn healthy(addr: &str) -> BackendsChanged {
    BackendsChanged {
        backends: [(addr.to_string(), BackendHealth::healthy())].into(),
        error: None,
    }
}

/// (busiest, idlest) connection counts.
async fn counts(router: &Addr<ScoreRouter>) -> (usize, usize) {
    let all = router.send(GetBackends).await.expect("router alive");
    let max = all.iter().map(|b| b.conn_count).max().unwrap_or(0);
    let min = all.iter().map(|b| b.conn_count).min().unwrap_or(0);
    (max, min)
}

fn ratio((busiest, idlest): (usize, usize)) -> f64 {
    busiest as f64 / idlest as f64
}

struct Outcome {
    /// When busiest / idlest first reached [`TARGET_RATIO`].
    converged: Option<Duration>,
    /// When the counts last changed, once the router stopped moving connections.
    settled: Option<Duration>,
    counts_at_convergence: (usize, usize),
    final_counts: (usize, usize),
    moved: usize,
    moved_twice: usize,
    total_moves: u64,
}

async fn run_once(cfg: &RouterConfig) -> Outcome {
    let router = ScoreRouter::new(cfg.clone()).start();
    router.send(healthy(FIRST)).await.expect("router alive");
    let mut conns = Vec::with_capacity(CONNS as usize);
    for id in 0..CONNS {
        let inst = router
            .send(Route::default())
            .await
            .expect("router alive")
            .expect("a healthy backend");
        let conn = SimConn {
            id,
            backend: inst.addr().to_string(),
            router: router.clone().recipient(),
            moves: 0,
        }
        .start();
        router.do_send(ConnCreated {
            backend: inst.addr().to_string(),
            conn: Some(ConnHandle::new(id, conn.clone().recipient())),
        });
        conns.push(conn);
    }
    let registered = router.send(ConnCount).await.expect("router alive");
    assert_eq!(registered as u64, CONNS, "every connection registered");

    let start = Instant::now();
    router.send(healthy(SECOND)).await.expect("router alive");
    let mut converged = None;
    let mut settled = None;
    let mut counts_at_convergence = (0, 0);
    let mut last = (CONNS as usize, 0);
    let mut last_change = Duration::ZERO;
    let mut next_report = Duration::from_secs(1);
    while start.elapsed() < GIVE_UP {
        actix_rt::time::sleep(POLL).await;
        let c = counts(&router).await;
        let elapsed = start.elapsed();
        if c != last {
            last = c;
            last_change = elapsed;
        }
        if c.1 > 0 && ratio(c) <= TARGET_RATIO {
            converged = Some(elapsed);
            counts_at_convergence = c;
            break;
        }
        if c.1 > 0 && elapsed - last_change >= STILL_FOR {
            settled = Some(last_change);
            counts_at_convergence = c;
            break;
        }
        if elapsed >= next_report {
            println!(
                "  t={:>5.2}s busiest={} idlest={}",
                elapsed.as_secs_f64(),
                c.0,
                c.1
            );
            next_report += Duration::from_secs(1);
        }
    }
    actix_rt::time::sleep(SETTLE).await;
    let final_counts = counts(&router).await;
    let moves: Vec<u32> = join_all(conns.iter().map(|c| c.send(Moves)))
        .await
        .into_iter()
        .map(|m| m.expect("connection alive"))
        .collect();
    router.do_send(StopRouter);
    Outcome {
        converged,
        settled,
        counts_at_convergence,
        final_counts,
        moved: moves.iter().filter(|&&m| m > 0).count(),
        moved_twice: moves.iter().filter(|&&m| m > 1).count(),
        total_moves: moves.iter().map(|&m| u64::from(m)).sum(),
    }
}

fn main() {
    let cfg = RouterConfig::default();
    println!(
        "== issue 2: rebalance of {CONNS} connections after scale-out 1 -> 2 backends ==\n\
         config: rebalance_interval={:?} conns_per_tick={} max_score_ratio={} \
         (nominal rate {:.0} moves/s)",
        cfg.rebalance_interval,
        cfg.conns_per_tick,
        cfg.max_score_ratio,
        cfg.conns_per_tick as f64 / cfg.rebalance_interval.as_secs_f64()
    );
    let sys = System::new();
    let mut times = Vec::new();
    let mut settled = Vec::new();
    for run in 1..=RUNS {
        println!("run {run}:");
        let o = sys.block_on(run_once(&cfg));
        match o.converged {
            Some(t) => {
                println!(
                    "  converged in {:.3}s (busiest={} idlest={} ratio={:.3}); \
                     {:.0} moves/s",
                    t.as_secs_f64(),
                    o.counts_at_convergence.0,
                    o.counts_at_convergence.1,
                    ratio(o.counts_at_convergence),
                    o.moved as f64 / t.as_secs_f64()
                );
                times.push(t);
            }
            None => match o.settled {
                Some(t) => {
                    println!(
                        "  NOT converged: the router stopped moving at {:.3}s with busiest={} \
                         idlest={} ratio={:.4} > {TARGET_RATIO}; {:.0} moves/s",
                        t.as_secs_f64(),
                        o.counts_at_convergence.0,
                        o.counts_at_convergence.1,
                        ratio(o.counts_at_convergence),
                        o.moved as f64 / t.as_secs_f64()
                    );
                    settled.push(t);
                }
                None => println!("  did not settle within {GIVE_UP:?}"),
            },
        }
        println!(
            "  after {SETTLE:?} more: busiest={} idlest={}; connections moved={} \
             moved more than once={} total moves={}",
            o.final_counts.0, o.final_counts.1, o.moved, o.moved_twice, o.total_moves
        );
    }
    for (what, mut times) in [
        ("convergence to busiest/idlest <= 1.2", times),
        ("settling short of 1.2 (router stopped)", settled),
    ] {
        if times.is_empty() {
            continue;
        }
        times.sort();
        println!(
            "{what} in {} of {RUNS} runs: min {:.3}s median {:.3}s max {:.3}s (target <= 5s)",
            times.len(),
            times[0].as_secs_f64(),
            times[times.len() / 2].as_secs_f64(),
            times[times.len() - 1].as_secs_f64()
        );
    }
}
