//! A login the client abandoned (it left, broke the protocol, or ran past `proxy.login_timeout`),
//! finished cleanly on the backend so the server never counts an aborted connect.
//!
//! MariaDB and MySQL count a connection that ends mid-handshake against the peer's host and,
//! after `max_connect_errors`, block that host — here the proxy's own address, for every user.
//! An answered login, even one refused, is not counted. So the relay keeps track of whose turn
//! it is in the backend's login ([`Turn`]) and, when the client is gone, plays the client's part
//! to the end as the health probe does: a handshake response for `health_check.probe_user` with
//! no password (after the SSL request and the TLS handshake under `backends.tls`, so a server
//! that requires TLS sees a TLS login), empty answers to any further auth request, `COM_QUIT` if
//! let in.

use switchyard::wire::{
    caps, charset, cmd, code, marker, put_packet, sqlstate, Frame, Greeting, HandshakeError,
    PacketError, Response, NATIVE_PASSWORD,
};
use tracing::debug;

use super::Relay;
use crate::mysql::backend::Backend;

/// Whose packet the backend's login waits for, and its sequence id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Turn {
    /// The server owes packet `seq` (0: the greeting).
    Server(u8),
    /// The server waits for the client's packet `seq` (1: the handshake response).
    Client(u8),
    /// The login is over (OK or ERR seen, or the backend broke).
    Done,
}

/// Sequence id of the handshake response.
const RESPONSE_SEQ: u8 = 1;
/// `caching_sha2_password`'s "fast auth succeeded" after [`marker::AUTH_MORE_DATA`]: the server
/// goes on to its OK without waiting for the client.
const FAST_AUTH_OK: u8 = 3;
/// Server packets answered at most while finishing a login (a greeting, auth switches).
const MAX_ROUNDS: usize = 4;
/// The max packet size the probe login announces.
const PROBE_MAX_PACKET: u32 = 16 << 20;
/// What the probe login (and its SSL request) says the client can do.
const PROBE_CAPS: u32 =
    caps::MYSQL | caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH;

impl Turn {
    /// The turn after the server sent `f` (not OK or ERR) during the auth exchange; `next` is the
    /// sequence id after it.
    pub(crate) fn after_server(f: &Frame, next: u8) -> Turn {
        match f.first() {
            marker::OK | marker::ERR => Turn::Done,
            marker::AUTH_MORE_DATA if f.payload().get(1) == Some(&FAST_AUTH_OK) => {
                Turn::Server(next)
            }
            _ => Turn::Client(next),
        }
    }
}

/// What the client is told when its login runs past `proxy.login_timeout`.
const LOGIN_TIMEOUT_MSG: &str = "switchyard: login did not finish within proxy.login_timeout";

impl Relay {
    /// Tells a client whose login ran past `proxy.login_timeout` why it is closed, where the
    /// protocol lets the server speak: in place of the greeting (sequence 0, no SQL state, as a
    /// server does before the handshake) or where the client waits for the server's answer. A
    /// client that owes the next packet is just closed, as MariaDB itself does.
    pub(super) async fn tell_login_timeout(&mut self) {
        match self.turn {
            Turn::Server(0) => {
                let mut p = vec![marker::ERR];
                p.extend_from_slice(&code::ER_HANDSHAKE_ERROR.to_le_bytes());
                p.extend_from_slice(LOGIN_TIMEOUT_MSG.as_bytes());
                self.client.out.clear();
                put_packet(&mut self.client.out, 0, &p);
                let _ = self.client.flush().await;
            }
            Turn::Server(seq) => {
                self.client.out.clear();
                self.client
                    .send_err(
                        seq.wrapping_add(self.seq_shift),
                        code::ER_HANDSHAKE_ERROR,
                        sqlstate::COMM_LINK_FAILURE,
                        LOGIN_TIMEOUT_MSG,
                    )
                    .await;
            }
            Turn::Client(_) | Turn::Done => {}
        }
    }

