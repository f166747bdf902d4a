//! The last minute of routes, moves and errors, one sample a second, for the status page.
//!
//! The numbers come from the metrics registry itself (its rendered exposition), so the page shows
//! exactly what Prometheus scrapes, including the library's series, without a second set of
//! counters on the data path. [`History`] is a plain ring with no clock or socket; the admin
//! module's sampler feeds it once a second.

use std::collections::VecDeque;

use serde::Serialize;

/// How many per-second samples the ring keeps: one minute.
pub const SAMPLES: usize = 60;

/// Counter totals read from one rendering of the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// `switchyard_routes_total`.
    pub routes: u64,
    /// `switchyard_migrations_total`, every result.
    pub moves: u64,
    /// `switchyard_route_failures_total` + `switchyard_backend_connect_failures_total` +
    /// `switchyard_migrations_total{result="failed"}`.
    pub errors: u64,
}

impl Totals {
    /// Sums the series the page shows out of a Prometheus text exposition. Lines it does not
    /// know, and values that are not numbers, are skipped: this only feeds a picture.
    pub fn from_exposition(text: &str) -> Totals {
        let mut t = Totals::default();
        for line in text.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            if !(value.is_finite() && value >= 0.0) {
                continue;
            }
            let value = value as u64;
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            match name {
                "switchyard_routes_total" => t.routes += value,
                "switchyard_migrations_total" => {
                    t.moves += value;
                    if labels.contains("result=\"failed\"") {
                        t.errors += value;
                    }
                }
                "switchyard_route_failures_total" | "switchyard_backend_connect_failures_total" => {
                    t.errors += value
                }
                _ => {}
            }
        }
        t
    }
}

/// The ring of per-second increments (oldest first), as `GET /history` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HistoryView {
    /// Seconds between two samples.
    pub interval_seconds: u64,
    /// Connections routed in each second.
    pub routes: Vec<u64>,
    /// Connection moves (succeeded or failed) in each second.
    pub moves: Vec<u64>,
    /// Route failures, failed backend connects and failed moves in each second.
    pub errors: Vec<u64>,
}

/// The last [`SAMPLES`] per-second increments of [`Totals`].
#[derive(Debug, Default)]
pub struct History {
    last: Option<Totals>,
    samples: VecDeque<Totals>,
}

impl History {
    /// Records the totals read now; the first call only sets the baseline. A counter that went
    /// down (a registry reset) counts as zero for that second rather than as a huge jump.
    pub fn record(&mut self, now: Totals) {
        if let Some(last) = self.last {
            if self.samples.len() == SAMPLES {
                self.samples.pop_front();
            }
            self.samples.push_back(Totals {
                routes: now.routes.saturating_sub(last.routes),
                moves: now.moves.saturating_sub(last.moves),
                errors: now.errors.saturating_sub(last.errors),
            });
        }
        self.last = Some(now);
    }

    /// The samples so far, oldest first.
    pub fn view(&self) -> HistoryView {
        HistoryView {
            interval_seconds: 1,
            routes: self.samples.iter().map(|s| s.routes).collect(),
            moves: self.samples.iter().map(|s| s.moves).collect(),
            errors: self.samples.iter().map(|s| s.errors).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXPOSITION: &str = "\
# TYPE switchyard_routes_total counter
switchyard_routes_total 12
switchyard_route_failures_total 1
switchyard_backend_connect_failures_total{backend=\"127.0.0.1:1\"} 2
switchyard_backend_connect_failures_total{backend=\"127.0.0.1:2\"} 3
switchyard_migrations_total{result=\"succeeded\"} 7
switchyard_migrations_total{result=\"failed\"} 4
switchyard_migration_duration_seconds_count{result=\"failed\"} 4
switchyard_connections_active 9
garbage line
switchyard_routes_total NaN
";

    #[test]
    fn totals_sum_the_series_the_page_shows_and_skip_the_rest() {
        let t = Totals::from_exposition(EXPOSITION);
        assert_eq!(
            t,
            Totals {
                routes: 12,
                moves: 11,
                errors: 1 + 2 + 3 + 4
            }
        );
    }

    #[test]
    fn the_ring_holds_per_second_increments_of_the_last_minute() {
        let mut h = History::default();
        h.record(Totals {
            routes: 100,
            moves: 0,
            errors: 0,
        });
        assert!(
            h.view().routes.is_empty(),
            "the first reading is a baseline"
        );
        for i in 1..=70u64 {
            h.record(Totals {
                routes: 100 + i * i,
                moves: i,
                errors: 0,
            });
        }
        let v = h.view();
        assert_eq!(v.routes.len(), SAMPLES);
        // the oldest kept second is the 11th: 11² − 10² = 21
        assert_eq!(v.routes.first(), Some(&21));
        assert_eq!(v.routes.last(), Some(&(70 * 70 - 69 * 69)));
        assert!(v.moves.iter().all(|&m| m == 1));
    }

    #[test]
    fn a_counter_that_goes_down_counts_as_a_quiet_second() {
        let mut h = History::default();
        h.record(Totals {
            routes: 50,
            moves: 5,
            errors: 5,
        });
        h.record(Totals::default());
        assert_eq!(h.view().routes, vec![0]);
        assert_eq!(h.view().errors, vec![0]);
    }
}
