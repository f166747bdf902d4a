//! The first login, passed through: the first backend authenticates the client itself.
//!
//! The proxy forwards the greeting (with the capabilities it cannot follow hidden — TLS among
//! them, since frontend TLS is not offered in this version), the client's handshake response
//! (asking for `CLIENT_SESSION_TRACK` on the proxy's behalf when the server offers it:
//! capability flags are not covered by any auth scramble) and any auth-switch exchange. It
//! reads only what a later login needs: user, capabilities, character set, and — for users configured with only a `password_hash` — the
//! `mysql_native_password` scramble, from which `SHA1(password)` is recovered and checked against
//! the hash. The cleartext password is never seen, kept or logged.

use switchyard::wire::{
    caps, code, marker, parse_auth_switch, sqlstate, strip_session_state, Frame, Greeting,
    HandshakeError, NativeSecret, PacketError, Response, MAX_PAYLOAD, NATIVE_PASSWORD,
};
use tracing::{debug, info, warn};

use super::{backend_err, client_err, End, Login, Relay, Turn};
use crate::mysql::backend::LOGIN_MAX_PAYLOAD;
use crate::mysql::tracker::Tracker;
use crate::mysql::Credential;

/// Sequence id of the client's handshake response (the greeting is 0).
const RESPONSE_SEQ: u8 = 1;
/// Sequence id of the first packet after the handshake response: the server's answer (or the
/// proxy's own refusal).
const AFTER_RESPONSE_SEQ: u8 = 2;

/// How the auth exchange went, and what the proxy saw of it.
struct Auth {
    /// The server let the client in.
    ok: bool,
    /// The plugin the exchange ended with.
    plugin: String,
    /// The salt that plugin answered.
    salt: Vec<u8>,
    /// The client's `mysql_native_password` scramble of `salt`, when that was the plugin.
    scramble: Option<Vec<u8>>,
}

impl Relay {
    /// Passes the login through, then sets the session up for relaying (or ends it).
    pub(super) async fn login(&mut self) -> Result<(), End> {
        self.set_max_payload(LOGIN_MAX_PAYLOAD);
        let greeting = self.pass_greeting().await?;
        let response = self.pass_response(&greeting).await?;
        let auth = self.pass_auth(&greeting, &response).await?;
        self.set_max_payload(MAX_PAYLOAD);
        if !auth.ok {
            info!(conn_id = self.id, client = %self.peer, user = %response.user, "login refused by the backend");
            return Err(End::LoginFailed);
        }
        let negotiated = response.caps & greeting.caps & !caps::HIDDEN;
        let secret = self.movable_secret(&response.user, &auth);
        self.tracker = Tracker::new(negotiated);
        self.backend.deprecate_eof = negotiated & caps::DEPRECATE_EOF != 0;
        debug!(conn_id = self.id, client = %self.peer, backend = %self.backend.addr, user = %response.user, movable = secret.is_some(), "logged in");
        self.login = Some(Login {
            response,
            negotiated,
            secret,
        });
        Ok(())
    }

    /// Packets of a login are small; a long one is hostile (and refused from its header).
    fn set_max_payload(&mut self, max: usize) {
        self.backend.reader.set_max_payload(max);
        self.client.reader.set_max_payload(max);
    }

    /// The backend's greeting, with hidden capabilities removed, to the client. An ERR
    /// greeting (too many connections, host blocked) goes to the client as is and ends the
    /// session.
    async fn pass_greeting(&mut self) -> Result<Greeting, End> {
        let mut g = self
            .backend
            .reader
            .frame_seq(0)
            .await
            .map_err(backend_err)?;
        let greeting = Greeting::parse(g.payload());
        if let Ok(greeting) = &greeting {
            greeting.sanitize(g.payload_mut());
        }
        self.turn = match greeting {
            Ok(_) => Turn::Client(RESPONSE_SEQ),
            Err(_) => Turn::Done,
        };
        self.client.out.extend_from_slice(g.raw());
        self.client.flush().await?;
        greeting.map_err(backend_err)
    }

