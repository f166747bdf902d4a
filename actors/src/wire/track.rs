//! Session-state information in OK packets (`CLIENT_SESSION_TRACK`): the entries a proxy reads
//! to follow a session (changed variables, schema, transaction state), and the rewrite that
//! removes them for a client that did not ask for them.
//!
//! With the capability, an OK packet goes on after its warnings with a length-encoded message
//! and, when its status has [`status::SESSION_STATE_CHANGED`], the length-encoded state
//! information: entries of a kind byte and a length-encoded body. Without it, the message alone
//! follows (servers write it length-encoded too), so stripping means dropping the state and the
//! flag, and keeping a non-empty message.

use super::constants::{status, track};
use super::fields::{get_lenenc, get_lenenc_str, get_u16, put_lenenc};

/// Bytes of an OK packet's status flags and of its warning count.
const U16_LEN: usize = 2;
/// Where a 4.1 EOF packet's status flags are.
const EOF_STATUS_AT: usize = 3;

/// One entry of an OK packet's session-state information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateChange<'a> {
    /// A system variable and its new value, as the server prints it.
    SystemVariable {
        /// Its name.
        name: &'a [u8],
        /// Its value.
        value: &'a [u8],
    },
    /// The new current schema (empty: none).
    Schema(&'a [u8]),
    /// Some session state changed (`session_track_state_change`).
    StateChanged,
    /// The transaction state, eight characters (`session_track_transaction_info = STATE`).
    TransactionState(&'a [u8]),
    /// An entry of another kind (GTIDs, transaction characteristics, a kind added later).
    Other(u8),
    /// The rest cannot be read: the entries before this one are all that is known.
    Malformed,
}

/// Where an OK payload's fields end (after its warnings), and its status flags.
fn ok_head(ok: &[u8]) -> Option<(usize, u16)> {
    let mut pos = 1;
    get_lenenc(ok, &mut pos)?;
    get_lenenc(ok, &mut pos)?;
    let flags = get_u16(ok, pos)?;
    get_u16(ok, pos + U16_LEN)?;
    Some((pos + 2 * U16_LEN, flags))
}

/// The session-state information of an OK payload (without its length), when the status says
/// it has some and it is all there. A packet whose flag is set but whose information is cut
/// short gives `None` too: check [`has_session_state`] to tell the two apart.
pub fn session_state(ok: &[u8]) -> Option<&[u8]> {
    let (mut pos, flags) = ok_head(ok)?;
    if flags & status::SESSION_STATE_CHANGED == 0 {
        return None;
    }
    get_lenenc_str(ok, &mut pos)?;
    get_lenenc_str(ok, &mut pos)?
}

/// True when an OK payload's status says it carries session-state information.
pub fn has_session_state(ok: &[u8]) -> bool {
    ok_head(ok).is_some_and(|(_, flags)| flags & status::SESSION_STATE_CHANGED != 0)
}

/// The entries of session-state information, in order; a malformed entry ends them with
/// [`StateChange::Malformed`].
pub fn state_changes(state: &[u8]) -> StateChanges<'_> {
    StateChanges {
        rest: state,
        done: false,
    }
}

/// Iterator over session-state entries (see [`state_changes`]).
#[derive(Debug)]
pub struct StateChanges<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> Iterator for StateChanges<'a> {
    type Item = StateChange<'a>;

    fn next(&mut self) -> Option<StateChange<'a>> {
        if self.done || self.rest.is_empty() {
            return None;
        }
        match entry(self.rest) {
            Some((change, used)) => {
                self.rest = self.rest.get(used..).unwrap_or_default();
                Some(change)
            }
            None => {
                self.done = true;
                Some(StateChange::Malformed)
            }
        }
    }
}

/// One entry at the start of `p`, and how many bytes it took.
fn entry(p: &[u8]) -> Option<(StateChange<'_>, usize)> {
    let kind = *p.first()?;
    let mut pos = 1;
    let body = get_lenenc_str(p, &mut pos)??;
    let mut at = 0;
    let change = match kind {
        track::SYSTEM_VARIABLES => {
            let name = get_lenenc_str(body, &mut at)??;
            let value = get_lenenc_str(body, &mut at)??;
            StateChange::SystemVariable { name, value }
        }
        track::SCHEMA => StateChange::Schema(get_lenenc_str(body, &mut at)??),
        track::STATE_CHANGE => StateChange::StateChanged,
        track::TRANSACTION_STATE => StateChange::TransactionState(get_lenenc_str(body, &mut at)??),
        other => StateChange::Other(other),
    };
    Some((change, pos))
}

