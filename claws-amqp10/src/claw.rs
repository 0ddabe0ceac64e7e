//! [`Amqp10Claw`]: the claw itself, its shared state, and the supervisor that owns recovery.

use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use claws_core::jid::Jid;
use claws_core::{Capabilities, Claw, Error, Events, Packet, Result};
use fe2o3_amqp::connection::ConnectionHandle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::address::{AddressScheme, Source};
use crate::config::Settings;
use crate::connection::{self, Endpoint, Live};
use crate::consumer::{self, Attempts, InFlight};
use crate::declare::{self, DeclareOptions};
use crate::publisher::{message_id, Outgoing};

/// Where the claw is in its life.
#[derive(Debug, Clone)]
pub(crate) enum State {
    /// Built, not started.
    Idle,
    /// Started, no connection at the moment.
    Down,
    /// Connected: the current generation.
    Up(Arc<Live>),
    /// Closed for good.
    Closed,
}

/// What the claw's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) jid: Jid,
    pub(crate) endpoint: Endpoint,
    pub(crate) sources: Vec<Source>,
    pub(crate) settings: Settings,
    pub(crate) state: watch::Sender<State>,
    pub(crate) attempts: Attempts,
    /// Deliveries handed out and not yet settled.
    pub(crate) in_flight: Arc<InFlight>,
    /// Sends waiting for their outcome.
    pub(crate) sends: Arc<InFlight>,
    container_id: String,
}

impl Shared {
    /// The current generation, waiting for one while disconnected (until `deadline`).
    pub(crate) async fn wait_live(&self, started: Instant, deadline: Instant) -> Result<Arc<Live>> {
        let mut rx = self.state.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                State::Up(live) if !live.is_failed() => return Ok(live.clone()),
                State::Closed => {
                    return Err(Error::Closed {
                        claw: self.name.to_string(),
                    })
                }
                State::Idle => {
                    return Err(Error::Config(format!(
                        "claw `{}` is not started; call `start` before sending",
                        self.name
                    )))
                }
                _ => {}
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(Error::Disconnected {
                    claw: self.name.to_string(),
                    waited: started.elapsed(),
                });
            }
        }
    }
}

#[derive(Debug)]
enum Run {
    New,
    Running {
        closing: watch::Sender<bool>,
        supervisor: JoinHandle<Result<()>>,
    },
    Closed,
}

/// The AMQP 1.0 claw. Build it with [`Amqp10Claw::builder`] or [`Amqp10Claw::from_config`];
/// use it through the [`Claw`] trait (usually inside a [`Router`](claws_core::Router)).
#[derive(Debug)]
pub struct Amqp10Claw {
    shared: Arc<Shared>,
    run: StdMutex<Run>,
}

impl Amqp10Claw {
    pub(crate) fn new(
        name: Arc<str>,
        jid: Jid,
        endpoint: Endpoint,
        sources: Vec<Source>,
        settings: Settings,
    ) -> Self {
        let container_id = format!("claws-{}-{}", jid.as_str(), message_id());
        Self {
            shared: Arc::new(Shared {
                name,
                jid,
                endpoint,
                sources,
                settings,
                state: watch::channel(State::Idle).0,
                attempts: Attempts::default(),
                in_flight: Arc::new(InFlight::default()),
                sends: Arc::new(InFlight::default()),
                container_id,
            }),
            run: StdMutex::new(Run::New),
        }
    }

    /// The address scheme in use.
    pub fn scheme(&self) -> AddressScheme {
        self.shared.settings.scheme
    }

    /// The source address of each subscription, in TOPOLOGY.md's order, with the queue name it
    /// stands for (for logs and tools).
    pub fn sources(&self) -> Vec<(String, String)> {
        self.shared
            .sources
            .iter()
            .map(|s| (s.address.clone(), s.spec.name.clone()))
            .collect()
    }

    /// RabbitMQ scheme: deletes this instance's queues over AMQP 0-9-1 (for tests and tools;
    /// the claw should be closed). Group queues shared with running instances go too.
    pub async fn delete_queues(&self) -> Result<()> {
        let names: Vec<String> = self
            .shared
            .sources
            .iter()
            .map(|s| s.spec.name.clone())
            .collect();
        declare::delete_queues(&self.shared.endpoint, &names).await
    }

    fn outgoing(
        &self,
        address: String,
        subject: String,
        id: Option<&str>,
        packet: Packet,
    ) -> Outgoing {
        let s = &self.shared;
        Outgoing {
            address,
            subject: Some(subject),
            reply_to: Some(s.settings.scheme.reply_to(&s.jid)),
            correlation_id: id.map(str::to_owned),
            message_id: Some(message_id()),
            payload: packet.into_bytes(),
            delivery_count: 0,
            durable: s.settings.durable,
        }
    }
}

