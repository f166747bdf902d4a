//! Cluster membership: this instance's lease and document in etcd, its peers' documents, and the
//! drains an operator made on any instance. One task per process, on the actix thread, using the
//! library's [`EtcdClient`] (the same client discovery reads TiDB's topology with).
//!
//! Each `cluster.publish_interval` the task renews its lease (`cluster.lease_ttl`), publishes its
//! per-backend connection counts when they changed, reads the others' documents and sends the
//! router their sum ([`PeerLoad`]), and applies drains stored under `drained/`. etcd down: the
//! last view stands for `lease_ttl`, then the router balances on its own counts alone; serving
//! never depends on etcd.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix::Addr;
use serde::{Deserialize, Serialize};
use switchyard::{
    EtcdClient, EtcdConfig, EtcdError, GetBackends, PeerLoad, RouterError, ScoreRouter, SetDrained,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::ClusterConfig;

/// What one instance publishes under `/switchyard/<cluster>/instances/<instance_id>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceDoc {
    /// Its `cluster.instance_id`.
    pub instance_id: String,
    /// Its admin API address.
    pub admin: String,
    /// Its switchyard version.
    pub version: String,
    /// When it started, in seconds since the Unix epoch.
    pub started: u64,
    /// Connections it holds, by backend address.
    pub conns: BTreeMap<String, usize>,
}

/// The cluster as this instance sees it, for `GET /cluster`, the status page and `/metrics`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ClusterView {
    /// `cluster.name`.
    pub cluster: String,
    /// This instance's id.
    pub instance_id: String,
    /// Every live instance (this one first, then its peers by id).
    pub instances: Vec<InstanceDoc>,
    /// Connections by backend over every live instance.
    pub backends: BTreeMap<String, usize>,
    /// Seconds since the peers were last read from etcd (`null` before the first read).
    pub view_age_seconds: Option<f64>,
    /// etcd has been unreachable longer than `lease_ttl`: the router balances alone.
    pub local_only: bool,
}

/// A request to the membership task from the admin API.
#[derive(Debug)]
enum Command {
    /// Store (or remove) a drain for every instance.
    Drain {
        addr: String,
        drained: bool,
        reply: oneshot::Sender<Result<(), EtcdError>>,
    },
    /// Delete this instance's document (shutdown), then stop.
    Leave { reply: oneshot::Sender<()> },
}

/// The admin API's handle on the membership task: its view, and drains to share.
#[derive(Debug, Clone)]
pub struct ClusterHandle {
    view: Arc<Mutex<ClusterView>>,
    /// When the peers were last read, for the view's age.
    read_at: Arc<Mutex<Option<Instant>>>,
    commands: mpsc::UnboundedSender<Command>,
}

impl ClusterHandle {
    /// The view as it stands, its age filled in now.
    pub fn view(&self) -> ClusterView {
        let mut view = lock(&self.view).clone();
        view.view_age_seconds = lock(&self.read_at).map(|t| t.elapsed().as_secs_f64());
        view
    }

    /// Stores a drain (or its removal) in etcd, so every instance applies it.
    pub async fn share_drain(&self, addr: &str, drained: bool) -> Result<(), EtcdError> {
        let (reply, answer) = oneshot::channel();
        let cmd = Command::Drain {
            addr: addr.to_string(),
            drained,
            reply,
        };
        if self.commands.send(cmd).is_err() {
            return Err(EtcdError("cluster membership stopped".to_string()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(EtcdError("cluster membership stopped".to_string())))
    }

    /// Deletes this instance's document so peers drop it at once (best effort, bounded).
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Leave { reply }).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), answer).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The keys of one cluster.
struct Keys {
    instances: String,
    drained: String,
    me: String,
}

impl Keys {
    fn new(cluster: &str, instance_id: &str) -> Self {
        let base = format!("/switchyard/{cluster}/");
        Self {
            me: format!("{base}instances/{instance_id}"),
            instances: format!("{base}instances/"),
            drained: format!("{base}drained/"),
        }
    }
}

