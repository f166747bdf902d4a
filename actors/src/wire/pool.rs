//! Per-thread pools of I/O buffers, so a connection holds a buffer only while bytes are in
//! flight: a [`PacketReader`](super::PacketReader) waiting for data and an [`OutBuf`] that was
//! flushed own none. Thousands of idle sessions then cost no buffer memory, and a buffer that
//! grew for one large packet is freed instead of being kept for the session's life.
//!
//! Taking and giving back is a `Vec` pop and push on the current thread (actix runs each arbiter
//! on one thread, so a session's buffers mostly come back to the pool they came from). Only
//! buffers of about the usual size are pooled; a grown one is dropped.

use std::cell::RefCell;
use std::io;
use std::ops::{Deref, DerefMut};

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Size of a pooled buffer: room for the many small packets of a typical exchange.
pub(super) const BUF_SIZE: usize = 16 * 1024;
/// A write buffer that grew beyond this is freed rather than pooled.
const KEEP_MAX: usize = 64 * 1024;
/// Bytes at least this long are written through rather than queued ([`OutBuf::put_or_write`]).
const WRITE_THROUGH_AT: usize = 64 * 1024;
/// Buffers of each kind kept per thread. Few are ever out at once (a session holds one only
/// while it has bytes in hand), so this bounds the pool, not the sessions.
const POOL_MAX: usize = 64;

/// One thread's pools, and how many buffers its connections hold now.
struct Pools {
    read: Vec<BytesMut>,
    write: Vec<Vec<u8>>,
    held: usize,
}

thread_local! {
    static POOLS: RefCell<Pools> = const {
        RefCell::new(Pools { read: Vec::new(), write: Vec::new(), held: 0 })
    };
}

/// Runs `f` on this thread's pools; `None` while the thread is being torn down.
fn with<T>(f: impl FnOnce(&mut Pools) -> T) -> Option<T> {
    POOLS.try_with(|p| f(&mut p.borrow_mut())).ok()
}

/// Buffers that readers and [`OutBuf`]s on this thread hold now (taken and not given back).
/// Idle connections hold none, so after they settle this counts only connections with bytes in
/// hand.
pub fn buffers_held() -> usize {
    with(|p| p.held).unwrap_or(0)
}

/// An empty read buffer with at least [`BUF_SIZE`] bytes of room.
fn take_read() -> BytesMut {
    with(|p| {
        p.held += 1;
        p.read.pop()
    })
    .flatten()
    .unwrap_or_else(|| BytesMut::with_capacity(BUF_SIZE))
}

/// Gives back a read buffer taken with [`take_read`]. It is pooled when `keep` (it never grew:
/// its allocation is one [`BUF_SIZE`] buffer) and all of it is free again; while frames split
/// off it live, it is dropped, and the allocation goes with the last of them.
fn give_read(mut buf: BytesMut, keep: bool) {
    let keep = keep && buf.is_empty() && buf.try_reclaim(BUF_SIZE);
    with(|p| {
        p.held = p.held.saturating_sub(1);
        if keep && p.read.len() < POOL_MAX {
            p.read.push(buf);
        }
    });
}

/// An empty write buffer.
fn take_write() -> Vec<u8> {
    with(|p| {
        p.held += 1;
        p.write.pop()
    })
    .flatten()
    .unwrap_or_else(|| Vec::with_capacity(BUF_SIZE))
}

/// Gives back a write buffer (its bytes are dropped); a grown one is freed.
fn give_write(mut buf: Vec<u8>) {
    let keep = (BUF_SIZE..=KEEP_MAX).contains(&buf.capacity());
    buf.clear();
    with(|p| {
        p.held = p.held.saturating_sub(1);
        if keep && p.write.len() < POOL_MAX {
            p.write.push(buf);
        }
    });
}

/// What a [`ReadSpace`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Held {
    /// No buffer (an empty, unallocated `BytesMut`).
    #[default]
    Nothing,
    /// A buffer from the pool, of the pool's size.
    Pooled,
    /// A buffer moved to a larger allocation (for a long packet): freed, not pooled.
    Grown,
}

