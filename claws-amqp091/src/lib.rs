//! # claws-amqp091
//!
//! The RabbitMQ claw: a [`claws_core::Claw`] on AMQP 0-9-1 (lapin), keeping the topology of
//! TOPOLOGY.md (the seed's README) with the guarantees the seed lacked: acks after the handler,
//! bounded redelivery and dead-lettering, publisher confirms, unroutable sends reported, and
//! recovery after a lost connection.
//!
//! ## Example
//!
//! ```no_run
//! use claws_amqp091::AmqpClaw;
//! use claws_core::{handler_fn, jid, Packet, Router};
//!
//! # #[tokio::main] async fn main() -> claws_core::Result<()> {
//! let claw = AmqpClaw::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "news.example.com/worker-1")
//!     .name("rabbit")
//!     .prefetch(64)
//!     .build()?;
//! let router = Router::builder().claw(claw).build()?;
//! router
//!     .start(handler_fn(|packet, via, ctx| async move {
//!         // Answer whoever sent it, through the claw it came from, with the same id.
//!         ctx.reply(&via, packet).await?;
//!         Ok(())
//!     }))
//!     .await?;
//! router.send(&jid::parse("news.example.com")?, Some("id-1"), Packet::from("<message/>")).await?;
//! router.close().await
//! # }
//! ```
//!
//! From a config file, [`AmqpClaw::from_config`] reads the common keys and the `[amqp091]`
//! table ([`Amqp091Options`]).
//!
//! ## Wire decisions
//!
//! | what | on the wire |
//! |------|-------------|
//! | exchanges | `xmpp_direct` (direct), `xmpp_fanout` (fanout), `xmpp_dead_letter` (fanout); always durable |
//! | queues | `xmpp_direct:F`, `xmpp_direct:B`, `xmpp_fanout:F`, `xmpp_fanout:B` (names from [`claws_core::topology`]), bound with key `F`/`B`; only the subscribed ones are declared |
//! | durability | durable queues, persistent messages (`delivery_mode = 2`) by default; `durable(false)` gives transient queues and messages |
//! | per-instance queues | `x-expires` = the idle time (default 30 min), so instances gone for good leave nothing |
//! | group queues | classic, or quorum with `quorum_groups(true)` |
//! | every queue | `x-dead-letter-exchange = xmpp_dead_letter`; queue `xmpp_dead_letter` is bound to it |
//! | send | `xmpp_direct`, routing key = destination JID, `correlation_id` = id, `mandatory = true`: a send no queue takes is returned and fails with [`Error::NoRoute`] |
//! | publish | `xmpp_fanout`, routing key = the sender's JID |
//! | sender | the sender's full JID in `reply_to`; it becomes [`Via::from`](claws_core::Via::from) |
//! | confirms | publisher confirms on; a send returns after the broker's ack; a nack is [`Error::Refused`] |
//! | Via | `jid` = routing key, `exchange` = exchange, `claw` = claw name, `id` = `correlation_id`, `queue` = which of the four |
//! | ack | after the handler returned `Ok`, on the channel that delivered it |
//! | failed handler | attempts left: a copy goes straight back to the same queue (default exchange) with headers `x-claws-deliveries` = attempts so far, `x-claws-exchange` and `x-claws-routing-key` (so that `Via` stays the original), and once the copy is confirmed the original is acked; last attempt (`max_deliveries`, default 5): `basic.reject(requeue = false)`, dead-lettered by RabbitMQ |
//! | dropped acker | `basic.nack(requeue = true)` |
//! | connection name | `claws-amqp091 <claw name> <JID>` (visible in `rabbitmqctl list_connections`) |
//!
//! Why a copy rather than `basic.nack(requeue)`: classic queues do not count deliveries, so a
//! requeued stanza would come back forever and at once; the copy carries its count and goes to
//! the back of the queue. A handler's failure costs one publish and one confirm.
//!
//! ## Recovery
//!
//! The claw owns its state machine rather than using lapin's `enable_auto_recover()` (lapin
//! #450, and acks on the old channel, in its tracker): when the connection, a channel or a
//! consumer fails, the claw reports `Disconnected`, closes what is left, and reconnects with
//! capped exponential backoff (`reconnect_min_ms` doubling to `reconnect_max_ms`), declaring the
//! topology again and consuming again before reporting `Connected`. Sends made meanwhile wait up
//! to `send_timeout`, then fail with [`Error::Disconnected`]; a
//! send whose confirm was lost with the connection is published again (at least once).
//! Deliveries of a dead connection are never acked on the new one: the broker has requeued them.
//! An unreachable broker at [`start`](claws_core::Claw::start) is an
//! [`Error::Connect`] after at most `connect_timeout`; URLs in errors and
//! logs never show the password.
//!
//! ## Flow
//!
//! `prefetch` is per consumer (basic.qos, non-global): each consumed queue may have that many
//! unsettled deliveries. Handler concurrency is the router's. Order per queue is kept while one
//! handler call is in flight; a failed stanza goes to the back of its queue.
//!
//! ## Close
//!
//! [`close`](claws_core::Claw::close) cancels the consumers (undispatched deliveries return to
//! their queues), waits up to `close_timeout` for in-flight deliveries to be settled and for
//! outstanding confirms, then closes the channels and the connection.
//!
//! ## Features
//!
//! | Name | Description | Default |
//! |------|-------------|---------|
//! | (none) | plain `amqp://` over TCP; no TLS stack is built | |
//! | `tls` | `amqps://` through rustls (*ring*), trusting the system's roots plus [`tls_ca_file`](AmqpClawBuilder::tls_ca_file); client certificates with [`tls_client_cert`](AmqpClawBuilder::tls_client_cert) | no |

