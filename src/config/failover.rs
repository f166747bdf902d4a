//! `failover`: what a MySQL session does when its backend is lost (re-attach, replay, their
//! bounds), read into [`FailoverConfig`]. Byte sizes read as people write them
//! (`1MiB`, `512KiB`, `65536`).

use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawFailover {
    reattach: bool,
    replay_transactions: bool,
    /// `1MiB`, `512KiB`, `65536`, …
    max_replay_bytes: RawBytes,
    #[serde(with = "humantime_serde")]
    timeout: Duration,
}

impl Default for RawFailover {
    fn default() -> Self {
        let d = FailoverConfig::default();
        Self {
            reattach: d.reattach,
            replay_transactions: d.replay_transactions,
            max_replay_bytes: RawBytes::Count(d.max_replay_bytes as u64),
            timeout: d.timeout,
        }
    }
}

impl RawFailover {
    /// The checked settings; errors name `failover.timeout` or `failover.max_replay_bytes`.
    pub(super) fn validate(self) -> Result<FailoverConfig, ConfigError> {
        positive("failover.timeout", self.timeout)?;
        let max_replay_bytes = self
            .max_replay_bytes
            .bytes()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                ConfigError::new(
                    "failover.max_replay_bytes",
                    "not a byte size (e.g. 1MiB, 512KiB, 65536)",
                )
            })?;
        Ok(FailoverConfig {
            reattach: self.reattach,
            replay_transactions: self.replay_transactions,
            max_replay_bytes,
            timeout: self.timeout,
        })
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

/// `failover.*`: what a session does when its backend is lost unplanned (see
/// `docs/failover.md`).
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Re-attach a session whose backend was lost to a healthy one, with its state
    /// (`failover.reattach`); also retries reads in flight. Off: such a session is closed.
    pub reattach: bool,
    /// Replay the open transaction on the new backend (`failover.replay_transactions`).
    pub replay_transactions: bool,
    /// Most bytes of statements a transaction's replay log keeps (`failover.max_replay_bytes`);
    /// a longer transaction is not replayed.
    pub max_replay_bytes: usize,
    /// Bound on one re-attach: route, login, restore, replay (`failover.timeout`).
    pub timeout: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            reattach: true,
            replay_transactions: true,
            max_replay_bytes: 1 << 20,
            timeout: Duration::from_secs(10),
        }
    }
}
