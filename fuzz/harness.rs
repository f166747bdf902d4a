//! What each fuzz target does with one input: shared, word for word, by the cargo-fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, nightly) and by the corpus replay test (`tests/fuzz_corpora.rs`,
//! stable), so a corpus file that passes in `cargo test` passes the very code the fuzzer ran.
//!
//! Each target feeds peer-controlled bytes to the code that reads them in production and checks
//! what the code must guarantee beyond "no panic" (bytes neither lost nor invented by the packet
//! reader, parsers idempotent on their own output, the tracker's idle flag agreeing with its
//! answers). Included with `#[path]` rather than a crate so the replay test needs no nightly-only
//! dependency.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// What a target does with one input.
pub type Run = fn(&[u8]);

/// The targets, by the names of their fuzz binaries and corpus directories.
pub const TARGETS: &[(&str, Run)] = &[
    ("packet_reader", packet_reader::run),
    ("tracker", tracker::run),
    ("scan", scan::run),
    ("handshake", handshake::run),
    ("etcd_decode", etcd_decode::run),
    ("proxy_header", proxy_header::run),
];

/// Polls `fut` until it is ready; with `cancel`, gives up at the first `Pending`.
fn drive<F: Future>(fut: F, cancel: bool) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return Some(out),
            Poll::Pending if cancel => return None,
            Poll::Pending => {}
        }
    }
}

/// Bytes taken one by one from the front of an input; exhausted reads give zeros.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn byte_or_zero(&mut self) -> u8 {
        self.byte().unwrap_or(0)
    }

    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let (a, b) = self.0.split_at(n.min(self.0.len()));
        self.0 = b;
        a
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Target 1: the packet reader (framing, 16 MiB continuation, sequence checks, cancel safety),
/// reading from an in-memory stream whose reads end and stall where the input says.
pub mod packet_reader {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use switchyard::wire::{PacketError, PacketReader, HEADER, MAX_PAYLOAD};
    use tokio::io::{AsyncRead, ReadBuf};

    use super::{drive, Input};

    /// Full 16 MiB packets one input may ask for (each costs 16 MiB of copying): two reach a
    /// continued packet and a logical packet of an exact multiple of 16 MiB.
    const MAX_FULL_PACKETS: usize = 2;

    /// Reader calls one input may make.
    const MAX_CALLS: usize = 4096;

    /// Bytes of a long run copied per read.
    const FILL_CHUNK: usize = 64 * 1024;

    /// The proxy's default limit on one logical packet (`mysql.max_packet`).
    const PROXY_MAX_PACKET: usize = 1 << 30;

    /// One stretch of the stream.
    enum Seg {
        /// Bytes as given.
        Bytes(Vec<u8>),
        /// `len` bytes repeating `chunk` (`FILL_CHUNK` copies of one byte): the payload of a
        /// 16 MiB packet, copied from one chunk made once rather than built per read.
        Fill(Vec<u8>, usize),
        /// A read ends here; with `pending`, the next read first answers `Pending`.
        Break { pending: bool },
    }

    impl Seg {
        fn len(&self) -> usize {
            match self {
                Seg::Bytes(b) => b.len(),
                Seg::Fill(_, n) => *n,
                Seg::Break { .. } => 0,
            }
        }
    }

    /// An `AsyncRead` over the segments: at most `max_read` bytes per read, never across a
    /// break, `Pending` once at each pending break, then end of stream.
    struct Stream {
        segs: Vec<Seg>,
        seg: usize,
        off: usize,
        max_read: usize,
        /// Breaks passed that asked for `Pending`, and `Pending`s answered: equal at the end.
        pendings_due: usize,
        pendings_given: usize,
    }

    impl Stream {
        fn total(&self) -> usize {
            self.segs.iter().map(Seg::len).sum()
        }

