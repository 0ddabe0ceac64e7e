//! [`AmqpClawBuilder`]: building an [`AmqpClaw`] from code or from a config.

use std::path::PathBuf;

use claws_core::config::{split_urls, Timing, TimingBuilder};
use claws_core::jid::JidInput;
use claws_core::topology::{self, Subscriptions, TopologyBuilder, TopologyOptions};
use claws_core::{Config, Error, Result};

use crate::claw::AmqpClaw;
use crate::config::{Amqp091Options, Endpoint, Settings, UserId};
use crate::session::Shared;
use crate::tls;

/// Builds an [`AmqpClaw`]; start from [`AmqpClaw::builder`]. Nothing connects before
/// [`Claw::start`](claws_core::Claw::start). Time-outs, heartbeat and reconnection bounds are
/// set through [`TimingBuilder`] (`send_timeout`, `connect_timeout`, ...), durability, expiry
/// and quorum queues through [`TopologyBuilder`] (`durable`, `quorum_groups`, ...).
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
    user_id: UserId,
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

    /// Whether sends carry the verified `user_id` ([`UserId`]; default [`UserId::Auto`]: on
    /// RabbitMQ 4 and later).
    pub fn user_id(mut self, user_id: UserId) -> Self {
        self.user_id = user_id;
        self
    }

    /// Which of the four queues to consume (default all).
    pub fn subscriptions(mut self, subscriptions: Subscriptions) -> Self {
        self.subscriptions = subscriptions;
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
        let endpoints = split_urls(self.urls.iter().map(String::as_str))
            .iter()
            .map(|u| Endpoint::parse(u))
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
        let queues = self.topology.delivery_limit_or(self.max_deliveries);
        let topology = topology::plan(&jid, self.subscriptions, &queues)?;
        let durable_queues = topology.without_transient_queues(&queues);
        let settings = Settings {
            endpoints,
            prefetch: self.prefetch,
            max_deliveries: self.max_deliveries,
            durable: self.topology.durable,
            timing: self.timing,
            tls,
            user_id: self.user_id,
        };
        let shared = Shared::new(
            self.name.into(),
            jid,
            settings,
            self.subscriptions,
            topology,
            durable_queues,
        )?;
        Ok(AmqpClaw::new(shared))
    }
}

impl TopologyBuilder for AmqpClawBuilder {
    fn topology_mut(&mut self) -> &mut TopologyOptions {
        &mut self.topology
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
            topology: defaults.queues,
            timing: Timing::default(),
            tls: tls::TlsFiles::default(),
            user_id: UserId::Auto,
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
            .topology_options(o.queues)
            .user_id(o.user_id)
            .timing(config.timing))
    }

    /// A claw from a config (see [`builder_from_config`](Self::builder_from_config)).
    pub fn from_config(config: &Config) -> Result<AmqpClaw> {
        Self::builder_from_config(config)?.build()
    }
}
