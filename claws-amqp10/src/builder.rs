//! [`Amqp10ClawBuilder`]: building an [`Amqp10Claw`] from code or from a config.

use std::sync::Arc;

use claws_core::config::{split_urls, Timing, TimingBuilder};
use claws_core::jid::{Jid, JidInput};
use claws_core::topology::{Layout, Subscriptions, TopologyBuilder, TopologyOptions};
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
                queues: o.queues,
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
        if self.settings.queues.layout != Layout::Claws {
            return Err(Error::Unsupported {
                claw: self.name.clone(),
                what: "layout = \"erlang\"",
                why: "the Erlang claw's layout is a 0-9-1 migration aid; use claws-amqp091 for \
                      instances in a mixed Erlang group"
                    .into(),
            });
        }
        if self.name.is_empty() {
            return Err(Error::Config("the claw's name must not be empty".into()));
        }
        let endpoints = split_urls(self.urls.iter().map(String::as_str))
            .iter()
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
        self.settings.queues = o.queues;
        self
    }
}

impl TopologyBuilder for Amqp10ClawBuilder {
    fn topology_mut(&mut self) -> &mut TopologyOptions {
        &mut self.settings.queues
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
