//! `config.yaml`: the service's configuration, loaded once and validated up front.
//!
//! The file is read with the `config` crate, overlaid with `SWITCHYARD__SECTION__KEY`
//! environment variables, and deserialized with unknown keys denied, so a typo is an error rather
//! than a silently ignored setting. Every problem becomes one [`ConfigError`] naming the key; the
//! binary prints it on one line and exits 2. What the rest of the service sees is [`Config`],
//! whose values are already checked (addresses parsed, ranges sane).

mod backends;
mod balance;
mod cluster;
mod door;
mod failover;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use switchyard::wire::{parse_password_hash, SCRAMBLE_LEN};
use switchyard::{EtcdConfig, HealthCheckConfig, Probe, RoutePolicy, RouterConfig};
use thiserror::Error;

pub use cluster::ClusterConfig;
pub use failover::FailoverConfig;

/// A configuration problem: which key, and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{key}: {msg}")]
pub struct ConfigError {
    /// The dotted key (`health_check.interval`), or the file path when the file itself is bad.
    pub key: String,
    /// What was wrong.
    pub msg: String,
}

impl ConfigError {
    pub(crate) fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            msg: msg.into(),
        }
    }
}

/// The wire protocol spoken by clients and backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain TCP: bytes are forwarded, connections cannot move.
    #[default]
    Tcp,
    /// MySQL protocol: connections may move at safe points (see `src/mysql/`).
    Mysql,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Log verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything.
    Trace,
    /// Per-connection events.
    Debug,
    /// State changes.
    #[default]
    Info,
    /// Problems only.
    Warn,
    /// Failures only.
    Error,
}

impl LogLevel {
    /// The level as a `tracing` filter directive.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// Where backends come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// A fixed list of `host:port`.
    Static(Vec<String>),
    /// TiDB topology in etcd, at these endpoints (`http://host:port`), with these timeouts.
    Etcd(Vec<String>, EtcdConfig),
}

/// One MySQL account the proxy may log in with when it moves a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlUser {
    /// User name.
    pub name: String,
    /// The credential.
    pub secret: MysqlSecret,
}

/// A MySQL credential: the plain password or its `mysql_native_password` hash.
#[derive(Clone, PartialEq, Eq)]
pub enum MysqlSecret {
    /// The plain password.
    Password(String),
    /// SHA1(SHA1(password)), the 20 bytes behind `*<40 hex>` in `mysql.user`.
    Hash([u8; SCRAMBLE_LEN]),
}

impl std::fmt::Debug for MysqlSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MysqlSecret::Password(_) => f.write_str("Password(..)"),
            MysqlSecret::Hash(_) => f.write_str("Hash(..)"),
        }
    }
}

/// The admin API's bearer token (`admin.token`). Its `Debug` hides it, so a logged config never
/// shows the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl AdminToken {
    /// A token (for tests and embedding; the service reads it from `admin.token`).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// The token as sent after `Bearer `.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect.
    pub proxy_listen: SocketAddr,
    /// What clients and backends speak.
    pub protocol: Protocol,
    /// Threads (actix arbiters) that run client connections; at least 1.
    pub workers: usize,
    /// Bound on one proxy → backend connect (`proxy.connect_timeout`), for a client's first
    /// backend and for a move's target.
    pub connect_timeout: Duration,
    /// How long a `mysql`-mode client may take from accept to a finished login
    /// (`proxy.login_timeout`) before it is closed.
    pub login_timeout: Duration,
    /// Most client connections open at once (`proxy.max_connections`); 0 = unlimited.
    pub max_connections: usize,
    /// How long a `tcp`-mode connection may stay half-closed with no traffic on its open half
    /// (`proxy.half_close_timeout`) before both sides are closed.
    pub half_close_timeout: Duration,
    /// Where the admin HTTP API listens.
    pub admin_listen: SocketAddr,
    /// The bearer token every admin POST must carry (`admin.token`); `None` when unset.
    pub admin_token: Option<AdminToken>,
    /// Where backends come from.
    pub discovery: Discovery,
    /// Health checking, with the probe chosen by `protocol`.
    pub health: HealthCheckConfig,
    /// Routing and rebalancing.
    pub router: RouterConfig,
    /// The operator's routing controls (`balance.slow_start`, `max_conns_per_backend`,
    /// `queue_timeout`, `panic_threshold`), and with a `cluster` section the rebalance cooldown
    /// derived from `cluster.publish_interval`.
    pub policy: RoutePolicy,
    /// Backend weights other than 1, from `backends.static` entries or `backends.etcd.weights`.
    pub weights: HashMap<String, f64>,
    /// Accounts for moving MySQL sessions (`protocol: mysql`).
    pub mysql_users: Vec<MysqlUser>,
    /// Bound on one move of a MySQL session (`mysql.move_timeout`): target login, snapshot and
    /// restore; a frozen old backend gets one more before its session is closed.
    pub mysql_move_timeout: Duration,
    /// What a MySQL session does when its backend is lost (`failover.*`).
    pub failover: FailoverConfig,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log format.
    pub log_format: LogFormat,
    /// How long open connections may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
    /// TLS and PROXY protocol towards clients and backends (`proxy.tls`,
    /// `proxy.proxy_protocol[_from]`, `backends.tls`, `backends.send_proxy_protocol`).
    pub door: crate::entry::Door,
    /// Membership of a cluster of instances sharing one pool (`cluster`); `None` = alone, and
    /// etcd is never contacted.
    pub cluster: Option<ClusterConfig>,
}

