//! The binary prepared statements of one session, under the ids the client was given.
//!
//! Ids are virtual: the client keeps the ids it was given when the session moves and its
//! statements are re-prepared under new ids on the target. So every `COM_STMT_*` command has its
//! id rewritten in place on the way to the backend, and the table remembers what a move needs to
//! re-create a statement (its text, counts, last bound parameter types).

use std::collections::HashMap;

use switchyard::wire::{cmd, get_u32, status, MAX_PAYLOAD};

use super::scan::{analyze, Pending};

/// Where a `COM_STMT_*` command carries its statement id.
const STMT_ID_AT: usize = 1;
/// Bytes of a statement id.
const STMT_ID_LEN: usize = 4;
/// `COM_STMT_EXECUTE`: where its flags are (cursor type in the low bits).
const EXECUTE_FLAGS_AT: usize = 5;
/// `COM_STMT_EXECUTE` flags asking for a cursor (`CURSOR_TYPE_READ_ONLY | FOR_UPDATE |
/// SCROLLABLE`).
const EXECUTE_CURSOR_TYPES: u8 = 0x07;
/// `COM_STMT_EXECUTE`: where the NULL bitmap starts (after command, id, flags and the 4-byte
/// iteration count).
const EXECUTE_NULL_BITMAP_AT: usize = 10;
/// `COM_STMT_EXECUTE`: `new_params_bound_flag` values.
const TYPES_BOUND: u8 = 1;
const TYPES_NOT_BOUND: u8 = 0;
/// Bytes of one parameter type.
const TYPE_LEN: usize = 2;
/// MariaDB's `LAST_STMT_ID`: a statement id meaning "the statement prepared last" (so a client
/// can pipeline a prepare and its execute, as Connector/C's `mariadb_stmt_execute_direct` does).
/// Never given out as a client id.
pub const LAST_STMT_ID: u32 = u32::MAX;

/// Whether a `COM_STMT_EXECUTE` payload asks for a cursor.
pub fn wants_cursor(payload: &[u8]) -> bool {
    payload.first() == Some(&cmd::STMT_EXECUTE)
        && payload
            .get(EXECUTE_FLAGS_AT)
            .is_some_and(|fl| fl & EXECUTE_CURSOR_TYPES != 0)
}

/// Writes statement id `id` into a `COM_STMT_*` payload or a prepare's OK (both carry it at the
/// same place); a payload too short for it is left alone.
pub fn write_id(payload: &mut [u8], id: u32) {
    if let Some(b) = payload.get_mut(STMT_ID_AT..STMT_ID_AT + STMT_ID_LEN) {
        b.copy_from_slice(&id.to_le_bytes());
    }
}

/// An execute payload with `new_params_bound_flag` (at `flag_at`) set and `types` after it.
fn with_types(payload: &[u8], flag_at: usize, types: &[u8]) -> Option<Vec<u8>> {
    let (head, tail) = (payload.get(..flag_at)?, payload.get(flag_at + 1..)?);
    let mut np = Vec::with_capacity(payload.len() + types.len());
    np.extend_from_slice(head);
    np.push(TYPES_BOUND);
    np.extend_from_slice(types);
    np.extend_from_slice(tail);
    Some(np)
}

/// One binary prepared statement, under the id the client knows.
#[derive(Debug, Clone)]
pub struct Stmt {
    /// Its id on the current backend.
    pub(super) backend_id: u32,
    /// The statement text the client prepared.
    pub(super) sql: Vec<u8>,
    /// Parameter count.
    pub(super) params: u16,
    /// Column count.
    pub(super) columns: u16,
    /// Parameter types last bound by an execute (2 bytes each).
    types: Option<Vec<u8>>,
    /// Re-prepared by a move: the next execute must bind types even if the client does not.
    needs_types: bool,
    /// A cursor is open on it.
    pub(super) cursor: bool,
    /// Long data was sent and not yet consumed by an execute.
    pub(super) long_data: bool,
    /// What executing it does, as the scan of its text says.
    runs: Pending,
}

/// A `COM_STMT_*` command named a statement id the session does not have (never prepared,
/// closed, or from before a reset). Such a command is never forwarded: after a move the same
/// number may name another statement on the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownStmt(pub u32);

