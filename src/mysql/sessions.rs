//! `MysqlSessions`: the live `protocol: mysql` connections, so graceful shutdown can reach them.
//!
//! [`super::start_proxied`] sends [`Register`] when it starts a `MysqlConn` (from the worker
//! arbiter that owns it) and the connection's stop hook sends [`Unregister`]; [`CloseAll`] fans
//! `CloseAtSafePoint` out to every live session. An actor, not a shared map, because the
//! connections live on several arbiters and only this actor touches the set. The service starts
//! it only in `protocol: mysql`.

use std::collections::HashMap;

use actix::prelude::*;
use tracing::debug;

use super::CloseAtSafePoint;

/// A `MysqlConn` started; `close` reaches it until it stops.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Register {
    /// The connection id (unique in this process).
    pub id: u64,
    /// Where to ask it to close at its next safe point.
    pub close: Recipient<CloseAtSafePoint>,
}

/// The connection `id` stopped.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "()")]
pub struct Unregister {
    /// The connection id.
    pub id: u64,
}

/// Ask every live session to close at its next safe point (graceful shutdown). Sessions that
/// register afterwards (clients accepted just before the listener stopped) are asked at once.
/// Answers how many sessions were asked.
#[derive(Debug, Clone, Copy, Message)]
#[rtype(result = "usize")]
pub struct CloseAll;

/// The set of live `protocol: mysql` sessions (see the module docs).
#[derive(Default)]
pub struct MysqlSessions {
    /// Live sessions by connection id: an entry exists from `Register` to `Unregister`.
    live: HashMap<u64, Recipient<CloseAtSafePoint>>,
    /// Set by [`CloseAll`]; from then on every session is asked to close as it registers.
    closing: bool,
}

impl MysqlSessions {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Actor for MysqlSessions {
    type Context = Context<Self>;
}

impl Handler<Register> for MysqlSessions {
    type Result = ();
    fn handle(&mut self, msg: Register, _: &mut Context<Self>) {
        if self.closing {
            debug!(
                conn_id = msg.id,
                "session started during shutdown: closing at its next safe point"
            );
            msg.close.do_send(CloseAtSafePoint);
        }
        self.live.insert(msg.id, msg.close);
    }
}

impl Handler<Unregister> for MysqlSessions {
    type Result = ();
    fn handle(&mut self, msg: Unregister, _: &mut Context<Self>) {
        self.live.remove(&msg.id);
    }
}

impl Handler<CloseAll> for MysqlSessions {
    type Result = usize;
    fn handle(&mut self, _: CloseAll, _: &mut Context<Self>) -> usize {
        self.closing = true;
        for close in self.live.values() {
            // a session that stopped meanwhile has its Unregister queued behind this message
            close.do_send(CloseAtSafePoint);
        }
        self.live.len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::rc::Rc;

    use super::*;

    /// Counts the `CloseAtSafePoint`s it receives.
    struct Session(Rc<Cell<usize>>);

    impl Actor for Session {
        type Context = Context<Self>;
    }

    impl Handler<CloseAtSafePoint> for Session {
        type Result = ();
        fn handle(&mut self, _: CloseAtSafePoint, _: &mut Context<Self>) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[actix_rt::test]
    async fn close_all_asks_live_sessions_and_late_ones_but_not_ended_ones() {
        let sessions = MysqlSessions::new().start();
        let asked: Vec<Rc<Cell<usize>>> = (0..3).map(|_| Rc::default()).collect();
        let conns: Vec<_> = asked.iter().map(|n| Session(n.clone()).start()).collect();
        let register = |id: usize| Register {
            id: id as u64,
            close: conns[id].clone().recipient(),
        };

        sessions.do_send(register(0));
        sessions.do_send(register(1));
        sessions.do_send(Unregister { id: 1 });
        assert_eq!(sessions.send(CloseAll).await.unwrap(), 1);
        sessions.send(register(2)).await.unwrap();

        // one more message each, answered after any CloseAtSafePoint already queued
        for c in &conns {
            c.send(CloseAtSafePoint).await.unwrap();
        }
        let got: Vec<usize> = asked.iter().map(|n| n.get() - 1).collect();
        assert_eq!(got, [1, 0, 1]);
    }
}
