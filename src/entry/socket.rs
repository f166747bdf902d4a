//! Socket settings and byte counting shared by every connection kind, on both sides of the proxy.
//!
//! [`tune`] is the one place that says how a proxied socket behaves (no Nagle delay, dead peers
//! found by keepalive); [`connect_backend`] is the one way to open a backend socket outside the
//! first route (a move's target). [`Counted`] counts bytes per read or write call, for data
//! paths that do not run through `proxy::copy` (which counts per chunk itself).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

/// Idle time before the first keepalive probe.
const KEEPALIVE_TIME: Duration = Duration::from_secs(60);
/// Time between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Low-latency, dead-peer-detecting settings: `TCP_NODELAY` and TCP keepalive. A failure is
/// logged and otherwise ignored: the socket still works, only less well.
pub fn tune(stream: &TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "cannot set TCP_NODELAY");
    }
    let ka = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&ka) {
        debug!(error = %e, "cannot enable TCP keepalive");
    }
}

/// Connects to the backend `addr` within `timeout` and tunes the socket.
pub async fn connect_backend(addr: &str, timeout: Duration) -> io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tune(&stream);
    Ok(stream)
}

/// A reader or writer that adds every byte it moves to a counter (one atomic add per call).
#[derive(Debug)]
pub struct Counted<S> {
    inner: S,
    counter: Counter,
}

impl<S> Counted<S> {
    /// Counts what passes through `inner` into `counter`.
    pub fn new(inner: S, counter: Counter) -> Self {
        Self { inner, counter }
    }

    /// The stream underneath (to upgrade it to TLS).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        if n > 0 {
            self.counter.increment(n as u64);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counter.increment(n as u64);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.counter.increment(n as u64);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A counter whose total the test can read.
    fn counter() -> (Counter, Arc<std::sync::atomic::AtomicU64>) {
        let total = Arc::new(std::sync::atomic::AtomicU64::new(0));
        (Counter::from_arc(total.clone()), total)
    }

    #[tokio::test]
    async fn counted_streams_count_every_byte_read_and_written() {
        let (read_c, read_total) = counter();
        let (write_c, write_total) = counter();
        let (a, b) = tokio::io::duplex(64);
        let mut a = Counted::new(a, write_c);
        let mut b = Counted::new(b, read_c);
        let writer = tokio::spawn(async move {
            a.write_all(&[7u8; 1000]).await.expect("write");
            a.shutdown().await.expect("shutdown");
            a
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        writer.await.expect("join");
        assert_eq!(got.len(), 1000);
        let load = |t: &std::sync::atomic::AtomicU64| t.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!((load(&write_total), load(&read_total)), (1000, 1000));
    }
}
