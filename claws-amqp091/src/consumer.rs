//! Consuming: each delivery becomes a [`Delivery`] with its [`Via`], settled by [`AmqpAcker`]
//! after the handler finished.
//!
//! Settling (see the crate docs for the why):
//! - **ack**: on the channel that delivered it, in batches (`settle.rs`): one
//!   `basic.ack(multiple = true)` for the contiguous run of deliveries whose handlers finished.
//! - **reject**, attempts left: a copy is published straight to the same queue (default
//!   exchange, routing key = queue name) with the attempt count and original exchange and
//!   routing key in headers; once the broker confirmed the copy, the original is acked.
//! - **reject**, last attempt: `basic.reject(requeue = false)`; the queue's
//!   `x-dead-letter-exchange` moves it to the dead-letter queue.
//! - **dropped unsettled**: `basic.nack(requeue = true)`.
//! - the delivering connection is gone: nothing is sent; the broker already requeued it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use claws_core::jid::LastJid;
use claws_core::topology::QueueKind;
use claws_core::{Acker, Delivery, Error, Events, Packet, Result, Via};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};

use claws_core::runtime::InFlightGuard;

use crate::hostile;
use crate::session::{Session, Shared};
use crate::settle::{self, Batcher, LapinAck};
use crate::topology::{DELIVERIES_HEADER, EXCHANGE_HEADER, ROUTING_KEY_HEADER};

/// On a copy the claw re-queued after a failure: the original's broker-verified user (the
/// copy's own `user_id` is the claw's, the connection that published it). Believed only on
/// such a copy whose `user_id` is this claw's user: nobody else can publish one.
pub(crate) const USER_HEADER: &str = "x-claws-user-id";

/// A consumed queue.
#[derive(Debug)]
pub(crate) struct QueueInfo {
    pub(crate) name: ShortString,
    pub(crate) kind: QueueKind,
}

/// Why [`run`] returned.
pub(crate) enum Ended {
    /// The claw is closing.
    Stopped,
    /// The session died.
    SessionDead,
    /// The consumer ended while the session lives: the broker cancelled it, or its channel
    /// failed.
    Lost(String),
}

/// Hands every delivery of `consumer` to `events` until the consumer ends, the session dies or
/// the claw closes.
pub(crate) async fn run(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    queue: &Arc<QueueInfo>,
    channel: &Arc<Channel>,
    mut consumer: lapin::Consumer,
    events: &Events,
) -> Ended {
    let stop = shared.closing.clone();
    // The last sender, parsed: most deliveries come from a sender seen just before, and parsing
    // (normalising) a JID costs more than comparing a string.
    let mut last_from = LastJid::default();
    let mut last_user = LastUser::default();
    // This channel's acks, sent in batches (settle.rs).
    let batcher = settle::for_channel(shared.settings.prefetch, stop.clone());
    loop {
        let next = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Stopped,
            _ = session.died() => return Ended::SessionDead,
            next = consumer.next() => next,
        };
        match next {
            Some(Ok(d)) => {
                let depth = d
                    .properties
                    .headers()
                    .as_ref()
                    .map_or(0, |h| hostile::header_depth(h, hostile::MAX_HEADER_DEPTH));
                if depth > hostile::MAX_HEADER_DEPTH {
                    // Built to hurt: dead-lettered unread, its headers freed where that is safe.
                    let lapin::message::Delivery {
                        acker, properties, ..
                    } = d;
                    hostile::drop_deep(properties);
                    tracing::warn!(claw = &*shared.name, queue = %queue.name,
                        "dead-lettering a message whose headers nest deeper than {} levels",
                        hostile::MAX_HEADER_DEPTH);
                    let _ = acker.reject(BasicRejectOptions { requeue: false }).await;
                    continue;
                }
                let delivery = to_delivery(
                    shared,
                    session,
                    queue,
                    channel,
                    &batcher,
                    d,
                    &mut last_from,
                    &mut last_user,
                );
                tokio::select! {
                    biased;
                    // A delivery not handed over is dropped: its acker requeues it.
                    _ = stop.cancelled() => return Ended::Stopped,
                    r = events.received(delivery) => if r.is_err() { return Ended::Stopped },
                }
            }
            Some(Err(err)) => {
                return Ended::Lost(format!("consumer on `{}` failed: {err}", queue.name));
            }
            None if shared.is_closing() => return Ended::Stopped,
            None => {
                return Ended::Lost(format!(
                "the broker cancelled the consumer on `{}` (its node is down, or it was deleted)",
                queue.name
            ))
            }
        }
    }
}

