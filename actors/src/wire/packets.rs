//! The generic response packets: OK, ERR and EOF, read and written.
//!
//! Readers take a payload (header stripped) and read only fixed-position fields, so a caller on
//! the relay path can look at a packet without copying it. An OK's session-state information,
//! when present, is left unparsed after the fields read here.

use super::constants::{marker, sqlstate, status};
use super::fields::{get_arr, get_lenenc, get_u16, put_lenenc};
use super::frame::MAX_PAYLOAD;

/// Bytes of an ERR packet before its message: marker, code, `#`, SQL state.
const ERR_HEADER: usize = 1 + 2 + 1 + 5;
/// Bytes of an EOF packet: marker, warnings, status.
const EOF_LEN: usize = 5;
/// Where an EOF packet's status flags are.
const EOF_STATUS_AT: usize = 3;
/// The shortest row starting with `0xFE`: that prefix announces an 8-byte length.
const SHORTEST_FE_ROW: usize = 9;

/// The fields of an OK packet up to its status and warnings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OkInfo {
    /// Rows changed by the statement.
    pub affected_rows: u64,
    /// `LAST_INSERT_ID()` after it.
    pub last_insert_id: u64,
    /// Server status flags.
    pub status: u16,
    /// Warnings raised.
    pub warnings: u16,
}

/// Reads an OK packet (marker [`marker::OK`], or [`marker::EOF`] when it ends a result set under
/// `CLIENT_DEPRECATE_EOF`). `None` when the payload is too short for its fields.
pub fn parse_ok(payload: &[u8]) -> Option<OkInfo> {
    let mut pos = 1;
    let affected_rows = get_lenenc(payload, &mut pos)?;
    let last_insert_id = get_lenenc(payload, &mut pos)?;
    let status = get_u16(payload, pos)?;
    Some(OkInfo {
        affected_rows,
        last_insert_id,
        status,
        // a 4.1 OK always has them; tolerate a server that stops after the status
        warnings: get_u16(payload, pos + 2).unwrap_or(0),
    })
}

/// An OK packet payload (protocol 4.1, no message, no session-state information).
pub fn ok_payload(ok: &OkInfo) -> Vec<u8> {
    let mut p = Vec::with_capacity(16);
    p.push(marker::OK);
    put_lenenc(&mut p, ok.affected_rows);
    put_lenenc(&mut p, ok.last_insert_id);
    p.extend_from_slice(&ok.status.to_le_bytes());
    p.extend_from_slice(&ok.warnings.to_le_bytes());
    p
}

/// An EOF packet payload (protocol 4.1).
pub fn eof_payload(warnings: u16, status: u16) -> Vec<u8> {
    let mut p = Vec::with_capacity(EOF_LEN);
    p.push(marker::EOF);
    p.extend_from_slice(&warnings.to_le_bytes());
    p.extend_from_slice(&status.to_le_bytes());
    p
}

/// Status flags of an EOF packet, or of an OK packet standing in for one. `None` when the
/// payload is neither.
pub fn terminator_status(payload: &[u8], deprecate_eof: bool) -> Option<u16> {
    if deprecate_eof {
        parse_ok(payload).map(|ok| ok.status)
    } else {
        get_u16(payload, EOF_STATUS_AT)
    }
}

/// True for an EOF-or-OK packet ending rows: marker [`marker::EOF`] and shorter than a row
/// starting with that byte could be (a row's first length prefix `0xFE` means 8 more bytes; under
/// `CLIENT_DEPRECATE_EOF` the only such row is one of 16 MiB).
pub fn is_terminator(payload: &[u8], deprecate_eof: bool) -> bool {
    payload.first() == Some(&marker::EOF)
        && if deprecate_eof {
            payload.len() < MAX_PAYLOAD
        } else {
            payload.len() < SHORTEST_FE_ROW
        }
}

