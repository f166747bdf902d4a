//! Graceful shutdown: wait for SIGINT/SIGTERM, then give open connections time to finish.
//!
//! The service owns the order (stop accepting, stop the observer, close `mysql` sessions at their
//! next safe point, drain, stop); this module only
//! knows how to wait for a signal and how to wait, bounded, for the connection count to reach 0.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::entry::LiveConns;

/// Waits for SIGINT or SIGTERM and says which arrived.
pub async fn wait_for_signal() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every connection finished.
    Clean,
    /// The timeout passed with this many connections still open.
    TimedOut(usize),
}

/// Waits until `live` reaches zero or `timeout` passes, polling every few milliseconds.
pub async fn drain(live: &LiveConns, timeout: Duration) -> Drained {
    let deadline = Instant::now() + timeout;
    loop {
        let open = live.get();
        if open == 0 {
            return Drained::Clean;
        }
        if Instant::now() >= deadline {
            return Drained::TimedOut(open);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_waits_for_the_last_connection_but_not_past_the_timeout() {
        let live = LiveConns::default();
        assert_eq!(drain(&live, Duration::from_secs(1)).await, Drained::Clean);
        let guard = live.enter();
        assert_eq!(
            drain(&live, Duration::from_secs(1)).await,
            Drained::TimedOut(1)
        );
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(guard);
        });
        assert_eq!(drain(&live, Duration::from_secs(5)).await, Drained::Clean);
        release.await.expect("join");
    }
}
