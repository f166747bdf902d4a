//! `config.yaml`: the service's configuration, loaded once and validated up front.
//!
//! The file is read with the `config` crate, overlaid with `SWITCHYARD__SECTION__KEY`
//! environment variables, and deserialized with unknown keys denied, so a typo is an error rather
//! than a silently ignored setting. Every problem becomes one [`ConfigError`] naming the key; the
//! binary prints it on one line and exits 2. What the rest of the service sees is [`Config`],
//! whose values are already checked (addresses parsed, ranges sane).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use switchyard::wire::{parse_password_hash, SCRAMBLE_LEN};
use switchyard::{EtcdConfig, HealthCheckConfig, Probe, RouterConfig};
use thiserror::Error;

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
    fn new(key: impl Into<String>, msg: impl Into<String>) -> Self {
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
    /// Where backends come from.
    pub discovery: Discovery,
    /// Health checking, with the probe chosen by `protocol`.
    pub health: HealthCheckConfig,
    /// Routing and rebalancing.
    pub router: RouterConfig,
    /// Accounts for moving MySQL sessions (`protocol: mysql`).
    pub mysql_users: Vec<MysqlUser>,
    /// Bound on one move of a MySQL session (`mysql.move_timeout`): target login, snapshot and
    /// restore; a frozen old backend gets one more before its session is closed.
    pub mysql_move_timeout: Duration,
    /// What a MySQL session does when its backend is lost (`failover.*`).
    pub failover: crate::mysql::FailoverConfig,
    /// Log verbosity.
    pub log_level: LogLevel,
    /// Log format.
    pub log_format: LogFormat,
    /// How long open connections may take to finish after SIGINT/SIGTERM.
    pub shutdown_timeout: Duration,
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
    backends: RawBackends,
    #[serde(default)]
    health_check: RawHealthCheck,
    #[serde(default)]
    balance: RawBalance,
    #[serde(default)]
    mysql: RawMysql,
    #[serde(default)]
    failover: RawFailover,
    #[serde(default)]
    log: RawLog,
    #[serde(default = "default_shutdown_timeout", with = "humantime_serde")]
    shutdown_timeout: Duration,
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
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAdmin {
    listen: String,
}

impl Default for RawAdmin {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6080".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackends {
    #[serde(rename = "static")]
    static_: Option<Vec<String>>,
    etcd: Option<RawEtcd>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    #[serde(default, with = "humantime_serde::option")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    rounds: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    backoff: Option<Duration>,
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
struct RawBalance {
    #[serde(with = "humantime_serde")]
    rebalance_interval: Duration,
    conns_per_tick: usize,
    max_score_ratio: f64,
    #[serde(with = "humantime_serde")]
    redirect_fail_backoff: Duration,
}

impl Default for RawBalance {
    fn default() -> Self {
        let d = RouterConfig::default();
        Self {
            rebalance_interval: d.rebalance_interval,
            conns_per_tick: d.conns_per_tick,
            max_score_ratio: d.max_score_ratio,
            redirect_fail_backoff: d.redirect_fail_backoff,
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
#[serde(deny_unknown_fields, default)]
struct RawFailover {
    reattach: bool,
    replay_transactions: bool,
    /// `1MiB`, `512KiB`, `65536`, …
    max_replay_bytes: RawBytes,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawFailover {
    fn default() -> Self {
        let d = crate::mysql::FailoverConfig::default();
        Self {
            reattach: d.reattach,
            replay_transactions: d.replay_transactions,
            max_replay_bytes: RawBytes::Count(d.max_replay_bytes as u64),
            timeout: d.timeout,
        }
    }
}

/// A byte size as written in the file: a number, or text with a unit.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawBytes {
    Count(u64),
    Text(String),
}

impl RawBytes {
    /// Bytes; `None` for text that is not `<number>[B|KiB|MiB|GiB|KB|MB|GB]`.
    fn bytes(&self) -> Option<u64> {
        let text = match self {
            RawBytes::Count(n) => return Some(*n),
            RawBytes::Text(t) => t.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let num: u64 = num.parse().ok()?;
        let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "kib" | "k" => 1 << 10,
            "mib" | "m" => 1 << 20,
            "gib" | "g" => 1 << 30,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            _ => return None,
        };
        num.checked_mul(scale)
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
            .with_list_parse_key("backends.etcd.endpoints");
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
        positive("failover.timeout", self.failover.timeout)?;
        let max_replay_bytes = self
            .failover
            .max_replay_bytes
            .bytes()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                ConfigError::new(
                    "failover.max_replay_bytes",
                    "not a byte size (e.g. 1MiB, 512KiB, 65536)",
                )
            })?;
        let admin_listen = listen_addr("admin.listen", &self.admin.listen)?;
        if proxy_listen == admin_listen {
            return Err(ConfigError::new(
                "admin.listen",
                format!("same address as proxy.listen ({admin_listen})"),
            ));
        }
        let discovery = match (self.backends.static_, self.backends.etcd) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "backends",
                    "set either backends.static or backends.etcd, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "backends",
                    "set backends.static (a list of host:port) or backends.etcd.endpoints",
                ))
            }
            (Some(list), None) => {
                for (i, a) in list.iter().enumerate() {
                    backend_addr(&format!("backends.static[{i}]"), a)?;
                }
                let mut seen = std::collections::HashSet::new();
                for a in &list {
                    if !seen.insert(a) {
                        return Err(ConfigError::new(
                            "backends.static",
                            format!("{a} is listed twice"),
                        ));
                    }
                }
                Discovery::Static(list)
            }
            (None, Some(etcd)) => {
                if etcd.endpoints.is_empty() {
                    return Err(ConfigError::new(
                        "backends.etcd.endpoints",
                        "needs at least one endpoint",
                    ));
                }
                for (i, e) in etcd.endpoints.iter().enumerate() {
                    let key = format!("backends.etcd.endpoints[{i}]");
                    let rest = e
                        .strip_prefix("http://")
                        .or_else(|| e.strip_prefix("https://"))
                        .ok_or_else(|| {
                            ConfigError::new(
                                &key,
                                format!("{e:?} must start with http:// or https://"),
                            )
                        })?;
                    backend_addr(&key, rest.trim_end_matches('/'))?;
                }
                let d = EtcdConfig::default();
                let etcd_cfg = EtcdConfig {
                    request_timeout: etcd.request_timeout.unwrap_or(d.request_timeout),
                    rounds: etcd.rounds.unwrap_or(d.rounds),
                    backoff: etcd.backoff.unwrap_or(d.backoff),
                };
                positive("backends.etcd.request_timeout", etcd_cfg.request_timeout)?;
                if etcd_cfg.rounds == 0 {
                    return Err(ConfigError::new(
                        "backends.etcd.rounds",
                        "must be at least 1",
                    ));
                }
                Discovery::Etcd(etcd.endpoints, etcd_cfg)
            }
        };

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

        let b = self.balance;
        if b.conns_per_tick == 0 {
            return Err(ConfigError::new(
                "balance.conns_per_tick",
                "must be at least 1",
            ));
        }
        if !(b.max_score_ratio.is_finite() && b.max_score_ratio >= 1.0) {
            return Err(ConfigError::new(
                "balance.max_score_ratio",
                format!("must be a number >= 1.0, got {}", b.max_score_ratio),
            ));
        }
        let router = RouterConfig {
            rebalance_interval: b.rebalance_interval,
            conns_per_tick: b.conns_per_tick,
            max_score_ratio: b.max_score_ratio,
            redirect_fail_backoff: b.redirect_fail_backoff,
        };

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
            discovery,
            health,
            router,
            mysql_users,
            mysql_move_timeout: self.mysql.move_timeout,
            failover: crate::mysql::FailoverConfig {
                reattach: self.failover.reattach,
                replay_transactions: self.failover.replay_transactions,
                max_replay_bytes,
                timeout: self.failover.timeout,
            },
            log_level: self.log.level,
            log_format: self.log.format,
            shutdown_timeout: self.shutdown_timeout,
        })
    }
}

fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
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
fn backend_addr(key: &str, s: &str) -> Result<(), ConfigError> {
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
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, ConfigError> {
        load_env(yaml, vec![])
    }

    fn load_env(yaml: &str, env: Vec<(&str, &str)>) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!(
            "switchyard-config-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("config.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let env = env
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let r = Config::load_with_env(&path, Some(env));
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    fn rand_suffix() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        N.fetch_add(1, Ordering::Relaxed)
    }

    const MINIMAL: &str = "backends:\n  static: [127.0.0.1:4000, db1.local:4001]\n";

    #[test]
    fn a_minimal_file_takes_the_documented_defaults() {
        let c = load(MINIMAL).expect("valid");
        assert_eq!(c.proxy_listen, "127.0.0.1:6000".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:6080".parse().unwrap());
        assert_eq!(c.protocol, Protocol::Tcp);
        assert_eq!(c.connect_timeout, Duration::from_secs(2));
        assert_eq!(c.login_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 0);
        assert_eq!(c.half_close_timeout, Duration::from_secs(30));
        assert_eq!(c.health.probe, Probe::Tcp);
        assert_eq!(c.health.interval, Duration::from_secs(3));
        assert_eq!(c.router, RouterConfig::default());
        assert_eq!(c.shutdown_timeout, Duration::from_secs(15));
        assert_eq!(
            c.discovery,
            Discovery::Static(vec!["127.0.0.1:4000".into(), "db1.local:4001".into()])
        );
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let c = load(
            "backends: { static: [127.0.0.1:1] }\nhealth_check: { interval: 10ms, dial_timeout: 1m }\nshutdown_timeout: 3s\n",
        )
        .expect("valid");
        assert_eq!(c.health.interval, Duration::from_millis(10));
        assert_eq!(c.health.dial_timeout, Duration::from_secs(60));
        assert_eq!(c.shutdown_timeout, Duration::from_secs(3));
    }

    #[test]
    fn the_proxy_connect_timeout_is_its_own_key_and_must_be_positive() {
        let c = load(
            "proxy: { connect_timeout: 750ms }\nbackends: { static: [127.0.0.1:1] }\nhealth_check: { dial_timeout: 5s }\n",
        )
        .expect("valid");
        assert_eq!(c.connect_timeout, Duration::from_millis(750));
        assert_eq!(c.health.dial_timeout, Duration::from_secs(5));
        let e = load("proxy: { connect_timeout: 0s }\nbackends: { static: [127.0.0.1:1] }\n")
            .unwrap_err();
        assert_eq!(e.key, "proxy.connect_timeout", "{e}");
        let e = load("proxy: { connect_timeout: soon }\nbackends: { static: [127.0.0.1:1] }\n")
            .unwrap_err();
        assert_eq!(e.key, "proxy.connect_timeout", "{e}");
    }

    #[test]
    fn the_front_door_keys_are_read_and_their_timeouts_must_be_positive() {
        let c = load(
            "proxy: { login_timeout: 1500ms, max_connections: 300, half_close_timeout: 2m }\nbackends: { static: [127.0.0.1:1] }\n",
        )
        .expect("valid");
        assert_eq!(c.login_timeout, Duration::from_millis(1500));
        assert_eq!(c.max_connections, 300);
        assert_eq!(c.half_close_timeout, Duration::from_secs(120));
        for key in ["login_timeout", "half_close_timeout"] {
            let e = load(&format!(
                "proxy: {{ {key}: 0s }}\nbackends: {{ static: [127.0.0.1:1] }}\n"
            ))
            .unwrap_err();
            assert_eq!(e.key, format!("proxy.{key}"), "{e}");
        }
        let e = load("proxy: { max_connections: -1 }\nbackends: { static: [127.0.0.1:1] }\n")
            .unwrap_err();
        assert_eq!(e.key, "proxy.max_connections", "{e}");
    }

    #[test]
    fn failover_settings_default_to_on_1_mib_and_10_seconds_and_read_byte_sizes() {
        let c = load(MINIMAL).unwrap();
        assert!(c.failover.reattach && c.failover.replay_transactions);
        assert_eq!(c.failover.max_replay_bytes, 1 << 20);
        assert_eq!(c.failover.timeout, Duration::from_secs(10));
        let c = load(
            "backends: { static: [127.0.0.1:1] }\nfailover: { reattach: false, replay_transactions: false, max_replay_bytes: 512KiB, timeout: 3s }\n",
        )
        .unwrap();
        assert!(!c.failover.reattach && !c.failover.replay_transactions);
        assert_eq!(c.failover.max_replay_bytes, 512 << 10);
        assert_eq!(c.failover.timeout, Duration::from_secs(3));
        let c = load("backends: { static: [127.0.0.1:1] }\nfailover: { max_replay_bytes: 4096 }\n")
            .unwrap();
        assert_eq!(c.failover.max_replay_bytes, 4096);
        let e = load("backends: { static: [127.0.0.1:1] }\nfailover: { max_replay_bytes: lots }\n")
            .unwrap_err();
        assert_eq!(e.key, "failover.max_replay_bytes", "{e}");
        let e =
            load("backends: { static: [127.0.0.1:1] }\nfailover: { timeout: 0s }\n").unwrap_err();
        assert_eq!(e.key, "failover.timeout", "{e}");
    }

    #[test]
    fn the_mysql_move_timeout_defaults_to_five_seconds_and_must_be_positive() {
        assert_eq!(
            load(MINIMAL).unwrap().mysql_move_timeout,
            Duration::from_secs(5)
        );
        let c = load("backends: { static: [127.0.0.1:1] }\nmysql: { move_timeout: 750ms }\n")
            .expect("valid");
        assert_eq!(c.mysql_move_timeout, Duration::from_millis(750));
        let e =
            load("backends: { static: [127.0.0.1:1] }\nmysql: { move_timeout: 0s }\n").unwrap_err();
        assert_eq!(e.key, "mysql.move_timeout", "{e}");
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it() {
        let e = load("backends: { static: [127.0.0.1:1] }\nhealth_check: { intervl: 3s }\n")
            .unwrap_err();
        assert!(e.key.contains("health_check"), "{e}");
        assert!(e.to_string().contains("intervl"), "{e}");
    }

    #[test]
    fn a_wrong_type_names_the_key() {
        let e = load("backends: { static: [127.0.0.1:1] }\nhealth_check: { max_retries: lots }\n")
            .unwrap_err();
        assert_eq!(e.key, "health_check.max_retries", "{e}");
        let e =
            load("backends: { static: [127.0.0.1:1] }\nbalance: { rebalance_interval: soon }\n")
                .unwrap_err();
        assert_eq!(e.key, "balance.rebalance_interval", "{e}");
    }

    #[test]
    fn bad_addresses_name_the_key() {
        let e =
            load("proxy: { listen: nowhere }\nbackends: { static: [127.0.0.1:1] }\n").unwrap_err();
        assert_eq!(e.key, "proxy.listen");
        let e = load("backends: { static: [127.0.0.1:1, 'bad host:99999'] }\n").unwrap_err();
        assert_eq!(e.key, "backends.static[1]");
    }

    #[test]
    fn backends_must_be_given_one_way() {
        assert_eq!(
            load("proxy: { protocol: tcp }\n").unwrap_err().key,
            "backends"
        );
        let e = load(
            "backends: { static: [127.0.0.1:1], etcd: { endpoints: [http://127.0.0.1:2379] } }\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "backends");
        let c = load("backends: { etcd: { endpoints: [http://127.0.0.1:2379] } }\n").unwrap();
        assert_eq!(
            c.discovery,
            Discovery::Etcd(vec!["http://127.0.0.1:2379".into()], EtcdConfig::default())
        );
        let c = load(
            "backends: { etcd: { endpoints: [http://127.0.0.1:2379], request_timeout: 500ms, rounds: 5 } }\n",
        )
        .unwrap();
        let Discovery::Etcd(_, etcd) = c.discovery else {
            panic!("etcd discovery");
        };
        assert_eq!(etcd.request_timeout, Duration::from_millis(500));
        assert_eq!(
            (etcd.rounds, etcd.backoff),
            (5, EtcdConfig::default().backoff)
        );
        let e = load("backends: { etcd: { endpoints: [http://127.0.0.1:2379], rounds: 0 } }\n")
            .unwrap_err();
        assert_eq!(e.key, "backends.etcd.rounds");
    }

    #[test]
    fn environment_overrides_the_file() {
        let c = load_env(
            MINIMAL,
            vec![
                ("SWITCHYARD__HEALTH_CHECK__INTERVAL", "250ms"),
                ("SWITCHYARD__PROXY__LISTEN", "127.0.0.1:7000"),
                ("SWITCHYARD__BACKENDS__STATIC", "127.0.0.1:1,127.0.0.1:2"),
            ],
        )
        .expect("valid");
        assert_eq!(c.health.interval, Duration::from_millis(250));
        assert_eq!(c.proxy_listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(
            c.discovery,
            Discovery::Static(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()])
        );
    }

    #[test]
    fn mysql_users_take_a_password_or_a_hash() {
        let c = load(
            "proxy: { protocol: mysql }\nbackends: { static: [127.0.0.1:1] }\nmysql:\n  users:\n    - { name: app, password: pw }\n    - { name: ro, password_hash: \"*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19\" }\n",
        )
        .expect("valid");
        assert_eq!(c.health.probe, Probe::Mysql);
        assert_eq!(c.mysql_users.len(), 2);
        assert_eq!(
            c.mysql_users[1].secret,
            MysqlSecret::Hash([
                0x24, 0x70, 0xC0, 0xC0, 0x6D, 0xEE, 0x42, 0xFD, 0x16, 0x18, 0xBB, 0x99, 0x00, 0x5A,
                0xDC, 0xA2, 0xEC, 0x9D, 0x1E, 0x19
            ])
        );
        let e = load(
            "backends: { static: [127.0.0.1:1] }\nmysql: { users: [ { name: x, password_hash: \"abc\" } ] }\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "mysql.users[0].password_hash");
    }

    #[test]
    fn a_missing_file_is_reported_with_its_path() {
        let e = Config::load_with_env(Path::new("/nonexistent/switchyard.yaml"), Some(vec![]))
            .unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/switchyard.yaml"),
            "{e}"
        );
    }
}
