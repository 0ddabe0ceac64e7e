//! The wire contract's names (TOPOLOGY.md): exchanges, queues, and which subscription each queue
//! is; and [`plan`], the RabbitMQ declarations of one instance as data.
//!
//! Every backend that speaks the RabbitMQ topology takes its names from here, so that 0-9-1 and 1.0
//! instances, the mem claw, and foreign peers agree on them.

use std::fmt;

use crate::jid::Jid;
use crate::{Error, Result};

mod plan;

pub use plan::{
    plan, ArgValue, BindingDecl, ExchangeDecl, ExchangeType, Layout, LeaderLocator, QueueDecl,
    Topology, TopologyBuilder, TopologyOptions,
};

/// The direct exchange: routing key = destination JID, full or bare.
pub const DIRECT_EXCHANGE: &str = "xmpp_direct";
/// The fanout exchange: every queue bound to it gets every broadcast.
pub const FANOUT_EXCHANGE: &str = "xmpp_fanout";
/// Where stanzas that failed `max_deliveries` times are dead-lettered (a fanout exchange).
pub const DEAD_LETTER_EXCHANGE: &str = "xmpp_dead_letter";
/// The queue bound to [`DEAD_LETTER_EXCHANGE`] that keeps dead-lettered stanzas for inspection.
pub const DEAD_LETTER_QUEUE: &str = "xmpp_dead_letter";
/// AMQP's limit on queue, exchange and routing-key names.
pub const MAX_NAME_BYTES: usize = 255;

/// Which subscription delivered a packet.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum QueueKind {
    /// `xmpp_direct:F`: stanzas sent to this instance's full JID.
    Direct,
    /// `xmpp_direct:B`: stanzas sent to the group's bare JID; one instance of the group takes each.
    GroupDirect,
    /// `xmpp_fanout:F`: this instance's own copy of every broadcast.
    Fanout,
    /// `xmpp_fanout:B`: the group's copy of every broadcast, taken by one instance.
    GroupFanout,
    /// A claw-specific source (for example `component` for the XEP-0114 claw).
    Other(String),
}

impl QueueKind {
    /// The four AMQP subscriptions, in TOPOLOGY.md's order.
    pub const ALL: [QueueKind; 4] = [
        QueueKind::Direct,
        QueueKind::GroupDirect,
        QueueKind::Fanout,
        QueueKind::GroupFanout,
    ];

    /// The kind's wire name: `direct`, `group_direct`, `fanout`, `group_fanout`, or the claw's own.
    pub fn as_str(&self) -> &str {
        match self {
            QueueKind::Direct => "direct",
            QueueKind::GroupDirect => "group_direct",
            QueueKind::Fanout => "fanout",
            QueueKind::GroupFanout => "group_fanout",
            QueueKind::Other(name) => name,
        }
    }

    /// The exchange this kind's queue is bound to, if any.
    pub fn exchange(&self) -> Option<&'static str> {
        match self {
            QueueKind::Direct | QueueKind::GroupDirect => Some(DIRECT_EXCHANGE),
            QueueKind::Fanout | QueueKind::GroupFanout => Some(FANOUT_EXCHANGE),
            QueueKind::Other(_) => None,
        }
    }

    /// Whether the queue belongs to the group (shared) rather than to one instance.
    pub fn is_group(&self) -> bool {
        matches!(self, QueueKind::GroupDirect | QueueKind::GroupFanout)
    }
}

impl fmt::Display for QueueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which of the four subscriptions an instance consumes. The default is all four.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Subscriptions {
    /// Consume `xmpp_direct:F`.
    pub direct: bool,
    /// Consume `xmpp_direct:B`.
    pub group_direct: bool,
    /// Consume `xmpp_fanout:F`.
    pub fanout: bool,
    /// Consume `xmpp_fanout:B`.
    pub group_fanout: bool,
}

impl Default for Subscriptions {
    fn default() -> Self {
        Self::all()
    }
}

impl Subscriptions {
    /// All four subscriptions (the seed's behaviour).
    pub const fn all() -> Self {
        Self {
            direct: true,
            group_direct: true,
            fanout: true,
            group_fanout: true,
        }
    }

    /// No subscription: a pure publisher.
    pub const fn none() -> Self {
        Self {
            direct: false,
            group_direct: false,
            fanout: false,
            group_fanout: false,
        }
    }

