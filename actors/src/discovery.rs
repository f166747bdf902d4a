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
}

/// A fixed list of addresses with no status port, for a static configuration and for tests.
#[derive(Debug, Clone, Default)]
pub struct StaticFetcher {
    addrs: Vec<String>,
}

impl StaticFetcher {
    /// Serves `addrs`, each with an empty [`BackendInfo`] (no HTTP status probe).
    pub fn new(addrs: Vec<String>) -> Self {
        Self { addrs }
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
}
