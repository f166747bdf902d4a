//! What the observer and the router say to each other: the observer's reports
//! ([`BackendsChanged`], [`BackendsListed`]) and the requests it obeys ([`Refresh`],
//! [`StopObserver`], [`GetObserved`]).
//!
//! It sits below both actors so that neither imports the other's module for these words: the
//! observer knows nothing of the router, and the router reaches its observer through recipients.

use std::collections::HashMap;

use actix::prelude::*;

use crate::error::ObserveError;
use crate::model::BackendHealth;

/// The observer's report: backends whose health changed, or why discovery failed.
#[derive(Debug, Clone, Default, Message)]
#[rtype(result = "()")]
pub struct BackendsChanged {
    /// Changed backends and their new health (only changes; an empty map is "no change").
    pub backends: HashMap<String, BackendHealth>,
    /// Set when the cycle failed; routes are refused with it until a later cycle succeeds.
    pub error: Option<ObserveError>,
}

/// The observer's full list after a good cycle: every discovered backend, healthy or not, with
/// its weight (1 unless config or discovery says otherwise). Sent when it differs from the last
/// one sent (and after the first cycle).
///
/// [`BackendsChanged`] says only what changed health; this says what exists, which the router
/// needs for weights and for panic mode ("fewer than half of the *known* backends are healthy").
/// An application feeding a router by hand may send it too.
#[derive(Debug, Clone, Default, PartialEq, Message)]
#[rtype(result = "()")]
pub struct BackendsListed {
    /// Address → weight (> 0).
    pub backends: HashMap<String, f64>,
}

/// Run a cycle now. While a cycle runs, any number of refreshes fold into one more cycle.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct Refresh;

/// Stop the observer; it sends nothing after this.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "()")]
pub struct StopObserver;

/// Every backend of the last good cycle with the health the observer reports for it, unhealthy
/// ones included. The router only learns of backends once they are healthy; an operator's view
/// (the service's `/backends`) wants the configured-but-down ones too.
#[derive(Debug, Clone, Copy, Default, Message)]
#[rtype(result = "HashMap<String, BackendHealth>")]
pub struct GetObserved;
