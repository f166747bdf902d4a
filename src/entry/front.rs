//! The door a client passes before it is routed, and the way to a backend: PROXY protocol
//! (inbound from trusted balancers, outbound to backends) and TLS on either side.
//!
//! [`Door`] holds the settings, shared by every connection of a listener; [`Door::pass`] runs
//! the steps that come before routing, so a client refused here never costs a backend. In
//! `mysql` mode the client's TLS is the protocol's own upgrade and happens in the login, not here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::Stream;
use crate::proxy_protocol::{self, ReadError, Trusted};
use crate::tls::{BackendTls, FrontTls};

/// The first byte of a TLS record carrying a handshake (a ClientHello).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// How long a `tcp`-mode client with optional TLS may stay silent before it is taken for a
/// plain client of a protocol where the server speaks first.
const PLAIN_SNIFF: Duration = Duration::from_millis(500);

/// TLS and PROXY protocol settings of one listener and its backends. The default is plain
/// TCP without headers on both sides.
#[derive(Debug, Clone, Default)]
pub struct Door {
    /// `proxy.tls`: the certificate shown to clients, and whether TLS is required.
    pub tls: Option<FrontTls>,
    /// `proxy.proxy_protocol: v2` with `proxy.proxy_protocol_from`: every client must be a
    /// trusted balancer and start with a v2 header.
    pub proxy_protocol: Option<Arc<Trusted>>,
    /// How the proxy reaches backends.
    pub backend: Via,
}

/// How the proxy reaches backends: `backends.tls` and `backends.send_proxy_protocol`.
#[derive(Debug, Clone, Default)]
pub struct Via {
    /// TLS to backends.
    pub tls: Option<BackendTls>,
    /// TLS starts as soon as the TCP connection is up (`tcp` mode); otherwise the protocol
    /// upgrades itself later (`mysql` mode: the SSL request after the greeting).
    pub tls_at_connect: bool,
    /// A PROXY v2 header naming the client goes first on each backend connection.
    pub send_proxy_protocol: bool,
}

