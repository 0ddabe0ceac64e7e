//! Receiving: one link per subscription, credit as the prefetch bound, settlement after the
//! handler.
//!
//! Each receiving link is owned by one task. It grants credit so that at most `credit`
//! deliveries are unsettled on the link, hands each delivery to the router (through a small
//! forwarding task, so that settlements keep flowing while the router is busy), and performs
//! the settlements the [`Acker`]s ask for on the very link that delivered them. When that link
//! is gone, the broker has put the unsettled deliveries back already and a settlement is a
//! no-op.
//!
//! Redelivery differs per scheme (see the crate docs): on RabbitMQ a failed delivery is
//! *released* (requeued) and, after `max_deliveries`, *rejected* (dead-lettered through the
//! queue's `x-dead-letter-exchange`). RabbitMQ 3.10 does not count deliveries in the AMQP 1.0
//! header (`delivery-count` stays 0; `first-acquirer` is false on a redelivery), so the claw
//! counts them itself by `message-id`. Queue brokers such as the Qpid Proton example broker
//! settle deliveries when they send them, so a settlement there cannot requeue: the claw sends a
//! copy back to the queue with `delivery-count` raised, then accepts the original (harmless if
//! the broker had settled it), and after `max_deliveries` sends it to the `xmpp_dead_letter`
//! queue instead.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use claws_core::jid::LastJid;
use claws_core::runtime::{CancellationToken, InFlightGuard};
use claws_core::topology::DEAD_LETTER_QUEUE;
use claws_core::{Acker, Delivery, Error, Events, Packet, Result, Via};
use fe2o3_amqp::link::delivery::DeliveryInfo;
use fe2o3_amqp::link::{CreditMode, Receiver, RecvError};
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, AmqpError};
use fe2o3_amqp::types::messaging::annotations::OwnedKey;
use fe2o3_amqp::types::messaging::{
    AmqpValue, ApplicationProperties, Body, Message, MessageAnnotations, MessageId,
};
use fe2o3_amqp::types::primitives::{SimpleValue, Symbol, Value};
use tokio::sync::{mpsc, oneshot};

use crate::address::{parse_reply_to, AddressScheme, Dialect, Route, Source};
use crate::connection::{receiver_attach_error, refusal, refused_attach, Live};
use crate::publisher::{Outgoing, ReplyTo};
use crate::settle::{self, Accepts, CloseOnDrop};
use crate::shared::Shared;

/// What an acker asks the link task to do.
enum Disposition {
    Accept,
    Release,
    Reject,
}

struct SettleRequest {
    info: DeliveryInfo,
    how: Disposition,
    /// Told whether the settlement reached the link (`None`: nobody waits).
    done: Option<oneshot::Sender<bool>>,
    /// Keeps the delivery counted in flight (for `close`) until the link task has settled it.
    guard: Option<InFlightGuard>,
}

/// The last JIDs a link parsed, for its `subject` and its `reply-to`.
#[derive(Default)]
struct JidCache {
    subject: LastJid,
    reply_to: LastJid,
}

/// Attaches the receiving link for `source` (at `address`) with manual credit. A refusal
/// retrying cannot fix (an address the broker does not accept, a missing queue, no
/// permission) is an [`Error::Config`] naming the address, with a hint.
pub(crate) async fn attach(
    session: &mut SessionHandle<()>,
    source: &Source,
    address: &str,
    dialect: Dialect,
    name: String,
    claw: &str,
) -> Result<Receiver> {
    Receiver::builder()
        .name(name)
        .source(address.to_owned())
        .credit_mode(CreditMode::Manual)
        .auto_accept(false)
        .attach(session)
        .await
        .map_err(|e| match refusal(receiver_attach_error(&e)) {
            Some(refused) => refused_attach(
                claw,
                &format!("consuming queue `{}` at", source.spec.name),
                address,
                refused,
                dialect,
            ),
            None => Error::Broker {
                claw: claw.to_owned(),
                what: format!(
                    "consuming `{address}` (on RabbitMQ the queue must exist: enable `declare`, \
                     or declare `{}` yourself)",
                    source.spec.name
                ),
                source: Box::new(e),
            },
        })
}