/// The statement table: client id → statement.
#[derive(Debug)]
pub struct Stmts {
    by_id: HashMap<u32, Stmt>,
    /// Where the search for the next free client id starts.
    next_id: u32,
    /// The client id of the statement prepared last, while it lives (what [`LAST_STMT_ID`]
    /// names; a failed prepare clears it, as on the server).
    last: Option<u32>,
}

impl Default for Stmts {
    fn default() -> Self {
        Self::starting_at(1)
    }
}

impl Stmts {
    /// An empty table handing out ids from `first` on (tests start near the wrap).
    fn starting_at(first: u32) -> Self {
        Self {
            by_id: HashMap::new(),
            next_id: first,
            last: None,
        }
    }

    /// The next client id: counting up from the last one given, past 0, [`LAST_STMT_ID`] and
    /// every id still in use, so an id wraps around at 2^32 but never onto a live statement.
    fn free_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != 0 && id != LAST_STMT_ID && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Registers a statement the backend prepared as `backend_id`; returns the client's id.
    pub fn add(&mut self, backend_id: u32, sql: Vec<u8>, params: u16, columns: u16) -> u32 {
        let id = self.free_id();
        self.last = Some(id);
        self.by_id.insert(
            id,
            Stmt {
                backend_id,
                params,
                columns,
                types: None,
                needs_types: false,
                cursor: false,
                long_data: false,
                runs: analyze(&sql),
                sql,
            },
        );
        id
    }

    /// Rewrites the client's statement id in a `COM_STMT_*` payload to the backend's, in place;
    /// returns the client's id. [`LAST_STMT_ID`] names the statement prepared last. An id the
    /// session does not have (or a payload too short to hold one: its bytes, zero-padded) is
    /// left alone and returned as the error.
    pub fn map(&self, payload: &mut [u8]) -> Result<u32, UnknownStmt> {
        let sent = get_u32(payload, STMT_ID_AT).unwrap_or_else(|| {
            let mut b = [0u8; STMT_ID_LEN];
            for (d, s) in b.iter_mut().zip(payload.iter().skip(STMT_ID_AT)) {
                *d = *s;
            }
            u32::from_le_bytes(b)
        });
        let id = match sent {
            LAST_STMT_ID => self.last.ok_or(UnknownStmt(sent))?,
            id => id,
        };
        let s = self.by_id.get(&id).ok_or(UnknownStmt(sent))?;
        if payload.len() < STMT_ID_AT + STMT_ID_LEN {
            return Err(UnknownStmt(sent));
        }
        write_id(payload, s.backend_id);
        Ok(id)
    }

    /// A prepare failed: on the server that clears the statement [`LAST_STMT_ID`] names.
    pub fn prepare_failed(&mut self) {
        self.last = None;
    }

    /// What executing statement `id` does, as the scan of its text says; `None` for an unknown
    /// id.
    pub fn runs(&self, id: u32) -> Option<&Pending> {
        self.by_id.get(&id).map(|s| &s.runs)
    }

    /// Remembers the parameter types an execute of `id` binds; after a move, returns the
    /// execute's payload with the types bound on the old backend added, for an execute that
    /// relies on them (`continued`: the payload goes on in a further packet, left alone).
    pub fn bind_types(&mut self, id: u32, payload: &[u8], continued: bool) -> Option<Vec<u8>> {
        let s = self.by_id.get_mut(&id)?;
        let n = usize::from(s.params);
        if n == 0 {
            return None;
        }
        let flag_at = EXECUTE_NULL_BITMAP_AT + n.div_ceil(8);
        match payload.get(flag_at) {
            Some(&TYPES_BOUND) => {
                let types = payload.get(flag_at + 1..flag_at + 1 + TYPE_LEN * n)?;
                if s.types.as_deref() != Some(types) {
                    s.types = Some(types.to_vec());
                }
                s.needs_types = false;
                None
            }
            Some(&TYPES_NOT_BOUND) if s.needs_types && !continued => {
                let np = with_types(payload, flag_at, s.types.as_deref()?)?;
                s.needs_types = false;
                (np.len() < MAX_PAYLOAD).then_some(np)
            }
            _ => None,
        }
    }

