//! `EtcdFetcher`: TiDB's topology, read from PD's etcd.
//!
//! Every TiDB registers itself under `/topology/tidb/<host:port>/`: an `info` key (JSON with its
//! `ip`, `status_port`, `version`, …) and a `ttl` key bound to a lease that lapses when the
//! server dies. A backend counts when both exist. One fetch is one prefix range read.
//!
//! Why etcd's v3 **JSON gateway** over reqwest rather than a gRPC client crate: the gateway is
//! served by every etcd since 3.4 on the client port (`POST /v3/kv/range`, keys and values in
//! base64), so the library needs no protobuf compiler, no tonic/prost stack and no second HTTP
//! implementation — it reuses the reqwest client (and its rustls) that the health check already
//! carries. The price is base64 on the wire and no watch stream, neither of which matters for a
//! poll every few seconds. (etcd 3.3 served the gateway under `/v3beta/`; 3.4+ is required.)
//!
//! Failure is bounded: each request has a timeout, endpoints are tried in turn starting with the
//! last one that worked, a full round of failures is retried after a doubling back-off, and after
//! the last round the fetch returns a [`FetchError`]. Bad entries (an `info` that is not JSON, a
//! key without an address) are skipped with a warning logged once, not per poll.
//!
//! Weights: a TiDB started with `labels = { weight = "3" }` (its `info` then carries
//! `"labels": {"weight": "3"}`) weighs 3; weights given in config ([`EtcdFetcher::with_weights`])
//! win over labels. A label that is not a number above zero is ignored with a warning.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::default_check::error_chain;
use crate::discovery::BackendFetcher;
use crate::error::FetchError;
use crate::model::BackendInfo;

/// The prefix TiDB registers under.
pub const TOPOLOGY_PREFIX: &str = "/topology/tidb/";

/// The topology label a backend's weight is read from.
pub const WEIGHT_LABEL: &str = "weight";

/// The largest range response read (bytes). A TiDB topology entry is well under 1 KiB, so this
/// holds tens of thousands of backends, while a confused or hostile endpoint streaming without end
/// cannot grow the observer's memory beyond it.
const MAX_RANGE_RESPONSE: usize = 64 << 20;

/// Timeouts and retries of an [`EtcdFetcher`].
///
/// A fetch that fails everywhere takes at most
/// `rounds × endpoints × request_timeout + backoff × (2^(rounds−1) − 1)`:
/// with the defaults and one endpoint, 3 × 2 s + 0.3 s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Timeout of one HTTP request (connect, send, read the whole response).
    pub request_timeout: Duration,
    /// Rounds over all endpoints before giving up (at least 1).
    pub rounds: u32,
    /// Pause after the first failed round; doubles after each further one.
    pub backoff: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(2),
            rounds: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// Reads TiDB's topology from etcd (PD's embedded etcd, or any etcd 3.4+).
///
/// Its small state (which endpoint answered last, which bad keys were reported) is in `Cell`s:
/// the observer calls it from its one thread, so it is `Send` but not `Sync`.
#[derive(Debug, Clone)]
pub struct EtcdFetcher {
    /// Base URLs, e.g. `http://127.0.0.1:2379`, without a trailing slash.
    endpoints: Vec<String>,
    cfg: EtcdConfig,
    client: Result<reqwest::Client, String>,
    /// The endpoint that answered last; the next fetch starts there.
    preferred: Cell<usize>,
    /// Bad keys already warned about (key → reason), so a bad entry is logged once.
    warned: RefCell<HashMap<String, String>>,
    /// Weights from the last successful fetch's labels.
    labelled: RefCell<HashMap<String, f64>>,
    /// Weights from config; they win over labels.
    configured: HashMap<String, f64>,
}

