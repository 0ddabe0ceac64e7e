//! Recovery: one *generation* ([`Generation`]) is a connection, a session for sending on it,
//! and the receiving links, each on a session of its own; [`supervise`] owns the generations
//! (see [`connection`](crate::connection) for the diagram): connect, serve until the
//! connection or a link fails or the claw closes, then report `Disconnected` and connect again.
//!
//! Every (re)connection walks the claw's endpoints (the nodes of a cluster) from a shuffled
//! start with claws-core's [`Reconnect`]: each endpoint once per round, a jittered [`Backoff`]
//! between rounds. The declaring 0-9-1 connection goes to the endpoint being tried, so that
//! both connections of an attempt reach the same node. `start` fails after one round in which
//! no endpoint answered.
//!
//! A queue whose node is down (RabbitMQ 3.10 refuses to declare it or to attach to it: its
//! home node `is down or inaccessible`) does not fail the connection: the claw consumes its
//! other queues, reports [`ConsumerLost`](claws_core::Event::ConsumerLost) for that one and
//! attaches it again, with backoff, on a new session (the refusal ends the session it was tried
//! on, which is why each receiving link has its own), then reports `ConsumerRestored`.
//!
//! [`Backoff`]: claws_core::runtime::Backoff

use std::sync::Arc;
use std::time::Duration;

use claws_core::runtime::{drain, CancellationToken, Endpoints, Reconnect, Stint};
use claws_core::{Error, Events, Result};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::Receiver;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::Session;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::address::{AddressScheme, Addresses, Dialect};
use crate::connection::{self, Endpoint, Live};
use crate::consumer;
use crate::declare;
use crate::poison;
use crate::shared::Shared;

/// How long `close` waits for the broker's answer to a session's `end` before it closes the
/// connection anyway (which ends the session too). The settlements and the `end` itself are
/// written before the wait, so nothing rides on the answer; and fe2o3 0.18's session engine
/// polls without pause while it waits (its link-frame channel, closed by `end`, is always
/// ready): when RabbitMQ 3.10 took 2 s to answer (about 1 drain in 15), the claw burnt two
/// cores for those 2 s.
const END_ANSWER: Duration = Duration::from_millis(250);

/// A subscription as a connection attempt left it.
enum Link {
    /// Attached, on a session of its own (which must live as long as the link).
    Attached(SessionHandle<()>, Box<Receiver>),
    /// Its queue cannot be consumed now (its node is down), for this reason.
    Unavailable(String),
}

/// A receiving link's request for a new session (only the supervisor holds the connection).
type SessionRequest = oneshot::Sender<Result<SessionHandle<()>>>;

/// One connection's worth of state.
struct Generation {
    number: u64,
    endpoint: Endpoint,
    connection: ConnectionHandle<()>,
    live: Arc<Live>,
    /// The subscriptions, until [`serve`](Generation::serve) hands them to their tasks.
    links: Vec<Link>,
    tasks: Vec<JoinHandle<()>>,
    /// The receiving links' sessions, kept here (not in their tasks) so that a close ends each
    /// one cleanly: ending a session sends what it still holds (the last accepts) first,
    /// where dropping it with an aborted task could lose them.
    link_sessions: LinkSessions,
    sessions: mpsc::Receiver<SessionRequest>,
    sessions_tx: mpsc::Sender<SessionRequest>,
}

/// The sessions of a generation's receiving links.
type LinkSessions = Arc<tokio::sync::Mutex<Vec<SessionHandle<()>>>>;

/// The retry schedule over the claw's endpoints.
fn reconnect(shared: &Shared) -> Result<Reconnect<Endpoint>> {
    Ok(Reconnect::new(
        shared.name.to_string(),
        Endpoints::shuffled(shared.endpoints.clone())?,
        shared.settings.timing.backoff(),
    ))
}

/// Whether `err` says that a queue's node is down (RabbitMQ 3.x: `NOT_FOUND - home node '…' of
/// durable queue '…' is down or inaccessible`), rather than that the queue is missing.
fn is_unavailable(err: &Error) -> bool {
    err.to_string().contains("is down or inaccessible")
}

