//! `Stream`: one connection's socket, plain TCP or TLS over it, with owned read and write halves.
//!
//! Every data path reads and writes through these types, so TLS is a variant, not a second copy
//! of each path. The plain variant is the bare `TcpStream` and its owned halves (no lock, no
//! extra buffer); the TLS variant splits with `tokio::io::split`, whose halves share the stream.
//! [`Stream::reunite`] puts halves back together, for a MySQL connection that upgrades to TLS
//! after its first packets.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A TLS stream over TCP, either side of the handshake (boxed: it is large, the plain variant
/// is not).
pub type Tls = Box<TlsStream<TcpStream>>;

/// A connected socket, plain or TLS.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (client or server side) over TCP.
    Tls(Tls),
}

/// The reading half of a [`Stream`].
#[derive(Debug)]
pub enum StreamRead {
    /// Of a plain stream.
    Plain(OwnedReadHalf),
    /// Of a TLS stream.
    Tls(tokio::io::ReadHalf<Tls>),
    /// Taken away for an upgrade that did not finish: reads fail.
    Gone,
}

/// The writing half of a [`Stream`].
#[derive(Debug)]
pub enum StreamWrite {
    /// Of a plain stream.
    Plain(OwnedWriteHalf),
    /// Of a TLS stream.
    Tls(tokio::io::WriteHalf<Tls>),
    /// Taken away for an upgrade that did not finish: writes fail.
    Gone,
}

impl Stream {
    /// Splits into owned halves.
    pub fn into_split(self) -> (StreamRead, StreamWrite) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (StreamRead::Plain(r), StreamWrite::Plain(w))
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(s);
                (StreamRead::Tls(r), StreamWrite::Tls(w))
            }
        }
    }

    /// The halves of one stream, together again; `None` when they are not (or one is gone).
    pub fn reunite(r: StreamRead, w: StreamWrite) -> Option<Stream> {
        match (r, w) {
            (StreamRead::Plain(r), StreamWrite::Plain(w)) => r.reunite(w).ok().map(Stream::Plain),
            (StreamRead::Tls(r), StreamWrite::Tls(w)) => {
                r.is_pair_of(&w).then(|| Stream::Tls(r.unsplit(w)))
            }
            _ => None,
        }
    }

    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }
}

impl From<TcpStream> for Stream {
    fn from(s: TcpStream) -> Self {
        Stream::Plain(s)
    }
}

impl StreamRead {
    /// Whether the stream is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, StreamRead::Tls(_))
    }
}

/// A TLS peer that closes its socket without a `close_notify` alert has closed: most MySQL
/// clients and drivers never send one. A cut inside a packet is still caught by the framing.
fn eof_without_close_notify(r: Poll<io::Result<()>>) -> Poll<io::Result<()>> {
    match r {
        Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
        r => r,
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "stream taken for a TLS upgrade",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => eof_without_close_notify(Pin::new(s).poll_read(cx, buf)),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl AsyncRead for StreamRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamRead::Plain(s) => Pin::new(s).poll_read(cx, buf),
            StreamRead::Tls(s) => eof_without_close_notify(Pin::new(s).poll_read(cx, buf)),
            StreamRead::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl AsyncWrite for StreamWrite {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_write(cx, buf),
            StreamWrite::Tls(s) => Pin::new(s).poll_write(cx, buf),
            StreamWrite::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            StreamWrite::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            StreamWrite::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            StreamWrite::Plain(s) => s.is_write_vectored(),
            StreamWrite::Tls(s) => s.is_write_vectored(),
            StreamWrite::Gone => false,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_flush(cx),
            StreamWrite::Tls(s) => Pin::new(s).poll_flush(cx),
            StreamWrite::Gone => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            StreamWrite::Plain(s) => Pin::new(s).poll_shutdown(cx),
            StreamWrite::Tls(s) => Pin::new(s).poll_shutdown(cx),
            StreamWrite::Gone => Poll::Ready(Err(gone())),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use switchyard::wire::OutBuf;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::tls::{BackendTls, FrontTls};

    /// Far longer than the test needs when nothing is stranded.
    const PATIENCE: Duration = Duration::from_secs(5);

    /// A self-signed certificate for 127.0.0.1 in a scratch directory: (certificate, key);
    /// `None` without the openssl CLI.
    fn self_signed(tag: &str) -> Option<(PathBuf, PathBuf)> {
        let dir = std::env::temp_dir().join(format!("switchyard-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        crate::tls::test_certs::self_signed(&dir, "c")
    }

    #[tokio::test]
    async fn a_tls_write_that_returned_reaches_a_slow_reader_without_further_writes() {
        let Some((cert, key)) = self_signed("tls-flush") else {
            return;
        };
        let front = FrontTls::load(&cert, &key, false).expect("front");
        let back = BackendTls::new(None, true).expect("back");
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (c, s) = (c.expect("connect"), s.expect("accept").0);
        // small socket buffers: the writes keep finding the socket full
        socket2::SockRef::from(&s)
            .set_send_buffer_size(4096)
            .expect("sndbuf");
        socket2::SockRef::from(&c)
            .set_recv_buffer_size(4096)
            .expect("rcvbuf");
        let name = addr.to_string();
        let (server, client) = tokio::join!(front.accept(s), back.connect(&name, c));
        let (mut server_in, mut server_out) = server.expect("server side").into_split();
        let mut client = client.expect("client side");
        const LEN: usize = 96 * 1024;
        let mut out = OutBuf::new();
        out.extend_from_slice(&[7u8; LEN]);
        let (done_tx, mut done) = tokio::sync::oneshot::channel();
        // the proxy: one flight written, then it waits for the next command, as the relay does
        let proxy = async {
            out.flush_to(&mut server_out).await.expect("write");
            let _ = done_tx.send(());
            let mut next = [0u8; 1];
            let _ = server_in.read(&mut next).await;
        };
        // a client reading in small pieces, slower than the proxy writes, until the proxy says
        // the flight is written; then whatever is still to come must come on its own
        let client = async {
            let mut got = 0;
            let mut buf = [0u8; 512];
            let mut written = false;
            while got < LEN {
                let read = tokio::select! {
                    r = client.read(&mut buf) => r,
                    _ = &mut done, if !written => {
                        written = true;
                        continue;
                    }
                };
                match read {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
            }
            got
        };
        let got = tokio::select! {
            got = tokio::time::timeout(PATIENCE, client) => got,
            _ = proxy => unreachable!("the proxy waits for a command"),
        };
        assert_eq!(got.ok(), Some(LEN), "every byte of the flight arrived");
    }
}