    /// The client's handshake response, sanitized and asking for `CLIENT_SESSION_TRACK` when the
    /// server offers it, to the backend. A TLS request or a malformed response is answered by
    /// the proxy and ends the session.
    async fn pass_response(&mut self, greeting: &Greeting) -> Result<Response, End> {
        let mut r = self
            .client
            .reader
            .frame_seq(RESPONSE_SEQ)
            .await
            .map_err(client_err)?;
        let response = match Response::parse_and_sanitize(r.payload_mut()) {
            Ok(resp) => resp,
            Err(HandshakeError::TlsRequested) => {
                self.client
                    .send_err(
                        AFTER_RESPONSE_SEQ,
                        code::ER_ACCESS_DENIED_ERROR,
                        sqlstate::COMM_LINK_FAILURE,
                        "switchyard: TLS is not offered by this proxy",
                    )
                    .await;
                return Err(End::LoginFailed);
            }
            Err(e) => {
                self.client
                    .send_err(
                        AFTER_RESPONSE_SEQ,
                        code::ER_HANDSHAKE_ERROR,
                        sqlstate::COMM_LINK_FAILURE,
                        "Bad handshake",
                    )
                    .await;
                return Err(End::Client(PacketError::Malformed(match e {
                    HandshakeError::Response(m) => m,
                    _ => "handshake response",
                })));
            }
        };
        self.client_tracks = response.caps & caps::SESSION_TRACK != 0;
        self.backend.session_track = greeting.caps & caps::SESSION_TRACK != 0;
        if self.backend.session_track && !self.client_tracks {
            if let Some(b) = r.payload_mut().get_mut(..4) {
                let forwarded = response.caps | caps::SESSION_TRACK;
                b.copy_from_slice(&forwarded.to_le_bytes());
            }
        }
        self.backend.out.extend_from_slice(r.raw());
        self.backend.flush().await.map_err(backend_err)?;
        self.turn = Turn::Server(AFTER_RESPONSE_SEQ);
        Ok(response)
    }

    /// Relays the auth exchange, either side speaking as the plugin decides, until the server's
    /// OK or ERR.
    async fn pass_auth(&mut self, greeting: &Greeting, response: &Response) -> Result<Auth, End> {
        let mut seq = AFTER_RESPONSE_SEQ;
        let mut auth = Auth {
            ok: false,
            plugin: response.plugin.clone(),
            salt: greeting.salt.clone(),
            scramble: (response.plugin == NATIVE_PASSWORD).then(|| response.auth.clone()),
        };
        loop {
            tokio::select! {
                f = self.backend.reader.frame() => {
                    let mut f = f.map_err(backend_err)?;
                    check_seq(&f, &mut seq).map_err(backend_err)?;
                    self.turn = Turn::after_server(&f, seq);
                    if f.first() == marker::OK && self.backend.session_track && !self.client_tracks {
                        if let Some(plain) = strip_session_state(f.payload()) {
                            f = Frame::new(f.seq(), &plain);
                        }
                    }
                    self.client.out.extend_from_slice(f.raw());
                    self.client.flush().await?;
                    if let Some(ok) = server_auth_packet(&f, &mut auth) {
                        auth.ok = ok;
                        return Ok(auth);
                    }
                }
                f = self.client.reader.frame() => {
                    let f = f.map_err(client_err)?;
                    check_seq(&f, &mut seq).map_err(End::Client)?;
                    if auth.plugin == NATIVE_PASSWORD && auth.scramble.is_none() {
                        auth.scramble = Some(f.payload().to_vec());
                    }
                    self.backend.out.extend_from_slice(f.raw());
                    self.backend.flush().await.map_err(backend_err)?;
                    self.turn = Turn::Server(seq);
                }
            }
        }
    }

    /// The secret a move logs in with, when `mysql.users` has one for `user` that matches the
    /// client's own login; `None` (the session cannot move) otherwise.
    fn movable_secret(&self, user: &str, auth: &Auth) -> Option<NativeSecret> {
        let native = auth.plugin == NATIVE_PASSWORD;
        match self.cfg.users.get(user) {
            None => {
                debug!(conn_id = self.id, user = %user, "user not in mysql.users: session cannot move");
                None
            }
            Some(Credential::Secret(s)) => {
                let matches =
                    !native || auth.scramble.as_deref() == Some(&s.scramble(&auth.salt)[..]);
                if !matches {
                    warn!(conn_id = self.id, user = %user, "configured password does not match the client's login: session cannot move");
                }
                matches.then_some(*s)
            }
            Some(Credential::Hash(h)) => {
                let s = auth
                    .scramble
                    .as_deref()
                    .filter(|_| native)
                    .and_then(|a| NativeSecret::recover(a, &auth.salt, h));
                if s.is_none() {
                    warn!(conn_id = self.id, user = %user, plugin = %auth.plugin, "could not recover a native-password secret matching password_hash: session cannot move");
                }
                s
            }
        }
    }
}

/// Reads a server packet of the auth exchange: `Some(true)` for OK, `Some(false)` for ERR, and
/// `None` while it goes on (an auth switch changes the plugin and salt).
fn server_auth_packet(f: &Frame, auth: &mut Auth) -> Option<bool> {
    match f.first() {
        marker::OK => Some(true),
        marker::ERR => Some(false),
        marker::AUTH_SWITCH => {
            let (plugin, salt) = parse_auth_switch(f.payload());
            auth.plugin = plugin;
            auth.salt = salt;
            auth.scramble = None;
            None
        }
        _ => None,
    }
}

/// Checks that `f` carries sequence id `seq`, and moves `seq` on.
fn check_seq(f: &Frame, seq: &mut u8) -> Result<(), PacketError> {
    if f.seq() != *seq {
        return Err(PacketError::Sequence {
            got: f.seq(),
            want: *seq,
        });
    }
    *seq = seq.wrapping_add(1);
    Ok(())
}
