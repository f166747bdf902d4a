//! Packet framing: a 3-byte little-endian payload length and a 1-byte sequence id, with payloads
//! of 16 MiB − 1 continued by the next packet.
//!
//! The reader is cancel-safe: bytes are only ever read into its own buffer, so a `select!` that
//! drops a pending [`PacketReader::fill`] loses nothing. Frames are split off that buffer without
//! copying, so relaying a packet costs one copy into the writer's buffer and no allocation. The
//! buffer comes from a per-thread pool ([`super::pool`]) and goes back whenever the reader waits
//! with nothing buffered, so an idle connection holds none; one grown for a long packet is kept
//! until [`PacketReader::release`] (the end of the exchange), then freed.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pool::ReadSpace;

/// Largest payload of one physical packet; a packet this long is continued by the next one.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Bytes of the packet header.
pub const HEADER: usize = 4;
/// Where the sequence id sits in the header.
const SEQ_AT: usize = 3;
/// Bytes of the length field.
const LEN_BYTES: usize = 3;
/// Below this much free room the reader grows its buffer before reading.
const MIN_READ_ROOM: usize = 4096;

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// The peer closed the connection between packets.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection inside a packet.
    #[error("connection closed inside a packet ({got} of {want} bytes)")]
    Truncated {
        /// Bytes received.
        got: usize,
        /// Bytes the header announced (header included).
        want: usize,
    },
    /// The sequence id is not the one the exchange requires.
    #[error("packet sequence id {got}, expected {want}")]
    Sequence {
        /// Received id.
        got: u8,
        /// Expected id.
        want: u8,
    },
    /// The packet (or logical packet) is longer than allowed at this point.
    #[error("packet of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// Allowed length.
        max: usize,
    },
    /// The payload does not have the shape its position requires.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Socket error.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The payload length a header announces (`None` when fewer than 3 bytes are given).
fn announced_len(header: &[u8]) -> Option<usize> {
    match header.get(..LEN_BYTES)? {
        &[a, b, c] => Some(usize::from(a) | usize::from(b) << 8 | usize::from(c) << 16),
        _ => None,
    }
}

/// The header of a packet of `len` payload bytes (at most [`MAX_PAYLOAD`]) with id `seq`.
fn header(len: usize, seq: u8) -> [u8; HEADER] {
    let [a, b, c, _] = (len.min(MAX_PAYLOAD) as u32).to_le_bytes();
    [a, b, c, seq]
}

/// One physical packet, header included.
#[derive(Debug)]
pub struct Frame {
    /// Always at least [`HEADER`] bytes: the reader splits whole packets only.
    raw: BytesMut,
}

impl Frame {
    /// A packet carrying `payload` (cut to less than [`MAX_PAYLOAD`]) with sequence id `seq`.
    pub fn new(seq: u8, payload: &[u8]) -> Self {
        let payload = payload.get(..MAX_PAYLOAD - 1).unwrap_or(payload);
        let mut raw = BytesMut::with_capacity(HEADER + payload.len());
        raw.extend_from_slice(&header(payload.len(), seq));
        raw.extend_from_slice(payload);
        Self { raw }
    }

    /// Sequence id.
    pub fn seq(&self) -> u8 {
        self.raw.get(SEQ_AT).copied().unwrap_or(0)
    }

    /// Sets the sequence id (a proxy renumbers a login's packets when only one side of it
    /// had a TLS upgrade, which takes a sequence id).
    pub fn set_seq(&mut self, seq: u8) {
        if let Some(b) = self.raw.get_mut(SEQ_AT) {
            *b = seq;
        }
    }

    /// Payload bytes.
    pub fn payload(&self) -> &[u8] {
        self.raw.get(HEADER..).unwrap_or_default()
    }

    /// Payload bytes, writable (for in-place rewrites of fixed-size fields).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.raw.get_mut(HEADER..).unwrap_or_default()
    }

    /// Header and payload as sent on the wire.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// True when the payload is exactly [`MAX_PAYLOAD`]: the next packet continues this one.
    pub fn continued(&self) -> bool {
        self.payload().len() == MAX_PAYLOAD
    }

    /// First payload byte (the packet's marker or command; 0 for an empty payload).
    pub fn first(&self) -> u8 {
        self.payload().first().copied().unwrap_or(0)
    }
}

