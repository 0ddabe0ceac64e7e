//! One consumed queue: its own channel (so that one queue's failure closes nothing else), its
//! consumer, and its recovery. When the broker cancels the consumer (the queue's node went
//! down, the queue was deleted) while the connection stays up, the claw reports
//! [`Event::ConsumerLost`](claws_core::Event::ConsumerLost), declares and subscribes that queue
//! again with jittered backoff, and reports `ConsumerRestored`; its other queues go on
//! consuming meanwhile.

use std::sync::Arc;

use claws_core::{Error, Events, Result};
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection};

use crate::consumer::{self, Ended, QueueInfo};
use crate::session::{Session, Shared};
use crate::topology::{self, OnMismatch};

/// A queue being consumed: the channel and the consumer on it.
pub(crate) struct Consuming {
    channel: Arc<Channel>,
    consumer: lapin::Consumer,
}

/// Opens a channel with the claw's prefetch and consumes `queue` on it (declared already).
pub(crate) async fn consume(
    shared: &Shared,
    connection: &Connection,
    queue: &QueueInfo,
    generation: u64,
) -> std::result::Result<Consuming, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(shared.settings.prefetch, BasicQosOptions::default())
        .await?;
    let tag = format!(
        "claws-{}-{generation}-{}",
        queue.kind.as_str(),
        channel.id()
    );
    let consumer = channel
        .basic_consume(
            queue.name.clone(),
            ShortString::from(tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(Consuming {
        channel: Arc::new(channel),
        consumer,
    })
}

/// Declares `queue` again (its bindings too) and consumes it.
async fn resubscribe(shared: &Shared, session: &Session, queue: &QueueInfo) -> Result<Consuming> {
    let decl = shared
        .topology()
        .queues
        .iter()
        .find(|q| q.name == queue.name.as_str())
        .ok_or_else(|| Error::backend(format!("queue `{}` is not in the plan", queue.name)))?;
    let mut channel = session
        .connection
        .create_channel()
        .await
        .map_err(|e| shared.lapin_err("opening a channel", e))?;
    let declared = topology::declare_queue(
        &shared.name,
        &session.connection,
        &mut channel,
        shared.topology(),
        decl,
        OnMismatch::Fail,
        topology::answer_within(shared.settings.timing.connect_timeout),
    )
    .await;
    let _ = channel.close(200, ShortString::from("declared")).await;
    if !declared? {
        return Err(Error::backend(format!(
            "queue `{}` is still unavailable (its node is down)",
            queue.name
        )));
    }
    consume(shared, &session.connection, queue, session.generation)
        .await
        .map_err(|e| shared.lapin_err(&format!("consuming `{}`", queue.name), e))
}

/// Runs one queue's consumer for the life of `session`: hands deliveries to `events`, and
/// subscribes again whenever the broker takes the consumer away. `first` is `None` when the
/// queue could not be consumed at connect (its node is down).
pub(crate) async fn run(
    shared: Arc<Shared>,
    session: Arc<Session>,
    queue: Arc<QueueInfo>,
    first: Option<Consuming>,
    events: Events,
) {
    let stop = shared.closing.clone();
    let mut backoff = shared.settings.timing.backoff();
    let mut current = first;
    if current.is_none() {
        events
            .consumer_lost(
                &shared.name,
                queue.name.as_str(),
                "the queue is unavailable (its node is down)",
            )
            .await;
    }
    loop {
        let Consuming { channel, consumer } = match current.take() {
            Some(c) => c,
            None => {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = session.died() => return,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                match resubscribe(&shared, &session, &queue).await {
                    Ok(c) => {
                        backoff.reset();
                        tracing::info!(claw = &*shared.name, queue = %queue.name, "consumer restored");
                        events
                            .consumer_restored(&shared.name, queue.name.as_str())
                            .await;
                        c
                    }
                    Err(err) => {
                        tracing::debug!(claw = &*shared.name, queue = %queue.name, error = %err, "subscribing again failed; retrying");
                        continue;
                    }
                }
            }
        };
        let tag = consumer.tag();
        match consumer::run(&shared, &session, &queue, &channel, consumer, &events).await {
            Ended::Stopped => {
                // Closing: the broker stops sending; what was delivered is settled on this
                // channel (it stays open until the connection closes).
                let _ = tokio::time::timeout(
                    shared.settings.timing.close_timeout,
                    channel.basic_cancel(tag, BasicCancelOptions::default()),
                )
                .await;
                return;
            }
            Ended::SessionDead => return,
            Ended::Lost(reason) => {
                if shared.is_closing() || session.is_dead() {
                    return;
                }
                if !session.connection.status().connected() {
                    shared.mark_dead(&session, format!("connection lost ({reason})"));
                    return;
                }
                tracing::warn!(claw = &*shared.name, queue = %queue.name, %reason, "consumer lost; subscribing again");
                events
                    .consumer_lost(&shared.name, queue.name.as_str(), reason)
                    .await;
            }
        }
    }
}