/// The last publishing user seen, shared: most deliveries come from the user seen just before.
#[derive(Default)]
pub(crate) struct LastUser(Option<Arc<str>>);

impl LastUser {
    fn get(&mut self, user: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if &**last == user => last.clone(),
            _ => self.0.insert(Arc::from(user)).clone(),
        }
    }
}

fn header_str(headers: &FieldTable, key: &str) -> Option<ShortString> {
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()
            .and_then(|s| ShortString::try_new(s).ok()),
        AMQPValue::ShortString(s) => Some(s.clone()),
        _ => None,
    }
}

fn header_u32(headers: &FieldTable, key: &str) -> Option<u32> {
    let v = match headers.inner().get(key)? {
        AMQPValue::ShortShortInt(v) => i64::from(*v),
        AMQPValue::ShortShortUInt(v) => i64::from(*v),
        AMQPValue::ShortInt(v) => i64::from(*v),
        AMQPValue::ShortUInt(v) => i64::from(*v),
        AMQPValue::LongInt(v) => i64::from(*v),
        AMQPValue::LongUInt(v) => i64::from(*v),
        AMQPValue::LongLongInt(v) => *v,
        _ => return None,
    };
    u32::try_from(v).ok()
}

/// What a delivery's envelope says, as claws believes it: where it was sent, how often it was
/// delivered before, and who published it. Pure, so that arbitrary properties and headers can
/// be fed to it (the property tests below).
#[derive(Debug)]
pub(crate) struct Envelope<'a> {
    pub(crate) exchange: ShortString,
    pub(crate) routing_key: ShortString,
    /// Earlier deliveries (the claw's own count on its copies, or a quorum queue's).
    pub(crate) previous: u32,
    pub(crate) traceparent: Option<ShortString>,
    /// The broker-verified publishing user.
    pub(crate) user: Option<&'a str>,
}

impl<'a> Envelope<'a> {
    /// Decodes the envelope of a delivery from `exchange` with `routing_key` to `queue`,
    /// consumed by a connection logged in as `own_user`.
    pub(crate) fn decode(
        exchange: ShortString,
        routing_key: ShortString,
        properties: &'a BasicProperties,
        queue: &ShortString,
        own_user: Option<&str>,
    ) -> Self {
        let mut exchange = exchange;
        let mut routing_key = routing_key;
        let mut previous = 0;
        let mut traceparent = None;
        // RabbitMQ refused the publish unless this is the publishing connection's user.
        let mut user = properties.user_id().as_ref().map(|u| u.as_str());
        if let Some(headers) = properties.headers() {
            traceparent = header_str(headers, claws_core::trace::TRACEPARENT);
            // A copy the claw re-queued after a failure carries its original address. Only
            // such a copy is believed: it came through the default exchange straight to this
            // queue. The same headers on a message published to xmpp_direct (anyone can set
            // headers) would otherwise rewrite where its reply goes.
            let requeued_copy = exchange.as_str().is_empty() && routing_key == *queue;
            if let Some(n) = header_u32(headers, DELIVERIES_HEADER).filter(|_| requeued_copy) {
                previous = n;
                // Published by this claw's user: the original's user is in the header (or
                // it had none).
                if user.is_some() && user == own_user {
                    user = match headers.inner().get(USER_HEADER) {
                        Some(AMQPValue::LongString(s)) => std::str::from_utf8(s.as_bytes()).ok(),
                        _ => None,
                    };
                }
                if let Some(x) = header_str(headers, EXCHANGE_HEADER) {
                    exchange = x;
                }
                if let Some(k) = header_str(headers, ROUTING_KEY_HEADER) {
                    routing_key = k;
                }
            }
            // Quorum queues count requeues themselves.
            if let Some(n) = header_u32(headers, "x-delivery-count") {
                previous = previous.max(n);
            }
        }
        Self {
            exchange,
            routing_key,
            previous,
            traceparent,
            user,
        }
    }
}

