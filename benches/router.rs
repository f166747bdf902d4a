//! Issue 2 benchmark: route decisions through the [`ScoreRouter`] actor against the same scoring
//! behind a `std::sync::Mutex`, with 10, 100 and 1,000 backends and 10k registered connections.
//!
//! The baseline is the router's own scoring code (`ScoreRouter::route` and `conn_created`, what
//! the handlers run) behind a mutex. One operation is a route decision and its release (`Route` + `ConnCreated { conn: None }`), so
//! the table keeps its size. Criterion measures throughput; per-operation latencies (p50/p99) are
//! recorded in a plain loop and printed, then a summary gives every figure as a ratio against the
//! mutex baseline of the same run. The rebalance convergence measurement is `benches/rebalance.rs`.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix::SystemRunner;
use criterion::{BenchmarkId, Criterion, Throughput};
use futures::future::join_all;
use switchyard::{
    BackendHealth, BackendInst, BackendsChanged, ConnCount, ConnCreated, ConnHandle, Redirect,
    Route, RouterConfig, ScoreRouter,
};

/// Connections registered before measuring.
const CONNS: u64 = 10_000;
/// Backend counts measured.
const BACKEND_COUNTS: [usize; 3] = [10, 100, 1_000];
/// Operations timed one by one for the latency percentiles.
const LATENCY_OPS: usize = 100_000;
/// Route requests in flight at once in the pipelined measurement: actix's default mailbox
/// capacity, beyond which senders park (64 in flight measured slower still).
const PIPELINE: usize = 16;
/// Criterion group of the throughput measurements.
const GROUP: &str = "route_pair";

fn backend_addr(i: usize) -> String {
    format!("10.0.{}.{}:4000", i / 256, i % 256)
}

// ---------------------------------------------------------------------------------------------
// The actor under test
// ---------------------------------------------------------------------------------------------

/// Stands in for every registered connection; the router never redirects with the tick off.
struct Sink;

impl Actor for Sink {
    type Context = Context<Self>;
}

impl Handler<Redirect> for Sink {
    type Result = ();
    fn handle(&mut self, _: Redirect, _: &mut Context<Self>) {}
}

/// A router with `n` healthy backends and [`CONNS`] connections registered through it.
async fn start_router(n: usize) -> Addr<ScoreRouter> {
    let router = ScoreRouter::new(RouterConfig {
        rebalance_interval: Duration::ZERO,
        ..Default::default()
    })
    .start();
    let backends = (0..n)
        .map(|i| (backend_addr(i), BackendHealth::healthy()))
        .collect();
    router
        .send(BackendsChanged {
            backends,
            error: None,
        })
        .await
        .expect("router alive");
    let sink = Sink.start().recipient::<Redirect>();
    for id in 0..CONNS {
        let inst = route(&router).await;
        router.do_send(ConnCreated {
            backend: inst.addr().to_string(),
            conn: Some(ConnHandle::new(id, sink.clone())),
        });
    }
    let registered = router.send(ConnCount).await.expect("router alive");
    assert_eq!(registered as u64, CONNS, "every connection registered");
    router
}

async fn route(router: &Addr<ScoreRouter>) -> BackendInst {
    router
        .send(Route::default())
        .await
        .expect("router alive")
        .expect("a healthy backend")
}

/// One operation: a route decision, then its release (as `BackendSelector::finish(None)` does).
async fn actor_pair(router: &Addr<ScoreRouter>) {
    let inst = route(router).await;
    router.do_send(ConnCreated {
        backend: black_box(inst).addr().to_string(),
        conn: None,
    });
}