// ---------------------------------------------------------------------------------------------
// The file's shape, as serde sees it
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    #[serde(default)]
    admin: RawAdmin,
    backends: backends::RawBackends,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default)]
    balance: balance::RawBalance,
    #[serde(default)]
    mysql: RawMysql,
    #[serde(default)]
    failover: failover::RawFailover,
    #[serde(default)]
    log: RawLog,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    shutdown_timeout: Duration,
    #[serde(default)]
    cluster: Option<cluster::RawCluster>,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(15)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    listen: String,
    protocol: Protocol,
    workers: usize,
    #[serde(with = "humantime_serde")]
    connect_timeout: Duration,
    #[serde(with = "humantime_serde")]
    login_timeout: Duration,
    max_connections: usize,
    #[serde(with = "humantime_serde")]
    half_close_timeout: Duration,
    tls: Option<door::RawFrontTls>,
    proxy_protocol: Option<door::ProxyProtocol>,
    proxy_protocol_from: Vec<String>,
}

/// `proxy.connect_timeout` when absent.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// `proxy.login_timeout` when absent: as MariaDB's own `connect_timeout`.
const DEFAULT_LOGIN_TIMEOUT: Duration = Duration::from_secs(10);
/// `proxy.half_close_timeout` when absent (HAProxy's usual `timeout client-fin`).
const DEFAULT_HALF_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6000".into(),
            protocol: Protocol::Tcp,
            workers: 0,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            login_timeout: DEFAULT_LOGIN_TIMEOUT,
            max_connections: 0,
            half_close_timeout: DEFAULT_HALF_CLOSE_TIMEOUT,
            tls: None,
            proxy_protocol: None,
            proxy_protocol_from: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
    token: String,
    allow_insecure: bool,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6080".into(),
            token: String::new(),
            allow_insecure: false,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHealthCheck {
    enable: bool,
    #[serde(with = "humantime_serde")]
    interval: Duration,
    max_retries: u32,
    #[serde(with = "humantime_serde")]
    retry_interval: Duration,
    #[serde(with = "humantime_serde")]
    dial_timeout: Duration,
    fall: u32,
    rise: u32,
    probe_user: String,
}

