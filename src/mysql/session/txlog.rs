//! The open transaction's replay log: the state the session was in when its transaction began,
//! every command the client sent since, and a checksum of each answer it received. A session
//! whose backend is lost mid-transaction restores that state on a new backend, runs the log
//! again and goes on only if every answer is the same (`relay::replay` does the I/O).
//!
//! A plain structure the relay feeds before, during and after each command, so it is tested
//! without sockets. It holds nothing while no transaction is open, is never touched when replay
//! is off, and never keeps more than `failover.max_replay_bytes` of commands: past that it only
//! counts, and the transaction is no longer replayable.

use std::collections::hash_map::DefaultHasher;
use std::hash::Hasher;

use switchyard::wire::{cmd, get_lenenc, get_lenenc_str, get_u16, get_u32};

use super::snapshot::Snapshot;
use super::stmts::wants_cursor;
use crate::mysql::tracker::Carrier;

/// Bytes counted for each logged command beside its payload (its checksum, its place in the
/// list), so a transaction of many tiny statements is bounded too.
const ENTRY_OVERHEAD: usize = 16;
/// Where a `COM_STMT_*` payload carries its statement id.
const STMT_ID_AT: usize = 1;
/// Where a 4.1 EOF packet carries its warning count.
const EOF_WARNINGS_AT: usize = 1;
/// Checksum tags keeping the kinds of packet of one answer apart.
const TAG_PACKET: u8 = 0;
const TAG_OK: u8 = 1;
const TAG_EOF: u8 = 2;

/// Why a transaction whose log began cannot be replayed.
const UNRECORDED_START: &str = "the transaction began in a command the proxy did not record";
const UNRECORDED: &str = "a statement the proxy did not record";
const LONG_COMMAND: &str = "a statement over one packet";
const CURSOR: &str = "an execute that opened a cursor, or a fetch from one";
const LONG_DATA: &str = "prepared statement long data";
const CLOSED_STMT: &str = "a prepared statement executed in the transaction was closed";
const OTHER_COMMAND: &str = "a command other than a query or a statement execute";
/// Why a command in flight could not be replayed.
const IN_FLIGHT_UNRECORDED: &str = "the statement in flight was not recorded";

/// Why a transaction cannot be replayed; the log then only counts its bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotReplayable {
    /// Its commands passed `failover.max_replay_bytes`.
    #[error("the transaction's commands passed failover.max_replay_bytes")]
    Overflow,
    /// It ran something a replay cannot repeat, or began where its state was not exactly known.
    #[error("{0}")]
    Unreplayable(&'static str),
}

/// What the log does with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Kept and replayed: a query, or an execute of a binary statement, in one packet.
    Logged,
    /// Left out: it changes nothing a transaction holds and reads none of its data (a ping, a
    /// prepare — the re-attach re-prepares every statement —, a close, a statement reset).
    Harmless,
    /// A replay cannot repeat it: the transaction is no longer replayable.
    Unreplayable(&'static str),
}

/// What the log does with the command whose first packet has this payload (`continued`: more
/// packets follow).
pub fn classify(payload: &[u8], continued: bool) -> Class {
    match payload.first().copied() {
        Some(cmd::QUERY | cmd::STMT_EXECUTE) if continued => Class::Unreplayable(LONG_COMMAND),
        Some(cmd::QUERY) => Class::Logged,
        Some(cmd::STMT_EXECUTE) if wants_cursor(payload) => Class::Unreplayable(CURSOR),
        Some(cmd::STMT_EXECUTE) => Class::Logged,
        Some(cmd::PING | cmd::STMT_PREPARE | cmd::STMT_CLOSE | cmd::STMT_RESET | cmd::QUIT) => {
            Class::Harmless
        }
        Some(cmd::STMT_FETCH) => Class::Unreplayable(CURSOR),
        Some(cmd::STMT_SEND_LONG_DATA) => Class::Unreplayable(LONG_DATA),
        _ => Class::Unreplayable(OTHER_COMMAND),
    }
}

