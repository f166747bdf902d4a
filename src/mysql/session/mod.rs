//! Session state: what the proxy must carry to another backend, and what keeps a session where
//! it is.
//!
//! The server reports most of the state a move carries (variables, schema), so that is read at
//! the move ([`carry`]) and costs nothing per command. What it cannot report — SQL `PREPARE`d
//! statement texts, temporary tables, `GET_LOCK`s, `LOCK TABLES`, `HANDLER`s, XA — is learnt by a
//! conservative scan of the client's statements ([`scan`]; a text too long to scan is only searched,
//! [`long_text`]) and kept in the [`Session`]
//! ([`state`]), beside the binary prepared statements ([`stmts`]), whose ids are virtualised so a
//! client keeps the ids it was given when its statements are re-prepared on a target.

pub mod carry;
pub mod long_text;
pub mod scan;
pub mod state;
pub mod stmts;

pub use carry::{restore, snapshot, Snapshot, StateError, SysVar, UserVar};
pub use scan::{analyze, Effect, Pending};
pub use state::{Blocker, Session};
pub use stmts::Stmt;
