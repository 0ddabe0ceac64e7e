//! [`AmqpClawBuilder`]: building an [`AmqpClaw`] from code or from a config.

use std::path::PathBuf;
use std::time::Duration;

use claws_core::config::{Timing, TimingBuilder};
use claws_core::jid::JidInput;
use claws_core::topology::{self, Layout, LeaderLocator, Subscriptions, TopologyOptions};
use claws_core::{Config, Error, Result};

use crate::claw::AmqpClaw;
use crate::config::{Amqp091Options, Endpoint, Settings};
use crate::session::Shared;
use crate::tls;

/// Builds an [`AmqpClaw`]; start from [`AmqpClaw::builder`]. Nothing connects before
/// [`Claw::start`](claws_core::Claw::start). Time-outs, heartbeat and reconnection bounds are
/// set through [`TimingBuilder`] (`send_timeout`, `connect_timeout`, ...).
#[must_use]
#[derive(Debug, Clone)]
pub struct AmqpClawBuilder {
    urls: Vec<String>,
    jid: JidInput,
    name: String,
    prefetch: u16,
    max_deliveries: u32,
    subscriptions: Subscriptions,
    topology: TopologyOptions,
    timing: Timing,
    tls: tls::TlsFiles,
}

impl AmqpClawBuilder {
    /// The claw's name, as it appears in `Via` (default `amqp091`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Unsettled deliveries per consumed queue (basic.qos; default 32, at least 1).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }

    /// Deliveries after which a failing stanza is dead-lettered (default 5, at least 1).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Which of the four queues to consume (default all).
    pub fn subscriptions(mut self, subscriptions: Subscriptions) -> Self {
        self.subscriptions = subscriptions;
        self
    }

    /// Durable queues and persistent messages (default true); false is the seed's transient mode.
    pub fn durable(mut self, durable: bool) -> Self {
        self.topology.durable = durable;
        self
    }

    /// Idle time after which the broker deletes this instance's own (full-JID) queues
    /// (`x-expires`, default 30 minutes). `Duration::ZERO` disables expiry.
    pub fn queue_expiry(mut self, idle: Duration) -> Self {
        self.topology.queue_expiry = (!idle.is_zero()).then_some(idle);
        self
    }

    /// Make the shared queues (group queues and `xmpp_dead_letter`) quorum queues, so that no
    /// one node of a cluster holds them (default false).
    pub fn quorum_groups(mut self, quorum: bool) -> Self {
        self.topology.quorum_groups = quorum;
        self
    }

    /// Make this instance's own (full-JID) queues quorum queues too, so that stanzas to the
    /// full JID survive the loss of a node (default false: they live on one node, and while it
    /// is down the instance goes on consuming its other queues; a quorum queue per instance
    /// costs a Raft group of `quorum_size` members).
    pub fn quorum_instances(mut self, quorum: bool) -> Self {
        self.topology.quorum_instances = quorum;
        self
    }

    /// Replicas of each quorum queue (`x-quorum-initial-group-size`; default: the broker's).
    pub fn quorum_size(mut self, replicas: u16) -> Self {
        self.topology.quorum_size = Some(replicas.max(1));
        self
    }

