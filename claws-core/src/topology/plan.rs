//! The RabbitMQ topology of one instance as data: exchanges, queues with their arguments, and
//! bindings, computed from the settings and the JID. Both AMQP claws execute it (0-9-1
//! directly, 1.0 through its short 0-9-1 declaring connection) and `claws topology` prints it,
//! so every name and argument exists once, here.

use std::fmt;
use std::time::Duration;

use super::{
    self as names, QueueKind, Subscriptions, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE,
    DIRECT_EXCHANGE, FANOUT_EXCHANGE,
};
use crate::jid::Jid;
use crate::Result;

/// How the claw declares its queues: the same keys in `[amqp091]` and `[amqp10]` (flattened
/// into each table), set on every builder through [`TopologyBuilder`].
///
/// On a RabbitMQ cluster, a classic queue lives on one node and is unusable while that node is
/// down. `quorum_groups` makes every *shared* queue (the group queues and `xmpp_dead_letter`)
/// a quorum queue, replicated over `quorum_size` nodes; `quorum_instances` does the same for
/// the instance's own queues, at the price of one Raft group per queue (see
/// docs/CLUSTER.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct TopologyOptions {
    /// Durable exchanges and queues, persistent messages (default true); `false` is the seed's
    /// transient world (exchanges, queues and messages).
    pub durable: bool,
    /// `x-expires` on per-instance (full-JID) queues: the idle time after which the broker
    /// deletes them (default 30 minutes; in files `"30m"`; zero or `None` disables expiry).
    #[serde(with = "humantime_serde")]
    pub queue_expiry: Option<Duration>,
    /// `x-queue-type = quorum` on the shared queues: group (bare-JID) queues and the
    /// dead-letter queue.
    pub quorum_groups: bool,
    /// `x-queue-type = quorum` on the instance's own (full-JID) queues too.
    pub quorum_instances: bool,
    /// Quorum queues: `x-quorum-initial-group-size`, the number of replicas (broker default:
    /// every node, up to its configured limit).
    pub quorum_size: Option<u16>,
    /// Quorum queues: `x-delivery-limit`, the number of times the broker takes a message
    /// back unsettled (its consumer's channel or connection died, or it was requeued) before
    /// it dead-letters it. Unset, the claws use their `max_deliveries` (default 5; see
    /// [`TopologyOptions::delivery_limit_or`]), so that a message which kills its consumer
    /// (one the client library cannot decode) leaves the queue as a failing one does. The
    /// broker's own default is none on 3.x and 20 on 4.x.
    pub delivery_limit: Option<u32>,
    /// Quorum queues: `x-queue-leader-locator`, the node that leads a new queue.
    pub leader_locator: Option<LeaderLocator>,
    /// Which queues the instance declares: the contract's four, or the Erlang claw's two.
    pub layout: Layout,
}

/// The queues an instance declares and consumes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// TOPOLOGY.md's four queues: `xmpp_direct:F`, `xmpp_direct:B` (shared by the group: a
    /// bare send reaches one instance), `xmpp_fanout:F`, `xmpp_fanout:B`.
    #[default]
    Claws,
    /// What the Erlang claw declares as deployed: `direct:F`, bound to `xmpp_direct` with
    /// both `F` and `B`, and `fanout:F`, bound to `xmpp_fanout` with both. A bare send reaches
    /// *every* instance of the group (no load balancing), as in an Erlang-only group; for
    /// groups that mix Erlang and claws instances during a migration.
    Erlang,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            durable: true,
            queue_expiry: Some(Duration::from_secs(1800)),
            quorum_groups: false,
            quorum_instances: false,
            quorum_size: None,
            delivery_limit: None,
            leader_locator: None,
            layout: Layout::Claws,
        }
    }
}

/// The [`TopologyOptions`] setters every RabbitMQ claw's builder has, written once (bring the
/// trait into scope: `use claws_core::TopologyBuilder;`).
pub trait TopologyBuilder: Sized {
    /// The builder's queue settings, for the provided setters.
    fn topology_mut(&mut self) -> &mut TopologyOptions;

    /// Every queue setting at once.
    fn topology_options(mut self, options: TopologyOptions) -> Self {
        *self.topology_mut() = options;
        self
    }

    /// [`TopologyOptions::durable`] (default true).
    fn durable(mut self, durable: bool) -> Self {
        self.topology_mut().durable = durable;
        self
    }

    /// [`TopologyOptions::queue_expiry`] (default 30 minutes; zero disables expiry).
    fn queue_expiry(mut self, idle: Duration) -> Self {
        self.topology_mut().queue_expiry = (!idle.is_zero()).then_some(idle);
        self
    }

