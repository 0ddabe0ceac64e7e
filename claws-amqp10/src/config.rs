//! Configuration: the `[amqp10]` table ([`Amqp10Options`]) and the [`Amqp10ClawBuilder`].

use std::time::Duration;

use claws_core::topology::Subscriptions;

use crate::address::AddressScheme;

/// The `[amqp10]` table of a claws config. Every key is optional; unknown keys are errors.
///
/// ```toml
/// transport = "amqp10"
/// url = "amqp://guest:guest@127.0.0.1:5672"
/// jid = "svc@example.com/w1"
///
/// [amqp10]
/// scheme = "rabbitmq"   # or "queue"
/// send_timeout_ms = 10000
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
    /// RabbitMQ scheme: per-instance queues expire after this idle time, in seconds (default
    /// 1800, as the 0-9-1 claw; 0 disables expiry).
    pub queue_expiry_secs: u64,
    /// How long a send waits for a connection and the broker's outcome, in milliseconds
    /// (default 10 000).
    pub send_timeout_ms: u64,
    /// Bound on one connection attempt, in milliseconds (default 5 000).
    pub connect_timeout_ms: u64,
    /// How long `close` waits for in-flight deliveries, in milliseconds (default 30 000).
    pub close_timeout_ms: u64,
    /// AMQP idle time-out (heartbeat), in milliseconds (default 10 000; 0 disables).
    pub idle_timeout_ms: u32,
    /// Longest pause between reconnection attempts, in milliseconds (default 5 000).
    pub reconnect_max_ms: u64,
}

impl Default for Amqp10Options {
    fn default() -> Self {
        Self {
            scheme: AddressScheme::RabbitMq,
            declare: true,
            durable: true,
            queue_expiry_secs: 1800,
            send_timeout_ms: 10_000,
            connect_timeout_ms: 5_000,
            close_timeout_ms: 30_000,
            idle_timeout_ms: 10_000,
            reconnect_max_ms: 5_000,
        }
    }
}

/// Settings a built claw runs with (validated).
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) scheme: AddressScheme,
    pub(crate) credit: u32,
    pub(crate) max_deliveries: u32,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) send_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) idle_timeout: Option<Duration>,
    pub(crate) reconnect_min: Duration,
    pub(crate) reconnect_max: Duration,
    pub(crate) declare: bool,
    pub(crate) durable: bool,
    pub(crate) queue_expiry: Option<Duration>,
}