pub mod config;
mod connection;
mod consumer;
mod publisher;
mod tls;
pub mod topology;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use claws_core::jid::{self, Jid};
use claws_core::topology::Subscriptions;
use claws_core::{Capabilities, Claw, Config, Error, Events, Packet, Result};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{Amqp091Options, DEFAULT_URL};
use connection::{Shared, State};
use topology::{Topology, TopologyOptions};

/// Builds an [`AmqpClaw`]; start from [`AmqpClaw::builder`]. Nothing connects before
/// [`Claw::start`].
#[must_use]
#[derive(Debug, Clone)]
pub struct AmqpClawBuilder {
    url: String,
    jid: String,
    name: String,
    prefetch: u16,
    max_deliveries: u32,
    subscriptions: Subscriptions,
    durable: bool,
    queue_expiry: Option<Duration>,
    quorum_groups: bool,
    send_timeout: Duration,
    close_timeout: Duration,
    connect_timeout: Duration,
    heartbeat: u16,
    reconnect: (Duration, Duration),
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
        self.durable = durable;
        self
    }

    /// Idle time after which the broker deletes this instance's own (full-JID) queues
    /// (`x-expires`, default 30 minutes). `Duration::ZERO` disables expiry.
    pub fn queue_expiry(mut self, idle: Duration) -> Self {
        self.queue_expiry = (!idle.is_zero()).then_some(idle);
        self
    }

    /// Make the group (bare-JID) queues quorum queues, for clustered RabbitMQ (default false).
    pub fn quorum_groups(mut self, quorum: bool) -> Self {
        self.quorum_groups = quorum;
        self
    }

    /// How long a send waits for a connection during an outage (default 30 s).
    pub fn send_timeout(mut self, timeout: Duration) -> Self {
        self.send_timeout = timeout;
        self
    }

    /// How long `close` waits for in-flight deliveries and confirms (default 30 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// How long one connection attempt may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// AMQP heartbeat interval in seconds (default 10), unless the URL sets `heartbeat`.
    pub fn heartbeat(mut self, secs: u16) -> Self {
        self.heartbeat = secs;
        self
    }

    /// Reconnection backoff: the first delay, doubling up to `max` (default 100 ms to 5 s).
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect = (min, max.max(min));
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
        let jid = jid::parse(&self.jid)?;
        let uri = config::parse_url(&self.url)?;
        let tls = tls::config(
            &config::redact(&self.url),
            config::is_amqps(&uri),
            &self.tls,
        )?;
        if self.name.is_empty() {
            return Err(Error::Config("the claw name must not be empty".into()));
        }
        let topology = topology::plan(
            &jid,
            self.subscriptions,
            &TopologyOptions {
                durable: self.durable,
                queue_expiry: self.queue_expiry,
                quorum_groups: self.quorum_groups,
            },
        )?;
        let settings = config::Settings {
            endpoint: config::endpoint(&uri),
            uri,
            prefetch: self.prefetch,
            max_deliveries: self.max_deliveries,
            durable: self.durable,
            queue_expiry: self.queue_expiry,
            quorum_groups: self.quorum_groups,
            send_timeout: self.send_timeout,
            close_timeout: self.close_timeout,
            connect_timeout: self.connect_timeout,
            heartbeat: self.heartbeat,
            reconnect: self.reconnect,
            tls,
        };
        let shared = Shared::new(
            self.name.into(),
            jid,
            settings,
            self.subscriptions,
            topology,
        )?;
        Ok(AmqpClaw {
            shared: Arc::new(shared),
            run: tokio::sync::Mutex::new(Run::New),
        })
    }
}