        /// True when the stream holds `bytes` at byte offset `at`.
        fn holds_at(&self, at: usize, bytes: &[u8]) -> bool {
            let mut start = 0;
            let mut rest = bytes;
            let mut at = at;
            for s in &self.segs {
                let len = s.len();
                if rest.is_empty() {
                    break;
                }
                if at >= start + len {
                    start += len;
                    continue;
                }
                let from = at - start;
                let n = (len - from).min(rest.len());
                let (want, more) = rest.split_at(n);
                let same = match s {
                    Seg::Bytes(b) => b.get(from..from + n) == Some(want),
                    // chunk by chunk: one memcmp each, not one instrumented compare per byte
                    Seg::Fill(chunk, _) => want.chunks(FILL_CHUNK).all(|w| w == &chunk[..w.len()]),
                    Seg::Break { .. } => true,
                };
                if !same {
                    return false;
                }
                rest = more;
                at += n;
                start += len;
            }
            rest.is_empty()
        }
    }

    impl AsyncRead for Stream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let mut room = buf.remaining().min(self.max_read);
            let mut copied = 0;
            while room > 0 {
                let (seg, off) = (self.seg, self.off);
                let Some(s) = self.segs.get(seg) else { break };
                match s {
                    Seg::Break { pending } => {
                        if copied > 0 {
                            break;
                        }
                        let pending = *pending;
                        self.seg += 1;
                        if pending {
                            self.pendings_given += 1;
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                    Seg::Bytes(b) => {
                        let n = (b.len() - off).min(room);
                        buf.put_slice(&b[off..off + n]);
                        self.advance(n);
                        room -= n;
                        copied += n;
                    }
                    Seg::Fill(chunk, len) => {
                        // long runs go in big reads whatever `max_read` says: a 16 MiB payload
                        // read a few bytes at a time would take the fuzzer seconds per input
                        let n = (len - off).min(buf.remaining()).min(FILL_CHUNK);
                        buf.put_slice(&chunk[..n]);
                        self.advance(n);
                        room = room.saturating_sub(n);
                        copied += n;
                    }
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl Stream {
        fn advance(&mut self, n: usize) {
            self.off += n;
            if self.off == self.segs[self.seg].len() {
                self.seg += 1;
                self.off = 0;
            }
        }
    }

    /// How the input drives the reader.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Mode {
        /// `frame()` until an error; a `Pending` read drops the call and starts a new one.
        Frames { cancel: bool },
        /// `frame_seq()` with the ids a single exchange uses.
        Sequence,
        /// `logical()` packets, each starting after the last one's id.
        Logical,
        /// Some frames, then `take_buffered()` (the switch to raw relaying), then frames again.
        TakeBuffered,
    }

    /// Parses the input: `[flags][max_read][max_payload][seq/limit]`, then segments.
    fn setup(data: &[u8]) -> (Mode, Stream, Option<usize>, u8, usize) {
        let mut inp = Input(data);
        let flags = inp.byte_or_zero();
        let mode = match flags & 3 {
            0 => Mode::Frames {
                cancel: flags & 4 != 0,
            },
            1 => Mode::Sequence,
            2 => Mode::Logical,
            _ => Mode::TakeBuffered,
        };
        let max_read = match inp.byte_or_zero() {
            0 => usize::MAX,
            n => usize::from(n),
        };
        let max_payload = match (flags >> 4) & 3 {
            0 => None,
            1 => Some(usize::from(inp.byte_or_zero()) * 16),
            2 => Some(usize::MAX),
            _ => Some(0),
        };
        let param = inp.byte_or_zero();
        let mut segs = Vec::new();
        let mut fulls = 0;
        while let Some(tag) = inp.byte() {
            match tag % 4 {
                0 => {
                    let n = inp.byte_or_zero();
                    segs.push(Seg::Bytes(inp.take(usize::from(n)).to_vec()));
                }
                1 => {
                    let seq = inp.byte_or_zero();
                    let n = inp.byte_or_zero();
                    let payload = inp.take(usize::from(n));
                    let mut b = vec![payload.len() as u8, 0, 0, seq];
                    b.extend_from_slice(payload);
                    segs.push(Seg::Bytes(b));
                }
                2 => {
                    let seq = inp.byte_or_zero();
                    let fill = inp.byte_or_zero();
                    if fulls < MAX_FULL_PACKETS {
                        fulls += 1;
                        segs.push(Seg::Bytes(vec![0xFF, 0xFF, 0xFF, seq]));
                        segs.push(Seg::Fill(vec![fill; FILL_CHUNK], MAX_PAYLOAD));
                    }
                }
                _ => segs.push(Seg::Break {
                    pending: tag & 4 != 0,
                }),
            }
        }
        let pendings_due = segs
            .iter()
            .filter(|s| matches!(s, Seg::Break { pending: true }))
            .count();
        let stream = Stream {
            segs,
            seg: 0,
            off: 0,
            max_read,
            pendings_due,
            pendings_given: 0,
        };
        (mode, stream, max_payload, param, fulls)
    }

    /// Runs one input.
    pub fn run(data: &[u8]) {
        let (mode, stream, max_payload, param, _fulls) = setup(data);
        let total = stream.total();
        let mut r = PacketReader::new(stream);
        let limit = match max_payload {
            Some(m) => {
                r.set_max_payload(m);
                m.min(MAX_PAYLOAD)
            }
            None => MAX_PAYLOAD,
        };
        // bytes of the stream handed out so far, as frames or as taken-over buffer
        let mut at = 0;
        let mut seq = param;
        let logical_max = match param {
            0x80.. => PROXY_MAX_PACKET,
            n => usize::from(n) * 64,
        };
        let mut frames = 0usize;
        let mut calls = 0;
        let end = loop {
            calls += 1;
            if calls > MAX_CALLS {
                // a 16 MiB run of zeros is four million empty packets: enough of them
                return;
            }
            let res = match mode {
                Mode::Frames { cancel } => match drive(r.frame(), cancel) {
                    Some(res) => res,
                    None => continue,
                },
                Mode::Sequence => drive(r.frame_seq(seq), false).expect("not cancelled"),
                Mode::TakeBuffered if frames == usize::from(param % 4) + 1 => {
                    let taken = r.take_buffered();
                    assert!(
                        r.get_mut().holds_at(at, &taken),
                        "take_buffered returned bytes the stream did not send at {at}"
                    );
                    at += taken.len();
                    frames += 1;
                    continue;
                }
                Mode::TakeBuffered => drive(r.frame(), false).expect("not cancelled"),
                Mode::Logical => {
                    match drive(r.logical(seq, logical_max), false).expect("not cancelled") {
                        Ok((last, payload)) => {
                            let parts = usize::from(last.wrapping_sub(seq)) + 1;
                            assert!(
                                payload.len() <= logical_max,
                                "logical packet over its limit"
                            );
                            assert!(
                                payload.len() >= (parts - 1) * MAX_PAYLOAD
                                    && payload.len() < parts * MAX_PAYLOAD,
                                "{} payload bytes from {parts} packets",
                                payload.len()
                            );
                            at += payload.len() + parts * HEADER;
                            seq = last.wrapping_add(1);
                            continue;
                        }
                        Err(e) => break e,
                    }
                }
            };
            match res {
                Ok(f) => {
                    assert!(
                        r.get_mut().holds_at(at, f.raw()),
                        "frame {frames} is not the bytes the stream sent at {at}"
                    );
                    at += f.raw().len();
                    frames += 1;
                    let len = f.payload().len();
                    assert!(
                        len <= limit,
                        "payload of {len} bytes over the limit {limit}"
                    );
                    assert_eq!(f.continued(), len == MAX_PAYLOAD);
                    if mode == Mode::Sequence {
                        assert_eq!(f.seq(), seq);
                        seq = seq.wrapping_add(1);
                    }
                }
                Err(e) => break e,
            }
        };
        let stream = r.get_mut();
        let (pendings_given, pendings_due) = (stream.pendings_given, stream.pendings_due);
        match end {
            PacketError::Closed => {
                // (`logical` also says `Closed` when the stream ends after a continued packet)
                if mode != Mode::Logical {
                    assert_eq!(at, total, "closed with bytes left unread");
                }
                assert_eq!(pendings_given, pendings_due, "a stalled read was skipped");
            }
            PacketError::Truncated { got, want } => {
                assert!(got < want, "truncated {got} of {want}");
                assert_eq!(pendings_given, pendings_due, "a stalled read was skipped");
                if mode != Mode::Logical {
                    assert_eq!(at + got, total, "truncation not at the end of the stream");
                }
            }
            PacketError::TooLarge { len, max } => assert!(len > max),
            PacketError::Sequence { got, want } => {
                assert_ne!(got, want);
                assert_ne!(mode, Mode::Frames { cancel: false });
            }
            e @ (PacketError::Malformed(_) | PacketError::Io(_)) => {
                panic!("the reader invented an error: {e}")
            }
        }
    }
}

/// Target 2: the response tracker, fed a server's (and, for `LOCAL INFILE` and auth exchanges,
/// a client's) packets after a command chosen by the input.
pub mod tracker {
    use switchyard::wire::{caps, put_packet, Frame, PacketReader, HEADER, MAX_PAYLOAD};
    use switchyard_server::mysql::tracker::{Kind, Next, Tracker};

    use super::{drive, Input};

    /// 16 MiB packets one input may ask for.
    const MAX_FULL_PACKETS: usize = 2;

    thread_local! {
        /// The wire bytes of a 16 MiB packet, made once and patched per use.
        static FULL_WIRE: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new({
            let mut wire = Vec::with_capacity(MAX_PAYLOAD + 8);
            put_packet(&mut wire, 0, &vec![b'x'; MAX_PAYLOAD]);
            wire
        });
    }

    /// A packet of exactly `MAX_PAYLOAD` bytes (one that the next continues), starting `first`.
    fn full_frame(seq: u8, first: u8) -> Frame {
        FULL_WIRE.with_borrow_mut(|wire| {
            // the header is 3 length bytes and the sequence id; the payload follows
            wire[HEADER - 1] = seq;
            wire[HEADER] = first;
            let mut r = PacketReader::new(&wire[..]);
            drive(r.frame(), false)
                .and_then(Result::ok)
                .expect("a whole packet in memory reads as a frame")
        })
    }

    /// Runs one input: `[caps][command]`, then packets `[how][len][payload]`; after a complete
    /// response, the next byte is another command byte. `how`: bit 0 picks the client when
    /// either side may speak, bits 2-3 both set send a wrong sequence id, a high nibble of `F`
    /// sends a 16 MiB packet whose first byte is the next input byte (instead of `[len][payload]`).
    pub fn run(data: &[u8]) {
        let mut inp = Input(data);
        let flags = inp.byte_or_zero();
        let mut negotiated = caps::PROTOCOL_41;
        if flags & 1 != 0 {
            negotiated |= caps::DEPRECATE_EOF;
        }
        let mut t = Tracker::new(negotiated);
        let mut fulls = 0;
        'commands: while let Some(code) = inp.byte() {
            let Some(kind) = Kind::of(code) else {
                continue;
            };
            let last_seq = (flags >> 4) & 3;
            let mut next = t.start(kind, last_seq);
            assert_eq!(next == Next::Done, t.idle());
            while next != Next::Done {
                let Some(how) = inp.byte() else {
                    break 'commands;
                };
                let from_client = match next {
                    Next::Client => true,
                    Next::Either => how & 1 != 0,
                    _ => false,
                };
                // rare on purpose: a wrong id ends the input, a 16 MiB packet costs milliseconds
                let wrong_seq = how & 0x0C == 0x0C;
                let seq = t.next_seq().wrapping_add(u8::from(wrong_seq));
                let f = if how & 0xF0 == 0xF0 && fulls < MAX_FULL_PACKETS {
                    fulls += 1;
                    full_frame(seq, inp.byte_or_zero())
                } else {
                    let n = inp.byte_or_zero();
                    Frame::new(seq, inp.take(usize::from(n)))
                };
                if t.check_seq(&f).is_err() {
                    assert!(wrong_seq, "check_seq refused the id it asked for");
                    return;
                }
                assert!(!wrong_seq, "check_seq took an id it did not ask for");
                next = if from_client {
                    t.on_client(&f)
                } else {
                    match t.on_server(&f) {
                        Ok(n) => n,
                        // the proxy closes the session on a response it cannot follow
                        Err(_) => return,
                    }
                };
                assert_eq!(
                    next == Next::Done,
                    t.idle(),
                    "Next::Done and idle() disagree"
                );
            }
        }
    }
}

/// Target 3: the statement scan, on arbitrary bytes as `COM_QUERY` text, and the session
/// bookkeeping that applies its effects once the response is known.
pub mod scan {
    use switchyard_server::mysql::session::{analyze, Outcome, Session};

    /// Runs one input.
    pub fn run(sql: &[u8]) {
        let mut s = Session::new();
        let pending = s.before_query(sql);
        let statements = u32::try_from(pending_len(sql)).unwrap_or(u32::MAX);
        s.after_query(
            pending,
            Outcome {
                error: false,
                results: statements,
            },
        );
        let _ = s.blocker();
        // the same text failing at each of its first statements (a multi-statement query runs
        // those before the failing one), and with a server that ran fewer than the scan found
        for results in [0, 1, statements / 2] {
            s.after_query(
                analyze(sql),
                Outcome {
                    error: true,
                    results,
                },
            );
            let _ = s.blocker();
        }
        s.after_query(
            analyze(sql),
            Outcome {
                error: false,
                results: 0,
            },
        );
        let _ = s.blocker();
        // and as the text of a prepared statement
        s.add_stmt(1, sql.to_vec(), 0, 0);
    }

    /// How many statements the scan found in `sql`.
    fn pending_len(sql: &[u8]) -> usize {
        analyze(sql).statements()
    }
}

/// Target 4: the login parsers: the server's greeting (and its sanitizing), the client's
/// handshake response (parse and sanitize in place) and an auth-switch request, all on the same
/// bytes.
pub mod handshake {
    use switchyard::wire::{
        caps, parse_auth_switch, server_version, Greeting, NativeSecret, Response, NATIVE_PASSWORD,
    };

    /// Runs one input.
    pub fn run(data: &[u8]) {
        greeting(data);
        response(data);
        let _ = parse_auth_switch(data);
    }

    /// Where a v10 greeting's lower capability bytes are, found without the parser: after the
    /// protocol byte, the NUL-terminated version, the connection id, the first 8 salt bytes
    /// and a filler byte.
    fn caps_lo_at(data: &[u8]) -> Option<usize> {
        let nul = data.get(1..)?.iter().position(|&b| b == 0)?;
        Some(1 + nul + 1 + 4 + 8 + 1)
    }

    /// A greeting parses with its fields where the protocol puts them, parses the same once
    /// sanitized (only the hidden bits gone), and reads back from its own `build`.
    fn greeting(data: &[u8]) {
        let version = server_version(data);
        let Ok(g) = Greeting::parse(data) else {
            return;
        };
        assert!(version.is_ok(), "a greeting parses but has no version");
        let at = caps_lo_at(data).expect("a parsed greeting has a NUL-terminated version");
        let lo = data
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]));
        assert_eq!(
            lo,
            Some(g.caps as u16),
            "capabilities read from the wrong offset (version {:?})",
            version.ok().map(String::from_utf8_lossy)
        );
        // the salt: 8 bytes before the filler, and (CLIENT_SECURE_CONNECTION) the rest after
        // caps, charset, status, upper caps, auth-data length and 10 reserved bytes
        assert_eq!(
            g.salt.get(..8),
            data.get(at - 9..at - 1),
            "salt part 1 misread"
        );
        if g.caps & caps::SECURE_CONNECTION != 0 {
            let part2 = &g.salt[8..];
            let from = at + 2 + 1 + 2 + 2 + 1 + 10;
            assert_eq!(
                Some(part2),
                data.get(from..from + part2.len()),
                "salt part 2 read from the wrong offset"
            );
        }
        let mut p = data.to_vec();
        g.sanitize(&mut p);
        let again = Greeting::parse(&p).expect("a sanitized greeting still parses");
        assert_eq!(again.caps, g.caps & !caps::HIDDEN);
        assert_eq!(
            (&again.salt, &again.plugin, &again.version),
            (&g.salt, &g.plugin, &g.version)
        );
        let mut twice = p.clone();
        again.sanitize(&mut twice);
        assert_eq!(twice, p, "sanitizing is idempotent");
        let built = Greeting::parse(&g.build()).expect("a built greeting parses");
        assert_eq!(
            (
                &built.version,
                built.connection_id,
                built.caps,
                built.charset,
                built.status
            ),
            (&g.version, g.connection_id, g.caps, g.charset, g.status),
            "a greeting reads back from its own build"
        );
        if g.caps & caps::PLUGIN_AUTH != 0 {
            assert_eq!((&built.salt, &built.plugin), (&g.salt, &g.plugin));
        }
    }

    /// A response parses, sanitizing is idempotent, and the proxy's own login built from it
    /// reads back as the same user.
    fn response(data: &[u8]) {
        let mut p = data.to_vec();
        let Ok(r) = Response::parse_and_sanitize(&mut p) else {
            return;
        };
        assert_eq!(r.caps & caps::HIDDEN, 0, "hidden capabilities left in");
        let mut q = p.clone();
        let again = Response::parse_and_sanitize(&mut q).expect("a sanitized response parses");
        assert_eq!(q, p, "sanitizing is idempotent");
        assert_eq!(
            (again.caps, again.max_packet, again.charset, &again.user),
            (r.caps, r.max_packet, r.charset, &r.user)
        );
        assert_eq!((&again.auth, &again.plugin), (&r.auth, &r.plugin));
        let secret = NativeSecret::from_password("fuzz");
        let salt = [7u8; 20];
        let mut built = r.build_native(u32::MAX, &secret, &salt);
        let login = Response::parse_and_sanitize(&mut built).expect("the proxy's login parses");
        assert_eq!(
            (
                login.max_packet,
                login.charset,
                &login.user,
                login.plugin.as_str()
            ),
            (r.max_packet, r.charset, &r.user, NATIVE_PASSWORD)
        );
        assert_eq!(login.auth, secret.scramble(&salt));
        let mut rebuilt = r.build();
        let back = Response::parse_and_sanitize(&mut rebuilt).expect("a built response parses");
        let cleared = caps::CONNECT_WITH_DB | caps::CONNECT_ATTRS;
        assert_eq!(
            (back.caps, back.max_packet, back.charset, &back.user),
            (r.caps & !cleared, r.max_packet, r.charset, &r.user),
            "a response reads back from its own build"
        );
        assert_eq!((&back.auth, &back.plugin), (&r.auth, &r.plugin));
    }
}