// What a delivery is made of, each from where it lives (the channel's batcher among them).
#[allow(clippy::too_many_arguments)]
fn to_delivery(
    shared: &Arc<Shared>,
    session: &Arc<Session>,
    queue: &Arc<QueueInfo>,
    channel: &Arc<Channel>,
    batcher: &Batcher<LapinAck>,
    d: lapin::message::Delivery,
    last_from: &mut LastJid,
    last_user: &mut LastUser,
) -> Delivery {
    let tag = d.delivery_tag;
    batcher.register(tag);
    let lapin::message::Delivery {
        exchange,
        routing_key,
        properties,
        data,
        acker,
        ..
    } = d;
    let Envelope {
        exchange,
        routing_key,
        previous,
        traceparent,
        user,
    } = Envelope::decode(
        exchange,
        routing_key,
        &properties,
        &queue.name,
        session.user.as_ref().map(|u| u.as_str()),
    );
    let user = user.map(|u| last_user.get(u));
    let payload = Bytes::from(data);
    let via = Via::new(
        shared.name.clone(),
        queue.kind.clone(),
        routing_key.as_str(),
    )
    .with_exchange(exchange.as_str())
    .with_id(
        properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
    )
    .with_from(
        properties
            .reply_to()
            .as_ref()
            .and_then(|s| last_from.parse(s.as_str())),
    )
    .with_traceparent(traceparent.as_ref().map(|t| t.as_str()))
    .with_user(user.clone());
    let attempt = previous.saturating_add(1);
    Delivery {
        packet: Packet::new(payload.clone()),
        via,
        attempt,
        acker: Box::new(AmqpAcker {
            acker: Some(acker),
            _channel: channel.clone(),
            session: session.clone(),
            queue: queue.clone(),
            original: Original {
                exchange,
                routing_key,
                properties,
                payload,
                user,
            },
            attempt,
            max_deliveries: shared.settings.max_deliveries,
            claw: shared.name.clone(),
            guard: Some(shared.in_flight.enter()),
            batcher: batcher.clone(),
            tag,
        }),
    }
}

struct Original {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    payload: Bytes,
    /// Its broker-verified publisher (`Via::user`), carried by the copy in [`USER_HEADER`].
    user: Option<Arc<str>>,
}

/// Settles one delivery on the channel that delivered it.
struct AmqpAcker {
    acker: Option<lapin::Acker>,
    /// Keeps the delivering channel open until this delivery is settled (lapin closes a
    /// channel when its last handle goes).
    _channel: Arc<Channel>,
    session: Arc<Session>,
    queue: Arc<QueueInfo>,
    original: Original,
    attempt: u32,
    max_deliveries: u32,
    claw: Arc<str>,
    /// Moves into the batch on ack: the claw's close waits until the ack is written.
    guard: Option<InFlightGuard>,
    /// The channel's acks; every settlement of `tag` is reported to it.
    batcher: Batcher<LapinAck>,
    tag: u64,
}

impl AmqpAcker {
    fn gone(&self) -> Error {
        Error::backend(format!(
            "claw `{}`: the connection that delivered this stanza is gone; the broker redelivers it",
            self.claw
        ))
    }

    fn failed(&self, what: &str, err: lapin::Error) -> Error {
        Error::Broker {
            claw: self.claw.to_string(),
            what: format!(
                "{what} on `{}` (the broker redelivers the stanza)",
                self.queue.name
            ),
            source: err.into(),
        }
    }

