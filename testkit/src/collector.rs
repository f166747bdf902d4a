//! A receiver for an observer's reports, so a test waits on the next `BackendsChanged` instead of
//! sleeping.

use actix::prelude::*;
use switchyard::BackendsChanged;
use tokio::sync::mpsc;

/// Forwards every [`BackendsChanged`] it receives to a channel the test reads.
pub struct Collector(mpsc::UnboundedSender<BackendsChanged>);

impl Collector {
    /// Starts a collector; give its address (as a recipient) to a `BackendObserver` and read the
    /// reports from the returned channel. Keep the address alive: the observer holds it weakly.
    pub fn start_new() -> (Addr<Collector>, mpsc::UnboundedReceiver<BackendsChanged>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Collector(tx).start(), rx)
    }
}

impl Actor for Collector {
    type Context = Context<Self>;
}

impl Handler<BackendsChanged> for Collector {
    type Result = ();
    fn handle(&mut self, msg: BackendsChanged, _: &mut Context<Self>) {
        let _ = self.0.send(msg);
    }
}
