//! [`Shared`]: what the claw's tasks share.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use claws_core::jid::Jid;
use claws_core::runtime::{Current, InFlight};

use crate::address::{Addresses, Dialect, Source};
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
    /// What the last connection learnt of the broker: 0 nothing yet, 1 before RabbitMQ 4 (or
    /// it did not say), 2 RabbitMQ 4 or later.
    pub(crate) broker: AtomicU8,
    /// The address form of the last connection ([`Dialect::to_u8`]; 0 none yet).
    pub(crate) dialect: AtomicU8,
}

impl Shared {
    /// Records what a new connection learnt of the broker.
    pub(crate) fn learnt(&self, broker4: bool, dialect: Dialect) {
        self.broker
            .store(if broker4 { 2 } else { 1 }, Ordering::Relaxed);
        self.dialect.store(dialect.to_u8(), Ordering::Relaxed);
    }

    /// Whether the broker is RabbitMQ 4 or later, if known: from the last connection, or
    /// from `addresses = "v2"` (which only RabbitMQ 4 understands).
    pub(crate) fn broker4(&self) -> Option<bool> {
        match self.broker.load(Ordering::Relaxed) {
            1 => Some(false),
            2 => Some(true),
            _ => (self.settings.addresses == Addresses::V2).then_some(true),
        }
    }

    /// The address form in use: the last connection's, else the configured one (v1 for
    /// `auto` before the first connection).
    pub(crate) fn dialect(&self) -> Dialect {
        Dialect::from_u8(self.dialect.load(Ordering::Relaxed))
            .unwrap_or_else(|| self.settings.addresses.resolve(None))
    }
}