    /// Publishes a copy to the same queue with the next attempt number; true once confirmed.
    async fn requeue_copy(&self) -> std::result::Result<bool, lapin::Error> {
        let mut headers = self
            .original
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        headers.insert(
            ShortString::from(DELIVERIES_HEADER),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        headers.insert(
            ShortString::from(EXCHANGE_HEADER),
            AMQPValue::LongString(self.original.exchange.as_str().into()),
        );
        headers.insert(
            ShortString::from(ROUTING_KEY_HEADER),
            AMQPValue::LongString(self.original.routing_key.as_str().into()),
        );
        match &self.original.user {
            Some(user) => {
                headers.insert(
                    ShortString::from(USER_HEADER),
                    AMQPValue::LongString(user.as_bytes().into()),
                );
            }
            // The original named none: void, not the claw's user of the copy.
            None => {
                headers.insert(ShortString::from(USER_HEADER), AMQPValue::Void);
            }
        }
        let mut properties = self.original.properties.clone().with_headers(headers);
        // This connection publishes the copy: the broker checks user_id against its user.
        if let Some(user) = &self.session.user {
            properties = properties.with_user_id(user.clone());
        }
        let confirm = self
            .session
            .publisher()
            .basic_publish(
                ShortString::default(),
                self.queue.name.clone(),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                &self.original.payload,
                properties,
            )
            .await?
            .await?;
        Ok(matches!(confirm, Confirmation::Ack(None)))
    }
}

impl AmqpAcker {
    /// Awaits one settlement frame, giving up as soon as the session dies (lapin may never
    /// resolve a frame queued on a connection that just failed).
    async fn settle(
        &self,
        what: &str,
        op: impl std::future::Future<Output = lapin::Result<bool>>,
    ) -> Result<()> {
        tokio::select! {
            r = op => match r {
                Ok(true) => Ok(()),
                Ok(false) => Err(self.gone()),
                Err(err) => Err(self.failed(what, err)),
            },
            _ = self.session.died() => Err(self.gone()),
        }
    }
}

#[async_trait]
impl Acker for AmqpAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        // Its channel closed (the claw closed, or the channel failed): the broker has it back.
        if self.session.is_dead() || !acker.usable() {
            return Err(self.gone());
        }
        let batched = LapinAck {
            acker,
            channel: self._channel.clone(),
            session: self.session.clone(),
            guard: self.guard.take(),
        };
        match self.batcher.ack(self.tag, batched).await {
            Ok(()) => Ok(()),
            // Not one of the batcher's (never happens): acknowledged alone.
            Err(LapinAck { acker, guard, .. }) => {
                self.guard = guard;
                self.settle("ack", acker.ack(BasicAckOptions::default()))
                    .await
            }
        }
    }

    async fn reject(mut self: Box<Self>, reason: &Error) -> Result<()> {
        let Some(acker) = self.acker.take() else {
            return Ok(());
        };
        let settled = self.reject_exactly(acker, reason).await;
        // Its own frame is written (or its channel is gone): later acks may cover its tag.
        self.batcher.settled(self.tag).await;
        settled
    }
}

impl AmqpAcker {
    async fn reject_exactly(&self, acker: lapin::Acker, reason: &Error) -> Result<()> {
        if self.session.is_dead() {
            return Err(self.gone());
        }
        if self.attempt >= self.max_deliveries {
            tracing::warn!(claw = &*self.claw, queue = %self.queue.name, attempt = self.attempt, %reason,
                "dead-lettering a stanza that failed on every delivery");
            self.settle(
                "reject",
                acker.reject(BasicRejectOptions { requeue: false }),
            )
            .await?;
            claws_core::metrics::dead_lettered(&self.claw, &self.queue.kind);
            return Ok(());
        }
        let copied = tokio::select! {
            r = self.requeue_copy() => matches!(r, Ok(true)),
            _ = self.session.died() => return Err(self.gone()),
        };
        if copied {
            self.settle("ack after requeue", acker.ack(BasicAckOptions::default()))
                .await
        } else {
            // The copy was not taken: put the original back instead (its count is lost).
            let requeue = BasicNackOptions {
                multiple: false,
                requeue: true,
            };
            self.settle("nack", acker.nack(requeue)).await
        }
    }
}

