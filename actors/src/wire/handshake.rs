//! The login exchange: the server's v10 greeting, the client's handshake response, auth switch
//! requests, and the `mysql_native_password` scramble.
//!
//! Read and written here so the health probe and the proxy agree on one layout. A proxy that
//! passes a login through reads only what a later login needs (user, capabilities, character set
//! and the scramble) and hides, in place, the capabilities whose wire format it does not follow.

use sha1::{Digest, Sha1};

use super::constants::{caps, charset, marker, status};
use super::fields::{get_arr, get_cstr, get_cstr_strict, get_lenenc, get_u16, put_lenenc};
use super::frame::PacketError;
use super::packets::ErrInfo;

/// The auth plugin the proxy and the probe log in with.
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// Bytes of a `mysql_native_password` salt and scramble.
pub const SCRAMBLE_LEN: usize = 20;
/// Bytes of the salt's first part, right after the connection id.
const SALT1_LEN: usize = 8;
/// Bytes of the salt's second part at the least (NUL included), whatever the length byte says.
const SALT2_MIN: usize = 13;
/// Reserved bytes after the auth-data length; MariaDB keeps its extended capabilities in the
/// last 4 of them.
const GREETING_RESERVED: usize = 6;
/// Bytes of MariaDB's extended capabilities (greeting and response).
const EXT_CAPS_LEN: usize = 4;
/// Handshake response: where the max packet size, the character set, MariaDB's extended
/// capabilities and the user name are. The bytes between the character set and the user are
/// filler (23), of which MariaDB uses the last 4.
const RESP_MAX_PACKET_AT: usize = 4;
const RESP_CHARSET_AT: usize = 8;
const RESP_EXT_CAPS_AT: usize = 28;
const RESP_USER_AT: usize = 32;
/// Filler bytes between the character set and the user name.
const RESP_FILLER: usize = RESP_USER_AT - RESP_CHARSET_AT - 1;

/// Why a handshake could not be read or completed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Framing error.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The greeting does not have the v10 shape.
    #[error("malformed greeting: {0}")]
    Greeting(&'static str),
    /// The greeting is of another protocol version than 10.
    #[error("unsupported protocol version {0} in greeting (want 10)")]
    Protocol(u8),
    /// The client's handshake response is malformed.
    #[error("malformed handshake response: {0}")]
    Response(&'static str),
    /// The client asked for TLS, which the proxy does not offer.
    #[error("client requested TLS, which this proxy does not offer")]
    TlsRequested,
    /// The server refused the connection or the login.
    #[error("login refused: {0}")]
    Refused(ErrInfo),
    /// The server sent a packet that has no place in a login.
    #[error("unexpected packet during login")]
    Unexpected,
    /// The server asked for an auth plugin the proxy cannot use.
    #[error("server asked for auth plugin {0}")]
    Plugin(String),
    /// The target would negotiate other capabilities than the session has.
    #[error("target capabilities differ from the session's ({0:#x} missing)")]
    Capabilities(u32),
    /// TLS with the server could not be set up (not offered, or the TLS handshake failed).
    #[error("TLS with the server: {0}")]
    Tls(String),
}

/// The SSL request a client sends (sequence 1) before its TLS handshake: the handshake
/// response's first fixed fields, `CLIENT_SSL` set, and nothing after the filler.
pub fn ssl_request(caps: u32, max_packet: u32, charset: u8) -> Vec<u8> {
    let mut p = Vec::with_capacity(RESP_USER_AT);
    p.extend_from_slice(&(caps | caps::SSL).to_le_bytes());
    p.extend_from_slice(&max_packet.to_le_bytes());
    p.push(charset);
    p.resize(RESP_USER_AT, 0);
    p
}

/// Whether a client's first packet is an SSL request (`CLIENT_SSL` and no user name after the
/// fixed fields) rather than a whole handshake response.
pub fn is_ssl_request(p: &[u8]) -> bool {
    let caps = get_arr(p, 0).map_or(0, u32::from_le_bytes);
    caps & caps::SSL != 0 && caps & caps::PROTOCOL_41 != 0 && p.len() <= RESP_USER_AT
}

/// SHA1 of the concatenation of `parts`.
pub fn sha1(parts: &[&[u8]]) -> [u8; SCRAMBLE_LEN] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What `mysql_native_password` needs to log in: `SHA1(password)` ("stage 1"). Equivalent to
/// the password for this plugin, so it lives only inside one session and is never logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NativeSecret([u8; SCRAMBLE_LEN]);

impl std::fmt::Debug for NativeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NativeSecret(..)")
    }
}

