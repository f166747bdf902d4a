//! One client command: parse it, run the session's hook before it, forward it, relay its
//! response packet by packet (the tracker says where it ends), run the session's hook after it.
//!
//! The relay never reaches into the session: the `before` hook returns a [`Hook`] naming what
//! the response must settle (a query's pending effects, a statement id), and `after` hands it
//! back to the session with what the response said (error, status flags).

use switchyard::wire::{cmd, code, get_cstr, get_u16, marker, sqlstate, Frame, PacketError};
use tracing::debug;

use super::failover::InFlight;
use super::{backend_err, client_err, End, Relay};
use crate::mysql::session::long_text::EffectWatch;
use crate::mysql::session::stmts::UnknownStmt;
use crate::mysql::session::{stmts, Outcome, Pending};
use crate::mysql::tracker::{Kind, Next};
use crate::mysql::Credential;

/// Commands whose responses the proxy cannot follow: the session becomes a plain byte relay.
const RAW_COMMANDS: &[u8] = &[
    cmd::BINLOG_DUMP,
    cmd::TABLE_DUMP,
    cmd::CONNECT_OUT,
    cmd::REGISTER_SLAVE,
    cmd::BINLOG_DUMP_GTID,
    cmd::STMT_BULK_EXECUTE,
];

/// Bytes queued for the client before a long response is flushed mid-way.
const CLIENT_FLUSH_AT: usize = 256 * 1024;
/// Bytes queued for the backend before a long command (or `LOCAL INFILE` data) is flushed.
const BACKEND_FLUSH_AT: usize = 1 << 20;
/// Sequence id of the proxy's answer to a command it refuses.
const ANSWER_SEQ: u8 = 1;
/// Times one read is re-run after losses (each loss takes a backend out of the routes).
const MAX_RERUNS: u32 = 2;
/// The function whose value a re-attach restores, named in a statement that may set it.
const LAST_INSERT_ID: &[u8] = b"LAST_INSERT_ID";

/// What a command leaves for its `after` hook.
enum Hook {
    /// `COM_QUERY`: the scanned effects, applied once the response says whether it failed.
    Query(Pending),
    /// `COM_STMT_PREPARE`: the statement text, registered when the server's OK arrives.
    Prepare(Vec<u8>),
    /// `COM_STMT_EXECUTE` of this client statement id.
    Execute(u32),
    /// `COM_STMT_FETCH`.
    Fetch(u32),
    /// `COM_STMT_RESET`.
    ResetStmt(u32),
    /// `COM_STMT_SEND_LONG_DATA`.
    LongData(u32),
    /// `COM_STMT_CLOSE`.
    CloseStmt(u32),
    /// `COM_RESET_CONNECTION`.
    ResetConnection,
    /// `COM_CHANGE_USER`.
    ChangeUser,
    /// `COM_SET_OPTION` with this option (`None`: too short to carry one).
    SetOption(Option<u16>),
    /// A `COM_STMT_*` command naming a statement the session does not have: the proxy answers
    /// it as the server would, and it never reaches the backend.
    UnknownStmt(UnknownStmt),
    /// Nothing to settle.
    Nothing,
}

/// How MariaDB names the handler of each `COM_STMT_*` command that answers, in its
/// `ER_UNKNOWN_STMT_HANDLER` message; the others (close, long data) answer nothing.
fn stmt_handler(code: u8) -> Option<&'static str> {
    match code {
        cmd::STMT_EXECUTE => Some("mysqld_stmt_execute"),
        cmd::STMT_FETCH => Some("mysqld_stmt_fetch"),
        cmd::STMT_RESET => Some("mysqld_stmt_reset"),
        _ => None,
    }
}

