//! Session state: what the proxy must carry to another backend, and what keeps a session where
//! it is.
//!
//! The server reports most of the state a move carries (variables, schema, whether a
//! transaction is open): through session tracking in its OK packets as it changes ([`known`]),
//! and by answering the snapshot at the move ([`carry`], which reads and writes the
//! [`snapshot`]). What it cannot report — SQL
//! `PREPARE`d statement texts, temporary tables, `GET_LOCK`s, `LOCK TABLES`, `HANDLER`s, XA — is
//! learnt by a conservative scan of the client's statements ([`scan`]; a text too long to
//! scan is only searched, [`long_text`]) and kept in the
//! [`Session`] ([`state`]), beside the binary prepared statements ([`stmts`]), whose ids are
//! virtualised so a client keeps the ids it was given when its statements are re-prepared on a
//! target. Every reason a session cannot move is a [`Pin`]. The open transaction's commands and
//! a checksum of each answer are kept in its replay log ([`txlog`]), which a session whose backend
//! is lost mid-transaction runs again elsewhere.

pub mod carry;
pub mod known;
mod lex;
pub mod long_text;
pub mod pin;
pub mod readonly;
pub mod scan;
pub mod snapshot;
pub mod state;
mod statement;
pub mod stmts;
pub mod txlog;

pub use carry::{restore, snapshot, Restored, StateError};
pub use pin::Pin;
pub use scan::{analyze, Effect, Pending};
pub use snapshot::{Snapshot, SysVar, UserVar};
pub use state::{Outcome, Session};
pub use stmts::Stmt;
pub use txlog::TxLog;
