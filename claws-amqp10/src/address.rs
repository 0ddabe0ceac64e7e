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

    /// The subscriptions the instance consumes (their addresses depend on the broker's
    /// [`Dialect`], known once connected).
    pub(crate) fn sources(self, jid: &Jid, subscriptions: Subscriptions) -> Result<Vec<Source>> {
        let specs = topology::queues(jid, subscriptions)?;
        Ok(specs
            .into_iter()
            .filter(|spec| self == AddressScheme::RabbitMq || spec.exchange == DIRECT_EXCHANGE)
            .map(|spec| Source { scheme: self, spec })
            .collect())
    }

    /// Where a direct send to `to` goes.
    pub(crate) fn direct_target(self, to: &Jid) -> Result<Target> {
        topology::check_name("routing key", to.as_str())?;
        Ok(match self {
            AddressScheme::RabbitMq => Target {
                route: Route::Exchange {
                    exchange: DIRECT_EXCHANGE,
                    key: to.as_str().to_owned(),
                },
                subject: to.as_str().to_owned(),
            },
            AddressScheme::Queue => Target {
                route: Route::Queue(topology::queue_name(DIRECT_EXCHANGE, to.as_str())?),
                subject: to.as_str().to_owned(),
            },
        })
    }

    /// Where a broadcast from `from` goes, if the scheme has broadcasts.
    pub(crate) fn fanout_target(self, from: &Jid) -> Option<Target> {
        match self {
            AddressScheme::RabbitMq => Some(Target {
                route: Route::Exchange {
                    exchange: FANOUT_EXCHANGE,
                    key: from.as_str().to_owned(),
                },
                subject: from.as_str().to_owned(),
            }),
            AddressScheme::Queue => None,
        }
    }

    /// The `reply-to` that names the sender `jid`.
    ///
    /// RabbitMQ 3.x: a 0-9-1 `reply_to` of `J` reaches AMQP 1.0 consumers as `/queue/J`, and a
    /// 1.0 `reply-to` of `/queue/J` reaches 0-9-1 consumers as `J`; so the claw writes `/queue/J`
    /// there (v1) and both sides see the JID their own way. RabbitMQ 4.x copies `reply-to`
    /// unchanged, so the claw writes the plain JID (v2), which every claw reads back as it is.
    pub(crate) fn reply_to(self, jid: &Jid, dialect: Dialect) -> String {
        match (self, dialect) {
            (AddressScheme::RabbitMq, Dialect::V1) => format!("/queue/{}", jid.as_str()),
            _ => jid.as_str().to_owned(),
        }
    }
}

/// Which RabbitMQ address form to use: the `[amqp10] addresses` key, and
/// [`addresses`](crate::Amqp10ClawBuilder::addresses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Addresses {
    /// Chosen per connection from the broker's version (the `version` of the AMQP 1.0 `open`
    /// frame's properties): v2 from RabbitMQ 4 on, v1 before (and when the broker does not say).
    #[default]
    Auto,
    /// RabbitMQ 3.x's addresses: `/amq/queue/Q`, `/exchange/E` with the routing key in
    /// `subject`. Refused by RabbitMQ 4.3 (and 4.x with `amqp_address_v1` denied).
    V1,
    /// RabbitMQ 4.x's addresses: `/queues/Q`, and `/exchanges/E/K` in each message's `to` on
    /// one anonymous sending link. Not understood by RabbitMQ 3.x.
    V2,
}

impl Addresses {
    /// The config value: `auto`, `v1` or `v2`.
    pub fn as_str(self) -> &'static str {
        match self {
            Addresses::Auto => "auto",
            Addresses::V1 => "v1",
            Addresses::V2 => "v2",
        }
    }

    /// The dialect for a broker announcing `version` (`None`: it did not say).
    pub(crate) fn resolve(self, version: Option<&str>) -> Dialect {
        match self {
            Addresses::V1 => Dialect::V1,
            Addresses::V2 => Dialect::V2,
            Addresses::Auto => {
                let major = version
                    .and_then(|v| v.trim().split('.').next())
                    .and_then(|m| m.parse::<u32>().ok());
                match major {
                    Some(m) if m >= 4 => Dialect::V2,
                    _ => Dialect::V1,
                }
            }
        }
    }
}

/// The address form one connection uses (see [`Addresses`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    V1,
    V2,
}