impl Relay {
    /// Relays one client command and its response. When the backend is lost in flight, a read
    /// that may run again runs on the backend the session re-attaches to; anything else is
    /// answered with an error (see `failover`).
    pub(super) async fn command(&mut self, first: Frame) -> Result<(), End> {
        if self.answer_doomed(&first).await? {
            return Ok(());
        }
        let mut rerun = self.rerunnable(&first);
        let may_commit = self.may_commit(&first);
        let mut frame = first;
        let mut reruns = 0;
        loop {
            let writes = self.client.writes;
            let single = !frame.continued();
            let first_seq = frame.seq();
            let again = rerun.as_ref().map(|f| Frame::new(f.seq(), f.payload()));
            match self.command_once(frame, may_commit).await {
                Err(End::Backend(e)) if super::failover::is_loss(&e) => {
                    let sent = self.client.writes != writes;
                    let answer_seq = match single {
                        true => first_seq.wrapping_add(1),
                        false => self.tracker.next_seq(),
                    };
                    let may_rerun = reruns < MAX_RERUNS;
                    let rerun_now = rerun.take().filter(|_| may_rerun);
                    match self
                        .lost_in_flight(e, rerun_now, may_rerun, may_commit, sent, answer_seq)
                        .await?
                    {
                        InFlight::Answered => return Ok(()),
                        InFlight::Rerun(f) => {
                            reruns += 1;
                            rerun = again;
                            frame = f;
                        }
                    }
                }
                r => return r,
            }
        }
    }

    /// Relays one client command and its response, once; `may_commit`: inside a transaction it
    /// may end it (see [`Relay::may_commit`]).
    async fn command_once(&mut self, mut first: Frame, may_commit: bool) -> Result<(), End> {
        if first.seq() != 0 {
            return Err(End::Client(PacketError::Sequence {
                got: first.seq(),
                want: 0,
            }));
        }
        let code = first.first();
        let Some(kind) = Kind::of(code) else {
            return self.untracked(first).await;
        };
        let mut hook = self.before(code, &mut first);
        self.note_carried_changes(code, &hook, &first);
        if let Hook::UnknownStmt(id) = hook {
            return self.unknown_stmt(code, &first, id).await;
        }
        let (client_stmt, begins, closed) = match &hook {
            Hook::Execute(id) => (Some(*id), false, None),
            Hook::Query(p) => (None, p.may_begin_transaction(), None),
            Hook::CloseStmt(id) => (None, false, Some(*id)),
            _ => (None, false, None),
        };
        self.record_command(
            first.payload(),
            first.continued(),
            client_stmt,
            begins,
            may_commit,
        );
        // a query over 16 MiB: the scan saw its first packet, the watch sees the rest
        let mut watch =
            (code == cmd::QUERY && first.continued()).then(|| EffectWatch::after(first.payload()));
        let last = self.forward(&first, watch.as_mut()).await?;
        if let (Some(w), Hook::Query(pending)) = (&watch, &mut hook) {
            if w.hit() {
                pending.mark_unknown_effects();
            }
        }
        if code == cmd::QUIT {
            return Err(End::Quit);
        }
        let prepare_sql = match &mut hook {
            Hook::Prepare(sql) => Some(std::mem::take(sql)),
            _ => None,
        };
        self.relay_response(kind, last, prepare_sql).await?;
        let reset = self.after(kind, hook, &first);
        self.settle_log(first.payload(), first.continued(), may_commit, closed);
        if reset {
            // the reset took the proxy's session-tracking settings with it
            self.enable_tracking().await?;
        }
        Ok(())
    }

    /// What a command may change that the state kept for a re-attach does not show: the
    /// current schema, `LAST_INSERT_ID()`. Also lets a refused read of the state be tried again.
    fn note_carried_changes(&mut self, code: u8, hook: &Hook, first: &Frame) {
        if !self.cfg.failover.reattach {
            return;
        }
        let arg = first.payload().get(1..).unwrap_or_default();
        let names_insert_id = |sql: &[u8]| {
            sql.windows(LAST_INSERT_ID.len())
                .any(|w| w.eq_ignore_ascii_case(LAST_INSERT_ID))
        };
        match hook {
            Hook::Query(p) => {
                if !p.inert() {
                    self.state_may_have_changed();
                }
                if names_insert_id(arg) {
                    self.session.digest_changed();
                }
            }
            Hook::Execute(id) if self.session.stmt_sql(*id).is_some_and(names_insert_id) => {
                self.session.digest_changed();
            }
            Hook::ResetConnection | Hook::ChangeUser => self.state_may_have_changed(),
            _ if code == cmd::INIT_DB => self.session.digest_changed(),
            _ => {}
        }
    }

