//! `RoutePolicy`: the operator's controls over routing (slow start, per-backend limits and the
//! queue, panic mode), and the small pure rules they are made of.
//!
//! Kept apart from [`super::RouterConfig`], whose fields are part of the fixed API: a router
//! built with `ScoreRouter::new(cfg)` gets [`RoutePolicy::default`], which turns every control
//! off, so an embedding application sees no change until it opts in with
//! `ScoreRouter::with_policy`.

use std::time::Duration;

/// The share of its weight a backend starts a slow start with: new connections reach it at once,
/// but few (Envoy's `min_weight_percent` defaults to the same 10 %).
pub const SLOW_START_FLOOR: f64 = 0.1;

/// The rebalance cooldown of an instance in a cluster, in publish intervals
/// ([`RoutePolicy::cluster_cooldown`]): the round trip of a move through the cluster. Peers
/// route on a view without this instance's move until they have read it, up to two intervals
/// (this instance publishes at its next cycle, they read at theirs); what they routed meanwhile
/// reaches this instance's view up to two intervals later again. So only a pool that has looked
/// even for four intervals since a move has shown every overshoot that move caused. The timed
/// model in `tests/router_cluster.rs` moves sessions twice with three.
pub const COOLDOWN_PUBLISH_INTERVALS: u32 = 4;

/// The longest a connection stays out of rebalance after a rebalance moved it, in cooldowns,
/// even while the pool never looks even: a bound, so a pool that only this instance's moved
/// connections could even out is not kept uneven for ever.
pub const COOLDOWN_LIMIT: u32 = 2;

/// Controls over where new connections may go; every one is off by default.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// A backend that becomes healthy while others serve ramps its weight linearly from
    /// [`SLOW_START_FLOOR`] to full over this time (`balance.slow_start`); zero = off.
    pub slow_start: Duration,
    /// Most connections one backend holds, counting routes and moves on their way
    /// (`balance.max_conns_per_backend`); 0 = no cap. A backend at its cap gets no routes and
    /// no moves.
    pub max_conns_per_backend: usize,
    /// How long a route waits in the FIFO queue when every candidate is at its cap
    /// (`balance.queue_timeout`); zero = refuse at once.
    pub queue_timeout: Duration,
    /// Most routes waiting at once; one more is refused at once.
    pub queue_limit: usize,
    /// Panic mode when fewer than this share of the known backends is healthy
    /// (`balance.panic_threshold`): routes then go to every known, non-drained backend, whatever
    /// its health, rather than overload the few. 0 = never.
    pub panic_threshold: f64,
    /// A connection a rebalance moved off a healthy backend is no rebalance candidate again
    /// until the pool has looked even to this router for this long since it landed (or
    /// [`COOLDOWN_LIMIT`] times this has passed); zero = off. Instances of a cluster act on
    /// views of each other that lag (the service sets it from `cluster.publish_interval`): a
    /// pool that overshot because peers routed on a view without this instance's moves is
    /// evened by sessions that have not just moved, never by moving these back. Moves off a
    /// drained or failing backend ignore it.
    pub rebalance_cooldown: Duration,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        Self {
            slow_start: Duration::ZERO,
            max_conns_per_backend: 0,
            queue_timeout: Duration::from_secs(5),
            queue_limit: 10_000,
            panic_threshold: 0.0,
            rebalance_cooldown: Duration::ZERO,
        }
    }
}

impl RoutePolicy {
    /// The share of its weight a backend that became healthy `elapsed` ago takes: linear from
    /// [`SLOW_START_FLOOR`] to 1 over `slow_start`, and 1 when slow start is off.
    pub fn ramp(&self, elapsed: Duration) -> f64 {
        if self.slow_start.is_zero() || elapsed >= self.slow_start {
            return 1.0;
        }
        let t = elapsed.as_secs_f64() / self.slow_start.as_secs_f64();
        SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * t
    }

    /// The rebalance cooldown of an instance that shares its pool with peers publishing every
    /// `publish_interval`: [`COOLDOWN_PUBLISH_INTERVALS`] of them.
    pub fn cluster_cooldown(publish_interval: Duration) -> Duration {
        publish_interval.saturating_mul(COOLDOWN_PUBLISH_INTERVALS)
    }

    /// The longest a connection stays out of rebalance after a rebalance moved it:
    /// [`COOLDOWN_LIMIT`] cooldowns.
    pub fn cooldown_limit(&self) -> Duration {
        self.rebalance_cooldown.saturating_mul(COOLDOWN_LIMIT)
    }

    /// Whether `healthy` of `known` backends is panic: below the threshold's share. Never with
    /// no known backend (nothing to spread over) or with the threshold at 0.
    pub fn panics(&self, healthy: usize, known: usize) -> bool {
        known > 0
            && self.panic_threshold > 0.0
            && (healthy as f64) < self.panic_threshold * known as f64
    }
}

/// Whether `weight` may weigh a backend: finite and above zero.
pub fn valid_weight(weight: f64) -> bool {
    weight.is_finite() && weight > 0.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ramp_climbs_linearly_from_the_floor_to_full() {
        let p = RoutePolicy {
            slow_start: Duration::from_secs(10),
            ..RoutePolicy::default()
        };
        assert_eq!(p.ramp(Duration::ZERO), SLOW_START_FLOOR);
        assert!((p.ramp(Duration::from_secs(5)) - 0.55).abs() < 1e-9);
        assert_eq!(p.ramp(Duration::from_secs(10)), 1.0);
        assert_eq!(p.ramp(Duration::from_secs(60)), 1.0);
        assert_eq!(RoutePolicy::default().ramp(Duration::ZERO), 1.0, "off");
    }

    #[test]
    fn panic_is_strictly_below_the_threshold_share() {
        let p = RoutePolicy {
            panic_threshold: 0.5,
            ..RoutePolicy::default()
        };
        assert!(!p.panics(2, 4), "half of four is not below half");
        assert!(p.panics(1, 4));
        assert!(p.panics(0, 1));
        assert!(!p.panics(0, 0), "nothing known, nothing to spread over");
        assert!(!RoutePolicy::default().panics(0, 3), "off by default");
    }

    #[test]
    fn only_finite_positive_weights_are_valid() {
        assert!(valid_weight(0.5) && valid_weight(3.0));
        for w in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(!valid_weight(w), "{w}");
        }
    }
}