/// True for a result set's ending packet whose flags say another result set follows.
pub fn more_results(status_flags: u16) -> bool {
    status_flags & status::MORE_RESULTS != 0
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

impl ErrInfo {
    /// Reads an ERR packet; `None` unless it starts with [`marker::ERR`] and a 2-byte code.
    /// The SQL state is optional (servers omit it before the handshake).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        if payload.first() != Some(&marker::ERR) {
            return None;
        }
        let code = u16::from_le_bytes(get_arr(payload, 1)?);
        let rest = payload.get(3..).unwrap_or_default();
        let (state, msg) = match rest.split_first() {
            Some((&marker::SQL_STATE, tail)) if tail.len() >= 5 => tail.split_at(5),
            _ => (sqlstate::GENERAL.as_bytes(), rest),
        };
        Some(Self {
            code,
            state: String::from_utf8_lossy(state).into_owned(),
            message: String::from_utf8_lossy(msg).into_owned(),
        })
    }
}

/// Reads an ERR packet leniently: a packet too short for its code reads as code 0 with an empty
/// message (the caller already knows it is an error; it wants text to report).
pub fn parse_err(payload: &[u8]) -> ErrInfo {
    ErrInfo::parse(payload).unwrap_or_else(|| ErrInfo {
        code: 0,
        state: sqlstate::GENERAL.into(),
        message: String::new(),
    })
}

/// An ERR packet payload (protocol 4.1: with the SQL state; a short `state` is padded from
/// `HY000`).
pub fn err_payload(code: u16, state: &str, message: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(ERR_HEADER + message.len());
    p.push(marker::ERR);
    p.extend_from_slice(&code.to_le_bytes());
    p.push(marker::SQL_STATE);
    let mut st = [0u8; 5];
    st.copy_from_slice(sqlstate::GENERAL.as_bytes());
    for (d, s) in st.iter_mut().zip(state.bytes()) {
        *d = s;
    }
    p.extend_from_slice(&st);
    p.extend_from_slice(message.as_bytes());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::code;

    #[test]
    fn ok_eof_and_err_are_read() {
        let ok = [0x00, 0x01, 0x00, 0x03, 0x00, 0x00, 0x00];
        assert_eq!(
            parse_ok(&ok),
            Some(OkInfo {
                affected_rows: 1,
                status: 3,
                ..OkInfo::default()
            })
        );
        let eof = [0xFE, 0, 0, 0x08, 0];
        assert!(is_terminator(&eof, false));
        assert_eq!(terminator_status(&eof, false), Some(status::MORE_RESULTS));
        let err = err_payload(code::ER_ACCESS_DENIED_ERROR, "28000", "Access denied");
        let e = parse_err(&err);
        assert_eq!((e.code, e.state.as_str()), (1045, "28000"));
        assert_eq!(e.message, "Access denied");
    }

    #[test]
    fn built_packets_read_back() {
        let ok = OkInfo {
            affected_rows: 300,
            last_insert_id: 70_000,
            status: status::AUTOCOMMIT | status::IN_TRANS,
            warnings: 2,
        };
        assert_eq!(parse_ok(&ok_payload(&ok)), Some(ok));
        let eof = eof_payload(1, status::MORE_RESULTS);
        assert!(is_terminator(&eof, false));
        assert!(more_results(terminator_status(&eof, false).unwrap()));
    }

    #[test]
    fn err_packets_without_state_or_code_are_read_as_far_as_they_go() {
        let mut p = vec![marker::ERR, 0x69, 0x04];
        p.extend_from_slice(b"Host blocked");
        let e = ErrInfo::parse(&p).unwrap();
        assert_eq!((e.code, e.state.as_str()), (1129, "HY000"));
        assert_eq!(e.message, "Host blocked");
        assert_eq!(ErrInfo::parse(&[marker::ERR]), None);
        assert_eq!(ErrInfo::parse(&[marker::OK, 1, 2]), None);
        assert_eq!(parse_err(&[marker::ERR]).code, 0);
        let short_state = err_payload(1, "42", "m");
        assert_eq!(parse_err(&short_state).state, "42000");
    }
}
