//! The front door's keys: `proxy.tls`, `proxy.proxy_protocol`, `proxy.proxy_protocol_from`,
//! `backends.tls` and `backends.send_proxy_protocol`, read and checked into an
//! [`entry::Door`](crate::entry::Door).
//!
//! Certificates and keys are loaded here, at start-up, so an unreadable file or a key that does
//! not match its certificate is a one-line configuration error (exit 2), never a failure at the
//! first client.

use std::path::PathBuf;
use std::sync::Arc;

use serde::Deserialize;

use super::{ConfigError, Protocol};
use crate::entry::{Door, Via};
use crate::proxy_protocol::Trusted;
use crate::tls::{BackendTls, FrontTls, TlsError};

/// `proxy.tls`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFrontTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    required: bool,
}

/// `proxy.proxy_protocol`: the only version accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub(super) enum ProxyProtocol {
    /// The binary version 2.
    #[serde(rename = "v2")]
    V2,
}

/// `backends.tls`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawBackendTls {
    enable: bool,
    ca: Option<PathBuf>,
    insecure_skip_verify: bool,
}

/// What the door keys say, checked and loaded.
pub(super) fn door(
    protocol: Protocol,
    tls: Option<&RawFrontTls>,
    proxy_protocol: Option<ProxyProtocol>,
    proxy_protocol_from: &[String],
    backend_tls: Option<&RawBackendTls>,
    send_proxy_protocol: bool,
) -> Result<Door, ConfigError> {
    let tls = match tls {
        None => None,
        Some(t) => {
            let cert = t
                .cert
                .as_deref()
                .ok_or_else(|| ConfigError::new("proxy.tls.cert", "must be set (a PEM file)"))?;
            let key = t
                .key
                .as_deref()
                .ok_or_else(|| ConfigError::new("proxy.tls.key", "must be set (a PEM file)"))?;
            Some(
                FrontTls::load(cert, key, t.required)
                    .map_err(|e| ConfigError::new(front_key(&e, key), e.to_string()))?,
            )
        }
    };
    let proxy_protocol = match proxy_protocol {
        None if !proxy_protocol_from.is_empty() => {
            return Err(ConfigError::new(
                "proxy.proxy_protocol_from",
                "set proxy.proxy_protocol: v2 as well, or remove this list",
            ))
        }
        None => None,
        Some(ProxyProtocol::V2) => {
            if proxy_protocol_from.is_empty() {
                return Err(ConfigError::new(
                    "proxy.proxy_protocol_from",
                    "needs at least one trusted network (e.g. [10.0.0.0/8]) when proxy.proxy_protocol is set",
                ));
            }
            let trusted = Trusted::parse(proxy_protocol_from).map_err(|(i, msg)| {
                ConfigError::new(format!("proxy.proxy_protocol_from[{i}]"), msg)
            })?;
            Some(Arc::new(trusted))
        }
    };
    let backend_tls = match backend_tls {
        Some(b) if b.enable => Some(
            BackendTls::new(b.ca.as_deref(), b.insecure_skip_verify)
                .map_err(|e| ConfigError::new("backends.tls.ca", e.to_string()))?,
        ),
        _ => None,
    };
    Ok(Door {
        tls,
        proxy_protocol,
        backend: Via {
            tls: backend_tls,
            tls_at_connect: protocol == Protocol::Tcp,
            send_proxy_protocol,
        },
    })
}

/// The `proxy.tls` key a loading error is about: the key file's own problems and a key that
/// does not match the certificate name `proxy.tls.key`, the rest `proxy.tls.cert`.
fn front_key(e: &TlsError, key: &std::path::Path) -> &'static str {
    match e {
        TlsError::NoKey { .. } | TlsError::Mismatch(_) => "proxy.tls.key",
        TlsError::Read { path, .. } | TlsError::Pem { path, .. } if path == key => "proxy.tls.key",
        _ => "proxy.tls.cert",
    }
}