impl EtcdFetcher {
    /// A fetcher over `endpoints` (`host:port` or URLs; `http://` is assumed when no scheme is
    /// given) with the default [`EtcdConfig`]. No I/O until the first fetch.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self::with_config(endpoints, EtcdConfig::default())
    }

    /// A fetcher over `endpoints` with explicit timeouts and retries.
    pub fn with_config(endpoints: Vec<String>, cfg: EtcdConfig) -> Self {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .connect_timeout(cfg.request_timeout)
            .build()
            .map_err(|e| format!("build HTTP client: {}", error_chain(&e)));
        let endpoints = endpoints
            .iter()
            .map(|e| e.trim().trim_end_matches('/'))
            .filter(|e| !e.is_empty())
            .map(|e| {
                if e.contains("://") {
                    e.to_string()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        Self {
            endpoints,
            cfg,
            client,
            preferred: Cell::new(0),
            warned: RefCell::new(HashMap::new()),
            labelled: RefCell::new(HashMap::new()),
            configured: HashMap::new(),
        }
    }

    /// The same fetcher, with weights by address that win over the topology's labels
    /// (`backends.etcd.weights`).
    pub fn with_weights(mut self, weights: HashMap<String, f64>) -> Self {
        self.configured = weights;
        self
    }

    /// One range request to one endpoint.
    async fn range(&self, endpoint: &str) -> Result<KeyValues, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let body = serde_json::json!({
            "key": B64.encode(TOPOLOGY_PREFIX),
            "range_end": B64.encode(prefix_end(TOPOLOGY_PREFIX.as_bytes())),
        });
        let url = format!("{endpoint}/v3/kv/range");
        let resp = client
            .post(&url)
            .timeout(self.cfg.request_timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    format!("{url}: timed out after {:?}", self.cfg.request_timeout)
                } else {
                    format!("{url}: {}", error_chain(&e))
                }
            })?;
        let status = resp.status();
        let mut resp = resp;
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{url}: read response: {}", error_chain(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_RANGE_RESPONSE {
                return Err(format!(
                    "{url}: response larger than {MAX_RANGE_RESPONSE} bytes; not reading further"
                ));
            }
            bytes.extend_from_slice(&chunk);
        }
        if !status.is_success() {
            return Err(format!(
                "{url}: HTTP {status}: {}",
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).trim()
            ));
        }
        decode_range(&bytes).map_err(|e| format!("{url}: {e}"))
    }

    /// Turns the raw key-values into backends, skipping (and warning once about) bad entries.
    fn topology(&self, kvs: Vec<(Vec<u8>, Vec<u8>)>) -> HashMap<String, BackendInfo> {
        let Topology {
            backends,
            weights,
            skipped,
        } = parse_topology(kvs);
        *self.labelled.borrow_mut() = weights;
        let mut warned = self.warned.borrow_mut();
        for (key, reason) in &skipped {
            if warned.get(key) != Some(reason) {
                warn!(key = %key, reason = %reason, "skipping topology entry");
            }
        }
        // Forget keys that are fine now, so they are reported again if they break again.
        *warned = skipped.into_iter().collect();
        backends
    }
}

