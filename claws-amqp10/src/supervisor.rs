//! Recovery: one *generation* ([`Generation`]) is a connection, a session on it, and its links;
//! [`supervise`] owns the generations (see [`connection`](crate::connection) for the diagram):
//! connect, serve until the connection or a link fails or the claw closes, then report
//! `Disconnected` and connect again after claws-core's [`Backoff`] (jittered).

use std::sync::Arc;
use std::time::Duration;

use claws_core::runtime::drain;
use claws_core::{Error, Events, Result};
use fe2o3_amqp::connection::ConnectionHandle;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::address::AddressScheme;
use crate::connection::{self, Live};
use crate::consumer;
use crate::declare;
use crate::shared::Shared;

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
        declare::declare(shared).await?;
    }
    let (mut conn, mut session) = connection::open(
        &shared.endpoint,
        &format!("{}-{generation}", shared.container_id),
        s.timing.heartbeat_interval(),
        s.timing.connect_timeout,
        &shared.name,
    )
    .await?;
    let mut receivers = Vec::with_capacity(shared.sources.len());
    for (i, source) in shared.sources.iter().enumerate() {
        let name = format!("{}-recv-{generation}-{i}", shared.name);
        let attach = consumer::attach(&mut session, source, name, &shared.name);
        let r = match tokio::time::timeout(s.timing.connect_timeout, attach).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: format!("attaching a receiving link to `{}`", source.address),
                after: s.timing.connect_timeout,
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
        {
            let mut session = self.live.session.lock().await;
            let _ = tokio::time::timeout(Duration::from_secs(2), session.end()).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.connection.close()).await;
        drained
    }
}

/// The recovery state machine (see [`connection`](crate::connection)).
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    events: Events,
    mut closing: watch::Receiver<bool>,
    first: oneshot::Sender<Result<()>>,
) -> Result<()> {
    let s = &shared.settings;
    let mut first = Some(first);
    let mut backoff = s.timing.backoff();
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
                backoff.reset();
                shared.current.up(gen.live.clone());
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
                        shared.current.down();
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
                tracing::warn!(claw = &*shared.name, jid = %shared.jid, error = %e, "reconnect failed");
            }
        }
        let delay = backoff.next_delay();
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = closing.wait_for(|c| *c) => break,
        }
    }
    shared.current.close();
    result
}