/// A running checksum of one answer, over what the client reads from it: result sets (column
/// definitions and rows) and ERR packets byte for byte, an OK's affected rows, last insert id,
/// warnings and message, an EOF's warnings. Status flags and session-state information are left
/// out: they may differ between two servers that gave the client the same answer.
#[derive(Debug, Clone, Default)]
pub struct AnswerSum {
    hasher: DefaultHasher,
}

impl AnswerSum {
    /// An empty checksum.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one packet of the answer; `carrier` is what the tracker said it was.
    pub fn feed(&mut self, payload: &[u8], carrier: Carrier) {
        let h = &mut self.hasher;
        match carrier {
            Carrier::Ok => match ok_fields(payload) {
                Some(ok) => {
                    h.write_u8(TAG_OK);
                    h.write_u64(ok.affected_rows);
                    h.write_u64(ok.last_insert_id);
                    h.write_u16(ok.warnings);
                    h.write_usize(ok.message.len());
                    h.write(ok.message);
                }
                None => packet(h, payload),
            },
            Carrier::Eof => {
                h.write_u8(TAG_EOF);
                h.write_u16(get_u16(payload, EOF_WARNINGS_AT).unwrap_or(0));
            }
            Carrier::None => packet(h, payload),
        }
    }

    /// The checksum of what was fed.
    pub fn finish(&self) -> u64 {
        self.hasher.finish()
    }
}

/// A packet hashed byte for byte, its length first so packet boundaries count.
fn packet(h: &mut DefaultHasher, payload: &[u8]) {
    h.write_u8(TAG_PACKET);
    h.write_usize(payload.len());
    h.write(payload);
}

/// The fields of an OK packet the client reads.
struct OkFields<'a> {
    affected_rows: u64,
    last_insert_id: u64,
    warnings: u16,
    message: &'a [u8],
}

/// An OK packet's fields (also the OK that ends rows under `CLIENT_DEPRECATE_EOF`); the message
/// is length-encoded (servers write it so with or without `CLIENT_SESSION_TRACK`), or the rest of
/// the packet when it is not.
fn ok_fields(p: &[u8]) -> Option<OkFields<'_>> {
    let mut pos = 1;
    let affected_rows = get_lenenc(p, &mut pos)?;
    let last_insert_id = get_lenenc(p, &mut pos)?;
    let warnings = get_u16(p, pos + 2)?;
    pos += 4;
    let rest = p.get(pos..).unwrap_or_default();
    let message = match get_lenenc_str(p, &mut pos) {
        Some(Some(m)) => m,
        Some(None) => &[],
        None => rest,
    };
    Some(OkFields {
        affected_rows,
        last_insert_id,
        warnings,
        message,
    })
}

/// One command of the transaction, as the client sent it (binary statements under the client's
/// ids, with their parameter types bound), and the checksum of its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The command packet's payload.
    pub payload: Vec<u8>,
    /// [`AnswerSum`] of the answer the client received.
    pub checksum: u64,
}

/// The state a transaction begins from, or why it is not exactly known.
pub type Start = Result<Snapshot, &'static str>;

/// The command in flight, being recorded.
#[derive(Debug)]
struct Recording {
    payload: Vec<u8>,
    sum: AnswerSum,
    /// When a transaction may begin with this command: the state it begins from.
    start: Option<Start>,
    /// Its answer showed it cannot be replayed (`LOAD DATA LOCAL INFILE`).
    refused: Option<&'static str>,
}

/// The log of the open transaction. Invariant: while `refused` is `None`, `start` is set;
/// once it is set, `start` and `entries` are dropped and only `bytes` goes on counting.
#[derive(Debug)]
struct Open {
    start: Option<Snapshot>,
    entries: Vec<Entry>,
    bytes: usize,
    refused: Option<NotReplayable>,
}

impl Open {
    fn new(start: Start) -> Self {
        let (start, refused) = match start {
            Ok(s) => (Some(s), None),
            Err(why) => (None, Some(NotReplayable::Unreplayable(why))),
        };
        Self {
            start,
            entries: Vec::new(),
            bytes: 0,
            refused,
        }
    }

    fn refuse(&mut self, why: NotReplayable) {
        if self.refused.is_none() {
            self.refused = Some(why);
        }
        self.start = None;
        self.entries = Vec::new();
    }