/// The etcd key that holds a drain of `addr` in `cluster`.
pub fn drained_key(cluster: &str, addr: &str) -> String {
    format!("/switchyard/{cluster}/drained/{addr}")
}

/// Starts the membership task for `cfg` in front of `router`; `admin` goes into the document.
/// Must run inside an actix system.
pub fn start(cfg: ClusterConfig, router: Addr<ScoreRouter>, admin: SocketAddr) -> ClusterHandle {
    let (commands, rx) = mpsc::unbounded_channel();
    let handle = ClusterHandle {
        view: Arc::new(Mutex::new(ClusterView {
            cluster: cfg.name.clone(),
            instance_id: cfg.instance_id.clone(),
            ..ClusterView::default()
        })),
        read_at: Arc::new(Mutex::new(None)),
        commands,
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // One round per call and a request timeout well inside a publish interval: a dead etcd
    // costs each cycle one timeout, never a pile of retries behind a lease that runs out.
    let etcd = EtcdConfig {
        request_timeout: (cfg.lease_ttl / 4)
            .clamp(Duration::from_millis(200), Duration::from_secs(2)),
        rounds: 1,
        backoff: Duration::from_millis(100),
    };
    let member = Member {
        client: EtcdClient::new(cfg.endpoints.clone(), etcd),
        keys: Keys::new(&cfg.name, &cfg.instance_id),
        doc: InstanceDoc {
            instance_id: cfg.instance_id.clone(),
            admin: admin.to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started,
            conns: BTreeMap::new(),
        },
        cfg,
        router,
        handle: handle.clone(),
        lease: None,
        renewed: None,
        published: None,
        last_read: None,
        local_only: false,
        drains: BTreeSet::new(),
        sent_peers: None,
    };
    actix_rt::spawn(member.run(rx));
    handle
}

/// The membership task's state.
struct Member {
    cfg: ClusterConfig,
    client: EtcdClient,
    keys: Keys,
    router: Addr<ScoreRouter>,
    handle: ClusterHandle,
    /// This instance's document, its counts as of the last cycle.
    doc: InstanceDoc,
    /// The lease the document lives on.
    lease: Option<i64>,
    /// When the lease was last renewed.
    renewed: Option<Instant>,
    /// The document as last written under the current lease.
    published: Option<InstanceDoc>,
    /// When the peers were last read successfully.
    last_read: Option<Instant>,
    /// The view has been dropped after `lease_ttl` without etcd.
    local_only: bool,
    /// Drains stored in etcd, as last applied to the router.
    drains: BTreeSet<String>,
    /// The peer load last sent to the router.
    sent_peers: Option<HashMap<String, usize>>,
}

impl Member {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        info!(cluster = %self.cfg.name, instance_id = %self.cfg.instance_id,
              endpoints = ?self.cfg.endpoints, "joining the cluster");
        let mut tick = tokio::time::interval(self.cfg.publish_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.cycle().await,
                cmd = commands.recv() => match cmd {
                    Some(Command::Drain { addr, drained, reply }) => {
                        let _ = reply.send(self.store_drain(&addr, drained).await);
                    }
                    Some(Command::Leave { reply }) => {
                        if let Err(e) = self.client.delete(&self.keys.me).await {
                            debug!(error = %e, "could not delete this instance's document");
                        }
                        let _ = reply.send(());
                        return;
                    }
                    None => return,
                },
            }
        }
    }

    /// One cycle: lease, publish, read peers, apply drains, report.
    async fn cycle(&mut self) {
        self.count_own().await;
        let etcd_ok = self.keep_lease().await && self.publish().await;
        let read_ok = etcd_ok && self.read_peers().await;
        if read_ok {
            self.read_drains().await;
        } else {
            self.maybe_go_local();
        }
        metrics::gauge!("switchyard_cluster_peers")
            .set(lock(&self.handle.view).instances.len().saturating_sub(1) as f64);
        metrics::gauge!("switchyard_cluster_view_age_seconds").set(
            self.last_read
                .map_or(f64::INFINITY, |t| t.elapsed().as_secs_f64()),
        );
    }

    /// This instance's connections by backend, from the router.
    async fn count_own(&mut self) {
        if let Ok(snapshots) = self.router.send(GetBackends).await {
            self.doc.conns = snapshots
                .into_iter()
                .filter(|b| b.conn_count > 0)
                .map(|b| (b.addr, b.conn_count))
                .collect();
        }
    }

    /// Grants a lease when there is none, renews it every third of its life; false when etcd
    /// did not answer.
    async fn keep_lease(&mut self) -> bool {
        if let Some(lease) = self.lease {
            let due = self
                .renewed
                .is_none_or(|t| t.elapsed() >= self.cfg.lease_ttl / 3);
            if !due {
                return true;
            }
            match self.client.lease_keepalive(lease).await {
                Ok(true) => {
                    self.renewed = Some(Instant::now());
                    return true;
                }
                Ok(false) => {
                    warn!(lease, "cluster lease expired; taking a new one");
                    self.lease = None;
                    self.published = None;
                }
                Err(e) => {
                    debug!(error = %e, "cluster lease renewal failed");
                    return false;
                }
            }
        }
        match self.client.lease_grant(self.cfg.lease_ttl).await {
            Ok(lease) => {
                debug!(lease, "cluster lease granted");
                self.lease = Some(lease);
                self.renewed = Some(Instant::now());
                self.published = None;
                true
            }
            Err(e) => {
                debug!(error = %e, "cluster lease grant failed");
                false
            }
        }
    }

    /// Writes the document when it changed since the last write under this lease.
    async fn publish(&mut self) -> bool {
        if self.published.as_ref() == Some(&self.doc) {
            return true;
        }
        let Ok(body) = serde_json::to_vec(&self.doc) else {
            return false;
        };
        match self.client.put(&self.keys.me, &body, self.lease).await {
            Ok(()) => {
                self.published = Some(self.doc.clone());
                true
            }
            Err(e) => {
                debug!(error = %e, "cluster publish failed");
                false
            }
        }
    }

    /// Reads every instance's document; sends the router the peers' sum.
    async fn read_peers(&mut self) -> bool {
        let kvs = match self.client.range_prefix(&self.keys.instances).await {
            Ok(kvs) => kvs,
            Err(e) => {
                debug!(error = %e, "cluster read failed");
                return false;
            }
        };
        let mut peers: Vec<InstanceDoc> = Vec::new();
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(&key);
            match serde_json::from_slice::<InstanceDoc>(&value) {
                Ok(doc) if doc.instance_id == self.cfg.instance_id => {}
                Ok(doc) => peers.push(doc),
                Err(e) => debug!(key = %key, error = %e, "skipping a malformed instance document"),
            }
        }
        peers.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        if self.local_only {
            info!(
                peers = peers.len(),
                "etcd reachable again: balancing on the cluster's view"
            );
            self.local_only = false;
        }
        self.last_read = Some(Instant::now());
        *lock(&self.handle.read_at) = self.last_read;
        let mut load: HashMap<String, usize> = HashMap::new();
        for p in &peers {
            for (b, n) in &p.conns {
                *load.entry(b.clone()).or_default() += n;
            }
        }
        self.send_peer_load(load);
        let mut global: BTreeMap<String, usize> = self.doc.conns.clone();
        for p in &peers {
            for (b, n) in &p.conns {
                *global.entry(b.clone()).or_default() += n;
            }
        }
        let mut view = lock(&self.handle.view);
        view.instances = std::iter::once(self.doc.clone()).chain(peers).collect();
        view.backends = global;
        view.local_only = false;
        true
    }

    fn send_peer_load(&mut self, conns: HashMap<String, usize>) {
        if self.sent_peers.as_ref() != Some(&conns) {
            self.router.do_send(PeerLoad {
                conns: conns.clone(),
            });
            self.sent_peers = Some(conns);
        }
    }

    /// etcd unreachable: keep the last view for `lease_ttl` (peers' leases could not lapse
    /// faster), then drop it and balance on this instance's own counts.
    fn maybe_go_local(&mut self) {
        let stale = self
            .last_read
            .is_none_or(|t| t.elapsed() >= self.cfg.lease_ttl);
        if stale && !self.local_only {
            warn!(lease_ttl = ?self.cfg.lease_ttl,
                  "etcd unreachable for longer than the lease: dropping the peers' load, balancing on this instance's own view");
            self.local_only = true;
            self.send_peer_load(HashMap::new());
            let mut view = lock(&self.handle.view);
            view.instances = vec![self.doc.clone()];
            view.backends = self.doc.conns.clone();
            view.local_only = true;
        }
    }

    /// Applies the drains stored in etcd that changed since the last read. A drain of a backend
    /// the router does not know yet is retried next cycle.
    async fn read_drains(&mut self) {
        let kvs = match self.client.range_prefix(&self.keys.drained).await {
            Ok(kvs) => kvs,
            Err(e) => {
                debug!(error = %e, "reading cluster drains failed");
                return;
            }
        };
        let stored: BTreeSet<String> = kvs
            .into_iter()
            .filter_map(|(k, _)| {
                String::from_utf8_lossy(&k)
                    .strip_prefix(&self.keys.drained)
                    .map(str::to_string)
            })
            .filter(|a| !a.is_empty())
            .collect();
        let added: Vec<String> = stored.difference(&self.drains).cloned().collect();
        let removed: Vec<String> = self.drains.difference(&stored).cloned().collect();
        for (addr, drained) in added
            .into_iter()
            .map(|a| (a, true))
            .chain(removed.into_iter().map(|a| (a, false)))
        {
            let msg = SetDrained {
                addr: addr.clone(),
                drained,
            };
            match self.router.send(msg).await {
                Ok(Ok(())) => {
                    info!(backend = %addr, drained, "applied the cluster's drain");
                    if drained {
                        self.drains.insert(addr);
                    } else {
                        self.drains.remove(&addr);
                    }
                }
                Ok(Err(RouterError::UnknownBackend(_))) if !drained => {
                    self.drains.remove(&addr);
                }
                Ok(Err(e)) => debug!(backend = %addr, error = %e, "cluster drain not applied yet"),
                Err(_) => {}
            }
        }
    }

    /// Stores (or removes) a drain for every instance, and counts it as applied here (the
    /// admin API already told this router).
    async fn store_drain(&mut self, addr: &str, drained: bool) -> Result<(), EtcdError> {
        let key = drained_key(&self.cfg.name, addr);
        if drained {
            self.client.put(&key, b"{}", None).await?;
            self.drains.insert(addr.to_string());
        } else {
            self.client.delete(&key).await?;
            self.drains.remove(addr);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = Keys::new("prod", "proxy-1:6080");
        assert_eq!(k.me, "/switchyard/prod/instances/proxy-1:6080");
        assert_eq!(k.instances, "/switchyard/prod/instances/");
        assert_eq!(k.drained, "/switchyard/prod/drained/");
        assert_eq!(
            drained_key("prod", "10.0.0.1:3306"),
            "/switchyard/prod/drained/10.0.0.1:3306"
        );
    }

    #[test]
    fn an_instance_document_round_trips_as_json() {
        let doc = InstanceDoc {
            instance_id: "a".into(),
            admin: "127.0.0.1:6080".into(),
            version: "1".into(),
            started: 7,
            conns: BTreeMap::from([("10.0.0.1:3306".to_string(), 3)]),
        };
        let json = serde_json::to_vec(&doc).unwrap();
        assert_eq!(serde_json::from_slice::<InstanceDoc>(&json).unwrap(), doc);
    }
}