/// Runs one receiving link until it fails (reported to `live`) or the task is aborted.
pub(crate) async fn run_link(
    shared: Arc<Shared>,
    live: Arc<Live>,
    index: usize,
    mut receiver: Receiver,
    events: Events,
    closing: CancellationToken,
) {
    let credit = shared.settings.credit;
    let (settle_tx, mut settle_rx) = mpsc::unbounded_channel::<SettleRequest>();
    let accepts = Arc::new(Accepts::new(settle::bound_for(credit)));
    let (fwd_tx, mut fwd_rx) = mpsc::unbounded_channel::<Delivery>();
    // Deliveries given to the forwarder and not yet to the router: while there are none, the
    // link task hands a delivery straight to the router when there is room (one task hop less);
    // otherwise it queues behind them, which keeps their order.
    let queued = Arc::new(AtomicUsize::new(0));
    let fwd_closing = closing.clone();
    let fwd_events = events.clone();
    let fwd_queued = queued.clone();
    let forwarder = tokio::spawn(async move {
        // On close, what was not handed over yet is dropped, which releases it.
        loop {
            let d = tokio::select! {
                biased;
                _ = fwd_closing.cancelled() => break,
                d = fwd_rx.recv() => match d {
                    Some(d) => d,
                    None => break,
                },
            };
            tokio::select! {
                biased;
                _ = fwd_closing.cancelled() => break,
                // A router that is gone gives the delivery back; dropping it releases it.
                _ = fwd_events.received(d) => {}
            }
            fwd_queued.fetch_sub(1, Ordering::AcqRel);
        }
        fwd_rx.close();
        while let Ok(d) = fwd_rx.try_recv() {
            drop(d);
        }
    });
    let _forwarder = AbortOnDrop(forwarder);
    let mut jids = JidCache::default();
    let mut unsettled: u32 = 0;
    let mut stopping = closing.is_cancelled();
    if !stopping {
        if let Err(e) = receiver.set_credit(credit).await {
            live.fail(format!("granting credit: {e}"));
            return;
        }
    }
    let _closes = CloseOnDrop(&accepts);
    // The delay of the batch being gathered: armed by its first accept.
    let mut due = Box::pin(tokio::time::sleep(settle::DELAY));
    let mut armed = false;
    loop {
        // Credit is granted again, if the settlements since allow it, before anything else.
        if !stopping {
            if let Err(e) = top_up(&mut receiver, credit, unsettled).await {
                live.fail(e);
                return;
            }
        }
        // When to be woken for accepts. Out of credit, the broker sends nothing more until
        // credit is granted, which waits for settlements: once enough accepts wait for that,
        // they gain nothing by waiting longer. Nor do they on close.
        let wake_at = if stopping {
            1
        } else if receiver.credit() == 0 {
            let needed = unsettled.saturating_sub(credit - credit.div_ceil(2));
            match usize::try_from(needed) {
                Ok(0) | Err(_) => accepts.bound(),
                Ok(n) => n,
            }
        } else {
            accepts.bound()
        };
        if accepts.wake_at(wake_at) >= wake_at {
            armed = false;
            unsettled = unsettled.saturating_sub(write(&receiver, &accepts).await);
            continue;
        }
        tokio::select! {
            biased;
            Some(req) = settle_rx.recv() => {
                let ok = match req.how {
                    Disposition::Accept => receiver.accept(req.info).await.is_ok(),
                    Disposition::Release => receiver.release(req.info).await.is_ok(),
                    Disposition::Reject => receiver.reject(req.info, None).await.is_ok(),
                };
                if let Some(done) = req.done {
                    let _ = done.send(ok);
                }
                drop(req.guard);
                unsettled = unsettled.saturating_sub(1);
            }
            () = accepts.notified() => {
                // A batch started (or reached the wake point, handled at the loop's top).
                if !armed && accepts.len() > 0 {
                    armed = true;
                    due.as_mut().reset(tokio::time::Instant::now() + settle::DELAY);
                }
            }
            () = due.as_mut(), if armed => {
                armed = false;
                unsettled = unsettled.saturating_sub(write(&receiver, &accepts).await);
            }
            _ = closing.cancelled(), if !stopping => {
                // No more credit is granted; what the broker still sends within the credit it
                // has is handed back (released, or sent back to its queue). Lowering the credit
                // to 0 instead races transfers already on the wire, which fe2o3 then refuses
                // (transfer limit exceeded) by closing the link. Accepts are written at once
                // from now on (the loop's top): the claw's close waits for them.
                stopping = true;
            }
            r = receiver.recv::<Body<Value>>() => match r {
                Ok(delivery) => {
                    unsettled += 1;
                    let link = LinkSettle { requests: &settle_tx, accepts: &accepts };
                    let (d, undecodable) = make_delivery(&shared, index, delivery, link, &mut jids);
                    if stopping {
                        drop(d); // released (or sent back) by the acker's drop
                    } else if let Some(why) = undecodable {
                        // Not a stanza's bytes: never handed to the handler (an empty payload
                        // would be acked and the content lost), dead-lettered with its reason.
                        let reason = Error::Unsupported {
                            claw: shared.name.to_string(),
                            what: "take a message whose body is not a data section",
                            why: format!(
                                "{why} (from `{}`); the publisher must send the stanza as a data section",
                                shared.sources[index].address(live.dialect)
                            ),
                        };
                        tracing::warn!(claw = &*shared.name, %reason, "dead-lettering a message whose body is not a data section");
                        // Settled through this task's own settle queue: not awaited here.
                        tokio::spawn(async move {
                            let _ = d.acker.reject(&reason).await;
                        });
                    } else {
                        let d = if queued.load(Ordering::Acquire) == 0 {
                            match events.try_received(d) {
                                Ok(()) => continue,
                                Err(d) => d,
                            }
                        } else {
                            d
                        };
                        queued.fetch_add(1, Ordering::AcqRel);
                        if let Err(e) = fwd_tx.send(d) {
                            drop(e.0);
                        }
                    }
                }
                Err(RecvError::MessageDecode(e)) => {
                    // A message fe2o3 cannot decode (garbage sections; RabbitMQ 3.x hands a
                    // 0-9-1 publisher's `x-amqp-1.0-*` headers over as the message's own): the
                    // link stays usable, so it is rejected (dead-lettered) here with its reason,
                    // instead of failing the link and getting it back first, forever.
                    let why = format!("the AMQP 1.0 client cannot decode it: {}", e.source);
                    tracing::error!(claw = &*shared.name,
                        address = %shared.sources[index].address(live.dialect), %why,
                        "dead-lettering an undecodable message; fix its publisher");
                    let error = definitions::Error::new(AmqpError::DecodeError, Some(why), None);
                    if let Err(e) = receiver.reject(e.info, error).await {
                        live.fail(format!("rejecting an undecodable message: {e}"));
                        return;
                    }
                    claws_core::metrics::dead_lettered(&shared.name, shared.sources[index].kind());
                }
                Err(e) => {
                    let reason = format!(
                        "receiving from `{}`: {e}",
                        shared.sources[index].address(live.dialect)
                    );
                    tracing::debug!(claw = &*shared.name, %reason, "receiving link failed");
                    live.fail(reason);
                    return;
                }
            },
        }
    }
}