    /// An execute of `id` (its payload as forwarded, after [`Stmts::map`] and
    /// [`Stmts::bind_types`]) as a transaction's replay log keeps it: under the client's id, and
    /// with the parameter types it runs with bound, so it runs the same on a backend where the
    /// statement was just prepared again.
    pub fn replay_payload(&self, id: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = self
            .by_id
            .get(&id)
            .filter(|s| s.params > 0)
            .and_then(|s| {
                let flag_at = EXECUTE_NULL_BITMAP_AT + usize::from(s.params).div_ceil(8);
                match payload.get(flag_at) {
                    Some(&TYPES_NOT_BOUND) => with_types(payload, flag_at, s.types.as_deref()?),
                    _ => None,
                }
            })
            .unwrap_or_else(|| payload.to_vec());
        write_id(&mut out, id);
        out
    }

    /// An execute of `id` ended: its long data is consumed, a cursor is open when the server
    /// says so.
    pub fn executed(&mut self, id: u32, error: bool, flags: u16) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.long_data = false;
            s.cursor = !error && flags & status::CURSOR_EXISTS != 0;
        }
    }

    /// A fetch from `id`'s cursor ended: the cursor is gone after its last row or an error.
    pub fn fetched(&mut self, id: u32, error: bool, flags: u16) {
        if let Some(s) = self.by_id.get_mut(&id) {
            if error || flags & status::LAST_ROW_SENT != 0 {
                s.cursor = false;
            }
        }
    }

    /// `COM_STMT_RESET`: cursor closed, long data dropped.
    pub fn reset(&mut self, id: u32) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.cursor = false;
            s.long_data = false;
        }
    }

    /// `COM_STMT_SEND_LONG_DATA`: data waits for the next execute.
    pub fn long_data_sent(&mut self, id: u32) {
        if let Some(s) = self.by_id.get_mut(&id) {
            s.long_data = true;
        }
    }

    /// `COM_STMT_CLOSE`.
    pub fn close(&mut self, id: u32) {
        self.by_id.remove(&id);
        if self.last == Some(id) {
            self.last = None;
        }
    }

    /// The statements were re-prepared on a new backend: `ids` maps client ids to the new
    /// backend ids. Executes must bind their types again there.
    pub fn moved(&mut self, ids: &[(u32, u32)]) {
        for &(client_id, backend_id) in ids {
            if let Some(s) = self.by_id.get_mut(&client_id) {
                s.backend_id = backend_id;
                s.needs_types = s.params > 0;
            }
        }
    }

    /// Every statement, by client id.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Stmt)> {
        self.by_id.iter().map(|(&id, s)| (id, s))
    }

    /// Forgets every statement; ids keep counting, so an old id never names a new statement.
    pub fn clear(&mut self) {
        self.by_id.clear();
        self.last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn execute(id: u32, params: usize, bound: Option<&[u8]>) -> Vec<u8> {
        let mut p = vec![cmd::STMT_EXECUTE];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.resize(p.len() + params.div_ceil(8), 0);
        match bound {
            Some(types) => {
                p.push(TYPES_BOUND);
                p.extend_from_slice(types);
            }
            None => p.push(TYPES_NOT_BOUND),
        }
        p.extend_from_slice(b"values");
        p
    }

    #[test]
    fn client_ids_are_mapped_to_backend_ids_in_place() {
        let mut t = Stmts::default();
        let id = t.add(77, b"SELECT ?".to_vec(), 1, 1);
        let mut p = execute(id, 1, None);
        assert_eq!(t.map(&mut p), Ok(id));
        assert_eq!(get_u32(&p, STMT_ID_AT), Some(77));
        let mut unknown = execute(id + 1, 1, None);
        assert_eq!(t.map(&mut unknown), Err(UnknownStmt(id + 1)));
        assert_eq!(get_u32(&unknown, STMT_ID_AT), Some(id + 1), "left alone");
        assert_eq!(t.map(&mut [cmd::STMT_CLOSE, 1]), Err(UnknownStmt(1)));
        t.close(id);
        assert_eq!(t.map(&mut execute(id, 1, None)), Err(UnknownStmt(id)));
    }

    #[test]
    fn the_last_statement_id_names_the_statement_prepared_last_while_it_lives() {
        let mut t = Stmts::default();
        assert_eq!(
            t.map(&mut execute(LAST_STMT_ID, 0, None)),
            Err(UnknownStmt(LAST_STMT_ID))
        );
        let first = t.add(40, b"SELECT 1".to_vec(), 0, 1);
        let second = t.add(41, b"SELECT 2".to_vec(), 0, 1);
        let mut p = execute(LAST_STMT_ID, 0, None);
        assert_eq!(t.map(&mut p), Ok(second));
        assert_eq!(get_u32(&p, STMT_ID_AT), Some(41));
        t.prepare_failed();
        assert!(t.map(&mut execute(LAST_STMT_ID, 0, None)).is_err());
        let third = t.add(42, b"SELECT 3".to_vec(), 0, 1);
        t.close(third);
        assert!(t.map(&mut execute(LAST_STMT_ID, 0, None)).is_err());
        assert_eq!(t.map(&mut execute(first, 0, None)), Ok(first));
    }

    #[test]
    fn client_ids_wrap_at_2_32_without_landing_on_a_live_statement() {
        // issue 9.6: ids wrapped onto live ids, so two statements shared one client id
        let mut t = Stmts::starting_at(1);
        let live = t.add(1, b"SELECT 'live'".to_vec(), 0, 1);
        assert_eq!(live, 1);
        let mut t = Stmts {
            next_id: u32::MAX - 2,
            ..t
        };
        let ids: Vec<u32> = (0..4)
            .map(|i| t.add(100 + i, b"SELECT 'new'".to_vec(), 0, 1))
            .collect();
        // u32::MAX is LAST_STMT_ID and 0 is no id; 1 is taken
        assert_eq!(ids, [u32::MAX - 2, u32::MAX - 1, 2, 3]);
        let mut p = execute(live, 0, None);
        assert_eq!(t.map(&mut p), Ok(live));
        assert_eq!(
            get_u32(&p, STMT_ID_AT),
            Some(1),
            "the live statement kept its id"
        );
    }

    #[test]
    fn after_a_move_the_first_execute_binds_the_types_bound_before() {
        let mut t = Stmts::default();
        let id = t.add(5, b"SELECT ?, ?".to_vec(), 2, 2);
        let types = [3, 0, 253, 0];
        assert_eq!(t.bind_types(id, &execute(id, 2, Some(&types)), false), None);
        assert_eq!(t.bind_types(id, &execute(id, 2, None), false), None);
        t.moved(&[(id, 9)]);
        let rewritten = t.bind_types(id, &execute(id, 2, None), false).unwrap();
        assert_eq!(rewritten, execute(id, 2, Some(&types)));
        assert_eq!(t.bind_types(id, &execute(id, 2, None), false), None);
        assert_eq!(t.bind_types(id, &[cmd::STMT_EXECUTE], false), None);
    }

    #[test]
    fn an_execute_in_the_replay_log_has_the_client_id_and_the_types_it_ran_with() {
        let mut t = Stmts::default();
        let id = t.add(5, b"SELECT ?, ?".to_vec(), 2, 2);
        let types = [3, 0, 253, 0];
        let mut first = execute(id, 2, Some(&types));
        t.map(&mut first).unwrap();
        t.bind_types(id, &first, false);
        assert_eq!(t.replay_payload(id, &first), execute(id, 2, Some(&types)));
        // the client relies on the types bound before: the log binds them itself
        let mut next = execute(id, 2, None);
        t.map(&mut next).unwrap();
        assert_eq!(get_u32(&next, STMT_ID_AT), Some(5));
        assert_eq!(t.replay_payload(id, &next), execute(id, 2, Some(&types)));
        let none = t.add(6, b"SELECT 1".to_vec(), 0, 1);
        assert_eq!(
            t.replay_payload(none, &execute(6, 0, None)),
            execute(none, 0, None)
        );
    }

    #[test]
    fn cursors_and_long_data_follow_the_commands() {
        let mut t = Stmts::default();
        let id = t.add(1, b"SELECT 1".to_vec(), 0, 1);
        t.long_data_sent(id);
        assert!(t.iter().any(|(_, s)| s.long_data));
        t.executed(id, false, status::CURSOR_EXISTS);
        assert!(t.iter().all(|(_, s)| !s.long_data && s.cursor));
        t.fetched(id, false, 0);
        assert!(t.iter().any(|(_, s)| s.cursor));
        t.fetched(id, false, status::LAST_ROW_SENT);
        assert!(t.iter().all(|(_, s)| !s.cursor));
        t.executed(id, false, status::CURSOR_EXISTS);
        t.reset(id);
        assert!(t.iter().all(|(_, s)| !s.cursor));
        assert!(t.runs(id).is_some_and(|r| !r.changes));
        assert!(t.runs(id + 1).is_none());
        let mut p = execute(id, 0, None);
        p[EXECUTE_FLAGS_AT] = 1;
        assert!(wants_cursor(&p));
    }
}
