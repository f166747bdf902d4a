//! The PROXY protocol, version 2 (binary): reading the header a load balancer puts before a
//! client's bytes, and writing one before the proxy's own bytes to a backend.
//!
//! The parser is pure and strict (signature, version, command, family and lengths all checked,
//! every read guarded), so it can be fuzzed alone (`fuzz/fuzz_targets/proxy_header.rs`); the
//! socket side reads exactly the header's bytes, so nothing of the client's own stream is
//! consumed. Only peers in `proxy.proxy_protocol_from` are believed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Signature, version/command, family/transport and the 2-byte length.
pub const FIXED_LEN: usize = 16;
/// Version 2 in the high nibble of byte 13.
const VERSION_2: u8 = 0x20;
/// Command `LOCAL`: the balancer's own connection (a health check); addresses are ignored.
const CMD_LOCAL: u8 = 0x0;
/// Command `PROXY`: a relayed connection; the addresses are the client's.
const CMD_PROXY: u8 = 0x1;
/// Address family `AF_UNSPEC` (high nibble of byte 14).
const AF_UNSPEC: u8 = 0x0;
/// Address family `AF_INET`.
const AF_INET: u8 = 0x1;
/// Address family `AF_INET6`.
const AF_INET6: u8 = 0x2;
/// Transport `STREAM` (TCP) in the low nibble of byte 14.
const STREAM: u8 = 0x1;
/// Source and destination IPv4 addresses and ports.
const INET_LEN: usize = 4 + 4 + 2 + 2;
/// Source and destination IPv6 addresses and ports.
const INET6_LEN: usize = 16 + 16 + 2 + 2;

/// Why bytes are not an acceptable PROXY v2 header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The stream ended (or the input is shorter than the header says).
    #[error("header truncated: {got} of {want} bytes")]
    Truncated {
        /// Bytes there.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// The first 12 bytes are not the v2 signature (no header, or the text v1 format).
    #[error("no PROXY v2 signature")]
    NoSignature,
    /// The version nibble is not 2.
    #[error("PROXY protocol version {0} (only 2 is accepted)")]
    Version(u8),
    /// The command nibble is neither LOCAL nor PROXY.
    #[error("unknown PROXY command {0:#x}")]
    Command(u8),
    /// A relayed connection over something other than TCP over IPv4/IPv6.
    #[error("unsupported address family/transport {0:#04x} (only TCP over IPv4 or IPv6)")]
    Family(u8),
    /// The length is too short for the addresses the family needs.
    #[error("address block of {got} bytes, {want} needed")]
    ShortAddresses {
        /// Bytes the header gives.
        got: usize,
        /// Bytes the family needs.
        want: usize,
    },
}

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The client and the address it connected to, for `PROXY`; `None` for `LOCAL` (the
    /// balancer speaking for itself) and for an unspecified family.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// Bytes the header takes, TLVs included.
    pub len: usize,
}

/// Bytes the whole header takes, from its first [`FIXED_LEN`] bytes (checked as far as they go).
pub fn header_len(fixed: &[u8]) -> Result<usize, HeaderError> {
    let sig = fixed.get(..SIGNATURE.len()).ok_or(HeaderError::Truncated {
        got: fixed.len(),
        want: FIXED_LEN,
    })?;
    if sig != SIGNATURE {
        return Err(HeaderError::NoSignature);
    }
    let (Some(&ver_cmd), Some(&fam), Some(&hi), Some(&lo)) =
        (fixed.get(12), fixed.get(13), fixed.get(14), fixed.get(15))
    else {
        return Err(HeaderError::Truncated {
            got: fixed.len(),
            want: FIXED_LEN,
        });
    };
    if ver_cmd & 0xF0 != VERSION_2 {
        return Err(HeaderError::Version(ver_cmd >> 4));
    }
    let cmd = ver_cmd & 0x0F;
    if cmd != CMD_LOCAL && cmd != CMD_PROXY {
        return Err(HeaderError::Command(cmd));
    }
    let rest = usize::from(u16::from_be_bytes([hi, lo]));
    if cmd == CMD_PROXY {
        let want = match fam >> 4 {
            AF_UNSPEC => 0,
            AF_INET if fam & 0x0F == STREAM => INET_LEN,
            AF_INET6 if fam & 0x0F == STREAM => INET6_LEN,
            _ => return Err(HeaderError::Family(fam)),
        };
        if rest < want {
            return Err(HeaderError::ShortAddresses { got: rest, want });
        }
    }
    Ok(FIXED_LEN + rest)
}

