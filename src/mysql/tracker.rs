//! Response tracking: where the server's answer to each command ends, and who speaks next.
//!
//! The proxy may only move a session between commands, so it must know the exact packet that
//! ends every response: OK/ERR, text and binary result sets with and without
//! `CLIENT_DEPRECATE_EOF`, multi-results (`SERVER_MORE_RESULTS_EXISTS`), prepare responses,
//! cursor fetches, `LOAD DATA LOCAL INFILE` (the client speaks mid-response), `COM_CHANGE_USER`
//! (an authentication exchange), `COM_STATISTICS` (a bare string) and commands with no response.
//! It is a pure state machine over physical packets, so it is tested without sockets.

use switchyard::wire::{
    caps, cmd, get_arr, get_lenenc, is_terminator, marker, parse_ok, status, terminator_status,
    Frame, PacketError,
};

/// How a command is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Result sets, OK or ERR, maybe several; `LOAD DATA LOCAL` possible.
    Query,
    /// `COM_STMT_PREPARE`: OK with parameter and column definitions, or ERR.
    Prepare,
    /// `COM_STMT_EXECUTE`: like a query, but a result set may stop at its metadata when a
    /// cursor opens.
    Execute,
    /// `COM_STMT_FETCH`: rows then a terminator, or ERR.
    Fetch,
    /// `COM_FIELD_LIST`: column definitions then a terminator, or ERR.
    FieldList,
    /// One packet, whatever it is (`COM_STATISTICS`).
    OnePacket,
    /// One OK, EOF or ERR packet.
    Simple,
    /// No response at all (`COM_STMT_CLOSE`, `COM_STMT_SEND_LONG_DATA`, `COM_QUIT`).
    None,
    /// An authentication exchange ending in OK or ERR (`COM_CHANGE_USER`).
    Auth,
}

impl Kind {
    /// The response kind of command byte `c`; `None` for commands the proxy cannot follow.
    pub fn of(c: u8) -> Option<Kind> {
        Some(match c {
            cmd::QUERY | cmd::PROCESS_INFO => Kind::Query,
            cmd::STMT_PREPARE => Kind::Prepare,
            cmd::STMT_EXECUTE => Kind::Execute,
            cmd::STMT_FETCH => Kind::Fetch,
            cmd::FIELD_LIST => Kind::FieldList,
            cmd::STATISTICS => Kind::OnePacket,
            cmd::QUIT | cmd::STMT_CLOSE | cmd::STMT_SEND_LONG_DATA => Kind::None,
            cmd::CHANGE_USER => Kind::Auth,
            // INIT_DB, CREATE_DB, DROP_DB, REFRESH, SHUTDOWN, PROCESS_KILL, DEBUG, PING,
            // STMT_RESET, SET_OPTION, RESET_CONNECTION
            cmd::INIT_DB
            | cmd::CREATE_DB
            | cmd::DROP_DB
            | cmd::REFRESH
            | cmd::SHUTDOWN
            | cmd::PROCESS_KILL
            | cmd::DEBUG
            | cmd::PING
            | cmd::STMT_RESET
            | cmd::SET_OPTION
            | cmd::RESET_CONNECTION => Kind::Simple,
            _ => return None,
        })
    }
}

/// Who sends the next packet of the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// The server.
    Server,
    /// The client (`LOAD DATA LOCAL` contents).
    Client,
    /// Either (an authentication exchange: the plugin decides).
    Either,
    /// The response is complete.
    Done,
}

/// What the response to a prepare said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    /// The server's statement id.
    pub stmt_id: u32,
    /// Result columns.
    pub columns: u16,
    /// Parameters.
    pub params: u16,
}

