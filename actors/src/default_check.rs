//! `DefaultHealthCheck`: is a backend up, and which version does it announce?
//!
//! Two steps, as in the reference router: the HTTP status port first (when discovery knows one),
//! because a TiDB shutting down gracefully answers `/status` with 500 while its SQL port still
//! accepts; then the SQL port, whose MySQL v10 greeting carries the server version the service
//! shows to its clients. Each step has its own timeout and retries, the whole check a hard bound,
//! so one hung backend costs the observer one slot of its concurrency and nothing more.
//!
//! With TLS to backends ([`DefaultHealthCheck::with_backend_tls`]) the SQL port is probed the way
//! sessions reach it: the greeting, then the SSL request and the TLS handshake (see
//! [`crate::backend_tls`]).
//!
//! The checker is called concurrently for many backends (on the observer's one thread); the only
//! state it keeps is the last failure reason per backend, so a reason is logged once when it appears or changes and not on
//! every cycle (the observer logs the status changes themselves).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use crate::backend_tls::{self, PROBE_CAPS, PROBE_MAX_PACKET};
use crate::health::{HealthCheck, HealthCheckConfig, Probe};
use crate::model::{BackendHealth, BackendInfo};
use crate::wire::{
    self, caps, charset, cmd, marker, put_packet, Greeting, HandshakeError, PacketError,
    PacketReader, Response, NATIVE_PASSWORD,
};

/// The largest greeting accepted. A real one is about a hundred bytes; a length field claiming
/// more is a server speaking another protocol (or garbage), not a reason to buffer megabytes.
pub(crate) const MAX_GREETING_LEN: usize = 64 * 1024;

/// Longest ERR message or server version kept in a reason.
const MAX_TEXT: usize = 256;

/// Checks a backend's status port (HTTP GET `/status`, when discovery knows one) and its SQL port
/// (connect, then read the MySQL greeting unless the probe is [`Probe::Tcp`]).
///
/// Failures come back as [`BackendHealth::down`] with the reason in `ping_err`. A failed step is
/// retried up to `max_retries` times, `retry_interval` apart, except when retrying cannot help:
/// connection refused, a non-200 status, a malformed or ERR greeting. A whole check never takes
/// longer than `(max_retries + 1) × (dial_timeout + retry_interval)`.
#[derive(Debug, Clone)]
pub struct DefaultHealthCheck {
    cfg: HealthCheckConfig,
    /// Built once: its connection pool and TLS setup are shared by every check.
    client: Result<reqwest::Client, String>,
    /// Last failure reason per backend, so each is logged once. The observer runs every check
    /// on its own thread (hence no lock); a borrow never spans an await.
    last_failure: RefCell<HashMap<String, String>>,
    /// TLS to the SQL port, as sessions use it (`backends.tls`); `None`: plain.
    backend_tls: Option<Arc<rustls::ClientConfig>>,
}

