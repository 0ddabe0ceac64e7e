//! Sending: `send` (direct, mandatory) and `publish` (fanout), each complete once the broker
//! confirmed it; `send_ordered`, complete once the stanza is queued on the publishing channel
//! (so in order with every later send), its confirm awaited by the confirmation it returns.
//!
//! A send that meets a dead connection (the publish or its confirm fails) waits for the next
//! session and publishes again, until `send_timeout` has passed since it started: at-least-once,
//! so a stanza whose confirm was lost with the connection may arrive twice. A pipelined send
//! published again (after a nack or a lost connection) goes out after the sends published
//! while it waited: one sender's order holds while the connection and the broker take every
//! stanza, as with any pipelining publisher.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use claws_core::jid::Jid;
use claws_core::topology::{DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws_core::trace::TRACEPARENT;
use claws_core::Confirmation as SendConfirmation;
use claws_core::{Error, Packet, Result};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::time::Instant;
use tracing::Instrument;

use crate::session::{Session, Shared};
use crate::topology::short;

/// Where a stanza goes.
pub(crate) enum Target<'a> {
    /// `xmpp_direct`, routing key = the JID, mandatory.
    Direct(&'a Jid),
    /// `xmpp_fanout`, routing key = the sender's JID.
    Fanout,
}

impl Target<'_> {
    fn shown(&self) -> &str {
        match self {
            Target::Direct(jid) => jid.as_str(),
            Target::Fanout => "broadcast",
        }
    }
}

/// Publishes `packet` and waits for the broker's confirm, in a `claws.send` span; the trace
/// context current on the task, if any, travels in a `traceparent` header.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    target: Target<'_>,
    id: Option<&str>,
    packet: Packet,
) -> Result<()> {
    let (span, traceparent) = claws_core::trace::outgoing(&shared.name, target.shown());
    async {
        let out = Outgoing::new(shared, target, id, packet, traceparent)?;
        let _guard = shared.sends.enter();
        out.confirmed(shared, None).await
    }
    .instrument(span)
    .await
}

/// Publishes `packet` and returns once its frames are queued on the publishing channel, ahead
/// of every later publish ([`Claw::send_ordered`](claws_core::Claw::send_ordered)); the
/// confirmation awaits the broker's confirm (and, if the broker nacks it or the connection dies
/// first, publishes again as [`publish`] does). The send counts as in flight (`close` waits
/// for it) until its confirmation resolves or is dropped.
pub(crate) async fn publish_ordered(
    shared: &Arc<Shared>,
    target: Target<'_>,
    id: Option<&str>,
    packet: Packet,
) -> Result<SendConfirmation> {
    let (span, traceparent) = claws_core::trace::outgoing(&shared.name, target.shown());
    let out = span.in_scope(|| Outgoing::new(shared, target, id, packet, traceparent))?;
    let guard = shared.sends.enter();
    match out.publish_once(shared).instrument(span.clone()).await? {
        Some(published) => {
            let shared = shared.clone();
            Ok(SendConfirmation::new(
                async move {
                    let _guard = guard;
                    out.confirmed(&shared, Some(published)).await
                }
                .instrument(span),
            ))
        }
        // The connection died under the publish: it is sent again here, before this call
        // returns, so that it keeps its place.
        None => {
            let result = out.confirmed(shared, None).instrument(span).await;
            drop(guard);
            result.map(|()| SendConfirmation::confirmed())
        }
    }
}

/// One stanza to publish: where, with which properties, until when.
struct Outgoing {
    exchange: &'static str,
    routing_key: ShortString,
    options: BasicPublishOptions,
    /// The destination as logs and errors show it.
    to: String,
    properties: BasicProperties,
    packet: Packet,
    started: Instant,
    deadline: Instant,
}

/// A publish whose frames are queued, and its confirm to come.
struct Published {
    session: Arc<Session>,
    channel: Arc<Channel>,
    write: Write,
}

/// lapin's `basic_publish` queues a publish's frames (and takes its delivery tag) when first
/// polled, then waits for its I/O thread to write them before it returns the confirm future.
/// The order of sends is fixed by the first poll, so a pipelined send does not wait for the
/// write: the rest of the future is awaited with the confirm, off the sender's lane. That saves
/// a round trip to lapin's I/O thread per stanza, and lets it write a lane's burst of publishes
/// in one go.
type Write = Pin<Box<dyn Future<Output = lapin::Result<PublisherConfirm>> + Send>>;

impl Outgoing {
    fn new(
        shared: &Shared,
        target: Target<'_>,
        id: Option<&str>,
        packet: Packet,
        traceparent: Option<String>,
    ) -> Result<Self> {
        let started = Instant::now();
        let (exchange, routing_key, mandatory, to) = match target {
            Target::Direct(jid) => (
                DIRECT_EXCHANGE,
                short("routing key", jid.as_str())?,
                true,
                jid.as_str(),
            ),
            Target::Fanout => (
                FANOUT_EXCHANGE,
                shared.jid_short.clone(),
                false,
                "broadcast",
            ),
        };
        let mut properties = BasicProperties::default()
            .with_delivery_mode(if shared.settings.durable { 2 } else { 1 })
            .with_reply_to(shared.jid_short.clone());
        if let Some(id) = id {
            properties = properties.with_correlation_id(short("correlation id", id)?);
        }
        if let Some(traceparent) = traceparent {
            let mut headers = FieldTable::default();
            headers.insert(
                ShortString::from(TRACEPARENT),
                AMQPValue::LongString(traceparent.into()),
            );
            properties = properties.with_headers(headers);
        }
        Ok(Self {
            exchange,
            routing_key,
            options: BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            to: to.to_owned(),
            properties,
            packet,
            started,
            deadline: started + shared.settings.timing.send_timeout,
        })
    }

