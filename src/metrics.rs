//! Prometheus metrics: the recorder, and the handles the data path increments.
//!
//! Everything goes through the `metrics` facade, so the library's own series (health-check
//! cycle time, per-backend check time and health) and the service's land in one registry that
//! `GET /metrics` renders. Hot-path counters are resolved to handles once ([`ProxyMetrics`]), so
//! a forwarded chunk costs one atomic add, not a registry lookup.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use switchyard::{BackendSnapshot, BackendStatus, RoutingState};

/// Bucket bounds (seconds) for every histogram: 100 µs to 30 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    30.0,
];

/// Every status a backend can have, for the one-hot `switchyard_backend_status` series.
const STATUSES: [BackendStatus; 5] = [
    BackendStatus::Healthy,
    BackendStatus::CannotConnect,
    BackendStatus::MemoryHigh,
    BackendStatus::RunSlow,
    BackendStatus::SchemaOutdated,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets(BUCKETS)
                .expect("bucket list is not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows only what reaches this one");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "switchyard_failover_reattached_total",
        "MySQL sessions re-attached to a healthy backend after theirs was lost."
    );
    describe_counter!(
        "switchyard_failover_retried_total",
        "Side-effect-free reads in flight re-run on the new backend after a loss."
    );
    describe_counter!(
        "switchyard_failover_replayed_total",
        "Transactions replayed after a backend loss, by result (ok, mismatch, overflow, timeout)."
    );
    describe_counter!(
        "switchyard_failover_errors_total",
        "Errors clients saw because their backend was lost, by reason."
    );
    describe_histogram!(
        "switchyard_failover_stall_seconds",
        Unit::Seconds,
        "How long a session waited from noticing its backend was lost to going on (or giving up)."
    );
    describe_counter!(
        "switchyard_connections_accepted_total",
        "Client connections accepted."
    );
    describe_counter!(
        "switchyard_connections_refused_total",
        "Client connections closed at accept, by reason (max_connections: over proxy.max_connections)."
    );
    describe_gauge!(
        "switchyard_cluster_peers",
        "Other live instances of the cluster in this instance's view (cluster only)."
    );
    describe_gauge!(
        "switchyard_cluster_view_age_seconds",
        "Seconds since the cluster's view was last read from etcd (cluster only)."
    );
    describe_gauge!(
        "switchyard_connections_active",
        "Client connections open now."
    );
    describe_gauge!(
        "switchyard_backend_connections",
        "Connections registered on each backend."
    );
    describe_gauge!(
        "switchyard_backend_score",
        "Each backend's routing score (larger = busier)."
    );
    describe_gauge!(
        "switchyard_backend_status",
        "1 for each backend's current status, 0 for the others."
    );
    describe_gauge!(
        "switchyard_backend_drained",
        "1 while an operator has drained the backend."
    );
    describe_gauge!(
        "switchyard_backend_weight",
        "Each backend's configured or discovered weight."
    );
    describe_gauge!(
        "switchyard_backend_effective_weight",
        "The weight routes see now (below the weight while a backend slow-starts)."
    );
    describe_gauge!(
        "switchyard_panic_mode",
        "1 while too few backends are healthy (balance.panic_threshold) and routes go to every known backend."
    );
    describe_gauge!(
        "switchyard_route_queue_length",
        "Routes waiting for a backend below balance.max_conns_per_backend."
    );
    describe_counter!(
        "switchyard_route_queue_waits_total",
        "Routes that had to wait because every backend was at balance.max_conns_per_backend."
    );
    describe_counter!(
        "switchyard_route_queue_timeouts_total",
        "Routes refused after waiting balance.queue_timeout."
    );
    describe_counter!(
        "switchyard_routes_total",
        "Client connections routed to a backend."
    );
    describe_counter!(
        "switchyard_route_failures_total",
        "Client connections closed because no backend could be reached."
    );
    describe_counter!(
        "switchyard_backend_connect_failures_total",
        "Failed connects to a backend."
    );
    describe_counter!(
        "switchyard_migrations_total",
        "Connection moves, by result."
    );
    describe_counter!(
        "switchyard_migrations_refused_total",
        "Redirects a session could not follow when they reached it, by reason: refused, or held \
         until the state (a transaction) ends. Counted once per redirect."
    );
    describe_histogram!(
        "switchyard_migration_duration_seconds",
        Unit::Seconds,
        "Time a connection move took."
    );
    describe_counter!(
        "switchyard_bytes_in_total",
        Unit::Bytes,
        "Bytes forwarded from clients to backends."
    );
    describe_counter!(
        "switchyard_bytes_out_total",
        Unit::Bytes,
        "Bytes forwarded from backends to clients."
    );
}

/// Handles the proxy's data and control paths update.
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Client connections accepted.
    pub accepted: Counter,
    /// Client connections refused at accept because `proxy.max_connections` were open.
    pub refused_max_connections: Counter,
    /// Client connections open now.
    pub active: Gauge,
    /// Connections routed to a backend.
    pub routes: Counter,
    /// Connections that found no reachable backend.
    pub route_failures: Counter,
    /// Client → backend bytes.
    pub bytes_in: Counter,
    /// Backend → client bytes.
    pub bytes_out: Counter,
}

