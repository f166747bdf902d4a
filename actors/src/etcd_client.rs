//! `EtcdClient`: the one etcd v3 client of the project (JSON gateway over reqwest).
//!
//! Discovery ([`crate::EtcdFetcher`]) reads TiDB's topology through it, and the service's cluster
//! membership keeps a lease, publishes and reads its peers' documents through it. Every call has
//! the same bounded failure: a timeout per request, endpoints tried in turn starting with the
//! last one that answered, a doubling back-off between rounds, then an [`EtcdError`].

use std::cell::Cell;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use thiserror::Error;
use tracing::debug;

use crate::default_check::error_chain;

/// The largest response read (bytes). A topology entry or a cluster document is well under
/// 1 KiB, so this holds tens of thousands of them, while a confused or hostile endpoint streaming
/// without end cannot grow memory beyond it.
const MAX_RESPONSE: usize = 64 << 20;

/// Timeouts and retries of an [`EtcdClient`].
///
/// A call that fails everywhere takes at most
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

/// Why an etcd call failed (after every endpoint and round), as one line.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("etcd: {0}")]
pub struct EtcdError(pub String);

/// Raw keys and values, as read from etcd.
pub type KeyValues = Vec<(Vec<u8>, Vec<u8>)>;

/// A small etcd v3 client over the JSON gateway (etcd 3.4+): range, put (with a lease),
/// delete, lease grant and keep-alive. No I/O until the first call.
///
/// Which endpoint answered last is kept in a `Cell`: callers use it from one actix thread, so it
/// is `Send` but not `Sync`.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    /// Base URLs, e.g. `http://127.0.0.1:2379`, without a trailing slash.
    endpoints: Vec<String>,
    cfg: EtcdConfig,
    client: Result<reqwest::Client, String>,
    /// The endpoint that answered last; the next call starts there.
    preferred: Cell<usize>,
}

