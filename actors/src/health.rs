//! The health-check seam and its configuration.
//!
//! [`HealthCheck`] is what the observer calls for every backend on every cycle;
//! [`crate::DefaultHealthCheck`] is the real one (HTTP status port, then the SQL port).

use std::time::Duration;

use crate::model::{BackendHealth, BackendInfo};

/// Checks one backend. Must return within a bounded time; failures are expressed in the
/// returned [`BackendHealth`], never as a panic.
#[allow(async_fn_in_trait)]
pub trait HealthCheck: 'static {
    /// Check `addr` (the SQL address) using what discovery knows about it.
    async fn check(&self, addr: &str, info: &BackendInfo) -> BackendHealth;
}

/// How the SQL port is probed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// Connect and read the MySQL v10 greeting, taking the server version from it.
    #[default]
    Mysql,
    /// Only connect: for backends that do not greet (plain TCP services).
    Tcp,
}

/// How and how often backends are checked.
///
/// The defaults are the reference router's: a check every 3 s, up to 3 retries 1 s apart, 2 s to
/// connect. `fall` and `rise` add hysteresis the reference lacks: a busy backend that misses one
/// check is not declared down (and emptied) at once when `fall` > 1.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthCheckConfig {
    /// When false every fetched backend is reported healthy without a check.
    pub enable: bool,
    /// Time between the starts of two observer cycles.
    pub interval: Duration,
    /// Retries of a failed step within one check ("connection refused" is never retried).
    pub max_retries: u32,
    /// Pause between retries.
    pub retry_interval: Duration,
    /// Timeout of one connect / HTTP request.
    pub dial_timeout: Duration,
    /// Consecutive failed checks before a healthy backend is reported down.
    pub fall: u32,
    /// Consecutive good checks before a down backend is reported healthy.
    pub rise: u32,
    /// How the SQL port is probed.
    pub probe: Probe,
    /// Health checks of one cycle that run at once.
    pub concurrency: usize,
    /// Use HTTPS for the status port.
    pub status_tls: bool,
    /// User the `mysql` probe logs in as (no password) after reading the greeting, so the
    /// server counts a refused login instead of an aborted connect, which would block the
    /// proxy's host after `max_connect_errors`. Empty: hang up after the greeting.
    pub probe_user: String,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        Self {
            enable: true,
            interval: Duration::from_secs(3),
            max_retries: 3,
            retry_interval: Duration::from_secs(1),
            dial_timeout: Duration::from_secs(2),
            fall: 1,
            rise: 1,
            probe: Probe::Mysql,
            concurrency: 64,
            status_tls: false,
            probe_user: "switchyard_check".to_string(),
        }
    }
}