enum Run {
    New,
    Running {
        stop: watch::Sender<bool>,
        supervisor: JoinHandle<()>,
    },
    Closed,
}

/// The RabbitMQ claw. See the [crate docs](crate) for what it puts on the wire.
pub struct AmqpClaw {
    shared: Arc<Shared>,
    run: tokio::sync::Mutex<Run>,
}

impl std::fmt::Debug for AmqpClaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpClaw")
            .field("name", &self.shared.name)
            .field("jid", &self.shared.jid.as_str())
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl AmqpClaw {
    /// A builder for a claw connecting to `url` as `jid`.
    pub fn builder(url: &str, jid: &str) -> AmqpClawBuilder {
        let defaults = Amqp091Options::default();
        AmqpClawBuilder {
            url: url.to_owned(),
            jid: jid.to_owned(),
            name: "amqp091".into(),
            prefetch: 32,
            max_deliveries: 5,
            subscriptions: Subscriptions::all(),
            durable: defaults.durable,
            queue_expiry: Some(Duration::from_secs(defaults.queue_expiry_secs)),
            quorum_groups: defaults.quorum_groups,
            send_timeout: Duration::from_millis(defaults.send_timeout_ms),
            close_timeout: Duration::from_millis(defaults.close_timeout_ms),
            connect_timeout: Duration::from_millis(defaults.connect_timeout_ms),
            heartbeat: defaults.heartbeat_secs,
            reconnect: (
                Duration::from_millis(defaults.reconnect_min_ms),
                Duration::from_millis(defaults.reconnect_max_ms),
            ),
            tls: tls::TlsFiles::default(),
        }
    }

    /// The builder a config describes: the common keys (`url`, `jid`, `name`, `prefetch`,
    /// `max_deliveries`, `subscriptions`) and the `[amqp091]` table. Without `url`, the URL is
    /// built from `[amqp091]`'s `host`, `username`, `password` (the seed's parameters), or is
    /// [`DEFAULT_URL`].
    pub fn builder_from_config(config: &Config) -> Result<AmqpClawBuilder> {
        let o: Amqp091Options = config.section("amqp091")?;
        let url = match (&config.url, &o.host) {
            (Some(url), _) => url.clone(),
            (None, Some(host)) => o.url_from_parts(host),
            (None, None) => o.url_from_parts("127.0.0.1"),
        };
        let prefetch = config.prefetch;
        let mut builder = Self::builder(&url, &config.jid);
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
            .queue_expiry(Duration::from_secs(o.queue_expiry_secs))
            .quorum_groups(o.quorum_groups)
            .send_timeout(Duration::from_millis(o.send_timeout_ms))
            .close_timeout(Duration::from_millis(o.close_timeout_ms))
            .connect_timeout(Duration::from_millis(o.connect_timeout_ms))
            .heartbeat(o.heartbeat_secs)
            .reconnect_backoff(
                Duration::from_millis(o.reconnect_min_ms),
                Duration::from_millis(o.reconnect_max_ms),
            ))
    }

    /// A claw from a config (see [`builder_from_config`](Self::builder_from_config)).
    pub fn from_config(config: &Config) -> Result<AmqpClaw> {
        Self::builder_from_config(config)?.build()
    }

    /// What this claw declares: exchanges, queues with their arguments, bindings.
    pub fn topology(&self) -> &Topology {
        &self.shared.topology
    }

    /// Which queues it consumes.
    pub fn subscriptions(&self) -> Subscriptions {
        self.shared.subscriptions
    }

    /// The broker endpoint, without the password.
    pub fn endpoint(&self) -> &str {
        &self.shared.settings.endpoint
    }

    /// The name the claw gives its connections (`rabbitmqctl list_connections name
    /// client_properties` shows it as `connection_name`).
    pub fn connection_name(&self) -> String {
        format!("claws-amqp091 {} {}", self.shared.name, self.shared.jid)
    }

    /// Whether the claw is connected now.
    pub fn is_connected(&self) -> bool {
        matches!(&*self.shared.state.borrow(), State::Up(s) if !s.is_dead())
    }
}