/// Writes the waiting accepts as ranges (one disposition per run of consecutive delivery
/// ids), then releases their in-flight guards; returns how many were settled. A link that is
/// gone settles nothing, and the broker redelivers them.
async fn write(receiver: &Receiver, accepts: &Accepts<DeliveryInfo>) -> u32 {
    let batch = accepts.take();
    if batch.infos.is_empty() {
        return 0;
    }
    let n = u32::try_from(batch.infos.len()).unwrap_or(u32::MAX);
    if let Err(e) = receiver.accept_all(batch.infos).await {
        tracing::debug!(error = %e, "accepting a batch failed; the broker redelivers it");
    }
    drop(batch.guards);
    n
}

/// Grants credit up to `credit - unsettled`, only once the granted credit is used up: then no
/// transfer is in flight, so the new credit cannot be misread (RabbitMQ 3.10's plugin counts a
/// flow's credit from its own delivery count, and transfers in flight made fe2o3 see more
/// transfers than allowed).
async fn top_up(receiver: &mut Receiver, credit: u32, unsettled: u32) -> Result<(), String> {
    if receiver.credit() == 0 {
        if let Some(want) = regrant(credit, unsettled) {
            receiver
                .set_credit(want)
                .await
                .map_err(|e| format!("granting credit: {e}"))?;
        }
    }
    Ok(())
}