#[async_trait]
impl Claw for Amqp10Claw {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn jid(&self) -> &Jid {
        &self.shared.jid
    }

    fn capabilities(&self) -> Capabilities {
        let s = &self.shared.settings;
        match s.scheme {
            AddressScheme::RabbitMq => Capabilities {
                persistence: s.durable,
                survives_broker_restart: s.durable,
                // RabbitMQ's AMQP 1.0 plugin accepts a transfer no queue takes.
                unroutable_errors: false,
                ..Capabilities::all()
            },
            AddressScheme::Queue => Capabilities {
                load_balancing: true,
                fanout: false,
                persistence: false,
                ordering: true,
                redelivery: true,
                dead_letter: true,
                // The claw reconnects, but a broker that settles deliveries when it sends them
                // (the Proton example broker) loses what was on the wire at the cut: at most
                // the credit window of each link.
                reconnect: true,
                lossless_cut: false,
                survives_broker_restart: false,
                unroutable_errors: false,
            },
        }
    }

    async fn start(&self, events: Events) -> Result<()> {
        let (first_tx, first_rx) = oneshot::channel();
        {
            let mut run = self.run.lock().expect("run lock");
            match *run {
                Run::New => {}
                Run::Running { .. } => {
                    return Err(Error::Config(format!(
                        "claw `{}` is already started",
                        self.shared.name
                    )))
                }
                Run::Closed => {
                    return Err(Error::Closed {
                        claw: self.shared.name.to_string(),
                    })
                }
            }
            let (closing, closing_rx) = watch::channel(false);
            self.shared.state.send_replace(State::Down);
            let supervisor =
                tokio::spawn(supervise(self.shared.clone(), events, closing_rx, first_tx));
            *run = Run::Running {
                closing,
                supervisor,
            };
        }
        match first_rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                *self.run.lock().expect("run lock") = Run::New;
                self.shared.state.send_replace(State::Idle);
                Err(e)
            }
            Err(_) => Err(Error::Backend(
                format!(
                    "claw `{}`: the connection task ended unexpectedly",
                    self.shared.name
                )
                .into(),
            )),
        }
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        let target = self.shared.settings.scheme.direct_target(to)?;
        let out = self.outgoing(target.address, target.subject, id, packet);
        let _guard = self.shared.sends.enter();
        self.shared.send_outgoing(&out, to.as_str()).await
    }

    async fn publish(&self, packet: Packet) -> Result<()> {
        let Some(target) = self.shared.settings.scheme.fanout_target(&self.shared.jid) else {
            return Err(Error::Refused {
                to: "broadcast".into(),
                claw: self.shared.name.to_string(),
                reason: "the `queue` address scheme has no broadcast (a plain queue broker has \
                         no fanout); use the `rabbitmq` scheme for broadcasts"
                    .into(),
            });
        };
        let out = self.outgoing(target.address, target.subject, None, packet);
        let _guard = self.shared.sends.enter();
        self.shared.send_outgoing(&out, "broadcast").await
    }

    async fn close(&self) -> Result<()> {
        let previous = std::mem::replace(&mut *self.run.lock().expect("run lock"), Run::Closed);
        let Run::Running {
            closing,
            supervisor,
        } = previous
        else {
            self.shared.state.send_replace(State::Closed);
            return Ok(());
        };
        let _ = closing.send(true);
        match supervisor.await {
            Ok(r) => r,
            Err(e) => Err(Error::Backend(
                format!(
                    "claw `{}`: the connection task failed: {e}",
                    self.shared.name
                )
                .into(),
            )),
        }
    }
}

/// One connection's worth of state.
struct Generation {
    connection: ConnectionHandle<()>,
    live: Arc<Live>,
    tasks: Vec<JoinHandle<()>>,
}

async fn connect(
    shared: &Arc<Shared>,
    generation: u64,
    events: &Events,
    closing: &watch::Receiver<bool>,
) -> Result<Generation> {
    let s = &shared.settings;
    if s.scheme == AddressScheme::RabbitMq && s.declare {
        declare::declare(
            &shared.endpoint,
            &shared.sources,
            DeclareOptions {
                durable: s.durable,
                queue_expiry: s.queue_expiry,
            },
            s.connect_timeout,
            &shared.name,
        )
        .await?;
    }
    let (mut conn, mut session) = connection::open(
        &shared.endpoint,
        &format!("{}-{generation}", shared.container_id),
        s.idle_timeout,
        s.connect_timeout,
        &shared.name,
    )
    .await?;
    let mut receivers = Vec::with_capacity(shared.sources.len());
    for (i, source) in shared.sources.iter().enumerate() {
        let name = format!("{}-recv-{generation}-{i}", shared.name);
        let attach = consumer::attach(&mut session, source, name, &shared.name);
        let r = match tokio::time::timeout(s.connect_timeout, attach).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: format!("attaching a receiving link to `{}`", source.address),
                after: s.connect_timeout,
            }),
        };
        match r {
            Ok(r) => receivers.push(r),
            Err(e) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                return Err(e);
            }
        }
    }
    let live = Arc::new(Live::new(generation, session));
    let tasks = receivers
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            tokio::spawn(consumer::run_link(
                shared.clone(),
                live.clone(),
                i,
                r,
                events.clone(),
                closing.clone(),
            ))
        })
        .collect();
    Ok(Generation {
        connection: conn,
        live,
        tasks,
    })
}