impl Dialect {
    /// As stored in an atomic: 0 is "not known yet".
    pub(crate) fn to_u8(self) -> u8 {
        match self {
            Dialect::V1 => 1,
            Dialect::V2 => 2,
        }
    }

    pub(crate) fn from_u8(n: u8) -> Option<Self> {
        match n {
            1 => Some(Dialect::V1),
            2 => Some(Dialect::V2),
            _ => None,
        }
    }
}

/// One subscription: the queue of TOPOLOGY.md it stands for; its address depends on the
/// connection's [`Dialect`].
#[derive(Debug, Clone)]
pub(crate) struct Source {
    scheme: AddressScheme,
    pub(crate) spec: QueueSpec,
}

impl Source {
    /// The source address to attach to.
    pub(crate) fn address(&self, dialect: Dialect) -> String {
        match (self.scheme, dialect) {
            (AddressScheme::RabbitMq, Dialect::V1) => {
                format!("/amq/queue/{}", escape(&self.spec.name))
            }
            (AddressScheme::RabbitMq, Dialect::V2) => {
                format!("/queues/{}", percent_encode(&self.spec.name))
            }
            (AddressScheme::Queue, _) => self.spec.name.clone(),
        }
    }

    /// The JID a delivery on this source was addressed to, when the message does not say.
    pub(crate) fn default_jid(&self) -> &str {
        &self.spec.routing_key
    }

    /// The kind of subscription.
    pub(crate) fn kind(&self) -> &QueueKind {
        &self.spec.kind
    }
}

/// Where one send goes: the route, and the message's `subject` (the routing key on RabbitMQ;
/// the destination or sender JID everywhere, so receivers can fill `Via::jid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) route: Route,
    pub(crate) subject: String,
}

/// A destination, spelt per [`Dialect`] by [`Route::spell`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// A RabbitMQ exchange and routing key.
    Exchange { exchange: &'static str, key: String },
    /// A queue by name (the queue scheme, where an address is a queue).
    Queue(String),
}

/// How one message reaches its destination: the sending link's target address (`None`: the
/// anonymous link) and the message's `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Spelt {
    pub(crate) link: Option<String>,
    pub(crate) to: Option<String>,
}

impl Route {
    pub(crate) fn spell(&self, dialect: Dialect) -> Spelt {
        match (self, dialect) {
            (Route::Queue(name), _) => Spelt {
                link: Some(name.clone()),
                to: None,
            },
            (Route::Exchange { exchange, .. }, Dialect::V1) => Spelt {
                link: Some(format!("/exchange/{exchange}")),
                to: None,
            },
            (Route::Exchange { exchange, key }, Dialect::V2) => Spelt {
                link: None,
                to: Some(format!("/exchanges/{exchange}/{}", percent_encode(key))),
            },
        }
    }

    /// Whether a `released` outcome means that no queue took the message (RabbitMQ 4.x)
    /// and the send should fail with `NoRoute` (direct sends), rather than succeed (a
    /// broadcast nobody listens to, as on 0-9-1).
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self, Route::Exchange { exchange, .. } if *exchange == DIRECT_EXCHANGE)
    }
}

/// The sender's JID from a `reply-to`: `J` itself (what the claw writes on RabbitMQ 4 and on
/// queue brokers), `/queue/J` (RabbitMQ 3.x's spelling of a 0-9-1 `reply_to`), `/queues/J`
/// (percent-encoded, RabbitMQ 4's v2 form), or `/exchange(s)/xmpp_direct/J`.
pub(crate) fn parse_reply_to(reply_to: &str) -> Option<Jid> {
    if let Some(raw) = reply_to
        .strip_prefix("/queues/")
        .or_else(|| reply_to.strip_prefix("/exchanges/xmpp_direct/"))
    {
        return Jid::new(&percent_decode(raw)?).ok();
    }
    if let Some(raw) = reply_to
        .strip_prefix("/queue/")
        .or_else(|| reply_to.strip_prefix("/exchange/xmpp_direct/"))
    {
        return Jid::new(&unescape(raw)).ok();
    }
    Jid::new(reply_to)
        .ok()
        .or_else(|| Jid::new(&unescape(reply_to)).ok())
}

/// Escapes a name for one segment of a RabbitMQ v1 address: `%` and `/` are percent-encoded.
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