    /// [`TopologyOptions::quorum_groups`]: the shared queues are quorum queues (default
    /// false).
    fn quorum_groups(mut self, quorum: bool) -> Self {
        self.topology_mut().quorum_groups = quorum;
        self
    }

    /// [`TopologyOptions::quorum_instances`]: the instance's own queues are quorum queues too
    /// (default false).
    fn quorum_instances(mut self, quorum: bool) -> Self {
        self.topology_mut().quorum_instances = quorum;
        self
    }

    /// [`TopologyOptions::quorum_size`] (at least 1; default: the broker's).
    fn quorum_size(mut self, replicas: u16) -> Self {
        self.topology_mut().quorum_size = Some(replicas.max(1));
        self
    }

    /// [`TopologyOptions::delivery_limit`] (default: the claw's `max_deliveries`).
    fn delivery_limit(mut self, limit: u32) -> Self {
        self.topology_mut().delivery_limit = Some(limit);
        self
    }

    /// [`TopologyOptions::leader_locator`] (default: the broker's).
    fn leader_locator(mut self, locator: LeaderLocator) -> Self {
        self.topology_mut().leader_locator = Some(locator);
        self
    }

    /// [`TopologyOptions::layout`] (default [`Layout::Claws`]).
    fn layout(mut self, layout: Layout) -> Self {
        self.topology_mut().layout = layout;
        self
    }
}

/// Where RabbitMQ places a new quorum queue's leader (`x-queue-leader-locator`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaderLocator {
    /// On the node the declaring client is connected to.
    ClientLocal,
    /// On the node with the fewest leaders.
    Balanced,
}

impl LeaderLocator {
    /// `client-local` or `balanced`.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaderLocator::ClientLocal => "client-local",
            LeaderLocator::Balanced => "balanced",
        }
    }
}

impl TopologyOptions {
    /// These options with [`delivery_limit`](Self::delivery_limit) set to `max_deliveries`
    /// where it is unset: what the claws plan with.
    ///
    /// ```
    /// use claws_core::topology::TopologyOptions;
    /// let o = TopologyOptions::default().delivery_limit_or(5);
    /// assert_eq!(o.delivery_limit, Some(5));
    /// let mine = TopologyOptions { delivery_limit: Some(9), ..o };
    /// assert_eq!(mine.delivery_limit_or(5).delivery_limit, Some(9));
    /// ```
    pub fn delivery_limit_or(mut self, max_deliveries: u32) -> Self {
        self.delivery_limit.get_or_insert(max_deliveries);
        self
    }

    /// The `x-queue-type` and quorum arguments of a queue, when it is a quorum queue. The
    /// dead-letter queue (`consumed` false) gets no delivery limit: past it, a message there
    /// would be dropped, having nowhere further to go.
    fn quorum_arguments(&self, arguments: &mut Vec<(&'static str, ArgValue)>, consumed: bool) {
        arguments.push(("x-queue-type", ArgValue::Str("quorum")));
        if let Some(n) = self.quorum_size {
            arguments.push(("x-quorum-initial-group-size", ArgValue::Int(i64::from(n))));
        }
        if let Some(n) = self.delivery_limit.filter(|_| consumed) {
            arguments.push(("x-delivery-limit", ArgValue::Int(i64::from(n))));
        }
        if let Some(l) = self.leader_locator {
            arguments.push(("x-queue-leader-locator", ArgValue::Str(l.as_str())));
        }
    }
}

/// An exchange type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeType {
    /// `direct` or `fanout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
        }
    }
}

/// One exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDecl {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: ExchangeType,
    /// Whether it survives a broker restart.
    pub durable: bool,
}

/// A queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// A string (`x-queue-type`, `x-dead-letter-exchange`).
    Str(&'static str),
    /// An integer (`x-expires`, in milliseconds).
    Int(i64),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Str(s) => f.write_str(s),
            ArgValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// One queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecl {
    /// Its name.
    pub name: String,
    /// Which subscription it is (`None` for the dead-letter queue).
    pub kind: Option<QueueKind>,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Its arguments (`x-expires`, `x-queue-type`, `x-dead-letter-exchange`).
    pub arguments: Vec<(&'static str, ArgValue)>,
}

/// One binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDecl {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: &'static str,
    /// The routing key (the JID; ignored by fanout exchanges).
    pub routing_key: String,
}

/// Everything one instance declares, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The exchanges: `xmpp_direct`, `xmpp_fanout`, `xmpp_dead_letter`.
    pub exchanges: Vec<ExchangeDecl>,
    /// The dead-letter queue, then the consumed queues.
    pub queues: Vec<QueueDecl>,
    /// How queues are bound.
    pub bindings: Vec<BindingDecl>,
}

