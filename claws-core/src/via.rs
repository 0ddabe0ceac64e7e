//! [`Via`]: how a packet arrived, so that a reply can go back the same way.

use std::sync::Arc;

use crate::jid::Jid;
use crate::topology::QueueKind;
use crate::trace::TraceContext;

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
    /// The sender's JID: the one the claw carried (AMQP `reply_to` / 1.0 `reply-to`), else, as
    /// filled in by the router before the handler runs, the stanza's own `from` attribute (every
    /// XMPP peer writes it; peers such as the Erlang claw never set `reply_to`). The router
    /// learns a route to it.
    pub from: Option<Jid>,
    /// The W3C trace context the sender put on the message (`traceparent`), if a valid one:
    /// the router's delivery span continues that trace (see [`crate::trace`]).
    pub trace: Option<TraceContext>,
    /// The broker-verified user that published the message: the AMQP `user_id` property
    /// (0-9-1) / `user-id` (1.0). RabbitMQ refuses a publish whose `user_id` is not its
    /// connection's user (unless that user has the `impersonator` tag), and every claw sets
    /// it, so a handler can authorise a request by it, or refuse a spoofed one. `None` when
    /// the publisher set none (a peer that is not a claw, or `auth_mechanism=external`):
    /// then nothing says who sent it. See docs/SECURITY.md.
    pub user: Option<Arc<str>>,
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
            trace: None,
            user: None,
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

    /// Sets the broker-verified publishing user ([`user`](Self::user)).
    #[must_use]
    pub fn with_user(mut self, user: Option<Arc<str>>) -> Self {
        self.user = user;
        self
    }

    /// The broker-verified user that published the message, if it carried one
    /// ([`user`](Self::user)).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Sets the trace context from a `traceparent` value (ignored unless valid: a peer's
    /// malformed header starts a new trace, it does not fail the delivery).
    #[must_use]
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> Self {
        self.trace = traceparent.and_then(TraceContext::parse);
        self
    }

    /// Where a reply goes, in this order:
    /// 1. [`from`](Via::from): the sender the claw carried, else the stanza's `from` attribute;
    /// 2. for a broadcast only, the delivery's routing key, which the contract makes the
    ///    broadcaster's JID;
    /// 3. nowhere (`None`): a reply then fails with an error naming the missing sender.
    ///
    /// Never the routing key of a direct delivery: that is the receiver's own JID, and a reply
    /// there would loop.
    pub fn reply_to(&self) -> Option<Jid> {
        if let Some(from) = &self.from {
            return Some(from.clone());
        }
        match self.queue {
            QueueKind::Fanout | QueueKind::GroupFanout => Jid::new(&self.jid).ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn via(queue: QueueKind, jid: &str) -> Via {
        Via::new("c", queue, jid)
    }

    #[test]
    fn a_reply_goes_to_the_sender_first() {
        let from = Jid::new("s@x/1").unwrap();
        let v = via(QueueKind::Direct, "me@x/r").with_from(Some(from.clone()));
        assert_eq!(v.reply_to(), Some(from));
    }

    #[test]
    fn a_direct_delivery_without_sender_has_no_reply_destination() {
        // The routing key is the receiver's own JID: replying there would loop.
        assert_eq!(via(QueueKind::Direct, "me@x/r").reply_to(), None);
        assert_eq!(via(QueueKind::GroupDirect, "me@x").reply_to(), None);
    }

    #[test]
    fn a_broadcast_without_sender_replies_to_its_routing_key() {
        let v = via(QueueKind::Fanout, "caster@x/1");
        assert_eq!(v.reply_to(), Some(Jid::new("caster@x/1").unwrap()));
        let v = via(QueueKind::GroupFanout, "caster@x/1");
        assert_eq!(v.reply_to(), Some(Jid::new("caster@x/1").unwrap()));
    }
}
