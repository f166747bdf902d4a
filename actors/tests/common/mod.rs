//! A small tester for the router: backends, connections that remember what they were asked,
//! and checks that the router's numbers equal what the connections themselves believe.
//!
//! Connections are tiny actors; a redirect request lands in their mailbox, so after a step the
//! tester "flushes" (pings every connection) before reading what they were asked. No sleeps.

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use switchyard::*;

/// Records every redirect a connection receives.
pub struct FakeConn {
    id: u64,
    log: Rc<RefCell<Vec<(u64, String)>>>,
}

impl FakeConn {
    /// A connection outside any tester, for tests that register it by hand.
    pub fn detached(id: u64) -> Self {
        Self {
            id,
            log: Rc::default(),
        }
    }
}

impl Actor for FakeConn {
    type Context = Context<Self>;
}

impl Handler<Redirect> for FakeConn {
    type Result = ();
    fn handle(&mut self, msg: Redirect, _: &mut Context<Self>) {
        self.log
            .borrow_mut()
            .push((self.id, msg.to.addr().to_string()));
    }
}

/// Round trip through a connection's mailbox: everything sent before has been handled.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for FakeConn {
    type Result = ();
    fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
}

/// What one simulated connection believes about itself.
pub struct SimConn {
    pub addr: Addr<FakeConn>,
    pub backend: String,
    pub redirecting: Option<String>,
    pub moves: u32,
}

/// Drives a `ScoreRouter` and keeps the connections' side of the story.
pub struct Tester {
    pub router: Addr<ScoreRouter>,
    pub conns: BTreeMap<u64, SimConn>,
    /// Routes handed out and not finished, by backend.
    pub pending: HashMap<String, i64>,
    log: Rc<RefCell<Vec<(u64, String)>>>,
    next_id: u64,
    next_backend: usize,
    /// Backends the tester reported, with their last status.
    pub health: BTreeMap<String, BackendStatus>,
    /// The peers' connections last sent with [`Tester::peer_load`] (part of every score).
    pub peers: HashMap<String, usize>,
}

/// A router config whose periodic tick is off: tests drive `Rebalance` themselves.
pub fn manual_cfg() -> RouterConfig {
    RouterConfig {
        rebalance_interval: Duration::ZERO,
        ..RouterConfig::default()
    }
}

impl Tester {
    pub fn new() -> Self {
        Self::with_cfg(manual_cfg())
    }

    pub fn with_cfg(cfg: RouterConfig) -> Self {
        Self::with_router(ScoreRouter::new(cfg).start())
    }

    pub fn with_router(router: Addr<ScoreRouter>) -> Self {
        Self {
            router,
            conns: BTreeMap::new(),
            pending: HashMap::new(),
            log: Rc::default(),
            next_id: 1,
            next_backend: 0,
            health: BTreeMap::new(),
            peers: HashMap::new(),
        }
    }

    pub fn backend_name(i: usize) -> String {
        format!("10.0.0.{i}:4000")
    }

    /// Reports `n` new healthy backends; returns their addresses.
    pub async fn add_backends(&mut self, n: usize) -> Vec<String> {
        let mut changed = HashMap::new();
        let mut added = Vec::new();
        for _ in 0..n {
            let addr = Self::backend_name(self.next_backend);
            self.next_backend += 1;
            changed.insert(addr.clone(), BackendHealth::healthy());
            self.health.insert(addr.clone(), BackendStatus::Healthy);
            added.push(addr);
        }
        self.changed(changed).await;
        added
    }

    /// Reports one backend's new health.
    pub async fn set_health(&mut self, addr: &str, health: BackendHealth) {
        self.health.insert(addr.to_string(), health.status);
        self.changed(HashMap::from([(addr.to_string(), health)]))
            .await;
    }

    pub async fn kill(&mut self, addr: &str) {
        self.set_health(addr, BackendHealth::down("killed by test"))
            .await;
    }

    pub async fn changed(&mut self, backends: HashMap<String, BackendHealth>) {
        self.router
            .send(BackendsChanged {
                backends,
                error: None,
            })
            .await
            .expect("router alive");
    }

    /// Routes without finishing: the route stays pending.
    pub async fn route(&mut self) -> Result<BackendInst, RouteError> {
        let r = self
            .router
            .send(Route::default())
            .await
            .expect("router alive");
        if let Ok(inst) = &r {
            *self.pending.entry(inst.addr().to_string()).or_default() += 1;
        }
        r
    }