impl DefaultHealthCheck {
    /// A checker with `cfg`'s timeouts and retries. Builds its HTTP client (rustls, no proxy: the
    /// status port is probed directly, never through `HTTP_PROXY`); does no I/O.
    pub fn new(cfg: HealthCheckConfig) -> Self {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .no_proxy()
            .connect_timeout(cfg.dial_timeout)
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| format!("build HTTP client: {}", error_chain(&e)));
        Self::with_client_result(cfg, client)
    }

    /// A checker that probes status ports with `client`, e.g. one that trusts the cluster's CA
    /// when `status_tls` is on. Request timeouts still come from `cfg.dial_timeout`.
    pub fn with_client(cfg: HealthCheckConfig, client: reqwest::Client) -> Self {
        Self::with_client_result(cfg, Ok(client))
    }

    fn with_client_result(cfg: HealthCheckConfig, client: Result<reqwest::Client, String>) -> Self {
        Self {
            cfg,
            client,
            last_failure: RefCell::new(HashMap::new()),
            backend_tls: None,
        }
    }

    /// Probes SQL ports over TLS with `config`, as sessions reach them: after the greeting
    /// (probe `mysql`) or at connect (probe `tcp`). A backend whose greeting offers no TLS, or
    /// whose certificate `config` refuses, is down with that reason: no session could use it.
    pub fn with_backend_tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.backend_tls = Some(config);
        self
    }

    /// The hard bound on one check.
    pub fn check_bound(&self) -> Duration {
        self.cfg
            .dial_timeout
            .saturating_add(self.cfg.retry_interval)
            .saturating_mul(self.cfg.max_retries.saturating_add(1))
    }

    async fn check_unbounded(&self, addr: &str, info: &BackendInfo) -> BackendHealth {
        if !info.ip.is_empty() {
            let url = format!(
                "{}://{}/status",
                if self.cfg.status_tls { "https" } else { "http" },
                join_host_port(&info.ip, info.status_port)
            );
            if let Err(reason) = self.retrying(|| self.check_status(&url)).await {
                return BackendHealth::down(reason);
            }
        }
        match self.retrying(|| self.check_sql(addr)).await {
            Ok(Some(version)) => BackendHealth::healthy_with_version(version),
            Ok(None) => BackendHealth::healthy(),
            Err(reason) => BackendHealth::down(reason),
        }
    }

    /// Runs `step` until it succeeds, fails for good, or used up its retries.
    async fn retrying<T, Fut>(&self, mut step: impl FnMut() -> Fut) -> Result<T, String>
    where
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let mut attempt = 0;
        loop {
            match step().await {
                Ok(v) => return Ok(v),
                Err(f) if !f.retryable || attempt >= self.cfg.max_retries => return Err(f.reason),
                Err(f) => {
                    attempt += 1;
                    debug!(attempt, reason = %f.reason, "health check step failed; retrying");
                    tokio::time::sleep(self.cfg.retry_interval).await;
                }
            }
        }
    }

    async fn check_status(&self, url: &str) -> Result<(), Failure> {
        let client = self
            .client
            .as_ref()
            .map_err(|e| Failure::final_(e.clone()))?;
        let resp = client
            .get(url)
            .timeout(self.cfg.dial_timeout)
            .send()
            .await
            .map_err(|e| {
                let reason = format!("status port {url}: {}", error_chain(&e));
                if e.is_timeout() {
                    Failure::retry(format!(
                        "status port {url}: timed out after {:?}",
                        self.cfg.dial_timeout
                    ))
                } else if is_refused(&e) {
                    Failure::final_(reason)
                } else {
                    Failure::retry(reason)
                }
            })?;
        if resp.status() == reqwest::StatusCode::OK {
            Ok(())
        } else {
            // A backend on its way out answers 500 on purpose: final, not retried.
            Err(Failure::final_(format!(
                "status port {url} returned {}",
                resp.status()
            )))
        }
    }

    /// Connects to the SQL port and, for [`Probe::Mysql`], reads the server version; with TLS
    /// to backends, also runs the TLS handshake sessions would.
    async fn check_sql(&self, addr: &str) -> Result<Option<String>, Failure> {
        let conn = self.connect(addr).await?;
        match (self.cfg.probe, &self.backend_tls) {
            (Probe::Tcp, None) => Ok(None),
            (Probe::Tcp, Some(tls)) => {
                self.tls_step(addr, backend_tls::at_connect(tls, addr, conn))
                    .await?;
                Ok(None)
            }
            (Probe::Mysql, _) => self.check_mysql(addr, conn).await.map(Some),
        }
    }

    async fn connect(&self, addr: &str) -> Result<TcpStream, Failure> {
        let dial = self.cfg.dial_timeout;
        match tokio::time::timeout(dial, TcpStream::connect(addr)).await {
            Err(_) => Err(Failure::retry(format!(
                "connect {addr}: timed out after {dial:?}"
            ))),
            Ok(Err(e)) => {
                let reason = format!("connect {addr}: {e}");
                Err(if e.kind() == io::ErrorKind::ConnectionRefused {
                    Failure::final_(reason)
                } else {
                    Failure::retry(reason)
                })
            }
            Ok(Ok(conn)) => Ok(conn),
        }
    }

    /// The TLS step `tls` within `dial_timeout`, its failure named for `addr`.
    async fn tls_step<T>(
        &self,
        addr: &str,
        tls: impl std::future::Future<Output = Result<T, backend_tls::ProbeTlsError>>,
    ) -> Result<T, Failure> {
        let dial = self.cfg.dial_timeout;
        match tokio::time::timeout(dial, tls).await {
            Err(_) => Err(Failure::retry(format!(
                "TLS with {addr}: no handshake within {dial:?}"
            ))),
            Ok(Err(e)) => Err(Failure {
                reason: format!("TLS with {addr}: {e}"),
                retryable: e.retryable(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// Reads the greeting (the server version), upgrades to TLS when configured, and signs off
    /// in the background (see [`sign_off`]).
    async fn check_mysql(&self, addr: &str, conn: TcpStream) -> Result<String, Failure> {
        let dial = self.cfg.dial_timeout;
        let mut conn = PacketReader::new(conn);
        let greeted = match tokio::time::timeout(dial, read_greeting(&mut conn)).await {
            Err(_) => {
                return Err(Failure::retry(format!(
                    "read greeting from {addr}: no greeting within {dial:?}"
                )))
            }
            Ok(Err(f)) => {
                return Err(Failure {
                    reason: format!("read greeting from {addr}: {}", f.reason),
                    retryable: f.retryable,
                })
            }
            Ok(Ok(greeted)) => greeted,
        };
        match &self.backend_tls {
            None => self.sign_off_later(addr, conn, false),
            Some(tls) => {
                let conn = self
                    .tls_step(addr, backend_tls::upgrade(tls, addr, greeted.caps, conn))
                    .await?;
                self.sign_off_later(addr, conn, true);
            }
        }
        Ok(greeted.version)
    }

    /// Signs the probe off in a task of its own (when `probe_user` is set): the verdict is in,
    /// and signing off must not spend the check's time.
    fn sign_off_later<S>(&self, addr: &str, mut conn: PacketReader<S>, tls: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.cfg.probe_user.is_empty() {
            return;
        }
        let (user, addr, dial) = (
            self.cfg.probe_user.clone(),
            addr.to_string(),
            self.cfg.dial_timeout,
        );
        tokio::spawn(async move {
            match tokio::time::timeout(dial, sign_off(&mut conn, &user, tls)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(backend = %addr, error = %e, "probe sign-off failed"),
                Err(_) => debug!(backend = %addr, "probe sign-off timed out"),
            }
        });
    }

    /// Logs `health`'s failure reason for `addr` when it differs from the last one, and a
    /// recovery once.
    fn note(&self, addr: &str, health: &BackendHealth) {
        let mut last = self.last_failure.borrow_mut();
        match &health.ping_err {
            Some(reason) => {
                if last.get(addr) != Some(reason) {
                    warn!(backend = %addr, reason = %reason, "health check failed");
                    last.insert(addr.to_string(), reason.clone());
                } else {
                    debug!(backend = %addr, reason = %reason, "health check still failing");
                }
            }
            None => {
                if last.remove(addr).is_some() {
                    info!(backend = %addr, version = %health.server_version, "health check passed again");
                }
            }
        }
    }
}

impl HealthCheck for DefaultHealthCheck {
    async fn check(&self, addr: &str, info: &BackendInfo) -> BackendHealth {
        if !self.cfg.enable {
            // As the reference router: checks off means every backend is taken as healthy,
            // without a probe (and without a connection the backend would have to count).
            return BackendHealth::healthy();
        }
        let bound = self.check_bound();
        let health = match tokio::time::timeout(bound, self.check_unbounded(addr, info)).await {
            Ok(health) => health,
            Err(_) => BackendHealth::down(format!("health check of {addr} exceeded {bound:?}")),
        };
        self.note(addr, &health);
        health
    }
}

/// Why a step failed and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Failure {
    pub(crate) reason: String,
    pub(crate) retryable: bool,
}

impl Failure {
    fn retry(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: true,
        }
    }

    fn final_(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            retryable: false,
        }
    }
}

/// Ends a probe connection the way the server counts as a login attempt, not a broken handshake.
///
/// A client that reads the greeting and hangs up is an "aborted connect": MariaDB and MySQL count
/// it against the host, and after `max_connect_errors` (default 100, i.e. five minutes of checks
/// every 3 s) block the proxy's host for every client. An answered login, even one refused with
/// "access denied", is not counted. So the probe logs in as `user` with no password
/// (`mysql_native_password`, protocol 4.1), reads the one reply, and says `COM_QUIT` when it was
/// let in. Loopback connections are exempt from the host cache, which is why only a remote
/// backend shows the problem. After a TLS upgrade (`tls`) the login says `CLIENT_SSL` and
/// follows the SSL request (sequence id 2): a server with `require_secure_transport` takes it
/// as any TLS login, where a plain one would be refused with 3159.
pub(crate) async fn sign_off<S>(
    conn: &mut PacketReader<S>,
    user: &str,
    tls: bool,
) -> Result<(), PacketError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (caps, seq) = match tls {
        true => (PROBE_CAPS | caps::SSL, LOGIN_SEQ_AFTER_TLS),
        false => (PROBE_CAPS, LOGIN_SEQ),
    };
    let login = Response {
        caps,
        max_packet: PROBE_MAX_PACKET,
        charset: charset::UTF8_GENERAL_CI,
        user: user.to_string(),
        auth: Vec::new(),
        plugin: NATIVE_PASSWORD.to_string(),
    };
    let mut out = Vec::with_capacity(wire::HEADER + 64 + user.len());
    let seq = put_packet(&mut out, seq, &login.build());
    wire::flush(conn.get_mut(), &mut out).await?;
    // Read the whole reply (an OK or ERR is small), so closing leaves nothing unread behind:
    // unread bytes would turn our close into a reset.
    let reply = conn.frame_seq(seq).await?;
    if reply.first() == marker::OK && !reply.payload().is_empty() {
        // Let in (a user created for checks): leave politely.
        put_packet(&mut out, 0, &[cmd::QUIT]);
        wire::flush(conn.get_mut(), &mut out).await?;
    }
    Ok(())
}

