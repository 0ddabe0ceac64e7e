//! The address schemes: which AMQP 1.0 address each subscription and each kind of send uses.
//!
//! Names come from [`claws_core::topology`] (TOPOLOGY.md); this module only spells them the way
//! each broker wants them. See the crate docs for the tables.

use claws_core::jid::Jid;
use claws_core::topology::{
    self, QueueKind, QueueSpec, Subscriptions, DIRECT_EXCHANGE, FANOUT_EXCHANGE,
};
use claws_core::Result;

/// How the claw's subscriptions and sends map to AMQP 1.0 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddressScheme {
    /// RabbitMQ 3.x with its `rabbitmq_amqp1_0` plugin: the exchanges and queues of TOPOLOGY.md,
    /// shared with AMQP 0-9-1 instances.
    #[serde(rename = "rabbitmq")]
    RabbitMq,
    /// A plain AMQP 1.0 queue broker (Artemis, Service Bus, Qpid): an address is a queue name,
    /// one queue per JID; no broadcast.
    Queue,
}

impl AddressScheme {
    /// The config value: `rabbitmq` or `queue`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressScheme::RabbitMq => "rabbitmq",
            AddressScheme::Queue => "queue",
        }
    }

    /// The subscriptions the instance consumes, each with its source address.
    pub(crate) fn sources(self, jid: &Jid, subscriptions: Subscriptions) -> Result<Vec<Source>> {
        let specs = topology::queues(jid, subscriptions)?;
        Ok(specs
            .into_iter()
            .filter(|spec| self == AddressScheme::RabbitMq || spec.exchange == DIRECT_EXCHANGE)
            .map(|spec| Source {
                address: match self {
                    AddressScheme::RabbitMq => format!("/amq/queue/{}", escape(&spec.name)),
                    AddressScheme::Queue => spec.name.clone(),
                },
                spec,
            })
            .collect())
    }

    /// Where a direct send to `to` goes.
    pub(crate) fn direct_target(self, to: &Jid) -> Result<Target> {
        topology::check_name("routing key", to.as_str())?;
        Ok(match self {
            AddressScheme::RabbitMq => Target {
                address: format!("/exchange/{DIRECT_EXCHANGE}"),
                subject: to.as_str().to_owned(),
            },
            AddressScheme::Queue => Target {
                address: topology::queue_name(DIRECT_EXCHANGE, to.as_str())?,
                subject: to.as_str().to_owned(),
            },
        })
    }

    /// Where a broadcast from `from` goes, if the scheme has broadcasts.
    pub(crate) fn fanout_target(self, from: &Jid) -> Option<Target> {
        match self {
            AddressScheme::RabbitMq => Some(Target {
                address: format!("/exchange/{FANOUT_EXCHANGE}"),
                subject: from.as_str().to_owned(),
            }),
            AddressScheme::Queue => None,
        }
    }

    /// The `reply-to` that names the sender `jid`.
    ///
    /// On RabbitMQ, a 0-9-1 `reply_to` of `J` reaches AMQP 1.0 consumers as `/queue/J`, and a 1.0
    /// `reply-to` of `/queue/J` reaches 0-9-1 consumers as `J`; so the claw writes `/queue/J`
    /// and both sides see the JID their own way.
    pub(crate) fn reply_to(self, jid: &Jid) -> String {
        match self {
            AddressScheme::RabbitMq => format!("/queue/{}", jid.as_str()),
            AddressScheme::Queue => jid.as_str().to_owned(),
        }
    }
}

/// One subscription: the queue of TOPOLOGY.md it stands for and the address it is read from.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    pub(crate) address: String,
    pub(crate) spec: QueueSpec,
}

impl Source {
    /// The JID a delivery on this source was addressed to, when the message does not say.
    pub(crate) fn default_jid(&self) -> &str {
        &self.spec.routing_key
    }

    /// The kind of subscription.
    pub(crate) fn kind(&self) -> &QueueKind {
        &self.spec.kind
    }
}

/// Where one send goes: the link's target address and the message's `subject` (the routing
/// key on RabbitMQ; the destination or sender JID everywhere, so receivers can fill `Via::jid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) address: String,
    pub(crate) subject: String,
}

/// The sender's JID from a `reply-to`: `/queue/J` (RabbitMQ's spelling of a 0-9-1 `reply_to`),
/// `/exchange/xmpp_direct/J`, or `J` itself.
pub(crate) fn parse_reply_to(reply_to: &str) -> Option<Jid> {
    let raw = reply_to
        .strip_prefix("/queue/")
        .or_else(|| reply_to.strip_prefix("/exchange/xmpp_direct/"))
        .unwrap_or(reply_to);
    let decoded = unescape(raw);
    Jid::new(&decoded).ok()
}

/// Escapes a name for one segment of a RabbitMQ address: `%` and `/` are percent-encoded.
pub(crate) fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('/', "%2F")
}

fn unescape(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    s.replace("%2F", "/")
        .replace("%2f", "/")
        .replace("%25", "%")
}

#[cfg(test)]
mod tests {
    use super::*;
    use claws_core::jid::parse;

    #[test]
    fn rabbitmq_sources_use_existing_queues_with_escaped_slashes() {
        let jid = parse("svc@example.com/r%1").unwrap();
        let s = AddressScheme::RabbitMq
            .sources(&jid, Subscriptions::all())
            .unwrap();
        let addrs: Vec<_> = s.iter().map(|s| s.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "/amq/queue/xmpp_direct:svc@example.com%2Fr%251",
                "/amq/queue/xmpp_direct:svc@example.com",
                "/amq/queue/xmpp_fanout:svc@example.com%2Fr%251",
                "/amq/queue/xmpp_fanout:svc@example.com",
            ]
        );
    }

    #[test]
    fn queue_scheme_has_only_direct_queues() {
        let jid = parse("svc@example.com/r1").unwrap();
        let s = AddressScheme::Queue
            .sources(&jid, Subscriptions::all())
            .unwrap();
        let addrs: Vec<_> = s.iter().map(|s| s.address.as_str()).collect();
        assert_eq!(
            addrs,
            [
                "xmpp_direct:svc@example.com/r1",
                "xmpp_direct:svc@example.com"
            ]
        );
        assert!(AddressScheme::Queue.fanout_target(&jid).is_none());
    }

    #[test]
    fn targets_and_reply_to() {
        let to = parse("a@b/c").unwrap();
        let t = AddressScheme::RabbitMq.direct_target(&to).unwrap();
        assert_eq!(t.address, "/exchange/xmpp_direct");
        assert_eq!(t.subject, "a@b/c");
        let t = AddressScheme::Queue.direct_target(&to).unwrap();
        assert_eq!(t.address, "xmpp_direct:a@b/c");
        assert_eq!(AddressScheme::RabbitMq.reply_to(&to), "/queue/a@b/c");
        for r in ["/queue/a@b/c", "a@b/c", "/exchange/xmpp_direct/a@b%2Fc"] {
            assert_eq!(parse_reply_to(r), Some(to.clone()), "{r}");
        }
        assert_eq!(parse_reply_to("/queue/a@b@c"), None);
    }

    #[test]
    fn long_destinations_are_refused() {
        let to = parse(&format!("a@b/{}", "r".repeat(260))).unwrap();
        assert!(AddressScheme::Queue.direct_target(&to).is_err());
        assert!(AddressScheme::RabbitMq.direct_target(&to).is_err());
    }
}