    /// A `COM_STMT_*` command naming a statement the session does not have: execute, fetch and
    /// reset get MariaDB's own error, close and long data nothing, as from the server. Never
    /// forwarded: after a move the number may name another of the session's statements there.
    async fn unknown_stmt(&mut self, code: u8, first: &Frame, id: UnknownStmt) -> Result<(), End> {
        let last = self.skip_rest(first).await?;
        debug!(
            conn_id = self.id,
            command = code,
            stmt = id.0,
            "unknown statement id"
        );
        let Some(handler) = stmt_handler(code) else {
            return Ok(());
        };
        let msg = format!(
            "Unknown prepared statement handler ({}) given to {handler}",
            id.0
        );
        self.client
            .answer_err(
                last.wrapping_add(1),
                code::ER_UNKNOWN_STMT_HANDLER,
                sqlstate::GENERAL,
                &msg,
            )
            .await
    }

    /// A command the tracker cannot follow: relayed as raw bytes from now on, or refused.
    async fn untracked(&mut self, first: Frame) -> Result<(), End> {
        if RAW_COMMANDS.contains(&first.first()) {
            return self.raw_relay(first).await;
        }
        self.client
            .send_err(
                ANSWER_SEQ,
                code::ER_UNKNOWN_COM_ERROR,
                sqlstate::COMM_LINK_FAILURE,
                "Unknown command",
            )
            .await;
        Ok(())
    }

    /// The session's hook before a command: what it may change, and statement-id mapping
    /// (which may rewrite the command).
    fn before(&mut self, code: u8, first: &mut Frame) -> Hook {
        let arg = first.payload().get(1..).unwrap_or_default();
        match code {
            cmd::QUERY => Hook::Query(self.session.before_query(arg)),
            cmd::STMT_PREPARE => {
                let sql = arg.to_vec();
                if first.continued() {
                    self.session.lose("prepared statement text over 16 MiB");
                }
                Hook::Prepare(sql)
            }
            cmd::STMT_EXECUTE
            | cmd::STMT_FETCH
            | cmd::STMT_CLOSE
            | cmd::STMT_RESET
            | cmd::STMT_SEND_LONG_DATA => match self.before_stmt(code, first) {
                Err(unknown) => Hook::UnknownStmt(unknown),
                Ok(id) => match code {
                    cmd::STMT_EXECUTE => Hook::Execute(id),
                    cmd::STMT_FETCH => Hook::Fetch(id),
                    cmd::STMT_CLOSE => Hook::CloseStmt(id),
                    cmd::STMT_RESET => Hook::ResetStmt(id),
                    _ => Hook::LongData(id),
                },
            },
            cmd::SET_OPTION => Hook::SetOption(get_u16(first.payload(), 1)),
            // commands that leave variables and schema alone
            cmd::QUIT
            | cmd::FIELD_LIST
            | cmd::STATISTICS
            | cmd::PROCESS_INFO
            | cmd::PROCESS_KILL
            | cmd::PING => Hook::Nothing,
            cmd::RESET_CONNECTION => {
                self.session.mark_changed();
                Hook::ResetConnection
            }
            cmd::CHANGE_USER => {
                self.session.mark_changed();
                Hook::ChangeUser
            }
            // INIT_DB, CREATE_DB / DROP_DB (of the current schema), …: the schema is read
            // afresh at every move
            _ => Hook::Nothing,
        }
    }