impl BackendFetcher for EtcdFetcher {
    async fn get_backend_list(&self) -> Result<HashMap<String, BackendInfo>, FetchError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(FetchError::new("etcd: no endpoints configured"));
        }
        let rounds = self.cfg.rounds.max(1);
        let mut backoff = self.cfg.backoff;
        let mut last_err = String::new();
        for round in 0..rounds {
            let first = self.preferred.get() % n;
            for i in 0..n {
                let idx = (first + i) % n;
                let endpoint = &self.endpoints[idx];
                match self.range(endpoint).await {
                    Ok(kvs) => {
                        self.preferred.set(idx);
                        return Ok(self.topology(kvs));
                    }
                    Err(e) => {
                        debug!(endpoint = %endpoint, round, error = %e, "etcd request failed");
                        last_err = e;
                    }
                }
            }
            if round + 1 < rounds {
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
        Err(FetchError::new(format!(
            "etcd: {n} endpoint(s) failed {rounds} time(s); last error: {last_err}"
        )))
    }

    fn weights(&self) -> HashMap<String, f64> {
        let mut weights = self.labelled.borrow().clone();
        weights.extend(self.configured.iter().map(|(a, w)| (a.clone(), *w)));
        weights
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's `range_end` for a
/// prefix read).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (or empty): etcd reads "\0" as "to the end of the keyspace".
    vec![0]
}

/// Raw keys and values, as read from etcd.
type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// The key-values of a range response body (keys and values base64-decoded). The body comes
/// from the network, so every failure is an `Err`, never a panic.
fn decode_range(body: &[u8]) -> Result<KeyValues, String> {
    let parsed: RangeResponse =
        serde_json::from_slice(body).map_err(|e| format!("not an etcd range response: {e}"))?;
    if parsed.header.is_none() {
        // An empty object from something that is not etcd must not read as "no backends".
        return Err("not an etcd range response: no header".to_string());
    }
    parsed
        .kvs
        .into_iter()
        .map(|kv| {
            let key = B64
                .decode(&kv.key)
                .map_err(|e| format!("key is not base64: {e}"))?;
            let value = B64
                .decode(&kv.value)
                .map_err(|e| format!("value is not base64: {e}"))?;
            Ok((key, value))
        })
        .collect()
}

/// What a fetch makes of a range response `body`: the backends, or why the body was refused.
///
/// Not part of the API: the entry point of the `etcd_decode` fuzz target and of its corpus
/// replay test (`fuzz/`), so both run exactly the decoding a fetch runs on a peer's bytes.
#[doc(hidden)]
pub fn fuzz_decode_range(body: &[u8]) -> Result<HashMap<String, BackendInfo>, String> {
    Ok(parse_topology(decode_range(body)?).backends)
}

/// What a fetch makes of one TiDB `info` value: its `(ip, status_port)`, or the JSON error.
///
/// Not part of the API: the `etcd_decode` fuzz target feeds it values directly, so the fuzzer
/// need not find base64 inside JSON to reach the `info` parser.
#[doc(hidden)]
pub fn fuzz_parse_info(value: &[u8]) -> Result<(String, u16), String> {
    parse_info(value)
        .map(|i| (i.ip, i.status_port))
        .map_err(|e| e.to_string())
}

/// The part of a range response the fetcher reads. etcd omits `kvs` when nothing matches.
#[derive(Debug, Deserialize)]
struct RangeResponse {
    header: Option<serde_json::Value>,
    #[serde(default)]
    kvs: Vec<KeyValue>,
}

#[derive(Debug, Deserialize)]
struct KeyValue {
    key: String,
    #[serde(default)]
    value: String,
}

/// The fields of TiDB's `info` the router uses; the rest (`version`, `git_hash`, …) is ignored.
#[derive(Debug, Deserialize)]
struct TopologyInfo {
    #[serde(default)]
    ip: String,
    #[serde(default)]
    status_port: u16,
    /// TiDB's `labels` (strings by key); only [`WEIGHT_LABEL`] is read. Any JSON is accepted
    /// here, so an odd `labels` never costs the backend itself.
    #[serde(default)]
    labels: serde_json::Value,
}

/// The weight a `labels` object gives, if it has a usable one.
fn label_weight(labels: &serde_json::Value) -> Result<Option<f64>, String> {
    let Some(v) = labels.get(WEIGHT_LABEL) else {
        return Ok(None);
    };
    let w = match v {
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok(),
        serde_json::Value::Number(n) => n.as_f64(),
        _ => None,
    };
    match w {
        Some(w) if crate::router::valid_weight(w) => Ok(Some(w)),
        _ => Err(format!(
            "label {WEIGHT_LABEL}={v} is not a number above 0; weight 1"
        )),
    }
}

/// What one topology read yields.
struct Topology {
    /// Backends with both `info` and `ttl`.
    backends: HashMap<String, BackendInfo>,
    /// Their weights from labels, where given.
    weights: HashMap<String, f64>,
    /// Skipped keys (or ignored labels) with their reasons.
    skipped: Vec<(String, String)>,
}

/// Backends with both `info` and `ttl`, their label weights, and the skipped keys with their
/// reasons.
fn parse_topology(kvs: Vec<(Vec<u8>, Vec<u8>)>) -> Topology {
    let mut infos: BTreeMap<String, BackendInfo> = BTreeMap::new();
    let mut weights: HashMap<String, f64> = HashMap::new();
    let mut alive: HashSet<String> = HashSet::new();
    let mut skipped = Vec::new();
    for (key, value) in kvs {
        let key = String::from_utf8_lossy(&key).into_owned();
        let Some(rest) = key.strip_prefix(TOPOLOGY_PREFIX) else {
            continue;
        };
        let Some((addr, field)) = rest.rsplit_once('/') else {
            skipped.push((key.clone(), "key has no address".to_string()));
            continue;
        };
        if let Err(reason) = check_addr(addr) {
            skipped.push((key.clone(), reason));
            continue;
        }
        match field {
            "info" => match parse_info(&value) {
                Ok(info) => {
                    match label_weight(&info.labels) {
                        Ok(Some(w)) => {
                            weights.insert(addr.to_string(), w);
                        }
                        Ok(None) => {}
                        Err(why) => skipped.push((key.clone(), why)),
                    }
                    infos.insert(
                        addr.to_string(),
                        BackendInfo {
                            ip: info.ip,
                            status_port: info.status_port,
                        },
                    );
                }
                Err(e) => skipped.push((key.clone(), format!("malformed info JSON: {e}"))),
            },
            "ttl" => {
                alive.insert(addr.to_string());
            }
            _ => {}
        }
    }
    let backends: HashMap<String, BackendInfo> = infos
        .into_iter()
        .filter(|(addr, _)| alive.contains(addr))
        .collect();
    weights.retain(|addr, _| backends.contains_key(addr));
    Topology {
        backends,
        weights,
        skipped,
    }
}

/// TiDB's `info`: a JSON object (serde would also take an array for a struct; TiDB never writes one).
fn parse_info(value: &[u8]) -> Result<TopologyInfo, serde_json::Error> {
    let value: serde_json::Value = serde_json::from_slice(value)?;
    if !value.is_object() {
        return Err(serde::de::Error::custom(format!(
            "expected a JSON object, got {}",
            match value {
                serde_json::Value::Array(_) => "an array",
                serde_json::Value::String(_) => "a string",
                serde_json::Value::Number(_) => "a number",
                serde_json::Value::Bool(_) => "a boolean",
                _ => "null",
            }
        )));
    }
    serde_json::from_value(value)
}

/// A backend address must be `host:port` with a numeric port.
fn check_addr(addr: &str) -> Result<(), String> {
    if addr.is_empty() {
        return Err("key has no address".to_string());
    }
    if addr.contains('/') {
        return Err(format!("address {addr:?} contains '/'"));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(()),
        _ => Err(format!("address {addr:?} is not host:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
        (key.as_bytes().to_vec(), value.as_bytes().to_vec())
    }

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/topology/tidb/"), b"/topology/tidb0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn a_weight_label_weighs_its_backend_and_a_bad_one_is_reported_not_fatal() {
        let t = parse_topology(vec![
            kv(
                "/topology/tidb/10.0.0.1:4000/info",
                r#"{"ip":"10.0.0.1","status_port":10080,"labels":{"weight":"3","zone":"z1"}}"#,
            ),
            kv("/topology/tidb/10.0.0.1:4000/ttl", "1"),
            kv(
                "/topology/tidb/10.0.0.2:4000/info",
                r#"{"ip":"10.0.0.2","status_port":10080,"labels":{"weight":"0"}}"#,
            ),
            kv("/topology/tidb/10.0.0.2:4000/ttl", "1"),
            kv(
                "/topology/tidb/10.0.0.3:4000/info",
                r#"{"ip":"10.0.0.3","status_port":10080,"labels":{"weight":2.5}}"#,
            ),
        ]);
        assert_eq!(
            t.backends.len(),
            2,
            "no ttl, no backend; a bad label keeps it"
        );
        assert_eq!(
            t.weights,
            HashMap::from([("10.0.0.1:4000".to_string(), 3.0)])
        );
        assert_eq!(t.skipped.len(), 1);
        assert!(t.skipped[0].1.contains("weight"), "{:?}", t.skipped);
    }

    #[test]
    fn a_backend_needs_both_info_and_ttl() {
        let Topology {
            backends, skipped, ..
        } = parse_topology(vec![
            kv(
                "/topology/tidb/10.0.0.1:4000/info",
                r#"{"ip":"10.0.0.1","status_port":10080,"version":"8.5.0"}"#,
            ),
            kv("/topology/tidb/10.0.0.1:4000/ttl", "1700000000000000000"),
            kv("/topology/tidb/10.0.0.2:4000/info", r#"{"ip":"10.0.0.2"}"#),
            kv("/topology/tidb/10.0.0.3:4000/ttl", "1"),
        ]);
        assert!(skipped.is_empty());
        assert_eq!(backends.len(), 1);
        assert_eq!(
            backends["10.0.0.1:4000"],
            BackendInfo {
                ip: "10.0.0.1".into(),
                status_port: 10080
            }
        );
    }

    #[test]
    fn bad_entries_are_skipped_with_a_reason_and_spoil_nothing() {
        let Topology {
            backends, skipped, ..
        } = parse_topology(vec![
            kv("/topology/tidb/a:4000/info", "not json"),
            kv("/topology/tidb/a:4000/ttl", "1"),
            kv(
                "/topology/tidb/b:4000/info",
                r#"{"ip":"b","status_port":99999}"#,
            ),
            kv("/topology/tidb/b:4000/ttl", "1"),
            kv("/topology/tidb//info", "{}"),
            kv("/topology/tidb/info", "{}"),
            kv("/topology/tidb/nohostport/info", "{}"),
            kv(
                "/topology/tidb/c:4000/info",
                r#"{"ip":"c","status_port":10080}"#,
            ),
            kv("/topology/tidb/c:4000/ttl", "1"),
            kv("/topology/tidb/d:4000/info", r#"["d", 10080]"#),
            kv("/topology/tidb/d:4000/ttl", "1"),
        ]);
        assert_eq!(backends.keys().collect::<Vec<_>>(), vec!["c:4000"]);
        let reasons: Vec<_> = skipped.iter().map(|(_, r)| r.as_str()).collect();
        assert_eq!(skipped.len(), 6, "{skipped:?}");
        assert!(reasons[0].starts_with("malformed info JSON"));
        assert!(reasons[1].starts_with("malformed info JSON"));
        assert_eq!(reasons[2], "key has no address");
        assert_eq!(reasons[3], "key has no address");
        assert!(reasons[4].contains("not host:port"));
        assert!(reasons[5].contains("expected a JSON object, got an array"));
    }

    #[test]
    fn endpoints_get_a_scheme_and_lose_trailing_slashes() {
        let f = EtcdFetcher::new(vec![
            "127.0.0.1:2379".into(),
            "https://pd:2379/".into(),
            " ".into(),
        ]);
        assert_eq!(
            f.endpoints,
            vec!["http://127.0.0.1:2379", "https://pd:2379"]
        );
    }

    #[tokio::test]
    async fn no_endpoints_is_an_error_not_a_hang() {
        let err = EtcdFetcher::new(vec![])
            .get_backend_list()
            .await
            .unwrap_err();
        assert!(err.message().contains("no endpoints"));
    }
}
