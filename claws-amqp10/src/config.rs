//! Configuration: the `[amqp10]` table ([`Amqp10Options`]) and the [`Amqp10ClawBuilder`].

use std::time::Duration;

use claws_core::config::Timing;
use claws_core::topology::{LeaderLocator, Subscriptions, TopologyOptions};

use crate::address::{AddressScheme, Addresses};

/// The `[amqp10]` table of a claws config. Every key is optional; unknown keys are errors.
///
/// ```toml
/// transport = "amqp10"
/// url = "amqp://guest:guest@127.0.0.1:5672"
/// # or, on a cluster, every node (tried from a shuffled start at each (re)connection):
/// # urls = ["amqp://guest:guest@node1:5672", "amqp://guest:guest@node2:5672"]
/// jid = "svc@example.com/w1"
///
/// send_timeout = "10s"    # time-outs are top-level keys, the same for every claw
///
/// [amqp10]
/// scheme = "rabbitmq"   # or "queue"
/// addresses = "auto"    # RabbitMQ's address form: "v1" (3.x), "v2" (4.x), or "auto" (by version)
/// queue_expiry = "30m"
/// # On a cluster (RabbitMQ scheme; the same keys as the 0-9-1 claw's):
/// quorum_groups = true          # group queues and xmpp_dead_letter are quorum queues
/// quorum_instances = false      # the instance's own queues too (a Raft group each)
/// # quorum_size = 3             # x-quorum-initial-group-size
/// # delivery_limit = 20         # x-delivery-limit
/// # leader_locator = "balanced" # or "client-local"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp10Options {
    /// The address scheme: `rabbitmq` (default) or `queue`.
    pub scheme: AddressScheme,
    /// RabbitMQ scheme: the address form, `auto` (default: v2 on RabbitMQ 4 and later, v1
    /// before, read from the broker's version at each connection), `v1` or `v2`.
    pub addresses: Addresses,
    /// RabbitMQ scheme: declare the exchanges, queues and bindings over AMQP 0-9-1 at every
    /// connect (default `true`). With `false` they must exist already.
    pub declare: bool,
    /// RabbitMQ scheme: declare queues durable and send persistent messages (default `true`).
    pub durable: bool,
    /// RabbitMQ scheme: per-instance queues expire after this idle time (default `"30m"`, as
    /// the 0-9-1 claw; `"0s"` disables expiry).
    #[serde(with = "humantime_serde")]
    pub queue_expiry: Duration,
    /// RabbitMQ scheme: declare the shared queues (group queues and `xmpp_dead_letter`) as
    /// quorum queues, for a RabbitMQ cluster (default false).
    pub quorum_groups: bool,
    /// RabbitMQ scheme: declare the instance's own (full-JID) queues as quorum queues too
    /// (default false).
    pub quorum_instances: bool,
    /// Replicas per quorum queue (`x-quorum-initial-group-size`; default: the broker's).
    pub quorum_size: Option<u16>,
    /// `x-delivery-limit` on quorum queues (default: the broker's).
    pub delivery_limit: Option<u32>,
    /// `x-queue-leader-locator` on quorum queues: `client-local` or `balanced` (default: the
    /// broker's).
    pub leader_locator: Option<LeaderLocator>,
}

impl Default for Amqp10Options {
    fn default() -> Self {
        Self {
            scheme: AddressScheme::RabbitMq,
            addresses: Addresses::Auto,
            declare: true,
            durable: true,
            queue_expiry: Duration::from_secs(30 * 60),
            quorum_groups: false,
            quorum_instances: false,
            quorum_size: None,
            delivery_limit: None,
            leader_locator: None,
        }
    }
}

/// Settings a built claw runs with (validated).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) scheme: AddressScheme,
    pub(crate) addresses: Addresses,
    /// Link credit per subscription (the common `prefetch`).
    pub(crate) credit: u32,
    pub(crate) max_deliveries: u32,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) timing: Timing,
    pub(crate) declare: bool,
    pub(crate) durable: bool,
    pub(crate) queue_expiry: Option<Duration>,
    /// Quorum queues and their arguments (`durable` and `queue_expiry` are the fields above).
    pub(crate) quorum: TopologyOptions,
}

impl Settings {
    /// How the RabbitMQ scheme declares its queues (the plan's options).
    pub(crate) fn topology(&self) -> TopologyOptions {
        TopologyOptions {
            durable: self.durable,
            queue_expiry: self.queue_expiry,
            ..self.quorum
        }
    }
}