impl Topology {
    /// The queues the instance consumes (the dead-letter queue excluded).
    pub fn consumed(&self) -> impl Iterator<Item = (&QueueDecl, &QueueKind)> {
        self.queues
            .iter()
            .filter_map(|q| q.kind.as_ref().map(|k| (q, k)))
    }

    /// This topology for a broker that refuses transient queues shared by connections
    /// (RabbitMQ 4.3's default, `deprecated_features.permit.transient_nonexcl_queues = false`):
    /// each transient queue is declared durable instead, and each consumed one expires when
    /// unused (`x-expires` = `options.queue_expiry`), the nearest to a transient queue that
    /// such a broker allows. Exchanges stay transient (that is not deprecated) and the claws
    /// keep messages non-persistent, so `durable = false` still means "nothing survives for
    /// long"; an exclusive queue instead would lose what was queued across a reconnect.
    pub fn without_transient_queues(&self, options: &TopologyOptions) -> Topology {
        let mut adapted = self.clone();
        for q in adapted.queues.iter_mut().filter(|q| !q.durable) {
            q.durable = true;
            let expires = q.arguments.iter().any(|(k, _)| *k == "x-expires");
            if let (Some(_), false, Some(ms)) = (&q.kind, expires, expiry_ms(options)) {
                q.arguments.push(("x-expires", ArgValue::Int(ms)));
            }
        }
        adapted
    }
}

/// `options.queue_expiry` in milliseconds (`None`: no expiry).
fn expiry_ms(options: &TopologyOptions) -> Option<i64> {
    let expiry = options.queue_expiry.filter(|d| !d.is_zero())?;
    Some(i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX).max(1))
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.exchanges {
            writeln!(
                f,
                "exchange {} ({}{})",
                e.name,
                e.kind.as_str(),
                if e.durable { ", durable" } else { "" }
            )?;
        }
        for q in &self.queues {
            write!(f, "queue {}", q.name)?;
            if let Some(kind) = &q.kind {
                write!(f, " [{kind}]")?;
            }
            write!(f, "{}", if q.durable { " durable" } else { " transient" })?;
            for (k, v) in &q.arguments {
                write!(f, " {k}={v}")?;
            }
            writeln!(f)?;
        }
        for b in &self.bindings {
            writeln!(
                f,
                "bind {} -> {} key `{}`",
                b.exchange, b.queue, b.routing_key
            )?;
        }
        Ok(())
    }
}

/// The topology of an instance with `jid` consuming `subscriptions` (TOPOLOGY.md).
///
/// Fails with [`Error::NameTooLong`](crate::Error::NameTooLong) if a queue name or the JID is over 255 bytes.
///
/// ```
/// use claws_core::topology::{plan, TopologyOptions};
/// use claws_core::topology::Subscriptions;
/// let jid = claws_core::jid::parse("news@example.com/r1")?;
/// let t = plan(&jid, Subscriptions::all(), &TopologyOptions::default())?;
/// assert_eq!(t.exchanges.len(), 3);
/// assert_eq!(t.consumed().count(), 4);
/// print!("{t}");
/// # Ok::<(), claws_core::Error>(())
/// ```
pub fn plan(
    jid: &Jid,
    subscriptions: Subscriptions,
    options: &TopologyOptions,
) -> Result<Topology> {
    names::check_name("JID (reply-to and routing key)", jid.as_str())?;
    // `durable = false` is the seed's whole transient world: exchanges too, so that claws and
    // the Erlang claw (which declares them transient) share a vhost.
    let exchanges = vec![
        ExchangeDecl {
            name: DIRECT_EXCHANGE,
            kind: ExchangeType::Direct,
            durable: options.durable,
        },
        ExchangeDecl {
            name: FANOUT_EXCHANGE,
            kind: ExchangeType::Fanout,
            durable: options.durable,
        },
        ExchangeDecl {
            name: DEAD_LETTER_EXCHANGE,
            kind: ExchangeType::Fanout,
            durable: options.durable,
        },
    ];
    let mut dead_letter_arguments = Vec::new();
    if options.quorum_groups {
        options.quorum_arguments(&mut dead_letter_arguments, false);
    }
    let mut queues = vec![QueueDecl {
        name: DEAD_LETTER_QUEUE.to_owned(),
        kind: None,
        durable: options.durable || options.quorum_groups,
        arguments: dead_letter_arguments,
    }];
    let mut bindings = vec![BindingDecl {
        queue: DEAD_LETTER_QUEUE.to_owned(),
        exchange: DEAD_LETTER_EXCHANGE,
        routing_key: String::new(),
    }];
    let specs = match options.layout {
        Layout::Claws => names::queues(jid, subscriptions)?,
        Layout::Erlang => erlang_queues(jid, subscriptions)?,
    };
    for spec in specs {
        let mut arguments = vec![(
            "x-dead-letter-exchange",
            ArgValue::Str(DEAD_LETTER_EXCHANGE),
        )];
        let group = spec.kind.is_group();
        let quorum = if group {
            options.quorum_groups
        } else {
            options.quorum_instances
        };
        if quorum {
            options.quorum_arguments(&mut arguments, true);
        }
        if !group {
            if let Some(ms) = expiry_ms(options) {
                arguments.push(("x-expires", ArgValue::Int(ms)));
            }
        }
        bindings.push(BindingDecl {
            queue: spec.name.clone(),
            exchange: spec.exchange,
            routing_key: spec.routing_key,
        });
        if options.layout == Layout::Erlang {
            // The Erlang claw binds its queues with the bare JID too.
            let bare = jid.to_bare();
            if !jid.is_bare() {
                bindings.push(BindingDecl {
                    queue: spec.name.clone(),
                    exchange: spec.exchange,
                    routing_key: bare.as_str().to_owned(),
                });
            }
        }
        queues.push(QueueDecl {
            name: spec.name,
            kind: Some(spec.kind),
            // Quorum queues are always durable.
            durable: options.durable || quorum,
            arguments,
        });
    }
    Ok(Topology {
        exchanges,
        queues,
        bindings,
    })
}

