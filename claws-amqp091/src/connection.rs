//! Connecting, the [`Session`] one connection carries, and the recovery state machine.
//!
//! claws owns recovery instead of using lapin's `enable_auto_recover()` (see the crate docs): a
//! session is one connection with its two channels and consumers; when anything on it fails the
//! session is marked dead, `Disconnected` is reported, and the supervisor builds a new session
//! from scratch (connect, declare, consume) with capped exponential backoff, then reports
//! `Connected`. Ackers keep the session that delivered them, so an ack never reaches another
//! connection.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claws_core::jid::Jid;
use claws_core::topology::Subscriptions;
use claws_core::{Error, Events, Result};
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::config::{self, scrub, Settings};
use crate::consumer::{self, QueueInfo};
use crate::tls;
use crate::topology::{self, Topology};

/// What the claw is doing; senders wait on it.
#[derive(Clone)]
pub(crate) enum State {
    /// Not started, or (re)connecting.
    Connecting,
    /// Connected: sends go to this session.
    Up(Arc<Session>),
    /// Closed for good.
    Closed,
}

/// Counts operations in flight (unsettled deliveries, unconfirmed sends) so that `close` can
/// wait for them.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    count: AtomicUsize,
    idle: Notify,
}

/// Leaves the [`Tracker`] when dropped.
#[derive(Debug)]
pub(crate) struct TrackerGuard(Arc<Tracker>);

impl Tracker {
    pub(crate) fn enter(self: &Arc<Self>) -> TrackerGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        TrackerGuard(self.clone())
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }
}

impl Drop for TrackerGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Everything the claw's tasks share.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) jid: Jid,
    /// The JID as an AMQP short string (reply-to, broadcast routing key).
    pub(crate) jid_short: ShortString,
    pub(crate) settings: Settings,
    pub(crate) subscriptions: Subscriptions,
    pub(crate) topology: Topology,
    pub(crate) state: watch::Sender<State>,
    /// Set by `close`: consumers stop taking deliveries; a dying session is not replaced.
    pub(crate) closing: AtomicBool,
    pub(crate) stop_consuming: watch::Sender<bool>,
    pub(crate) in_flight: Arc<Tracker>,
    pub(crate) sends: Arc<Tracker>,
    generation: AtomicU64,
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        jid: Jid,
        settings: Settings,
        subscriptions: Subscriptions,
        topology: Topology,
    ) -> Result<Self> {
        let jid_short = topology::short("JID", jid.as_str())?;
        Ok(Self {
            name,
            jid,
            jid_short,
            settings,
            subscriptions,
            topology,
            state: watch::Sender::new(State::Connecting),
            closing: AtomicBool::new(false),
            stop_consuming: watch::Sender::new(false),
            in_flight: Arc::default(),
            sends: Arc::default(),
            generation: AtomicU64::new(0),
        })
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Marks `session` dead (once) and, if it is the current one, leaves the `Up` state.
    pub(crate) fn mark_dead(&self, session: &Session, reason: impl Into<String>) {
        if session.kill(reason.into()) {
            self.state.send_if_modified(|state| match state {
                State::Up(s) if s.generation == session.generation => {
                    *state = State::Connecting;
                    true
                }
                _ => false,
            });
        }
    }

    /// The live session, waiting until `deadline` for one.
    pub(crate) async fn session(
        &self,
        deadline: Instant,
        started: Instant,
    ) -> Result<Arc<Session>> {
        if let State::Up(s) = &*self.state.borrow() {
            if !s.is_dead() {
                return Ok(s.clone());
            }
        }
        let mut rx = self.state.subscribe();
        let waited = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|s| match s {
                State::Up(s) => !s.is_dead(),
                State::Closed => true,
                State::Connecting => false,
            }),
        )
        .await;
        match waited {
            Ok(Ok(state)) => match &*state {
                State::Up(s) => Ok(s.clone()),
                _ => Err(self.closed()),
            },
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => Err(Error::Disconnected {
                claw: self.name.to_string(),
                waited: started.elapsed(),
            }),
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        matches!(*self.state.borrow(), State::Closed)
    }

    pub(crate) fn closed(&self) -> Error {
        Error::Closed {
            claw: self.name.to_string(),
        }
    }
}

