//! `DefaultHealthCheck`: placeholder until the real HTTP + SQL probe lands.

use crate::health::{HealthCheck, HealthCheckConfig};
use crate::model::{BackendHealth, BackendInfo};

/// Checks a backend's status port and SQL port.
#[derive(Debug, Clone)]
pub struct DefaultHealthCheck {
    #[allow(dead_code)]
    cfg: HealthCheckConfig,
}

impl DefaultHealthCheck {
    /// A checker with `cfg`'s timeouts and retries.
    pub fn new(cfg: HealthCheckConfig) -> Self {
        Self { cfg }
    }
}

impl HealthCheck for DefaultHealthCheck {
    async fn check(&self, addr: &str, _info: &BackendInfo) -> BackendHealth {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(_) => BackendHealth::healthy(),
            Err(e) => BackendHealth::down(e.to_string()),
        }
    }
}
