//! The data path: forward bytes both ways between two sockets until both sides are done.
//!
//! A tight readiness loop rather than `tokio::io::copy_bidirectional`: a buffer is taken from a
//! per-thread pool only while a socket has data, so an idle connection holds no buffer at all
//! (thousands of idle sessions cost kilobytes, not 2 × 8 KiB each). One task drives both
//! directions; a half-close is passed on as `shutdown(Write)`, an error on either side ends both.
//! Only once one direction has ended does a timer exist (`proxy.half_close_timeout`, HAProxy's
//! `client-fin`/`server-fin`): while both are open the loop pays one relaxed store per chunk.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::future::Either;

use metrics::Counter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Size of one pooled buffer. A buffer is held only while a socket has data, so its size costs
/// nothing per idle connection; 64 KiB moves a large result set in a quarter of the `recv` and
/// `send` calls 16 KiB would (range queries of 1,000 rows: −9 % proxy CPU per query).
const BUF_SIZE: usize = 64 * 1024;
/// Buffers kept per thread for reuse (a thread holds one per direction it is pumping, plus
/// those whose write waits for room: a handful at a time).
const POOL_MAX: usize = 64;
/// Reads in a row on one direction before it yields to the other.
const BURST: usize = 16;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

fn take_buf() -> Box<[u8]> {
    POOL.with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; BUF_SIZE].into_boxed_slice())
}

fn give_buf(buf: Box<[u8]>) {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.len() < POOL_MAX {
            p.push(buf);
        }
    });
}

/// Forwards `a → b` and `b → a` until both directions reach end of stream; counts bytes into
/// `a_to_b` and `b_to_a`. Returns the first error of either direction.
///
/// Once one direction has ended (its source sent FIN, passed on), the other may stay open only
/// while it moves data: after `half_close` with nothing read, both end with
/// [`io::ErrorKind::TimedOut`] and the caller closes both sockets. The check runs once per
/// `half_close`, so a silent half-open connection is closed between one and two timeouts after
/// its last byte (exactly one when it never spoke after the half-close).
pub async fn bidirectional(
    a: &TcpStream,
    b: &TcpStream,
    a_to_b: &Counter,
    b_to_a: &Counter,
    half_close: Duration,
) -> io::Result<()> {
    let moved = AtomicBool::new(false);
    let there = std::pin::pin!(one_way(a, b, a_to_b, &moved));
    let back = std::pin::pin!(one_way(b, a, b_to_a, &moved));
    match futures::future::select(there, back).await {
        Either::Left((ended, rest)) | Either::Right((ended, rest)) => {
            ended?;
            half_open(rest, &moved, half_close).await
        }
    }
}

/// [`bidirectional`] for streams that are not bare sockets (TLS on either side), with the same
/// half-close and half-close timeout behaviour. TLS keeps its own record buffers and offers no
/// readiness of its plaintext, so each direction holds a [`STREAM_BUF`] buffer for the
/// connection's life.
pub async fn bidirectional_streams<A, B>(
    a: A,
    b: B,
    a_to_b: &Counter,
    b_to_a: &Counter,
    half_close: Duration,
) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let moved = AtomicBool::new(false);
    let there = std::pin::pin!(copy_stream(&mut ar, &mut bw, a_to_b, &moved));
    let back = std::pin::pin!(copy_stream(&mut br, &mut aw, b_to_a, &moved));
    match futures::future::select(there, back).await {
        Either::Left((ended, rest)) => {
            ended?;
            half_open(rest, &moved, half_close).await
        }
        Either::Right((ended, rest)) => {
            ended?;
            half_open(rest, &moved, half_close).await
        }
    }
}

/// Buffer per direction of [`bidirectional_streams`]: one TLS record's plaintext.
const STREAM_BUF: usize = 16 * 1024;

