//! The [`Claw`] transport trait, the events a claw reports, and the [`Delivery`] it hands over.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::jid::Jid;
use crate::metrics::Meters;
use crate::{Error, Packet, Result, Via};

/// A transport: it connects an instance (a JID) to a bus, delivers what arrives for it, and sends.
///
/// Claws are used through `Arc<dyn Claw>` by the [`Router`](crate::Router), which may hold claws
/// of different types; the trait is object safe (async methods through `async_trait`).
///
/// The life of a claw: [`start`](Claw::start) connects, declares what it needs, starts consuming
/// and reports [`Event::Connected`]; every packet arrives as [`Event::Received`] with a
/// [`Delivery`] that must be settled (acked or rejected); a lost connection is reported as
/// [`Event::Disconnected`] and, where the claw recovers, followed by a new `Connected`;
/// [`close`](Claw::close) stops consuming, waits for in-flight deliveries to be settled, then
/// disconnects.
#[async_trait]
pub trait Claw: Send + Sync + fmt::Debug + 'static {
    /// The claw's name, unique within a router (it appears in [`Via::claw`]).
    fn name(&self) -> &str;

    /// The instance's JID.
    fn jid(&self) -> &Jid;

    /// What this claw guarantees; the conformance suite skips cases a claw does not support.
    fn capabilities(&self) -> Capabilities;

    /// Connects and starts consuming, reporting to `events`. Returns once the first connection is
    /// up and every consumer is active (after `Connected` was reported), or with the error that
    /// prevented it (an unreachable broker fails within a bounded time).
    async fn start(&self, events: Events) -> Result<()>;

    /// Sends `packet` directly to `to` (full or bare JID) with correlation id `id`. Returns once
    /// the broker has taken responsibility for it (a publisher confirm, an accepted outcome).
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()>;

    /// Sends as [`send`](Claw::send) does, but returns as soon as the packet's place in this
    /// claw's outgoing order is fixed (published on the connection, ahead of every send that
    /// starts later), with the broker's verdict still to come in the [`Confirmation`]. The
    /// caller may send the next packet while earlier ones wait for their confirms: one
    /// sender's packets stay in order on the wire, and a burst does not wait one round trip
    /// per packet.
    ///
    /// `Err` means the send failed before its place was fixed; an error from the confirmation
    /// is the send's failure as [`send`](Claw::send) reports it (no route, refused, timed out).
    /// A claw that cannot pipeline keeps the default, which awaits `send` and returns a
    /// confirmation that is already resolved. The [`Router`](crate::Router) uses this for the
    /// sends a handler makes, and settles the delivery once they are confirmed.
    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        self.send(to, id, packet).await?;
        Ok(Confirmation::confirmed())
    }

    /// Broadcasts `packet` to every instance (and every group). Returns once confirmed.
    async fn publish(&self, packet: Packet) -> Result<()>;

    /// Stops consuming, waits (bounded) for in-flight deliveries to be settled and for outstanding
    /// confirms, then disconnects. Unsettled deliveries return to their queue.
    async fn close(&self) -> Result<()>;
}

#[async_trait]
impl<C: Claw + ?Sized> Claw for Arc<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn jid(&self) -> &Jid {
        (**self).jid()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn start(&self, events: Events) -> Result<()> {
        (**self).start(events).await
    }
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        (**self).send(to, id, packet).await
    }
    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        (**self).send_ordered(to, id, packet).await
    }
    async fn publish(&self, packet: Packet) -> Result<()> {
        (**self).publish(packet).await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

#[async_trait]
impl<C: Claw + ?Sized> Claw for Box<C> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn jid(&self) -> &Jid {
        (**self).jid()
    }
    fn capabilities(&self) -> Capabilities {
        (**self).capabilities()
    }
    async fn start(&self, events: Events) -> Result<()> {
        (**self).start(events).await
    }
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        (**self).send(to, id, packet).await
    }
    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        (**self).send_ordered(to, id, packet).await
    }
    async fn publish(&self, packet: Packet) -> Result<()> {
        (**self).publish(packet).await
    }
    async fn close(&self) -> Result<()> {
        (**self).close().await
    }
}

/// The broker's verdict on a send whose place on the wire is already fixed (see
/// [`Claw::send_ordered`]): a future that resolves to `Ok(())` once the broker took the packet
/// (a publisher confirm, an accepted outcome), or to the error [`Claw::send`] would have
/// returned. It is `'static`: it may be awaited after the call that made it, on another task.
///
/// Dropping it unawaited gives up on learning the verdict (the packet is sent all the same).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use claws_core::claw::Confirmation;
/// assert!(Confirmation::confirmed().await.is_ok());
/// let later = Confirmation::new(async { Ok(()) });
/// assert!(later.await.is_ok());
/// # }
/// ```
#[must_use = "a confirmation says whether the broker took the send; await it or hand it to Router::settle_after"]
pub struct Confirmation(Verdict);