    /// Whether `kind` is consumed.
    pub fn contains(&self, kind: &QueueKind) -> bool {
        match kind {
            QueueKind::Direct => self.direct,
            QueueKind::GroupDirect => self.group_direct,
            QueueKind::Fanout => self.fanout,
            QueueKind::GroupFanout => self.group_fanout,
            QueueKind::Other(_) => false,
        }
    }
}

/// One queue of an instance's topology: its name, what it is, and how it is bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueSpec {
    /// The queue name, e.g. `xmpp_direct:news@example.com/r1`.
    pub name: String,
    /// Which subscription it is.
    pub kind: QueueKind,
    /// The exchange it is bound to.
    pub exchange: &'static str,
    /// The binding's routing key (the full or bare JID).
    pub routing_key: String,
}

/// The queues an instance declares and consumes, per TOPOLOGY.md.
///
/// With a full JID `F` (bare `B`) that is four queues; with a bare JID (`F == B`) two, which are
/// the group's queues. Names longer than 255 bytes are an error.
///
/// ```
/// use claws_core::topology::{queues, QueueKind, Subscriptions};
/// let jid = claws_core::jid::parse("news@example.com/r1")?;
/// let q = queues(&jid, Subscriptions::all())?;
/// assert_eq!(q[0].name, "xmpp_direct:news@example.com/r1");
/// assert_eq!(q[1].kind, QueueKind::GroupDirect);
/// assert_eq!(q[1].routing_key, "news@example.com");
/// # Ok::<(), claws_core::Error>(())
/// ```
pub fn queues(jid: &Jid, subscriptions: Subscriptions) -> Result<Vec<QueueSpec>> {
    let full = jid.as_str();
    let bare = jid.to_bare();
    let bare = bare.as_str();
    let mut out = Vec::with_capacity(4);
    for kind in QueueKind::ALL {
        if !subscriptions.contains(&kind) {
            continue;
        }
        let key = if kind.is_group() { bare } else { full };
        // With no resource, F == B: the instance only has the group's two queues.
        if jid.is_bare() && !kind.is_group() {
            continue;
        }
        let exchange = kind.exchange().expect("the four AMQP kinds have exchanges");
        out.push(QueueSpec {
            name: queue_name(exchange, key)?,
            kind,
            exchange,
            routing_key: key.to_owned(),
        });
    }
    Ok(out)
}

/// `exchange:jid`, checked against the 255-byte limit.
pub fn queue_name(exchange: &str, jid: &str) -> Result<String> {
    let name = format!("{exchange}:{jid}");
    check_name("queue", &name)?;
    Ok(name)
}

/// Fails with [`Error::NameTooLong`] if `name` is over 255 bytes.
pub fn check_name(kind: &'static str, name: &str) -> Result<()> {
    if name.len() > MAX_NAME_BYTES {
        let shown: String = name.chars().take(60).collect();
        return Err(Error::NameTooLong {
            kind,
            name: format!("{shown}..."),
            len: name.len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jid::parse;

    #[test]
    fn four_queues_for_a_full_jid() {
        let q = queues(&parse("n@d/r").unwrap(), Subscriptions::all()).unwrap();
        let names: Vec<_> = q.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "xmpp_direct:n@d/r",
                "xmpp_direct:n@d",
                "xmpp_fanout:n@d/r",
                "xmpp_fanout:n@d"
            ]
        );
        assert_eq!(q[2].exchange, FANOUT_EXCHANGE);
        assert_eq!(q[3].routing_key, "n@d");
    }

    #[test]
    fn two_queues_for_a_bare_jid() {
        let q = queues(&parse("news.example.com").unwrap(), Subscriptions::all()).unwrap();
        assert_eq!(q.len(), 2);
        assert_eq!(q[0].kind, QueueKind::GroupDirect);
        assert_eq!(q[1].name, "xmpp_fanout:news.example.com");
    }

    #[test]
    fn subsets_and_publishers() {
        let jid = parse("n@d/r").unwrap();
        assert!(queues(&jid, Subscriptions::none()).unwrap().is_empty());
        let only = Subscriptions {
            direct: true,
            ..Subscriptions::none()
        };
        assert_eq!(queues(&jid, only).unwrap().len(), 1);
    }

    #[test]
    fn long_names_are_refused_with_the_length() {
        let jid = parse(&format!("n@d/{}", "r".repeat(250))).unwrap();
        let err = queues(&jid, Subscriptions::all()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("266 bytes"), "{msg}");
        assert!(msg.contains("255-byte"), "{msg}");
    }
}
