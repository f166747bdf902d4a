//! The first login, passed through: the first backend authenticates the client itself.
//!
//! The proxy forwards the greeting (with the capabilities it cannot follow hidden, and TLS
//! offered only when `proxy.tls` is set: each side's TLS is the proxy's own), the client's
//! handshake response (asking for `CLIENT_SESSION_TRACK` on the proxy's behalf when the server
//! offers it: capability flags are not covered by any auth scramble) and any auth-switch
//! exchange. An SSL request from the client is answered with the TLS handshake here; with
//! `backends.tls` the proxy sends its own SSL request to the backend. A TLS upgrade takes a
//! sequence id, so when only one side has one the login's packets are renumbered. It
//! reads only what a later login needs: user, capabilities, character set, and — for users configured with only a `password_hash` — the
//! `mysql_native_password` scramble, from which `SHA1(password)` is recovered and checked against
//! the hash. The cleartext password is never seen, kept or logged.

use switchyard::wire::{
    caps, code, is_ssl_request, marker, parse_auth_switch, sqlstate, strip_session_state, Frame,
    Greeting, HandshakeError, NativeSecret, PacketError, Response, MAX_PAYLOAD, NATIVE_PASSWORD,
};
use tracing::{debug, info, warn};

use super::{backend_err, client_err, End, Login, Relay, Turn};
use crate::entry::{Stream, StreamRead, StreamWrite};
use crate::mysql::backend::LOGIN_MAX_PAYLOAD;
use crate::mysql::tracker::Tracker;
use crate::mysql::Credential;

