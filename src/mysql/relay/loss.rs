//! How a session's loss of its backend ends when it cannot simply go on: why a re-attach was
//! refused, why a lost transaction was not replayed, and the labels both count under. Shared by
//! [`super::failover`] (re-attach) and [`super::replay`] (transaction replay), which otherwise
//! would import each other.

use crate::mysql::backend::Backend;
use crate::mysql::session::txlog::NotReplayable;
use crate::mysql::session::{Pin, Restored};
use switchyard::Registration;

/// `switchyard_failover_errors_total` reason of a rollback error for a transaction that was lost
/// and not replayed (or whose replay failed, counted in `switchyard_failover_replayed_total`).
pub(super) const TRANSACTION_LOST: &str = "transaction_lost";
/// The same for a transaction that could not be replayed at all (see `txlog`).
pub(super) const NOT_REPLAYABLE: &str = "not_replayable";

/// Why a session could not go on after its backend was lost: told to the client, counted.
#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    /// `failover.reattach` is off.
    #[error("failover.reattach is off")]
    Disabled,
    /// State that dies with its backend: a lock, a temporary table, …
    #[error("the session held state that was lost with its backend: {}", .0.label())]
    Pinned(Pin),
    /// The proxy cannot prove what the session's state was.
    #[error("the session's state is not exactly known ({0})")]
    StateUnknown(String),
    /// No healthy backend took the session.
    #[error("no backend to re-attach to: {0}")]
    NoBackend(String),
    /// A new backend refused the login or the restored state.
    #[error("the new backend refused the session: {0}")]
    Restore(String),
    /// Re-attaching took longer than `failover.timeout`.
    #[error("re-attaching took longer than failover.timeout")]
    Timeout,
}

impl Refusal {
    /// The `reason` label of `switchyard_failover_errors_total`.
    pub(super) fn label(&self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::Pinned(p) => p.label(),
            Refusal::StateUnknown(_) => "state_unknown",
            Refusal::NoBackend(_) => "no_backend",
            Refusal::Restore(_) => "restore_failed",
            Refusal::Timeout => "timeout",
        }
    }
}

/// A session on a new backend, logged in and with a state restored, not yet the session's.
pub(super) struct Attached {
    pub(super) backend: Backend,
    pub(super) registration: Registration,
    pub(super) restored: Restored,
}

/// Why a transaction was not replayed.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unreplayed {
    /// The log could not be replayed: it overflowed, or holds what a replay cannot repeat.
    #[error("not replayable: {0}")]
    Not(NotReplayable),
    /// A replay ran and failed (`switchyard_failover_replayed_total` result: mismatch,
    /// timeout); the new backend's transaction was rolled back.
    #[error("replay failed: {0}")]
    Failed(&'static str),
    /// The new backend broke during the replay.
    #[error("the new backend failed during the replay: {0}")]
    Broken(String),
    /// No backend took the session at all: it cannot go on.
    #[error(transparent)]
    Refused(Refusal),
}

impl Unreplayed {
    /// The `switchyard_failover_errors_total` reason of the rollback error the client gets.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Unreplayed::Not(NotReplayable::Unreplayable(_)) => NOT_REPLAYABLE,
            _ => TRANSACTION_LOST,
        }
    }
}