/// One connection, its channels and consumers.
pub(crate) struct Session {
    pub(crate) generation: u64,
    pub(crate) connection: Connection,
    /// Publishes (with confirms) and declarations.
    pub(crate) publish: Channel,
    /// Consumes (with basic.qos); deliveries are settled here.
    pub(crate) consume: Channel,
    pub(crate) consumer_tags: Vec<ShortString>,
    pub(crate) consumers: Mutex<Vec<JoinHandle<()>>>,
    dead: watch::Sender<Option<String>>,
}

impl Session {
    /// Marks the session dead; returns whether it was alive.
    fn kill(&self, reason: String) -> bool {
        self.dead.send_if_modified(|d| {
            if d.is_none() {
                *d = Some(reason);
                true
            } else {
                false
            }
        })
    }

    pub(crate) fn is_dead(&self) -> bool {
        self.dead.borrow().is_some()
    }

    /// Waits until the session is dead; returns why.
    pub(crate) async fn died(&self) -> String {
        let mut rx = self.dead.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone().unwrap_or_default(),
            Err(_) => "session dropped".into(),
        };
        reason
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

fn lapin_err(shared: &Shared, what: &str, err: &lapin::Error) -> Error {
    Error::backend(format!(
        "claw `{}`: {what} failed: {}",
        shared.name,
        scrub(
            &err.to_string(),
            &shared.settings.uri.authority.userinfo.password
        )
    ))
}

/// Opens a connection: heartbeats on, named after the claw and its JID, bounded in time.
async fn connect(shared: &Shared) -> Result<Connection> {
    let settings = &shared.settings;
    let mut uri = settings.uri.clone();
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(settings.heartbeat);
    }
    let connection_name = format!("claws-amqp091 {} {}", shared.name, shared.jid);
    let properties =
        ConnectionProperties::default().with_connection_name(LongString::from(connection_name));
    let fail = |reason: String| Error::Connect {
        claw: shared.name.to_string(),
        endpoint: settings.endpoint.clone(),
        reason: scrub(&reason, &settings.uri.authority.userinfo.password),
    };
    let runtime = lapin::runtime::default_runtime().map_err(|e| fail(e.to_string()))?;
    match tokio::time::timeout(
        settings.connect_timeout,
        Connection::connect_uri_with_config(uri, properties, settings.tls.clone(), runtime),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(err)) => {
            let reason = err.to_string();
            Err(fail(match tls::hint(&reason) {
                Some(hint) if config::is_amqps(&settings.uri) => format!("{reason} ({hint})"),
                _ => reason,
            }))
        }
        Err(_) => Err(fail(format!(
            "no answer within {:?} (raise `connect_timeout_ms` if the broker is slow)",
            settings.connect_timeout
        ))),
    }
}

