//! `balance`: how the router spreads and moves connections ([`RouterConfig`]) and the
//! operator's controls over it ([`RoutePolicy`]: slow start, per-backend caps and the wait
//! queue, panic mode).

use std::time::Duration;

use serde::Deserialize;
use switchyard::{RoutePolicy, RouterConfig};

use super::ConfigError;

/// `balance.panic_threshold` when absent: Envoy's default.
const DEFAULT_PANIC_THRESHOLD: f64 = 0.5;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBalance {
    #[serde(with = "humantime_serde")]
    rebalance_interval: Duration,
    conns_per_tick: usize,
    max_score_ratio: f64,
    #[serde(with = "humantime_serde")]
    redirect_fail_backoff: Duration,
    #[serde(with = "humantime_serde")]
    slow_start: Duration,
    max_conns_per_backend: usize,
    #[serde(with = "humantime_serde")]
    queue_timeout: Duration,
    panic_threshold: f64,
}

impl Default for RawBalance {
    fn default() -> Self {
        let d = RouterConfig::default();
        let p = RoutePolicy::default();
        Self {
            rebalance_interval: d.rebalance_interval,
            conns_per_tick: d.conns_per_tick,
            max_score_ratio: d.max_score_ratio,
            redirect_fail_backoff: d.redirect_fail_backoff,
            slow_start: p.slow_start,
            max_conns_per_backend: p.max_conns_per_backend,
            queue_timeout: p.queue_timeout,
            panic_threshold: DEFAULT_PANIC_THRESHOLD,
        }
    }
}

impl RawBalance {
    pub(super) fn validate(self) -> Result<(RouterConfig, RoutePolicy), ConfigError> {
        let b = self;
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
        if !(0.0..=1.0).contains(&b.panic_threshold) {
            return Err(ConfigError::new(
                "balance.panic_threshold",
                format!(
                    "must be a share from 0 (never) to 1, got {}",
                    b.panic_threshold
                ),
            ));
        }
        let router = RouterConfig {
            rebalance_interval: b.rebalance_interval,
            conns_per_tick: b.conns_per_tick,
            max_score_ratio: b.max_score_ratio,
            redirect_fail_backoff: b.redirect_fail_backoff,
        };
        let policy = RoutePolicy {
            slow_start: b.slow_start,
            max_conns_per_backend: b.max_conns_per_backend,
            queue_timeout: b.queue_timeout,
            panic_threshold: b.panic_threshold,
            ..RoutePolicy::default()
        };
        Ok((router, policy))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::*;

    const BACKENDS: &str = "backends:\n  static: [127.0.0.1:4000]\n";

    #[test]
    fn the_routing_controls_default_to_off_with_half_for_panic() {
        let c = load(BACKENDS).expect("valid");
        assert_eq!(c.policy.slow_start, Duration::ZERO);
        assert_eq!(c.policy.max_conns_per_backend, 0);
        assert_eq!(c.policy.queue_timeout, Duration::from_secs(5));
        assert_eq!(c.policy.panic_threshold, 0.5);
    }

    #[test]
    fn the_routing_controls_are_read() {
        let c = load(&format!(
            "{BACKENDS}balance: {{ slow_start: 30s, max_conns_per_backend: 100, queue_timeout: 250ms, panic_threshold: 0.3 }}\n"
        ))
        .expect("valid");
        assert_eq!(c.policy.slow_start, Duration::from_secs(30));
        assert_eq!(c.policy.max_conns_per_backend, 100);
        assert_eq!(c.policy.queue_timeout, Duration::from_millis(250));
        assert_eq!(c.policy.panic_threshold, 0.3);
    }

    #[test]
    fn a_panic_threshold_outside_zero_to_one_names_the_key() {
        for t in ["1.5", "-0.1"] {
            let e = load(&format!("{BACKENDS}balance: {{ panic_threshold: {t} }}\n")).expect_err(t);
            assert_eq!(e.key, "balance.panic_threshold", "{t}: {e}");
        }
    }
}