/// The OK payload a client without `CLIENT_SESSION_TRACK` expects: the same fields with
/// [`status::SESSION_STATE_CHANGED`] cleared, the message kept when there is one, the state
/// information dropped. `None` when there is nothing to remove (forward the packet as it is).
pub fn strip_session_state(ok: &[u8]) -> Option<Vec<u8>> {
    let (mut pos, flags) = ok_head(ok)?;
    if flags & status::SESSION_STATE_CHANGED == 0 {
        return None;
    }
    let status_at = pos - 2 * U16_LEN;
    let message = get_lenenc_str(ok, &mut pos).flatten().unwrap_or_default();
    let mut out = Vec::with_capacity(pos + message.len());
    out.extend_from_slice(ok.get(..status_at)?);
    out.extend_from_slice(&(flags & !status::SESSION_STATE_CHANGED).to_le_bytes());
    out.extend_from_slice(ok.get(status_at + U16_LEN..status_at + 2 * U16_LEN)?);
    if !message.is_empty() {
        put_lenenc(&mut out, message.len() as u64);
        out.extend_from_slice(message);
    }
    Some(out)
}

/// The status flags of a 4.1 EOF payload.
pub fn eof_status(eof: &[u8]) -> Option<u16> {
    get_u16(eof, EOF_STATUS_AT)
}

/// Clears [`status::SESSION_STATE_CHANGED`] in a 4.1 EOF payload, in place (a client without
/// `CLIENT_SESSION_TRACK` never sees it from a server).
pub fn clear_eof_state_flag(eof: &mut [u8]) {
    if let Some(flags) = eof_status(eof) {
        if let Some(b) = eof.get_mut(EOF_STATUS_AT..EOF_STATUS_AT + U16_LEN) {
            b.copy_from_slice(&(flags & !status::SESSION_STATE_CHANGED).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `SET session_track_…` as MariaDB 10.11 answers it with the capability.
    const SET_OK: &[u8] = b"\x00\x00\x00\x02\x40\x00\x00\x00\x31\x00\x21\x1esession_track_system_variables\x01*\x02\x011\x05\x09\x08________";
    /// `PREPARE s FROM …`: a message and a state change.
    const PREPARE_OK: &[u8] = b"\x00\x00\x00\x02\x40\x00\x00\x12Statement prepared\x03\x02\x011";
    /// The same without the capability.
    const PREPARE_PLAIN: &[u8] = b"\x00\x00\x00\x02\x00\x00\x00\x12Statement prepared";

    #[test]
    fn entries_of_a_real_ok_packet_are_read_in_order() {
        let state = session_state(SET_OK).unwrap();
        let got: Vec<_> = state_changes(state).collect();
        assert_eq!(
            got,
            vec![
                StateChange::SystemVariable {
                    name: b"session_track_system_variables",
                    value: b"*"
                },
                StateChange::StateChanged,
                StateChange::TransactionState(b"________"),
            ]
        );
        let begin = b"\x00\x00\x00\x03\x40\x00\x00\x00\x0b\x05\x09\x08T_______";
        let got: Vec<_> = state_changes(session_state(begin).unwrap()).collect();
        assert_eq!(got, vec![StateChange::TransactionState(b"T_______")]);
        assert_eq!(session_state(PREPARE_PLAIN), None);
    }

    #[test]
    fn stripping_gives_the_packet_a_client_without_tracking_gets() {
        assert_eq!(strip_session_state(PREPARE_OK).unwrap(), PREPARE_PLAIN);
        assert_eq!(
            strip_session_state(SET_OK).unwrap(),
            b"\x00\x00\x00\x02\x00\x00\x00"
        );
        assert_eq!(strip_session_state(PREPARE_PLAIN), None);
        let mut eof = *b"\xfe\x00\x00\x03\x40";
        clear_eof_state_flag(&mut eof);
        assert_eq!(&eof, b"\xfe\x00\x00\x03\x00");
    }

    #[test]
    fn cut_or_garbled_state_information_never_panics_and_says_so() {
        for cut in 0..SET_OK.len() {
            let p = &SET_OK[..cut];
            let _ = strip_session_state(p);
            if let Some(state) = session_state(p) {
                let _ = state_changes(state).count();
            }
        }
        let garbled = [track::SYSTEM_VARIABLES, 5, 9, b'a'];
        let got: Vec<_> = state_changes(&garbled).collect();
        assert_eq!(got, vec![StateChange::Malformed]);
    }
}