/// Forwards `src → dst` until `src` ends, then shuts `dst`'s write side (a TLS close_notify,
/// then FIN); sets `moved` whenever it forwards bytes.
async fn copy_stream<R, W>(
    src: &mut R,
    dst: &mut W,
    counter: &Counter,
    moved: &AtomicBool,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; STREAM_BUF];
    loop {
        let n = src.read(&mut buf).await?;
        let Some(data) = buf.get(..n).filter(|d| !d.is_empty()) else {
            return match dst.shutdown().await {
                Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
                _ => Ok(()),
            };
        };
        moved.store(true, Ordering::Relaxed);
        dst.write_all(data).await?;
        dst.flush().await?;
        counter.increment(n as u64);
    }
}

/// Drives the direction still open after the other ended, while it keeps moving data.
async fn half_open(
    mut rest: impl Future<Output = io::Result<()>> + Unpin,
    moved: &AtomicBool,
    limit: Duration,
) -> io::Result<()> {
    moved.store(false, Ordering::Relaxed);
    loop {
        match tokio::time::timeout(limit, &mut rest).await {
            Ok(r) => return r,
            Err(_) if moved.swap(false, Ordering::Relaxed) => {}
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "half-closed connection silent for proxy.half_close_timeout",
                ))
            }
        }
    }
}

enum Flow {
    Eof,
    Drained,
}

/// Forwards `src → dst` until `src` ends; sets `moved` whenever it forwards bytes.
async fn one_way(
    src: &TcpStream,
    dst: &TcpStream,
    counter: &Counter,
    moved: &AtomicBool,
) -> io::Result<()> {
    loop {
        read_ready(src).await?;
        let mut buf = take_buf();
        let flow = pump(src, dst, &mut buf, counter, moved).await;
        give_buf(buf);
        match flow? {
            Flow::Drained => continue,
            Flow::Eof => {
                match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {}
                    Err(e) => return Err(e),
                }
                return Ok(());
            }
        }
    }
}