/// A response that does not follow the protocol.
#[derive(Debug, thiserror::Error)]
#[error("unexpected server packet: {0}")]
pub struct TrackError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// First packet of a result: OK, ERR, `LOCAL INFILE` request or column count.
    ResultStart,
    /// Column definitions left; then (without `DEPRECATE_EOF`) an EOF.
    Columns(u64),
    ColumnsEof,
    Rows,
    /// The client is sending `LOCAL INFILE` contents until an empty packet.
    Infile,
    /// After the contents: OK or ERR.
    InfileResult,
    PrepareFirst,
    PrepareParams(u16, u16),
    PrepareParamsEof(u16),
    PrepareCols(u16),
    PrepareColsEof,
    FetchRows,
    One,
    Simple,
    Auth,
    Done,
}

/// What the last server packet was, as far as its status flags go: the relay reads session-state
/// information from OK packets and hides the flag that announces it from clients that did not
/// ask for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Not a packet with status flags (a row, a column definition, an ERR, …).
    None,
    /// An OK packet, or the OK that ends rows under `CLIENT_DEPRECATE_EOF`: status flags, then
    /// maybe session-state information.
    Ok,
    /// A 4.1 EOF packet: status flags at a fixed place, no room for session state.
    Eof,
}

/// Follows one command's response, packet by packet.
#[derive(Debug)]
pub struct Tracker {
    deprecate_eof: bool,
    kind: Kind,
    state: State,
    /// The previous server packet was a full 16 MiB one: this one continues it.
    continuing: bool,
    /// The previous client packet (`LOCAL INFILE` data) was a full 16 MiB one: the next one
    /// continues it, even when it is empty.
    client_continuing: bool,
    /// Sequence id the next packet (either side) must carry.
    next_seq: u8,
    /// Status flags of the last OK/EOF seen.
    pub status: u16,
    /// An ERR ended (part of) the response.
    pub error: bool,
    /// Set by a successful prepare.
    pub prepared: Option<PrepareOk>,
    /// Set when an auth exchange ended in OK.
    pub auth_ok: bool,
    /// What the last server packet was (see [`Carrier`]).
    pub carrier: Carrier,
    /// Results completed in this response (an OK, or a result set's last row): in a
    /// multi-statement query that failed, the statements before the failing one.
    pub results: u32,
}

impl Tracker {
    /// A tracker for a session whose negotiated capabilities are `caps`.
    pub fn new(negotiated: u32) -> Self {
        Self {
            deprecate_eof: negotiated & caps::DEPRECATE_EOF != 0,
            kind: Kind::Simple,
            state: State::Done,
            continuing: false,
            client_continuing: false,
            next_seq: 0,
            status: status::AUTOCOMMIT,
            error: false,
            prepared: None,
            auth_ok: false,
            carrier: Carrier::None,
            results: 0,
        }
    }

    /// True when no response is in progress.
    pub fn idle(&self) -> bool {
        self.state == State::Done
    }

    /// The sequence id the next packet must carry.
    pub fn next_seq(&self) -> u8 {
        self.next_seq
    }

    /// Starts a command of kind `kind` whose (last) packet carried `last_seq`.
    pub fn start(&mut self, kind: Kind, last_seq: u8) -> Next {
        self.kind = kind;
        self.continuing = false;
        self.client_continuing = false;
        self.error = false;
        self.prepared = None;
        self.auth_ok = false;
        self.carrier = Carrier::None;
        self.results = 0;
        self.next_seq = last_seq.wrapping_add(1);
        self.state = match kind {
            Kind::Query | Kind::Execute => State::ResultStart,
            Kind::Prepare => State::PrepareFirst,
            Kind::Fetch | Kind::FieldList => State::FetchRows,
            Kind::OnePacket => State::One,
            Kind::Simple => State::Simple,
            Kind::None => State::Done,
            Kind::Auth => State::Auth,
        };
        self.next()
    }

    fn next(&self) -> Next {
        match self.state {
            State::Done => Next::Done,
            State::Infile => Next::Client,
            State::Auth => Next::Server,
            _ => Next::Server,
        }
    }

