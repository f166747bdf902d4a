//! `protocol: mysql`: MySQL-protocol client connections that move between backends at safe
//! points with their session state intact.
//!
//! One [`MysqlConn`] actor per client: it starts like every connection (`crate::entry`), passes the first login
//! through to the backend, relays commands while tracking where each response ends
//! ([`tracker`]), and answers the router's `Redirect` by logging in to the target as the same user
//! (credentials from [`MysqlUsers`]), restoring the session ([`session`]) and swapping backends
//! between two commands. It is shaped as an actor (control: redirect, drain; in [`conn`])
//! driving one task (the data path; in `relay`), so control messages never wait behind a long
//! result set and the data path never takes a lock. The wire format itself is the library's
//! `switchyard::wire`, shared with the health check.

pub mod backend;
pub mod conn;
mod control;
mod relay;
pub mod session;
pub mod sessions;
pub mod tracker;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor as _, Addr};

pub use conn::{CloseAtSafePoint, MysqlConn};
use switchyard::wire::{parse_password_hash, NativeSecret, SCRAMBLE_LEN};

/// A configured user's credential, as kept in memory: never the cleartext password.
#[derive(Debug, Clone)]
pub enum Credential {
    /// From `password`: `SHA1(password)`, enough to log in with `mysql_native_password`.
    Secret(NativeSecret),
    /// From `password_hash`: `SHA1(SHA1(password))`; the session recovers `SHA1(password)` from
    /// the client's own login.
    Hash([u8; SCRAMBLE_LEN]),
}

/// A bad `mysql.users` entry.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// `password_hash` is not `*` followed by 40 hex digits.
    #[error("mysql.users[{0}].password_hash: expected \"*\" followed by 40 hex digits")]
    BadHash(String),
    /// Neither `password` nor `password_hash` (or both).
    #[error("mysql.users[{0}]: give exactly one of password, password_hash")]
    NeedOne(String),
}

/// `mysql.users`: the accounts whose sessions may be moved.
#[derive(Debug, Clone, Default)]
pub struct MysqlUsers {
    users: HashMap<String, Credential>,
}

impl MysqlUsers {
    /// No users: every session is proxied but none can move.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user from a config entry with exactly one of `password`, `password_hash`.
    pub fn add(
        &mut self,
        name: &str,
        password: Option<&str>,
        password_hash: Option<&str>,
    ) -> Result<(), UsersError> {
        let cred = match (password, password_hash) {
            (Some(pw), None) => Credential::Secret(NativeSecret::from_password(pw)),
            (None, Some(h)) => Credential::Hash(
                parse_password_hash(h).ok_or_else(|| UsersError::BadHash(name.into()))?,
            ),
            _ => return Err(UsersError::NeedOne(name.into())),
        };
        self.users.insert(name.to_string(), cred);
        Ok(())
    }

    /// The credential of `name`.
    pub fn get(&self, name: &str) -> Option<&Credential> {
        self.users.get(name)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True when no user is configured.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Settings of `protocol: mysql` connections.
#[derive(Debug, Clone)]
pub struct MysqlConfig {
    /// Users whose sessions may move.
    pub users: MysqlUsers,
    /// Bound on one TCP connect to a backend.
    pub connect_timeout: Duration,
    /// Bound on a whole move (`mysql.move_timeout`): the target's login, the snapshot on the
    /// old backend and the restore. A move that takes longer fails; an old backend that has
    /// not answered the snapshot by then gets one more `move_timeout` to recover before the
    /// session is closed, so a frozen backend never hangs a drain or a client.
    pub move_timeout: Duration,
    /// Largest logical packet accepted from a client (the protocol's own limit is 1 GiB).
    pub max_packet: usize,
    /// The user a backend login the client abandoned is finished as (`health_check.probe_user`):
    /// a login refused for a missing user is not an aborted connect.
    pub probe_user: String,
    /// Bytes of answers a move's snapshot keeps from the old backend: a session whose state is
    /// larger (large user variables) stays where it is, and the proxy's memory stays bounded.
    pub max_snapshot: usize,
    /// `proxy.tls`: offered to clients in the greeting (`CLIENT_SSL`), required when it says so.
    pub front_tls: Option<crate::tls::FrontTls>,
    /// What the proxy hides from a client when its backend is lost (`failover.*`).
    pub failover: FailoverConfig,
}

/// `failover.*` (defined with the configuration, which owns every typed setting).
pub use crate::config::FailoverConfig;

impl Default for MysqlConfig {
    fn default() -> Self {
        Self {
            users: MysqlUsers::new(),
            connect_timeout: Duration::from_secs(2),
            move_timeout: Duration::from_secs(5),
            max_packet: 1 << 30,
            probe_user: switchyard::HealthCheckConfig::default().probe_user,
            max_snapshot: 4 << 20,
            failover: FailoverConfig::default(),
            front_tls: None,
        }
    }
}

impl MysqlUsers {
    /// From the service's validated `mysql.users`.
    pub fn from_config(users: &[crate::config::MysqlUser]) -> Self {
        let users = users
            .iter()
            .map(|u| {
                let cred = match &u.secret {
                    crate::config::MysqlSecret::Password(pw) => {
                        Credential::Secret(NativeSecret::from_password(pw))
                    }
                    crate::config::MysqlSecret::Hash(h) => Credential::Hash(*h),
                };
                (u.name.clone(), cred)
            })
            .collect();
        Self { users }
    }
}

/// Starts a [`MysqlConn`] for a client the service's listener accepted (the service's
/// `StartConn` in `protocol: mysql`), and keeps it in `sessions` while it lives. Must run on the
/// arbiter that will own the connection.
pub fn start_proxied(
    conn: crate::entry::NewConn,
    cfg: Arc<MysqlConfig>,
    sessions: &Addr<sessions::MysqlSessions>,
) {
    let id = conn.id;
    let Some(start) = crate::entry::ConnStart::adopt(conn) else {
        return;
    };
    let gone = sessions.clone();
    let addr = MysqlConn::new(start, cfg)
        .on_stop(move || gone.do_send(sessions::Unregister { id }))
        .start();
    // sent before the actor can stop, from the same thread, so Unregister follows it
    sessions.do_send(sessions::Register {
        id,
        close: addr.recipient(),
    });
}