    /// Maps a `COM_STMT_*` command's statement id to the backend's; for an execute, adds the
    /// parameter types a re-prepared statement needs and notes what it may change. Returns
    /// the client's statement id, or the id the session does not have.
    fn before_stmt(&mut self, code: u8, first: &mut Frame) -> Result<u32, UnknownStmt> {
        let id = self.session.map_stmt(first.payload_mut())?;
        if code != cmd::STMT_EXECUTE {
            return Ok(id);
        }
        if stmts::wants_cursor(first.payload()) {
            debug!(
                conn_id = self.id,
                stmt = id,
                "execute with a cursor requested"
            );
        }
        let rewritten = self
            .session
            .bind_stmt_types(id, first.payload(), first.continued());
        if let Some(payload) = rewritten {
            *first = Frame::new(0, &payload);
        }
        Ok(id)
    }

    /// Sends the command and its continuation packets to the backend (showing those to `watch`,
    /// when given); returns the sequence id of its last packet.
    async fn forward(
        &mut self,
        first: &Frame,
        mut watch: Option<&mut EffectWatch>,
    ) -> Result<u8, End> {
        let mut last = first.seq();
        let mut total = first.payload().len();
        let mut more = first.continued();
        self.backend.relay(first).await.map_err(backend_err)?;
        while more {
            if self.backend.out.len() >= BACKEND_FLUSH_AT {
                self.backend.flush().await.map_err(backend_err)?;
            }
            let f = self.continuation(last, &mut total).await?;
            if let Some(w) = watch.as_deref_mut() {
                w.feed(f.payload());
            }
            last = f.seq();
            more = f.continued();
            self.backend.relay(&f).await.map_err(backend_err)?;
        }
        self.backend.flush().await.map_err(backend_err)?;
        Ok(last)
    }

    /// Reads and drops the continuation packets of a command the proxy answers itself; returns
    /// the sequence id of its last packet.
    pub(super) async fn skip_rest(&mut self, first: &Frame) -> Result<u8, End> {
        let mut last = first.seq();
        let mut total = first.payload().len();
        let mut more = first.continued();
        while more {
            let f = self.continuation(last, &mut total).await?;
            last = f.seq();
            more = f.continued();
        }
        Ok(last)
    }

    /// The client packet continuing one with sequence id `last`, counted into the command's
    /// `total` length (bounded by `max_packet`).
    async fn continuation(&mut self, last: u8, total: &mut usize) -> Result<Frame, End> {
        let f = self
            .client
            .reader
            .frame_seq(last.wrapping_add(1))
            .await
            .map_err(client_err)?;
        *total += f.payload().len();
        if *total > self.cfg.max_packet {
            return Err(End::Client(PacketError::TooLarge {
                len: *total,
                max: self.cfg.max_packet,
            }));
        }
        Ok(f)
    }

    /// The session's hook after a command: what the response says. True when the server reset
    /// the session.
    fn after(&mut self, kind: Kind, hook: Hook, first: &Frame) -> bool {
        let (error, flags) = (self.tracker.error, self.tracker.status);
        // the flags of the last OK or EOF the server sent, in this response or before it (an
        // intermediate OK of a multi-statement query that then failed counts)
        self.session.set_status(flags);
        if matches!(kind, Kind::Query | Kind::Execute) {
            self.session.statement_ended(error);
        }
        match hook {
            Hook::Query(pending) => {
                let outcome = Outcome {
                    error,
                    results: self.tracker.results,
                };
                self.session.after_query(pending, outcome);
            }
            Hook::Execute(id) => {
                self.session.stmt_executed(id, error, flags);
                self.session.stmt_ran(id, error);
            }
            Hook::Fetch(id) => self.session.stmt_fetched(id, error, flags),
            Hook::ResetStmt(id) => self.session.reset_stmt(id),
            Hook::LongData(id) => self.session.stmt_long_data(id),
            Hook::CloseStmt(id) => self.session.close_stmt(id),
            Hook::ResetConnection if !error => {
                self.session.reset();
                return true;
            }
            Hook::ChangeUser => return self.after_change_user(first),
            Hook::Prepare(_) if error => self.session.prepare_failed(),
            Hook::SetOption(Some(option)) if !error => self.session.set_option(option),
            Hook::ResetConnection
            | Hook::Prepare(_)
            | Hook::SetOption(_)
            | Hook::UnknownStmt(_)
            | Hook::Nothing => {}
        }
        false
    }

