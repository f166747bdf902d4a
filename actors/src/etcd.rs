//! `EtcdFetcher`: placeholder until the etcd topology reader lands.

use std::collections::HashMap;

use crate::discovery::BackendFetcher;
use crate::error::FetchError;
use crate::model::BackendInfo;

/// Reads TiDB's topology from etcd.
#[derive(Debug, Clone)]
pub struct EtcdFetcher {
    #[allow(dead_code)]
    endpoints: Vec<String>,
}

impl EtcdFetcher {
    /// A fetcher over `endpoints`; no I/O until the first fetch.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self { endpoints }
    }
}

impl BackendFetcher for EtcdFetcher {
    async fn get_backend_list(&self) -> Result<HashMap<String, BackendInfo>, FetchError> {
        Err(FetchError::new("etcd discovery not built yet"))
    }
}
