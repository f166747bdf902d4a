//! `backends`: where backends come from (a static list or TiDB's topology in etcd), and their
//! weights.
//!
//! A `backends.static` entry is a plain `"host:port"` (weight 1) or `{ addr, weight }`; over
//! etcd, a weight comes from the topology's `labels.weight` or from `backends.etcd.weights`
//! (which wins). A weight must be a finite number above zero: 0 would be a drain, which is the
//! operator's `drain` command, not a config value.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;
use switchyard::{valid_weight, EtcdConfig};

use super::{backend_addr, positive, ConfigError, Discovery};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackends {
    #[serde(rename = "static")]
    static_: Option<Vec<RawStatic>>,
    etcd: Option<RawEtcd>,
    /// `backends.send_proxy_protocol`.
    #[serde(default)]
    pub(super) send_proxy_protocol: bool,
    /// `backends.tls`.
    #[serde(default)]
    pub(super) tls: Option<super::door::RawBackendTls>,
}

/// One `backends.static` entry.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawStatic {
    /// `"host:port"`, weight 1.
    Addr(String),
    /// `{ addr, weight }`.
    Weighted(RawWeighted),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWeighted {
    addr: String,
    #[serde(default = "one")]
    weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEtcd {
    endpoints: Vec<String>,
    #[serde(default, with = "humantime_serde::option")]
    request_timeout: Option<Duration>,
    #[serde(default)]
    rounds: Option<u32>,
    #[serde(default, with = "humantime_serde::option")]
    backoff: Option<Duration>,
    /// Weights by address, over the topology's labels.
    #[serde(default)]
    weights: Vec<RawWeighted>,
}

/// `key` must hold a finite weight above zero.
fn weight(key: &str, w: f64) -> Result<f64, ConfigError> {
    if valid_weight(w) {
        Ok(w)
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "must be a number above 0, got {w} (to take a backend out of rotation, drain it)"
            ),
        ))
    }
}

impl RawBackends {
    /// The discovery and the weights other than 1.
    pub(super) fn validate(self) -> Result<(Discovery, HashMap<String, f64>), ConfigError> {
        let mut weights = HashMap::new();
        let discovery = match (self.static_, self.etcd) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "backends",
                    "set either backends.static or backends.etcd, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "backends",
                    "set backends.static (a list of host:port) or backends.etcd.endpoints",
                ))
            }
            (Some(entries), None) => {
                let mut list = Vec::with_capacity(entries.len());
                for (i, e) in entries.into_iter().enumerate() {
                    let key = format!("backends.static[{i}]");
                    let (addr, w) = match e {
                        RawStatic::Addr(a) => (a, 1.0),
                        RawStatic::Weighted(w) => {
                            let wt = weight(&format!("{key}.weight"), w.weight)?;
                            (w.addr, wt)
                        }
                    };
                    backend_addr(&key, &addr)?;
                    if list.contains(&addr) {
                        return Err(ConfigError::new(
                            "backends.static",
                            format!("{addr} is listed twice"),
                        ));
                    }
                    if w != 1.0 {
                        weights.insert(addr.clone(), w);
                    }
                    list.push(addr);
                }
                Discovery::Static(list)
            }
            (None, Some(etcd)) => {
                if etcd.endpoints.is_empty() {
                    return Err(ConfigError::new(
                        "backends.etcd.endpoints",
                        "needs at least one endpoint",
                    ));
                }
                for (i, e) in etcd.endpoints.iter().enumerate() {
                    let key = format!("backends.etcd.endpoints[{i}]");
                    let rest = e
                        .strip_prefix("http://")
                        .or_else(|| e.strip_prefix("https://"))
                        .ok_or_else(|| {
                            ConfigError::new(
                                &key,
                                format!("{e:?} must start with http:// or https://"),
                            )
                        })?;
                    backend_addr(&key, rest.trim_end_matches('/'))?;
                }
                for (i, w) in etcd.weights.into_iter().enumerate() {
                    let key = format!("backends.etcd.weights[{i}]");
                    backend_addr(&format!("{key}.addr"), &w.addr)?;
                    let wt = weight(&format!("{key}.weight"), w.weight)?;
                    weights.insert(w.addr, wt);
                }
                let d = EtcdConfig::default();
                let etcd_cfg = EtcdConfig {
                    request_timeout: etcd.request_timeout.unwrap_or(d.request_timeout),
                    rounds: etcd.rounds.unwrap_or(d.rounds),
                    backoff: etcd.backoff.unwrap_or(d.backoff),
                };
                positive("backends.etcd.request_timeout", etcd_cfg.request_timeout)?;
                if etcd_cfg.rounds == 0 {
                    return Err(ConfigError::new(
                        "backends.etcd.rounds",
                        "must be at least 1",
                    ));
                }
                Discovery::Etcd(etcd.endpoints, etcd_cfg)
            }
        };
        Ok((discovery, weights))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::load;
    use super::*;

    #[test]
    fn static_entries_are_plain_addresses_or_weighted_ones() {
        let c = load(
            "backends:\n  static:\n    - 127.0.0.1:4000\n    - { addr: \"127.0.0.1:4001\", weight: 3 }\n    - { addr: \"127.0.0.1:4002\", weight: 0.5 }\n",
        )
        .expect("valid");
        assert_eq!(
            c.discovery,
            Discovery::Static(vec![
                "127.0.0.1:4000".into(),
                "127.0.0.1:4001".into(),
                "127.0.0.1:4002".into()
            ])
        );
        assert_eq!(
            c.weights,
            HashMap::from([
                ("127.0.0.1:4001".into(), 3.0),
                ("127.0.0.1:4002".into(), 0.5)
            ])
        );
    }

    #[test]
    fn a_weight_of_zero_or_below_is_an_error_naming_the_entry() {
        for w in ["0", "-2", "-0.5"] {
            let e = load(&format!(
                "backends:\n  static:\n    - 127.0.0.1:4000\n    - {{ addr: \"127.0.0.1:4001\", weight: {w} }}\n"
            ))
            .expect_err(w);
            assert_eq!(e.key, "backends.static[1].weight", "{w}: {e}");
            assert!(e.msg.contains("above 0"), "{e}");
        }
    }

    #[test]
    fn a_weighted_entry_checks_its_address_and_duplicates() {
        let e = load("backends:\n  static:\n    - { addr: \"nohost\", weight: 2 }\n")
            .expect_err("no port");
        assert_eq!(e.key, "backends.static[0]");
        let e = load(
            "backends:\n  static:\n    - 127.0.0.1:4000\n    - { addr: \"127.0.0.1:4000\", weight: 2 }\n",
        )
        .expect_err("twice");
        assert_eq!(e.key, "backends.static");
    }

    #[test]
    fn etcd_weights_come_from_their_own_list_and_are_checked() {
        let c = load(
            "backends:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    weights: [{ addr: \"10.0.0.1:4000\", weight: 2 }]\n",
        )
        .expect("valid");
        assert_eq!(c.weights, HashMap::from([("10.0.0.1:4000".into(), 2.0)]));
        let e = load(
            "backends:\n  etcd:\n    endpoints: [http://127.0.0.1:2379]\n    weights: [{ addr: \"10.0.0.1:4000\", weight: 0 }]\n",
        )
        .expect_err("zero");
        assert_eq!(e.key, "backends.etcd.weights[0].weight");
    }
}