/// Parses the header at the start of `buf` (bytes after it are not looked at).
pub fn parse(buf: &[u8]) -> Result<Header, HeaderError> {
    let len = header_len(buf)?;
    let body = buf.get(FIXED_LEN..len).ok_or(HeaderError::Truncated {
        got: buf.len(),
        want: len,
    })?;
    let (Some(&ver_cmd), Some(&fam)) = (buf.get(12), buf.get(13)) else {
        return Err(HeaderError::Truncated {
            got: buf.len(),
            want: FIXED_LEN,
        });
    };
    if ver_cmd & 0x0F == CMD_LOCAL {
        return Ok(Header { addrs: None, len });
    }
    let addrs = match fam >> 4 {
        AF_INET => {
            let ip = |at: usize| -> Option<IpAddr> {
                let b: [u8; 4] = body.get(at..at + 4)?.try_into().ok()?;
                Some(IpAddr::V4(Ipv4Addr::from(b)))
            };
            addresses(body, ip(0), ip(4), 8)
        }
        AF_INET6 => {
            let ip = |at: usize| -> Option<IpAddr> {
                let b: [u8; 16] = body.get(at..at + 16)?.try_into().ok()?;
                Some(IpAddr::V6(Ipv6Addr::from(b)))
            };
            addresses(body, ip(0), ip(16), 32)
        }
        _ => None,
    };
    Ok(Header { addrs, len })
}

/// Source and destination, with the two ports at `ports` in `body`.
fn addresses(
    body: &[u8],
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    ports: usize,
) -> Option<(SocketAddr, SocketAddr)> {
    let port = |at: usize| -> Option<u16> {
        let b: [u8; 2] = body.get(at..at + 2)?.try_into().ok()?;
        Some(u16::from_be_bytes(b))
    };
    Some((
        SocketAddr::new(src?, port(ports)?),
        SocketAddr::new(dst?, port(ports + 2)?),
    ))
}

/// Reads one header from `r`: exactly its bytes, nothing after it.
pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, ReadError> {
    let mut buf = vec![0u8; FIXED_LEN];
    r.read_exact(&mut buf).await.map_err(ReadError::Io)?;
    let len = header_len(&buf)?;
    buf.resize(len, 0);
    if let Some(rest) = buf.get_mut(FIXED_LEN..) {
        r.read_exact(rest).await.map_err(ReadError::Io)?;
    }
    Ok(parse(&buf)?)
}