/// Reads what `src` has and writes it to `dst`, until `src` would block or ends.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    buf: &mut [u8],
    counter: &Counter,
    moved: &AtomicBool,
) -> io::Result<Flow> {
    for _ in 0..BURST {
        match read_some(src, buf) {
            Ok(Read::Eof) => return Ok(Flow::Eof),
            Ok(Read::Data(n)) => {
                moved.store(true, Ordering::Relaxed);
                write_all(dst, &buf[..n]).await?;
                counter.increment(n as u64);
            }
            Ok(Read::Drained(n)) => {
                moved.store(true, Ordering::Relaxed);
                write_all(dst, &buf[..n]).await?;
                counter.increment(n as u64);
                return Ok(Flow::Drained);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flow::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Still more to read: let the other direction run before going on.
    tokio::task::yield_now().await;
    Ok(Flow::Drained)
}

enum Read {
    Eof,
    /// A full buffer: there may be more.
    Data(usize),
    /// A short read: the socket is (almost certainly) empty, and its readiness was cleared.
    Drained(usize),
}

/// One `recv`. A short read clears the socket's read readiness at once, saving the `recv` that
/// would only return `EAGAIN` (one syscall per message per direction on a request/response
/// protocol). Safe with tokio's readiness ticks: data that arrives after the `recv` raises a new
/// readiness event, which the clear does not touch.
fn read_some(src: &TcpStream, buf: &mut [u8]) -> io::Result<Read> {
    let mut short = 0;
    let r = src.try_io(tokio::io::Interest::READABLE, || {
        let n = io::Read::read(&mut &*socket2::SockRef::from(src), buf)?;
        if n > 0 && n < buf.len() {
            short = n;
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match r {
        Ok(0) => Ok(Read::Eof),
        Ok(n) => Ok(Read::Data(n)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(Read::Drained(short)),
        Err(e) => Err(e),
    }
}

/// Waits until `src` may have bytes. Through the socket's single read-waker slot rather than
/// `readable()`, whose waiter list costs a node linked and unlinked (under a lock) per wait:
/// about 4 % of the proxy's user-space instructions per query. The slot keeps one waker only,
/// which is enough: a socket's read side is awaited by one direction of one task.
async fn read_ready(src: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| src.poll_read_ready(cx)).await
}

/// Waits until `dst` has room; its write side is awaited only by the direction writing to it.
async fn write_ready(dst: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| dst.poll_write_ready(cx)).await
}

async fn write_all(dst: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match dst.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => write_ready(dst).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.expect("connect"), s.expect("accept").0)
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_and_a_half_close_is_passed_on() {
        let (mut client, proxy_client) = pair().await;
        let (proxy_backend, mut backend) = pair().await;
        let (c1, c2) = (Counter::noop(), Counter::noop());
        let fwd = tokio::spawn(async move {
            bidirectional(&proxy_client, &proxy_backend, &c1, &c2, LONG).await
        });
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        client.write_all(&payload).await.expect("write");
        client.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, payload);
        backend.write_all(b"bye").await.expect("reply");
        drop(backend);
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.expect("read reply");
        assert_eq!(reply, b"bye");
        fwd.await.expect("join").expect("forwarding ends cleanly");
    }

    /// A half-close timeout no test waits for.
    const LONG: Duration = Duration::from_secs(3600);
    /// The half-close timeout of the paused-clock tests.
    const HALF_CLOSE: Duration = Duration::from_secs(30);

    /// A client and a backend with `bidirectional` between them (`HALF_CLOSE` timeout).
    async fn proxied() -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let (client, proxy_client) = pair().await;
        let (proxy_backend, backend) = pair().await;
        let fwd = tokio::spawn(async move {
            let (c1, c2) = (Counter::noop(), Counter::noop());
            bidirectional(&proxy_client, &proxy_backend, &c1, &c2, HALF_CLOSE).await
        });
        (client, backend, fwd)
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_connection_whose_other_side_stays_silent_is_closed() {
        let (mut client, mut backend, fwd) = proxied().await;
        client.shutdown().await.expect("client half-closes");
        let mut got = Vec::new();
        backend
            .read_to_end(&mut got)
            .await
            .expect("backend sees the FIN");
        // the backend stays silent and open: only the timeout can end this (bounded here so a
        // proxy that never closes fails rather than hangs)
        let ended = tokio::time::timeout(HALF_CLOSE * 2, fwd).await;
        let err = ended
            .expect("closed within the timeout")
            .expect("join")
            .expect_err("closed by the timeout");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        let mut rest = Vec::new();
        client
            .read_to_end(&mut rest)
            .await
            .expect("client sees the close");
        assert!(rest.is_empty());
        backend.write_all(b"late").await.ok();
        let n = backend.read(&mut [0u8; 8]).await;
        assert!(
            matches!(n, Ok(0) | Err(_)),
            "backend side closed too: {n:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_half_closed_connection_stays_open_while_its_other_side_keeps_talking() {
        let (mut client, mut backend, fwd) = proxied().await;
        client.shutdown().await.expect("client half-closes");
        let mut got = Vec::new();
        backend
            .read_to_end(&mut got)
            .await
            .expect("backend sees the FIN");
        // five answers, each after most of a timeout of silence: 3.5 timeouts in all
        for i in 0..5u8 {
            tokio::time::sleep(HALF_CLOSE * 7 / 10).await;
            backend
                .write_all(&[i; 100])
                .await
                .expect("backend still connected");
        }
        drop(backend);
        let mut reply = Vec::new();
        client
            .read_to_end(&mut reply)
            .await
            .expect("client reads all");
        assert_eq!(reply.len(), 500, "every answer reached the client");
        fwd.await
            .expect("join")
            .expect("ends cleanly when the backend closes");
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_connection_may_idle_past_the_half_close_timeout() {
        let (mut client, mut backend, fwd) = proxied().await;
        tokio::time::sleep(HALF_CLOSE * 4).await;
        client.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        backend.read_exact(&mut got).await.expect("still forwarded");
        assert_eq!(&got, b"ping");
        assert!(!fwd.is_finished());
        drop((client, backend));
        fwd.await.expect("join").expect("ends cleanly");
    }
}
