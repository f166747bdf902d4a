//! Packet-level pieces of the client: constants, the bounds-checked [`Reader`], and parsers
//! for ERR packets, column definitions and text and binary rows. Nothing here panics on peer
//! bytes: every read is checked and a short packet is a protocol error.

use sha1::{Digest, Sha1};

use super::types::{proto, ClientError, Column, ServerError, Value};

/// First bytes of answer packets.
pub(super) const OK: u8 = 0x00;
pub(super) const EOF: u8 = 0xFE;
pub(super) const ERR: u8 = 0xFF;
pub(super) const LOCAL_INFILE: u8 = 0xFB;
/// A NULL column in a text row.
pub(super) const NULL_VALUE: u8 = 0xFB;
/// Continuation of a packet of the maximal length.
pub(super) const MAX_PAYLOAD: usize = 0xFF_FFFF;
/// `utf8mb4_general_ci`.
pub(super) const UTF8MB4: u8 = 45;
/// The column flag of unsigned numbers.
pub(super) const UNSIGNED_FLAG: u16 = 0x20;
/// Plugins this client can answer.
pub(super) const NATIVE: &str = "mysql_native_password";

/// Whether `p` ends a result set: an EOF packet, or under `DEPRECATE_EOF` the 0xFE-headed OK.
pub(super) fn is_end(p: &[u8]) -> bool {
    p.first() == Some(&EOF) && p.len() < MAX_PAYLOAD
}

/// `SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))`; empty for an empty password.
pub(super) fn native_scramble(password: &str, salt: &[u8]) -> Vec<u8> {
    if password.is_empty() {
        return Vec::new();
    }
    let stage1 = Sha1::digest(password.as_bytes());
    let stage2 = Sha1::digest(stage1);
    let mut h = Sha1::new();
    h.update(salt);
    h.update(stage2);
    let mix = h.finalize();
    stage1.iter().zip(mix.iter()).map(|(a, b)| a ^ b).collect()
}

pub(super) fn parse_err(p: &[u8]) -> Result<ServerError, ClientError> {
    let mut r = Reader::new(p);
    r.u8()?;
    let code = r.u16()?;
    let state = if r.peek() == Some(b'#') {
        r.u8()?;
        String::from_utf8_lossy(r.bytes(5)?).into_owned()
    } else {
        String::new()
    };
    Ok(ServerError {
        code,
        state,
        message: String::from_utf8_lossy(r.rest()).into_owned(),
    })
}

pub(super) fn parse_column(p: &[u8]) -> Result<Column, ClientError> {
    let mut r = Reader::new(p);
    let _catalog = r.lenenc_str()?;
    let schema = r.lenenc_str()?;
    let table = r.lenenc_str()?;
    let org_table = r.lenenc_str()?;
    let name = r.lenenc_str()?;
    let org_name = r.lenenc_str()?;
    let _fixed_len = r.lenenc()?;
    Ok(Column {
        schema,
        table,
        org_table,
        name,
        org_name,
        charset: r.u16()?,
        length: r.u32()?,
        kind: r.u8()?,
        flags: r.u16()?,
        decimals: r.u8()?,
    })
}

pub(super) fn parse_text_row(p: &[u8], n: usize) -> Result<Vec<Value>, ClientError> {
    let mut r = Reader::new(p);
    let mut row = Vec::with_capacity(n.min(256));
    for _ in 0..n {
        if r.peek() == Some(NULL_VALUE) {
            r.u8()?;
            row.push(None);
        } else {
            let len = r.lenenc()?;
            let Ok(len) = usize::try_from(len) else {
                return proto("value length out of range");
            };
            row.push(Some(r.bytes(len)?.to_vec()));
        }
    }
    Ok(row)
}

pub(super) fn parse_binary_row(p: &[u8], columns: &[Column]) -> Result<Vec<Value>, ClientError> {
    let mut r = Reader::new(p);
    if r.u8()? != OK {
        return proto("binary row without its 0x00 header");
    }
    let bitmap = r.bytes((columns.len() + 7 + 2) / 8)?.to_vec();
    let mut row = Vec::with_capacity(columns.len());
    for (i, c) in columns.iter().enumerate() {
        let bit = i + 2;
        let null = bitmap
            .get(bit / 8)
            .is_some_and(|b| b & (1 << (bit % 8)) != 0);
        if null {
            row.push(None);
            continue;
        }
        let unsigned = c.flags & UNSIGNED_FLAG != 0;
        let text = match c.kind {
            0x01 => {
                let b = r.u8()?;
                if unsigned {
                    b.to_string()
                } else {
                    (b as i8).to_string()
                }
            }
            0x02 | 0x0d => {
                let v = r.u16()?;
                if unsigned || c.kind == 0x0d {
                    v.to_string()
                } else {
                    (v as i16).to_string()
                }
            }
            0x03 | 0x09 => {
                let v = r.u32()?;
                if unsigned {
                    v.to_string()
                } else {
                    (v as i32).to_string()
                }
            }
            0x08 => {
                let v = r.u64()?;
                if unsigned {
                    v.to_string()
                } else {
                    (v as i64).to_string()
                }
            }
            0x04 => f32::from_le_bytes(r.array()?).to_string(),
            0x05 => f64::from_le_bytes(r.array()?).to_string(),
            0x07 | 0x0a | 0x0c => {
                let n = usize::from(r.u8()?);
                let b = r.bytes(n)?;
                let get = |i: usize| b.get(i).copied().unwrap_or(0);
                let year = u16::from_le_bytes([get(0), get(1)]);
                let micros = u32::from_le_bytes([get(7), get(8), get(9), get(10)]);
                format!(
                    "{year:04}-{:02}-{:02} {:02}:{:02}:{:02}.{micros:06}",
                    get(2),
                    get(3),
                    get(4),
                    get(5),
                    get(6)
                )
            }
            0x0b => {
                let n = usize::from(r.u8()?);
                let b = r.bytes(n)?;
                let get = |i: usize| b.get(i).copied().unwrap_or(0);
                let days = u32::from_le_bytes([get(1), get(2), get(3), get(4)]);
                let micros = u32::from_le_bytes([get(8), get(9), get(10), get(11)]);
                format!(
                    "{}{days}d {:02}:{:02}:{:02}.{micros:06}",
                    if get(0) == 1 { "-" } else { "" },
                    get(5),
                    get(6),
                    get(7)
                )
            }
            0x06 => String::new(),
            _ => {
                let len = r.lenenc()?;
                let Ok(len) = usize::try_from(len) else {
                    return proto("value length out of range");
                };
                row.push(Some(r.bytes(len)?.to_vec()));
                continue;
            }
        };
        row.push(Some(text.into_bytes()));
    }
    Ok(row)
}

