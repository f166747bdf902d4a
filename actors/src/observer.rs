//! `BackendObserver`: the actor that watches the pool and reports changes.
//!
//! Each cycle fetches the list ([`BackendFetcher`]), checks every backend ([`HealthCheck`],
//! concurrently with a bound), applies hysteresis (`fall` / `rise`), compares with the last cycle
//! and sends [`BackendsChanged`] to its receiver, and (when it differs from the last) the whole
//! list with weights as [`BackendsListed`] to an optional second receiver. Inbound: [`Refresh`] (run a cycle now),
//! [`GetObserved`] and [`StopObserver`]. Cycles never overlap: a refresh during a cycle is folded
//! into one more. Its messages live in `observation`, which the router shares.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use actix::WeakRecipient;
use futures::stream::{self, StreamExt};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::discovery::BackendFetcher;
use crate::error::{FetchError, ObserveError};
use crate::health::{HealthCheck, HealthCheckConfig};
use crate::model::{BackendHealth, BackendStatus};
use crate::observation::{BackendsChanged, BackendsListed, GetObserved, Refresh, StopObserver};

/// Consecutive results of one backend, for hysteresis.
#[derive(Debug, Clone, Copy, Default)]
struct Streak {
    good: u32,
    bad: u32,
}

/// A good cycle's checked backends and their weights.
type CycleResult = Result<(Vec<(String, BackendHealth)>, HashMap<String, f64>), FetchError>;

/// Watches the backends and tells its receiver what changed.
///
/// Generic over discovery `F` and health check `H`; both are shared with the in-flight cycle by
/// `Rc`, since the observer and its cycles live on one arbiter thread.
pub struct BackendObserver<F: BackendFetcher, H: HealthCheck> {
    fetcher: Rc<F>,
    health_check: Rc<H>,
    cfg: HealthCheckConfig,
    /// Weak, so an observer never keeps its router alive.
    receiver: WeakRecipient<BackendsChanged>,
    /// Where the full list goes, if anywhere (weak too).
    listing: Option<WeakRecipient<BackendsListed>>,
    /// The list as last sent there.
    listed: Option<HashMap<String, f64>>,
    /// Health as last reported (after hysteresis), for every backend of the last good cycle.
    current: HashMap<String, BackendHealth>,
    streaks: HashMap<String, Streak>,
    running: bool,
    refresh_pending: bool,
    timer: Option<SpawnHandle>,
}

impl<F: BackendFetcher, H: HealthCheck> BackendObserver<F, H> {
    /// An observer that reports to `receiver`. Start it with `.start()`; its first cycle runs at
    /// once.
    pub fn new(
        fetcher: F,
        health_check: H,
        cfg: HealthCheckConfig,
        receiver: Recipient<BackendsChanged>,
    ) -> Self {
        Self {
            fetcher: Rc::new(fetcher),
            health_check: Rc::new(health_check),
            cfg,
            receiver: receiver.downgrade(),
            listing: None,
            listed: None,
            current: HashMap::new(),
            streaks: HashMap::new(),
            running: false,
            refresh_pending: false,
            timer: None,
        }
    }

    /// Also sends the full list with weights ([`BackendsListed`]) to `listing` after each good
    /// cycle whose list differs from the last one sent.
    pub fn with_listing(mut self, listing: Recipient<BackendsListed>) -> Self {
        self.listing = Some(listing.downgrade());
        self
    }

