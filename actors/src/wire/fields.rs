//! Field codecs inside a payload: length-encoded integers and strings, NUL-terminated strings
//! and fixed-size little-endian fields. Readers take a position and advance it, and answer
//! `None` instead of reading past the end: every caller reads peer bytes.

/// Prefix of a length-encoded NULL (in rows).
pub const LENENC_NULL: u8 = 0xFB;
/// Prefix of a length-encoded integer of 2 bytes.
const LENENC_U16: u8 = 0xFC;
/// Prefix of a length-encoded integer of 3 bytes.
const LENENC_U24: u8 = 0xFD;
/// Prefix of a length-encoded integer of 8 bytes.
const LENENC_U64: u8 = 0xFE;
/// Largest value encoded in its one prefix byte.
const LENENC_ONE_BYTE_MAX: u8 = 0xFA;

/// Reads a length-encoded integer at `*pos`, advancing it.
pub fn get_lenenc(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let first = *buf.get(*pos)?;
    let at = pos.checked_add(1)?;
    let (len, v) = match first {
        0..=LENENC_ONE_BYTE_MAX => (1, u64::from(first)),
        LENENC_U16 => (3, u64::from(u16::from_le_bytes(get_arr(buf, at)?))),
        LENENC_U24 => {
            let [a, b, c] = get_arr(buf, at)?;
            (4, u64::from(u32::from_le_bytes([a, b, c, 0])))
        }
        LENENC_U64 => (9, u64::from_le_bytes(get_arr(buf, at)?)),
        _ => return None,
    };
    *pos += len;
    Some(v)
}

/// Appends a length-encoded integer.
pub fn put_lenenc(out: &mut Vec<u8>, v: u64) {
    let bytes = v.to_le_bytes();
    match v {
        0..=0xFA => out.push(v as u8),
        0xFB..=0xFFFF => {
            out.push(LENENC_U16);
            out.extend_from_slice(&bytes[..2]);
        }
        0x1_0000..=0xFF_FFFF => {
            out.push(LENENC_U24);
            out.extend_from_slice(&bytes[..3]);
        }
        _ => {
            out.push(LENENC_U64);
            out.extend_from_slice(&bytes);
        }
    }
}

/// A length-encoded string at `*pos` (`Some(None)` for the NULL marker; `None` for a short
/// buffer).
pub fn get_lenenc_str<'a>(buf: &'a [u8], pos: &mut usize) -> Option<Option<&'a [u8]>> {
    if buf.get(*pos) == Some(&LENENC_NULL) {
        *pos += 1;
        return Some(None);
    }
    let mut at = *pos;
    let n = usize::try_from(get_lenenc(buf, &mut at)?).ok()?;
    let s = buf.get(at..at.checked_add(n)?)?;
    *pos = at + n;
    Some(Some(s))
}

/// Appends a length-encoded string.
pub fn put_lenenc_str(out: &mut Vec<u8>, s: &[u8]) {
    put_lenenc(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// A NUL-terminated string at `*pos` (the NUL is consumed; a missing NUL takes the rest).
pub fn get_cstr<'a>(buf: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let rest = buf.get(*pos..).unwrap_or_default();
    match rest.iter().position(|&b| b == 0) {
        Some(i) => {
            *pos += i + 1;
            rest.get(..i).unwrap_or_default()
        }
        None => {
            *pos += rest.len();
            rest
        }
    }
}

/// A NUL-terminated string at `*pos`, which must have its NUL.
pub fn get_cstr_strict<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = buf.get(*pos..)?;
    let i = rest.iter().position(|&b| b == 0)?;
    *pos += i + 1;
    rest.get(..i)
}

/// `N` bytes at `pos` as an array.
pub fn get_arr<const N: usize>(buf: &[u8], pos: usize) -> Option<[u8; N]> {
    buf.get(pos..pos.checked_add(N)?)?.try_into().ok()
}

/// A little-endian `u16` at `pos`.
pub fn get_u16(buf: &[u8], pos: usize) -> Option<u16> {
    get_arr(buf, pos).map(u16::from_le_bytes)
}

/// A little-endian `u32` at `pos`.
pub fn get_u32(buf: &[u8], pos: usize) -> Option<u32> {
    get_arr(buf, pos).map(u32::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn short_fields_read_as_none_without_moving() {
        let mut pos = 0;
        assert_eq!(get_lenenc(&[LENENC_U24, 1, 2], &mut pos), None);
        assert_eq!(get_lenenc_str(&[5, b'a'], &mut pos), None);
        assert_eq!(get_lenenc(&[0xFF], &mut pos), None);
        assert_eq!(get_arr::<4>(&[1, 2, 3], 0), None);
        assert_eq!(get_cstr_strict(b"abc", &mut pos), None);
        assert_eq!(pos, 0);
        assert_eq!(get_u16(&[1, 2], usize::MAX), None);
    }

    #[test]
    fn strings_are_read_with_and_without_their_terminator() {
        let mut pos = 0;
        assert_eq!(get_cstr(b"ab\0cd", &mut pos), b"ab");
        assert_eq!(get_cstr(b"ab\0cd", &mut pos), b"cd");
        assert_eq!(pos, 5);
        let mut b = Vec::new();
        put_lenenc_str(&mut b, b"xyz");
        b.push(LENENC_NULL);
        let mut pos = 0;
        assert_eq!(get_lenenc_str(&b, &mut pos), Some(Some(&b"xyz"[..])));
        assert_eq!(get_lenenc_str(&b, &mut pos), Some(None));
    }
}