/// Builds a session: connect, open channels, declare the topology, consume, report `Connected`.
pub(crate) async fn establish(shared: &Arc<Shared>, events: &Events) -> Result<Arc<Session>> {
    let connection = connect(shared).await?;
    let generation = shared.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let mut conn_events = connection.events_listener();
    let setup = async {
        let publish = connection
            .create_channel()
            .await
            .map_err(|e| lapin_err(shared, "opening the publishing channel", &e))?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| lapin_err(shared, "enabling publisher confirms", &e))?;
        topology::declare(&publish, &shared.topology).await?;
        let consume = connection
            .create_channel()
            .await
            .map_err(|e| lapin_err(shared, "opening the consuming channel", &e))?;
        consume
            .basic_qos(shared.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| lapin_err(shared, "setting the prefetch (basic.qos)", &e))?;
        let mut consumers = Vec::new();
        let mut tags = Vec::new();
        for (queue, kind) in shared.topology.consumed() {
            let name = topology::short("queue", &queue.name)?;
            let tag = format!("claws-{}-{}", kind.as_str(), generation);
            let consumer = consume
                .basic_consume(
                    name.clone(),
                    ShortString::from(tag),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(|e| lapin_err(shared, &format!("consuming `{}`", queue.name), &e))?;
            tags.push(consumer.tag());
            consumers.push((
                Arc::new(QueueInfo {
                    name,
                    kind: kind.clone(),
                }),
                consumer,
            ));
        }
        Ok::<_, Error>((publish, consume, tags, consumers))
    };
    // Every step has a bound: a connection that dies mid-setup must not hang recovery.
    let bound = shared.settings.connect_timeout * 3;
    let setup = async {
        tokio::time::timeout(bound, setup)
            .await
            .unwrap_or_else(|_| {
                Err(Error::Timeout {
                    what: format!(
                        "claw `{}` declaring its topology and consumers",
                        shared.name
                    ),
                    after: bound,
                })
            })
    };
    let (publish, consume, consumer_tags, consumers) = match setup.await {
        Ok(parts) => parts,
        Err(err) => {
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                connection.close(200, ShortString::from("claws: setup failed")),
            )
            .await;
            return Err(err);
        }
    };
    let session = Arc::new(Session {
        generation,
        connection,
        publish,
        consume,
        consumer_tags,
        consumers: Mutex::new(Vec::new()),
        dead: watch::Sender::new(None),
    });
    // Watch the connection: any error ends the session.
    {
        let shared = shared.clone();
        let session = session.clone();
        tokio::spawn(async move {
            // lapin reports a failed connection as an event; the status check is a safety net
            // in case that event is lost.
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = session.died() => return,
                    _ = tick.tick() => {
                        if !session.connection.status().connected() {
                            shared.mark_dead(&session, "connection lost (status no longer connected)");
                            return;
                        }
                    }
                    event = conn_events.next() => match event {
                        Some(lapin::Event::Error(err)) => {
                            let reason = scrub(&err.to_string(), &shared.settings.uri.authority.userinfo.password);
                            shared.mark_dead(&session, format!("connection lost: {reason}"));
                            return;
                        }
                        Some(_) => {}
                        None => return,
                    }
                }
            }
        });
    }
    shared.state.send_replace(State::Up(session.clone()));
    events.connected(&shared.name).await;
    let mut handles = Vec::with_capacity(consumers.len());
    for (queue, consumer) in consumers {
        handles.push(tokio::spawn(consumer::run(
            shared.clone(),
            session.clone(),
            queue,
            consumer,
            events.clone(),
        )));
    }
    *session.consumers.lock().expect("consumer list lock") = handles;
    Ok(session)
}

/// Watches the current session; when it dies, reports `Disconnected` and rebuilds one with
/// capped exponential backoff, until `stop`.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    events: Events,
    mut session: Arc<Session>,
    mut stop: watch::Receiver<bool>,
) {
    let (min, max) = shared.settings.reconnect;
    loop {
        let reason = tokio::select! {
            reason = session.died() => reason,
            _ = stop.wait_for(|s| *s) => return,
        };
        if shared.is_closing() {
            return;
        }
        tracing::warn!(claw = &*shared.name, %reason, "disconnected; reconnecting");
        shared.state.send_if_modified(|s| {
            if matches!(s, State::Up(_)) {
                *s = State::Connecting;
                true
            } else {
                false
            }
        });
        events.disconnected(&shared.name, reason.clone()).await;
        {
            let old = session.clone();
            tokio::spawn(async move { old.shut("replaced").await });
        }
        let mut delay = min;
        loop {
            let attempt = tokio::select! {
                r = establish(&shared, &events) => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match attempt {
                Ok(new) => {
                    tracing::info!(
                        claw = &*shared.name,
                        generation = new.generation,
                        "reconnected"
                    );
                    session = new;
                    break;
                }
                Err(err) => {
                    tracing::warn!(claw = &*shared.name, %err, retry_in = ?delay, "reconnection failed");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.wait_for(|s| *s) => return,
                    }
                    delay = (delay * 2).min(max);
                }
            }
        }
    }
}
