//! [`Router`]: holds claws, dispatches what they receive to a [`Handler`], and sends replies back
//! the way packets came.

use std::cell::RefCell;
use std::fmt;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::FutureExt;
use lru::LruCache;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::claw::{Acker, Claw, Confirmation, Delivery, Event, Events};
use crate::handler::{Context, Handler};
use crate::jid::Jid;
use crate::metrics::Meters;
use crate::trace::TraceContext;
use crate::{Error, Packet, Result, Via};

/// Builds a [`Router`]. Validation happens once, in [`build`](RouterBuilder::build).
#[must_use]
#[derive(Debug)]
pub struct RouterBuilder {
    claws: Vec<Arc<dyn Claw>>,
    default: Option<String>,
    concurrency: usize,
    route_capacity: usize,
    route_ttl: Duration,
    close_timeout: Duration,
    allow_self_sends: bool,
    unconfirmed: usize,
}

impl Default for RouterBuilder {
    fn default() -> Self {
        Self {
            claws: Vec::new(),
            default: None,
            concurrency: 8,
            allow_self_sends: false,
            route_capacity: 10_000,
            route_ttl: Duration::from_secs(600),
            close_timeout: Duration::from_secs(30),
            unconfirmed: 64,
        }
    }
}

impl RouterBuilder {
    /// Adds a claw. The first one added is the default unless [`default_claw`](Self::default_claw)
    /// says otherwise.
    pub fn claw(self, claw: impl Claw) -> Self {
        self.claw_arc(Arc::new(claw))
    }

    /// Adds a claw that is already shared.
    pub fn claw_arc(mut self, claw: Arc<dyn Claw>) -> Self {
        self.claws.push(claw);
        self
    }

    /// The claw that sends to JIDs the router has learned no route for (snatch's default claw).
    pub fn default_claw(mut self, name: impl Into<String>) -> Self {
        self.default = Some(name.into());
        self
    }

    /// How many handler calls run at once (default 8). Packets from one sender always go to the
    /// same lane, so per-sender order is kept where the claw keeps it; 1 keeps total order.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// How many learned routes are kept (default 10 000); the least recently used go first.
    pub fn route_capacity(mut self, n: usize) -> Self {
        self.route_capacity = n.max(1);
        self
    }

    /// How long a learned route lives without being refreshed (default 10 minutes).
    pub fn route_ttl(mut self, ttl: Duration) -> Self {
        self.route_ttl = ttl;
        self
    }

    /// Let [`Router::send`] and [`Router::reply`] address the sending claw's own full JID
    /// (default false: refused with [`Error::SelfSend`], because that is how reply loops
    /// start).
    pub fn allow_self_sends(mut self, allow: bool) -> Self {
        self.allow_self_sends = allow;
        self
    }

    /// How many sends a lane may have waiting for their broker confirm while it goes on with
    /// the next deliveries (default 64 per lane). A handler's sends through the router are
    /// pipelined (see [`Router::send`]); when a lane reaches this many unconfirmed sends, it
    /// waits for the oldest before handing the next delivery to the handler. 0 turns pipelining
    /// off: every send is awaited where the handler makes it.
    pub fn max_unconfirmed(mut self, n: usize) -> Self {
        self.unconfirmed = n;
        self
    }

    /// How long [`Router::close`] waits for in-flight handler calls (default 30 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Checks the claws (at least one, names unique, the default among them) and builds.
    pub fn build(self) -> Result<Router> {
        if self.claws.is_empty() {
            return Err(Error::Config(
                "a router needs at least one claw; add one with RouterBuilder::claw".into(),
            ));
        }
        let names: Vec<&str> = self.claws.iter().map(|c| c.name()).collect();
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(Error::Config(format!(
                    "two claws are named `{name}`; claw names must be unique within a router"
                )));
            }
        }
        let default = match &self.default {
            None => 0,
            Some(name) => {
                names
                    .iter()
                    .position(|n| n == name)
                    .ok_or_else(|| Error::UnknownClaw {
                        name: name.clone(),
                        known: names.join(", "),
                    })?
            }
        };
        let capacity = NonZeroUsize::new(self.route_capacity).expect("route_capacity >= 1");
        // Every send and broadcast, however it is made (Router::send, Context::reply, or a
        // handler sending through Router::claw), is measured once, here.
        let claws = self
            .claws
            .into_iter()
            .map(crate::metrics::metered)
            .collect();
        Ok(Router {
            inner: Arc::new(Inner {
                claws,
                default,
                concurrency: self.concurrency,
                route_ttl: self.route_ttl,
                close_timeout: self.close_timeout,
                allow_self_sends: self.allow_self_sends,
                unconfirmed: self.unconfirmed,
                routes: Mutex::new(LruCache::new(capacity)),
                dispatcher: tokio::sync::Mutex::new(None),
            }),
        })
    }
}