impl EtcdClient {
    /// A client over `endpoints` (`host:port` or URLs; `http://` is assumed when no scheme is
    /// given).
    pub fn new(endpoints: Vec<String>, cfg: EtcdConfig) -> Self {
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
        }
    }

    /// The endpoints as URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// One POST of `body` to `path` on one endpoint; the whole body, bounded.
    async fn post_once(
        &self,
        endpoint: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<Vec<u8>, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let url = format!("{endpoint}{path}");
        let mut resp = client
            .post(&url)
            .timeout(self.cfg.request_timeout)
            .json(body)
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
        let mut bytes = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("{url}: read response: {}", error_chain(&e)))?
        {
            if bytes.len() + chunk.len() > MAX_RESPONSE {
                return Err(format!(
                    "{url}: response larger than {MAX_RESPONSE} bytes; not reading further"
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
        Ok(bytes)
    }

    /// POSTs `body` to `path`, with fail-over over the endpoints and back-off between rounds;
    /// `decode` turns a body into the answer (a body it refuses counts as that endpoint failing).
    async fn call<T>(
        &self,
        path: &str,
        body: serde_json::Value,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, EtcdError> {
        let n = self.endpoints.len();
        if n == 0 {
            return Err(EtcdError("no endpoints configured".to_string()));
        }
        let rounds = self.cfg.rounds.max(1);
        let mut backoff = self.cfg.backoff;
        let mut last_err = String::new();
        for round in 0..rounds {
            let first = self.preferred.get() % n;
            for i in 0..n {
                let idx = (first + i) % n;
                let Some(endpoint) = self.endpoints.get(idx) else {
                    continue;
                };
                match self
                    .post_once(endpoint, path, &body)
                    .await
                    .and_then(|b| decode(&b).map_err(|e| format!("{endpoint}{path}: {e}")))
                {
                    Ok(v) => {
                        self.preferred.set(idx);
                        return Ok(v);
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
        Err(EtcdError(format!(
            "{n} endpoint(s) failed {rounds} time(s); last error: {last_err}"
        )))
    }

    /// Every key under `prefix`, with its value.
    pub async fn range_prefix(&self, prefix: &str) -> Result<KeyValues, EtcdError> {
        let body = serde_json::json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix.as_bytes())),
        });
        self.call("/v3/kv/range", body, decode_range).await
    }

    /// Writes `key` = `value`, bound to `lease` when given (the key goes when the lease does).
    pub async fn put(&self, key: &str, value: &[u8], lease: Option<i64>) -> Result<(), EtcdError> {
        let mut body = serde_json::json!({ "key": B64.encode(key), "value": B64.encode(value) });
        if let Some(lease) = lease {
            body["lease"] = serde_json::Value::String(lease.to_string());
        }
        self.call("/v3/kv/put", body, decode_header).await
    }

    /// Deletes `key` (no error when it is absent).
    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        let body = serde_json::json!({ "key": B64.encode(key) });
        self.call("/v3/kv/deleterange", body, decode_header).await
    }

    /// A new lease of `ttl` (whole seconds, at least 1); its id.
    pub async fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let body = serde_json::json!({ "TTL": ttl.as_secs().max(1), "ID": 0 });
        self.call("/v3/lease/grant", body, |b| {
            let r: LeaseAnswer =
                serde_json::from_slice(b).map_err(|e| format!("not a lease grant answer: {e}"))?;
            match (r.id, r.error) {
                (_, Some(e)) if !e.is_empty() => Err(format!("lease grant refused: {e}")),
                (Some(id), _) => id.parse().map_err(|e| format!("lease id {id:?}: {e}")),
                (None, _) => Err("lease grant answer has no ID".to_string()),
            }
        })
        .await
    }

    /// Renews `lease` once. `Ok(false)` when etcd no longer knows it (it expired): the caller
    /// must grant a new one and write its keys again.
    pub async fn lease_keepalive(&self, lease: i64) -> Result<bool, EtcdError> {
        let body = serde_json::json!({ "ID": lease.to_string() });
        self.call("/v3/lease/keepalive", body, |b| {
            // The gateway streams `{"result": {...}}` objects; one request gives one.
            let first = b.split(|c| *c == b'\n').next().unwrap_or_default();
            let r: KeepAliveAnswer = serde_json::from_slice(first)
                .map_err(|e| format!("not a keep-alive answer: {e}"))?;
            let ttl = r
                .result
                .and_then(|r| r.ttl)
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or(0);
            Ok(ttl > 0)
        })
        .await
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's `range_end` for a
/// prefix read).
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
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

/// The key-values of a range response body (keys and values base64-decoded). The body comes
/// from the network, so every failure is an `Err`, never a panic.
pub(crate) fn decode_range(body: &[u8]) -> Result<KeyValues, String> {
    let parsed: RangeResponse =
        serde_json::from_slice(body).map_err(|e| format!("not an etcd range response: {e}"))?;
    if parsed.header.is_none() {
        // An empty object from something that is not etcd must not read as "no keys".
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

/// A put or delete answer: only that it is etcd's (has a header).
fn decode_header(body: &[u8]) -> Result<(), String> {
    let parsed: HeaderOnly =
        serde_json::from_slice(body).map_err(|e| format!("not an etcd answer: {e}"))?;
    match parsed.header {
        Some(_) => Ok(()),
        None => Err("not an etcd answer: no header".to_string()),
    }
}

/// The part of a range response the client reads. etcd omits `kvs` when nothing matches.
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

#[derive(Debug, Deserialize)]
struct HeaderOnly {
    header: Option<serde_json::Value>,
}

/// Lease grant: int64s travel as JSON strings.
#[derive(Debug, Deserialize)]
struct LeaseAnswer {
    #[serde(rename = "ID")]
    id: Option<String>,
    error: Option<String>,
}

#[derive(Debug, Deserialize)]
struct KeepAliveAnswer {
    result: Option<KeepAliveResult>,
}

#[derive(Debug, Deserialize)]
struct KeepAliveResult {
    #[serde(rename = "TTL")]
    ttl: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/topology/tidb/"), b"/topology/tidb0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff"), b"\0");
    }

    #[test]
    fn endpoints_get_a_scheme_and_lose_trailing_slashes() {
        let c = EtcdClient::new(
            vec![
                "127.0.0.1:2379".into(),
                "https://pd:2379/".into(),
                " ".into(),
            ],
            EtcdConfig::default(),
        );
        assert_eq!(c.endpoints(), ["http://127.0.0.1:2379", "https://pd:2379"]);
    }

    #[test]
    fn a_body_without_a_header_is_not_an_answer() {
        assert!(decode_header(b"{}").is_err());
        assert!(decode_header(br#"{"header":{}}"#).is_ok());
        assert!(decode_range(b"{}").is_err());
    }

    #[tokio::test]
    async fn no_endpoints_is_an_error_not_a_hang() {
        let c = EtcdClient::new(vec![], EtcdConfig::default());
        assert!(c.delete("k").await.unwrap_err().0.contains("no endpoints"));
    }
}