    fn start_cycle(&mut self, ctx: &mut Context<Self>) {
        if let Some(timer) = self.timer.take() {
            ctx.cancel_future(timer);
        }
        self.running = true;
        self.refresh_pending = false;
        let started = Instant::now();
        let fetcher = self.fetcher.clone();
        let hc = self.health_check.clone();
        let cfg = self.cfg.clone();
        let fut = async move { run_cycle(&*fetcher, hc, &cfg).await };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            act.running = false;
            let cost = started.elapsed();
            metrics::histogram!("switchyard_health_cycle_seconds").record(cost.as_secs_f64());
            act.finish_cycle(res, ctx);
            if act.refresh_pending {
                act.start_cycle(ctx);
            } else {
                let wait = act.cfg.interval.saturating_sub(cost);
                act.schedule(wait, ctx);
            }
        }));
    }

    fn schedule(&mut self, wait: Duration, ctx: &mut Context<Self>) {
        self.timer = Some(ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.start_cycle(ctx);
        }));
    }

    fn finish_cycle(&mut self, res: CycleResult, ctx: &mut Context<Self>) {
        let mut listing = None;
        let msg = match res {
            Err(err) => {
                warn!(error = %err, "backend discovery failed");
                BackendsChanged {
                    backends: HashMap::new(),
                    error: Some(ObserveError::Fetch(err)),
                }
            }
            Ok((checked, weights)) => {
                listing = self.listing_update(&checked, weights);
                let reported = self.apply_hysteresis(checked);
                let changes = diff(&self.current, &reported);
                for (addr, health) in &changes {
                    info!(backend = %addr, status = %health.status,
                          reason = health.ping_err.as_deref().unwrap_or(""), "backend health changed");
                }
                for (addr, health) in &reported {
                    metrics::gauge!("switchyard_backend_healthy", "backend" => addr.clone())
                        .set(if health.status.routable() { 1.0 } else { 0.0 });
                }
                for addr in self.current.keys().filter(|a| !reported.contains_key(*a)) {
                    metrics::gauge!("switchyard_backend_healthy", "backend" => addr.clone())
                        .set(0.0);
                }
                self.current = reported;
                BackendsChanged {
                    backends: changes,
                    error: None,
                }
            }
        };
        match self.receiver.upgrade() {
            Some(r) if r.connected() => {
                r.do_send(msg);
                // after the health report, so the list is read against this cycle's health
                if let Some((to, list)) = listing {
                    to.do_send(list);
                }
            }
            _ => {
                debug!("observer's receiver is gone; stopping");
                ctx.stop();
            }
        }
    }

    /// The full list for the listing receiver, when there is one and the list changed since the
    /// last one sent.
    fn listing_update(
        &mut self,
        checked: &[(String, BackendHealth)],
        weights: HashMap<String, f64>,
    ) -> Option<(Recipient<BackendsListed>, BackendsListed)> {
        let listing = self.listing.as_ref().and_then(WeakRecipient::upgrade)?;
        let list: HashMap<String, f64> = checked
            .iter()
            .map(|(addr, _)| (addr.clone(), weights.get(addr).copied().unwrap_or(1.0)))
            .collect();
        if self.listed.as_ref() == Some(&list) {
            return None;
        }
        self.listed = Some(list.clone());
        Some((listing, BackendsListed { backends: list }))
    }

    /// Holds a status change back until `fall` bad (or `rise` good) checks in a row confirm it.
    fn apply_hysteresis(
        &mut self,
        checked: Vec<(String, BackendHealth)>,
    ) -> HashMap<String, BackendHealth> {
        let (fall, rise) = (self.cfg.fall.max(1), self.cfg.rise.max(1));
        let mut reported = HashMap::with_capacity(checked.len());
        let mut streaks = HashMap::with_capacity(checked.len());
        for (addr, health) in checked {
            let mut streak = self.streaks.get(&addr).copied().unwrap_or_default();
            if health.status == BackendStatus::Healthy {
                streak.good = streak.good.saturating_add(1);
                streak.bad = 0;
            } else {
                streak.bad = streak.bad.saturating_add(1);
                streak.good = 0;
            }
            let shown = match self.current.get(&addr) {
                Some(last)
                    if last.status == BackendStatus::Healthy
                        && health.status != BackendStatus::Healthy
                        && streak.bad < fall =>
                {
                    debug!(backend = %addr, failures = streak.bad, fall, "check failed; within fall");
                    BackendHealth {
                        server_version: last.server_version.clone(),
                        ..last.clone()
                    }
                }
                Some(last)
                    if last.status != BackendStatus::Healthy
                        && health.status == BackendStatus::Healthy
                        && streak.good < rise =>
                {
                    last.clone()
                }
                _ => health,
            };
            streaks.insert(addr.clone(), streak);
            reported.insert(addr, shown);
        }
        self.streaks = streaks;
        reported
    }
}

/// One cycle's work, off the actor: fetch, then check with bounded concurrency.
async fn run_cycle<F: BackendFetcher, H: HealthCheck>(
    fetcher: &F,
    hc: Rc<H>,
    cfg: &HealthCheckConfig,
) -> CycleResult {
    let list = fetcher.get_backend_list().await?;
    let weights = fetcher.weights();
    if !cfg.enable {
        let all = list
            .into_keys()
            .map(|addr| (addr, BackendHealth::healthy()))
            .collect();
        return Ok((all, weights));
    }
    let checks = stream::iter(list).map(|(addr, info)| {
        let hc = hc.clone();
        async move {
            let t = Instant::now();
            let health = hc.check(&addr, &info).await;
            metrics::histogram!("switchyard_health_check_seconds", "backend" => addr.clone())
                .record(t.elapsed().as_secs_f64());
            (addr, health)
        }
    });
    let checked = checks
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    Ok((checked, weights))
}