/// Why no header could be read from a socket.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed or closed first.
    #[error("reading the PROXY header: {0}")]
    Io(#[source] std::io::Error),
    /// The bytes were no acceptable header.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

/// A `PROXY` header saying the connection comes from `src` and was made to `dst` (mixed
/// families are both written as IPv6, the IPv4 one mapped).
pub fn encode(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + INET6_LEN);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_2 | CMD_PROXY);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(AF_INET << 4 | STREAM);
            out.extend_from_slice(&(INET_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(AF_INET6 << 4 | STREAM);
            out.extend_from_slice(&(INET6_LEN as u16).to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

/// The networks whose PROXY headers are believed (`proxy.proxy_protocol_from`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trusted(Vec<IpNet>);

impl Trusted {
    /// Parses CIDRs (`10.0.0.0/8`, `::1/128`) or bare addresses (one host each).
    pub fn parse<S: AsRef<str>>(cidrs: &[S]) -> Result<Self, (usize, String)> {
        let mut nets = Vec::with_capacity(cidrs.len());
        for (i, c) in cidrs.iter().enumerate() {
            let c = c.as_ref().trim();
            let net = c
                .parse::<IpNet>()
                .or_else(|_| c.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| (i, format!("{c:?} is not a CIDR (e.g. 10.0.0.0/8)")))?;
            nets.push(net);
        }
        Ok(Self(nets))
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 one) is in a trusted network.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_encoded_header_parses_back_to_its_addresses() {
        for (src, dst) in [
            ("127.0.0.2:51000", "127.0.0.1:6000"),
            ("[2001:db8::7]:4000", "[::1]:6000"),
            ("10.1.2.3:5", "[::1]:6000"),
        ] {
            let h = encode(addr(src), addr(dst));
            let mut with_data = h.clone();
            with_data.extend_from_slice(b"client bytes");
            let p = parse(&with_data).expect("valid");
            assert_eq!(p.len, h.len());
            let (s, d) = p.addrs.expect("addresses");
            let norm = |a: SocketAddr| match a.ip() {
                IpAddr::V6(v6) => v6
                    .to_ipv4_mapped()
                    .map_or(a, |v4| SocketAddr::new(v4.into(), a.port())),
                _ => a,
            };
            assert_eq!((norm(s), norm(d)), (addr(src), addr(dst)));
        }
    }

    #[test]
    fn a_local_header_carries_no_addresses_and_tlvs_are_skipped() {
        let mut h = SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20, 0x00, 0x00, 0x03, 0x04, 0x00, 0x00]);
        let p = parse(&h).expect("LOCAL");
        assert_eq!((p.addrs, p.len), (None, 19));
        let mut tlv = encode(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        tlv[15] += 3; // three more bytes of TLV after the addresses
        tlv.extend_from_slice(&[0x04, 0x00, 0x00]);
        let p = parse(&tlv).expect("with a TLV");
        assert_eq!(p.len, tlv.len());
        assert_eq!(p.addrs.unwrap().0, addr("1.2.3.4:1"));
    }

    #[test]
    fn malformed_headers_are_typed_errors() {
        assert_eq!(
            parse(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n"),
            Err(HeaderError::NoSignature)
        );
        assert!(matches!(
            parse(&SIGNATURE[..5]),
            Err(HeaderError::Truncated { .. })
        ));
        let good = encode(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        let mut v1 = good.clone();
        v1[12] = 0x11;
        assert_eq!(parse(&v1), Err(HeaderError::Version(1)));
        let mut cmd = good.clone();
        cmd[12] = 0x2F;
        assert_eq!(parse(&cmd), Err(HeaderError::Command(0xF)));
        let mut udp = good.clone();
        udp[13] = 0x12;
        assert_eq!(parse(&udp), Err(HeaderError::Family(0x12)));
        let mut short = good.clone();
        short[15] = 4;
        assert!(matches!(
            parse(&short),
            Err(HeaderError::ShortAddresses { got: 4, want: 12 })
        ));
        assert!(matches!(
            parse(&good[..20]),
            Err(HeaderError::Truncated { .. })
        ));
    }

    #[tokio::test]
    async fn reading_takes_exactly_the_header() {
        let mut bytes = encode(addr("1.2.3.4:1"), addr("5.6.7.8:2"));
        bytes.extend_from_slice(b"rest");
        let mut r = &bytes[..];
        let h = read(&mut r).await.expect("header");
        assert_eq!(h.addrs.unwrap().0, addr("1.2.3.4:1"));
        assert_eq!(r, b"rest");
        let mut closed = &SIGNATURE[..];
        assert!(matches!(read(&mut closed).await, Err(ReadError::Io(_))));
    }

    #[test]
    fn trusted_networks_contain_their_hosts_and_mapped_addresses() {
        let t = Trusted::parse(&["127.0.0.0/8", "10.0.0.5", "fd00::/8"]).unwrap();
        assert!(t.trusts("127.0.0.2".parse().unwrap()));
        assert!(t.trusts("10.0.0.5".parse().unwrap()));
        assert!(!t.trusts("10.0.0.6".parse().unwrap()));
        assert!(t.trusts("::ffff:127.0.0.1".parse().unwrap()));
        assert!(t.trusts("fd12::1".parse().unwrap()));
        assert!(!t.trusts("192.168.0.1".parse().unwrap()));
        assert_eq!(Trusted::parse(&["10.0.0.0/33"]).unwrap_err().0, 0);
    }
}