#[async_trait]
impl Claw for AmqpClaw {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn jid(&self) -> &Jid {
        &self.shared.jid
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            persistence: self.shared.settings.durable,
            survives_broker_restart: self.shared.settings.durable,
            ..Capabilities::all()
        }
    }

    async fn start(&self, events: Events) -> Result<()> {
        let mut run = self.run.lock().await;
        match *run {
            Run::New => {}
            Run::Running { .. } => {
                return Err(Error::Config(format!(
                    "claw `{}` is already started",
                    self.shared.name
                )))
            }
            Run::Closed => return Err(self.shared.closed()),
        }
        let session = connection::establish(&self.shared, &events).await?;
        let (stop, stopped) = watch::channel(false);
        let supervisor = tokio::spawn(connection::supervise(
            self.shared.clone(),
            events,
            session,
            stopped,
        ));
        *run = Run::Running { stop, supervisor };
        Ok(())
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        publisher::publish(&self.shared, publisher::Target::Direct(to), id, packet).await
    }

    async fn publish(&self, packet: Packet) -> Result<()> {
        publisher::publish(&self.shared, publisher::Target::Fanout, None, packet).await
    }

    async fn close(&self) -> Result<()> {
        let mut run = self.run.lock().await;
        let previous = std::mem::replace(&mut *run, Run::Closed);
        let Run::Running {
            stop,
            mut supervisor,
        } = previous
        else {
            self.shared.state.send_replace(State::Closed);
            return Ok(());
        };
        let shared = &self.shared;
        let timeout = shared.settings.close_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        shared
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        let session = match &*shared.state.borrow() {
            State::Up(s) => Some(s.clone()),
            _ => None,
        };
        // 1. Stop consuming: the broker stops sending, our tasks stop taking deliveries.
        if let Some(session) = &session {
            for tag in &session.consumer_tags {
                let _ = tokio::time::timeout_at(
                    deadline,
                    session
                        .consume
                        .basic_cancel(tag.clone(), lapin::options::BasicCancelOptions::default()),
                )
                .await;
            }
        }
        shared.stop_consuming.send_replace(true);
        if let Some(session) = &session {
            let handles =
                std::mem::take(&mut *session.consumers.lock().expect("consumer list lock"));
            for h in handles {
                let _ = tokio::time::timeout_at(deadline, h).await;
            }
        }
        // 2. Let in-flight deliveries be settled and sends be confirmed.
        let mut result = Ok(());
        if tokio::time::timeout_at(deadline, shared.in_flight.wait_idle())
            .await
            .is_err()
        {
            result = Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for {} in-flight stanza(s) to be settled on close (they return to their queue)",
                    shared.name,
                    shared.in_flight.count()
                ),
                after: timeout,
            });
        }
        if tokio::time::timeout_at(deadline, shared.sends.wait_idle())
            .await
            .is_err()
            && result.is_ok()
        {
            result = Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for {} send(s) to be confirmed on close",
                    shared.name,
                    shared.sends.count()
                ),
                after: timeout,
            });
        }
        // 3. Stop recovering, close the connection.
        let _ = stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), &mut supervisor)
            .await
            .is_err()
        {
            supervisor.abort();
        }
        let last = match shared.state.send_replace(State::Closed) {
            State::Up(s) => Some(s),
            _ => None,
        };
        if let Some(s) = last.or(session) {
            s.shut("closed").await;
        }
        result
    }
}