impl NativeSecret {
    /// From a cleartext password given in the configuration.
    pub fn from_password(pw: &str) -> Self {
        Self(sha1(&[pw.as_bytes()]))
    }

    /// `SHA1(SHA1(password))`: what `mysql.user` stores (as `*` + hex).
    pub fn stage2(&self) -> [u8; SCRAMBLE_LEN] {
        sha1(&[&self.0])
    }

    /// The client's answer to `salt`: `SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))`.
    pub fn scramble(&self, salt: &[u8]) -> [u8; SCRAMBLE_LEN] {
        xor(self.0, sha1(&[salt, &self.stage2()]))
    }

    /// Recovers `SHA1(pw)` from a client's scramble of `salt`, given the stored hash `stage2`;
    /// `None` when the scramble does not belong to that hash.
    pub fn recover(scramble: &[u8], salt: &[u8], stage2: &[u8; SCRAMBLE_LEN]) -> Option<Self> {
        let scramble: [u8; SCRAMBLE_LEN] = scramble.try_into().ok()?;
        let s1 = xor(scramble, sha1(&[salt, stage2]));
        (sha1(&[&s1]) == *stage2).then_some(Self(s1))
    }
}

fn xor(mut a: [u8; SCRAMBLE_LEN], b: [u8; SCRAMBLE_LEN]) -> [u8; SCRAMBLE_LEN] {
    for (o, m) in a.iter_mut().zip(b) {
        *o ^= m;
    }
    a
}

