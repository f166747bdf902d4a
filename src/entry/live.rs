//! `LiveConns`: how many client connections are open, for shutdown and for the
//! `switchyard_connections_active` gauge, kept by one drop guard per connection.
//!
//! An atomic, not actor state: connections live on several arbiters and shutdown polls it. The
//! guard is taken at accept, so a client still on its way to a worker already counts, and it is
//! given back by `Drop`, so no way of ending (a panic included) leaves the count high.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use metrics::Gauge;

/// Count of open client connections, shared by the listener, the connections and shutdown.
#[derive(Clone)]
pub struct LiveConns {
    count: Arc<AtomicUsize>,
    gauge: Gauge,
}

impl LiveConns {
    /// A count that also drives `gauge` (the service passes `switchyard_connections_active`).
    pub fn with_gauge(gauge: Gauge) -> Self {
        Self {
            count: Arc::default(),
            gauge,
        }
    }

    /// Open connections now.
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Counts one connection until the guard drops.
    pub fn enter(&self) -> LiveGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.gauge.increment(1.0);
        LiveGuard(self.clone())
    }

    /// Counts one connection until the guard drops, unless `max` are open already (`max` 0 =
    /// no cap). Check and count are one atomic step, so callers on several threads can never
    /// push the count past `max` together.
    pub fn try_enter(&self, max: usize) -> Option<LiveGuard> {
        if max == 0 {
            return Some(self.enter());
        }
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        self.gauge.increment(1.0);
        Some(LiveGuard(self.clone()))
    }
}

impl Default for LiveConns {
    /// A count with no gauge behind it.
    fn default() -> Self {
        Self::with_gauge(Gauge::noop())
    }
}

impl std::fmt::Debug for LiveConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LiveConns").field(&self.get()).finish()
    }
}

/// One open connection in [`LiveConns`] (and in its gauge) until dropped.
#[derive(Debug)]
pub struct LiveGuard(LiveConns);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::AcqRel);
        self.0.gauge.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn try_enter_refuses_at_the_cap_and_admits_again_once_a_connection_ends() {
        let live = LiveConns::default();
        let a = live.try_enter(2).expect("first of two");
        let _b = live.try_enter(2).expect("second of two");
        assert!(live.try_enter(2).is_none(), "a third over a cap of 2");
        assert_eq!(live.get(), 2, "a refusal leaves the count alone");
        drop(a);
        let _c = live.try_enter(2).expect("room again after one ended");
        assert_eq!(live.get(), 2);
        let unlimited: Vec<_> = (0..10).map(|_| live.try_enter(0)).collect();
        assert!(unlimited.iter().all(Option::is_some), "0 means no cap");
        assert_eq!(live.get(), 12);
    }

    #[test]
    fn a_guard_counts_until_dropped_even_by_a_panic() {
        let live = LiveConns::default();
        let a = live.enter();
        let l = live.clone();
        let panicked = std::thread::spawn(move || {
            let _b = l.enter();
            panic!("a connection bug");
        })
        .join();
        assert!(panicked.is_err());
        assert_eq!(live.get(), 1);
        drop(a);
        assert_eq!(live.get(), 0);
    }
}
