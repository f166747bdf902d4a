//! The control link from a `MysqlConn` actor to its relay task: redirects and closes, acted on
//! at the next safe point. Its own module so the actor and the relay both import it and neither
//! imports the other.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use switchyard::BackendInst;
use tokio::sync::Notify;

/// Control from the actor to its relay task.
#[derive(Debug)]
pub(super) enum Control {
    /// Move to this backend at the next safe point.
    Redirect(BackendInst),
    /// Close at the next safe point.
    Close,
    /// Close at the next safe point, telling the client why in an ERR packet first (a drain's
    /// timeout).
    CloseWithError(String),
}

/// The link from the actor to its relay task. The task runs inside the actor's context (same
/// thread, same tokio task), so a shared queue and a `Notify` do what a channel would, in about
/// a tenth of the memory of a tokio `mpsc` channel (whose first block of slots is allocated up
/// front, in every idle session).
#[derive(Default)]
struct Link {
    queue: RefCell<VecDeque<Control>>,
    /// The actor is gone.
    closed: Cell<bool>,
    wake: Notify,
}

/// A control link: the actor's end and the relay task's end.
pub(super) fn control() -> (ControlTx, ControlRx) {
    let link = Rc::new(Link::default());
    (ControlTx(link.clone()), ControlRx(link))
}

/// The actor's end of the [`control`] link; dropping it closes the link.
pub(super) struct ControlTx(Rc<Link>);

impl ControlTx {
    /// Queues `c` for the relay task, which takes it at its next safe point (dropped when the
    /// task has ended: its `ConnClosed` already answered for the connection).
    pub(super) fn send(&self, c: Control) {
        if Rc::strong_count(&self.0) > 1 {
            self.0.queue.borrow_mut().push_back(c);
            self.0.wake.notify_one();
        }
    }
}

impl Drop for ControlTx {
    fn drop(&mut self) {
        self.0.closed.set(true);
        self.0.wake.notify_one();
    }
}

/// The relay task's end of the [`control`] link.
pub(super) struct ControlRx(Rc<Link>);

impl ControlRx {
    /// The next control message; `None` once the actor is gone. Cancel-safe: a message is only
    /// taken when this returns it.
    pub(super) async fn recv(&mut self) -> Option<Control> {
        loop {
            if let Some(c) = self.0.queue.borrow_mut().pop_front() {
                return Some(c);
            }
            if self.0.closed.get() {
                return None;
            }
            self.0.wake.notified().await;
        }
    }
}
