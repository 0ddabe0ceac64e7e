//! [`Amqp10ClawBuilder`]: building an [`Amqp10Claw`] from code or from a config.

use std::sync::Arc;
use std::time::Duration;

use claws_core::jid::{self, Jid};
use claws_core::topology::Subscriptions;
use claws_core::{Config, Error, Result, Transport};

use crate::address::AddressScheme;
use crate::config::{Amqp10Options, Settings};
use crate::connection::Endpoint;
use crate::Amqp10Claw;

/// Builds an [`Amqp10Claw`]; start from [`Amqp10Claw::builder`]. Nothing connects until
/// [`Claw::start`](claws_core::Claw::start).
#[must_use]
#[derive(Debug, Clone)]
pub struct Amqp10ClawBuilder {
    url: String,
    jid: String,
    name: String,
    settings: Settings,
}

impl Amqp10ClawBuilder {
    pub(crate) fn new(url: &str, jid: &str, scheme: AddressScheme) -> Self {
        let o = Amqp10Options::default();
        Self {
            url: url.to_owned(),
            jid: jid.to_owned(),
            name: "amqp10".into(),
            settings: Settings {
                scheme,
                credit: 32,
                max_deliveries: 5,
                subscriptions: Subscriptions::all(),
                send_timeout: Duration::from_millis(o.send_timeout_ms),
                connect_timeout: Duration::from_millis(o.connect_timeout_ms),
                close_timeout: Duration::from_millis(o.close_timeout_ms),
                idle_timeout: Some(Duration::from_millis(o.idle_timeout_ms.into())),
                reconnect_min: Duration::from_millis(100),
                reconnect_max: Duration::from_millis(o.reconnect_max_ms),
                declare: o.declare,
                durable: o.durable,
                queue_expiry: Some(Duration::from_secs(o.queue_expiry_secs)),
            },
        }
    }

    /// The claw's name as it appears in `Via::claw` (default `amqp10`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Link credit per subscription: how many deliveries may be unsettled at once on each
    /// (default 32, at least 1).
    pub fn credit(mut self, credit: u32) -> Self {
        self.settings.credit = credit.max(1);
        self
    }

    /// Same as [`credit`](Self::credit), under the name the other claws use.
    pub fn prefetch(self, prefetch: u32) -> Self {
        self.credit(prefetch)
    }

    /// After this many deliveries a failing stanza is dead-lettered (default 5, at least 1).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.settings.max_deliveries = n.max(1);
        self
    }

    /// Which subscriptions to consume (default all four; the queue scheme has no fanout ones).
    pub fn subscriptions(mut self, subscriptions: Subscriptions) -> Self {
        self.settings.subscriptions = subscriptions;
        self
    }

    /// How long a send waits for a connection and the broker's outcome (default 10 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.settings.send_timeout = timeout;
        self
    }

    /// Bound on one connection attempt (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.settings.connect_timeout = timeout;
        self
    }

    /// How long `close` waits for in-flight deliveries to be settled (default 30 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.settings.close_timeout = timeout;
        self
    }

    /// AMQP idle time-out, so that a dead peer is noticed (default 10 s; `None` disables).
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.settings.idle_timeout = timeout.filter(|t| !t.is_zero());
        self
    }

    /// Pauses between reconnection attempts: from `min`, doubling, capped at `max`
    /// (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.settings.reconnect_min = min.max(Duration::from_millis(1));
        self.settings.reconnect_max = max.max(self.settings.reconnect_min);
        self
    }

    /// RabbitMQ scheme: declare exchanges, queues and bindings over AMQP 0-9-1 at every connect
    /// (default `true`); with `false` they must exist already.
    pub fn declare(mut self, declare: bool) -> Self {
        self.settings.declare = declare;
        self
    }

    /// RabbitMQ scheme: durable queues and persistent messages (default `true`).
    pub fn durable(mut self, durable: bool) -> Self {
        self.settings.durable = durable;
        self
    }

    /// RabbitMQ scheme: per-instance queues expire after this idle time (default 30 min, as the
    /// 0-9-1 claw; `None` disables).
    pub fn queue_expiry(mut self, expiry: Option<Duration>) -> Self {
        self.settings.queue_expiry = expiry.filter(|e| !e.is_zero());
        self
    }

    /// Validates everything (JID, URL, queue names) without connecting.
    pub fn build(self) -> Result<Amqp10Claw> {
        let jid: Jid = jid::parse(&self.jid)?;
        if self.name.is_empty() {
            return Err(Error::Config("the claw's name must not be empty".into()));
        }
        let endpoint = Endpoint::parse(&self.url, &self.name)?;
        let sources = self
            .settings
            .scheme
            .sources(&jid, self.settings.subscriptions)?;
        Ok(Amqp10Claw::new(
            Arc::from(self.name.as_str()),
            jid,
            endpoint,
            sources,
            self.settings,
        ))
    }

    pub(crate) fn apply(mut self, o: &Amqp10Options) -> Self {
        self.settings.scheme = o.scheme;
        self.settings.declare = o.declare;
        self.settings.durable = o.durable;
        self.settings.queue_expiry =
            Some(Duration::from_secs(o.queue_expiry_secs)).filter(|d| !d.is_zero());
        self.settings.send_timeout = Duration::from_millis(o.send_timeout_ms);
        self.settings.connect_timeout = Duration::from_millis(o.connect_timeout_ms);
        self.settings.close_timeout = Duration::from_millis(o.close_timeout_ms);
        self.settings.idle_timeout =
            Some(Duration::from_millis(o.idle_timeout_ms.into())).filter(|d| !d.is_zero());
        self.settings.reconnect_max =
            Duration::from_millis(o.reconnect_max_ms).max(self.settings.reconnect_min);
        self
    }
}

/// Builds a claw from a claws [`Config`] (see [`Amqp10Claw::from_config`]).
pub(crate) fn from_config(config: &Config) -> Result<Amqp10Claw> {
    config.validate()?;
    if config.transport != Transport::Amqp10 {
        tracing::debug!(
            transport = config.transport.as_str(),
            "building an amqp10 claw anyway"
        );
    }
    let url = config.url.as_deref().ok_or_else(|| {
        Error::Config(
            "`url` is missing; the amqp10 claw needs a broker URL such as \
             `amqp://guest:guest@127.0.0.1:5672`"
                .into(),
        )
    })?;
    let options: Amqp10Options = config.section("amqp10")?;
    let name = config.name.clone().unwrap_or_else(|| "amqp10".into());
    Amqp10ClawBuilder::new(url, &config.jid, options.scheme)
        .apply(&options)
        .name(name)
        .credit(config.prefetch.into())
        .max_deliveries(config.max_deliveries)
        .subscriptions(config.subscriptions)
        .build()
}