/// Sequence id of the probe's login (the handshake response).
const LOGIN_SEQ: u8 = 1;
/// Sequence id of the probe's login after an SSL request took id 1.
const LOGIN_SEQ_AFTER_TLS: u8 = 2;

/// What the probe learns from a greeting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Greeted {
    /// The server version it announces.
    pub(crate) version: String,
    /// Its capabilities (0 when the greeting's tail cannot be read: nothing is offered).
    pub(crate) caps: u32,
}

/// Reads the server's initial handshake packet: the version it announces and what it offers.
///
/// A server that refuses us sends an ERR packet instead (code and message), e.g. MariaDB's
/// "Host … is blocked because of many connection errors"; that is final.
pub(crate) async fn read_greeting<R: AsyncRead + Unpin>(
    conn: &mut PacketReader<R>,
) -> Result<Greeted, Failure> {
    conn.set_max_payload(MAX_GREETING_LEN);
    let greeting = conn.frame().await.map_err(|e| match e {
        PacketError::Closed => Failure::retry("connection closed before any greeting"),
        PacketError::Truncated { got, .. } if got < wire::HEADER => Failure::retry(format!(
            "truncated greeting: connection closed after {got} of {} header bytes",
            wire::HEADER
        )),
        PacketError::Truncated { got, want } => Failure::retry(format!(
            "truncated greeting: connection closed after {} of {} bytes",
            got - wire::HEADER,
            want - wire::HEADER
        )),
        PacketError::TooLarge { len, .. } => Failure::final_(format!(
            "greeting of {len} bytes exceeds the {MAX_GREETING_LEN}-byte limit; not a MySQL server?"
        )),
        e => Failure::retry(e.to_string()),
    })?;
    conn.set_max_payload(wire::MAX_PAYLOAD);
    let version = parse_greeting(greeting.payload())?;
    let caps = Greeting::parse(greeting.payload()).map_or(0, |g| g.caps);
    Ok(Greeted { version, caps })
}

