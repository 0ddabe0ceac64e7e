//! [`Shared`]: what the claw's tasks share.

use std::sync::Arc;

use claws_core::jid::Jid;
use claws_core::runtime::{Current, InFlight};

use crate::address::Source;
use crate::attempts::Attempts;
use crate::config::Settings;
use crate::connection::{Endpoint, Live};

/// What the claw's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) jid: Jid,
    /// Every broker endpoint (the nodes of a cluster), in the order given.
    pub(crate) endpoints: Vec<Endpoint>,
    pub(crate) sources: Vec<Source>,
    pub(crate) settings: Settings,
    /// The generation that serves sends now.
    pub(crate) current: Current<Arc<Live>>,
    pub(crate) attempts: Attempts,
    /// Deliveries handed out and not yet settled.
    pub(crate) in_flight: Arc<InFlight>,
    /// Sends waiting for their outcome.
    pub(crate) sends: Arc<InFlight>,
    pub(crate) container_id: String,
}