    /// `COM_CHANGE_USER` let the client in as another user: the session starts over, and can
    /// move only if that user has a usable entry in `mysql.users`. True when it did.
    fn after_change_user(&mut self, first: &Frame) -> bool {
        if !self.tracker.auth_ok {
            return false;
        }
        self.session.reset();
        let Some(login) = self.login.as_mut() else {
            return true;
        };
        let mut pos = 1;
        let user = String::from_utf8_lossy(get_cstr(first.payload(), &mut pos)).into_owned();
        login.secret = match self.cfg.users.get(&user) {
            Some(Credential::Secret(s)) => Some(*s),
            _ => None,
        };
        if login.secret.is_none() {
            debug!(conn_id = self.id, user = %user, "changed user cannot move (no cleartext-derived secret)");
        }
        login.response.user = user;
        true
    }

    /// Relays the response to a command whose last packet carried `last`. A prepare's OK gets
    /// the client's statement id instead of the backend's.
    async fn relay_response(
        &mut self,
        kind: Kind,
        last: u8,
        mut prepare_sql: Option<Vec<u8>>,
    ) -> Result<(), End> {
        let mut next = self.tracker.start(kind, last);
        loop {
            match next {
                Next::Done => break,
                Next::Server => {
                    let mut f = self.backend_frame().await?;
                    self.tracker.check_seq(&f).map_err(backend_err)?;
                    next = self.tracker.on_server(&f).map_err(backend_err)?;
                    self.record_answer(f.payload());
                    self.status_packet(&mut f);
                    if let Some(ok) = self.tracker.prepared {
                        if f.first() == marker::OK && !f.continued() {
                            if let Some(sql) = prepare_sql.take() {
                                let id = self
                                    .session
                                    .add_stmt(ok.stmt_id, sql, ok.params, ok.columns);
                                stmts::write_id(f.payload_mut(), id);
                            }
                        }
                    }
                    self.client.relay(&f).await?;
                    if self.client.out.len() >= CLIENT_FLUSH_AT {
                        self.client.flush().await?;
                    }
                }
                Next::Client => {
                    self.record_infile();
                    self.client.flush().await?;
                    let f = self.client.reader.frame().await.map_err(client_err)?;
                    self.tracker.check_seq(&f).map_err(End::Client)?;
                    next = self.tracker.on_client(&f);
                    self.backend.relay(&f).await.map_err(backend_err)?;
                    if next != Next::Client || self.backend.out.len() >= BACKEND_FLUSH_AT {
                        self.backend.flush().await.map_err(backend_err)?;
                    }
                }
                Next::Either => next = self.auth_turn().await?,
            }
        }
        self.client.flush().await
    }

    /// One packet of an auth exchange inside a command (`COM_CHANGE_USER`), from whichever side
    /// speaks: the plugin decides.
    async fn auth_turn(&mut self) -> Result<Next, End> {
        self.client.flush().await?;
        self.backend.flush().await.map_err(backend_err)?;
        tokio::select! {
            f = self.backend.reader.frame() => {
                let mut f = f.map_err(backend_err)?;
                self.tracker.check_seq(&f).map_err(backend_err)?;
                let next = self.tracker.on_server(&f).map_err(backend_err)?;
                self.status_packet(&mut f);
                self.client.out.extend_from_slice(f.raw());
                Ok(next)
            }
            f = self.client.reader.frame() => {
                let f = f.map_err(client_err)?;
                self.tracker.check_seq(&f).map_err(End::Client)?;
                self.backend.out.extend_from_slice(f.raw());
                Ok(Next::Either)
            }
        }
    }

    /// The next backend packet; flushes what the client is owed before waiting for the network.
    async fn backend_frame(&mut self) -> Result<Frame, End> {
        loop {
            if let Some(f) = self.backend.reader.try_frame().map_err(backend_err)? {
                return Ok(f);
            }
            self.client.flush().await?;
            self.backend.reader.fill().await.map_err(backend_err)?;
        }
    }
}