/// Percent-encodes one segment of a RabbitMQ v2 address: RFC 3986's unreserved characters,
/// `:` and `@` stay; every other byte is `%XX` (as the claw spells `/queues/Q` and
/// `/exchanges/E/K`; public for tools that speak raw AMQP 1.0 to the same queues).
///
/// ```
/// assert_eq!(claws_amqp10::percent_encode("a@b.c/r 1"), "a@b.c%2Fr%201");
/// ```
pub fn percent_encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() + 8);
    for &b in segment.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b':' | b'@') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` sequences; `None` when one is malformed or the result is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
        let addrs: Vec<_> = s.iter().map(|s| s.address(Dialect::V1)).collect();
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
        let addrs: Vec<_> = s.iter().map(|s| s.address(Dialect::V2)).collect();
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
        assert_eq!(
            t.route.spell(Dialect::V1).link.as_deref(),
            Some("/exchange/xmpp_direct")
        );
        assert_eq!(t.subject, "a@b/c");
        let t = AddressScheme::Queue.direct_target(&to).unwrap();
        assert_eq!(
            t.route.spell(Dialect::V1).link.as_deref(),
            Some("xmpp_direct:a@b/c")
        );
        assert_eq!(
            AddressScheme::RabbitMq.reply_to(&to, Dialect::V1),
            "/queue/a@b/c"
        );
        for r in ["/queue/a@b/c", "a@b/c", "/exchange/xmpp_direct/a@b%2Fc"] {
            assert_eq!(parse_reply_to(r), Some(to.clone()), "{r}");
        }
        assert_eq!(parse_reply_to("/queue/a@b@c"), None);
    }

    #[test]
    fn v2_addresses_percent_encode_all_but_colon_and_at() {
        let jid = parse("svc@example.com/r 1%+").unwrap();
        let s = AddressScheme::RabbitMq
            .sources(&jid, Subscriptions::all())
            .unwrap();
        let addrs: Vec<_> = s.iter().map(|s| s.address(Dialect::V2)).collect();
        assert_eq!(
            addrs,
            [
                "/queues/xmpp_direct:svc@example.com%2Fr%201%25%2B",
                "/queues/xmpp_direct:svc@example.com",
                "/queues/xmpp_fanout:svc@example.com%2Fr%201%25%2B",
                "/queues/xmpp_fanout:svc@example.com",
            ]
        );
        let to = parse("a@b/c").unwrap();
        let t = AddressScheme::RabbitMq.direct_target(&to).unwrap();
        assert_eq!(
            t.route.spell(Dialect::V2),
            Spelt {
                link: None,
                to: Some("/exchanges/xmpp_direct/a@b%2Fc".into())
            }
        );
        assert!(t.route.is_direct());
        let f = AddressScheme::RabbitMq.fanout_target(&to).unwrap();
        assert_eq!(
            f.route.spell(Dialect::V2).to.as_deref(),
            Some("/exchanges/xmpp_fanout/a@b%2Fc")
        );
        assert!(!f.route.is_direct());
        assert_eq!(AddressScheme::RabbitMq.reply_to(&to, Dialect::V2), "a@b/c");
    }

    #[test]
    fn reply_to_forms_of_both_brokers_read_back() {
        let to = parse("a@b/r%1 x").unwrap();
        for r in [
            "a@b/r%1 x",
            "/queues/a@b%2Fr%251%20x",
            "/queue/a@b/r%1 x",
            "/exchanges/xmpp_direct/a@b%2Fr%251%20x",
        ] {
            assert_eq!(parse_reply_to(r), Some(to.clone()), "{r}");
        }
        assert_eq!(parse_reply_to("/queues/a@b%2"), None);
        assert_eq!(parse_reply_to("/queues/a@b@c"), None);
    }

    #[test]
    fn the_version_picks_the_dialect() {
        assert_eq!(Addresses::Auto.resolve(Some("4.0.5")), Dialect::V2);
        assert_eq!(Addresses::Auto.resolve(Some("3.10.8")), Dialect::V1);
        assert_eq!(Addresses::Auto.resolve(None), Dialect::V1);
        assert_eq!(Addresses::V2.resolve(Some("3.10.8")), Dialect::V2);
        assert_eq!(Addresses::V1.resolve(Some("4.1.0")), Dialect::V1);
    }

    #[test]
    fn long_destinations_are_refused() {
        let to = parse(&format!("a@b/{}", "r".repeat(260))).unwrap();
        assert!(AddressScheme::Queue.direct_target(&to).is_err());
        assert!(AddressScheme::RabbitMq.direct_target(&to).is_err());
    }
}
