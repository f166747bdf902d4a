//! The admin HTTP API (actix-web): health, backends, metrics, refresh, redirect, drain, and the
//! status page.
//!
//! Handlers are thin: each turns a request into one router message and its answer into JSON.
//! The JSON shapes are fixed by DESIGN section 9. `/metrics` first copies the router's
//! per-backend view into gauges, then renders the whole registry (the library's series too).
//! Every POST passes [`guard`] first (token, CSRF); `GET /` serves the self-contained status page
//! (`admin/status.html`), which reads `/backends` and `/history` (the [`history`] ring).

pub mod guard;
pub mod history;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::ClusterHandle;
use crate::config::AdminToken;
use actix::Addr;
use actix_web::body::{BoxBody, EitherBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{http::header, http::Method, http::StatusCode, web, App, HttpResponse, HttpServer};
use history::{History, Totals};
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
    /// A session saw it fail (reset, refused, died mid-command) since its last health check:
    /// it takes no new routes until the check confirms or clears it (docs/failover.md).
    #[serde(default)]
    pub suspect: bool,
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
    /// `admin.token`: every POST must carry it when set.
    token: Option<AdminToken>,
    /// The last minute of routes, moves and errors, for the status page.
    history: Mutex<History>,
    /// Cluster membership (`cluster`): drains are shared through it; `None` alone.
    cluster: Option<ClusterHandle>,
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
            token: None,
            history: Mutex::new(History::default()),
            cluster: None,
        }
    }

    /// Shares drains with the cluster and answers `GET /cluster` from its view.
    pub fn with_cluster(mut self, cluster: Option<ClusterHandle>) -> Self {
        self.cluster = cluster;
        self
    }

    /// Requires `token` (`Authorization: Bearer …`) on every POST.
    pub fn with_token(mut self, token: Option<AdminToken>) -> Self {
        self.token = token;
        self
    }

    /// Reads the registry's totals and adds one second to the history ring.
    fn sample_history(&self) {
        let totals = Totals::from_exposition(&self.prometheus.render());
        lock(&self.history).record(totals);
    }
}

/// Locks a mutex whose data stays usable even if a holder panicked (each holds it for one
/// plain update).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// How often the history ring takes a sample.
const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Binds the admin API on `addr` (one worker; it is a control plane). The returned server runs
/// when awaited or spawned; stop it through its handle. Must be called inside an actix system:
/// it also starts the once-a-second sampler of the status page's history, which ends with the
/// server.
pub fn serve(addr: SocketAddr, state: AdminState) -> std::io::Result<Server> {
    let state = web::Data::new(state);
    let sampled = std::sync::Arc::downgrade(&state.clone().into_inner());
    actix_rt::spawn(async move {
        let mut every = tokio::time::interval(SAMPLE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match sampled.upgrade() {
                Some(state) => state.sample_history(),
                None => break,
            }
        }
    });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .wrap(from_fn(guard_posts))
            .route("/", web::get().to(status_page))
            .route("/history", web::get().to(history))
            .route("/health", web::get().to(health))
            .route("/backends", web::get().to(backends))
            .route("/metrics", web::get().to(metrics))
            .route("/cluster", web::get().to(cluster))
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

/// Runs [`guard::check_post`] on every POST; a refusal is answered here with its reason and the
/// handler never runs.
async fn guard_posts(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody, BoxBody>>, actix_web::Error> {
    if req.method() == Method::POST {
        let state = req.app_data::<web::Data<AdminState>>().cloned();
        let token = state.as_ref().and_then(|s| s.token.as_ref());
        if let Err(refusal) = guard::check_post(req.headers(), token) {
            tracing::warn!(path = %req.path(), peer = ?req.peer_addr(), reason = %refusal, "admin POST refused");
            let mut resp = error(refusal.status(), refusal);
            if refusal == guard::Refusal::Unauthorized {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer realm=\"switchyard\""),
                );
            }
            return Ok(req.into_response(resp).map_into_right_body());
        }
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// The status page: static HTML with the version filled in; it fetches everything else.
async fn status_page() -> HttpResponse {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let page = PAGE.get_or_init(|| {
        include_str!("admin/status.html").replace("{{VERSION}}", env!("CARGO_PKG_VERSION"))
    });
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; frame-ancestors 'none'",
        ))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(page.as_str())
}

async fn history(state: web::Data<AdminState>) -> HttpResponse {
    HttpResponse::Ok().json(lock(&state.history).view())
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
            suspect: false,
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
                suspect: b.suspect,
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
            let mut scraped = lock(&state.scraped);
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

/// The cluster as this instance sees it: live instances and global per-backend counts. Alone,
/// `"enabled": false` and this instance's own counts.
async fn cluster(state: web::Data<AdminState>) -> HttpResponse {
    match &state.cluster {
        Some(c) => {
            let mut body = serde_json::to_value(c.view()).unwrap_or_default();
            body["enabled"] = serde_json::Value::Bool(true);
            HttpResponse::Ok().json(body)
        }
        None => {
            let snapshots = state.router.send(GetBackends).await.unwrap_or_default();
            let backends: std::collections::BTreeMap<String, usize> = snapshots
                .into_iter()
                .filter(|b| b.conn_count > 0)
                .map(|b| (b.addr, b.conn_count))
                .collect();
            HttpResponse::Ok().json(serde_json::json!({
                "enabled": false,
                "instances": [],
                "backends": backends,
            }))
        }
    }
}

/// With a cluster, stores the drain in etcd so every instance applies it. A failure there
/// leaves the local drain in place and says so in the answer.
async fn share_drain(state: &AdminState, addr: &str, drained: bool) -> Option<String> {
    let cluster = state.cluster.as_ref()?;
    match cluster.share_drain(addr, drained).await {
        Ok(()) => None,
        Err(e) => {
            tracing::warn!(backend = %addr, drained, error = %e, "drain applied here but not shared with the cluster");
            Some(e.to_string())
        }
    }
}

/// The JSON answer of a drain change, with the cluster's error when it could not be shared.
fn drained_answer(mut body: serde_json::Value, shared: Option<String>) -> HttpResponse {
    if let Some(e) = shared {
        body["cluster_error"] = serde_json::Value::String(e);
    }
    HttpResponse::Ok().json(body)
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
            let shared = share_drain(state, &addr, drained).await;
            drained_answer(
                serde_json::json!({ "addr": addr, "drained": drained }),
                shared,
            )
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
            let shared = share_drain(&state, &addr, true).await;
            drained_answer(
                serde_json::json!({
                    "addr": addr,
                    "drained": true,
                    "close_after_ms": timeout.as_millis() as u64,
                }),
                shared,
            )
        }
        Ok(Err(e @ RouterError::UnknownBackend(_))) => error(StatusCode::NOT_FOUND, e),
        Ok(Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e),
        Err(_) => router_gone(),
    }
}

async fn undrain(state: web::Data<AdminState>, path: web::Path<String>) -> HttpResponse {
    set_drained(&state, path.into_inner(), false).await
}