/// Why a client was turned away at the door.
#[derive(Debug, thiserror::Error)]
pub enum DoorError {
    /// PROXY protocol is on and the peer is not in `proxy.proxy_protocol_from`.
    #[error("peer is not in proxy.proxy_protocol_from; its PROXY header is not believed")]
    Untrusted,
    /// A trusted peer sent no acceptable header.
    #[error(transparent)]
    Header(#[from] ReadError),
    /// The client's TLS handshake failed.
    #[error("TLS handshake: {0}")]
    Handshake(#[source] io::Error),
    /// A plain client while `proxy.tls.required` is set.
    #[error("plain-text client refused: proxy.tls.required is set")]
    TlsRequired,
    /// The header or the TLS handshake did not arrive within `proxy.login_timeout`.
    #[error("no PROXY header or TLS handshake within proxy.login_timeout")]
    Timeout,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A client past the door.
#[derive(Debug)]
pub struct Passed {
    /// Its socket, TLS when the door terminated it.
    pub client: Stream,
    /// The client's address: from the PROXY header when there was one.
    pub peer: Option<SocketAddr>,
    /// The address the client connected to (the header's destination, or this proxy's own).
    pub local: Option<SocketAddr>,
}

impl Door {
    /// Nothing to do before routing: no PROXY header to read, no TLS to offer.
    pub fn is_open(&self) -> bool {
        self.proxy_protocol.is_none() && self.tls.is_none()
    }

    /// The steps before routing, within `limit`: the PROXY header (when on), then (when
    /// `tls_now`: `tcp` mode) the client's TLS handshake.
    pub async fn pass(
        &self,
        client: TcpStream,
        peer: Option<SocketAddr>,
        tls_now: bool,
        limit: Duration,
    ) -> Result<Passed, DoorError> {
        tokio::time::timeout(limit, self.pass_unbounded(client, peer, tls_now))
            .await
            .map_err(|_| DoorError::Timeout)?
    }

    async fn pass_unbounded(
        &self,
        mut client: TcpStream,
        peer: Option<SocketAddr>,
        tls_now: bool,
    ) -> Result<Passed, DoorError> {
        let mut passed_peer = peer;
        let mut local = client.local_addr().ok();
        if let Some(trusted) = &self.proxy_protocol {
            if !peer.is_some_and(|p| trusted.trusts(p.ip())) {
                return Err(DoorError::Untrusted);
            }
            let header = proxy_protocol::read(&mut client).await?;
            if let Some((src, dst)) = header.addrs {
                passed_peer = Some(src);
                local = Some(dst);
            }
        }
        let client = match (&self.tls, tls_now) {
            (Some(tls), true) => {
                if tls.required() || speaks_tls(&client).await? {
                    tls.accept(client).await.map_err(DoorError::Handshake)?
                } else {
                    Stream::Plain(client)
                }
            }
            _ => Stream::Plain(client),
        };
        Ok(Passed {
            client,
            peer: passed_peer,
            local,
        })
    }
}

/// Whether the client's first byte opens a TLS handshake; a client silent for
/// [`PLAIN_SNIFF`] is taken as plain (its server speaks first).
async fn speaks_tls(client: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(PLAIN_SNIFF, client.peek(&mut first)).await {
        Ok(Ok(0)) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(Ok(_)) => Ok(first[0] == TLS_HANDSHAKE_RECORD),
        Ok(Err(e)) => Err(e),
        Err(_) => Ok(false),
    }
}

impl Via {
    /// Connects to a backend at `addr` within `timeout` (tuned like every proxied socket),
    /// sends the PROXY header naming `client` → `local` when asked to, and starts TLS when it
    /// starts at connect.
    pub async fn connect(
        &self,
        addr: &str,
        timeout: Duration,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> io::Result<Stream> {
        let mut tcp = super::connect_backend(addr, timeout).await?;
        self.send_header(&mut tcp, client, local).await?;
        match (&self.tls, self.tls_at_connect) {
            (Some(tls), true) => tokio::time::timeout(timeout, tls.connect(addr, tcp))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))?,
            _ => Ok(Stream::Plain(tcp)),
        }
    }

    /// Writes the PROXY v2 header for `client` → `local` on a fresh backend connection, when
    /// `send_proxy_protocol` is on (and both addresses are known).
    pub async fn send_header(
        &self,
        tcp: &mut TcpStream,
        client: Option<SocketAddr>,
        local: Option<SocketAddr>,
    ) -> io::Result<()> {
        if !self.send_proxy_protocol {
            return Ok(());
        }
        let (Some(src), Some(dst)) = (client, local) else {
            return Ok(());
        };
        tcp.write_all(&proxy_protocol::encode(src, dst)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    fn door(from: &[&str]) -> Door {
        Door {
            proxy_protocol: Some(Arc::new(Trusted::parse(from).unwrap())),
            ..Door::default()
        }
    }

    const LIMIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn a_trusted_balancer_s_header_names_the_client() {
        let (mut lb, proxy_side) = pair().await;
        let peer = proxy_side.peer_addr().ok();
        let client: SocketAddr = "203.0.113.9:4242".parse().unwrap();
        let dst: SocketAddr = "198.51.100.1:3306".parse().unwrap();
        lb.write_all(&proxy_protocol::encode(client, dst))
            .await
            .unwrap();
        lb.write_all(b"hello").await.unwrap();
        let passed = door(&["127.0.0.0/8"])
            .pass(proxy_side, peer, false, LIMIT)
            .await
            .expect("passes");
        assert_eq!((passed.peer, passed.local), (Some(client), Some(dst)));
        let Stream::Plain(mut s) = passed.client else {
            panic!("plain")
        };
        let mut rest = [0u8; 5];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"hello", "the client's own bytes are untouched");
    }

    #[tokio::test]
    async fn an_untrusted_peer_and_a_trusted_one_without_a_header_are_refused() {
        let (mut lb, proxy_side) = pair().await;
        let peer = proxy_side.peer_addr().ok();
        lb.write_all(&proxy_protocol::encode(
            "1.2.3.4:1".parse().unwrap(),
            "5.6.7.8:2".parse().unwrap(),
        ))
        .await
        .unwrap();
        let e = door(&["10.0.0.0/8"])
            .pass(proxy_side, peer, false, LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(e, DoorError::Untrusted), "{e}");

        let (mut plain, proxy_side) = pair().await;
        let peer = proxy_side.peer_addr().ok();
        plain
            .write_all(b"\x10\x00\x00\x01 a MySQL packet, no header")
            .await
            .unwrap();
        let e = door(&["127.0.0.1"])
            .pass(proxy_side, peer, false, LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(e, DoorError::Header(_)), "{e}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trusted_peer_that_sends_nothing_is_closed_at_the_limit() {
        let (_lb, proxy_side) = pair().await;
        let peer = proxy_side.peer_addr().ok();
        let e = door(&["127.0.0.1"])
            .pass(proxy_side, peer, false, LIMIT)
            .await
            .unwrap_err();
        assert!(matches!(e, DoorError::Timeout), "{e}");
    }
}
