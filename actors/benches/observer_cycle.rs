//! Issue 3 benchmark: one `BackendObserver` cycle over 500 loopback backends, 10 of them hung
//! (they accept and never greet), with the real `DefaultHealthCheck` and `dial_timeout` 200 ms.
//!
//! A cycle is timed from `Refresh` to the `BackendsChanged` it produces. Checks run at most
//! `concurrency` at a time, so the hung backends cost one `dial_timeout` in parallel instead of
//! ten in a row; the figure to watch is cycle time / `dial_timeout` (target ≤ 1.5). The same run
//! with `concurrency: 1` shows what the bound buys. Run with
//! `cargo bench -p switchyard --bench observer_cycle`.

use std::time::{Duration, Instant};

use actix::prelude::*;
use switchyard::{BackendObserver, DefaultHealthCheck, HealthCheckConfig, Refresh, StaticFetcher};
use switchyard_testkit::doubles::{SqlBehaviour, SqlDouble};
use switchyard_testkit::Collector;

const BACKENDS: usize = 500;
const HUNG: usize = 10;
const DIAL: Duration = Duration::from_millis(200);

/// Times `cycles` cycles (after one warm-up) with `concurrency` checks at once.
async fn measure(addrs: &[String], concurrency: usize, cycles: usize) -> Vec<Duration> {
    let cfg = HealthCheckConfig {
        interval: Duration::from_secs(3600),
        max_retries: 0,
        dial_timeout: DIAL,
        concurrency,
        ..HealthCheckConfig::default()
    };
    let (collector, mut rx) = Collector::start_new();
    let observer = BackendObserver::new(
        StaticFetcher::new(addrs.to_vec()),
        DefaultHealthCheck::new(cfg.clone()),
        cfg,
        collector.clone().recipient(),
    )
    .start();
    let warm_up = rx.recv().await.expect("first cycle");
    assert_eq!(warm_up.backends.len(), BACKENDS - HUNG);
    let mut times = Vec::with_capacity(cycles);
    for _ in 0..cycles {
        let started = Instant::now();
        observer.do_send(Refresh);
        rx.recv().await.expect("a report per cycle");
        times.push(started.elapsed());
    }
    observer.do_send(switchyard::StopObserver);
    drop(collector);
    times
}

fn report(label: &str, mut times: Vec<Duration>) {
    times.sort();
    let ratio = |d: Duration| d.as_secs_f64() / DIAL.as_secs_f64();
    let (min, median, max) = (times[0], times[times.len() / 2], times[times.len() - 1]);
    println!(
        "{label:<16} cycles {:>3}  min {:>8.1?}  median {:>8.1?}  max {:>8.1?}  median/dial_timeout {:.2}  max/dial_timeout {:.2}",
        times.len(),
        min,
        median,
        max,
        ratio(median),
        ratio(max)
    );
}

fn main() {
    // `cargo test --benches` runs this with `--bench` absent; keep that quick.
    let full = std::env::args().any(|a| a == "--bench");
    let cycles = if full { 20 } else { 2 };
    // The doubles get a runtime (and thread) of their own, as real backends would: the figure is
    // the observer's, not the doubles' competing for its thread.
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("doubles' runtime");
    let doubles: Vec<SqlDouble> = servers.block_on(async {
        let mut doubles = Vec::with_capacity(BACKENDS);
        for i in 0..BACKENDS {
            let behaviour = if i % (BACKENDS / HUNG) == 0 {
                SqlBehaviour::Silent
            } else {
                SqlBehaviour::Greet("8.0.11-TiDB-v8.5.0".into())
            };
            doubles.push(SqlDouble::start(behaviour).await);
        }
        doubles
    });
    let addrs: Vec<String> = doubles.iter().map(|d| d.addr().to_string()).collect();
    System::new().block_on(async move {
        println!(
            "observer cycle: {BACKENDS} loopback backends, {HUNG} hung, dial_timeout {DIAL:?}, max_retries 0"
        );
        report("concurrency 64", measure(&addrs, 64, cycles).await);
        report(
            "concurrency 1",
            measure(&addrs, 1, if full { 3 } else { 1 }).await,
        );
    });
}