enum Verdict {
    Ready(Option<Result<()>>),
    Pending(Pin<Box<dyn Future<Output = Result<()>> + Send + 'static>>),
}

impl Confirmation {
    /// The verdict `future` will give.
    pub fn new(future: impl Future<Output = Result<()>> + Send + 'static) -> Self {
        Self(Verdict::Pending(Box::pin(future)))
    }

    /// A verdict known already: `result`.
    pub fn ready(result: Result<()>) -> Self {
        Self(Verdict::Ready(Some(result)))
    }

    /// Confirmed already (a claw whose send completes when it returns).
    pub fn confirmed() -> Self {
        Self::ready(Ok(()))
    }

    /// Whether the verdict is known without waiting.
    pub fn is_ready(&self) -> bool {
        matches!(self.0, Verdict::Ready(_))
    }
}

impl Future for Confirmation {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        match &mut self.0 {
            // Polled again after it resolved: the verdict was given already.
            Verdict::Ready(result) => Poll::Ready(result.take().unwrap_or(Ok(()))),
            Verdict::Pending(future) => {
                let result = std::task::ready!(future.as_mut().poll(cx));
                self.0 = Verdict::Ready(None);
                Poll::Ready(result)
            }
        }
    }
}

impl fmt::Debug for Confirmation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.0 {
            Verdict::Ready(Some(Ok(()))) => "confirmed",
            Verdict::Ready(Some(Err(_))) => "failed",
            Verdict::Ready(None) => "taken",
            Verdict::Pending(_) => "pending",
        };
        f.debug_tuple("Confirmation").field(&state).finish()
    }
}

/// What a claw guarantees. The conformance suite reads it to decide which cases apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Capabilities {
    /// A stanza sent to a bare JID reaches exactly one instance of the group.
    pub load_balancing: bool,
    /// Broadcasts (`publish`) reach every instance and every group.
    pub fanout: bool,
    /// Queued stanzas survive the instance closing (and restarting with the same JID).
    pub persistence: bool,
    /// Stanzas from one sender reach a single-consumer instance in order.
    pub ordering: bool,
    /// A rejected delivery is delivered again.
    pub redelivery: bool,
    /// A stanza rejected `max_deliveries` times is dead-lettered, not retried forever.
    pub dead_letter: bool,
    /// The claw reconnects by itself after its connection is cut: it reports `Disconnected`,
    /// then `Connected` once it consumes again, and sends work again.
    pub reconnect: bool,
    /// A connection cut loses nothing: the broker keeps each delivery until the claw settles
    /// it, so what was on the wire is delivered again. Without it (a broker that settles
    /// deliveries as it sends them), a cut may lose up to one prefetch window per consumed
    /// queue.
    pub lossless_cut: bool,
    /// Persisted stanzas survive a broker restart.
    pub survives_broker_restart: bool,
    /// A direct send to a JID nobody consumes fails with [`Error::NoRoute`].
    pub unroutable_errors: bool,
}

impl Capabilities {
    /// Every capability.
    pub const fn all() -> Self {
        Self {
            load_balancing: true,
            fanout: true,
            persistence: true,
            ordering: true,
            redelivery: true,
            dead_letter: true,
            reconnect: true,
            lossless_cut: true,
            survives_broker_restart: true,
            unroutable_errors: true,
        }
    }

    /// No capability.
    pub const fn none() -> Self {
        Self {
            load_balancing: false,
            fanout: false,
            persistence: false,
            ordering: false,
            redelivery: false,
            dead_letter: false,
            reconnect: false,
            lossless_cut: false,
            survives_broker_restart: false,
            unroutable_errors: false,
        }
    }
}

/// What a claw reports to its router.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The claw is connected and its consumers are active (a queue that cannot be consumed
    /// yet is reported as [`ConsumerLost`](Event::ConsumerLost) after this).
    #[non_exhaustive]
    Connected {
        /// The claw's name.
        claw: Arc<str>,
        /// Where it is connected (a URL without password, or a server address), when the
        /// claw has one.
        endpoint: Option<String>,
    },
    /// The claw lost its connection (it may be recovering).
    Disconnected {
        /// The claw's name.
        claw: Arc<str>,
        /// Why.
        reason: String,
    },
    /// A packet arrived.
    Received(Delivery),
    /// One queue stopped being consumed while the connection stays up (the broker cancelled
    /// the consumer: its queue's node went down, or it was deleted). The claw keeps consuming
    /// its other queues and subscribes this one again, with backoff, until
    /// [`ConsumerRestored`](Event::ConsumerRestored).
    ConsumerLost {
        /// The claw's name.
        claw: Arc<str>,
        /// The queue.
        queue: String,
        /// Why.
        reason: String,
    },
    /// A queue reported lost is consumed again.
    ConsumerRestored {
        /// The claw's name.
        claw: Arc<str>,
        /// The queue.
        queue: String,
    },
}