    /// Adds the command that just ended (`rec`: its recording, if it was recorded).
    fn append(&mut self, rec: Option<Recording>, class: Class, len: usize, max: usize) {
        let rec = match class {
            Class::Harmless => return,
            Class::Unreplayable(why) => {
                self.bytes = self.bytes.saturating_add(len + ENTRY_OVERHEAD);
                self.refuse(NotReplayable::Unreplayable(why));
                return;
            }
            Class::Logged => rec,
        };
        let rec = match rec {
            Some(r) if self.refused.is_none() => r,
            _ => {
                self.bytes = self.bytes.saturating_add(len + ENTRY_OVERHEAD);
                self.refuse(NotReplayable::Unreplayable(UNRECORDED));
                return;
            }
        };
        self.bytes = self
            .bytes
            .saturating_add(rec.payload.len() + ENTRY_OVERHEAD);
        if let Some(why) = rec.refused {
            self.refuse(NotReplayable::Unreplayable(why));
        } else if self.bytes > max {
            self.refuse(NotReplayable::Overflow);
        } else {
            let checksum = rec.sum.finish();
            self.entries.push(Entry {
                payload: rec.payload,
                checksum,
            });
        }
    }
}

/// What the relay says about a command once its answer is complete.
#[derive(Debug, Clone, Copy)]
pub struct After {
    /// A transaction is open after it (the server's status says so).
    pub open: bool,
    /// It may have ended the transaction open before it (a `COMMIT`, an implicit commit): a
    /// transaction open after it began inside it.
    pub ends: bool,
    /// What the log does with it ([`classify`]).
    pub class: Class,
    /// Its first packet's payload length, counted when it was not recorded.
    pub len: usize,
    /// When a transaction began with it: state the session holds that a re-attach cannot carry
    /// (a temporary table, a lock, …), which makes the transaction unreplayable.
    pub pinned: Option<&'static str>,
}

/// The replay log of one session (see the module docs).
#[derive(Debug)]
pub struct TxLog {
    enabled: bool,
    max_bytes: usize,
    open: Option<Box<Open>>,
    current: Option<Box<Recording>>,
}

/// A replay taken out of the log: the state to restore, the commands to run, and the command
/// lost in flight to run after them. Put back with [`TxLog::resume`] when every answer matched.
#[derive(Debug)]
pub struct Replay {
    log: Box<Open>,
    start: Snapshot,
    /// The log was open (otherwise the transaction was to begin with the command in flight).
    was_open: bool,
    /// The command lost in flight, to run again once the log matched.
    pub rerun: Option<Vec<u8>>,
}

impl Replay {
    /// The state the transaction began from.
    pub fn start(&self) -> &Snapshot {
        &self.start
    }

    /// The commands to run, in order.
    pub fn entries(&self) -> &[Entry] {
        &self.log.entries
    }

    /// Bytes the log counted.
    pub fn bytes(&self) -> usize {
        self.log.bytes
    }
}

impl TxLog {
    /// A log keeping at most `max_bytes` of commands; `enabled` false: it never records.
    pub fn new(enabled: bool, max_bytes: usize) -> Self {
        Self {
            enabled,
            max_bytes,
            open: None,
            current: None,
        }
    }