    /// Finishes a pending route on `backend`: a new connection (returns its id) or a failure.
    pub async fn finish(&mut self, backend: &str, connected: bool) -> Option<u64> {
        *self.pending.get_mut(backend).expect("pending route") -= 1;
        let handle = if connected {
            let id = self.next_id;
            self.next_id += 1;
            let addr = FakeConn {
                id,
                log: self.log.clone(),
            }
            .start();
            self.conns.insert(
                id,
                SimConn {
                    addr: addr.clone(),
                    backend: backend.to_string(),
                    redirecting: None,
                    moves: 0,
                },
            );
            Some(ConnHandle::new(id, addr.recipient()))
        } else {
            None
        };
        let id = handle.as_ref().map(|h| h.id());
        self.router
            .send(ConnCreated {
                backend: backend.to_string(),
                conn: handle,
            })
            .await
            .expect("router alive");
        id
    }

    /// Routes and connects `n` connections; panics if a route fails.
    pub async fn add_conns(&mut self, n: usize) -> Vec<u64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let inst = self.route().await.expect("route");
            ids.push(self.finish(inst.addr(), true).await.expect("id"));
        }
        ids
    }

    /// Closes connection `id` the way a connection does: `ConnClosed` on its current backend.
    pub async fn close(&mut self, id: u64) {
        let c = self.conns.remove(&id).expect("known conn");
        self.router
            .send(ConnClosed {
                addr: c.backend,
                conn_id: id,
            })
            .await
            .expect("router alive");
    }

    /// Closes the first `n` connections (by id) on `backend`.
    pub async fn close_on(&mut self, backend: &str, n: usize) {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.backend == backend)
            .map(|(id, _)| *id)
            .take(n)
            .collect();
        for id in ids {
            self.close(id).await;
        }
    }

    /// Every connection has handled what was sent to it; collects the redirect requests.
    /// Returns how many new requests arrived.
    pub async fn flush(&mut self) -> usize {
        let addrs: Vec<Addr<FakeConn>> = self.conns.values().map(|c| c.addr.clone()).collect();
        for a in addrs {
            let _ = a.send(Ping).await;
        }
        let requests: Vec<(u64, String)> = self.log.borrow_mut().drain(..).collect();
        let n = requests.len();
        for (id, to) in requests {
            if let Some(c) = self.conns.get_mut(&id) {
                assert!(
                    c.redirecting.is_none(),
                    "conn {id} asked to redirect twice at once"
                );
                c.redirecting = Some(to);
            }
        }
        n
    }

    /// One rebalance step of at most `max` moves; returns how many moves were asked.
    pub async fn rebalance(&mut self, max: usize) -> usize {
        self.router
            .send(Rebalance { max_conns: max })
            .await
            .expect("router alive");
        self.flush().await
    }

    /// Answers the redirect of `id`.
    pub async fn finish_redirect(&mut self, id: u64, succeed: bool) {
        let c = self.conns.get_mut(&id).expect("known conn");
        let to = c.redirecting.take().expect("redirecting");
        let from = c.backend.clone();
        if succeed {
            c.backend = to.clone();
            c.moves += 1;
            self.router
                .send(RedirectSucceeded {
                    from,
                    to,
                    conn_id: id,
                })
                .await
                .expect("router alive");
        } else {
            self.router
                .send(RedirectFailed {
                    from,
                    to,
                    conn_id: id,
                })
                .await
                .expect("router alive");
        }
    }

    /// Answers every redirect in flight.
    pub async fn finish_redirects(&mut self, succeed: bool) -> usize {
        let ids: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.redirecting.is_some())
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.finish_redirect(*id, succeed).await;
        }
        ids.len()
    }

    /// Rebalances and completes moves until nothing more moves (bounded).
    pub async fn rebalance_to_rest(&mut self) {
        for _ in 0..10_000 {
            if self.rebalance(100).await == 0 {
                return;
            }
            self.finish_redirects(true).await;
        }
        panic!("rebalance did not come to rest");
    }

    /// Drains or undrains `addr`, as an operator does; the router's answer.
    pub async fn set_drained(&self, addr: &str, drained: bool) -> Result<(), RouterError> {
        self.router
            .send(SetDrained {
                addr: addr.to_string(),
                drained,
            })
            .await
            .expect("router alive")
    }

    pub async fn backends(&self) -> Vec<BackendSnapshot> {
        self.router.send(GetBackends).await.expect("router alive")
    }

    pub async fn snapshot(&self, addr: &str) -> Option<BackendSnapshot> {
        self.backends().await.into_iter().find(|b| b.addr == addr)
    }

    pub async fn conn_count(&self) -> usize {
        self.router.send(ConnCount).await.expect("router alive")
    }

    /// Tells the router the peers' connections by backend (`PeerLoad`).
    pub async fn peer_load(&mut self, conns: HashMap<String, usize>) {
        self.peers = conns.clone();
        self.router
            .send(PeerLoad { conns })
            .await
            .expect("router alive");
    }

    /// The router's numbers equal what the connections believe, and its own invariants hold.
    pub async fn check(&self) {
        self.router
            .send(CheckInvariants)
            .await
            .expect("router alive")
            .expect("router invariants");
        let mut count: HashMap<&str, usize> = HashMap::new();
        let mut score: HashMap<&str, i64> = HashMap::new();
        for (b, p) in &self.pending {
            *score.entry(b).or_default() += p;
        }
        for c in self.conns.values() {
            *count.entry(&c.backend).or_default() += 1;
            match &c.redirecting {
                Some(to) => *score.entry(to).or_default() += 1,
                None => *score.entry(&c.backend).or_default() += 1,
            }
        }
        let snaps = self.backends().await;
        let known: HashMap<&str, &BackendSnapshot> =
            snaps.iter().map(|b| (b.addr.as_str(), b)).collect();
        for (b, n) in &count {
            let s = known
                .get(b)
                .unwrap_or_else(|| panic!("backend {b} has connections but the router dropped it"));
            assert_eq!(s.conn_count, *n, "conn count of {b}");
        }
        for (b, sc) in &score {
            if *sc == 0 && !known.contains_key(b) {
                continue;
            }
            let s = known
                .get(b)
                .unwrap_or_else(|| panic!("backend {b} has conn score but the router dropped it"));
            assert_eq!(s.conn_score, *sc, "conn score of {b}");
        }
        for s in &snaps {
            assert_eq!(
                s.conn_count,
                count.get(s.addr.as_str()).copied().unwrap_or(0),
                "conn count of {}",
                s.addr
            );
            assert_eq!(
                s.conn_score,
                score.get(s.addr.as_str()).copied().unwrap_or(0),
                "conn score of {}",
                s.addr
            );
            assert_eq!(
                s.score,
                s.conn_score
                    + self.peers.get(&s.addr).copied().unwrap_or(0) as i64
                    + s.health.status.score(),
                "score of {}",
                s.addr
            );
        }
        assert_eq!(self.conn_count().await, self.conns.len(), "conn count");
        let mut sorted = snaps.clone();
        sorted.sort_by_key(|b| b.score);
        assert_eq!(
            sorted.iter().map(|b| b.score).collect::<Vec<_>>(),
            snaps.iter().map(|b| b.score).collect::<Vec<_>>(),
            "GetBackends is ascending by score"
        );
    }

    /// One figure of every healthy backend, with its smallest and largest (`None` when no
    /// backend is healthy).
    async fn healthy_spread<T: Copy + Ord>(
        &self,
        figure: impl Fn(&BackendSnapshot) -> T,
    ) -> Option<(Vec<T>, T, T)> {
        let figures: Vec<T> = self
            .backends()
            .await
            .iter()
            .filter(|b| b.health.status == BackendStatus::Healthy)
            .map(figure)
            .collect();
        let min = figures.iter().min().copied()?;
        let max = figures.iter().max().copied()?;
        Some((figures, min, max))
    }

    /// Healthy backends' connection counts differ by at most `slack`.
    pub async fn check_balanced(&self, slack: usize) {
        if let Some((counts, min, max)) = self.healthy_spread(|b| b.conn_count).await {
            assert!(
                max - min <= slack,
                "unbalanced: counts {counts:?} (slack {slack})"
            );
        }
    }

    /// Among healthy backends, busiest / (idlest + 1) is below `ratio` (the rebalance goal).
    pub async fn check_ratio(&self, ratio: f64) {
        if let Some((scores, min, max)) = self.healthy_spread(|b| b.score).await {
            assert!(
                (max as f64) / ((min + 1) as f64) < ratio,
                "unbalanced: scores {scores:?} (ratio {ratio})"
            );
        }
    }
}