/// Holds claws and a handler. Cloning is cheap; every clone is the same router.
///
/// ```
/// use claws_core::{mem::MemBroker, Router, Packet};
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> claws_core::Result<()> {
/// let broker = MemBroker::new();
/// let claw = broker.claw("bot@example.com/r1")?;
/// let router = Router::builder().claw(claw).build()?;
/// router.start(claws_core::handler_fn(|packet, via, ctx| async move {
///     println!("{} via {}", packet.as_str().unwrap_or("?"), via.queue);
///     Ok(())
/// })).await?;
/// router.send(&claws_core::jid::parse("bot@example.com")?, None, Packet::from("<message/>")).await?;
/// router.close().await
/// # }
/// ```
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

struct Inner {
    claws: Vec<Arc<dyn Claw>>,
    default: usize,
    concurrency: usize,
    route_ttl: Duration,
    close_timeout: Duration,
    allow_self_sends: bool,
    /// The most sends a lane may have waiting for their confirm (0: none, no pipelining).
    unconfirmed: usize,
    routes: Mutex<LruCache<String, (usize, Instant)>>,
    dispatcher: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("claws", &self.claw_names())
            .field("default", &self.inner.claws[self.inner.default].name())
            .field("concurrency", &self.inner.concurrency)
            .finish_non_exhaustive()
    }
}

impl Router {
    /// A builder.
    pub fn builder() -> RouterBuilder {
        RouterBuilder::default()
    }

    /// The names of the claws, in the order they were added.
    pub fn claw_names(&self) -> Vec<&str> {
        self.inner.claws.iter().map(|c| c.name()).collect()
    }