/// `ops` operations with [`PIPELINE`] route requests in flight at a time.
async fn actor_pipelined(router: &Addr<ScoreRouter>, ops: u64) {
    let mut left = ops;
    while left > 0 {
        let batch = left.min(PIPELINE as u64) as usize;
        left -= batch as u64;
        let routed = join_all((0..batch).map(|_| router.send(Route::default()))).await;
        for inst in routed {
            let inst = inst.expect("router alive").expect("a healthy backend");
            router.do_send(ConnCreated {
                backend: black_box(inst).addr().to_string(),
                conn: None,
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The baseline: the same scoring behind a mutex, called directly
// ---------------------------------------------------------------------------------------------

/// The router's own scoring (`ScoreRouter::route` / `conn_created`, the code the actor's
/// handlers run) behind a `std::sync::Mutex` and called directly: the difference to the actor is
/// the price of messaging, nothing else.
struct MutexTable {
    router: ScoreRouter,
}

impl MutexTable {
    /// `n` healthy backends and [`CONNS`] connections registered (inside the actix system: the
    /// connections' redirect recipient is an actor).
    fn new(n: usize, sink: &Recipient<Redirect>) -> Self {
        let mut router = ScoreRouter::new(RouterConfig {
            rebalance_interval: Duration::ZERO,
            ..Default::default()
        });
        router.backends_changed(BackendsChanged {
            backends: (0..n)
                .map(|i| (backend_addr(i), BackendHealth::healthy()))
                .collect(),
            error: None,
        });
        for id in 0..CONNS {
            let inst = router.route(&[]).expect("a backend");
            router.conn_created(inst.addr(), Some(ConnHandle::new(id, sink.clone())));
        }
        Self { router }
    }
}

fn mutex_pair(table: &Mutex<MutexTable>) {
    let inst = table
        .lock()
        .expect("not poisoned")
        .router
        .route(&[])
        .expect("a backend");
    let backend = black_box(inst).addr().to_string();
    table
        .lock()
        .expect("not poisoned")
        .router
        .conn_created(&backend, None);
}

// ---------------------------------------------------------------------------------------------
// Latency loop and summary
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Latency {
    mean: Duration,
    p50: Duration,
    p99: Duration,
    p999: Duration,
}

fn latency_of(mut samples: Vec<Duration>) -> Latency {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Latency {
        mean: samples.iter().sum::<Duration>() / samples.len() as u32,
        p50: at(0.50),
        p99: at(0.99),
        p999: at(0.999),
    }
}

/// Runs `f` as a task on the system's arbiter, as a connection would run, and waits for it.
///
/// Awaiting the router straight from `block_on` would make every reply wake the runtime's
/// driver (an eventfd write and an `epoll_wait` per round trip); a spawned task is woken
/// through the local run queue instead.
fn in_task<T: 'static>(sys: &SystemRunner, f: impl std::future::Future<Output = T> + 'static) -> T {
    sys.block_on(async { actix_rt::spawn(f).await.expect("bench task finished") })
}

fn mutex_latency(table: &Mutex<MutexTable>) -> Latency {
    let mut samples = Vec::with_capacity(LATENCY_OPS);
    for _ in 0..LATENCY_OPS {
        let t = Instant::now();
        mutex_pair(table);
        samples.push(t.elapsed());
    }
    latency_of(samples)
}

fn actor_latency(sys: &SystemRunner, router: &Addr<ScoreRouter>) -> Latency {
    let router = router.clone();
    in_task(sys, async move {
        let router = &router;
        let mut samples = Vec::with_capacity(LATENCY_OPS);
        for _ in 0..LATENCY_OPS {
            let t = Instant::now();
            actor_pair(router).await;
            samples.push(t.elapsed());
        }
        latency_of(samples)
    })
}

/// Criterion's mean time per operation, read back from its estimates of this run.
fn criterion_mean_ns(function: &str, n: usize) -> Option<f64> {
    let root = std::env::var_os("CRITERION_HOME")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("criterion"))
        })
        .unwrap_or_else(|| PathBuf::from("target/criterion"));
    let path = root
        .join(GROUP)
        .join(function)
        .join(n.to_string())
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn ns(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

fn main() {
    let full_run = std::env::args().any(|a| a == "--bench");
    let mut c = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let sys = System::new();
    let sink = sys.block_on(async { Sink.start().recipient::<Redirect>() });
    let fixtures: Vec<(usize, Mutex<MutexTable>, Addr<ScoreRouter>)> = BACKEND_COUNTS
        .iter()
        .map(|&n| {
            (
                n,
                Mutex::new(MutexTable::new(n, &sink)),
                sys.block_on(start_router(n)),
            )
        })
        .collect();

    let pipelined = format!("actor_pipelined_{PIPELINE}");
    let mut group = c.benchmark_group(GROUP);
    group.throughput(Throughput::Elements(1));
    for (n, table, router) in &fixtures {
        group.bench_with_input(BenchmarkId::new("mutex", n), table, |b, table| {
            b.iter(|| mutex_pair(table))
        });
        group.bench_with_input(BenchmarkId::new("actor", n), router, |b, router| {
            b.iter_custom(|iters| {
                let router = router.clone();
                in_task(&sys, async move {
                    let t = Instant::now();
                    for _ in 0..iters {
                        actor_pair(&router).await;
                    }
                    t.elapsed()
                })
            })
        });
        group.bench_with_input(
            BenchmarkId::new(pipelined.as_str(), n),
            router,
            |b, router| {
                b.iter_custom(|iters| {
                    let router = router.clone();
                    in_task(&sys, async move {
                        let t = Instant::now();
                        actor_pipelined(&router, iters).await;
                        t.elapsed()
                    })
                })
            },
        );
    }
    group.finish();

    if !full_run {
        c.final_summary();
        return;
    }

    println!(
        "\n== issue 2: per-operation latency ({LATENCY_OPS} sequential ops, {CONNS} conns) =="
    );
    println!(
        "{:>8}  {:>6}  {:>9}  {:>9}  {:>9}  {:>9}",
        "backends", "path", "mean ns", "p50 ns", "p99 ns", "p99.9 ns"
    );
    let mut lat = HashMap::new();
    for (n, table, router) in &fixtures {
        for (path, l) in [
            ("mutex", mutex_latency(table)),
            ("actor", actor_latency(&sys, router)),
        ] {
            println!(
                "{n:>8}  {path:>6}  {:>9.0}  {:>9.0}  {:>9.0}  {:>9.0}",
                ns(l.mean),
                ns(l.p50),
                ns(l.p99),
                ns(l.p999)
            );
            lat.insert((*n, path), l);
        }
    }

    println!("\n== issue 2: summary (throughput from criterion means, ratio = actor / mutex throughput) ==");
    println!(
        "{:>8}  {:>10}  {:>10}  {:>10}  {:>8}  {:>10}  {:>10}  {:>8}",
        "backends",
        "mutex op/s",
        "actor op/s",
        "pipe op/s",
        "actor/mx",
        "pipe/mx",
        "p99 actor",
        "p99 mx"
    );
    let mean = |f: &str, n: usize| criterion_mean_ns(f, n);
    for &n in &BACKEND_COUNTS {
        let (Some(m), Some(a), Some(p)) = (mean("mutex", n), mean("actor", n), mean(&pipelined, n))
        else {
            println!("{n:>8}  (criterion estimates not found)");
            continue;
        };
        println!(
            "{n:>8}  {:>10.0}  {:>10.0}  {:>10.0}  {:>8.3}  {:>10.3}  {:>8.0}ns  {:>6.0}ns",
            1e9 / m,
            1e9 / a,
            1e9 / p,
            m / a,
            m / p,
            ns(lat[&(n, "actor")].p99),
            ns(lat[&(n, "mutex")].p99),
        );
    }
    for f in ["mutex", "actor", pipelined.as_str()] {
        if let (Some(small), Some(large)) = (mean(f, 10), mean(f, 1_000)) {
            println!(
                "cost of 1,000 vs 10 backends, {f}: {:.2}x (target <= 2x)",
                large / small
            );
        }
    }
    c.final_summary();
}
