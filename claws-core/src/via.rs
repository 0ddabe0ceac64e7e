//! [`Via`]: how a packet arrived, so that a reply can go back the same way.

use std::sync::Arc;

use crate::jid::Jid;
use crate::topology::QueueKind;

/// How a packet arrived. It carries everything snatch's `#via{jid, exchange, claws, id}` did, plus
/// the subscription (`queue`) and the sender (`from`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Via {
    /// The address the packet was delivered under: on AMQP the delivery's routing key (for a direct
    /// send, the destination JID; for a broadcast, the sender's JID); on the component claw the
    /// stanza's `from`.
    pub jid: String,
    /// The exchange that routed it, or `None` outside AMQP.
    pub exchange: Option<String>,
    /// The name of the claw that received it.
    pub claw: Arc<str>,
    /// The message's correlation id, if any (the stanza id given to `send`).
    pub id: Option<String>,
    /// Which subscription delivered it.
    pub queue: QueueKind,
    /// The sender's JID when the claw knows it; the router learns a route to it.
    pub from: Option<Jid>,
}

impl Via {
    /// A `Via` with only the claw and subscription set; fill the rest with the `with_*` methods.
    pub fn new(claw: impl Into<Arc<str>>, queue: QueueKind, jid: impl Into<String>) -> Self {
        Self {
            jid: jid.into(),
            exchange: None,
            claw: claw.into(),
            id: None,
            queue,
            from: None,
        }
    }

    /// Sets the exchange.
    #[must_use]
    pub fn with_exchange(mut self, exchange: impl Into<String>) -> Self {
        self.exchange = Some(exchange.into());
        self
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn with_id(mut self, id: Option<String>) -> Self {
        self.id = id;
        self
    }

    /// Sets the sender.
    #[must_use]
    pub fn with_from(mut self, from: Option<Jid>) -> Self {
        self.from = from;
        self
    }

    /// Where a reply should go: the sender when known, else the delivery's JID.
    pub fn reply_to(&self) -> Option<Jid> {
        self.from.clone().or_else(|| Jid::new(&self.jid).ok())
    }
}
