//! Configuration: the `[amqp10]` table ([`Amqp10Options`]) and the [`Amqp10ClawBuilder`].

use std::time::Duration;

use claws_core::config::Timing;
use claws_core::topology::Subscriptions;

use crate::address::AddressScheme;

/// The `[amqp10]` table of a claws config. Every key is optional; unknown keys are errors.
///
/// ```toml
/// transport = "amqp10"
/// url = "amqp://guest:guest@127.0.0.1:5672"
/// jid = "svc@example.com/w1"
///
/// send_timeout = "10s"    # time-outs are top-level keys, the same for every claw
///
/// [amqp10]
/// scheme = "rabbitmq"   # or "queue"
/// queue_expiry = "30m"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp10Options {
    /// The address scheme: `rabbitmq` (default) or `queue`.
    pub scheme: AddressScheme,
    /// RabbitMQ scheme: declare the exchanges, queues and bindings over AMQP 0-9-1 at every
    /// connect (default `true`). With `false` they must exist already.
    pub declare: bool,
    /// RabbitMQ scheme: declare queues durable and send persistent messages (default `true`).
    pub durable: bool,
    /// RabbitMQ scheme: per-instance queues expire after this idle time (default `"30m"`, as
    /// the 0-9-1 claw; `"0s"` disables expiry).
    #[serde(with = "humantime_serde")]
    pub queue_expiry: Duration,
}

impl Default for Amqp10Options {
    fn default() -> Self {
        Self {
            scheme: AddressScheme::RabbitMq,
            declare: true,
            durable: true,
            queue_expiry: Duration::from_secs(30 * 60),
        }
    }
}

/// Settings a built claw runs with (validated).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) scheme: AddressScheme,
    /// Link credit per subscription (the common `prefetch`).
    pub(crate) credit: u32,
    pub(crate) max_deliveries: u32,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) timing: Timing,
    pub(crate) declare: bool,
    pub(crate) durable: bool,
    pub(crate) queue_expiry: Option<Duration>,
}