    /// Deliveries after which a quorum queue dead-letters a message by itself
    /// (`x-delivery-limit`; default: the broker's, none on 3.x and 20 on 4.x).
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.topology.delivery_limit = Some(limit);
        self
    }

    /// Which queues to declare and consume: TOPOLOGY.md's four ([`Layout::Claws`], default) or
    /// the Erlang claw's two ([`Layout::Erlang`]), for groups that mix both during a migration.
    pub fn layout(mut self, layout: Layout) -> Self {
        self.topology.layout = layout;
        self
    }

    /// Where a new quorum queue's leader goes (`x-queue-leader-locator`; default: the
    /// broker's).
    pub fn leader_locator(mut self, locator: LeaderLocator) -> Self {
        self.topology.leader_locator = Some(locator);
        self
    }

    /// Several broker URLs (the nodes of a cluster), replacing the one given to
    /// [`AmqpClaw::builder`]: every (re)connection tries them in turn from a shuffled start,
    /// with the backoff applied per full round.
    pub fn urls<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.urls = urls.into_iter().map(Into::into).collect();
        self
    }

    /// For `amqps://`: trust the CA(s) in this PEM file as well as the system's roots (needed
    /// when the broker's certificate is signed by a private CA). Read when the claw is built.
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca = Some(path.into());
        self
    }

    /// For `amqps://`: present this PEM certificate (chain) and PEM private key (mutual TLS,
    /// which RabbitMQ's `EXTERNAL` mechanism can use: add `?auth_mechanism=external` to the URL).
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client = Some((cert.into(), key.into()));
        self
    }

    /// Validates the URL, the JID, the TLS files and every queue name (255-byte limit), without
    /// connecting.
    pub fn build(self) -> Result<AmqpClaw> {
        let jid = self.jid.resolve()?;
        self.timing.validate()?;
        let endpoints = self
            .urls
            .iter()
            .flat_map(|u| u.split(','))
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(Endpoint::parse)
            .collect::<Result<Vec<_>>>()?;
        let Some(first) = endpoints.first() else {
            return Err(Error::Config(
                "no broker URL; give one such as amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            ));
        };
        let tls = tls::config(&first.shown, first.is_amqps(), &self.tls)?;
        if endpoints.iter().any(|e| e.is_amqps() != first.is_amqps()) {
            return Err(Error::Config(
                "the broker URLs mix amqp:// and amqps://; use one scheme for every node".into(),
            ));
        }
        if self.name.is_empty() {
            return Err(Error::Config("the claw name must not be empty".into()));
        }
        let topology = topology::plan(&jid, self.subscriptions, &self.topology)?;
        let settings = Settings {
            endpoints,
            prefetch: self.prefetch,
            max_deliveries: self.max_deliveries,
            durable: self.topology.durable,
            timing: self.timing,
            tls,
        };
        let shared = Shared::new(
            self.name.into(),
            jid,
            settings,
            self.subscriptions,
            topology,
        )?;
        Ok(AmqpClaw::new(shared))
    }
}

impl TimingBuilder for AmqpClawBuilder {
    fn timing_mut(&mut self) -> &mut Timing {
        &mut self.timing
    }
}

impl AmqpClaw {
    /// A builder for a claw connecting to `url` as `jid`.
    pub fn builder(url: &str, jid: impl Into<JidInput>) -> AmqpClawBuilder {
        let defaults = Amqp091Options::default();
        AmqpClawBuilder {
            urls: vec![url.to_owned()],
            jid: jid.into(),
            name: "amqp091".into(),
            prefetch: 32,
            max_deliveries: 5,
            subscriptions: Subscriptions::all(),
            topology: defaults.topology(),
            timing: Timing::default(),
            tls: tls::TlsFiles::default(),
        }
    }

    /// The builder a config describes: the common keys (`url`, `jid`, `name`, `prefetch`,
    /// `max_deliveries`, `subscriptions`, the [`Timing`] keys) and the `[amqp091]` table. Without `url`, the URL is
    /// built from `[amqp091]`'s `host`, `username`, `password` (the seed's parameters), or is
    /// [`DEFAULT_URL`](crate::DEFAULT_URL).
    pub fn builder_from_config(config: &Config) -> Result<AmqpClawBuilder> {
        let o: Amqp091Options = config.section("amqp091")?;
        let url = match (&config.url, &o.host) {
            (Some(url), _) => url.clone(),
            (None, Some(host)) => o.url_from_parts(host),
            (None, None) => o.url_from_parts("127.0.0.1"),
        };
        let prefetch = config.prefetch;
        let mut builder = Self::builder(&url, config.jid.as_str());
        builder.tls = tls::TlsFiles {
            ca: o.tls_ca_file,
            client: match (o.tls_cert_file, o.tls_key_file) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => {
                    return Err(Error::Config(
                        "[amqp091] sets only one of `tls_cert_file` and `tls_key_file`; \
                         mutual TLS needs both (or neither)"
                            .into(),
                    ))
                }
            },
        };
        Ok(builder
            .name(config.claw_name())
            .prefetch(prefetch)
            .max_deliveries(config.max_deliveries)
            .subscriptions(config.subscriptions)
            .durable(o.durable)
            .queue_expiry(o.queue_expiry)
            .quorum_groups(o.quorum_groups)
            .timing(config.timing))
    }

    /// A claw from a config (see [`builder_from_config`](Self::builder_from_config)).
    pub fn from_config(config: &Config) -> Result<AmqpClaw> {
        Self::builder_from_config(config)?.build()
    }
}