/// Reads physical packets from a byte stream into a buffer it holds only while bytes are in
/// hand (see the module docs).
pub struct PacketReader<R> {
    inner: R,
    /// Empty and unallocated while the reader waits with nothing buffered.
    buf: ReadSpace,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader accepting physical payloads up to [`MAX_PAYLOAD`]. It allocates nothing until
    /// the first bytes arrive.
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: ReadSpace::default(),
            max_payload: MAX_PAYLOAD,
        }
    }

    /// Limits the payload of each physical packet (e.g. during login, where a long packet is
    /// hostile). Checked against the header, before any payload is buffered.
    pub fn set_max_payload(&mut self, max: usize) {
        self.max_payload = max.min(MAX_PAYLOAD);
    }

    /// The next complete packet already buffered, without reading.
    pub fn try_frame(&mut self) -> Result<Option<Frame>, PacketError> {
        let Some(len) = announced_len(&self.buf).filter(|_| self.buf.len() >= HEADER) else {
            return Ok(None);
        };
        if len > self.max_payload {
            return Err(PacketError::TooLarge {
                len,
                max: self.max_payload,
            });
        }
        if self.buf.len() < HEADER + len {
            self.buf.reserve(HEADER + len - self.buf.len());
            return Ok(None);
        }
        Ok(Some(Frame {
            raw: self.buf.bytes_mut().split_to(HEADER + len),
        }))
    }

    /// True when bytes of a further packet are buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Bytes of memory the reader's buffer offers now (0 while it waits with nothing buffered,
    /// unless it grew for a long packet and was not released since).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Frees a buffer grown for a long packet (or gives back a usual one) when nothing is
    /// buffered. Call it where an exchange ends, e.g. between two commands: until then a grown
    /// buffer is kept for the next long packet.
    pub fn release(&mut self) {
        self.buf.release();
    }

    /// One read attempt; while the stream has nothing, an empty buffer is given back.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        self.buf.make_room(MIN_READ_ROOM);
        let r = pin!(self.inner.read_buf(self.buf.bytes_mut())).poll(cx);
        if r.is_pending() {
            self.buf.release_pooled();
        }
        r
    }

    /// Reads more bytes into the buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), PacketError> {
        let n = std::future::poll_fn(|cx| self.poll_fill(cx)).await?;
        if n == 0 {
            self.buf.release();
            if self.buf.is_empty() {
                return Err(PacketError::Closed);
            }
            let want = HEADER + announced_len(&self.buf).unwrap_or(0);
            return Err(PacketError::Truncated {
                got: self.buf.len(),
                want,
            });
        }
        Ok(())
    }

    /// The next packet, reading as needed.
    pub async fn frame(&mut self) -> Result<Frame, PacketError> {
        loop {
            if let Some(f) = self.try_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// The next packet, which must carry sequence id `seq`.
    pub async fn frame_seq(&mut self, seq: u8) -> Result<Frame, PacketError> {
        let f = self.frame().await?;
        if f.seq() != seq {
            return Err(PacketError::Sequence {
                got: f.seq(),
                want: seq,
            });
        }
        Ok(f)
    }

    /// A whole logical packet starting at sequence id `seq` (continuations joined), at most
    /// `max` bytes. Returns the sequence id of its last physical packet and the payload.
    pub async fn logical(&mut self, seq: u8, max: usize) -> Result<(u8, Vec<u8>), PacketError> {
        let mut seq = seq;
        let mut out = Vec::new();
        loop {
            let f = self.frame_seq(seq).await?;
            let len = out.len() + f.payload().len();
            if len > max {
                return Err(PacketError::TooLarge { len, max });
            }
            out.extend_from_slice(f.payload());
            if !f.continued() {
                return Ok((seq, out));
            }
            seq = seq.wrapping_add(1);
        }
    }

    /// Takes the bytes buffered but not yet returned as packets (for a switch to raw relaying).
    pub fn take_buffered(&mut self) -> BytesMut {
        let rest = self.buf.bytes_mut().split();
        self.buf.release();
        rest
    }

    /// The underlying stream.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Gives back the underlying stream, dropping any buffered bytes.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Appends `payload` as one logical packet starting at `seq` (split at 16 MiB, with a trailing
/// empty packet when the length is a multiple of it). Returns the sequence id after the last one.
pub fn put_packet(out: &mut Vec<u8>, seq: u8, payload: &[u8]) -> u8 {
    let mut seq = seq;
    let mut chunks = payload.chunks(MAX_PAYLOAD);
    loop {
        let chunk = chunks.next().unwrap_or_default();
        out.extend_from_slice(&header(chunk.len(), seq));
        out.extend_from_slice(chunk);
        seq = seq.wrapping_add(1);
        if chunk.len() < MAX_PAYLOAD {
            return seq;
        }
    }
}

/// Writes `bytes`, flushes `w` (a TLS writer may hold the last records of a write while the
/// socket is full) and clears the buffer.
pub async fn flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &mut Vec<u8>) -> std::io::Result<()> {
    if !bytes.is_empty() {
        w.write_all(bytes).await?;
        w.flush().await?;
        bytes.clear();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::pool::{buffers_held, BUF_SIZE};
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_packet_split_across_reads_is_reassembled() {
        let mut wire = Vec::new();
        put_packet(&mut wire, 3, b"hello");
        let (a, b) = wire.split_at(6);
        let reader = tokio_test_reader(&[a, b]);
        let mut r = PacketReader::new(reader);
        let f = r.frame().await.unwrap();
        assert_eq!(f.seq(), 3);
        assert_eq!(f.payload(), b"hello");
        assert!(matches!(r.frame().await, Err(PacketError::Closed)));
    }

    /// A reader that hands out `parts` one read at a time.
    fn tokio_test_reader(parts: &[&[u8]]) -> impl AsyncRead + Unpin {
        let (client, mut server) = tokio::io::duplex(64);
        let parts: Vec<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
        tokio::spawn(async move {
            for p in parts {
                server.write_all(&p).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        client
    }

    #[tokio::test]
    async fn sixteen_mib_payloads_are_continued_and_joined() {
        let payload = vec![7u8; MAX_PAYLOAD + 10];
        let mut wire = Vec::new();
        let next = put_packet(&mut wire, 0, &payload);
        assert_eq!(next, 2);
        let mut r = PacketReader::new(&wire[..]);
        let (last, got) = r.logical(0, usize::MAX).await.unwrap();
        assert_eq!(last, 1);
        assert_eq!(got, payload);
        let mut wire = Vec::new();
        assert_eq!(put_packet(&mut wire, 0, &vec![1u8; MAX_PAYLOAD]), 2);
        assert_eq!(wire.len(), 2 * HEADER + MAX_PAYLOAD);
        let mut r = PacketReader::new(&wire[..]);
        let first = r.frame().await.unwrap();
        assert!(first.continued());
        let last = r.frame().await.unwrap();
        assert!(!last.continued() && last.payload().is_empty());
    }

    #[tokio::test]
    async fn a_truncated_packet_and_a_wrong_sequence_are_errors() {
        let mut wire = Vec::new();
        put_packet(&mut wire, 0, b"abcdef");
        let mut r = PacketReader::new(&wire[..7]);
        assert!(matches!(
            r.frame().await,
            Err(PacketError::Truncated { got: 7, want: 10 })
        ));
        let mut r = PacketReader::new(&wire[..2]);
        assert!(matches!(
            r.frame().await,
            Err(PacketError::Truncated { got: 2, want: 4 })
        ));
        let mut r = PacketReader::new(&wire[..]);
        assert!(matches!(
            r.frame_seq(1).await,
            Err(PacketError::Sequence { got: 0, want: 1 })
        ));
    }

    #[tokio::test]
    async fn an_absurd_length_is_refused_from_the_header() {
        let wire = [0xFF, 0xFF, 0xFF, 0, 1, 2];
        let mut r = PacketReader::new(&wire[..]);
        r.set_max_payload(1024);
        assert!(matches!(
            r.frame().await,
            Err(PacketError::TooLarge { max: 1024, .. })
        ));
        let mut r = PacketReader::new(&wire[..]);
        assert!(matches!(
            r.logical(0, 100).await,
            Err(PacketError::Truncated { .. })
        ));
    }

    #[tokio::test]
    async fn a_reader_waiting_for_data_holds_no_buffer_and_reuses_the_pooled_one() {
        let (mut peer, stream) = tokio::io::duplex(1024);
        let mut r = PacketReader::new(stream);
        assert!(r.frame().now_or_never().is_none());
        assert_eq!(
            (r.capacity(), buffers_held()),
            (0, 0),
            "nothing before any byte"
        );
        let mut wire = Vec::new();
        put_packet(&mut wire, 0, b"\x03SELECT 1");
        peer.write_all(&wire).await.unwrap();
        let f = r.frame().await.unwrap();
        let at = f.raw().as_ptr();
        assert_eq!(buffers_held(), 1);
        drop(f);
        assert!(r.frame().now_or_never().is_none());
        assert_eq!(
            (r.capacity(), buffers_held()),
            (0, 0),
            "given back while waiting"
        );
        peer.write_all(&wire).await.unwrap();
        let f = r.frame().await.unwrap();
        assert_eq!(f.payload(), b"\x03SELECT 1");
        assert_eq!(
            f.raw().as_ptr(),
            at,
            "the next packet lands in the same pooled buffer"
        );
    }

    #[tokio::test]
    async fn a_buffer_grown_for_long_packets_serves_the_whole_exchange_then_is_freed() {
        let (mut peer, stream) = tokio::io::duplex(64 * 1024);
        let mut r = PacketReader::new(stream);
        let mut wire = Vec::new();
        put_packet(&mut wire, 0, &vec![7u8; 4 << 20]);
        put_packet(&mut wire, 1, &vec![8u8; 4 << 20]);
        let writer = tokio::spawn(async move {
            peer.write_all(&wire).await.unwrap();
            peer
        });
        let first = r.frame().await.unwrap();
        let at = first.raw().as_ptr();
        assert_eq!(first.payload(), &vec![7u8; 4 << 20][..]);
        drop(first);
        let second = r.frame().await.unwrap();
        assert_eq!(second.payload(), &vec![8u8; 4 << 20][..]);
        assert_eq!(
            second.raw().as_ptr(),
            at,
            "one allocation for both long packets"
        );
        drop(second);
        let mut peer = writer.await.unwrap();

        assert!(r.frame().now_or_never().is_none());
        r.release();
        assert_eq!(
            (r.capacity(), buffers_held()),
            (0, 0),
            "freed at the exchange's end"
        );
        let mut wire = Vec::new();
        put_packet(&mut wire, 2, b"small");
        peer.write_all(&wire).await.unwrap();
        assert_eq!(r.frame().await.unwrap().payload(), b"small");
        assert!(
            r.capacity() < BUF_SIZE,
            "the next packet is read into a buffer of the usual size, not the grown one ({})",
            r.capacity()
        );
    }

    #[tokio::test]
    async fn a_packet_straddling_the_buffer_end_moves_to_its_front_instead_of_growing_it() {
        let mut wire = Vec::new();
        for i in 0..400u32 {
            put_packet(&mut wire, i as u8, &[i as u8; 100]);
        }
        let (mut peer, stream) = tokio::io::duplex(wire.len());
        peer.write_all(&wire).await.unwrap();
        let mut r = PacketReader::new(stream);
        let first = r.frame().await.unwrap();
        let at = first.raw().as_ptr();
        drop(first);
        for i in 1..400u32 {
            let f = r.frame().await.unwrap();
            assert_eq!(f.payload(), &[i as u8; 100][..]);
            assert!(r.capacity() <= BUF_SIZE, "grew to {}", r.capacity());
        }
        assert!(r.frame().now_or_never().is_none());
        put_packet(&mut wire, 0, b"next");
        peer.write_all(&wire[wire.len() - 8..]).await.unwrap();
        let f = r.frame().await.unwrap();
        assert_eq!(
            f.raw().as_ptr(),
            at,
            "the same buffer served the whole stream"
        );
    }

    #[test]
    fn a_built_frame_reads_back_and_an_empty_one_has_no_marker() {
        let f = Frame::new(9, b"\x03SELECT 1");
        assert_eq!((f.seq(), f.first()), (9, 3));
        assert_eq!(f.payload(), b"\x03SELECT 1");
        assert_eq!(&f.raw()[..HEADER], &[9, 0, 0, 9]);
        let empty = Frame::new(1, b"");
        assert_eq!((empty.first(), empty.payload().len()), (0, 0));
    }
}