    /// Checks the sequence id of the next packet, from either side.
    pub fn check_seq(&mut self, f: &Frame) -> Result<(), PacketError> {
        if f.seq() != self.next_seq {
            return Err(PacketError::Sequence {
                got: f.seq(),
                want: self.next_seq,
            });
        }
        self.next_seq = self.next_seq.wrapping_add(1);
        Ok(())
    }

    fn end_result(&mut self, st: u16) {
        self.status = st;
        self.results = self.results.saturating_add(1);
        self.state = if st & status::MORE_RESULTS != 0 {
            State::ResultStart
        } else {
            State::Done
        };
    }

    /// Feeds the next server packet (its sequence id already checked).
    pub fn on_server(&mut self, f: &Frame) -> Result<Next, TrackError> {
        let p = f.payload();
        self.carrier = Carrier::None;
        if self.continuing {
            self.continuing = f.continued();
            return Ok(self.next());
        }
        self.continuing = f.continued();
        let head = p.first().copied();
        let deprecate = self.deprecate_eof;
        match self.state {
            State::ResultStart | State::InfileResult => match head {
                Some(marker::OK) if !f.continued() => {
                    let ok = parse_ok(p).ok_or(TrackError("short OK"))?;
                    self.carrier = Carrier::Ok;
                    self.end_result(ok.status);
                }
                Some(marker::ERR) => self.fail(),
                Some(marker::LOCAL_INFILE) if self.state == State::ResultStart => {
                    self.state = State::Infile
                }
                _ if self.state == State::InfileResult => {
                    return Err(TrackError("expected OK or ERR after LOCAL INFILE data"))
                }
                _ => {
                    let mut pos = 0;
                    let n = get_lenenc(p, &mut pos).ok_or(TrackError("bad column count"))?;
                    if n == 0 {
                        return Err(TrackError("zero column count"));
                    }
                    self.state = State::Columns(n);
                }
            },
            State::Columns(n) => {
                if head == Some(marker::ERR) {
                    self.fail();
                } else if n > 1 {
                    self.state = State::Columns(n - 1);
                } else {
                    self.state = if deprecate {
                        State::Rows
                    } else {
                        State::ColumnsEof
                    };
                }
            }
            State::ColumnsEof => match head {
                Some(marker::EOF) => {
                    let st = terminator_status(p, false).ok_or(TrackError("short EOF"))?;
                    self.status = st;
                    self.carrier = Carrier::Eof;
                    if self.kind == Kind::Execute && st & status::CURSOR_EXISTS != 0 {
                        self.state = State::Done;
                    } else {
                        self.state = State::Rows;
                    }
                }
                Some(marker::ERR) => self.fail(),
                _ => return Err(TrackError("expected EOF after column definitions")),
            },
            State::Rows | State::FetchRows => {
                if head == Some(marker::ERR) {
                    self.fail();
                } else if is_terminator(p, deprecate) {
                    let st =
                        terminator_status(p, deprecate).ok_or(TrackError("short terminator"))?;
                    self.carrier = if deprecate { Carrier::Ok } else { Carrier::Eof };
                    if self.state == State::FetchRows {
                        self.status = st;
                        self.state = State::Done;
                    } else {
                        self.end_result(st);
                    }
                }
            }
            State::PrepareFirst => match head {
                Some(marker::OK) => {
                    let id = get_arr::<4>(p, 1).ok_or(TrackError("short prepare OK"))?;
                    let cols = get_arr::<2>(p, 5).ok_or(TrackError("short prepare OK"))?;
                    let params = get_arr::<2>(p, 7).ok_or(TrackError("short prepare OK"))?;
                    let ok = PrepareOk {
                        stmt_id: u32::from_le_bytes(id),
                        columns: u16::from_le_bytes(cols),
                        params: u16::from_le_bytes(params),
                    };
                    self.prepared = Some(ok);
                    self.after_params(ok.params, ok.columns, true);
                }
                Some(marker::ERR) => self.fail(),
                _ => return Err(TrackError("expected prepare OK or ERR")),
            },
            State::PrepareParams(left, cols) => self.after_params(left - 1, cols, false),
            State::PrepareParamsEof(cols) => {
                if head != Some(marker::EOF) {
                    return Err(TrackError("expected EOF after parameter definitions"));
                }
                self.carrier = Carrier::Eof;
                self.after_cols(cols, false);
            }
            State::PrepareCols(left) => self.after_cols(left - 1, true),
            State::PrepareColsEof => {
                if head != Some(marker::EOF) {
                    return Err(TrackError("expected EOF after column definitions"));
                }
                self.carrier = Carrier::Eof;
                self.state = State::Done;
            }
            State::One => self.state = State::Done,
            State::Simple => match head {
                Some(marker::OK) | Some(marker::EOF) => {
                    let ok_layout = head == Some(marker::OK) || deprecate;
                    if let Some(st) = terminator_status(p, ok_layout) {
                        self.status = st;
                        self.carrier = if ok_layout { Carrier::Ok } else { Carrier::Eof };
                    }
                    self.state = State::Done;
                }
                Some(marker::ERR) => self.fail(),
                _ => return Err(TrackError("expected OK, EOF or ERR")),
            },
            State::Auth => match head {
                Some(marker::OK) => {
                    if let Some(ok) = parse_ok(p) {
                        self.status = ok.status;
                        self.carrier = Carrier::Ok;
                    }
                    self.auth_ok = true;
                    self.state = State::Done;
                }
                Some(marker::ERR) => self.fail(),
                // auth switch or more data: the plugin decides who speaks next
                _ => return Ok(Next::Either),
            },
            State::Infile | State::Done => return Err(TrackError("packet after the response")),
        }
        Ok(self.next())
    }