pub(super) fn put_lenenc(out: &mut Vec<u8>, n: u64) {
    match n {
        0..=250 => out.push(n as u8),
        251..=0xFFFF => {
            out.push(0xFC);
            out.extend_from_slice(&(n as u16).to_le_bytes());
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(0xFD);
            out.extend_from_slice(&(n as u32).to_le_bytes()[..3]);
        }
        _ => {
            out.push(0xFE);
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

/// A bounds-checked cursor over a packet.
pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }
    pub(super) fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }
    pub(super) fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }
    pub(super) fn bytes(&mut self, n: usize) -> Result<&'a [u8], ClientError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return proto("packet shorter than its fields");
        };
        let s = self.buf.get(self.pos..end).unwrap_or_default();
        self.pos = end;
        Ok(s)
    }
    pub(super) fn array<const N: usize>(&mut self) -> Result<[u8; N], ClientError> {
        let b = self.bytes(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let s = self.buf.get(self.pos..).unwrap_or_default();
        self.pos = self.buf.len();
        s
    }
    pub(super) fn u8(&mut self) -> Result<u8, ClientError> {
        Ok(self.array::<1>()?[0])
    }
    pub(super) fn u16(&mut self) -> Result<u16, ClientError> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    pub(super) fn u32(&mut self) -> Result<u32, ClientError> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub(super) fn u64(&mut self) -> Result<u64, ClientError> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    pub(super) fn lenenc(&mut self) -> Result<u64, ClientError> {
        match self.u8()? {
            0xFC => Ok(u64::from(self.u16()?)),
            0xFD => {
                let b = self.bytes(3)?;
                Ok(b.iter().rev().fold(0u64, |acc, &x| acc << 8 | u64::from(x)))
            }
            0xFE => self.u64(),
            b @ 0..=0xFA => Ok(u64::from(b)),
            b => proto(format!("bad length-encoded integer {b:#x}")),
        }
    }
    pub(super) fn lenenc_str(&mut self) -> Result<String, ClientError> {
        let n = self.lenenc()?;
        let Ok(n) = usize::try_from(n) else {
            return proto("string length out of range");
        };
        Ok(String::from_utf8_lossy(self.bytes(n)?).into_owned())
    }
    pub(super) fn nul_str(&mut self) -> Result<String, ClientError> {
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        let Some(n) = rest.iter().position(|&b| b == 0) else {
            return proto("string without its NUL");
        };
        let s = String::from_utf8_lossy(rest.get(..n).unwrap_or_default()).into_owned();
        self.pos += n + 1;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_ok_packet_is_a_protocol_error_not_a_panic() {
        let c = [0x00u8, 0x01];
        let mut r = Reader::new(&c);
        assert!(r.u8().is_ok());
        assert!(r.lenenc().is_ok());
        assert!(r.lenenc().is_err());
    }

    #[test]
    fn binary_rows_shorter_than_their_columns_are_refused() {
        let col = Column {
            schema: String::new(),
            table: String::new(),
            org_table: String::new(),
            name: "x".into(),
            org_name: "x".into(),
            charset: 63,
            length: 20,
            kind: 0x08,
            flags: 0,
            decimals: 0,
        };
        assert!(parse_binary_row(&[0x00, 0x00, 1, 2, 3], std::slice::from_ref(&col)).is_err());
        let mut ok = vec![0x00, 0x00];
        ok.extend_from_slice(&(-5i64).to_le_bytes());
        assert_eq!(
            parse_binary_row(&ok, &[col]).ok(),
            Some(vec![Some(b"-5".to_vec())])
        );
    }

    #[test]
    fn the_native_scramble_of_an_empty_password_is_empty() {
        assert!(native_scramble("", b"01234567890123456789").is_empty());
        assert_eq!(native_scramble("pw", b"01234567890123456789").len(), 20);
    }

    #[test]
    fn an_err_packet_is_parsed_with_its_sqlstate() {
        let mut p = vec![ERR];
        p.extend_from_slice(&1243u16.to_le_bytes());
        p.extend_from_slice(b"#HY000Unknown prepared statement handler");
        let e = parse_err(&p).ok();
        assert_eq!(e.as_ref().map(|e| e.code), Some(1243));
        assert_eq!(e.map(|e| e.state), Some("HY000".to_string()));
    }
}
