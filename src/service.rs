//! The service's wiring: config → actors → listeners, and the shutdown sequence.
//!
//! Starts the router (under `actix::Supervisor`) with its observer, the proxy listener and its
//! worker arbiters, and the admin API; then waits for SIGINT/SIGTERM and shuts down in order:
//! stop accepting, stop the observer, (`protocol: mysql`) ask every session to close at its next
//! safe point, let connections finish (up to `shutdown_timeout`), stop. The protocol is chosen
//! here, once: [`start_conn`] gives the listener the start function of `tcp` or `mysql`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use switchyard::{
    wire, BackendFetcher, DefaultHealthCheck, EtcdFetcher, RefreshBackends, ScoreRouter,
    StaticFetcher, StopObserver,
};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::admin::{self, AdminState};
use crate::config::{Config, Discovery, LogFormat, Protocol};
use crate::entry::{Entry, StartConn};
use crate::mysql::sessions::{CloseAll, MysqlSessions};
use crate::mysql::{MysqlConfig, MysqlUsers};
use crate::proxy::listener::{ProxyListener, StopAccepting};
use crate::proxy::tcp_conn::{Moves, TcpConn};
use crate::shutdown::{self, Drained};

/// A failure while running: exit code 1.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// A listener could not bind.
    #[error("{key}: cannot listen on {addr}: {source}")]
    Bind {
        /// The config key of the address.
        key: &'static str,
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The admin server stopped on its own.
    #[error("admin API stopped unexpectedly: {0}")]
    Admin(String),
}

/// Sets up `tracing` to stderr at the configured level and format (`RUST_LOG` wins when set).
pub fn init_tracing(cfg: &Config) {
    init_tracing_with(cfg.log_level.as_str(), cfg.log_format);
}

/// Sets up `tracing` to stderr with a default filter directive.
pub fn init_tracing_with(default_level: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Runs the service until a signal ends it. `Ok` = clean shutdown (exit 0).
pub fn run(cfg: Config) -> Result<(), ServiceError> {
    actix::System::new().block_on(serve(cfg))
}

/// Starts a [`ScoreRouter`] under supervision with an observer using `fetcher`, the
/// configured health check and the configured routing controls (`balance.*`).
pub fn start_router<F: BackendFetcher>(cfg: &Config, fetcher: F) -> Addr<ScoreRouter> {
    let (router_cfg, health) = (cfg.router.clone(), cfg.health.clone());
    let policy = cfg.policy.clone();
    let backend_tls = cfg.door.backend.tls.as_ref().map(|t| t.client_config());
    actix::Supervisor::start(move |ctx| {
        let check = DefaultHealthCheck::new(health.clone());
        // the probe reaches backends as sessions do (`backends.tls`)
        let check = match &backend_tls {
            Some(tls) => check.with_backend_tls(tls.clone()),
            None => check,
        };
        ScoreRouter::observed(router_cfg, fetcher, check, health, ctx).with_policy(policy)
    })
}

/// The fetcher `backends` describes, with the configured weights.
fn start_discovery(cfg: &Config) -> Addr<ScoreRouter> {
    match &cfg.discovery {
        Discovery::Static(addrs) => {
            let weighted = addrs
                .iter()
                .map(|a| (a.clone(), cfg.weights.get(a).copied().unwrap_or(1.0)))
                .collect();
            start_router(cfg, StaticFetcher::with_weights(weighted))
        }
        Discovery::Etcd(endpoints, etcd) => start_router(
            cfg,
            EtcdFetcher::with_config(endpoints.clone(), etcd.clone())
                .with_weights(cfg.weights.clone()),
        ),
    }
}

/// The start function for `cfg.protocol`, and (`protocol: mysql`) the session registry that
/// graceful shutdown asks to close sessions at their next safe point.
pub fn start_conn(cfg: &Config) -> (StartConn, Option<Addr<MysqlSessions>>) {
    match cfg.protocol {
        Protocol::Tcp => (Arc::new(|c| TcpConn::start_new(c, Moves::Refuse)), None),
        Protocol::Mysql => {
            let sessions = MysqlSessions::new().start();
            let mysql = Arc::new(MysqlConfig {
                users: MysqlUsers::from_config(&cfg.mysql_users),
                connect_timeout: cfg.connect_timeout,
                probe_user: match cfg.health.probe_user.as_str() {
                    "" => MysqlConfig::default().probe_user,
                    user => user.to_string(),
                },
                move_timeout: cfg.mysql_move_timeout,
                failover: cfg.failover.clone(),
                front_tls: cfg.door.tls.clone(),
                ..Default::default()
            });
            let registry = sessions.clone();
            let start: StartConn = Arc::new(move |c| {
                crate::mysql::start_proxied(c, mysql.clone(), &registry);
            });
            (start, Some(sessions))
        }
    }
}

/// What a client over `proxy.max_connections` is sent before the close: in `mysql` mode exactly
/// what a MariaDB or MySQL server over its own `max_connections` sends, an ERR packet in place of
/// the greeting (sequence 0) with no SQLSTATE — before the handshake the server cannot know the
/// client reads protocol 4.1 ERRs, and clients parse none there; they map 1040 to SQLSTATE 08004
/// themselves. In `tcp` mode nothing.
pub fn refusal(protocol: Protocol) -> Arc<[u8]> {
    match protocol {
        Protocol::Tcp => Arc::from(&[][..]),
        Protocol::Mysql => {
            let mut payload = vec![wire::marker::ERR];
            payload.extend_from_slice(&wire::code::ER_CON_COUNT_ERROR.to_le_bytes());
            payload.extend_from_slice(b"Too many connections");
            let mut out = Vec::with_capacity(wire::HEADER + payload.len());
            wire::put_packet(&mut out, 0, &payload);
            Arc::from(out)
        }
    }
}

/// SIGHUP (`systemctl reload`, the unit's `ExecReload`) must never take its default action,
/// which ends the process: it runs a discovery and health-check cycle instead, and reloads the
/// `proxy.tls` certificate and key (new clients get the new one; sessions keep theirs; a file
/// that fails to load leaves the current certificate in place, with an error logged).
fn reload_on_hangup(
    router: Addr<ScoreRouter>,
    tls: Option<crate::tls::FrontTls>,
) -> Result<(), ServiceError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(ServiceError::Signals)?;
    actix_rt::spawn(async move {
        while hangup.recv().await.is_some() {
            info!("SIGHUP: refreshing backends");
            router.do_send(RefreshBackends);
            if let Some(tls) = &tls {
                match tls.reload() {
                    Ok(()) => {
                        info!(cert = %tls.cert_path().display(), "SIGHUP: TLS certificate reloaded")
                    }
                    Err(e) => {
                        error!(error = %e, "SIGHUP: TLS certificate not reloaded; keeping the current one")
                    }
                }
            }
        }
    });
    Ok(())
}