    /// Feeds the next client packet within a response (`LOCAL INFILE` data or an auth reply).
    /// The data ends with an empty packet — but an empty packet right after a full 16 MiB one
    /// only ends that logical packet (a chunk of exactly 16 MiB − 1 bytes is sent that way).
    pub fn on_client(&mut self, f: &Frame) -> Next {
        if self.state == State::Infile {
            let continuation = std::mem::replace(&mut self.client_continuing, f.continued());
            if f.payload().is_empty() && !continuation {
                self.state = State::InfileResult;
            }
        }
        self.next()
    }

    fn fail(&mut self) {
        self.error = true;
        self.state = State::Done;
    }

    fn after_params(&mut self, left: u16, cols: u16, first: bool) {
        let had_params = !first || left > 0;
        self.state = if left > 0 {
            State::PrepareParams(left, cols)
        } else if had_params && !self.deprecate_eof {
            State::PrepareParamsEof(cols)
        } else {
            return self.after_cols(cols, false);
        };
    }

    fn after_cols(&mut self, left: u16, had_cols: bool) {
        self.state = if left > 0 {
            State::PrepareCols(left)
        } else if had_cols && !self.deprecate_eof {
            State::PrepareColsEof
        } else {
            State::Done
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard::wire::{err_payload, put_packet, PacketReader, MAX_PAYLOAD};

    async fn frames(payloads: &[&[u8]]) -> Vec<Frame> {
        let mut wire = Vec::new();
        let mut seq = 1;
        for p in payloads {
            seq = put_packet(&mut wire, seq, p);
        }
        let mut r = PacketReader::new(&wire[..]);
        let mut out = Vec::new();
        while let Ok(f) = r.frame().await {
            out.push(f);
        }
        out
    }

    /// Feeds server packets; returns the index of the packet that ended the response.
    async fn run(t: &mut Tracker, kind: Kind, payloads: &[&[u8]]) -> Option<usize> {
        t.start(kind, 0);
        for (i, f) in frames(payloads).await.iter().enumerate() {
            t.check_seq(f).unwrap();
            if t.on_server(f).unwrap() == Next::Done {
                return Some(i);
            }
        }
        None
    }

    const OK: &[u8] = &[0, 0, 0, 2, 0, 0, 0];
    const OK_MORE: &[u8] = &[0, 0, 0, 0x0a, 0, 0, 0];
    const EOF: &[u8] = &[0xFE, 0, 0, 2, 0];
    const EOF_MORE: &[u8] = &[0xFE, 0, 0, 0x0a, 0];
    const OK_EOF: &[u8] = &[0xFE, 0, 0, 2, 0, 0, 0];
    const COL: &[u8] = b"\x03def\x00\x00\x00\x01a\x00\x0c";
    const ROW: &[u8] = b"\x011";

    #[tokio::test]
    async fn a_text_result_set_ends_at_its_eof_with_and_without_deprecate_eof() {
        let mut t = Tracker::new(caps::PROTOCOL_41);
        let r = run(
            &mut t,
            Kind::Query,
            &[b"\x02", COL, COL, EOF, ROW, ROW, EOF],
        )
        .await;
        assert_eq!(r, Some(6));
        let mut t = Tracker::new(caps::PROTOCOL_41 | caps::DEPRECATE_EOF);
        let r = run(&mut t, Kind::Query, &[b"\x01", COL, ROW, ROW, OK_EOF]).await;
        assert_eq!(r, Some(4));
    }

    #[tokio::test]
    async fn multi_results_continue_until_the_last_has_no_more_results_flag() {
        let mut t = Tracker::new(caps::PROTOCOL_41);
        let r = run(
            &mut t,
            Kind::Query,
            &[OK_MORE, b"\x01", COL, EOF, ROW, EOF_MORE, OK],
        )
        .await;
        assert_eq!(r, Some(6));
        let mut t = Tracker::new(caps::PROTOCOL_41);
        let err = err_payload(1064, "42000", "syntax");
        let r = run(&mut t, Kind::Query, &[OK_MORE, &err]).await;
        assert_eq!(r, Some(1));
        assert!(t.error);
    }

    #[tokio::test]
    async fn a_row_of_sixteen_mib_is_not_mistaken_for_a_terminator() {
        let mut big = vec![0xFEu8];
        big.extend(std::iter::repeat_n(b'x', MAX_PAYLOAD + 100));
        let mut t = Tracker::new(caps::PROTOCOL_41 | caps::DEPRECATE_EOF);
        let r = run(&mut t, Kind::Query, &[b"\x01", COL, &big, OK_EOF]).await;
        assert_eq!(r, Some(4));
    }

    #[tokio::test]
    async fn prepare_responses_count_parameters_and_columns() {
        let ok = [0, 7, 0, 0, 0, 1, 0, 2, 0, 0, 0, 0];
        let mut t = Tracker::new(caps::PROTOCOL_41);
        let r = run(&mut t, Kind::Prepare, &[&ok, COL, COL, EOF, COL, EOF]).await;
        assert_eq!(r, Some(5));
        assert_eq!(
            t.prepared,
            Some(PrepareOk {
                stmt_id: 7,
                columns: 1,
                params: 2
            })
        );
        let mut t = Tracker::new(caps::PROTOCOL_41 | caps::DEPRECATE_EOF);
        let r = run(&mut t, Kind::Prepare, &[&ok, COL, COL, COL]).await;
        assert_eq!(r, Some(3));
        let none = [0, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut t = Tracker::new(caps::PROTOCOL_41);
        assert_eq!(run(&mut t, Kind::Prepare, &[&none]).await, Some(0));
    }

    #[tokio::test]
    async fn an_execute_that_opens_a_cursor_ends_after_its_metadata() {
        let cursor_eof = [0xFE, 0, 0, 0x42, 0];
        let mut t = Tracker::new(caps::PROTOCOL_41);
        let r = run(&mut t, Kind::Execute, &[b"\x01", COL, &cursor_eof]).await;
        assert_eq!(r, Some(2));
        assert_ne!(t.status & status::CURSOR_EXISTS, 0);
        let mut t = Tracker::new(caps::PROTOCOL_41);
        let r = run(&mut t, Kind::Fetch, &[b"\x00\x00\x01", EOF]).await;
        assert_eq!(r, Some(1));
    }

    #[tokio::test]
    async fn local_infile_hands_the_turn_to_the_client_until_an_empty_packet() {
        let mut t = Tracker::new(caps::PROTOCOL_41);
        t.start(Kind::Query, 0);
        let fs = frames(&[b"\xfbfile.csv"]).await;
        t.check_seq(&fs[0]).unwrap();
        assert_eq!(t.on_server(&fs[0]).unwrap(), Next::Client);
        let mut wire = Vec::new();
        put_packet(&mut wire, 2, b"1,2\n");
        put_packet(&mut wire, 3, b"");
        put_packet(&mut wire, 4, OK);
        let mut r = PacketReader::new(&wire[..]);
        let data = r.frame().await.unwrap();
        t.check_seq(&data).unwrap();
        assert_eq!(t.on_client(&data), Next::Client);
        let end = r.frame().await.unwrap();
        t.check_seq(&end).unwrap();
        assert_eq!(t.on_client(&end), Next::Server);
        let ok = r.frame().await.unwrap();
        t.check_seq(&ok).unwrap();
        assert_eq!(t.on_server(&ok).unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn an_empty_packet_continuing_a_full_infile_packet_does_not_end_the_data() {
        // issue 9.6: a chunk of exactly 16 MiB - 1 bytes is a full packet and an empty one
        let mut t = Tracker::new(caps::PROTOCOL_41);
        t.start(Kind::Query, 0);
        let fs = frames(&[b"\xfbfile.csv"]).await;
        t.check_seq(&fs[0]).unwrap();
        assert_eq!(t.on_server(&fs[0]).unwrap(), Next::Client);
        let mut wire = Vec::new();
        let seq = put_packet(&mut wire, 2, &vec![b'x'; MAX_PAYLOAD]);
        let seq = put_packet(&mut wire, seq, &vec![b'y'; 2 * MAX_PAYLOAD]);
        let seq = put_packet(&mut wire, seq, b"");
        put_packet(&mut wire, seq, OK);
        let mut r = PacketReader::new(&wire[..]);
        let mut turns = Vec::new();
        for _ in 0..6 {
            let f = r.frame().await.unwrap();
            t.check_seq(&f).unwrap();
            turns.push((f.payload().len(), t.on_client(&f)));
        }
        use Next::{Client, Server};
        assert_eq!(
            turns,
            [
                (MAX_PAYLOAD, Client),
                (0, Client),
                (MAX_PAYLOAD, Client),
                (MAX_PAYLOAD, Client),
                (0, Client),
                (0, Server),
            ]
        );
        let ok = r.frame().await.unwrap();
        t.check_seq(&ok).unwrap();
        assert_eq!(t.on_server(&ok).unwrap(), Next::Done);
    }

    #[tokio::test]
    async fn statistics_and_simple_commands_are_one_packet() {
        let mut t = Tracker::new(caps::PROTOCOL_41);
        assert_eq!(run(&mut t, Kind::OnePacket, &[b"Uptime: 5"]).await, Some(0));
        let mut t = Tracker::new(caps::PROTOCOL_41);
        assert_eq!(run(&mut t, Kind::Simple, &[EOF]).await, Some(0));
        let mut t = Tracker::new(caps::PROTOCOL_41);
        assert_eq!(t.start(Kind::None, 0), Next::Done);
    }

    #[tokio::test]
    async fn change_user_passes_auth_switches_until_ok() {
        let mut t = Tracker::new(caps::PROTOCOL_41);
        t.start(Kind::Auth, 0);
        let fs = frames(&[b"\xfemysql_native_password\x00salt", OK]).await;
        assert_eq!(t.on_server(&fs[0]).unwrap(), Next::Either);
        assert_eq!(t.on_server(&fs[1]).unwrap(), Next::Done);
        assert!(t.auth_ok);
    }
}