    /// Whether transactions are logged at all (`failover.replay_transactions`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether a transaction is open and logged (replayable or not).
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Whether the open transaction can still be replayed: its commands are worth recording.
    pub fn replayable(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.refused.is_none())
    }

    /// Why the open transaction cannot be replayed (`None` while it can, or none is open).
    pub fn refused(&self) -> Option<&NotReplayable> {
        self.open.as_ref().and_then(|o| o.refused.as_ref())
    }

    /// Bytes of commands counted for the open transaction.
    pub fn bytes(&self) -> usize {
        self.open.as_ref().map_or(0, |o| o.bytes)
    }

    /// Starts recording the command about to be forwarded (`payload`: as the log keeps it);
    /// `start`: when a transaction may begin with it, the state it begins from.
    pub fn record(&mut self, payload: Vec<u8>, start: Option<Start>) {
        if !self.enabled {
            return;
        }
        self.current = Some(Box::new(Recording {
            payload,
            sum: AnswerSum::new(),
            start,
            refused: None,
        }));
    }

    /// Whether a command is being recorded.
    pub fn recording(&self) -> bool {
        self.current.is_some()
    }

    /// Forgets a recording that never settled (a new command starts).
    pub fn forget_current(&mut self) {
        self.current = None;
    }

    /// One packet of the recorded command's answer, as the tracker classed it.
    pub fn feed(&mut self, payload: &[u8], carrier: Carrier) {
        if let Some(rec) = &mut self.current {
            rec.sum.feed(payload, carrier);
        }
    }

    /// The recorded command's answer showed that it cannot be replayed.
    pub fn refuse_current(&mut self, why: &'static str) {
        if let Some(rec) = &mut self.current {
            rec.refused = Some(why);
        }
    }

    /// The command's answer is complete: the transaction it leaves open (if any) is logged, one
    /// that ended is forgotten.
    pub fn settle(&mut self, after: After) {
        let mut rec = self.current.take().map(|b| *b);
        if !self.enabled {
            return;
        }
        if !after.open {
            self.open = None;
            return;
        }
        if let (Some(log), false) = (&mut self.open, after.ends) {
            log.append(rec, after.class, after.len, self.max_bytes);
            return;
        }
        // a transaction began with this command
        let start = rec
            .as_mut()
            .and_then(|r| r.start.take())
            .unwrap_or(Err(UNRECORDED_START));
        let start = match after.pinned {
            Some(why) => Err(why),
            None => start,
        };
        let mut log = Open::new(start);
        log.append(rec, after.class, after.len, self.max_bytes);
        self.open = Some(Box::new(log));
    }

    /// `COM_STMT_CLOSE` of client statement `id`: a transaction that executed it cannot be
    /// replayed (the re-attach re-prepares only the statements the session still has).
    pub fn closed_stmt(&mut self, id: u32) {
        let Some(log) = &mut self.open else {
            return;
        };
        let executed = log.entries.iter().any(|e| {
            e.payload.first() == Some(&cmd::STMT_EXECUTE)
                && get_u32(&e.payload, STMT_ID_AT) == Some(id)
        });
        if executed {
            log.refuse(NotReplayable::Unreplayable(CLOSED_STMT));
        }
    }

    /// The transaction ended without a command saying so (its backend was lost): forgotten.
    pub fn clear(&mut self) {
        self.open = None;
        self.current = None;
    }

    /// Takes the replay out of the log: between commands (`in_flight` false) the open
    /// transaction's; with a command lost in flight, also that command, to run after it — or,
    /// when no transaction was open yet, only that command, from the state it was to begin from.
    pub fn take_for_replay(&mut self, in_flight: bool) -> Result<Replay, NotReplayable> {
        let rec = match in_flight {
            true => match self.current.take() {
                Some(rec) => Some(*rec),
                None => return Err(NotReplayable::Unreplayable(IN_FLIGHT_UNRECORDED)),
            },
            false => None,
        };
        if let Some(why) = rec.as_ref().and_then(|r| r.refused) {
            return Err(NotReplayable::Unreplayable(why));
        }
        let (mut log, was_open) = match self.open.take() {
            Some(log) => (log, true),
            None => {
                let start = rec
                    .as_ref()
                    .and_then(|r| r.start.clone())
                    .unwrap_or(Err(UNRECORDED_START));
                (Box::new(Open::new(start)), false)
            }
        };
        let start = match (&log.refused, log.start.take()) {
            (None, Some(start)) => start,
            (refused, _) => {
                let why = refused
                    .clone()
                    .unwrap_or(NotReplayable::Unreplayable(UNRECORDED_START));
                if was_open {
                    self.open = Some(log);
                }
                return Err(why);
            }
        };
        Ok(Replay {
            log,
            start,
            was_open,
            rerun: rec.map(|r| r.payload),
        })
    }

    /// Puts back a replay whose answers all matched: the transaction goes on, logged as before.
    pub fn resume(&mut self, replay: Replay) {
        let Replay {
            mut log,
            start,
            was_open,
            ..
        } = replay;
        if was_open {
            log.start = Some(start);
            self.open = Some(log);
        }
    }
}

#[cfg(test)]
mod tests;