/// Takes the server version out of a greeting payload (header stripped).
pub(crate) fn parse_greeting(payload: &[u8]) -> Result<String, Failure> {
    match wire::server_version(payload) {
        Ok(version) => Ok(text(version)),
        Err(HandshakeError::Refused(e)) => Err(Failure::final_(format!(
            "server refused the connection: ERROR {}: {}",
            e.code,
            text(e.message.as_bytes())
        ))),
        Err(e @ HandshakeError::Protocol(_)) => {
            Err(Failure::final_(format!("{e}; not a MySQL server?")))
        }
        Err(e) => Err(Failure::final_(e.to_string())),
    }
}

/// Bytes from the network as printable text, bounded in length.
fn text(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_TEXT)]);
    s.chars().filter(|c| !c.is_control()).collect()
}

/// `host:port`, bracketing a bare IPv6 address.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// An error and its sources, joined with ": " (reqwest's own message omits the cause).
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        let s = src.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = src.source();
    }
    out
}

/// Whether a request failed because the connection was refused.
pub(crate) fn is_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_packet(&mut out, 0, payload);
        out
    }

    async fn read(bytes: &[u8]) -> Result<String, Failure> {
        read_greeting(&mut PacketReader::new(bytes))
            .await
            .map(|g| g.version)
    }

    #[tokio::test]
    async fn a_v10_greeting_yields_the_server_version() {
        let mut payload = vec![10u8];
        payload.extend_from_slice(b"8.0.11-TiDB-v8.5.0\0rest-of-greeting");
        assert_eq!(read(&frame(&payload)).await.unwrap(), "8.0.11-TiDB-v8.5.0");
    }

    #[tokio::test]
    async fn an_err_greeting_is_final_and_carries_the_message() {
        let mut payload = vec![0xff, 0x69, 0x04];
        payload.extend_from_slice(b"Host '10.0.0.1' is blocked because of many connection errors");
        let f = read(&frame(&payload)).await.unwrap_err();
        assert!(!f.retryable);
        assert!(f.reason.contains("ERROR 1129"), "{}", f.reason);
        assert!(f.reason.contains("is blocked"), "{}", f.reason);
    }

    #[tokio::test]
    async fn an_err_greeting_with_sql_state_drops_the_state() {
        let mut payload = vec![0xff, 0x10, 0x04];
        payload.extend_from_slice(b"#08004Too many connections");
        let f = read(&frame(&payload)).await.unwrap_err();
        assert!(
            f.reason.ends_with("ERROR 1040: Too many connections"),
            "{}",
            f.reason
        );
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_reading_the_payload() {
        let f = read(&[0xff, 0xff, 0xff, 0x00, 10]).await.unwrap_err();
        assert!(!f.retryable);
        assert!(f.reason.contains("exceeds"), "{}", f.reason);
    }

    #[tokio::test]
    async fn a_truncated_greeting_says_how_much_arrived() {
        let mut bytes = frame(b"\x0a5.7.25\0abcdefgh");
        bytes.truncate(10);
        let f = read(&bytes).await.unwrap_err();
        assert!(f.reason.contains("after 6 of 16 bytes"), "{}", f.reason);
        let f = read(&[0x10, 0x00]).await.unwrap_err();
        assert!(f.reason.contains("2 of 4 header bytes"), "{}", f.reason);
        let f = read(&[]).await.unwrap_err();
        assert!(f.reason.contains("before any greeting"), "{}", f.reason);
    }

    #[tokio::test]
    async fn other_protocols_and_malformed_versions_are_rejected() {
        let f = read(&frame(b"\x09old")).await.unwrap_err();
        assert!(f.reason.contains("protocol version 9"), "{}", f.reason);
        let f = read(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.unwrap_err();
        assert!(f.reason.contains("exceeds"), "{}", f.reason);
        let f = read(&frame(b"\x0a5.7.25-no-nul")).await.unwrap_err();
        assert!(f.reason.contains("NUL"), "{}", f.reason);
        let f = read(&frame(&[0xff])).await.unwrap_err();
        assert!(f.reason.contains("ERR"), "{}", f.reason);
    }

    #[test]
    fn ipv6_status_hosts_are_bracketed() {
        assert_eq!(join_host_port("::1", 10080), "[::1]:10080");
        assert_eq!(join_host_port("10.0.0.1", 10080), "10.0.0.1:10080");
    }

    #[test]
    fn the_check_bound_follows_the_config() {
        let hc = DefaultHealthCheck::new(HealthCheckConfig::default());
        assert_eq!(hc.check_bound(), Duration::from_secs(12));
    }
}