impl Default for RawHealthCheck {
    fn default() -> Self {
        let d = HealthCheckConfig::default();
        Self {
            enable: d.enable,
            interval: d.interval,
            max_retries: d.max_retries,
            retry_interval: d.retry_interval,
            dial_timeout: d.dial_timeout,
            fall: d.fall,
            rise: d.rise,
            probe_user: d.probe_user,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawMysql {
    users: Vec<RawUser>,
    #[serde(with = "humantime_serde")]
    move_timeout: Duration,
}

impl Default for RawMysql {
    fn default() -> Self {
        Self {
            users: Vec::new(),
            move_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password: Option<String>,
    password_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: LogLevel,
    format: LogFormat,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

impl Config {
    /// Loads `path`, applies `SWITCHYARD__…` overrides from the process environment and
    /// validates the result.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// Like [`Config::load`], with the environment given as pairs (for tests); `None` reads the
    /// process environment.
    pub fn load_with_env(
        path: &Path,
        env: Option<Vec<(String, String)>>,
    ) -> Result<Config, ConfigError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            let why = if path.exists() {
                "not a regular file"
            } else {
                "no such file"
            };
            return Err(ConfigError::new(
                "--config",
                format!("cannot read {shown}: {why}"),
            ));
        }
        let file = config::File::from(path).format(config::FileFormat::Yaml);
        let mut environment = config::Environment::with_prefix("SWITCHYARD")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("backends.static")
            .with_list_parse_key("backends.etcd.endpoints")
            .with_list_parse_key("proxy.proxy_protocol_from");
        if let Some(vars) = env {
            environment = environment.source(Some(vars.into_iter().collect()));
        }
        let merged = config::Config::builder()
            .add_source(file)
            .add_source(environment)
            .build()
            .map_err(|e| ConfigError::new(shown.clone(), one_line(&e.to_string())))?;
        let raw: RawConfig = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let msg = one_line(&e.inner().to_string());
            if key == "." || key.is_empty() {
                ConfigError::new(top_level_key(&msg).unwrap_or(shown.clone()), msg)
            } else {
                ConfigError::new(key, msg)
            }
        })?;
        raw.validate()
    }
}

/// For errors serde reports at the top level ("missing field `backends`"), the key it names.
fn top_level_key(msg: &str) -> Option<String> {
    let quote = msg.find(['`', '"'])?;
    let q = &msg[quote..quote + 1];
    let start = quote + 1;
    let len = msg[start..].find(q)?;
    Some(msg[start..start + len].to_string())
}

/// One line, without the `config` crate's "for key `…` in <file>" tail (the key is shown first).
fn one_line(s: &str) -> String {
    let s = s.split(" for key `").next().unwrap_or(s);
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let proxy_listen = listen_addr("proxy.listen", &self.proxy.listen)?;
        positive("proxy.connect_timeout", self.proxy.connect_timeout)?;
        positive("proxy.login_timeout", self.proxy.login_timeout)?;
        positive("proxy.half_close_timeout", self.proxy.half_close_timeout)?;
        positive("mysql.move_timeout", self.mysql.move_timeout)?;
        let failover = self.failover.validate()?;
        let admin_listen = listen_addr("admin.listen", &self.admin.listen)?;
        if proxy_listen == admin_listen {
            return Err(ConfigError::new(
                "admin.listen",
                format!("same address as proxy.listen ({admin_listen})"),
            ));
        }
        let admin_token = admin_token(&self.admin, admin_listen)?;
        let door = door::door(
            self.proxy.protocol,
            self.proxy.tls.as_ref(),
            self.proxy.proxy_protocol,
            &self.proxy.proxy_protocol_from,
            self.backends.tls.as_ref(),
            self.backends.send_proxy_protocol,
        )?;
        let (discovery, weights) = self.backends.validate()?;
        let cluster = self.cluster.map(|c| c.validate(admin_listen)).transpose()?;

        let h = self.health_check;
        positive("health_check.interval", h.interval)?;
        positive("health_check.dial_timeout", h.dial_timeout)?;
        if h.fall == 0 {
            return Err(ConfigError::new("health_check.fall", "must be at least 1"));
        }
        if h.rise == 0 {
            return Err(ConfigError::new("health_check.rise", "must be at least 1"));
        }
        let health = HealthCheckConfig {
            enable: h.enable,
            interval: h.interval,
            max_retries: h.max_retries,
            retry_interval: h.retry_interval,
            dial_timeout: h.dial_timeout,
            fall: h.fall,
            rise: h.rise,
            probe_user: h.probe_user,
            probe: match self.proxy.protocol {
                Protocol::Tcp => Probe::Tcp,
                Protocol::Mysql => Probe::Mysql,
            },
            ..HealthCheckConfig::default()
        };

        let (router, mut policy) = self.balance.validate()?;
        if let Some(cluster) = &cluster {
            // peers route on views that lag by a few publish intervals: the overshoot they cause
            // is evened by sessions that have not just moved, never by moving these back
            policy.rebalance_cooldown = RoutePolicy::cluster_cooldown(cluster.publish_interval);
        }

        let mut mysql_users = Vec::with_capacity(self.mysql.users.len());
        for (i, u) in self.mysql.users.into_iter().enumerate() {
            let key = format!("mysql.users[{i}]");
            if u.name.is_empty() {
                return Err(ConfigError::new(format!("{key}.name"), "must not be empty"));
            }
            let secret = match (u.password, u.password_hash) {
                (Some(p), None) => MysqlSecret::Password(p),
                (None, Some(h)) => MysqlSecret::Hash(parse_password_hash(&h).ok_or_else(|| {
                    ConfigError::new(
                        format!("{key}.password_hash"),
                        "must be \"*\" followed by 40 hex digits, as in mysql.user",
                    )
                })?),
                _ => {
                    return Err(ConfigError::new(
                        key,
                        "set exactly one of password and password_hash",
                    ))
                }
            };
            if mysql_users.iter().any(|m: &MysqlUser| m.name == u.name) {
                return Err(ConfigError::new(
                    format!("{key}.name"),
                    format!("user {:?} is listed twice", u.name),
                ));
            }
            mysql_users.push(MysqlUser {
                name: u.name,
                secret,
            });
        }

        Ok(Config {
            proxy_listen,
            protocol: self.proxy.protocol,
            workers: match self.proxy.workers {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
            connect_timeout: self.proxy.connect_timeout,
            login_timeout: self.proxy.login_timeout,
            max_connections: self.proxy.max_connections,
            half_close_timeout: self.proxy.half_close_timeout,
            admin_listen,
            admin_token,
            discovery,
            health,
            router,
            policy,
            weights,
            mysql_users,
            mysql_move_timeout: self.mysql.move_timeout,
            failover,
            log_level: self.log.level,
            log_format: self.log.format,
            shutdown_timeout: self.shutdown_timeout,
            door,
            cluster,
        })
    }
}

/// `admin.token`, checked: a token with spaces or control characters could not be sent in a
/// header, and an admin API reachable from other hosts without one is refused unless the operator
/// says `admin.allow_insecure: true` (anyone who reaches it could drain every backend).
fn admin_token(admin: &RawAdmin, listen: SocketAddr) -> Result<Option<AdminToken>, ConfigError> {
    let token = admin.token.as_str();
    if token
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || !c.is_ascii())
    {
        return Err(ConfigError::new(
            "admin.token",
            "must be printable ASCII without spaces (it is sent as an HTTP header)",
        ));
    }
    if token.is_empty() && !listen.ip().is_loopback() && !admin.allow_insecure {
        return Err(ConfigError::new(
            "admin.listen",
            format!(
                "{listen} is reachable from other hosts and admin.token is not set; \
                 set admin.token, listen on 127.0.0.1, or set admin.allow_insecure: true"
            ),
        ));
    }
    Ok((!token.is_empty()).then(|| AdminToken(token.to_string())))
}

pub(super) fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(ConfigError::new(key, "must be longer than zero"))
    } else {
        Ok(())
    }
}

fn listen_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse().map_err(|_| {
        ConfigError::new(
            key,
            format!("{s:?} is not an ip:port address (e.g. 127.0.0.1:6000)"),
        )
    })
}

/// Checks a `host:port` backend address without resolving it (a backend may be down or not yet
/// in DNS when the service starts).
pub(super) fn backend_addr(key: &str, s: &str) -> Result<(), ConfigError> {
    let bad = |why: &str| ConfigError::new(key, format!("{s:?} is not a host:port address: {why}"));
    if s.parse::<SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = s.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    match port.parse::<u16>() {
        Ok(0) => return Err(bad("port 0")),
        Ok(_) => {}
        Err(_) => return Err(bad("bad port")),
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if host_ok {
        Ok(())
    } else {
        Err(bad("bad host"))
    }
}

#[cfg(test)]
mod tests;
