//! MySQL packet framing: 3-byte length + 1-byte sequence id, 16 MiB continuation, and the few
//! payload shapes (OK, ERR, EOF, length-encoded integers) the proxy must read.
//!
//! Hand-rolled rather than `mysql_common`: the proxy forwards packets byte for byte and reads only
//! a handful of header fields (status flags, statement ids, capability bits), often from a single
//! physical packet of a longer logical one. `mysql_common` parses whole logical packets into
//! client-side structures (and brings a large dependency tree into the service); a ~300-line codec
//! that never copies a payload it does not need to touch is smaller and faster here.
//!
//! The reader is cancel-safe: bytes are only ever read into its own buffer, so a `select!` that
//! drops a pending [`PacketReader::fill`] loses nothing.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest payload of one physical packet; a packet this long is continued by the next one.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// Bytes of the packet header.
pub const HEADER: usize = 4;

/// Capability flags the proxy reads or rewrites (`CLIENT_*`).
pub mod caps {
    /// `CLIENT_LONG_PASSWORD` in MySQL, `CLIENT_MYSQL` in MariaDB.
    pub const MYSQL: u32 = 1;
    /// Database name in the handshake response.
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    /// zlib compression of the whole stream (hidden: the proxy does not decompress).
    pub const COMPRESS: u32 = 1 << 5;
    /// `LOAD DATA LOCAL INFILE`.
    pub const LOCAL_FILES: u32 = 1 << 7;
    /// The 4.1 protocol (every supported client).
    pub const PROTOCOL_41: u32 = 1 << 9;
    /// TLS upgrade (hidden unless frontend TLS is configured — not in this version).
    pub const SSL: u32 = 1 << 11;
    /// Length-prefixed auth response.
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    /// Several statements per `COM_QUERY`.
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    /// Several result sets per command.
    pub const MULTI_RESULTS: u32 = 1 << 17;
    /// Multiple results from prepared statements.
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    /// Pluggable authentication.
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    /// Connection attributes in the handshake response.
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    /// Length-encoded auth response.
    pub const PLUGIN_AUTH_LENENC: u32 = 1 << 21;
    /// Session-state tracking in OK packets.
    pub const SESSION_TRACK: u32 = 1 << 23;
    /// OK packets replace EOF packets.
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    /// MySQL 8 optional result-set metadata (hidden).
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    /// MySQL 8 zstd compression (hidden).
    pub const ZSTD: u32 = 1 << 26;
    /// MySQL 8 query attributes (hidden).
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;

    /// Bits the proxy removes from the greeting and from the client's response: features whose
    /// wire format it does not follow.
    pub const HIDDEN: u32 = SSL | COMPRESS | OPTIONAL_RESULTSET_METADATA | ZSTD | QUERY_ATTRIBUTES;
}

/// Server status flags (`SERVER_STATUS_*`).
pub mod status {
    /// A transaction is open.
    pub const IN_TRANS: u16 = 0x0001;
    /// Autocommit is on.
    pub const AUTOCOMMIT: u16 = 0x0002;
    /// Another result set follows.
    pub const MORE_RESULTS: u16 = 0x0008;
    /// A cursor was opened by `COM_STMT_EXECUTE`.
    pub const CURSOR_EXISTS: u16 = 0x0040;
    /// The cursor's last row was sent.
    pub const LAST_ROW_SENT: u16 = 0x0080;
    /// A read-only transaction is open.
    pub const IN_TRANS_READONLY: u16 = 0x2000;
}

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

/// One physical packet, header included.
#[derive(Debug)]
pub struct Frame {
    raw: BytesMut,
}

impl Frame {
    /// A packet carrying `payload` (shorter than [`MAX_PAYLOAD`]) with sequence id `seq`.
    pub fn new(seq: u8, payload: &[u8]) -> Self {
        let n = payload.len().min(MAX_PAYLOAD - 1);
        let mut raw = BytesMut::with_capacity(HEADER + n);
        raw.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
        raw.extend_from_slice(&payload[..n]);
        Self { raw }
    }

    /// Sequence id.
    pub fn seq(&self) -> u8 {
        self.raw[3]
    }

