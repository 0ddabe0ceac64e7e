//! Configuration: the `[amqp10]` table ([`Amqp10Options`]) and the [`Amqp10ClawBuilder`].

use claws_core::config::Timing;
use claws_core::topology::{Subscriptions, TopologyOptions};

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
/// # delivery_limit = 5          # x-delivery-limit (default: max_deliveries)
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
    /// RabbitMQ scheme: durability, queue expiry, quorum queues ([`TopologyOptions`], the
    /// same keys as the 0-9-1 claw's, in this table). The Erlang layout is 0-9-1 only.
    #[serde(flatten)]
    pub queues: TopologyOptions,
}

impl Default for Amqp10Options {
    fn default() -> Self {
        Self {
            scheme: AddressScheme::RabbitMq,
            addresses: Addresses::Auto,
            declare: true,
            queues: TopologyOptions::default(),
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
    /// How the RabbitMQ scheme declares its queues (the plan's options).
    pub(crate) queues: TopologyOptions,
}