async fn serve(cfg: Config) -> Result<(), ServiceError> {
    let prometheus = crate::metrics::install();
    let router = start_discovery(&cfg);

    let listener = tokio::net::TcpListener::bind(cfg.proxy_listen)
        .await
        .map_err(|source| ServiceError::Bind {
            key: "proxy.listen",
            addr: cfg.proxy_listen,
            source,
        })?;
    let draining = Arc::new(AtomicBool::new(false));
    let cluster = cfg
        .cluster
        .clone()
        .map(|c| crate::cluster::start(c, router.clone(), cfg.admin_listen));
    let admin_state = AdminState::new(router.clone(), prometheus, draining.clone())
        .with_token(cfg.admin_token.clone())
        .with_cluster(cluster.clone());
    let admin_server =
        admin::serve(cfg.admin_listen, admin_state).map_err(|source| ServiceError::Bind {
            key: "admin.listen",
            addr: cfg.admin_listen,
            source,
        })?;
    let admin_handle = admin_server.handle();
    let mut admin_task = actix_rt::spawn(admin_server);

    let workers: Vec<Arbiter> = (0..cfg.workers).map(|_| Arbiter::new()).collect();
    let mut entry = Entry::new(router.clone(), cfg.connect_timeout);
    entry.login_timeout = cfg.login_timeout;
    entry.half_close_timeout = cfg.half_close_timeout;
    entry.max_connections = cfg.max_connections;
    entry.refusal = refusal(cfg.protocol);
    entry.door = cfg.door.clone();
    let live = entry.live.clone();
    let (start, sessions) = start_conn(&cfg);
    let proxy = ProxyListener::new(
        listener,
        entry,
        start,
        workers.iter().map(|a| a.handle()).collect(),
    )
    .start();
    info!(proxy = %cfg.proxy_listen, admin = %cfg.admin_listen, protocol = ?cfg.protocol,
          workers = workers.len(), "switchyard serving");

    reload_on_hangup(router.clone(), cfg.door.tls.clone())?;
    let mut signals = Box::pin(shutdown::wait_for_signal());
    let outcome = tokio::select! {
        sig = &mut signals => sig.map_err(ServiceError::Signals).map(|s| {
            info!(signal = s, open = live.get(), timeout = ?cfg.shutdown_timeout, "shutting down: no new clients; waiting for open connections");
        }),
        r = &mut admin_task => {
            let why = match r {
                Ok(Ok(())) => "it returned".to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(e) => e.to_string(),
            };
            error!(error = %why, "admin API stopped");
            Err(ServiceError::Admin(why))
        }
    };

    // Shutdown, whatever ended the wait: stop accepting, stop observing, drain, stop.
    draining.store(true, Ordering::Release);
    let _ = proxy.send(StopAccepting).await;
    router.do_send(StopObserver);
    if outcome.is_ok() {
        if let Some(sessions) = &sessions {
            // idle sessions end now, busy ones after their command or transaction
            let asked = sessions.send(CloseAll).await.unwrap_or(0);
            info!(
                sessions = asked,
                "mysql sessions close at their next safe point"
            );
        }
        match shutdown::drain(&live, cfg.shutdown_timeout).await {
            Drained::Clean => info!("all connections finished"),
            Drained::TimedOut(open) => {
                warn!(
                    open,
                    "shutdown timeout passed; closing the remaining connections"
                )
            }
        }
    }
    if let Some(cluster) = &cluster {
        cluster.leave().await;
    }
    admin_handle.stop(true).await;
    for w in &workers {
        w.stop();
    }
    for w in workers {
        let _ = w.join();
    }
    info!("switchyard stopped");
    outcome
}