/// Bounds `work` by the connect time-out.
async fn bounded<T>(
    shared: &Shared,
    what: impl FnOnce() -> String,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let after = shared.settings.timing.connect_timeout;
    match tokio::time::timeout(after, work).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: what(),
            after,
        }),
    }
}

/// Begins a session on `connection`, bounded by the connect time-out.
async fn begin(
    shared: &Shared,
    connection: &mut ConnectionHandle<()>,
) -> Result<SessionHandle<()>> {
    let name = &shared.name;
    bounded(shared, || "beginning a session".into(), async {
        Session::begin(connection).await.map_err(|e| Error::Broker {
            claw: name.to_string(),
            what: "beginning a session".into(),
            source: Box::new(e),
        })
    })
    .await
}

/// Attaches subscription `index` on `session`, bounded by the connect time-out.
async fn attach(
    shared: &Shared,
    session: &mut SessionHandle<()>,
    index: usize,
    name: String,
    dialect: Dialect,
) -> Result<Receiver> {
    let source = &shared.sources[index];
    let address = source.address(dialect);
    bounded(
        shared,
        || format!("attaching a receiving link to `{address}`"),
        consumer::attach(session, source, &address, dialect, name, &shared.name),
    )
    .await
}

/// One connection attempt to `endpoint`: declare (RabbitMQ scheme, over 0-9-1 to the same
/// node), [`sweep`](poison::sweep) the queues first when the last connection may have died of a
/// message the broker cannot convert (`sweep`), connect, begin the sending session, attach
/// every subscription it can.
async fn connect(
    shared: &Arc<Shared>,
    endpoint: Endpoint,
    number: u64,
    sweep: bool,
) -> Result<Generation> {
    let s = &shared.settings;
    let unavailable = if s.scheme == AddressScheme::RabbitMq && s.declare {
        declare::declare(shared, &endpoint).await?.unavailable
    } else {
        Vec::new()
    };
    if sweep && s.scheme == AddressScheme::RabbitMq {
        poison::sweep(shared, &endpoint).await;
    }
    let opened = connection::open(
        &endpoint,
        &format!("{}-{number}", shared.container_id),
        s.timing.heartbeat_interval(),
        s.timing.connect_timeout,
        &shared.name,
    )
    .await?;
    let (mut conn, session) = (opened.connection, opened.session);
    let version = opened.version.as_deref();
    let broker4 = Addresses::Auto.resolve(version) == Dialect::V2;
    let dialect = match s.scheme {
        AddressScheme::RabbitMq => s.addresses.resolve(version),
        AddressScheme::Queue => Dialect::V1,
    };
    tracing::debug!(claw = &*shared.name, %endpoint, version = version.unwrap_or("?"), ?dialect, "broker");
    shared.learnt(broker4, dialect);
    let mut links = Vec::with_capacity(shared.sources.len());
    for (i, source) in shared.sources.iter().enumerate() {
        if unavailable.contains(&source.spec.name) {
            links.push(Link::Unavailable(format!(
                "the queue `{}` is unavailable: its node is down",
                source.spec.name
            )));
            continue;
        }
        let attached = async {
            let mut session = begin(shared, &mut conn).await?;
            let name = format!("{}-recv-{number}-{i}", shared.name);
            let receiver = attach(shared, &mut session, i, name, dialect).await?;
            Ok::<_, Error>(Link::Attached(session, Box::new(receiver)))
        }
        .await;
        match attached {
            Ok(link) => links.push(link),
            Err(e) if is_unavailable(&e) => links.push(Link::Unavailable(e.to_string())),
            Err(e) => {
                drop(links);
                let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
                return Err(e);
            }
        }
    }
    let (sessions_tx, sessions) = mpsc::channel(shared.sources.len().max(1));
    // RabbitMQ verifies a message's user-id against the connection's user (Via::user).
    let user = match shared.settings.scheme {
        AddressScheme::RabbitMq => endpoint.user.clone(),
        AddressScheme::Queue => None,
    };
    Ok(Generation {
        number,
        endpoint,
        connection: conn,
        live: Arc::new(Live::new(number, dialect, broker4, user, session)),
        links,
        tasks: Vec::new(),
        link_sessions: LinkSessions::default(),
        sessions,
        sessions_tx,
    })
}

