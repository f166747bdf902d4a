//! Why a session cannot move now: one typed reason per kind of state a move cannot carry, each
//! with the label it is counted under (`switchyard_migrations_refused_total{reason=…}`), and
//! whether the redirect waits for it to end or is refused.

/// A reason a session cannot move now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pin {
    /// A transaction is open (also under `autocommit = 0`), as the server reports it or as the
    /// proxy verified with the server.
    InTransaction,
    /// An XA transaction is open.
    Xa,
    /// A one-shot `SET TRANSACTION …` waits for the session's next transaction, which uses it
    /// up at a point the proxy cannot see: the move waits until a transaction settles it.
    OneShotTransaction,
    /// Long data was sent for a prepared statement and not yet executed.
    LongData,
    /// `GET_LOCK` holds a named lock (checked with the server at the move), or one whose name the
    /// proxy cannot know.
    UserLock,
    /// `LOCK TABLES`, `FLUSH TABLES … WITH READ LOCK` / `FOR EXPORT`, `BACKUP STAGE` / `BACKUP
    /// LOCK` hold locks.
    TableLock,
    /// A temporary table exists.
    TemporaryTable,
    /// A `HANDLER` is open.
    Handler,
    /// A cursor is open on a binary prepared statement.
    OpenCursor,
    /// `PREPARE … FROM @var`: the statement's text is unknown, so it cannot be re-created.
    PreparedFromVariable,
    /// `SET ROLE`: the active role is not carried.
    Role,
    /// Something ran that the proxy cannot see into (`CALL`, a compound statement, `EXECUTE`
    /// of an unknown text, a failed multi-statement it cannot place): it may hold locks or
    /// temporary tables nobody can check. Cleared by `COM_RESET_CONNECTION` / `COM_CHANGE_USER`.
    UnknownState,
    /// The session's carried state is larger than `max_snapshot`.
    SnapshotTooLarge,
    /// The move did not finish within `move_timeout`.
    MoveTimeout,
    /// The user has no usable entry in `mysql.users`: the proxy cannot log in as it elsewhere.
    UnknownUser,
    /// The session has not finished logging in.
    NotLoggedIn,
    /// A command the proxy cannot follow (replication) made the session a plain byte relay.
    RawRelay,
}

impl Pin {
    /// The `reason` label of `switchyard_migrations_refused_total`.
    pub fn label(self) -> &'static str {
        match self {
            Pin::InTransaction => "in_transaction",
            Pin::Xa => "xa",
            Pin::OneShotTransaction => "one_shot_transaction",
            Pin::LongData => "long_data",
            Pin::UserLock => "user_lock",
            Pin::TableLock => "table_lock",
            Pin::TemporaryTable => "temporary_table",
            Pin::Handler => "handler",
            Pin::OpenCursor => "open_cursor",
            Pin::PreparedFromVariable => "prepared_from_variable",
            Pin::Role => "role",
            Pin::UnknownState => "unknown_state",
            Pin::SnapshotTooLarge => "snapshot_too_large",
            Pin::MoveTimeout => "move_timeout",
            Pin::UnknownUser => "unknown_user",
            Pin::NotLoggedIn => "not_logged_in",
            Pin::RawRelay => "raw_relay",
        }
    }

    /// True when the state ends on its own soon (a transaction, pending long data): the redirect
    /// is kept and carried out at the first safe point after. Otherwise the redirect is refused
    /// and the router retries after its back-off.
    pub fn waits(self) -> bool {
        matches!(
            self,
            Pin::InTransaction | Pin::Xa | Pin::OneShotTransaction | Pin::LongData
        )
    }

    /// Every reason, for documentation and tests.
    pub const ALL: [Pin; 17] = [
        Pin::InTransaction,
        Pin::Xa,
        Pin::OneShotTransaction,
        Pin::LongData,
        Pin::UserLock,
        Pin::TableLock,
        Pin::TemporaryTable,
        Pin::Handler,
        Pin::OpenCursor,
        Pin::PreparedFromVariable,
        Pin::Role,
        Pin::UnknownState,
        Pin::SnapshotTooLarge,
        Pin::MoveTimeout,
        Pin::UnknownUser,
        Pin::NotLoggedIn,
        Pin::RawRelay,
    ];
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_distinct_snake_case_words() {
        let mut seen = std::collections::HashSet::new();
        for p in Pin::ALL {
            let l = p.label();
            assert!(
                l.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{l}"
            );
            assert!(seen.insert(l), "{l} twice");
        }
        let waits: Vec<_> = Pin::ALL.into_iter().filter(|p| p.waits()).collect();
        assert_eq!(
            waits,
            [
                Pin::InTransaction,
                Pin::Xa,
                Pin::OneShotTransaction,
                Pin::LongData
            ]
        );
    }
}