    fn timed_out(&self, shared: &Shared) -> Error {
        Error::Timeout {
            what: format!(
                "claw `{}` waiting for the broker to confirm the stanza sent to `{}`",
                shared.name, self.to
            ),
            after: shared.settings.timing.send_timeout,
        }
    }

    /// Publishes once on the live session (waiting through an outage, bounded): `Some` once
    /// its frames are queued, `None` if the connection failed under it (the session is marked
    /// dead, so the next attempt waits for the next one).
    async fn publish_once(&self, shared: &Shared) -> Result<Option<Published>> {
        let session = shared
            .current
            .wait_live(self.started, shared.settings.timing.send_timeout)
            .await?;
        let channel = session.publisher();
        // The connection's user, which the broker checks: the receiver's `Via::user`.
        let properties = match &session.user {
            Some(user) => self.properties.clone().with_user_id(user.clone()),
            None => self.properties.clone(),
        };
        let mut write: Write = Box::pin({
            let (channel, exchange, routing_key, options, packet) = (
                channel.clone(),
                ShortString::from(self.exchange),
                self.routing_key.clone(),
                self.options,
                self.packet.clone(),
            );
            async move {
                channel
                    .basic_publish(
                        exchange,
                        routing_key,
                        options,
                        packet.as_bytes(),
                        properties,
                    )
                    .await
            }
        });
        // Polled once here, in the sender's task: that queues the frames.
        match futures_util::future::poll_immediate(&mut write).await {
            None => {}
            Some(Ok(confirm)) => write = Box::pin(std::future::ready(Ok(confirm))),
            Some(Err(err)) => {
                interrupted(shared, &session, &err);
                return Ok(None);
            }
        }
        Ok(Some(Published {
            session,
            channel,
            write,
        }))
    }

    /// Waits for the confirm of `published` (or publishes first), publishing again after a
    /// nack or a dead connection, until confirmed or `send_timeout` has passed.
    async fn confirmed(&self, shared: &Shared, mut published: Option<Published>) -> Result<()> {
        let mut nack_backoff = shared.settings.timing.backoff();
        loop {
            let Published {
                session,
                channel,
                write,
            } = match published.take() {
                Some(published) => published,
                None => match self.publish_once(shared).await? {
                    Some(published) => published,
                    None => continue,
                },
            };
            let confirm = match tokio::time::timeout_at(self.deadline, write).await {
                Err(_) => return Err(self.timed_out(shared)),
                Ok(Ok(confirm)) => confirm,
                Ok(Err(err)) => {
                    // The connection failed before the frames were written: on the next one.
                    interrupted(shared, &session, &err);
                    continue;
                }
            };
            let Ok(confirmation) = tokio::time::timeout_at(self.deadline, confirm).await else {
                return Err(self.timed_out(shared));
            };
            match confirmation {
                Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => return Ok(()),
                Ok(Confirmation::Ack(Some(returned))) => {
                    // Never the payload (nor the properties): the routing key and sizes only.
                    tracing::warn!(claw = &*shared.name, routing_key = %returned.routing_key,
                        reply_code = returned.reply_code, reply_text = %returned.reply_text,
                        bytes = returned.data.len(), sent_bytes = self.packet.len(),
                        "the broker returned a stanza no queue takes (no route)");
                    if returned.routing_key != self.routing_key {
                        tracing::warn!(claw = &*shared.name, expected = %self.routing_key, got = %returned.routing_key,
                            "a returned message was matched to another send");
                    }
                    return Err(Error::NoRoute {
                        to: self.to.clone(),
                        claw: shared.name.to_string(),
                    });
                }
                Ok(Confirmation::Nack(_)) => {
                    // The broker could not store it now: on a cluster, a quorum queue is
                    // electing a new leader after a node died. Sent again after a pause, within
                    // the send time-out; only then is it refused.
                    let pause = nack_backoff.next_delay();
                    if tokio::time::Instant::now() + pause >= self.deadline {
                        return Err(Error::Refused {
                            to: self.to.clone(),
                            claw: shared.name.to_string(),
                            reason: format!(
                                "negative publisher confirm (basic.nack) on every attempt for {:?}: \
                                 the broker could not store it",
                                shared.settings.timing.send_timeout
                            ),
                        });
                    }
                    tracing::debug!(claw = &*shared.name, to = %self.to, ?pause, "send nacked; sending again on a new channel");
                    if let Err(err) = session.renew_publisher(&channel).await {
                        shared.mark_dead(&session, format!("opening a publishing channel: {err}"));
                    }
                    tokio::time::sleep(pause).await;
                }
                Err(err) => interrupted(shared, &session, &err),
            }
        }
    }
}

/// The channel or connection failed under a send: the session is marked dead, and the send
/// is published again on the next one.
fn interrupted(shared: &Shared, session: &Session, err: &lapin::Error) {
    shared.mark_dead(session, format!("publishing failed: {err}"));
    tracing::debug!(claw = &*shared.name, %err, "send interrupted; retrying on the next connection");
}