impl Drop for AmqpAcker {
    fn drop(&mut self) {
        let Some(acker) = self.acker.take() else {
            return;
        };
        if self.session.is_dead() {
            return; // the broker requeued it with the connection
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let (batcher, tag) = (self.batcher.clone(), self.tag);
            handle.spawn(async move {
                let _ = acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await;
                batcher.settled(tag).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hostile;
    use lapin::types::{FieldArray, LongString};
    use proptest::prelude::*;

    const QUEUE: &str = "xmpp_direct:me@x/r";
    const OWN: &str = "claws";

    fn value() -> impl Strategy<Value = AMQPValue> {
        let leaf = prop_oneof![
            any::<i8>().prop_map(AMQPValue::ShortShortInt),
            any::<u8>().prop_map(AMQPValue::ShortShortUInt),
            any::<i16>().prop_map(AMQPValue::ShortInt),
            any::<u16>().prop_map(AMQPValue::ShortUInt),
            any::<i32>().prop_map(AMQPValue::LongInt),
            any::<u32>().prop_map(AMQPValue::LongUInt),
            any::<i64>().prop_map(AMQPValue::LongLongInt),
            any::<bool>().prop_map(AMQPValue::Boolean),
            proptest::collection::vec(any::<u8>(), 0..40)
                .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
            "\\PC{0,40}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
            Just(AMQPValue::Void),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
                proptest::collection::vec(("\\PC{0,10}", inner), 0..4).prop_map(|kv| {
                    let mut t = FieldTable::default();
                    for (k, v) in kv {
                        t.insert(ShortString::from(k), v);
                    }
                    AMQPValue::FieldTable(t)
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(DELIVERIES_HEADER.to_owned()),
            Just(EXCHANGE_HEADER.to_owned()),
            Just(ROUTING_KEY_HEADER.to_owned()),
            Just(USER_HEADER.to_owned()),
            Just("x-delivery-count".to_owned()),
            Just(claws_core::trace::TRACEPARENT.to_owned()),
            "\\PC{0,20}",
        ]
    }

    fn headers() -> impl Strategy<Value = FieldTable> {
        proptest::collection::vec((key(), value()), 0..8).prop_map(|kv| {
            let mut t = FieldTable::default();
            for (k, v) in kv {
                t.insert(ShortString::from(k), v);
            }
            t
        })
    }

    proptest! {
        /// Whatever the properties and headers, decoding never panics, and what only the
        /// claw's own copies may say is believed only on such a copy.
        #[test]
        fn arbitrary_envelopes_decode_and_trust_only_own_copies(
            exchange in prop_oneof![Just(String::new()), Just("xmpp_direct".to_owned()), "\\PC{0,20}"],
            routing_key in prop_oneof![Just(QUEUE.to_owned()), "\\PC{0,30}"],
            user_id in prop_oneof![Just(None), Just(Some(OWN.to_owned())), "\\PC{0,12}".prop_map(Some)],
            own_user in prop_oneof![Just(None), Just(Some(OWN))],
            headers in proptest::option::of(headers()),
            correlation_id in proptest::option::of("\\PC{0,60}"),
        ) {
            let mut props = BasicProperties::default();
            if let Some(u) = &user_id {
                props = props.with_user_id(ShortString::from(u.as_str()));
            }
            if let Some(h) = headers.clone() {
                prop_assert!(hostile::header_depth(&h, hostile::MAX_HEADER_DEPTH) <= 7);
                props = props.with_headers(h);
            }
            if let Some(c) = &correlation_id {
                props = props.with_correlation_id(ShortString::from(c.as_str()));
            }
            let queue = ShortString::from(QUEUE);
            let e = Envelope::decode(
                ShortString::from(exchange.as_str()),
                ShortString::from(routing_key.as_str()),
                &props,
                &queue,
                own_user,
            );
            let own_copy = exchange.is_empty() && routing_key == QUEUE;
            let quorum = headers.as_ref().and_then(|h| header_u32(h, "x-delivery-count"));
            if !own_copy {
                prop_assert_eq!(e.exchange.as_str(), exchange.as_str());
                prop_assert_eq!(e.routing_key.as_str(), routing_key.as_str());
                prop_assert_eq!(e.previous, quorum.unwrap_or(0));
                prop_assert_eq!(e.user, user_id.as_deref());
            }
            if e.user != user_id.as_deref() {
                prop_assert!(own_copy && user_id.as_deref() == own_user && own_user.is_some());
            }
        }

        /// Arbitrary bytes as a content header's properties, through lapin's parser (what its
        /// I/O loop does), then claws' decoding: never a panic; the sweep's check agrees with
        /// the parser.
        #[test]
        fn arbitrary_property_bytes_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let parsed = lapin::protocol::basic::parse_properties(&bytes[..]);
            prop_assert_eq!(hostile::poison::decodes(bytes.clone()).is_ok(), parsed.is_ok());
            if let Ok((_, props)) = parsed {
                if let Some(h) = props.headers() {
                    let _ = hostile::header_depth(h, hostile::MAX_HEADER_DEPTH);
                }
                let queue = ShortString::from(QUEUE);
                let _ = Envelope::decode(ShortString::from(""), queue.clone(), &props, &queue, Some(OWN));
            }
        }
    }
}