/// The credit to grant again with `unsettled` deliveries unsettled, once the granted credit is
/// used up: `credit - unsettled`, only when half the window is free (or everything is
/// settled), so that a busy link does not send one flow frame per delivery.
fn regrant(credit: u32, unsettled: u32) -> Option<u32> {
    let want = credit.saturating_sub(unsettled);
    (want > 0 && (want >= credit.div_ceil(2) || unsettled == 0)).then_some(want)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn payload(body: Body<Value>) -> std::result::Result<Bytes, String> {
    match body {
        Body::Data(batch) => {
            if batch.len() == 1 {
                // One data section (the common case): its bytes, not copied.
                return Ok(batch
                    .into_iter()
                    .next()
                    .map(|d| Bytes::from(d.0.into_vec()))
                    .unwrap_or_default());
            }
            let parts: Vec<Vec<u8>> = batch.into_iter().map(|d| d.0.into_vec()).collect();
            Ok(Bytes::from(parts.concat()))
        }
        Body::Value(AmqpValue(Value::Binary(b))) => Ok(Bytes::from(b.into_vec())),
        Body::Value(AmqpValue(Value::String(s))) => Ok(Bytes::from(s)),
        Body::Empty => Ok(Bytes::new()),
        Body::Value(AmqpValue(v)) => {
            let mut shown = format!("{v:?}");
            if shown.len() > 80 {
                let mut end = 80;
                while !shown.is_char_boundary(end) {
                    end -= 1;
                }
                shown.truncate(end);
                shown.push_str("...");
            }
            Err(format!(
                "an amqp-value body holding {shown}; claws expects a data section (or a string)"
            ))
        }
        Body::Sequence(_) => {
            Err("an amqp-sequence body; claws expects a data section (or a string)".into())
        }
    }
}

/// The `x-routing-key` message annotation (RabbitMQ 4).
fn routing_key(annotations: Option<&MessageAnnotations>) -> Option<String> {
    let key = OwnedKey::Symbol(Symbol::from("x-routing-key"));
    match annotations?.0.get(&key)? {
        Value::String(s) => Some(s.clone()),
        Value::Symbol(s) => Some(s.0.clone()),
        _ => None,
    }
}

/// The `traceparent` application property (a 0-9-1 publisher's header arrives as one too).
fn traceparent(properties: Option<&ApplicationProperties>) -> Option<String> {
    match properties?.get(claws_core::trace::TRACEPARENT)? {
        SimpleValue::String(s) => Some(s.clone()),
        SimpleValue::Symbol(s) => Some(s.0.clone()),
        // RabbitMQ 3.x hands a 0-9-1 header's long string over as binary.
        SimpleValue::Binary(b) => String::from_utf8(b.to_vec()).ok(),
        _ => None,
    }
}

fn id_string(id: MessageId) -> String {
    match id {
        MessageId::String(s) => s,
        MessageId::Ulong(n) => n.to_string(),
        MessageId::Uuid(u) => format!("{u:?}"),
        MessageId::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
    }
}

fn make_delivery(
    shared: &Arc<Shared>,
    index: usize,
    delivery: fe2o3_amqp::link::delivery::Delivery<Body<Value>>,
    link: LinkSettle<'_>,
    jids: &mut JidCache,
) -> (Delivery, Option<String>) {
    let source = &shared.sources[index];
    let scheme = shared.settings.scheme;
    let (info, message): (DeliveryInfo, Message<Body<Value>>) = delivery.into_parts();
    let redelivered = message.header.as_ref().is_some_and(|h| !h.first_acquirer);
    let header = message.header.unwrap_or_default();
    let props = message.properties.unwrap_or_default();
    // RabbitMQ refused the message unless this is its publisher's user.
    let user = match scheme {
        AddressScheme::RabbitMq => props
            .user_id
            .as_ref()
            .and_then(|u| std::str::from_utf8(u.as_slice()).ok())
            .map(Arc::from),
        AddressScheme::Queue => None,
    };
    let body = payload(message.body);
    let subject = props.subject.clone();
    let traceparent = traceparent(message.application_properties.as_ref());
    let jid = match subject
        .as_deref()
        .filter(|s| jids.subject.parse(s).is_some())
    {
        Some(jid) => jid.to_owned(),
        // RabbitMQ 4 gives a 0-9-1 publisher's routing key as the `x-routing-key` annotation,
        // not as `subject` (3.x did). Looked up only then (its key is built per lookup).
        None => routing_key(message.message_annotations.as_ref())
            .filter(|s| jids.subject.parse(s).is_some())
            .unwrap_or_else(|| source.default_jid().to_owned()),
    };
    let id = props.correlation_id.clone().map(id_string);
    let from = props
        .reply_to
        .as_deref()
        .and_then(|r| jids.reply_to.parse_with(r, parse_reply_to));
    let message_id = props.message_id.clone().map(id_string);
    let bytes = body.clone().unwrap_or_default();

    // The claw counts attempts itself only for RabbitMQ's redeliveries without a count (a
    // first delivery is attempt 1 and never stored): only those need the message's key.
    let counted = scheme == AddressScheme::RabbitMq && header.delivery_count == 0 && redelivered;
    let key = counted.then(|| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        match &message_id {
            Some(m) => m.hash(&mut h),
            None => {
                bytes.hash(&mut h);
                id.hash(&mut h);
                jid.hash(&mut h);
            }
        }
        index.hash(&mut h);
        h.finish()
    });
    let attempt = match key {
        Some(key) => shared.attempts.next(key, true),
        None if scheme == AddressScheme::RabbitMq && header.delivery_count == 0 => 1,
        None => header.delivery_count.saturating_add(1),
    };

    let mut via = Via::new(shared.name.clone(), source.kind().clone(), jid)
        .with_id(id.clone())
        .with_from(from)
        .with_user(user)
        .with_traceparent(traceparent.as_deref());
    if scheme == AddressScheme::RabbitMq {
        via = via.with_exchange(source.spec.exchange);
    }
    let resend = (scheme == AddressScheme::Queue).then(|| Outgoing {
        route: Route::Queue(source.spec.name.clone()),
        subject,
        reply_to: ReplyTo::Copy(props.reply_to.clone()),
        correlation_id: id,
        message_id,
        payload: bytes.clone(),
        delivery_count: attempt,
        durable: header.durable,
        traceparent: traceparent.clone(),
    });
    let acker = Amqp10Acker {
        shared: shared.clone(),
        info: Some(info),
        settle: link.requests.clone(),
        accepts: link.accepts.clone(),
        resend,
        key,
        attempt,
        undecodable: body.as_ref().err().cloned(),
        guard: Some(shared.in_flight.enter()),
        kind: source.kind().clone(),
    };
    let undecodable = acker.undecodable.clone();
    let delivery = Delivery {
        packet: Packet::new(bytes),
        via,
        attempt,
        acker: Box::new(acker),
    };
    (delivery, undecodable)
}

