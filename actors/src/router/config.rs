//! `RouterConfig`: the router's tuning, read by both the score table (ratio, back-off) and the
//! actor shell (tick period, moves per tick). Its own module so neither has to import the other.

use std::time::Duration;

/// Tuning of routing and rebalancing.
#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    /// Period of the rebalance tick; zero turns the tick off (tests then send
    /// [`crate::Rebalance`]).
    pub rebalance_interval: Duration,
    /// Connections asked to move per tick: bounds the churn one tick can cause.
    pub conns_per_tick: usize,
    /// Rebalance only while busiest / (idlest + 1) is at least this.
    pub max_score_ratio: f64,
    /// A connection whose redirect failed is not asked again for this long.
    pub redirect_fail_backoff: Duration,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            rebalance_interval: Duration::from_millis(10),
            conns_per_tick: 10,
            max_score_ratio: 1.2,
            redirect_fail_backoff: Duration::from_secs(3),
        }
    }
}