/// Target 5: etcd's JSON: a range response body (as the discovery poll decodes it) and a TiDB
/// `info` value on its own.
pub mod etcd_decode {
    /// Runs one input as a whole range response and as one `info` value.
    pub fn run(data: &[u8]) {
        if let Ok(backends) = switchyard::fuzz_decode_range(data) {
            for addr in backends.keys() {
                let port = addr.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
                assert!(
                    matches!(port, Some(Ok(_))),
                    "backend {addr:?} is not host:port"
                );
            }
        }
        let _ = switchyard::fuzz_parse_info(data);
    }
}

/// Target 6: a PROXY protocol v2 header, as the door reads it from a trusted balancer.
pub mod proxy_header {
    use switchyard_server::proxy_protocol::{encode, header_len, parse, read, FIXED_LEN};

    /// Parses one input as a header, and reads it from a stream.
    pub fn run(data: &[u8]) {
        if let Ok(h) = parse(data) {
            assert!(
                (FIXED_LEN..=data.len()).contains(&h.len),
                "length {} out of bounds",
                h.len
            );
            assert_eq!(header_len(data), Ok(h.len), "the length agrees");
            if let Some((src, dst)) = h.addrs {
                let again = parse(&encode(src, dst)).expect("the proxy's own header parses");
                assert_eq!(
                    again.addrs,
                    Some((src, dst)),
                    "addresses survive a round trip"
                );
            }
        }
        // from a stream: exactly the header's bytes are taken, and the verdict is the parser's
        let mut rest = data;
        if let Some(r) = super::drive(read(&mut rest), false) {
            match (r, parse(data)) {
                (Ok(h), Ok(p)) => {
                    assert_eq!(h, p);
                    assert_eq!(data.len() - rest.len(), h.len, "read past the header");
                }
                (Ok(h), Err(e)) => panic!("read {h:?} where parse says {e}"),
                (Err(_), _) => {}
            }
        }
    }
}