impl Generation {
    /// After a failure: drop everything; the broker requeues what was unsettled. Marking the
    /// generation failed wakes the sends still awaiting an outcome on it, which then send
    /// again on the next generation.
    async fn teardown(mut self, reason: &str) {
        self.live.fail(reason);
        for t in &self.tasks {
            t.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.connection.close()).await;
    }

    /// On close: stop consuming, let in-flight work finish, then close cleanly.
    async fn shutdown(mut self, shared: &Shared) -> Result<()> {
        let timeout = shared.settings.close_timeout;
        tracing::debug!(
            claw = &*shared.name,
            jid = %shared.jid,
            deliveries = shared.in_flight.count(),
            sends = shared.sends.count(),
            "closing: waiting for in-flight deliveries and sends"
        );
        let drained = tokio::time::timeout(timeout, async {
            tokio::select! {
                () = async {
                    shared.in_flight.idle().await;
                    shared.sends.idle().await;
                } => {}
                // Nothing can settle on a failed generation (a lost connection, or a refused
                // attach, which ends the session on RabbitMQ): stop waiting, close, and let the
                // sends still waiting fail as closed. Handlers still running lose their settlement;
                // the broker delivers those stanzas again (at least once).
                reason = self.live.failed() => {
                    tracing::debug!(claw = &*shared.name, %reason, "connection failed while closing");
                }
            }
        })
        .await;
        tracing::debug!(claw = &*shared.name, jid = %shared.jid, drained = drained.is_ok(), "closing: detaching");
        for t in &self.tasks {
            t.abort();
        }
        self.live
            .end_senders(shared.settings.scheme == AddressScheme::Queue)
            .await;
        {
            let mut session = self.live.session.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.close()).await;
        match drained {
            Ok(()) => Ok(()),
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for in-flight stanzas on close (they return to their queue)",
                    shared.name
                ),
                after: timeout,
            }),
        }
    }
}

/// The recovery state machine (see [`connection`](crate::connection)).
async fn supervise(
    shared: Arc<Shared>,
    events: Events,
    mut closing: watch::Receiver<bool>,
    first: oneshot::Sender<Result<()>>,
) -> Result<()> {
    let s = &shared.settings;
    let mut first = Some(first);
    let mut backoff = s.reconnect_min;
    let mut generation = 0u64;
    let mut result = Ok(());
    loop {
        if *closing.borrow() {
            break;
        }
        generation += 1;
        match connect(&shared, generation, &events, &closing).await {
            Ok(mut gen) => {
                tracing::debug!(claw = &*shared.name, jid = %shared.jid, generation, "connected");
                backoff = s.reconnect_min;
                shared.state.send_replace(State::Up(gen.live.clone()));
                events.connected(&shared.name).await;
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                let lost = tokio::select! {
                    r = gen.connection.on_close() => Some(match r {
                        Ok(()) => "the broker closed the connection".to_owned(),
                        Err(e) => format!("connection lost: {e}"),
                    }),
                    reason = gen.live.failed() => Some(reason),
                    _ = closing.wait_for(|c| *c) => None,
                };
                match lost {
                    None => {
                        result = gen.shutdown(&shared).await;
                        break;
                    }
                    Some(reason) => {
                        tracing::warn!(claw = &*shared.name, jid = %shared.jid, %reason, "disconnected; reconnecting");
                        shared.state.send_replace(State::Down);
                        gen.teardown(&reason).await;
                        events.disconnected(&shared.name, reason).await;
                    }
                }
            }
            Err(e) => {
                if let Some(f) = first.take() {
                    let _ = f.send(Err(e));
                    return Ok(());
                }
                tracing::warn!(claw = &*shared.name, jid = %shared.jid, error = %e, retry_in = ?backoff, "reconnect failed");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closing.wait_for(|c| *c) => break,
        }
        backoff = (backoff * 2).min(s.reconnect_max);
    }
    shared.state.send_replace(State::Closed);
    result
}