/// A packet reader's buffer. It knows whether it ever grew, so a buffer enlarged for a long
/// packet is freed, not pooled: the reader gives a buffer of the usual size back whenever it
/// waits with nothing buffered ([`ReadSpace::release_pooled`]), and a grown one when its owner
/// says the exchange is over ([`ReadSpace::release`]), so a result of many long rows grows it
/// once.
#[derive(Debug, Default)]
pub(super) struct ReadSpace {
    bytes: BytesMut,
    held: Held,
}

impl ReadSpace {
    /// The buffered bytes. Growing them other than through [`ReadSpace::reserve`] and
    /// [`ReadSpace::make_room`] would hide the growth from the pool: read only into the room
    /// those made.
    pub(super) fn bytes_mut(&mut self) -> &mut BytesMut {
        &mut self.bytes
    }

    /// Makes room for `additional` more bytes: within the same allocation when the frames split
    /// off it are gone (the common case), else in a new one, after which the buffer counts as
    /// grown.
    pub(super) fn reserve(&mut self, additional: usize) {
        if self.bytes.try_reclaim(additional) {
            return;
        }
        if self.held == Held::Nothing {
            with(|p| p.held += 1);
        }
        self.held = Held::Grown;
        self.bytes.reserve(additional);
    }

    /// At least `min` bytes of room to read into: the whole of the buffer held when the frames
    /// split off it are gone, else a pooled one when nothing is buffered, else room in the same
    /// buffer (a partial packet moves to its front rather than grow it).
    pub(super) fn make_room(&mut self, min: usize) {
        if self.bytes.capacity() - self.bytes.len() >= min {
            return;
        }
        if self.bytes.is_empty() {
            if self.held != Held::Nothing && self.bytes.try_reclaim(BUF_SIZE.max(min)) {
                return;
            }
            self.release();
            self.bytes = take_read();
            self.held = Held::Pooled;
        } else {
            self.reserve(BUF_SIZE.saturating_sub(self.bytes.len()).max(min));
        }
    }

    /// Gives a buffer of the usual size back to the pool when nothing is buffered; a grown one
    /// is kept for the next long packet of the same exchange.
    pub(super) fn release_pooled(&mut self) {
        if self.held == Held::Pooled {
            self.release();
        }
    }

    /// Gives the buffer back when nothing is buffered: to the pool when it never grew, to the
    /// allocator when it did.
    pub(super) fn release(&mut self) {
        if !self.bytes.is_empty() || self.held == Held::Nothing {
            return;
        }
        give_read(std::mem::take(&mut self.bytes), self.held == Held::Pooled);
        self.held = Held::Nothing;
    }
}

impl Deref for ReadSpace {
    type Target = BytesMut;

    fn deref(&self) -> &BytesMut {
        &self.bytes
    }
}

impl Drop for ReadSpace {
    fn drop(&mut self) {
        if self.held != Held::Nothing {
            self.bytes.clear();
            give_read(std::mem::take(&mut self.bytes), self.held == Held::Pooled);
        }
    }
}

/// Bytes queued for one socket. Empty, it owns no memory: the first write through `DerefMut`
/// takes a buffer from the current thread's pool, and [`OutBuf::flush_to`] gives it back.
///
/// It derefs to the `Vec<u8>` so callers append with `extend_from_slice` or
/// [`put_packet`](super::put_packet) as to any `Vec`.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    /// Bytes went to the writer since its last flush. A TLS writer takes a write into its own
    /// record buffer and may keep the last records of it there while the socket is full (its
    /// `poll_write` has then accepted them, and nothing sends them later on its own): only a
    /// flush promises they leave, so the flight a peer waits for is never stranded.
    unflushed: bool,
}

impl OutBuf {
    /// An empty buffer (no allocation).
    pub const fn new() -> Self {
        Self {
            buf: Vec::new(),
            unflushed: false,
        }
    }