    /// Finishes the backend's login after the client abandoned it (see the module docs), within
    /// `connect_timeout`. Nothing to do once the login is over; nothing clean to do when a write
    /// to the backend was cut short (its buffer still holds bytes of unknown fate).
    pub(super) async fn finish_abandoned_login(&mut self) {
        if self.turn == Turn::Done {
            return;
        }
        if !self.backend.out.is_empty() {
            debug!(conn_id = self.id, backend = %self.backend.addr, "a login write was cut short; closing the backend as is");
            return;
        }
        let limit = self.cfg.connect_timeout;
        let user = self.cfg.probe_user.as_str();
        let turn = self.turn;
        match tokio::time::timeout(limit, sign_off(&mut self.backend, turn, user)).await {
            Ok(Ok(())) => {
                debug!(conn_id = self.id, backend = %self.backend.addr, ?turn, "abandoned login finished on the backend")
            }
            Ok(Err(e)) => {
                debug!(conn_id = self.id, backend = %self.backend.addr, ?turn, error = %e, "could not finish the abandoned login")
            }
            Err(_) => {
                debug!(conn_id = self.id, backend = %self.backend.addr, ?turn, "finishing the abandoned login timed out")
            }
        }
        self.turn = Turn::Done;
    }
}

/// Plays the client's part of `backend`'s login from `turn` to its end.
async fn sign_off(backend: &mut Backend, turn: Turn, user: &str) -> Result<(), HandshakeError> {
    let mut turn = turn;
    for _ in 0..MAX_ROUNDS {
        match turn {
            Turn::Done => return Ok(()),
            Turn::Client(RESPONSE_SEQ) if backend.owes_tls() => {
                // where the client's own login would have started TLS
                let caps = backend.server_caps;
                let seq = backend
                    .start_tls(caps, PROBE_CAPS, PROBE_MAX_PACKET, charset::UTF8_GENERAL_CI)
                    .await?;
                let next = put_packet(&mut backend.out, seq, &probe_response(user, caps::SSL));
                backend.flush().await.map_err(PacketError::from)?;
                turn = Turn::Server(next);
            }
            Turn::Client(seq) => {
                let payload = if seq == RESPONSE_SEQ {
                    probe_response(user, 0)
                } else {
                    Vec::new() // an empty auth answer: a refused login, not a broken one
                };
                let next = put_packet(&mut backend.out, seq, &payload);
                backend.flush().await.map_err(PacketError::from)?;
                turn = Turn::Server(next);
            }
            Turn::Server(seq) => {
                let f = backend.reader.frame_seq(seq).await?;
                turn = match f.first() {
                    marker::PROTOCOL_V10 if seq == 0 => {
                        backend.server_caps = Greeting::parse(f.payload()).map_or(0, |g| g.caps);
                        Turn::Client(RESPONSE_SEQ)
                    }
                    marker::OK if seq > 0 => {
                        put_packet(&mut backend.out, 0, &[cmd::QUIT]);
                        backend.flush().await.map_err(PacketError::from)?;
                        Turn::Done
                    }
                    _ => Turn::after_server(&f, seq.wrapping_add(1)),
                };
            }
        }
    }
    Ok(())
}

/// A protocol-4.1 handshake response for `user` with no password, as the health probe sends;
/// `extra_caps` is `CLIENT_SSL` after a TLS upgrade.
fn probe_response(user: &str, extra_caps: u32) -> Vec<u8> {
    let login = Response {
        caps: PROBE_CAPS | extra_caps,
        max_packet: PROBE_MAX_PACKET,
        charset: charset::UTF8_GENERAL_CI,
        user: user.to_string(),
        auth: Vec::new(),
        plugin: NATIVE_PASSWORD.to_string(),
    };
    login.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Frame {
        Frame::new(2, payload)
    }

    #[test]
    fn after_a_server_packet_the_turn_follows_the_auth_exchange() {
        assert_eq!(Turn::after_server(&frame(&[0x00, 0, 0]), 3), Turn::Done);
        assert_eq!(
            Turn::after_server(&frame(&[0xFF, 0x15, 0x04]), 3),
            Turn::Done
        );
        let switch = [&[0xFE][..], b"mysql_native_password\0salt"].concat();
        assert_eq!(Turn::after_server(&frame(&switch), 3), Turn::Client(3));
        assert_eq!(
            Turn::after_server(&frame(&[0x01, 0x04]), 5),
            Turn::Client(5),
            "perform full auth: the client answers"
        );
        assert_eq!(
            Turn::after_server(&frame(&[0x01, FAST_AUTH_OK]), 5),
            Turn::Server(5),
            "fast auth: the server's OK follows"
        );
    }

    #[test]
    fn the_probe_response_parses_as_a_passwordless_native_login() {
        let mut p = probe_response("switchyard_check", 0);
        let r = Response::parse_and_sanitize(&mut p).expect("a valid handshake response");
        assert_eq!(r.user, "switchyard_check");
        assert!(r.auth.is_empty());
        assert_eq!(r.plugin, NATIVE_PASSWORD);
    }
}
