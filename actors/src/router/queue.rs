//! `RouteQueue`: routes waiting, first come first served, for a backend with room.
//!
//! When every candidate backend is at `max_conns_per_backend`, the router parks the route here
//! instead of refusing it; whenever room may have appeared (a connection closed, a route was
//! given back, a backend came up or was undrained) it serves the queue from the front. Each
//! waiter is the sending half of a oneshot: the route's own future holds the other half under
//! `queue_timeout`, so a waiter that gave up is seen as a closed sender and skipped. Plain data:
//! the actor owns it, and a test drives it with no actor at all.

use std::collections::VecDeque;

use tokio::sync::oneshot;

use crate::error::RouteError;
use crate::model::BackendInst;

/// What a served waiter receives.
pub(crate) type Answer = Result<BackendInst, RouteError>;

/// One parked route.
#[derive(Debug)]
struct Waiter {
    excluded: Vec<String>,
    answer: oneshot::Sender<Answer>,
}

/// A bounded FIFO of parked routes (see the module docs).
#[derive(Debug)]
pub(crate) struct RouteQueue {
    waiters: VecDeque<Waiter>,
    limit: usize,
}

impl RouteQueue {
    /// An empty queue holding at most `limit` routes.
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            waiters: VecDeque::new(),
            limit,
        }
    }

    /// Parks a route at the back; `None` when the queue is full.
    pub(crate) fn push(&mut self, excluded: Vec<String>) -> Option<oneshot::Receiver<Answer>> {
        self.prune();
        if self.waiters.len() >= self.limit {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(Waiter {
            excluded,
            answer: tx,
        });
        Some(rx)
    }

    /// Routes still waiting (those that gave up are dropped first).
    pub(crate) fn len(&mut self) -> usize {
        self.prune();
        self.waiters.len()
    }

    /// Serves waiters from the front with `route` until it answers `AllFull` (still no room:
    /// the rest keep waiting, in order) or the queue is empty. Any other answer goes to its
    /// waiter. A route handed to a waiter that gave up meanwhile is passed to `undo`, so its
    /// pending point goes back. Returns how many were answered.
    pub(crate) fn serve(
        &mut self,
        mut route: impl FnMut(&[String]) -> Answer,
        mut undo: impl FnMut(BackendInst),
    ) -> usize {
        let mut answered = 0;
        while let Some(w) = self.waiters.front() {
            if w.answer.is_closed() {
                self.waiters.pop_front();
                continue;
            }
            let answer = route(&w.excluded);
            if matches!(answer, Err(RouteError::AllFull)) {
                break;
            }
            let Some(w) = self.waiters.pop_front() else {
                break;
            };
            if let Err(Ok(inst)) = w.answer.send(answer) {
                undo(inst);
            } else {
                answered += 1;
            }
        }
        answered
    }

    /// Drops waiters that gave up (their receiver is gone).
    fn prune(&mut self) {
        self.waiters.retain(|w| !w.answer.is_closed());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(addr: &str) -> BackendInst {
        BackendInst::new(addr, true)
    }

    #[test]
    fn waiters_are_served_first_come_first_served_while_there_is_room() {
        let mut q = RouteQueue::new(10);
        let mut rx: Vec<_> = (0..3).map(|_| q.push(Vec::new()).expect("room")).collect();
        let mut room = 2;
        let served = q.serve(
            |_| {
                if room == 0 {
                    return Err(RouteError::AllFull);
                }
                room -= 1;
                Ok(inst("a"))
            },
            |_| panic!("nobody gave up"),
        );
        assert_eq!(served, 2);
        assert!(rx[0].try_recv().is_ok() && rx[1].try_recv().is_ok());
        assert!(rx[2].try_recv().is_err(), "the third still waits");
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn a_waiter_that_gave_up_is_skipped_and_a_route_sent_to_it_is_undone() {
        let mut q = RouteQueue::new(10);
        let gave_up = q.push(Vec::new()).expect("room");
        let mut waiting = q.push(vec!["x".into()]).expect("room");
        drop(gave_up);
        assert_eq!(q.len(), 1, "the one that gave up no longer counts");
        let mut seen = Vec::new();
        q.serve(
            |excluded| {
                seen.push(excluded.to_vec());
                Ok(inst("a"))
            },
            |_| panic!("nobody gave up"),
        );
        assert_eq!(
            seen,
            vec![vec!["x".to_string()]],
            "only the live waiter was routed"
        );
        assert!(waiting.try_recv().is_ok());
    }

    #[test]
    fn a_full_queue_refuses_and_other_errors_reach_their_waiter() {
        let mut q = RouteQueue::new(1);
        let mut rx = q.push(Vec::new()).expect("room");
        assert!(q.push(Vec::new()).is_none(), "limit 1");
        q.serve(|_| Err(RouteError::NoBackend), |_| {});
        assert_eq!(rx.try_recv().expect("answered"), Err(RouteError::NoBackend));
    }
}