    /// The claw named `name`.
    pub fn claw(&self, name: &str) -> Result<&Arc<dyn Claw>> {
        self.inner
            .claws
            .iter()
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::UnknownClaw {
                name: name.to_owned(),
                known: self.claw_names().join(", "),
            })
    }

    /// The default claw.
    pub fn default_claw(&self) -> &Arc<dyn Claw> {
        &self.inner.claws[self.inner.default]
    }

    /// Starts every claw and dispatches what they receive to `handler`. Returns once every claw
    /// is connected; if one fails, the ones already started are closed and its error returned.
    pub async fn start(&self, handler: impl Handler) -> Result<()> {
        let mut slot = self.inner.dispatcher.lock().await;
        if slot.is_some() {
            return Err(Error::AlreadyStarted {
                claw: self.claw_names().join(", "),
            });
        }
        let (events, rx) = Events::channel(self.inner.concurrency * 4 + 16);
        let handler: Arc<dyn Handler> = Arc::new(handler);
        let meters = events.meters().clone();
        *slot = Some(tokio::spawn(dispatch(self.clone(), handler, rx, meters)));
        drop(slot);
        for (i, claw) in self.inner.claws.iter().enumerate() {
            if let Err(err) = claw.start(events.clone()).await {
                for started in &self.inner.claws[..i] {
                    let _ = started.close().await;
                }
                // Leave the router as it was, so that `start` may be tried again.
                if let Some(task) = self.inner.dispatcher.lock().await.take() {
                    task.abort();
                }
                return Err(err);
            }
        }
        Ok(())
    }

    /// Sends `packet` to `to` through the claw learned for `to` (see [`route`](Self::route)).
    ///
    /// Outside a handler call it returns once the broker took the packet. Inside one (a
    /// handler's `ctx.send`, `ctx.reply`, or this called from `Handler::received`), the send
    /// is **pipelined**: it returns once the packet's place on the wire is fixed
    /// ([`Claw::send_ordered`]), and the delivery being handled is settled only once the
    /// broker confirmed it, so the lane handles the next stanza meanwhile. A send that fails
    /// after its place was fixed (no route, refused, timed out) fails the delivery as a
    /// handler error would: it is redelivered (or dead-lettered), and the failure is logged
    /// and counted. A handler that must see the verdict itself sends through the claw
    /// ([`Router::claw`], [`Router::route`]) or awaits [`Claw::send_ordered`]'s confirmation.
    pub async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        let claw = self.route(to);
        self.check_not_self(claw, to)?;
        send_within_delivery(claw, to, id, packet).await
    }

    /// Makes the delivery being handled wait for `confirmation` before it is settled: it is
    /// acknowledged once the handler returned `Ok` and every confirmation so attached resolved
    /// `Ok`; an error rejects it as a handler error would (redelivery, or dead-lettering at
    /// the bound). The lane meanwhile handles the next delivery. For a handler that sends
    /// through a claw with [`Claw::send_ordered`] and wants the verdict handled later, off the
    /// lane (the gateway answers a failed send with an error stanza this way):
    ///
    /// ```
    /// # use claws_core::{claw::Confirmation, Router};
    /// # async fn example(router: Router, confirmation: Confirmation) -> claws_core::Result<()> {
    /// router.settle_after(Confirmation::new(async move {
    ///     if let Err(err) = confirmation.await {
    ///         tracing::warn!(%err, "not sent; telling the sender");
    ///     }
    ///     Ok(()) // handled: the delivery is acked
    /// })).await
    /// # }
    /// ```
    ///
    /// Outside a handler call (or with [`max_unconfirmed`](RouterBuilder::max_unconfirmed)
    /// 0) there is no delivery to attach it to: it is awaited here, and its error returned.
    pub async fn settle_after(&self, confirmation: Confirmation) -> Result<()> {
        defer(confirmation).await
    }

    /// Refuses a send to the claw's own full JID unless allowed.
    fn check_not_self(&self, claw: &Arc<dyn Claw>, to: &Jid) -> Result<()> {
        if !self.inner.allow_self_sends && !to.is_bare() && to == claw.jid() {
            return Err(Error::SelfSend {
                claw: claw.name().to_owned(),
                to: to.to_string(),
            });
        }
        Ok(())
    }

    /// Broadcasts `packet` through the default claw.
    pub async fn publish(&self, packet: Packet) -> Result<()> {
        self.default_claw().publish(packet).await
    }

    /// Replies to the sender of a received packet through the claw that delivered it, with the
    /// same correlation id. Inside a handler call it is pipelined as [`send`](Self::send) is.
    ///
    /// The destination is [`Via::reply_to`]: the sender the claw carried, else the stanza's
    /// `from`, else (broadcasts only) the broadcaster; with none, [`Error::NoSender`]. A reply
    /// to the claw's own full JID is [`Error::SelfSend`] unless the router allows it.
    pub async fn reply(&self, via: &Via, packet: Packet) -> Result<()> {
        let to = via.reply_to().ok_or_else(|| Error::NoSender {
            claw: via.claw.to_string(),
            jid: via.jid.clone(),
        })?;
        let claw = self.claw(&via.claw)?;
        self.check_not_self(claw, &to)?;
        send_within_delivery(claw, &to, via.id.as_deref(), packet).await
    }

    /// The claw that sends to `to`: the one a packet from `to` last arrived through, if that route
    /// is fresh, else the default claw.
    pub fn route(&self, to: &Jid) -> &Arc<dyn Claw> {
        let mut routes = self.inner.routes.lock().expect("route table lock poisoned");
        let index = match routes.get(to.as_str()) {
            Some((index, seen)) if seen.elapsed() <= self.inner.route_ttl => Some(*index),
            Some(_) => {
                routes.pop(to.as_str());
                None
            }
            None => None,
        };
        &self.inner.claws[index.unwrap_or(self.inner.default)]
    }

    /// How many routes are learned (expired ones included until looked up or evicted).
    pub fn route_count(&self) -> usize {
        self.inner
            .routes
            .lock()
            .expect("route table lock poisoned")
            .len()
    }

    fn learn(&self, via: &Via, now: Instant) {
        let Some(from) = &via.from else { return };
        let Some(index) = self.inner.claws.iter().position(|c| c.name() == &*via.claw) else {
            return;
        };
        let mut routes = self.inner.routes.lock().expect("route table lock poisoned");
        // A sender seen before (most are) is refreshed in place: no key allocated.
        if let Some(route) = routes.get_mut(from.as_str()) {
            *route = (index, now);
        } else {
            routes.put(from.to_string(), (index, now));
        }
    }

    /// Closes every claw (each stops consuming and lets in-flight handler calls finish and be
    /// acknowledged), then waits for the dispatcher, bounded by the close timeout.
    pub async fn close(&self) -> Result<()> {
        let mut first_err = None;
        for claw in &self.inner.claws {
            if let Err(err) = claw.close().await {
                tracing::warn!(claw = claw.name(), %err, "close failed");
                first_err.get_or_insert(err);
            }
        }
        let task = self.inner.dispatcher.lock().await.take();
        if let Some(mut task) = task {
            if tokio::time::timeout(self.inner.close_timeout, &mut task)
                .await
                .is_err()
            {
                task.abort();
                first_err.get_or_insert(Error::Timeout {
                    what: "waiting for handlers to finish on close".into(),
                    after: self.inner.close_timeout,
                });
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

/// Reads claw events; connection events go to the handler in order, deliveries to lanes keyed by
/// sender so that one sender's packets are handled in order.
async fn dispatch(
    router: Router,
    handler: Arc<dyn Handler>,
    mut rx: mpsc::Receiver<Event>,
    meters: Arc<Meters>,
) {
    let lanes: Vec<_> = (0..router.inner.concurrency)
        .map(|_| {
            let (tx, rx) = mpsc::channel::<Delivery>(64);
            let task = tokio::spawn(lane(router.clone(), handler.clone(), rx, meters.clone()));
            (tx, task)
        })
        .collect();
    let ctx = Context::new(router.clone(), 0);
    let mut clock = Clock::default();
    loop {
        // What is ready first; the clock is read again after waiting.
        let event = match rx.try_recv() {
            Ok(event) => event,
            Err(mpsc::error::TryRecvError::Empty) => {
                clock.stale();
                match rx.recv().await {
                    Some(event) => event,
                    None => break,
                }
            }
            Err(mpsc::error::TryRecvError::Disconnected) => break,
        };
        match event {
            Event::Connected { claw, endpoint, .. } => {
                tracing::info!(
                    claw = &*claw,
                    endpoint = endpoint.as_deref().unwrap_or(""),
                    "connected"
                );
                handler.connected(&claw, &ctx).await;
            }
            Event::ConsumerLost {
                claw,
                queue,
                reason,
            } => {
                tracing::warn!(claw = &*claw, %queue, %reason, "consumer lost; subscribing again");
            }
            Event::ConsumerRestored { claw, queue } => {
                tracing::info!(claw = &*claw, %queue, "consumer restored");
            }
            Event::Disconnected { claw, reason } => {
                tracing::warn!(claw = &*claw, %reason, "disconnected");
                handler.disconnected(&claw, &reason, &ctx).await;
            }
            Event::Received(mut delivery) => {
                if delivery.via.from.is_none() {
                    // A peer that sets no reply_to (the Erlang claw, scripts): the stanza's own
                    // `from`, as XMPP has it.
                    delivery.via.from = delivery
                        .packet
                        .root_attr("from")
                        .and_then(|from| Jid::new(&from).ok());
                }
                router.learn(&delivery.via, clock.now());
                let lane = &lanes[lane_of(&delivery.via, lanes.len())].0;
                // Room in the lane (the usual case): no send future holding the delivery.
                let returned = match lane.try_send(delivery) {
                    Ok(()) => None,
                    Err(mpsc::error::TrySendError::Full(delivery)) => {
                        lane.send(delivery).await.err().map(|e| e.0)
                    }
                    Err(mpsc::error::TrySendError::Closed(delivery)) => Some(delivery),
                };
                if let Some(returned) = returned {
                    // The lane died (it never should): give the delivery back to its queue.
                    let err = Error::Handler("handler lane stopped".into());
                    let _ = returned.acker.reject(&err).await;
                }
            }
        }
    }
    for (tx, task) in lanes {
        drop(tx);
        let _ = task.await;
    }
}

/// The time a route was learned, read once for a run of deliveries that were ready together
/// (at most [`Clock::REUSE`]), instead of once per delivery: a route's age needs no finer
/// precision than the time it takes to dispatch them.
#[derive(Default)]
struct Clock {
    now: Option<Instant>,
    uses: u32,
}

impl Clock {
    const REUSE: u32 = 64;

    fn now(&mut self) -> Instant {
        match self.now {
            Some(now) if self.uses < Self::REUSE => {
                self.uses += 1;
                now
            }
            _ => {
                let now = Instant::now();
                self.now = Some(now);
                self.uses = 1;
                now
            }
        }
    }

    /// The dispatcher waited: read the clock again next time.
    fn stale(&mut self) {
        self.now = None;
    }
}

fn lane_of(via: &Via, lanes: usize) -> usize {
    if lanes == 1 {
        return 0;
    }
    let key = match &via.from {
        Some(from) => from.as_str(),
        None => via.jid.as_str(),
    };
    (fnv1a(key.as_bytes()) % lanes as u64) as usize
}

/// FNV-1a: spreads senders over lanes. A sender who picks JIDs to collide only slows
/// themselves down (their stanzas share a lane), so no keyed hash is needed here.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

tokio::task_local! {
    /// The confirmations the delivery being handled on this task waits for before it is
    /// settled (set by a pipelining lane around `Handler::received`).
    static PENDING: RefCell<Vec<Confirmation>>;
}

/// Attaches `confirmation` to the delivery being handled on this task; awaits it here when
/// there is none (not in a handler call, or pipelining is off) or when its verdict is known
/// already.
async fn defer(confirmation: Confirmation) -> Result<()> {
    if confirmation.is_ready() {
        return confirmation.await;
    }
    let mut slot = Some(confirmation);
    let _ = PENDING.try_with(|pending| {
        if let Some(confirmation) = slot.take() {
            pending.borrow_mut().push(confirmation);
        }
    });
    match slot {
        None => Ok(()),
        Some(confirmation) => confirmation.await,
    }
}

/// A send through `claw`: pipelined when a delivery is being handled on this task (the
/// delivery waits for the confirmation), else awaited until confirmed.
async fn send_within_delivery(
    claw: &Arc<dyn Claw>,
    to: &Jid,
    id: Option<&str>,
    packet: Packet,
) -> Result<()> {
    if PENDING.try_with(|_| ()).is_err() {
        return claw.send(to, id, packet).await;
    }
    defer(claw.send_ordered(to, id, packet).await?).await
}

/// Why a delivery is rejected, and the span's `outcome` for it.
type Failure = (Error, &'static str);

/// A delivery whose handler returned while sends it made wait for their confirms; settled by
/// the lane's [`settle_in_order`] once they resolved.
struct Unconfirmed {
    acker: Box<dyn Acker>,
    /// The handler's failure, if it failed.
    failure: Option<Failure>,
    confirmations: Vec<Confirmation>,
    /// The lane's budget of unconfirmed sends these hold.
    _budget: tokio::sync::OwnedSemaphorePermit,
    claw: Arc<str>,
    attempt: u32,
    span: tracing::Span,
}

async fn lane(
    router: Router,
    handler: Arc<dyn Handler>,
    mut rx: mpsc::Receiver<Delivery>,
    meters: Arc<Meters>,
) {
    // Deliveries waiting for their sends' confirms go, in lane order, to a task of their own
    // that settles them, so that the lane handles the next one meanwhile; the semaphore
    // bounds how many sends may wait.
    let cap = router.inner.unconfirmed;
    let budget = Arc::new(Semaphore::new(cap));
    let (settler, settling) = if cap > 0 {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(tokio::spawn(settle_in_order(rx))))
    } else {
        (None, None)
    };
    while let Some(delivery) = rx.recv().await {
        let Delivery {
            packet,
            via,
            attempt,
            acker,
        } = delivery;
        let ctx = Context::new(router.clone(), attempt);
        let claw = via.claw.clone();
        let timer = crate::metrics::enabled().then(|| {
            (
                meters.queue(&via.claw, &via.queue),
                std::time::Instant::now(),
            )
        });
        let (span, trace) = delivery_span(&via, attempt);
        let work = async {
            let call = AssertUnwindSafe(handler.received(packet, via, &ctx)).catch_unwind();
            let (outcome, confirmations) = if settler.is_some() {
                let call = PENDING.scope(RefCell::new(Vec::new()), call);
                tokio::pin!(call);
                let outcome = call.as_mut().await;
                let confirmations = call
                    .as_mut()
                    .take_value()
                    .map(RefCell::into_inner)
                    .unwrap_or_default();
                (outcome, confirmations)
            } else {
                (call.await, Vec::new())
            };
            if let Some((timer, started)) = timer {
                timer.handled(started);
            }
            let failure = match outcome {
                Ok(Ok(())) => None,
                Ok(Err(err)) => {
                    tracing::warn!(claw = &*claw, attempt, %err, "handler failed; the packet will be redelivered");
                    Some((Error::Handler(err), "rejected"))
                }
                Err(panic) => {
                    let msg = panic_message(&panic);
                    tracing::error!(claw = &*claw, attempt, panic = %msg, "handler panicked; the packet will be redelivered");
                    let err = Error::Handler(format!("handler panicked: {msg}").into());
                    Some((err, "panicked"))
                }
            };
            let Some(settler) = settler.as_ref().filter(|_| !confirmations.is_empty()) else {
                settle(acker, failure, &claw).await;
                return;
            };
            // Backpressure: wait until the lane's earlier sends leave room for these.
            let wanted = u32::try_from(confirmations.len().min(cap)).unwrap_or(u32::MAX);
            let Ok(permits) = budget.clone().acquire_many_owned(wanted).await else {
                return; // never closed; the dropped acker would return the delivery
            };
            let unconfirmed = Unconfirmed {
                acker,
                failure,
                confirmations,
                _budget: permits,
                claw: claw.clone(),
                attempt,
                span: tracing::Span::current(),
            };
            if let Err(returned) = settler.send(unconfirmed) {
                // The settling task is gone (it never should be): settle here.
                settle_unconfirmed(returned.0).await;
            }
        }
        .instrument(span);
        match trace {
            Some(trace) => crate::trace::scope(trace, work).await,
            None => work.await,
        }
    }
    // Closing: what waits for confirms is settled before the lane ends.
    drop(settler);
    if let Some(settling) = settling {
        let _ = settling.await;
    }
}

/// Settles a lane's deliveries that wait for confirms, in the order they were handled, each
/// once every send its handler made was confirmed.
async fn settle_in_order(mut rx: mpsc::UnboundedReceiver<Unconfirmed>) {
    while let Some(unconfirmed) = rx.recv().await {
        settle_unconfirmed(unconfirmed).await;
    }
}

/// Awaits a delivery's confirmations in the order the sends were made, then settles it: acked
/// if the handler succeeded and every send was confirmed, else rejected.
async fn settle_unconfirmed(unconfirmed: Unconfirmed) {
    let Unconfirmed {
        acker,
        mut failure,
        confirmations,
        _budget,
        claw,
        attempt,
        span,
    } = unconfirmed;
    async move {
        for confirmation in confirmations {
            if let Err(err) = confirmation.await {
                if failure.is_none() {
                    tracing::warn!(claw = &*claw, attempt, %err, "a send the handler made was not confirmed; the packet will be redelivered");
                    failure = Some((err, "unconfirmed"));
                } else {
                    tracing::warn!(claw = &*claw, attempt, %err, "a send the handler made was not confirmed");
                }
            }
        }
        drop(_budget);
        settle(acker, failure, &claw).await;
    }
    .instrument(span)
    .await
}

/// Acks a delivery, or rejects it for `failure`, and records the outcome on the current span.
async fn settle(acker: Box<dyn Acker>, failure: Option<Failure>, claw: &str) {
    let (settled, result) = match failure {
        None => (acker.ack().await, "acked"),
        Some((err, result)) => (acker.reject(&err).await, result),
    };
    if let Err(err) = settled {
        tracing::warn!(claw, %err, "could not settle a delivery; the broker will redeliver it");
        tracing::Span::current().record("outcome", "unsettled");
    } else {
        tracing::Span::current().record("outcome", result);
    }
}

/// The `claws.delivery` span of one delivery (handler and settlement) and the trace context
/// current while it runs: the sender's trace continued, else a new trace when someone collects
/// the span, else none (nothing to carry, nothing spent).
fn delivery_span(via: &Via, attempt: u32) -> (tracing::Span, Option<TraceContext>) {
    let span = tracing::info_span!(
        "claws.delivery",
        claw = &*via.claw,
        queue = via.queue.as_str(),
        jid = %via.jid,
        id = via.id.as_deref(),
        attempt,
        from = via.from.as_ref().map(|f| f.as_str()),
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        parent_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    let context = match &via.trace {
        Some(parent) => {
            span.record("parent_id", parent.span_id());
            Some(parent.child())
        }
        None if !span.is_disabled() => Some(TraceContext::new_root()),
        None => None,
    };
    if let Some(c) = &context {
        span.record("trace_id", c.trace_id());
        span.record("span_id", c.span_id());
    }
    (span, context)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_owned()
    }
}
