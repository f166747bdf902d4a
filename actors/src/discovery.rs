//! Discovery: where the backend list comes from.
//!
//! [`BackendFetcher`] is the seam the observer is generic over; [`StaticFetcher`] serves a fixed
//! list and [`crate::EtcdFetcher`] reads TiDB's topology from etcd.

use std::collections::HashMap;

use crate::error::FetchError;
use crate::model::BackendInfo;

/// Produces the current backend list, keyed by SQL address (`host:port`).
///
/// Written as a native `async fn`: the observer runs on one actix arbiter thread, so the
/// future needs no `Send` bound and implementors may hold non-`Send` state across awaits.
#[allow(async_fn_in_trait)]
pub trait BackendFetcher: 'static {
    /// Fetch the list once. Errors must come back bounded in time: the observer waits for it.
    async fn get_backend_list(&self) -> Result<HashMap<String, BackendInfo>, FetchError>;

    /// Weights of the backends of the last successful fetch, for those that have one other
    /// than 1 (from config, or a topology label). The observer reads it right after each
    /// successful `get_backend_list`; a fetcher that knows no weights keeps the default.
    fn weights(&self) -> HashMap<String, f64> {
        HashMap::new()
    }
}

/// A fixed list of addresses with no status port, for a static configuration and for tests.
#[derive(Debug, Clone, Default)]
pub struct StaticFetcher {
    addrs: Vec<String>,
    weights: HashMap<String, f64>,
}

impl StaticFetcher {
    /// Serves `addrs`, each with an empty [`BackendInfo`] (no HTTP status probe).
    pub fn new(addrs: Vec<String>) -> Self {
        Self {
            addrs,
            weights: HashMap::new(),
        }
    }

    /// Serves `(addr, weight)` pairs (config's `{ addr, weight }` entries). Weights must be
    /// finite and above zero (the service's config check refuses others).
    pub fn with_weights(backends: Vec<(String, f64)>) -> Self {
        Self {
            addrs: backends.iter().map(|(a, _)| a.clone()).collect(),
            weights: backends.into_iter().collect(),
        }
    }
}

impl BackendFetcher for StaticFetcher {
    async fn get_backend_list(&self) -> Result<HashMap<String, BackendInfo>, FetchError> {
        Ok(self
            .addrs
            .iter()
            .map(|a| (a.clone(), BackendInfo::default()))
            .collect())
    }

    fn weights(&self) -> HashMap<String, f64> {
        self.weights.clone()
    }
}