impl ProxyMetrics {
    /// Resolves the handles against the installed recorder.
    pub fn new() -> Self {
        Self {
            accepted: metrics::counter!("switchyard_connections_accepted_total"),
            refused_max_connections: metrics::counter!("switchyard_connections_refused_total", "reason" => "max_connections"),
            active: metrics::gauge!("switchyard_connections_active"),
            routes: metrics::counter!("switchyard_routes_total"),
            route_failures: metrics::counter!("switchyard_route_failures_total"),
            bytes_in: metrics::counter!("switchyard_bytes_in_total"),
            bytes_out: metrics::counter!("switchyard_bytes_out_total"),
        }
    }
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts a failed connect to `backend`.
pub fn connect_failed(backend: &str) {
    metrics::counter!("switchyard_backend_connect_failures_total", "backend" => backend.to_string())
        .increment(1);
}

/// Records one connection move and how long it took.
pub fn migration(succeeded: bool, took: Duration) {
    let result = if succeeded { "succeeded" } else { "failed" };
    metrics::counter!("switchyard_migrations_total", "result" => result).increment(1);
    metrics::histogram!("switchyard_migration_duration_seconds", "result" => result)
        .record(took.as_secs_f64());
}

/// Counts a redirect a MySQL session could not follow, by why (see
/// [`crate::mysql::session::Pin`]).
pub fn migration_refused(reason: crate::mysql::session::Pin) {
    metrics::counter!("switchyard_migrations_refused_total", "reason" => reason.label())
        .increment(1);
}

/// Sets the per-backend gauges from the router's view; `gone` are backends shown before that the
/// router no longer has (their gauges drop to zero).
pub fn record_backends(backends: &[BackendSnapshot], drained: &[String], gone: &[String]) {
    for b in backends {
        let addr = b.addr.clone();
        metrics::gauge!("switchyard_backend_connections", "backend" => addr.clone())
            .set(b.conn_count as f64);
        metrics::gauge!("switchyard_backend_score", "backend" => addr.clone()).set(b.score as f64);
        for s in STATUSES {
            metrics::gauge!("switchyard_backend_status", "backend" => addr.clone(), "status" => s.as_str())
                .set(if b.health.status == s { 1.0 } else { 0.0 });
        }
        let is_drained = drained.iter().any(|d| d == &b.addr);
        metrics::gauge!("switchyard_backend_drained", "backend" => addr).set(if is_drained {
            1.0
        } else {
            0.0
        });
    }
    for addr in gone {
        metrics::gauge!("switchyard_backend_connections", "backend" => addr.clone()).set(0.0);
        metrics::gauge!("switchyard_backend_score", "backend" => addr.clone()).set(0.0);
        metrics::gauge!("switchyard_backend_drained", "backend" => addr.clone()).set(0.0);
        for s in STATUSES {
            metrics::gauge!("switchyard_backend_status", "backend" => addr.clone(), "status" => s.as_str())
                .set(if s == BackendStatus::CannotConnect { 1.0 } else { 0.0 });
        }
    }
}

/// Counts a MySQL session re-attached to a new backend after its own was lost.
pub fn failover_reattached() {
    metrics::counter!("switchyard_failover_reattached_total").increment(1);
}

/// Counts a read in flight re-run on the new backend after a loss.
pub fn failover_retried() {
    metrics::counter!("switchyard_failover_retried_total").increment(1);
}

/// Counts one transaction replay after a loss, by result (`ok`, `mismatch`, `overflow`,
/// `timeout`).
pub fn failover_replayed(result: &'static str) {
    metrics::counter!("switchyard_failover_replayed_total", "result" => result).increment(1);
}

/// Counts an error a client saw because its backend was lost, by why (see
/// `mysql::relay::failover::Refusal::label`).
pub fn failover_error(reason: &'static str) {
    metrics::counter!("switchyard_failover_errors_total", "reason" => reason).increment(1);
}

/// Records how long a session stalled between noticing its backend was lost and going on (or
/// giving up).
pub fn failover_stall(took: Duration) {
    metrics::histogram!("switchyard_failover_stall_seconds").record(took.as_secs_f64());
}

/// Sets the routing gauges from the router's view: weights per backend, panic mode and the wait
/// queue (the router also sets the last two as they change; a scrape makes sure they exist).
pub fn record_routing(routing: &RoutingState) {
    for b in &routing.backends {
        metrics::gauge!("switchyard_backend_weight", "backend" => b.addr.clone()).set(b.weight);
        metrics::gauge!("switchyard_backend_effective_weight", "backend" => b.addr.clone())
            .set(b.effective_weight);
    }
    metrics::gauge!("switchyard_panic_mode").set(if routing.panic { 1.0 } else { 0.0 });
    metrics::gauge!("switchyard_route_queue_length").set(routing.queue_len as f64);
}
