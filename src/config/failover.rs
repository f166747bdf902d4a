//! `failover`: what a MySQL session does when its backend is lost (re-attach, replay, their
//! bounds), read into [`crate::mysql::FailoverConfig`]. Byte sizes read as people write them
//! (`1MiB`, `512KiB`, `65536`).

use std::time::Duration;

use serde::Deserialize;

use super::{positive, ConfigError};
use crate::mysql::FailoverConfig;

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