/// Runs subscription `index` for the life of its generation: attaches it first when it could
/// not be attached at connect (reporting `ConsumerLost`, then `ConsumerRestored`), then
/// receives on it until the link fails (which fails the generation) or the task is aborted.
#[allow(clippy::too_many_arguments)] // one task's whole world, each part used once
async fn subscription(
    shared: Arc<Shared>,
    live: Arc<Live>,
    index: usize,
    link: Link,
    sessions: mpsc::Sender<SessionRequest>,
    link_sessions: LinkSessions,
    events: Events,
    stop: CancellationToken,
) {
    let queue = &shared.sources[index].spec.name;
    let (session, receiver) = match link {
        Link::Attached(session, receiver) => (session, *receiver),
        Link::Unavailable(reason) => {
            tracing::warn!(claw = &*shared.name, %queue, %reason, "queue unavailable; consuming the others, attaching it again");
            events
                .consumer_lost(&shared.name, queue.as_str(), reason)
                .await;
            let mut backoff = shared.settings.timing.backoff();
            let mut tries = 0u64;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = live.failed() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                tries += 1;
                let attempt = async {
                    let (tx, rx) = oneshot::channel();
                    // The generation is over: its task is about to be aborted.
                    let stopped = || Error::Closed {
                        claw: shared.name.to_string(),
                    };
                    sessions.send(tx).await.map_err(|_| stopped())?;
                    let mut session = rx.await.map_err(|_| stopped())??;
                    let name = format!("{}-recv-{}-{index}-{tries}", shared.name, live.generation);
                    let receiver = attach(&shared, &mut session, index, name, live.dialect).await?;
                    Ok::<_, Error>((session, receiver))
                };
                match attempt.await {
                    Ok(attached) => {
                        tracing::info!(claw = &*shared.name, %queue, "consumer restored");
                        events.consumer_restored(&shared.name, queue.as_str()).await;
                        break attached;
                    }
                    Err(e) => {
                        tracing::debug!(claw = &*shared.name, %queue, error = %e, "attaching again failed; retrying");
                    }
                }
            }
        }
    };
    link_sessions.lock().await.push(session);
    consumer::run_link(shared.clone(), live, index, receiver, events, stop).await;
}

impl Generation {
    /// Hands each subscription to its task (after `Connected` was reported, so that a
    /// `ConsumerLost` comes after it).
    fn serve(&mut self, shared: &Arc<Shared>, events: &Events, stop: &CancellationToken) {
        for (index, link) in std::mem::take(&mut self.links).into_iter().enumerate() {
            self.tasks.push(tokio::spawn(subscription(
                shared.clone(),
                self.live.clone(),
                index,
                link,
                self.sessions_tx.clone(),
                self.link_sessions.clone(),
                events.clone(),
                stop.clone(),
            )));
        }
    }