    /// Payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.raw[HEADER..]
    }

    /// Payload bytes, writable (for in-place rewrites of fixed-size fields).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.raw[HEADER..]
    }

    /// Header and payload as sent on the wire.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// True when the payload is exactly [`MAX_PAYLOAD`]: the next packet continues this one.
    pub fn continued(&self) -> bool {
        self.raw.len() - HEADER == MAX_PAYLOAD
    }

    /// First payload byte (0 for an empty payload).
    pub fn first(&self) -> u8 {
        self.payload().first().copied().unwrap_or(0)
    }
}

/// Reads physical packets from a byte stream into a reusable buffer.
pub struct PacketReader<R> {
    inner: R,
    buf: BytesMut,
    max_payload: usize,
}

impl<R: AsyncRead + Unpin> PacketReader<R> {
    /// A reader accepting physical payloads up to [`MAX_PAYLOAD`].
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            buf: BytesMut::with_capacity(16 * 1024),
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
        if self.buf.len() < HEADER {
            return Ok(None);
        }
        let len = usize::from(self.buf[0])
            | usize::from(self.buf[1]) << 8
            | usize::from(self.buf[2]) << 16;
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
            raw: self.buf.split_to(HEADER + len),
        }))
    }

    /// True when bytes of a further packet are buffered.
    pub fn has_buffered(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Reads more bytes into the buffer. Cancel-safe.
    pub async fn fill(&mut self) -> Result<(), PacketError> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = self.inner.read_buf(&mut self.buf).await?;
        if n == 0 {
            if self.buf.is_empty() {
                return Err(PacketError::Closed);
            }
            let want = if self.buf.len() >= 3 {
                HEADER
                    + (usize::from(self.buf[0])
                        | usize::from(self.buf[1]) << 8
                        | usize::from(self.buf[2]) << 16)
            } else {
                HEADER
            };
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
            if out.len() + f.payload().len() > max {
                return Err(PacketError::TooLarge {
                    len: out.len() + f.payload().len(),
                    max,
                });
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
        self.buf.split()
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
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.extend_from_slice(&[n as u8, (n >> 8) as u8, (n >> 16) as u8, seq]);
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return seq;
        }
    }
}

/// Writes `bytes` and clears the buffer.
pub async fn flush<W: AsyncWrite + Unpin>(w: &mut W, bytes: &mut Vec<u8>) -> std::io::Result<()> {
    if !bytes.is_empty() {
        w.write_all(bytes).await?;
        bytes.clear();
    }
    Ok(())
}

/// Reads a length-encoded integer at `*pos`, advancing it.
pub fn get_lenenc(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let (len, v) = match first {
        0..=0xFA => (1, u64::from(first)),
        0xFC => (3, u64::from(u16::from_le_bytes(get_arr(buf, *pos + 1)?))),
        0xFD => {
            let b: [u8; 3] = get_arr(buf, *pos + 1)?;
            (
                4,
                u64::from(b[0]) | u64::from(b[1]) << 8 | u64::from(b[2]) << 16,
            )
        }
        0xFE => (9, u64::from_le_bytes(get_arr(buf, *pos + 1)?)),
        _ => return None,
    };
    *pos += len;
    Some(v)
}

/// Appends a length-encoded integer.
pub fn put_lenenc(out: &mut Vec<u8>, v: u64) {
    match v {
        0..=0xFA => out.push(v as u8),
        0xFB..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(v as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
}

/// A length-encoded string at `*pos` (`None` for the NULL marker 0xFB or a short buffer).
pub fn get_lenenc_str<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    if buf.get(*pos) == Some(&0xFB) {
        *pos += 1;
        return Some(None);
    }
    let n = usize::try_from(get_lenenc(buf, pos)?).ok()?;
    let s = buf.get(*pos..pos.checked_add(n)?)?;
    *pos += n;
    Some(Some(s))
}

/// A NUL-terminated string at `*pos` (the NUL is consumed; a missing NUL takes the rest).
pub fn get_cstr<'a>(buf: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let rest = buf.get(*pos..).unwrap_or(&[]);
    match rest.iter().position(|&b| b == 0) {
        Some(i) => {
            *pos += i + 1;
            &rest[..i]
        }
        None => {
            *pos += rest.len();
            rest
        }
    }
}

/// `N` bytes at `pos` as an array.
pub fn get_arr<const N: usize>(buf: &[u8], pos: usize) -> Option<[u8; N]> {
    buf.get(pos..pos.checked_add(N)?)?.try_into().ok()
}

