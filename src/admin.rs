//! The admin HTTP API (actix-web): health, backends, metrics, refresh, redirect, drain.
//!
//! Handlers are thin: each turns a request into one router message and its answer into JSON.
//! The JSON shapes are fixed by DESIGN section 9. `/metrics` first copies the router's
//! per-backend view into gauges, then renders the whole registry (the library's series too).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix::Addr;
use actix_web::{dev::Server, http::StatusCode, web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use switchyard::{
    DrainThenClose, GetBackends, GetDrained, GetObserved, GetRouting, RedirectConnections,
    RefreshBackends, RouterError, RoutingState, ScoreRouter, SetDrained,
};

/// One backend as `GET /backends` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct BackendView {
    /// SQL address.
    pub addr: String,
    /// `healthy`, `down`, `memory high`, `run slow` or `schema outdated`.
    pub status: String,
    /// Routing score (status + connections; larger = busier).
    pub score: i64,
    /// Connections registered on it.
    pub conn_count: usize,
    /// The version it announced (empty when unknown).
    pub server_version: String,
    /// Whether an operator drained it.
    pub drained: bool,
    /// Its configured or discovered weight (1 unless set).
    #[serde(default = "one")]
    pub weight: f64,
    /// The weight routes see now: below `weight` while it slow-starts.
    #[serde(default = "one")]
    pub effective_weight: f64,
    /// The router is in panic mode (too few healthy backends): every known, non-drained
    /// backend takes routes whatever its status. The same on every entry.
    #[serde(default)]
    pub panic: bool,
}

fn one() -> f64 {
    1.0
}

/// What the handlers share.
pub struct AdminState {
    router: Addr<ScoreRouter>,
    prometheus: PrometheusHandle,
    draining: Arc<AtomicBool>,
    /// Backends shown in the last scrape, so gauges of removed ones drop to zero.
    scraped: Mutex<HashSet<String>>,
}

impl AdminState {
    /// State for a server in front of `router`; `draining` turns `/health` to 503.
    pub fn new(
        router: Addr<ScoreRouter>,
        prometheus: PrometheusHandle,
        draining: Arc<AtomicBool>,
    ) -> Self {
        Self {
            router,
            prometheus,
            draining,
            scraped: Mutex::new(HashSet::new()),
        }
    }
}

/// Binds the admin API on `addr` (one worker; it is a control plane). The returned server runs
/// when awaited or spawned; stop it through its handle.
pub fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/health", web::get().to(health))
            .route("/backends", web::get().to(backends))
            .route("/metrics", web::get().to(metrics))
            .route("/refresh", web::post().to(refresh))
            .route("/redirect", web::post().to(redirect))
            .route("/backends/{addr}/drain", web::post().to(drain))
            .route("/backends/{addr}/undrain", web::post().to(undrain))
            .default_service(web::to(not_found))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(1)
    .bind(addr)?
    .run();
    Ok(server)
}

fn error(status: StatusCode, msg: impl std::fmt::Display) -> HttpResponse {
    HttpResponse::build(status).json(serde_json::json!({ "error": msg.to_string() }))
}

fn router_gone() -> HttpResponse {
    error(StatusCode::SERVICE_UNAVAILABLE, RouterError::RouterGone)
}