/// Parses `*<40 hex digits>` (as `mysql.user` stores it) into `SHA1(SHA1(pw))`.
pub fn parse_password_hash(s: &str) -> Option<[u8; SCRAMBLE_LEN]> {
    let hex = s.strip_prefix('*')?.as_bytes();
    if hex.len() != 2 * SCRAMBLE_LEN || !hex.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = [0u8; SCRAMBLE_LEN];
    for (o, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *o = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// The server version a greeting payload announces, or why it is no greeting: an ERR packet
/// (a server refusing us: too many connections, host blocked), another protocol, garbage.
pub fn server_version(p: &[u8]) -> Result<&[u8], HandshakeError> {
    match p.first() {
        Some(&marker::PROTOCOL_V10) => {
            let mut pos = 1;
            get_cstr_strict(p, &mut pos).ok_or(HandshakeError::Greeting(
                "server version is not NUL-terminated",
            ))
        }
        Some(&marker::ERR) => Err(ErrInfo::parse(p).map_or(
            HandshakeError::Greeting("ERR packet without an error code"),
            HandshakeError::Refused,
        )),
        Some(&v) => Err(HandshakeError::Protocol(v)),
        None => Err(HandshakeError::Greeting("empty greeting packet")),
    }
}

/// The fields of a v10 greeting, and where its capability bytes are.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// Server version string.
    pub version: String,
    /// The server's id for this connection.
    pub connection_id: u32,
    /// Server capabilities (lower and upper halves).
    pub caps: u32,
    /// The server's default character set / collation id.
    pub charset: u8,
    /// Server status flags.
    pub status: u16,
    /// The salt (20 bytes from real servers).
    pub salt: Vec<u8>,
    /// The default auth plugin.
    pub plugin: String,
    caps_lo: usize,
    caps_hi: usize,
    /// Where MariaDB's extended capabilities are (4 bytes), when present.
    ext_caps: Option<usize>,
}

impl Greeting {
    /// A greeting to send: protocol 4.1 with `caps`, `utf8mb4_general_ci`, autocommit on.
    pub fn new(version: &str, connection_id: u32, caps: u32, salt: [u8; SCRAMBLE_LEN]) -> Self {
        let caps_lo = 1 + version.len() + 1 + 4 + SALT1_LEN + 1;
        let caps_hi = caps_lo + 2 + 1 + 2;
        Self {
            version: version.to_string(),
            connection_id,
            caps,
            charset: charset::UTF8MB4_GENERAL_CI,
            status: status::AUTOCOMMIT,
            salt: salt.to_vec(),
            plugin: NATIVE_PASSWORD.to_string(),
            caps_lo,
            caps_hi,
            ext_caps: (caps & caps::MYSQL == 0).then_some(caps_hi + 2 + 1 + GREETING_RESERVED),
        }
    }

    /// Reads a v10 greeting.
    pub fn parse(p: &[u8]) -> Result<Self, HandshakeError> {
        let short = HandshakeError::Greeting;
        // offsets count the raw bytes: a lossy conversion would grow an invalid byte to three
        let raw_version = server_version(p)?;
        let version = String::from_utf8_lossy(raw_version).into_owned();
        let mut pos = 1 + raw_version.len() + 1;
        let mut pos_after = |n: usize| {
            let at = pos;
            pos += n;
            at
        };
        let connection_id = get_arr(p, pos_after(4)).map(u32::from_le_bytes);
        let connection_id = connection_id.ok_or(short("short"))?;
        let salt1 = p
            .get(pos_after(SALT1_LEN)..)
            .and_then(|s| s.get(..SALT1_LEN));
        let mut salt = salt1.ok_or(short("short salt"))?.to_vec();
        pos_after(1); // filler
        let caps_lo = pos_after(2);
        let lo = get_u16(p, caps_lo).ok_or(short("short"))?;
        let charset = *p.get(pos_after(1)).ok_or(short("short"))?;
        let status = get_u16(p, pos_after(2)).ok_or(short("short"))?;
        let caps_hi = pos_after(2);
        let hi = get_u16(p, caps_hi).ok_or(short("short"))?;
        let caps = u32::from(lo) | u32::from(hi) << 16;
        let salt_len = usize::from(*p.get(pos_after(1)).ok_or(short("short"))?);
        pos_after(GREETING_RESERVED);
        let ext_caps = (caps & caps::MYSQL == 0).then(|| pos_after(EXT_CAPS_LEN));
        if ext_caps.is_none() {
            pos_after(EXT_CAPS_LEN);
        }
        if caps & caps::SECURE_CONNECTION != 0 {
            let n = salt_len.saturating_sub(SALT1_LEN).max(SALT2_MIN);
            let part = p.get(pos_after(n)..).and_then(|s| s.get(..n));
            let part = part.ok_or(short("short salt"))?;
            // the last byte of the second part is a NUL terminator
            salt.extend_from_slice(part.split_last().map_or(part, |(_, s)| s));
        }
        let plugin = plugin_name(p, pos, caps);
        Ok(Self {
            version,
            connection_id,
            caps,
            charset,
            status,
            salt,
            plugin,
            caps_lo,
            caps_hi,
            ext_caps,
        })
    }

    /// The greeting's payload, as a server sends it.
    pub fn build(&self) -> Vec<u8> {
        let (salt1, salt2) = self.salt.split_at(self.salt.len().min(SALT1_LEN));
        let mut p = Vec::with_capacity(64 + self.version.len() + self.plugin.len());
        p.push(marker::PROTOCOL_V10);
        p.extend_from_slice(self.version.as_bytes());
        p.push(0);
        p.extend_from_slice(&self.connection_id.to_le_bytes());
        p.extend_from_slice(salt1);
        p.resize(p.len() + SALT1_LEN - salt1.len(), 0);
        p.push(0); // filler
        p.extend_from_slice(&(self.caps as u16).to_le_bytes());
        p.push(self.charset);
        p.extend_from_slice(&self.status.to_le_bytes());
        p.extend_from_slice(&((self.caps >> 16) as u16).to_le_bytes());
        let auth_len = if self.caps & caps::PLUGIN_AUTH != 0 {
            (self.salt.len() + 1).min(usize::from(u8::MAX)) as u8
        } else {
            0
        };
        p.push(auth_len);
        p.resize(p.len() + GREETING_RESERVED + EXT_CAPS_LEN, 0);
        if self.caps & caps::SECURE_CONNECTION != 0 {
            p.extend_from_slice(salt2);
            p.resize(p.len() + (SALT2_MIN - 1).saturating_sub(salt2.len()), 0);
            p.push(0);
        }
        if self.caps & caps::PLUGIN_AUTH != 0 {
            p.extend_from_slice(self.plugin.as_bytes());
            p.push(0);
        }
        p
    }

    /// Removes the capabilities a proxy does not follow ([`caps::HIDDEN`], MariaDB's extended
    /// ones) from this greeting's payload `p`, in place.
    pub fn sanitize(&self, p: &mut [u8]) {
        self.sanitize_offering(p, 0);
    }

    /// [`Greeting::sanitize`], then offering `offer` (e.g. [`caps::SSL`] when the proxy itself
    /// terminates the client's TLS).
    pub fn sanitize_offering(&self, p: &mut [u8], offer: u32) {
        let caps = self.caps & !caps::HIDDEN | offer;
        if let Some(b) = p.get_mut(self.caps_lo..self.caps_lo + 2) {
            b.copy_from_slice(&(caps as u16).to_le_bytes());
        }
        if let Some(b) = p.get_mut(self.caps_hi..self.caps_hi + 2) {
            b.copy_from_slice(&((caps >> 16) as u16).to_le_bytes());
        }
        if let Some(at) = self.ext_caps {
            // MariaDB extensions (progress reports, bulk, metadata caching): not followed
            if let Some(b) = p.get_mut(at..at + EXT_CAPS_LEN) {
                b.fill(0);
            }
        }
    }
}

/// The client's handshake response, as far as a later login needs it.
#[derive(Debug, Clone)]
pub struct Response {
    /// Client capabilities (after sanitizing).
    pub caps: u32,
    /// Max packet size the client announced.
    pub max_packet: u32,
    /// Connection character set / collation id.
    pub charset: u8,
    /// User name.
    pub user: String,
    /// The auth data answering the greeting's salt.
    pub auth: Vec<u8>,
    /// The plugin that auth data is for.
    pub plugin: String,
}

impl Response {
    /// Reads a handshake response and removes hidden capabilities from it in place.
    pub fn parse_and_sanitize(p: &mut [u8]) -> Result<Self, HandshakeError> {
        let short = || HandshakeError::Response("short");
        let client_caps = get_arr(p, 0).map(u32::from_le_bytes).ok_or_else(short)?;
        if client_caps & caps::PROTOCOL_41 == 0 {
            return Err(HandshakeError::Response(
                "pre-4.1 clients are not supported",
            ));
        }
        if client_caps & caps::SSL != 0 && p.len() <= RESP_USER_AT {
            return Err(HandshakeError::TlsRequested);
        }
        let caps = client_caps & !caps::HIDDEN;
        if let Some(b) = p.get_mut(..4) {
            b.copy_from_slice(&caps.to_le_bytes());
        }
        if caps & caps::MYSQL == 0 {
            if let Some(b) = p.get_mut(RESP_EXT_CAPS_AT..RESP_EXT_CAPS_AT + EXT_CAPS_LEN) {
                b.fill(0);
            }
        }
        let max_packet = get_arr(p, RESP_MAX_PACKET_AT)
            .map(u32::from_le_bytes)
            .ok_or_else(short)?;
        let charset = *p.get(RESP_CHARSET_AT).ok_or_else(short)?;
        if p.len() < RESP_USER_AT {
            return Err(short());
        }
        let mut pos = RESP_USER_AT;
        let user = String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned();
        let bad_len = || HandshakeError::Response("auth length");
        let bad_data = || HandshakeError::Response("auth data");
        let auth = if caps & caps::PLUGIN_AUTH_LENENC != 0 {
            let n = get_lenenc(p, &mut pos).ok_or_else(bad_len)?;
            let n = usize::try_from(n).map_err(|_| bad_len())?;
            let a = p.get(pos..pos.saturating_add(n)).ok_or_else(bad_data)?;
            pos += n;
            a.to_vec()
        } else if caps & caps::SECURE_CONNECTION != 0 {
            let n = usize::from(*p.get(pos).ok_or_else(bad_len)?);
            let a = p.get(pos + 1..pos + 1 + n).ok_or_else(bad_data)?;
            pos += 1 + n;
            a.to_vec()
        } else {
            get_cstr(p, &mut pos).to_vec()
        };
        if caps & caps::CONNECT_WITH_DB != 0 {
            get_cstr(p, &mut pos);
        }
        let plugin = plugin_name(p, pos, caps);
        Ok(Self {
            caps,
            max_packet,
            charset,
            user,
            auth,
            plugin,
        })
    }

    /// The handshake response's payload, as a client sends it: no schema, no connection
    /// attributes (those bits are cleared).
    pub fn build(&self) -> Vec<u8> {
        write_response(
            self.caps,
            self.max_packet,
            self.charset,
            &self.user,
            &self.auth,
            &self.plugin,
        )
    }

    /// A handshake response logging in as this session's user with `secret`, answering `salt`
    /// of a server announcing `server_caps`.
    pub fn build_native(&self, server_caps: u32, secret: &NativeSecret, salt: &[u8]) -> Vec<u8> {
        let want = (self.caps & !(caps::CONNECT_ATTRS | caps::CONNECT_WITH_DB | caps::SSL))
            | caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH;
        let caps = want & server_caps | caps::PROTOCOL_41;
        let token = secret.scramble(salt);
        write_response(
            caps,
            self.max_packet,
            self.charset,
            &self.user,
            &token,
            NATIVE_PASSWORD,
        )
    }
}

/// The auth plugin named at `pos` (NUL-terminated) when `caps` has `CLIENT_PLUGIN_AUTH`;
/// otherwise the only plugin such a peer can mean.
fn plugin_name(p: &[u8], pos: usize, caps: u32) -> String {
    if caps & caps::PLUGIN_AUTH == 0 {
        return NATIVE_PASSWORD.to_string();
    }
    let mut pos = pos;
    String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned()
}

fn write_response(
    caps: u32,
    max_packet: u32,
    charset: u8,
    user: &str,
    auth: &[u8],
    plugin: &str,
) -> Vec<u8> {
    let caps = caps & !(caps::CONNECT_WITH_DB | caps::CONNECT_ATTRS);
    let mut p = Vec::with_capacity(RESP_USER_AT + user.len() + auth.len() + plugin.len() + 8);
    p.extend_from_slice(&caps.to_le_bytes());
    p.extend_from_slice(&max_packet.to_le_bytes());
    p.push(charset);
    p.resize(p.len() + RESP_FILLER, 0);
    p.extend_from_slice(user.as_bytes());
    p.push(0);
    if caps & caps::PLUGIN_AUTH_LENENC != 0 {
        put_lenenc(&mut p, auth.len() as u64);
        p.extend_from_slice(auth);
    } else if caps & caps::SECURE_CONNECTION != 0 {
        let auth = auth.get(..usize::from(u8::MAX)).unwrap_or(auth);
        p.push(auth.len() as u8);
        p.extend_from_slice(auth);
    } else {
        p.extend_from_slice(auth);
        p.push(0);
    }
    if caps & caps::PLUGIN_AUTH != 0 {
        p.extend_from_slice(plugin.as_bytes());
        p.push(0);
    }
    p
}

/// An auth-switch request ([`marker::AUTH_SWITCH`]): plugin name and its salt.
pub fn parse_auth_switch(p: &[u8]) -> (String, Vec<u8>) {
    let mut pos = 1;
    let plugin = String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned();
    let mut salt = p.get(pos..).unwrap_or_default().to_vec();
    if salt.last() == Some(&0) {
        salt.pop();
    }
    (plugin, salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALT: [u8; SCRAMBLE_LEN] = *b"01234567890123456789";

    #[test]
    fn the_native_secret_is_recovered_from_a_scramble_and_checked_against_the_hash() {
        let secret = NativeSecret::from_password("s3cret");
        let scramble = secret.scramble(&SALT);
        let stage2 = secret.stage2();
        assert_eq!(
            NativeSecret::recover(&scramble, &SALT, &stage2),
            Some(secret)
        );
        let wrong = NativeSecret::from_password("other").scramble(&SALT);
        assert_eq!(NativeSecret::recover(&wrong, &SALT, &stage2), None);
    }

    #[test]
    fn password_hashes_parse_like_mysql_user() {
        // SELECT PASSWORD('pw') = *D821809F681A40A6E379B50D0463EFAE20BDD122
        let h = parse_password_hash("*D821809F681A40A6E379B50D0463EFAE20BDD122").unwrap();
        assert_eq!(h, NativeSecret::from_password("pw").stage2());
        assert!(parse_password_hash("D821809F").is_none());
        assert!(parse_password_hash("*ZZ21809F681A40A6E379B50D0463EFAE20BDD122").is_none());
        assert!(parse_password_hash("*+F21809F681A40A6E379B50D0463EFAE20BDD122").is_none());
        assert!(parse_password_hash("*é821809F681A40A6E379B50D0463EFAE20BDD12").is_none());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = format!("{:?}", NativeSecret::from_password("pw"));
        assert_eq!(s, "NativeSecret(..)");
    }

    fn mariadb_caps() -> u32 {
        caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH
            | caps::SSL
            | caps::DEPRECATE_EOF
            | caps::MULTI_RESULTS
    }

    #[test]
    fn a_built_greeting_parses_back_and_sanitizes_in_place() {
        let g = Greeting::new("10.11.6-MariaDB", 42, mariadb_caps(), SALT);
        let mut p = g.build();
        let back = Greeting::parse(&p).unwrap();
        assert_eq!(back.version, "10.11.6-MariaDB");
        assert_eq!(back.connection_id, 42);
        assert_eq!(back.caps, mariadb_caps());
        assert_eq!(back.salt, SALT);
        assert_eq!(back.plugin, NATIVE_PASSWORD);
        assert_eq!(back.status, status::AUTOCOMMIT);
        back.sanitize(&mut p);
        let clean = Greeting::parse(&p).unwrap();
        assert_eq!(clean.caps, mariadb_caps() & !caps::SSL);
    }

    #[test]
    fn greetings_that_are_not_v10_say_why() {
        assert!(matches!(
            server_version(b"\x09old"),
            Err(HandshakeError::Protocol(9))
        ));
        assert!(matches!(
            server_version(b"\x0a5.7-no-nul"),
            Err(HandshakeError::Greeting(_))
        ));
        let err = crate::wire::err_payload(1040, "08004", "Too many connections");
        match Greeting::parse(&err) {
            Err(HandshakeError::Refused(e)) => assert_eq!(e.code, 1040),
            other => panic!("{other:?}"),
        }
        for cut in 0..Greeting::new("v", 1, mariadb_caps(), SALT).build().len() - 1 {
            let p = Greeting::new("v", 1, mariadb_caps(), SALT).build();
            let _ = Greeting::parse(&p[..cut]);
        }
    }

    #[test]
    fn a_built_response_parses_back_and_the_native_login_answers_the_salt() {
        let secret = NativeSecret::from_password("pw");
        let r = Response {
            caps: caps::PROTOCOL_41 | caps::SECURE_CONNECTION | caps::PLUGIN_AUTH | caps::MYSQL,
            max_packet: 1 << 24,
            charset: charset::UTF8MB4_GENERAL_CI,
            user: "app".into(),
            auth: secret.scramble(&SALT).to_vec(),
            plugin: NATIVE_PASSWORD.into(),
        };
        let mut p = r.build();
        let back = Response::parse_and_sanitize(&mut p).unwrap();
        assert_eq!((back.user.as_str(), back.caps), ("app", r.caps));
        assert_eq!((back.max_packet, back.charset), (1 << 24, r.charset));
        assert_eq!(back.auth, r.auth);
        assert_eq!(back.plugin, NATIVE_PASSWORD);
        let server = mariadb_caps() | caps::PLUGIN_AUTH_LENENC;
        let mut native = r.build_native(server, &secret, &SALT);
        let back = Response::parse_and_sanitize(&mut native).unwrap();
        assert_eq!(back.auth, secret.scramble(&SALT));
        assert_eq!(
            NativeSecret::recover(&back.auth, &SALT, &secret.stage2()),
            Some(secret)
        );
    }

    #[test]
    fn a_tls_request_and_a_pre_41_client_are_refused() {
        let mut ssl = Response {
            caps: caps::PROTOCOL_41 | caps::SSL,
            max_packet: 0,
            charset: 0,
            user: String::new(),
            auth: Vec::new(),
            plugin: String::new(),
        }
        .build();
        ssl.truncate(RESP_USER_AT);
        assert!(matches!(
            Response::parse_and_sanitize(&mut ssl),
            Err(HandshakeError::TlsRequested)
        ));
        let mut old = vec![0u8; RESP_USER_AT + 2];
        assert!(matches!(
            Response::parse_and_sanitize(&mut old),
            Err(HandshakeError::Response(_))
        ));
    }

    #[test]
    fn an_auth_switch_names_its_plugin_and_salt() {
        let (plugin, salt) = parse_auth_switch(b"\xfemysql_native_password\x00abc\x00");
        assert_eq!(
            (plugin.as_str(), salt.as_slice()),
            (NATIVE_PASSWORD, &b"abc"[..])
        );
    }
}