/// The changes between two cycles, by the reference's rules: only transitions into or out of
/// healthy are reported, plus a healthy backend whose version changed, plus removals.
fn diff(
    last: &HashMap<String, BackendHealth>,
    now: &HashMap<String, BackendHealth>,
) -> HashMap<String, BackendHealth> {
    let mut changes = HashMap::new();
    for (addr, before) in last {
        if before.status != BackendStatus::Healthy {
            continue;
        }
        match now.get(addr) {
            None => {
                changes.insert(
                    addr.clone(),
                    BackendHealth::down("removed from backend list"),
                );
            }
            Some(after) if after.status != BackendStatus::Healthy => {
                changes.insert(addr.clone(), after.clone());
            }
            _ => {}
        }
    }
    for (addr, after) in now {
        if after.status != BackendStatus::Healthy {
            continue;
        }
        match last.get(addr) {
            Some(before)
                if before.status == BackendStatus::Healthy
                    && before.server_version == after.server_version => {}
            _ => {
                changes.insert(addr.clone(), after.clone());
            }
        }
    }
    changes
}

impl<F: BackendFetcher, H: HealthCheck> Actor for BackendObserver<F, H> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.start_cycle(ctx);
    }
}

impl<F: BackendFetcher, H: HealthCheck> Supervised for BackendObserver<F, H> {
    fn restarting(&mut self, _: &mut Context<Self>) {
        // The in-flight cycle and the timer died with the old context; `started` begins anew.
        self.running = false;
        self.timer = None;
        warn!("observer restarting");
    }
}

impl<F: BackendFetcher, H: HealthCheck> Handler<Refresh> for BackendObserver<F, H> {
    type Result = ();
    fn handle(&mut self, _: Refresh, ctx: &mut Context<Self>) {
        if self.running {
            self.refresh_pending = true;
        } else {
            self.start_cycle(ctx);
        }
    }
}

impl<F: BackendFetcher, H: HealthCheck> Handler<GetObserved> for BackendObserver<F, H> {
    type Result = MessageResult<GetObserved>;
    fn handle(&mut self, _: GetObserved, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.current.clone())
    }
}

impl<F: BackendFetcher, H: HealthCheck> Handler<StopObserver> for BackendObserver<F, H> {
    type Result = ();
    fn handle(&mut self, _: StopObserver, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(entries: &[(&str, BackendHealth)]) -> HashMap<String, BackendHealth> {
        entries
            .iter()
            .map(|(a, h)| (a.to_string(), h.clone()))
            .collect()
    }

    #[test]
    fn diff_reports_removed_healthy_backend_as_down() {
        let last = map(&[("a", BackendHealth::healthy())]);
        let changes = diff(&last, &HashMap::new());
        assert_eq!(changes["a"].status, BackendStatus::CannotConnect);
        assert_eq!(
            changes["a"].ping_err.as_deref(),
            Some("removed from backend list")
        );
    }

    #[test]
    fn diff_ignores_unhealthy_to_unhealthy_and_unchanged_healthy() {
        let last = map(&[
            ("a", BackendHealth::down("x")),
            ("b", BackendHealth::healthy()),
        ]);
        let now = map(&[
            ("a", BackendHealth::down("y")),
            ("b", BackendHealth::healthy()),
        ]);
        assert!(diff(&last, &now).is_empty());
    }

    #[test]
    fn diff_reports_version_change_of_healthy_backend() {
        let last = map(&[("a", BackendHealth::healthy_with_version("1"))]);
        let now = map(&[("a", BackendHealth::healthy_with_version("2"))]);
        assert_eq!(diff(&last, &now)["a"].server_version, "2");
    }

    #[test]
    fn diff_reports_new_healthy_but_not_new_unhealthy() {
        let now = map(&[
            ("a", BackendHealth::healthy()),
            ("b", BackendHealth::down("x")),
        ]);
        let changes = diff(&HashMap::new(), &now);
        assert!(changes.contains_key("a"));
        assert!(!changes.contains_key("b"));
    }
}
