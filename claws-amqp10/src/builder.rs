//! [`Amqp10ClawBuilder`]: building an [`Amqp10Claw`] from code or from a config.

use std::sync::Arc;
use std::time::Duration;

use claws_core::config::{Timing, TimingBuilder};
use claws_core::jid::{Jid, JidInput};
use claws_core::topology::{LeaderLocator, Subscriptions, TopologyOptions};
use claws_core::{Config, Error, Result, Transport};

use crate::address::{AddressScheme, Addresses};
use crate::config::{Amqp10Options, Settings};
use crate::connection::Endpoint;
use crate::Amqp10Claw;

/// Builds an [`Amqp10Claw`]; start from [`Amqp10Claw::builder`]. Nothing connects until
/// [`Claw::start`](claws_core::Claw::start). Time-outs, heartbeat (the AMQP idle time-out) and
/// reconnection bounds are set through [`TimingBuilder`] (`send_timeout`, ...).
#[must_use]
#[derive(Debug, Clone)]
pub struct Amqp10ClawBuilder {
    /// As given: each may hold several URLs separated by commas.
    urls: Vec<String>,
    jid: JidInput,
    name: String,
    settings: Settings,
}

impl Amqp10ClawBuilder {
    pub(crate) fn new(url: &str, jid: impl Into<JidInput>, scheme: AddressScheme) -> Self {
        let o = Amqp10Options::default();
        Self {
            urls: vec![url.to_owned()],
            jid: jid.into(),
            name: "amqp10".into(),
            settings: Settings {
                scheme,
                addresses: o.addresses,
                credit: 32,
                max_deliveries: 5,
                subscriptions: Subscriptions::all(),
                timing: Timing::default(),
                declare: o.declare,
                durable: o.durable,
                queue_expiry: Some(o.queue_expiry),
                quorum: TopologyOptions::default(),
            },
        }
    }

    /// The claw's name as it appears in `Via::claw` (default `amqp10`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Link credit per subscription: how many deliveries may be unsettled at once on each
    /// (default 32, at least 1; the same `prefetch` as every claw's).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.settings.credit = u32::from(n.max(1));
        self
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

    /// RabbitMQ scheme: which address form to use (default [`Addresses::Auto`]: v2 on
    /// RabbitMQ 4 and later, v1 before, read from the broker's version at each connection).
    /// Set `V2` (or `V1`) to fix it, e.g. so that
    /// [`capabilities`](claws_core::Claw::capabilities) is right before `start`.
    pub fn addresses(mut self, addresses: Addresses) -> Self {
        self.settings.addresses = addresses;
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

    /// RabbitMQ scheme: make the shared queues (group queues and `xmpp_dead_letter`) quorum
    /// queues, so that no one node of a cluster holds them (default false). Queues that exist
    /// already are adopted as they are.
    pub fn quorum_groups(mut self, quorum: bool) -> Self {
        self.settings.quorum.quorum_groups = quorum;
        self
    }

    /// RabbitMQ scheme: make this instance's own (full-JID) queues quorum queues too, so that
    /// stanzas to the full JID survive the loss of a node (default false: they live on one
    /// node, and while it is down the claw goes on consuming its other queues; a quorum queue
    /// per instance costs a Raft group of `quorum_size` members).
    pub fn quorum_instances(mut self, quorum: bool) -> Self {
        self.settings.quorum.quorum_instances = quorum;
        self
    }

    /// Replicas of each quorum queue (`x-quorum-initial-group-size`; default: the broker's).
    pub fn quorum_size(mut self, replicas: u16) -> Self {
        self.settings.quorum.quorum_size = Some(replicas.max(1));
        self
    }

    /// Deliveries after which a quorum queue dead-letters a message by itself
    /// (`x-delivery-limit`; default: the broker's, none on 3.x and 20 on 4.x).
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.settings.quorum.delivery_limit = Some(limit);
        self
    }

    /// Where a new quorum queue's leader goes (`x-queue-leader-locator`; default: the
    /// broker's).
    pub fn leader_locator(mut self, locator: LeaderLocator) -> Self {
        self.settings.quorum.leader_locator = Some(locator);
        self
    }

    /// Several broker URLs (the nodes of a cluster), replacing the one given to
    /// [`Amqp10Claw::builder`] (which may itself hold several, separated by commas): every
    /// (re)connection tries them in turn from a shuffled start, with the backoff applied per
    /// full round. The declaring 0-9-1 connection goes to the node being tried.
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Validates everything (JID, URL, queue names) without connecting.
    pub fn build(self) -> Result<Amqp10Claw> {
        let jid: Jid = self.jid.resolve()?;
        self.settings.timing.validate()?;
        if self.name.is_empty() {
            return Err(Error::Config("the claw's name must not be empty".into()));
        }
        let endpoints = self
            .urls
            .iter()
            .flat_map(|u| u.split(','))
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| Endpoint::parse(u, &self.name))
            .collect::<Result<Vec<_>>>()?;
        if endpoints.is_empty() {
            return Err(Error::Config(format!(
                "claw `{}`: no broker URL; give one such as `amqp://guest:guest@127.0.0.1:5672`",
                self.name
            )));
        }
        let sources = self
            .settings
            .scheme
            .sources(&jid, self.settings.subscriptions)?;
        Ok(Amqp10Claw::new(
            Arc::from(self.name.as_str()),
            jid,
            endpoints,
            sources,
            self.settings,
        ))
    }

    pub(crate) fn apply(mut self, o: &Amqp10Options) -> Self {
        self.settings.scheme = o.scheme;
        self.settings.addresses = o.addresses;
        self.settings.declare = o.declare;
        self.settings.durable = o.durable;
        self.settings.queue_expiry = Some(o.queue_expiry).filter(|d| !d.is_zero());
        self.settings.quorum = TopologyOptions {
            quorum_groups: o.quorum_groups,
            quorum_instances: o.quorum_instances,
            quorum_size: o.quorum_size.map(|n| n.max(1)),
            delivery_limit: o.delivery_limit,
            leader_locator: o.leader_locator,
            ..TopologyOptions::default()
        };
        self
    }
}

impl TimingBuilder for Amqp10ClawBuilder {
    fn timing_mut(&mut self) -> &mut Timing {
        &mut self.settings.timing
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
    let urls = config.urls();
    let Some(first) = urls.first() else {
        return Err(Error::Config(
            "`url` is missing; the amqp10 claw needs a broker URL such as \
             `amqp://guest:guest@127.0.0.1:5672` (or `urls`, one per node of a cluster)"
                .into(),
        ));
    };
    let options: Amqp10Options = config.section("amqp10")?;
    let name = config.name.clone().unwrap_or_else(|| "amqp10".into());
    Amqp10ClawBuilder::new(first, config.jid.as_str(), options.scheme)
        .urls(urls.iter().cloned())
        .apply(&options)
        .name(name)
        .prefetch(config.prefetch)
        .timing(config.timing)
        .max_deliveries(config.max_deliveries)
        .subscriptions(config.subscriptions)
        .build()
}
