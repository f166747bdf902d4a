//! TLS towards backends, as the health probe speaks it: the probe reaches a SQL port the way
//! sessions do (`backends.tls`), so a backend that takes only TLS logins
//! (`require_secure_transport`) sees a TLS login from it, and a certificate that sessions would
//! refuse takes the backend out of routing with the reason, instead of failing every login.
//!
//! The rustls client configuration comes from the embedding service
//! ([`crate::DefaultHealthCheck::with_backend_tls`]); this module owns only the steps: the
//! MySQL upgrade after the greeting (SSL request, then the handshake), the handshake at connect
//! for `tcp` backends, and the name a backend's certificate must carry.

use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::wire::{self, caps, charset, put_packet, ssl_request, PacketReader};

/// Sequence id of the SSL request (the handshake response's place).
const SSL_REQUEST_SEQ: u8 = 1;
/// The max packet size the probe announces (SSL request and login alike).
pub(crate) const PROBE_MAX_PACKET: u32 = 16 << 20;
/// What the probe's login (and the SSL request before it) says the client can do.
pub(crate) const PROBE_CAPS: u32 =
    caps::MYSQL | caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH;

/// Why the probe could not speak TLS with a backend.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeTlsError {
    /// The greeting does not offer `CLIENT_SSL`: no session could log in over TLS either.
    #[error("does not offer TLS (backends.tls.enable is set)")]
    NotOffered,
    /// The server spoke before the probe's SSL request, which the protocol does not allow.
    #[error("sent bytes after its greeting, before the SSL request")]
    Unexpected,
    /// The backend's address has no host a certificate could name.
    #[error(transparent)]
    Name(io::Error),
    /// Writing the SSL request failed.
    #[error("SSL request: {0}")]
    Request(io::Error),
    /// The TLS handshake failed; a certificate the configuration refuses is among these.
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
}

impl ProbeTlsError {
    /// Whether trying again could help: not for a server that offers no TLS or a certificate
    /// that is refused (rustls reports those as invalid data), yes for a cut connection.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Self::NotOffered | Self::Name(_) => false,
            Self::Unexpected => true,
            Self::Request(e) => e.kind() != io::ErrorKind::InvalidData,
            Self::Handshake(e) => e.kind() != io::ErrorKind::InvalidData,
        }
    }
}

/// The name a backend's certificate must carry: the host of `host:port` (an IP address or a
/// DNS name).
pub fn server_name(addr: &str) -> io::Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_string()).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{host:?} is no TLS server name: {e}"),
        )
    })
}

/// After a greeting offering `server_caps`: sends the SSL request and runs the TLS handshake
/// with the backend `addr`, so the probe's login that follows goes encrypted (sequence id 2).
pub(crate) async fn upgrade(
    config: &Arc<ClientConfig>,
    addr: &str,
    server_caps: u32,
    conn: PacketReader<TcpStream>,
) -> Result<PacketReader<TlsStream<TcpStream>>, ProbeTlsError> {
    if server_caps & caps::SSL == 0 {
        return Err(ProbeTlsError::NotOffered);
    }
    if conn.has_buffered() {
        return Err(ProbeTlsError::Unexpected);
    }
    let mut tcp = conn.into_inner();
    let mut out = Vec::with_capacity(wire::HEADER + 32);
    put_packet(
        &mut out,
        SSL_REQUEST_SEQ,
        &ssl_request(PROBE_CAPS, PROBE_MAX_PACKET, charset::UTF8_GENERAL_CI),
    );
    tcp.write_all(&out).await.map_err(ProbeTlsError::Request)?;
    let tls = handshake(config, addr, tcp).await?;
    Ok(PacketReader::new(tls))
}

/// A `tcp` backend with `backends.tls`: the TLS handshake right after connect, then a clean
/// close (`close_notify`), so the check proves what a session needs: TLS with a certificate the
/// configuration accepts.
pub(crate) async fn at_connect(
    config: &Arc<ClientConfig>,
    addr: &str,
    tcp: TcpStream,
) -> Result<(), ProbeTlsError> {
    let mut tls = handshake(config, addr, tcp).await?;
    // the verdict is in; a peer that resets instead of answering the alert changes nothing
    let _ = tls.shutdown().await;
    Ok(())
}

async fn handshake(
    config: &Arc<ClientConfig>,
    addr: &str,
    tcp: TcpStream,
) -> Result<TlsStream<TcpStream>, ProbeTlsError> {
    let name = server_name(addr).map_err(ProbeTlsError::Name)?;
    TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .map_err(ProbeTlsError::Handshake)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_are_the_host_of_the_address() {
        assert!(matches!(
            server_name("127.0.0.1:3306").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:3306").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("db1.example:3306").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name:1").is_err());
    }

    #[test]
    fn a_refused_certificate_and_a_server_without_tls_are_final_a_cut_connection_is_not() {
        assert!(!ProbeTlsError::NotOffered.retryable());
        let refused = io::Error::new(io::ErrorKind::InvalidData, "invalid peer certificate");
        assert!(!ProbeTlsError::Handshake(refused).retryable());
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert!(ProbeTlsError::Handshake(reset).retryable());
    }
}
