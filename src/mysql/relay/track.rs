//! The server's session tracking, for the proxy: turned on right after every login and reset
//! (the client never sees the proxy's `SET`), read from every OK packet of a response, and
//! hidden from a client that did not ask for `CLIENT_SESSION_TRACK` — so it sees exactly the
//! packets a direct connection would.

use switchyard::wire::{
    clear_eof_state_flag, eof_status, has_session_state, parse_ok, session_state, state_changes,
    status, strip_session_state, Frame,
};
use tracing::debug;

use super::{backend_err, BackendError, End, Relay};
use crate::mysql::backend::QueryError;
use crate::mysql::session::carry::TRACKING_SQL;
use crate::mysql::tracker::Carrier;

/// `@@in_transaction`: whether the server has a transaction open for the session.
const IN_TRANSACTION_SQL: &str = "SELECT @@in_transaction";

impl Relay {
    /// Turns the server's session tracking on for this session, when the backend negotiated
    /// `CLIENT_SESSION_TRACK`. A server that refuses the settings leaves the session untracked
    /// (the conservative path: the scan decides what a move reads).
    pub(super) async fn enable_tracking(&mut self) -> Result<(), End> {
        if !self.backend.session_track {
            self.session.set_tracking(false);
            return Ok(());
        }
        match self.backend.query(TRACKING_SQL).await {
            Ok(_) => self.session.set_tracking(true),
            Err(QueryError::Server(e)) => {
                debug!(conn_id = self.id, backend = %self.backend.addr, error = %e, "session tracking refused; session state is read at each move");
                self.session.set_tracking(false);
            }
            Err(e) => return Err(backend_err(BackendError::Proxy(e))),
        }
        Ok(())
    }

    /// Reads what a status packet of a response says about the session (session-state
    /// information in an OK, or an EOF saying some waits for the next OK), and hides it from a
    /// client that did not ask for it. Call after the tracker has seen the packet.
    pub(super) fn status_packet(&mut self, f: &mut Frame) {
        if self.tracker.carrier == Carrier::Ok
            && parse_ok(f.payload()).is_some_and(|ok| ok.last_insert_id != 0)
        {
            // LAST_INSERT_ID() may have changed: the state kept for a re-attach is read again
            self.session.digest_changed();
        }
        if !self.backend.session_track {
            return;
        }
        match self.tracker.carrier {
            Carrier::None => {}
            Carrier::Ok => {
                let p = f.payload();
                match session_state(p) {
                    Some(state) => self.session.server_reports(state_changes(state)),
                    // the flag is set but the information is cut short: read everything
                    None if has_session_state(p) => self.session.mark_changed(),
                    None => {}
                }
                // an OK delivers every report the server held
                self.session.reports_pending(false);
                if !self.client_tracks {
                    if let Some(plain) = strip_session_state(p) {
                        *f = Frame::new(f.seq(), &plain);
                    }
                }
            }
            Carrier::Eof => {
                let flags = eof_status(f.payload()).unwrap_or(0);
                if flags & status::SESSION_STATE_CHANGED != 0 {
                    self.session.reports_pending(true);
                    if !self.client_tracks {
                        clear_eof_state_flag(f.payload_mut());
                    }
                }
            }
        }
    }

    /// Asks the server whether a transaction is open, after a failed command left it unknown
    /// (a multi-statement or `CALL` may have begun one before failing). A server error counts
    /// as "open": the session then keeps its backend until its next command says otherwise.
    pub(super) async fn verify_transaction(&mut self) -> Result<(), End> {
        let open = match self.backend.query(IN_TRANSACTION_SQL).await {
            Ok(rows) => {
                let v = rows.first().and_then(|r| r.first()).cloned().flatten();
                v.as_deref() != Some(b"0")
            }
            Err(QueryError::Server(e)) => {
                debug!(conn_id = self.id, error = %e, "transaction check failed; treating the session as in a transaction");
                true
            }
            Err(e) => return Err(backend_err(BackendError::Proxy(e))),
        };
        self.session.verified(open);
        Ok(())
    }
}