/// The sending side of a router's event channel, handed to [`Claw::start`]. Cloning is cheap.
///
/// The channel is bounded: a claw that reports faster than handlers finish waits in
/// [`received`](Events::received), which is how the router's concurrency limit pushes back.
///
/// Every event passes here, so this is where most [metrics](crate::metrics) are recorded:
/// deliveries received and in flight (and, through the acker it wraps, acked or rejected),
/// connections and reconnections, lost consumers.
#[derive(Debug, Clone)]
pub struct Events {
    tx: mpsc::Sender<Event>,
    meters: Arc<Meters>,
}

impl Events {
    /// A new channel holding up to `capacity` undispatched events.
    pub fn channel(capacity: usize) -> (Events, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let meters = Arc::new(Meters::default());
        (Events { tx, meters }, rx)
    }

    /// The metric handles behind this channel (the router's lanes time handlers with them).
    pub(crate) fn meters(&self) -> &Arc<Meters> {
        &self.meters
    }

    /// Reports `Connected`, with no endpoint to show.
    pub async fn connected(&self, claw: &Arc<str>) {
        self.meters.connected(claw);
        self.send(Event::Connected {
            claw: claw.clone(),
            endpoint: None,
        })
        .await;
    }

    /// Reports `Connected` to `endpoint` (no password in it).
    pub async fn connected_to(&self, claw: &Arc<str>, endpoint: impl Into<String>) {
        self.meters.connected(claw);
        self.send(Event::Connected {
            claw: claw.clone(),
            endpoint: Some(endpoint.into()),
        })
        .await;
    }

    /// Reports `ConsumerLost`.
    pub async fn consumer_lost(
        &self,
        claw: &Arc<str>,
        queue: impl Into<String>,
        reason: impl Into<String>,
    ) {
        let queue = queue.into();
        Meters::consumer_lost(claw, &queue);
        self.send(Event::ConsumerLost {
            claw: claw.clone(),
            queue,
            reason: reason.into(),
        })
        .await;
    }

    /// Reports `ConsumerRestored`.
    pub async fn consumer_restored(&self, claw: &Arc<str>, queue: impl Into<String>) {
        self.send(Event::ConsumerRestored {
            claw: claw.clone(),
            queue: queue.into(),
        })
        .await;
    }

    async fn send(&self, event: Event) {
        let _ = self.tx.send(event).await;
    }

    /// Reports `Disconnected`.
    pub async fn disconnected(&self, claw: &Arc<str>, reason: impl Into<String>) {
        Meters::disconnected(claw);
        let _ = self
            .tx
            .send(Event::Disconnected {
                claw: claw.clone(),
                reason: reason.into(),
            })
            .await;
    }

    /// Hands a delivery to the router. If the router is gone, the delivery comes back so that
    /// the claw can return it to its queue.
    pub async fn received(&self, delivery: Delivery) -> std::result::Result<(), Delivery> {
        // A slot first: a delivery that comes back comes back as it went (not counted, its
        // acker not wrapped), so a claw may hand it over again.
        match self.tx.reserve().await {
            Ok(slot) => {
                slot.send(Event::Received(self.meters.wrap(delivery)));
                Ok(())
            }
            Err(_) => Err(delivery),
        }
    }

    /// Hands a delivery to the router if there is room now, without waiting; otherwise (the
    /// channel is full, or the router is gone) the delivery comes back. For claws whose
    /// receiving task must not wait (see [`is_closed`](Events::is_closed) to tell which).
    #[allow(clippy::result_large_err)] // the delivery comes back as it went, as in `received`
    pub fn try_received(&self, delivery: Delivery) -> std::result::Result<(), Delivery> {
        match self.tx.try_reserve() {
            Ok(slot) => {
                slot.send(Event::Received(self.meters.wrap(delivery)));
                Ok(())
            }
            Err(_) => Err(delivery),
        }
    }

    /// Whether the router stopped listening.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Settles one delivery with the claw that delivered it.
///
/// Dropping an acker without settling it must return the delivery to its queue (as a channel
/// closing does on AMQP), so that nothing is lost when a task is cancelled.
#[async_trait]
pub trait Acker: Send + 'static {
    /// The handler finished: remove the stanza from its queue.
    async fn ack(self: Box<Self>) -> Result<()>;

    /// The handler failed: deliver it again, or dead-letter it once it has been delivered
    /// `max_deliveries` times.
    async fn reject(self: Box<Self>, reason: &Error) -> Result<()>;
}

/// A packet, how it arrived, and the means to settle it.
pub struct Delivery {
    /// The payload.
    pub packet: Packet,
    /// How it arrived.
    pub via: Via,
    /// Which delivery this is: 1 the first time, 2 on the first redelivery, ...
    pub attempt: u32,
    /// Settles the delivery with the claw that delivered it.
    pub acker: Box<dyn Acker>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("packet", &self.packet)
            .field("via", &self.via)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