/// The fields of an OK packet the proxy uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OkInfo {
    /// Server status flags.
    pub status: u16,
}

/// Reads an OK packet (header 0x00, or 0xFE when it ends a result set under
/// `CLIENT_DEPRECATE_EOF`).
pub fn parse_ok(payload: &[u8]) -> Option<OkInfo> {
    let mut pos = 1;
    get_lenenc(payload, &mut pos)?;
    get_lenenc(payload, &mut pos)?;
    let status = u16::from_le_bytes(get_arr(payload, pos)?);
    Some(OkInfo { status })
}

/// Status flags of an EOF packet (0xFE, warnings, status), or of an OK packet standing in for
/// one. `None` when the payload is neither.
pub fn terminator_status(payload: &[u8], deprecate_eof: bool) -> Option<u16> {
    if deprecate_eof {
        parse_ok(payload).map(|ok| ok.status)
    } else {
        Some(u16::from_le_bytes(get_arr(payload, 3)?))
    }
}

/// True for an EOF-or-OK packet ending rows: header 0xFE and shorter than a 16 MiB row could be.
pub fn is_terminator(payload: &[u8], deprecate_eof: bool) -> bool {
    payload.first() == Some(&0xFE)
        && if deprecate_eof {
            payload.len() < MAX_PAYLOAD
        } else {
            payload.len() < 9
        }
}

/// An ERR packet's code, SQL state and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrInfo {
    /// Error number.
    pub code: u16,
    /// SQLSTATE (five characters).
    pub state: String,
    /// Message text.
    pub message: String,
}

impl std::fmt::Display for ErrInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ERROR {} ({}): {}", self.code, self.state, self.message)
    }
}

/// Reads an ERR packet (header 0xFF).
pub fn parse_err(payload: &[u8]) -> ErrInfo {
    let code = get_arr::<2>(payload, 1).map_or(0, u16::from_le_bytes);
    let (state, msg) = if payload.get(3) == Some(&b'#') && payload.len() >= 9 {
        (&payload[4..9], &payload[9..])
    } else {
        (&b"HY000"[..], payload.get(3..).unwrap_or(&[]))
    };
    ErrInfo {
        code,
        state: String::from_utf8_lossy(state).into_owned(),
        message: String::from_utf8_lossy(msg).into_owned(),
    }
}

/// An ERR packet payload.
pub fn err_payload(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(9 + message.len());
    p.push(0xFF);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(b'#');
    let mut st = [b'H', b'Y', b'0', b'0', b'0'];
    for (d, s) in st.iter_mut().zip(state.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&st);
    p.extend_from_slice(message.as_bytes());
    p
}

/// Drops `n` bytes from the front of a buffer (used by tests and raw relaying).
pub fn advance(buf: &mut BytesMut, n: usize) {
    buf.advance(n.min(buf.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_packet_split_across_reads_is_reassembled() {
        let mut wire = Vec::new();
        put_packet(&mut wire, 3, b"hello");
        let (a, b) = wire.split_at(6);
        let mut data = a.to_vec();
        data.extend_from_slice(b);
        let mut r = PacketReader::new(&data[..]);
        let f = r.frame().await.unwrap();
        assert_eq!(f.seq(), 3);
        assert_eq!(f.payload(), b"hello");
        assert!(matches!(r.frame().await, Err(PacketError::Closed)));
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

    #[test]
    fn lenenc_round_trips() {
        for v in [0, 250, 251, 65535, 65536, 0xFF_FFFF, 0x100_0000, u64::MAX] {
            let mut b = Vec::new();
            put_lenenc(&mut b, v);
            let mut pos = 0;
            assert_eq!(get_lenenc(&b, &mut pos), Some(v));
            assert_eq!(pos, b.len());
        }
    }

    #[test]
    fn ok_eof_and_err_are_read() {
        let ok = [0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00];
        assert_eq!(parse_ok(&ok), Some(OkInfo { status: 3 }));
        let eof = [0xFE, 0, 0, 0x08, 0];
        assert!(is_terminator(&eof, false));
        assert_eq!(terminator_status(&eof, false), Some(status::MORE_RESULTS));
        let err = err_payload(1045, "28000", "Access denied");
        let e = parse_err(&err);
        assert_eq!((e.code, e.state.as_str()), (1045, "28000"));
        assert_eq!(e.message, "Access denied");
    }
}
