//! Login: the pass-through of the first login and the proxy's own logins to move targets.
//!
//! The first backend authenticates the client itself: the proxy forwards the greeting (with the
//! capabilities it cannot follow hidden — TLS among them, since frontend TLS is not offered in
//! this version), the client's handshake response and any auth-switch exchange, and reads only
//! what a later login needs: user, capabilities, character set, and — for users configured with
//! only a `password_hash` — the `mysql_native_password` scramble, from which `SHA1(password)` is
//! recovered and checked against the hash. The cleartext password is never seen, kept or logged.

use sha1::{Digest, Sha1};

use super::packet::{caps, get_arr, get_cstr, get_lenenc, PacketError};

/// The auth plugin the proxy can log in with.
pub const NATIVE_PASSWORD: &str = "mysql_native_password";

/// Why a handshake could not be read or completed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Framing error.
    #[error(transparent)]
    Packet(#[from] PacketError),
    /// The greeting is not a v10 handshake.
    #[error("unsupported greeting: {0}")]
    Greeting(&'static str),
    /// The client's handshake response is malformed.
    #[error("malformed handshake response: {0}")]
    Response(&'static str),
    /// The client asked for TLS, which the proxy does not offer.
    #[error("client requested TLS, which this proxy does not offer")]
    TlsRequested,
    /// The server refused the login.
    #[error("login refused: {0}")]
    Refused(String),
    /// The server asked for an auth plugin the proxy cannot use.
    #[error("server asked for auth plugin {0}")]
    Plugin(String),
    /// The target would negotiate other capabilities than the session has.
    #[error("target capabilities differ from the session's ({0:#x} missing)")]
    Capabilities(u32),
}

/// SHA1 of the concatenation of `parts`.
pub fn sha1(parts: &[&[u8]]) -> [u8; 20] {
    let mut h = Sha1::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// What `mysql_native_password` needs to log in: `SHA1(password)` ("stage 1"). Equivalent to
/// the password for this plugin, so it lives only inside one session and is never logged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NativeSecret([u8; 20]);

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
    pub fn stage2(&self) -> [u8; 20] {
        sha1(&[&self.0])
    }

    /// The client's answer to `salt`: `SHA1(pw) XOR SHA1(salt + SHA1(SHA1(pw)))`.
    pub fn scramble(&self, salt: &[u8]) -> [u8; 20] {
        let mask = sha1(&[salt, &self.stage2()]);
        let mut out = self.0;
        for (o, m) in out.iter_mut().zip(mask) {
            *o ^= m;
        }
        out
    }

    /// Recovers `SHA1(pw)` from a client's scramble of `salt`, given the stored hash `stage2`;
    /// `None` when the scramble does not belong to that hash.
    pub fn recover(scramble: &[u8], salt: &[u8], stage2: &[u8; 20]) -> Option<Self> {
        let scramble: [u8; 20] = scramble.try_into().ok()?;
        let mask = sha1(&[salt, stage2]);
        let mut s1 = scramble;
        for (o, m) in s1.iter_mut().zip(mask) {
            *o ^= m;
        }
        (sha1(&[&s1]) == *stage2).then_some(Self(s1))
    }
}

/// Parses `*<40 hex>` (as in `mysql.user`) into `SHA1(SHA1(pw))`.
pub fn parse_password_hash(s: &str) -> Option<[u8; 20]> {
    let hex = s.strip_prefix('*')?;
    if hex.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The fields of a v10 greeting the proxy uses, and where its capability bytes are.
#[derive(Debug, Clone)]
pub struct Greeting {
    /// Server capabilities (lower and upper halves).
    pub caps: u32,
    /// The 20-byte salt.
    pub salt: Vec<u8>,
    /// The default auth plugin.
    pub plugin: String,
    /// Server version string.
    pub version: String,
    caps_lo: usize,
    caps_hi: usize,
    /// Where MariaDB's extended capabilities are (4 bytes), when present.
    ext_caps: Option<usize>,
}

impl Greeting {
    /// Reads a v10 greeting.
    pub fn parse(p: &[u8]) -> Result<Self, HandshakeError> {
        if p.first() == Some(&0xFF) {
            return Err(HandshakeError::Refused(
                super::packet::parse_err(p).to_string(),
            ));
        }
        if p.first() != Some(&10) {
            return Err(HandshakeError::Greeting("not protocol v10"));
        }
        let mut pos = 1;
        let version = String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned();
        pos += 4; // connection id
        let salt1 = p
            .get(pos..pos + 8)
            .ok_or(HandshakeError::Greeting("short salt"))?
            .to_vec();
        pos += 9; // salt part 1 + filler
        let caps_lo = pos;
        let lo = get_arr::<2>(p, pos).ok_or(HandshakeError::Greeting("short"))?;
        pos += 2 + 1 + 2; // caps lo, charset, status
        let caps_hi = pos;
        let hi = get_arr::<2>(p, pos).ok_or(HandshakeError::Greeting("short"))?;
        pos += 2;
        let caps = u32::from(u16::from_le_bytes(lo)) | u32::from(u16::from_le_bytes(hi)) << 16;
        let salt_len = usize::from(*p.get(pos).ok_or(HandshakeError::Greeting("short"))?);
        pos += 1 + 6;
        let ext_caps = (caps & caps::MYSQL == 0).then_some(pos);
        pos += 4;
        let mut salt = salt1;
        if caps & caps::SECURE_CONNECTION != 0 {
            let n = salt_len.saturating_sub(8).max(13);
            let part = p
                .get(pos..pos + n)
                .ok_or(HandshakeError::Greeting("short salt"))?;
            // the last byte of the second part is a NUL terminator
            salt.extend_from_slice(&part[..n - 1]);
            pos += n;
        }
        let plugin = if caps & caps::PLUGIN_AUTH != 0 {
            String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned()
        } else {
            NATIVE_PASSWORD.to_string()
        };
        Ok(Self {
            caps,
            salt,
            plugin,
            version,
            caps_lo,
            caps_hi,
            ext_caps,
        })
    }

    /// Removes the capabilities the proxy does not follow from a greeting payload in place.
    pub fn sanitize(&self, p: &mut [u8]) {
        let caps = self.caps & !caps::HIDDEN;
        p[self.caps_lo..self.caps_lo + 2].copy_from_slice(&(caps as u16).to_le_bytes());
        p[self.caps_hi..self.caps_hi + 2].copy_from_slice(&((caps >> 16) as u16).to_le_bytes());
        if let Some(at) = self.ext_caps {
            // MariaDB extensions (progress reports, bulk, metadata caching): not followed
            if let Some(b) = p.get_mut(at..at + 4) {
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
        let raw = get_arr::<4>(p, 0).ok_or(HandshakeError::Response("short"))?;
        let client_caps = u32::from_le_bytes(raw);
        if client_caps & caps::PROTOCOL_41 == 0 {
            return Err(HandshakeError::Response(
                "pre-4.1 clients are not supported",
            ));
        }
        if client_caps & caps::SSL != 0 && p.len() <= 32 {
            return Err(HandshakeError::TlsRequested);
        }
        let caps = client_caps & !caps::HIDDEN;
        p[0..4].copy_from_slice(&caps.to_le_bytes());
        if caps & caps::MYSQL == 0 {
            if let Some(b) = p.get_mut(28..32) {
                b.fill(0);
            }
        }
        let max_packet =
            u32::from_le_bytes(get_arr(p, 4).ok_or(HandshakeError::Response("short"))?);
        let charset = *p.get(8).ok_or(HandshakeError::Response("short"))?;
        let mut pos = 32;
        if p.len() < pos {
            return Err(HandshakeError::Response("short"));
        }
        let user = String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned();
        let auth = if caps & caps::PLUGIN_AUTH_LENENC != 0 {
            let n = get_lenenc(p, &mut pos).ok_or(HandshakeError::Response("auth length"))?;
            let n = usize::try_from(n).map_err(|_| HandshakeError::Response("auth length"))?;
            let a = p
                .get(pos..pos.saturating_add(n))
                .ok_or(HandshakeError::Response("auth data"))?;
            pos += n;
            a.to_vec()
        } else if caps & caps::SECURE_CONNECTION != 0 {
            let n = usize::from(*p.get(pos).ok_or(HandshakeError::Response("auth length"))?);
            let a = p
                .get(pos + 1..pos + 1 + n)
                .ok_or(HandshakeError::Response("auth data"))?;
            pos += 1 + n;
            a.to_vec()
        } else {
            get_cstr(p, &mut pos).to_vec()
        };
        if caps & caps::CONNECT_WITH_DB != 0 {
            get_cstr(p, &mut pos);
        }
        let plugin = if caps & caps::PLUGIN_AUTH != 0 {
            String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned()
        } else {
            NATIVE_PASSWORD.to_string()
        };
        Ok(Self {
            caps,
            max_packet,
            charset,
            user,
            auth,
            plugin,
        })
    }

    /// A handshake response logging in as this session's user with `secret`, answering `salt`.
    pub fn build_native(&self, server_caps: u32, secret: &NativeSecret, salt: &[u8]) -> Vec<u8> {
        let want = (self.caps & !(caps::CONNECT_ATTRS | caps::CONNECT_WITH_DB | caps::SSL))
            | caps::PROTOCOL_41
            | caps::SECURE_CONNECTION
            | caps::PLUGIN_AUTH;
        let caps = want & server_caps | caps::PROTOCOL_41;
        let mut p = Vec::with_capacity(128);
        p.extend_from_slice(&caps.to_le_bytes());
        p.extend_from_slice(&self.max_packet.to_le_bytes());
        p.push(self.charset);
        p.extend_from_slice(&[0u8; 23]);
        p.extend_from_slice(self.user.as_bytes());
        p.push(0);
        let token = secret.scramble(salt);
        if caps & caps::PLUGIN_AUTH_LENENC != 0 {
            super::packet::put_lenenc(&mut p, 20);
        } else {
            p.push(20);
        }
        p.extend_from_slice(&token);
        p.extend_from_slice(NATIVE_PASSWORD.as_bytes());
        p.push(0);
        p
    }
}

/// An auth-switch request (0xFE): plugin name and its salt.
pub fn parse_auth_switch(p: &[u8]) -> (String, Vec<u8>) {
    let mut pos = 1;
    let plugin = String::from_utf8_lossy(get_cstr(p, &mut pos)).into_owned();
    let mut salt = p.get(pos..).unwrap_or(&[]).to_vec();
    if salt.last() == Some(&0) {
        salt.pop();
    }
    (plugin, salt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_native_secret_is_recovered_from_a_scramble_and_checked_against_the_hash() {
        let secret = NativeSecret::from_password("s3cret");
        let salt = b"01234567890123456789";
        let scramble = secret.scramble(salt);
        let stage2 = secret.stage2();
        assert_eq!(
            NativeSecret::recover(&scramble, salt, &stage2),
            Some(secret)
        );
        let wrong = NativeSecret::from_password("other").scramble(salt);
        assert_eq!(NativeSecret::recover(&wrong, salt, &stage2), None);
    }

    #[test]
    fn password_hashes_parse_like_mysql_user() {
        // SELECT PASSWORD('pw') = *D821809F681A40A6E379B50D0463EFAE20BDD122
        let h = parse_password_hash("*D821809F681A40A6E379B50D0463EFAE20BDD122").unwrap();
        assert_eq!(h, NativeSecret::from_password("pw").stage2());
        assert!(parse_password_hash("D821809F").is_none());
        assert!(parse_password_hash("*ZZ21809F681A40A6E379B50D0463EFAE20BDD122").is_none());
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let s = format!("{:?}", NativeSecret::from_password("pw"));
        assert_eq!(s, "NativeSecret(..)");
    }
}