/// Where the deliveries of one link are settled: its task's requests (exact settlements) and
/// its accepts (written in ranges).
struct LinkSettle<'a> {
    requests: &'a mpsc::UnboundedSender<SettleRequest>,
    accepts: &'a Arc<Accepts<DeliveryInfo>>,
}

/// Settles one delivery on the link that delivered it.
struct Amqp10Acker {
    shared: Arc<Shared>,
    info: Option<DeliveryInfo>,
    settle: mpsc::UnboundedSender<SettleRequest>,
    /// Accepts nobody waits for go here, written in ranges by the link task.
    accepts: Arc<Accepts<DeliveryInfo>>,
    /// Queue scheme: the copy to send back instead of requeueing.
    resend: Option<Outgoing>,
    /// The message's key in the claw's attempt counts, when it is counted there.
    key: Option<u64>,
    attempt: u32,
    undecodable: Option<String>,
    guard: Option<InFlightGuard>,
    /// The subscription that delivered it (the metrics' label).
    kind: claws_core::QueueKind,
}

impl Amqp10Acker {
    /// Asks the link task to settle; with `wait`, until it did, otherwise only until the link
    /// task has the request (it settles requests in order, before `close` goes on).
    async fn settle(&mut self, how: Disposition, wait: bool) -> Result<()> {
        let Some(info) = self.info.take() else {
            return Ok(());
        };
        if matches!(how, Disposition::Accept) && !wait {
            // Queued for the next range; the in-flight guard goes with it.
            return if self.accepts.push(info, self.guard.take()) {
                Ok(())
            } else {
                Err(self.gone())
            };
        }
        let (tx, rx) = if wait {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let sent = self
            .settle
            .send(SettleRequest {
                info,
                how,
                done: tx,
                guard: self.guard.take(),
            })
            .is_ok();
        let settled = match rx {
            Some(rx) => sent && rx.await.unwrap_or(false),
            None => sent,
        };
        if settled {
            Ok(())
        } else {
            Err(self.gone())
        }
    }

    fn gone(&self) -> Error {
        Error::Broker {
            claw: self.shared.name.to_string(),
            what: "settling a stanza".into(),
            source: "the link that delivered it is gone; the broker redelivers it".into(),
        }
    }

    /// Queue scheme: sends the copy to `address` (with `delivery_count`), then accepts.
    async fn send_back(&mut self, dead_letter: bool, count_attempt: bool) -> Result<()> {
        if let Some(mut out) = self.resend.take() {
            if dead_letter {
                out.route = Route::Queue(DEAD_LETTER_QUEUE.to_owned());
            }
            if !count_attempt {
                out.delivery_count = out.delivery_count.saturating_sub(1);
            }
            self.shared
                .send_outgoing(&out, "the stanza's own queue")
                .await?;
        }
        self.settle(Disposition::Accept, false).await
    }
}

#[async_trait]
impl Acker for Amqp10Acker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.resend = None;
        if let Some(key) = self.key {
            self.shared.attempts.forget(key, self.attempt);
        }
        // Not waited for: the link task settles requests in order, and the in-flight guard
        // goes with the request, so `close` still waits until the accept is on its way.
        self.settle(Disposition::Accept, false).await
    }

    async fn reject(mut self: Box<Self>, reason: &Error) -> Result<()> {
        let dead =
            self.attempt >= self.shared.settings.max_deliveries || self.undecodable.is_some();
        if dead {
            tracing::warn!(
                claw = &*self.shared.name,
                attempt = self.attempt,
                %reason,
                undecodable = self.undecodable.as_deref().unwrap_or(""),
                "dead-lettering a stanza"
            );
            if let Some(key) = self.key {
                self.shared.attempts.forget(key, self.attempt);
            }
        }
        let r = if self.resend.is_some() {
            self.send_back(dead, true).await
        } else if dead {
            self.settle(Disposition::Reject, true).await
        } else {
            self.settle(Disposition::Release, true).await
        };
        if dead && r.is_ok() {
            claws_core::metrics::dead_lettered(&self.shared.name, &self.kind);
        }
        self.guard.take();
        r
    }
}