/// The Erlang claw's two queues, `direct:F` and `fanout:F` (bound with `F` here; `plan` adds
/// the `B` bindings).
fn erlang_queues(jid: &Jid, subscriptions: Subscriptions) -> Result<Vec<names::QueueSpec>> {
    let mut out = Vec::with_capacity(2);
    for (kind, exchange, prefix, wanted) in [
        (
            QueueKind::Direct,
            DIRECT_EXCHANGE,
            "direct",
            subscriptions.direct || subscriptions.group_direct,
        ),
        (
            QueueKind::Fanout,
            FANOUT_EXCHANGE,
            "fanout",
            subscriptions.fanout || subscriptions.group_fanout,
        ),
    ] {
        if wanted {
            out.push(names::QueueSpec {
                name: names::queue_name(prefix, jid.as_str())?,
                kind,
                exchange,
                routing_key: jid.as_str().to_owned(),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn durable_false_is_the_seeds_transient_world() {
        let jid = crate::jid::parse("n@d/r").unwrap();
        let options = TopologyOptions {
            durable: false,
            ..TopologyOptions::default()
        };
        let t = plan(&jid, Subscriptions::all(), &options).unwrap();
        assert!(t.exchanges.iter().all(|e| !e.durable));
        assert!(t.queues.iter().all(|q| !q.durable));
    }

    #[test]
    fn without_transient_queues_every_queue_is_durable_and_consumed_ones_expire() {
        let jid = crate::jid::parse("n@d/r").unwrap();
        let options = TopologyOptions {
            durable: false,
            queue_expiry: Some(Duration::from_secs(60)),
            ..TopologyOptions::default()
        };
        let t = plan(&jid, Subscriptions::all(), &options)
            .unwrap()
            .without_transient_queues(&options);
        assert!(t.exchanges.iter().all(|e| !e.durable), "exchanges stay");
        assert!(t.queues.iter().all(|q| q.durable));
        for (q, _) in t.consumed() {
            let expiries: Vec<_> = q
                .arguments
                .iter()
                .filter(|(k, _)| *k == "x-expires")
                .collect();
            assert_eq!(
                expiries,
                [&("x-expires", ArgValue::Int(60_000))],
                "{}",
                q.name
            );
        }
        let dead_letter = &t.queues[0];
        assert_eq!(dead_letter.name, DEAD_LETTER_QUEUE);
        assert!(!dead_letter.arguments.iter().any(|(k, _)| *k == "x-expires"));
        // Durable plans are unchanged.
        let durable = plan(&jid, Subscriptions::all(), &TopologyOptions::default()).unwrap();
        assert_eq!(
            durable.without_transient_queues(&TopologyOptions::default()),
            durable
        );
    }

    #[test]
    fn the_erlang_layout_declares_what_the_erlang_claw_does() {
        let jid = crate::jid::parse("n@d/r").unwrap();
        let options = TopologyOptions {
            durable: false,
            layout: Layout::Erlang,
            ..TopologyOptions::default()
        };
        let t = plan(&jid, Subscriptions::all(), &options).unwrap();
        let consumed: Vec<_> = t
            .consumed()
            .map(|(q, k)| (q.name.as_str(), k.clone()))
            .collect();
        assert_eq!(
            consumed,
            [
                ("direct:n@d/r", QueueKind::Direct),
                ("fanout:n@d/r", QueueKind::Fanout)
            ]
        );
        let keys = |queue: &str| -> Vec<(&str, &str)> {
            t.bindings
                .iter()
                .filter(|b| b.queue == queue)
                .map(|b| (b.exchange, b.routing_key.as_str()))
                .collect()
        };
        assert_eq!(
            keys("direct:n@d/r"),
            [(DIRECT_EXCHANGE, "n@d/r"), (DIRECT_EXCHANGE, "n@d")]
        );
        assert_eq!(
            keys("fanout:n@d/r"),
            [(FANOUT_EXCHANGE, "n@d/r"), (FANOUT_EXCHANGE, "n@d")]
        );
    }

    #[test]
    fn plan_follows_topology_md() {
        let jid = crate::jid::parse("n@d/r").unwrap();
        let t = plan(&jid, Subscriptions::all(), &TopologyOptions::default()).unwrap();
        let names: Vec<_> = t.consumed().map(|(q, _)| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "xmpp_direct:n@d/r",
                "xmpp_direct:n@d",
                "xmpp_fanout:n@d/r",
                "xmpp_fanout:n@d"
            ]
        );
        let direct = &t.queues[1];
        assert!(direct
            .arguments
            .contains(&("x-expires", ArgValue::Int(1_800_000))));
        let group = &t.queues[2];
        assert!(!group.arguments.iter().any(|(k, _)| *k == "x-expires"));
        assert_eq!(t.bindings[2].routing_key, "n@d");
        assert_eq!(t.bindings[3].exchange, FANOUT_EXCHANGE);
    }

    #[test]
    fn quorum_groups_are_durable() {
        let jid = crate::jid::parse("n@d/r").unwrap();
        let options = TopologyOptions {
            durable: false,
            queue_expiry: None,
            quorum_groups: true,
            ..TopologyOptions::default()
        };
        let t = plan(&jid, Subscriptions::all(), &options).unwrap();
        let group = t
            .queues
            .iter()
            .find(|q| q.name == "xmpp_direct:n@d")
            .unwrap();
        assert!(group.durable);
        assert!(group
            .arguments
            .contains(&("x-queue-type", ArgValue::Str("quorum"))));
        let own = t
            .queues
            .iter()
            .find(|q| q.name == "xmpp_direct:n@d/r")
            .unwrap();
        assert!(!own.durable);
        // The dead-letter queue is shared: quorum too, so that no one node holds it.
        assert!(t.queues[0]
            .arguments
            .contains(&("x-queue-type", ArgValue::Str("quorum"))));
    }

    #[test]
    fn cluster_settings_reach_every_quorum_queue() {
        let jid = crate::jid::parse("n@d/r").unwrap();
        let options = TopologyOptions {
            quorum_groups: true,
            quorum_instances: true,
            quorum_size: Some(3),
            delivery_limit: Some(7),
            leader_locator: Some(LeaderLocator::Balanced),
            ..TopologyOptions::default()
        };
        let t = plan(&jid, Subscriptions::all(), &options).unwrap();
        for q in &t.queues {
            for arg in [
                ("x-queue-type", ArgValue::Str("quorum")),
                ("x-quorum-initial-group-size", ArgValue::Int(3)),
                ("x-delivery-limit", ArgValue::Int(7)),
                ("x-queue-leader-locator", ArgValue::Str("balanced")),
            ] {
                // Past a limit, a dead letter would have nowhere to go: none there.
                let wanted = q.kind.is_some() || arg.0 != "x-delivery-limit";
                assert_eq!(q.arguments.contains(&arg), wanted, "{} {arg:?}", q.name);
            }
            assert!(q.durable);
        }
        // Quorum queues keep their idle expiry.
        assert!(t.queues[1]
            .arguments
            .contains(&("x-expires", ArgValue::Int(1_800_000))));
    }

    #[test]
    fn long_jids_are_refused() {
        let jid = crate::jid::parse(&format!("n@d/{}", "r".repeat(300))).unwrap();
        let err = plan(&jid, Subscriptions::none(), &TopologyOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NameTooLong { .. }), "{err}");
        let jid = crate::jid::parse(&format!("n@d/{}", "r".repeat(250))).unwrap();
        let err = plan(&jid, Subscriptions::all(), &TopologyOptions::default()).unwrap_err();
        assert!(err.to_string().contains("xmpp_direct:n@d/rrr"), "{err}");
    }
}