/// Sequence id of the client's handshake response (the greeting is 0).
const RESPONSE_SEQ: u8 = 1;
/// What a plain client is told when `proxy.tls.required` is set.
const TLS_REQUIRED_MSG: &str =
    "Connections using insecure transport are prohibited while proxy.tls.required is set";

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
            self.backend.server_caps = greeting.caps;
            let offer = if self.cfg.front_tls.is_some() {
                caps::SSL
            } else {
                0
            };
            greeting.sanitize_offering(g.payload_mut(), offer);
        }
        self.turn = match greeting {
            Ok(_) => Turn::Client(RESPONSE_SEQ),
            Err(_) => Turn::Done,
        };
        self.client.out.extend_from_slice(g.raw());
        self.client.flush().await?;
        greeting.map_err(backend_err)
    }

    /// The client's handshake response (after its TLS handshake, when it asked for one),
    /// sanitized and asking for `CLIENT_SESSION_TRACK` when the server offers it, to the
    /// backend (after the backend's TLS handshake, with `backends.tls`). A TLS request the
    /// proxy cannot serve, a plain client where TLS is required, or a malformed response is
    /// answered by the proxy and ends the session.
    async fn pass_response(&mut self, greeting: &Greeting) -> Result<Response, End> {
        let mut client_seq = RESPONSE_SEQ;
        let mut r = self
            .client
            .reader
            .frame_seq(client_seq)
            .await
            .map_err(client_err)?;
        let front_tls = self.cfg.front_tls.clone();
        if is_ssl_request(r.payload()) {
            if let Some(tls) = &front_tls {
                self.accept_client_tls(tls).await?;
                client_seq = client_seq.wrapping_add(1);
                r = self
                    .client
                    .reader
                    .frame_seq(client_seq)
                    .await
                    .map_err(client_err)?;
            }
        } else if front_tls.as_ref().is_some_and(|t| t.required()) {
            self.client
                .send_err(
                    client_seq.wrapping_add(1),
                    code::ER_SECURE_TRANSPORT_REQUIRED,
                    sqlstate::GENERAL,
                    TLS_REQUIRED_MSG,
                )
                .await;
            return Err(End::TlsRequired);
        }
        let after_response = client_seq.wrapping_add(1);
        let response = match Response::parse_and_sanitize(r.payload_mut()) {
            Ok(resp) => resp,
            Err(HandshakeError::TlsRequested) => {
                self.client
                    .send_err(
                        after_response,
                        code::ER_ACCESS_DENIED_ERROR,
                        sqlstate::COMM_LINK_FAILURE,
                        "switchyard: TLS is not offered by this proxy (proxy.tls is not set)",
                    )
                    .await;
                return Err(End::LoginFailed);
            }
            Err(e) => {
                self.client
                    .send_err(
                        after_response,
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
        let backend_seq = match self
            .backend
            .start_tls(
                greeting.caps,
                response.caps,
                response.max_packet,
                response.charset,
            )
            .await
        {
            Ok(seq) => seq,
            Err(e) => {
                let msg = format!("switchyard: backend {}: {e}", self.backend.addr);
                self.client
                    .send_err(
                        after_response,
                        code::ER_UNKNOWN_ERROR,
                        sqlstate::COMM_LINK_FAILURE,
                        &msg,
                    )
                    .await;
                return Err(backend_err(e));
            }
        };
        let mut forwarded = response.caps;
        if self.backend.session_track && !self.client_tracks {
            forwarded |= caps::SESSION_TRACK;
        }
        if self.backend.reader.get_mut().is_tls() {
            forwarded |= caps::SSL;
        }
        if forwarded != response.caps {
            if let Some(b) = r.payload_mut().get_mut(..4) {
                b.copy_from_slice(&forwarded.to_le_bytes());
            }
        }
        self.seq_shift = client_seq.wrapping_sub(backend_seq);
        r.set_seq(backend_seq);
        self.backend.out.extend_from_slice(r.raw());
        self.backend.flush().await.map_err(backend_err)?;
        self.turn = Turn::Server(backend_seq.wrapping_add(1));
        Ok(response)
    }

    /// The client asked for TLS: the handshake, on the socket under the packet reader (with
    /// the bytes of it the reader already holds), then both halves are put back encrypted.
    async fn accept_client_tls(&mut self, tls: &crate::tls::FrontTls) -> Result<(), End> {
        let early = self.client.reader.take_buffered();
        let r = std::mem::replace(self.client.reader.get_mut().get_mut(), StreamRead::Gone);
        let w = std::mem::replace(self.client.writer.get_mut(), StreamWrite::Gone);
        let Some(Stream::Plain(tcp)) = Stream::reunite(r, w) else {
            return Err(End::Client(PacketError::Malformed("a second SSL request")));
        };
        let stream = tls
            .accept_after(tcp, &early)
            .await
            .map_err(End::ClientTls)?;
        let (r, w) = stream.into_split();
        *self.client.reader.get_mut().get_mut() = r;
        *self.client.writer.get_mut() = w;
        debug!(conn_id = self.id, client = %self.peer, "client TLS established");
        Ok(())
    }

    /// Relays the auth exchange, either side speaking as the plugin decides, until the server's
    /// OK or ERR.
    async fn pass_auth(&mut self, greeting: &Greeting, response: &Response) -> Result<Auth, End> {
        // the backend's sequence ids; the client's run `seq_shift` ahead
        let Turn::Server(mut seq) = self.turn else {
            return Err(backend_err(HandshakeError::Unexpected));
        };
        let shift = self.seq_shift;
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
                    f.set_seq(f.seq().wrapping_add(shift));
                    self.client.out.extend_from_slice(f.raw());
                    self.client.flush().await?;
                    if let Some(ok) = server_auth_packet(&f, &mut auth) {
                        auth.ok = ok;
                        return Ok(auth);
                    }
                }
                f = self.client.reader.frame() => {
                    let mut f = f.map_err(client_err)?;
                    let mut client_seq = seq.wrapping_add(shift);
                    check_seq(&f, &mut client_seq).map_err(End::Client)?;
                    f.set_seq(seq);
                    seq = seq.wrapping_add(1);
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
