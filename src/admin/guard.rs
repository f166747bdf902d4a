//! Who may change things: the checks every admin `POST` passes before its handler runs.
//!
//! GETs stay open (they only show state). A POST needs the bearer token when `admin.token` is
//! set, and is always a request a web page cannot send behind the operator's back: a JSON body
//! or an `Authorization` header makes it "non-simple", so a browser asks the server first (a CORS
//! preflight, which this API never grants). Without a token, the host must also be named by IP
//! address or `localhost`, so a page cannot reach a loopback API by rebinding its own DNS name.

use actix_web::http::header::{self, HeaderMap};
use actix_web::http::StatusCode;

use crate::config::AdminToken;

/// Why a POST was refused: the status it gets and the sentence in its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `admin.token` is set and the request did not carry it.
    #[error("this admin API needs \"Authorization: Bearer <admin.token>\" on every POST")]
    Unauthorized,
    /// Neither a JSON content type nor an `Authorization` header: a form or a plain fetch from
    /// any web page could have sent it.
    #[error("a POST must be sent with \"Content-Type: application/json\" (or with \"Authorization: Bearer <token>\"), so that no web page can send it")]
    NotJson,
    /// No token is set and the `Host` header names the server by a DNS name.
    #[error("without admin.token, a POST must name the host by IP address or localhost (as curl 127.0.0.1:6080 does), so that a web page cannot reach this API by rebinding its DNS name")]
    HostByName,
}

impl Refusal {
    /// The HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Unauthorized => StatusCode::UNAUTHORIZED,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::HostByName => StatusCode::FORBIDDEN,
        }
    }
}

/// Checks one POST's headers against the configured token.
pub fn check_post(headers: &HeaderMap, token: Option<&AdminToken>) -> Result<(), Refusal> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = token {
        let sent = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        return match sent {
            Some(sent) if constant_time_eq(sent.as_bytes(), token.as_str().as_bytes()) => Ok(()),
            _ => Err(Refusal::Unauthorized),
        };
    }
    if authorization.is_none() && !is_json(headers) {
        return Err(Refusal::NotJson);
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match host {
        Some(host) if !names_an_address(host) => Err(Refusal::HostByName),
        _ => Ok(()),
    }
}

/// `Content-Type: application/json`, with or without parameters (`; charset=utf-8`).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// Whether a `Host` header names an IP address or `localhost` (with or without a port).
fn names_an_address(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

/// Compares two byte strings in time that depends on their lengths only, never on where they
/// first differ, so a caller cannot find the token a byte at a time by timing refusals.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        h
    }

    fn token() -> AdminToken {
        AdminToken::new("s3cret")
    }

    #[test]
    fn with_a_token_only_the_right_bearer_passes() {
        let t = token();
        let ok = headers(&[("authorization", "Bearer s3cret")]);
        assert_eq!(check_post(&ok, Some(&t)), Ok(()));
        for bad in [
            headers(&[]),
            headers(&[("content-type", "application/json")]),
            headers(&[("authorization", "Bearer s3cre")]),
            headers(&[("authorization", "Bearer s3crett")]),
            headers(&[("authorization", "Basic czNjcmV0")]),
            headers(&[("authorization", "s3cret")]),
        ] {
            assert_eq!(
                check_post(&bad, Some(&t)),
                Err(Refusal::Unauthorized),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn without_a_token_a_post_a_web_page_could_send_is_refused() {
        for simple in [
            headers(&[]),
            headers(&[("content-type", "text/plain")]),
            headers(&[("content-type", "application/x-www-form-urlencoded")]),
            headers(&[("content-type", "multipart/form-data; boundary=x")]),
        ] {
            assert_eq!(
                check_post(&simple, None),
                Err(Refusal::NotJson),
                "{simple:?}"
            );
        }
        let json = headers(&[
            ("content-type", "Application/JSON; charset=utf-8"),
            ("host", "127.0.0.1:6080"),
        ]);
        assert_eq!(check_post(&json, None), Ok(()));
        let bearer = headers(&[("authorization", "Bearer anything")]);
        assert_eq!(check_post(&bearer, None), Ok(()));
    }

    #[test]
    fn without_a_token_the_host_must_be_an_address_not_a_name() {
        for host in [
            "127.0.0.1:6080",
            "localhost:6080",
            "[::1]:6080",
            "10.0.0.5",
            "LOCALHOST",
        ] {
            let mut h = headers(&[("content-type", "application/json")]);
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            assert_eq!(check_post(&h, None), Ok(()), "{host}");
        }
        for host in ["evil.example:6080", "rebind.test", "[nonsense]:1"] {
            let mut h = headers(&[("content-type", "application/json")]);
            h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
            assert_eq!(check_post(&h, None), Err(Refusal::HostByName), "{host}");
        }
    }

    #[test]
    fn constant_time_eq_is_plain_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