    /// Waits until the connection or a link fails (`Some(reason)`) or the claw closes
    /// (`None`), opening the sessions that subscriptions ask for meanwhile.
    async fn wait(&mut self, shared: &Shared, stop: &CancellationToken) -> Option<String> {
        enum Wake {
            Lost(String),
            Closing,
            Session(SessionRequest),
        }
        loop {
            let wake = tokio::select! {
                r = self.connection.on_close() => Wake::Lost(match r {
                    Ok(()) => "the broker closed the connection".to_owned(),
                    Err(e) => format!("connection lost: {e}"),
                }),
                reason = self.live.failed() => Wake::Lost(reason),
                _ = stop.cancelled() => Wake::Closing,
                Some(request) = self.sessions.recv() => Wake::Session(request),
            };
            match wake {
                Wake::Lost(reason) => return Some(reason),
                Wake::Closing => return None,
                Wake::Session(request) => {
                    let _ = request.send(begin(shared, &mut self.connection).await);
                }
            }
        }
    }

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
        let timeout = shared.settings.timing.close_timeout;
        tracing::debug!(
            claw = &*shared.name,
            jid = %shared.jid,
            deliveries = shared.in_flight.count(),
            sends = shared.sends.count(),
            "closing: waiting for in-flight deliveries and sends"
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let drained = tokio::select! {
            r = drain(&shared.name, deadline, &shared.in_flight, &shared.sends) => r,
            // Nothing can settle on a failed generation (a lost connection, or a refused
            // attach, which ends the session on RabbitMQ): stop waiting, close, and let the
            // sends still waiting fail as closed. Handlers still running lose their settlement;
            // the broker delivers those stanzas again (at least once).
            reason = self.live.failed() => {
                tracing::debug!(claw = &*shared.name, %reason, "connection failed while closing");
                Ok(())
            }
        };
        tracing::debug!(claw = &*shared.name, jid = %shared.jid, drained = drained.is_ok(), "closing: detaching");
        for t in &self.tasks {
            t.abort();
        }
        self.live
            .end_senders(shared.settings.scheme == AddressScheme::Queue)
            .await;
        // Bounded as a whole: a send still attaching holds the session's lock.
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let mut session = self.live.session.lock().await;
            let _ = tokio::time::timeout(END_ANSWER, session.end()).await;
        })
        .await;
        for mut session in std::mem::take(&mut *self.link_sessions.lock().await) {
            let _ = tokio::time::timeout(END_ANSWER, session.end()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.close()).await;
        drained
    }
}

/// The recovery state machine (see [`connection`](crate::connection)). The first round's
/// outcome goes to `first` (what `start` returns); after that it reconnects until `stop`.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    events: Events,
    stop: CancellationToken,
    first: oneshot::Sender<Result<()>>,
) -> Result<()> {
    let mut number = 0u64;
    let mut retry = match reconnect(&shared) {
        Ok(r) => r,
        Err(e) => {
            let _ = first.send(Err(e));
            return Ok(());
        }
    };
    let attempt = |number: &mut u64, sweep: bool, endpoint: Endpoint| {
        *number += 1;
        connect(&shared, endpoint, *number, sweep)
    };
    let mut gen = match retry
        .round(|endpoint| attempt(&mut number, false, endpoint))
        .await
    {
        Ok(gen) => gen,
        Err(e) => {
            let _ = first.send(Err(e));
            return Ok(());
        }
    };
    let mut first = Some(first);
    let result = loop {
        if stop.is_cancelled() {
            break gen.shutdown(&shared).await;
        }
        tracing::info!(claw = &*shared.name, jid = %shared.jid, endpoint = %gen.endpoint, generation = gen.number, "connected");
        // The backoff starts over only after a connection that held (`Stint`).
        let stint = Stint::watching(&shared.in_flight);
        shared.current.up(gen.live.clone());
        events
            .connected_to(&shared.name, gen.endpoint.to_string())
            .await;
        if let Some(f) = first.take() {
            let _ = f.send(Ok(()));
        }
        gen.serve(&shared, &events, &stop);
        let Some(reason) = gen.wait(&shared, &stop).await else {
            break gen.shutdown(&shared).await;
        };
        tracing::warn!(claw = &*shared.name, jid = %shared.jid, endpoint = %gen.endpoint, %reason, "disconnected; reconnecting");
        // Ended as a message the broker cannot convert ends it: sweep first (see `poison`).
        let sweep = poison::suspect(&reason);
        shared.current.down();
        gen.teardown(&reason).await;
        events.disconnected(&shared.name, reason).await;
        if !retry.after(&stint, &stop).await {
            shared.current.close();
            return Ok(());
        }
        match retry
            .until(&stop, |endpoint| attempt(&mut number, sweep, endpoint))
            .await
        {
            Some(next) => gen = next,
            None => {
                shared.current.close();
                return Ok(());
            }
        }
    };
    shared.current.close();
    result
}