impl Drop for Amqp10Acker {
    fn drop(&mut self) {
        if self.info.is_none() {
            return;
        }
        if self.resend.is_some() {
            // Never settled, on a broker that cannot requeue: send it back, without counting
            // an attempt, keeping the in-flight guard until that is done.
            let mut me = Amqp10Acker {
                shared: self.shared.clone(),
                info: self.info.take(),
                settle: self.settle.clone(),
                accepts: self.accepts.clone(),
                resend: self.resend.take(),
                key: self.key,
                attempt: self.attempt,
                undecodable: None,
                guard: self.guard.take(),
                kind: self.kind.clone(),
            };
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Err(e) = me.send_back(false, false).await {
                        tracing::error!(error = %e, "could not send an unsettled stanza back to its queue");
                    }
                    me.guard.take();
                });
            }
            return;
        }
        if let Some(info) = self.info.take() {
            let _ = self.settle.send(SettleRequest {
                info,
                how: Disposition::Release,
                done: None,
                guard: self.guard.take(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fe2o3_amqp::types::messaging::message::__private::Serializable;
    use fe2o3_amqp::types::messaging::message::DecodeIntoMessage;
    use fe2o3_amqp::types::messaging::Properties;
    use fe2o3_amqp::types::primitives::Binary;
    use proptest::prelude::*;

    /// What the 1.0 claw reads off a decoded message, as `make_delivery` does.
    fn read(message: Message<Body<Value>>) {
        let _ = routing_key(message.message_annotations.as_ref());
        if let Some(p) = message.properties {
            if let Some(r) = &p.reply_to {
                let _ = parse_reply_to(r);
            }
            if let Some(c) = p.correlation_id {
                let _ = id_string(c);
            }
            if let Some(m) = p.message_id {
                let _ = id_string(m);
            }
            if let Some(u) = &p.user_id {
                let _ = std::str::from_utf8(u.as_slice());
            }
        }
        let _ = payload(message.body);
    }

    fn decode(bytes: &[u8]) -> std::result::Result<Message<Body<Value>>, serde_amqp::Error> {
        <Body<Value> as DecodeIntoMessage>::decode_message_from_reader(
            serde_amqp::read::SliceReader::new(bytes),
        )
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Value::Long),
            any::<bool>().prop_map(Value::Bool),
            "\\PC{0,30}".prop_map(Value::String),
            proptest::collection::vec(any::<u8>(), 0..30)
                .prop_map(|b| Value::Binary(Binary::from(b))),
            Just(Value::Null),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            proptest::collection::vec(inner, 0..4).prop_map(Value::List)
        })
    }

    #[test]
    fn credit_is_granted_again_once_half_the_window_is_free() {
        assert_eq!(regrant(1000, 1000), None, "nothing settled");
        assert_eq!(regrant(1000, 501), None, "less than half free");
        assert_eq!(regrant(1000, 500), Some(500));
        assert_eq!(regrant(1000, 0), Some(1000));
        assert_eq!(regrant(1, 0), Some(1));
        assert_eq!(regrant(1, 1), None);
        assert_eq!(regrant(0, 0), None, "no credit configured, none granted");
    }

    proptest! {
        /// Arbitrary bytes as a transfer's payload, alone or behind a section descriptor (the
        /// properties, application-properties, data, amqp-value sections): fe2o3's decoding
        /// then claws' reading never panic.
        #[test]
        fn arbitrary_bytes_decode_or_are_refused(
            prefix in prop_oneof![
                Just(vec![]),
                Just(vec![0x00, 0x53, 0x73]),
                Just(vec![0x00, 0x53, 0x74]),
                Just(vec![0x00, 0x53, 0x75]),
                Just(vec![0x00, 0x53, 0x77]),
            ],
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut all = prefix;
            all.extend_from_slice(&bytes);
            if let Ok(message) = decode(&all) {
                read(message);
            }
        }

        /// Arbitrary properties and bodies, encoded as a peer would: decoded and read; the
        /// payload is the stanza's bytes for a data section, a string or a binary value, and
        /// an error (dead-lettered, never an empty stanza) for any other value or a sequence.
        #[test]
        fn arbitrary_messages_are_read_or_refused_whole(
            subject in proptest::option::of("\\PC{0,40}"),
            reply_to in proptest::option::of("\\PC{0,60}"),
            correlation in proptest::option::of("\\PC{0,60}"),
            user in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..20)),
            kind in 0u8..3,
            data in proptest::collection::vec(any::<u8>(), 0..200),
            v in value(),
        ) {
            let mut props = Properties::builder();
            if let Some(s) = subject { props = props.subject(s); }
            if let Some(r) = reply_to { props = props.reply_to(r); }
            if let Some(c) = correlation { props = props.correlation_id(c); }
            if let Some(u) = user { props = props.user_id(Binary::from(u)); }
            let props = props.build();
            let (encoded, expected) = match kind {
                0 => {
                    let m = Message::builder().properties(props).data(Binary::from(data.clone())).build();
                    (serde_amqp::to_vec(&Serializable(m)), Some(data))
                }
                1 => {
                    let expected = match &v {
                        Value::String(s) => Some(s.clone().into_bytes()),
                        Value::Binary(b) => Some(b.to_vec()),
                        _ => None,
                    };
                    let m = Message::builder().properties(props).value(v).build();
                    (serde_amqp::to_vec(&Serializable(m)), expected)
                }
                _ => {
                    let m = Message::builder().properties(props).sequence(vec![v]).build();
                    (serde_amqp::to_vec(&Serializable(m)), None)
                }
            };
            let encoded = encoded.expect("encodes");
            let message = decode(&encoded).expect("what fe2o3 encodes, it decodes");
            let body = payload(message.body.clone());
            match expected {
                Some(bytes) => prop_assert_eq!(body.expect("a stanza's bytes").to_vec(), bytes),
                None => prop_assert!(body.is_err(), "a non-data body was read as a stanza"),
            }
            read(message);
        }
    }
}