async fn not_found() -> HttpResponse {
    error(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn health(state: web::Data<AdminState>) -> HttpResponse {
    if state.draining.load(Ordering::Acquire) {
        HttpResponse::ServiceUnavailable().json(serde_json::json!({ "status": "draining" }))
    } else {
        HttpResponse::Ok().json(serde_json::json!({ "status": "serving" }))
    }
}

/// The router's backends (ascending score), then those the observer sees but the router does
/// not hold (configured or discovered, never healthy yet): an operator sees them as down.
async fn backend_views(state: &AdminState) -> Option<Vec<BackendView>> {
    let snapshots = state.router.send(GetBackends).await.ok()?;
    let drained = state.router.send(GetDrained).await.ok()?;
    let observed = state.router.send(GetObserved).await.unwrap_or_default();
    let routing: RoutingState = state.router.send(GetRouting).await.unwrap_or_default();
    let weight = |addr: &str| {
        routing
            .backends
            .iter()
            .find(|w| w.addr == addr)
            .map_or((1.0, 1.0), |w| (w.weight, w.effective_weight))
    };
    let panic = routing.panic;
    let known: HashSet<&str> = snapshots.iter().map(|b| b.addr.as_str()).collect();
    let mut unseen: Vec<(String, switchyard::BackendHealth)> = observed
        .into_iter()
        .filter(|(addr, _)| !known.contains(addr.as_str()))
        .collect();
    unseen.sort_by(|a, b| a.0.cmp(&b.0));
    let unseen: Vec<BackendView> = unseen
        .into_iter()
        .map(|(addr, health)| BackendView {
            drained: drained.contains(&addr),
            weight: weight(&addr).0,
            effective_weight: weight(&addr).1,
            panic,
            status: health.status.to_string(),
            score: health.status.score(),
            addr,
            conn_count: 0,
            server_version: health.server_version,
        })
        .collect();
    Some(
        snapshots
            .into_iter()
            .map(|b| BackendView {
                drained: drained.contains(&b.addr),
                weight: weight(&b.addr).0,
                effective_weight: weight(&b.addr).1,
                panic,
                status: b.health.status.to_string(),
                addr: b.addr,
                score: b.score,
                conn_count: b.conn_count,
                server_version: b.health.server_version,
            })
            .chain(unseen)
            .collect(),
    )
}

async fn backends(state: web::Data<AdminState>) -> HttpResponse {
    match backend_views(&state).await {
        Some(views) => HttpResponse::Ok().json(views),
        None => router_gone(),
    }
}

async fn metrics(state: web::Data<AdminState>) -> HttpResponse {
    if let (Ok(snapshots), Ok(drained)) = (
        state.router.send(GetBackends).await,
        state.router.send(GetDrained).await,
    ) {
        let now: HashSet<String> = snapshots.iter().map(|b| b.addr.clone()).collect();
        let gone: Vec<String> = {
            let mut scraped = state
                .scraped
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let gone = scraped.difference(&now).cloned().collect();
            *scraped = now;
            gone
        };
        crate::metrics::record_backends(&snapshots, &drained, &gone);
    }
    if let Ok(routing) = state.router.send(GetRouting).await {
        crate::metrics::record_routing(&routing);
    }
    state.prometheus.run_upkeep();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.prometheus.render())
}

async fn refresh(state: web::Data<AdminState>) -> HttpResponse {
    match state.router.send(RefreshBackends).await {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({ "ok": true })),
        Err(_) => router_gone(),
    }
}

async fn redirect(state: web::Data<AdminState>) -> HttpResponse {
    match state.router.send(RedirectConnections).await {
        Ok(Ok(())) => HttpResponse::Ok().json(serde_json::json!({ "ok": true })),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => router_gone(),
    }
}

async fn set_drained(state: &AdminState, addr: String, drained: bool) -> HttpResponse {
    let msg = SetDrained {
        addr: addr.clone(),
        drained,
    };
    match state.router.send(msg).await {
        Ok(Ok(())) => {
            tracing::info!(backend = %addr, drained, "operator changed drain");
            HttpResponse::Ok().json(serde_json::json!({ "addr": addr, "drained": drained }))
        }
        Ok(Err(e @ RouterError::UnknownBackend(_))) => error(StatusCode::NOT_FOUND, e),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => router_gone(),
    }
}

/// `?timeout=30s` on a drain: close what has not moved by then.
#[derive(Debug, serde::Deserialize)]
struct DrainQuery {
    timeout: Option<String>,
}

async fn drain(
    state: web::Data<AdminState>,
    path: web::Path<String>,
    query: web::Query<DrainQuery>,
) -> HttpResponse {
    let addr = path.into_inner();
    let Some(timeout) = &query.timeout else {
        return set_drained(&state, addr, true).await;
    };
    let timeout = match humantime_serde::re::humantime::parse_duration(timeout) {
        Ok(t) => t,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("timeout: {timeout:?} is not a duration such as 30s ({e})"),
            )
        }
    };
    let msg = DrainThenClose {
        addr: addr.clone(),
        timeout,
    };
    match state.router.send(msg).await {
        Ok(Ok(())) => {
            tracing::info!(backend = %addr, ?timeout, "operator drained; closing what has not moved by the timeout");
            HttpResponse::Ok().json(serde_json::json!({
                "addr": addr,
                "drained": true,
                "close_after_ms": timeout.as_millis() as u64,
            }))
        }
        Ok(Err(e @ RouterError::UnknownBackend(_))) => error(StatusCode::NOT_FOUND, e),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => router_gone(),
    }
}

async fn undrain(state: web::Data<AdminState>, path: web::Path<String>) -> HttpResponse {
    set_drained(&state, path.into_inner(), false).await
}
