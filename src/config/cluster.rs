//! `cluster`: several switchyard instances sharing load and operator state through etcd.
//! Absent, the instance runs alone and never contacts etcd; present, every key is checked here
//! so a typo fails at start, not at the first publish.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};

/// The validated `cluster` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs (`cluster.etcd.endpoints`).
    pub endpoints: Vec<String>,
    /// The cluster's name: the instances under one name share one pool (`cluster.name`).
    pub name: String,
    /// This instance's name among them (`cluster.instance_id`; default host:admin-port).
    pub instance_id: String,
    /// The lease this instance's document lives on: a dead instance drops out within it.
    pub lease_ttl: Duration,
    /// How often the instance publishes (when something changed) and reads its peers.
    pub publish_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    etcd: RawClusterEtcd,
    #[serde(default = "default_name")]
    name: String,
    #[serde(default)]
    instance_id: String,
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    lease_ttl: Duration,
    #[serde(default = "default_publish_interval", with = "humantime_serde")]
    publish_interval: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClusterEtcd {
    endpoints: Vec<String>,
}

fn default_name() -> String {
    "default".to_string()
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_publish_interval() -> Duration {
    Duration::from_secs(1)
}

/// A name that goes into an etcd key: no `/` (it would open a level of its own), not empty.
fn key_part(key: &str, s: &str) -> Result<(), ConfigError> {
    if s.is_empty() || s.contains('/') || s.chars().any(char::is_control) {
        return Err(ConfigError::new(
            key,
            format!("{s:?} must be non-empty, without '/' or control characters"),
        ));
    }
    Ok(())
}

/// This host's name, for the default instance id; the admin address's IP when unknown.
fn host_name(admin: SocketAddr) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| admin.ip().to_string())
}

impl RawCluster {
    pub(super) fn validate(self, admin: SocketAddr) -> Result<ClusterConfig, ConfigError> {
        if self.etcd.endpoints.is_empty() {
            return Err(ConfigError::new(
                "cluster.etcd.endpoints",
                "must list at least one etcd URL",
            ));
        }
        for (i, e) in self.etcd.endpoints.iter().enumerate() {
            if e.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("cluster.etcd.endpoints[{i}]"),
                    "must not be empty",
                ));
            }
        }
        key_part("cluster.name", &self.name)?;
        let instance_id = match self.instance_id.as_str() {
            "" => format!("{}:{}", host_name(admin), admin.port()),
            id => id.to_string(),
        };
        key_part("cluster.instance_id", &instance_id)?;
        positive("cluster.publish_interval", self.publish_interval)?;
        if self.lease_ttl < Duration::from_secs(2) {
            return Err(ConfigError::new(
                "cluster.lease_ttl",
                "must be at least 2s (etcd leases count whole seconds)",
            ));
        }
        if self.publish_interval * 2 > self.lease_ttl {
            return Err(ConfigError::new(
                "cluster.publish_interval",
                format!(
                    "must be at most half of cluster.lease_ttl ({:?}), or the lease lapses between renewals",
                    self.lease_ttl
                ),
            ));
        }
        Ok(ClusterConfig {
            endpoints: self.etcd.endpoints,
            name: self.name,
            instance_id,
            lease_ttl: self.lease_ttl,
            publish_interval: self.publish_interval,
        })
    }
}
