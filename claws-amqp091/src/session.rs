//! What the claw's tasks share ([`Shared`]) and one connection's worth of state ([`Session`]).
//!
//! A session is one connection with its two channels and its consumers. It carries a [`Fuse`]:
//! whoever sees it fail (the connection watcher, a consumer, a send) trips it, and the
//! supervisor, the consumers and the sends still waiting on it all learn at once. Ackers keep
//! the session that delivered them, so an ack never reaches another connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use claws_core::jid::Jid;
use claws_core::runtime::{Alive, CancellationToken, Current, Fuse, InFlight};
use claws_core::topology::{Subscriptions, Topology};
use claws_core::Error;
use lapin::types::ShortString;
use lapin::{Channel, Connection};
use tokio::task::JoinHandle;

use crate::config::Settings;
use crate::topology::short;

/// Everything the claw's tasks share.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) jid: Jid,
    /// The JID as an AMQP short string (reply-to, broadcast routing key).
    pub(crate) jid_short: ShortString,
    pub(crate) settings: Settings,
    pub(crate) subscriptions: Subscriptions,
    /// The plan as configured.
    planned: Topology,
    /// The plan for a broker that refuses transient shared queues (the same as `planned`
    /// unless `durable = false`).
    durable_queues: Topology,
    /// The broker refused a transient shared queue (RabbitMQ 4.3's default): declare
    /// `durable_queues` from now on.
    transient_refused: AtomicBool,
    /// `user_id = auto`: whether the broker takes it well (RabbitMQ 4 or later), once asked.
    pub(crate) user_id_known: Mutex<Option<bool>>,
    /// The session that serves sends now.
    pub(crate) current: Current<Arc<Session>>,
    /// Cancelled by `close`: consumers stop taking deliveries; a dying session is not replaced.
    pub(crate) closing: CancellationToken,
    /// Deliveries handed out and not yet settled.
    pub(crate) in_flight: Arc<InFlight>,
    /// Sends waiting for their confirm.
    pub(crate) sends: Arc<InFlight>,
    /// A connection died of a message lapin cannot decode: sweep before consuming again.
    pub(crate) poison: crate::hostile::poison::Suspect,
    generation: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        jid: Jid,
        settings: Settings,
        subscriptions: Subscriptions,
        planned: Topology,
        durable_queues: Topology,
    ) -> claws_core::Result<Self> {
        let jid_short = short("JID", jid.as_str())?;
        Ok(Self {
            current: Current::new(name.clone()),
            name,
            jid,
            jid_short,
            settings,
            subscriptions,
            planned,
            durable_queues,
            transient_refused: AtomicBool::new(false),
            user_id_known: Mutex::new(None),
            closing: CancellationToken::new(),
            in_flight: InFlight::new(),
            sends: InFlight::new(),
            poison: Default::default(),
            generation: AtomicU64::new(0),
        })
    }

    /// What the claw declares on its broker now: the plan, or, once the broker refused a
    /// transient queue, the plan without transient queues
    /// ([`Topology::without_transient_queues`]).
    pub(crate) fn topology(&self) -> &Topology {
        if self.transient_refused.load(Ordering::Acquire) {
            &self.durable_queues
        } else {
            &self.planned
        }
    }

    /// Switches to the plan without transient queues; false if that changes nothing (the
    /// plan has none, or the switch was made before).
    pub(crate) fn refuse_transient(&self) -> bool {
        self.planned != self.durable_queues && !self.transient_refused.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.is_cancelled()
    }

    /// Marks `session` dead (once) and, if it is the current one, takes it out of service.
    pub(crate) fn mark_dead(&self, session: &Session, reason: impl Into<String>) {
        if session.dead.trip(reason) {
            self.current.down_if(|s| s.generation == session.generation);
        }
    }

    /// A lapin failure of `what`, with the password scrubbed from lapin's text.
    pub(crate) fn lapin_err(&self, what: &str, err: lapin::Error) -> Error {
        let text = err.to_string();
        let scrubbed = self.settings.scrub(&text);
        if scrubbed == text {
            return Error::Broker {
                claw: self.name.to_string(),
                what: what.to_owned(),
                source: err.into(),
            };
        }
        // lapin's text holds the password: keep the scrubbed text only (the source is dropped
        // on purpose).
        Error::Broker {
            claw: self.name.to_string(),
            what: what.to_owned(),
            source: scrubbed.into(),
        }
    }
}

/// One connection, its channels and consumers.
pub(crate) struct Session {
    pub(crate) generation: u64,
    /// Where it is connected (no password).
    pub(crate) endpoint: String,
    /// The user the connection logged in as, set as `user_id` on everything it publishes
    /// (RabbitMQ checks it; see [`verified_user`]).
    pub(crate) user: Option<ShortString>,
    pub(crate) connection: Connection,
    /// Publishes (with confirms); replaced by [`Session::renew_publisher`].
    pub(crate) publish: RwLock<Arc<Channel>>,
    /// One task per consumed queue, each with its own channel (see `subscription`).
    pub(crate) consumers: Mutex<Vec<JoinHandle<()>>>,
    pub(crate) dead: Fuse,
}

impl Alive for Session {
    fn is_alive(&self) -> bool {
        !self.dead.is_tripped()
    }
}

impl Session {
    /// The channel sends go out on now.
    pub(crate) fn publisher(&self) -> Arc<Channel> {
        self.publish
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the publishing channel `stale` with a new one (once, however many sends saw
    /// it fail). RabbitMQ 3.10 keeps nacking, on a channel that published to a quorum queue
    /// while its leader's node died, long after a new leader took over; a new channel
    /// publishes at once.
    pub(crate) async fn renew_publisher(&self, stale: &Arc<Channel>) -> lapin::Result<()> {
        if !Arc::ptr_eq(&self.publisher(), stale) {
            return Ok(());
        }
        let fresh = self.connection.create_channel().await?;
        fresh
            .confirm_select(lapin::options::ConfirmSelectOptions::default())
            .await?;
        let mut current = self.publish.write().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&current, stale) {
            *current = Arc::new(fresh);
        }
        Ok(())
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.is_tripped()
    }

    /// Waits until the session is dead; returns why.
    pub(crate) async fn died(&self) -> String {
        self.dead.tripped().await
    }

    /// Closes the connection, bounded.
    pub(crate) async fn shut(&self, reason: &str) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.connection
                .close(200, ShortString::from("claws: closing")),
        )
        .await;
        tracing::debug!(generation = self.generation, reason, "connection closed");
    }
}

/// The user a connection to `uri` logs in as, which RabbitMQ will accept as the `user_id` of
/// what it publishes; `None` with `auth_mechanism=external` (the certificate names the user,
/// not the URL) or a name over 255 bytes.
pub(crate) fn verified_user(uri: &lapin::uri::AMQPUri) -> Option<ShortString> {
    if matches!(
        uri.query.auth_mechanism,
        Some(lapin::uri::SASLMechanism::External)
    ) {
        return None;
    }
    ShortString::try_new(uri.authority.userinfo.username.clone()).ok()
}