    /// Writes the queued bytes to `w` and flushes it, so they are on their way to the peer
    /// when this returns (over TLS too). A buffer of the usual size then goes back to the pool;
    /// a grown one is kept, emptied, for the rest of a long response, until [`OutBuf::release`].
    pub async fn flush_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        self.write_queued(w).await?;
        if self.unflushed {
            w.flush().await?;
            self.unflushed = false;
        }
        Ok(())
    }

    /// Hands the queued bytes to `w`, without a flush. A buffer of the usual size then goes
    /// back to the pool.
    async fn write_queued<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.unflushed = true;
            w.write_all(&self.buf).await?;
            self.buf.clear();
        }
        if self.buf.capacity() <= KEEP_MAX {
            self.release();
        }
        Ok(())
    }

    /// Queues `bytes` for `w`; a long run (64 KiB or more, e.g. one long packet) is instead
    /// written at once, after what is queued, straight from where it lies: it is never copied
    /// here and the buffer never grows for it. The next [`OutBuf::flush_to`] flushes it.
    pub async fn put_or_write<W: AsyncWrite + Unpin>(
        &mut self,
        w: &mut W,
        bytes: &[u8],
    ) -> io::Result<()> {
        if bytes.len() < WRITE_THROUGH_AT {
            self.extend_from_slice(bytes);
            return Ok(());
        }
        self.write_queued(w).await?;
        self.unflushed = true;
        w.write_all(bytes).await
    }

    /// Drops what is queued and gives the buffer back (a grown one is freed). Call it where a
    /// connection goes idle.
    pub fn release(&mut self) {
        if self.buf.capacity() > 0 {
            give_write(std::mem::take(&mut self.buf));
        }
    }

    /// Bytes of memory held (0 when empty and released).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

impl Drop for OutBuf {
    fn drop(&mut self) {
        self.release();
    }
}

impl Deref for OutBuf {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl DerefMut for OutBuf {
    /// The buffer to append to, taken from the pool first if none is held.
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        if self.buf.capacity() == 0 {
            self.buf = take_write();
        }
        &mut self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_flushed_buffer_goes_back_to_the_pool_and_is_reused() {
        let mut out = OutBuf::new();
        assert_eq!((out.capacity(), buffers_held()), (0, 0));
        out.extend_from_slice(b"hello");
        assert_eq!(buffers_held(), 1);
        let ptr = out.as_ptr();
        let mut sink = Vec::new();
        out.flush_to(&mut sink).await.unwrap();
        assert_eq!(sink, b"hello");
        assert_eq!(out.capacity(), 0, "an idle buffer holds no memory");
        assert_eq!(buffers_held(), 0);
        out.extend_from_slice(b"again");
        assert_eq!(
            out.as_ptr(),
            ptr,
            "the pooled buffer is reused, not reallocated"
        );
        assert_eq!(&out[..], b"again");
    }

    #[tokio::test]
    async fn a_long_run_is_written_through_in_order_without_growing_the_buffer() {
        let mut out = OutBuf::new();
        let mut sink = Vec::new();
        out.put_or_write(&mut sink, b"head").await.unwrap();
        assert!(sink.is_empty(), "a short run is queued");
        let long = vec![9u8; 1 << 20];
        out.put_or_write(&mut sink, &long).await.unwrap();
        assert_eq!(out.capacity(), 0, "the long run never entered the buffer");
        out.put_or_write(&mut sink, b"tail").await.unwrap();
        out.flush_to(&mut sink).await.unwrap();
        assert_eq!(&sink[..4], b"head");
        assert_eq!(&sink[4..4 + long.len()], &long[..]);
        assert_eq!(&sink[4 + long.len()..], b"tail");
    }

    #[tokio::test]
    async fn a_grown_buffer_is_kept_through_a_long_response_then_freed() {
        let mut out = OutBuf::new();
        let mut sink = Vec::new();
        out.extend_from_slice(&vec![1u8; 4 << 20]);
        out.flush_to(&mut sink).await.unwrap();
        assert!(
            out.capacity() >= 4 << 20,
            "kept, emptied, while the response goes on"
        );
        assert!(out.is_empty());
        out.release();
        assert_eq!((out.capacity(), buffers_held()), (0, 0));
        out.push(1);
        assert!(
            out.capacity() <= KEEP_MAX,
            "the grown buffer was not pooled"
        );
        assert_eq!(sink.len(), 4 << 20);
    }
}
