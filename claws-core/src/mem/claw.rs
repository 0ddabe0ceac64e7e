//! [`MemClaw`]: one instance on a [`MemBroker`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use super::broker::{MemBroker, Message, Queue};
use crate::claw::{Acker, Capabilities, Claw, Delivery, Events};
use crate::jid::{self, Jid};
use crate::runtime::{CancellationToken, Lifecycle};
use crate::topology::{self, QueueSpec, Subscriptions, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use crate::{Error, Packet, QueueKind, Result, Via};

/// Builds a [`MemClaw`]; start from [`MemBroker::claw_builder`].
#[must_use]
#[derive(Debug)]
pub struct MemClawBuilder {
    broker: MemBroker,
    jid: Jid,
    name: String,
    prefetch: usize,
    max_deliveries: u32,
    subscriptions: Subscriptions,
    close_timeout: Duration,
}

impl MemClawBuilder {
    /// The claw's name (default `mem`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How many deliveries may be unsettled at once, across its subscriptions (default 32, at
    /// least 1; the same `prefetch` as every claw's).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = usize::from(n.max(1));
        self
    }

    /// After this many deliveries a rejected stanza is dead-lettered (default 5).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }

    /// Which subscriptions to consume (default all four).
    pub fn subscriptions(mut self, subscriptions: Subscriptions) -> Self {
        self.subscriptions = subscriptions;
        self
    }

    /// How long `close` waits for in-flight deliveries to be settled (default 30 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Builds the claw, checking its queue names.
    pub fn build(self) -> Result<MemClaw> {
        let queues = topology::queues(&self.jid, self.subscriptions)?;
        let name: Arc<str> = self.name.into();
        Ok(MemClaw {
            life: Lifecycle::new(name.clone()),
            name,
            from: Arc::new(self.jid.clone()),
            jid: self.jid,
            broker: self.broker,
            queues,
            in_flight: Arc::new(Semaphore::new(self.prefetch)),
            prefetch: self.prefetch,
            max_deliveries: self.max_deliveries,
            close_timeout: self.close_timeout,
        })
    }
}

impl MemBroker {
    /// A claw for `jid` with the defaults (name `mem`, all four subscriptions).
    pub fn claw(&self, jid: &str) -> Result<MemClaw> {
        self.claw_builder(jid)?.build()
    }

    /// A builder for a claw for `jid`.
    pub fn claw_builder(&self, jid: &str) -> Result<MemClawBuilder> {
        Ok(MemClawBuilder {
            broker: self.clone(),
            jid: jid::parse(jid)?,
            name: "mem".into(),
            prefetch: 32,
            max_deliveries: 5,
            subscriptions: Subscriptions::all(),
            close_timeout: Duration::from_secs(30),
        })
    }
}

/// What a running claw owns: the token that stops its consumer, and the consumer's task.
#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    consumers: Vec<JoinHandle<()>>,
}

/// A claw on the in-process [`MemBroker`]: the embedded default, needing no broker. It keeps
/// TOPOLOGY.md exactly (full-JID direct, bare-JID competing consumers, fanout per instance and per
/// group), acks after the handler, redelivers on failure and dead-letters after
/// `max_deliveries`. Queues outlive the claw, so a new claw with the same JID gets what was left.
#[derive(Debug)]
pub struct MemClaw {
    name: Arc<str>,
    jid: Jid,
    /// The JID every message it sends carries as its sender.
    from: Arc<Jid>,
    broker: MemBroker,
    queues: Vec<QueueSpec>,
    in_flight: Arc<Semaphore>,
    prefetch: usize,
    max_deliveries: u32,
    close_timeout: Duration,
    /// New → Starting → Running → Closed.
    life: Lifecycle<Running>,
}

impl MemClaw {
    /// The broker this claw is on.
    pub fn broker(&self) -> &MemBroker {
        &self.broker
    }

    /// The queues this claw consumes.
    pub fn queues(&self) -> &[QueueSpec] {
        &self.queues
    }

    fn message(
        &self,
        exchange: &'static str,
        key: &str,
        id: Option<&str>,
        packet: Packet,
    ) -> Message {
        Message {
            payload: packet.into_bytes(),
            exchange,
            routing_key: key.to_owned(),
            id: id.map(str::to_owned),
            from: Some(self.from.clone()),
            deliveries: 0,
            trace: None,
        }
    }

    /// Sending needs no `start` on the mem broker (a claw that only sends never starts); only
    /// a closed claw refuses.
    fn check_open(&self) -> Result<()> {
        if self.life.is_closed() {
            return Err(Error::Closed {
                claw: self.name.to_string(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl Claw for MemClaw {
    fn name(&self) -> &str {
        &self.name
    }

    fn jid(&self) -> &Jid {
        &self.jid
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            reconnect: false,
            lossless_cut: false,
            survives_broker_restart: false,
            ..Capabilities::all()
        }
    }

    async fn start(&self, events: Events) -> Result<()> {
        self.life.begin_start()?;
        let stop = CancellationToken::new();
        let mut queues = Vec::with_capacity(self.queues.len());
        for spec in &self.queues {
            let queue = self.broker.declare(&spec.name);
            self.broker
                .bind(&spec.name, spec.exchange, &spec.routing_key);
            queues.push((spec.clone(), queue));
        }
        let mut consumers = Vec::with_capacity(1);
        if !queues.is_empty() {
            let consumer = Consumer {
                queues,
                claw: self.name.clone(),
                broker: self.broker.clone(),
                in_flight: self.in_flight.clone(),
                max_deliveries: self.max_deliveries,
            };
            consumers.push(tokio::spawn(consumer.run(events.clone(), stop.clone())));
        }
        if let Err(running) = self.life.started(Running { stop, consumers }) {
            // Closed while starting: the consumer stops, and its unsettled deliveries requeue.
            running.stop.cancel();
            return Err(Error::Closed {
                claw: self.name.to_string(),
            });
        }
        events.connected(&self.name).await;
        Ok(())
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        self.check_open()?;
        topology::check_name("routing key", to.as_str())?;
        let mut msg = self.message(DIRECT_EXCHANGE, to.as_str(), id, packet);
        let (span, trace) = crate::trace::outgoing_context(&self.name, to.as_str());
        msg.trace = trace;
        if span.in_scope(|| self.broker.route(msg)) == 0 {
            return Err(Error::NoRoute {
                to: to.to_string(),
                claw: self.name.to_string(),
            });
        }
        Ok(())
    }

    async fn publish(&self, packet: Packet) -> Result<()> {
        self.check_open()?;
        let mut msg = self.message(FANOUT_EXCHANGE, self.jid.as_str(), None, packet);
        let (span, trace) = crate::trace::outgoing_context(&self.name, "broadcast");
        msg.trace = trace;
        span.in_scope(|| self.broker.route(msg));
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        let Some(Running { stop, consumers }) = self.life.close() else {
            return Ok(());
        };
        stop.cancel();
        for c in consumers {
            let _ = c.await;
        }
        // Every permit back means every delivery was settled.
        let all = u32::try_from(self.prefetch).unwrap_or(u32::MAX);
        match tokio::time::timeout(self.close_timeout, self.in_flight.acquire_many(all)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for in-flight stanzas on close",
                    self.name
                ),
                after: self.close_timeout,
            }),
        }
    }
}

/// One consumer per claw, taking from whichever of its queues has a message first, within the
/// claw's prefetch (a permit is taken before a message, never held while a queue is empty).
struct Consumer {
    queues: Vec<(QueueSpec, Arc<Queue>)>,
    claw: Arc<str>,
    broker: MemBroker,
    in_flight: Arc<Semaphore>,
    max_deliveries: u32,
}

impl Consumer {
    /// A message ready now, from the first queue at or after `start` (in turn) that has one.
    fn try_next(&self, start: usize) -> Option<(Message, usize)> {
        let n = self.queues.len();
        (0..n).find_map(|k| {
            let i = (start + k) % n;
            self.queues[i].1.try_pop().map(|msg| (msg, i))
        })
    }

    /// Waits for the next message of any queue.
    async fn next(&self) -> (Message, usize) {
        // `Queue::pop` takes a message only in the poll that completes it, so the losers of this
        // race lose nothing.
        let pops = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, (_, q))| Box::pin(async move { (q.pop().await, i) }));
        futures_util::future::select_all(pops).await.0
    }

    // Each step tries the ready case first and only then waits (racing the stop signal): a
    // busy claw takes a permit, a message and a slot in the events channel without building
    // the waiting futures (the race's boxed futures, a registration with the stop token).
    async fn run(self, events: Events, stop: CancellationToken) {
        // Where the next look for a message starts: the queue after the last one served, so
        // that a busy queue starves none.
        let mut start = 0;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let permit = match self.in_flight.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(tokio::sync::TryAcquireError::Closed) => return,
                Err(tokio::sync::TryAcquireError::NoPermits) => tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    p = self.in_flight.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                },
            };
            let (mut msg, index) = match self.try_next(start) {
                Some(m) => m,
                None => tokio::select! {
                    biased;
                    _ = stop.cancelled() => return,
                    m = self.next() => m,
                },
            };
            start = index + 1;
            let (spec, queue) = &self.queues[index];
            msg.deliveries += 1;
            // Filled in place (the builder methods move the whole Via each time).
            let mut via = Via::new(
                self.claw.clone(),
                spec.kind.clone(),
                msg.routing_key.clone(),
            );
            via.exchange = Some(msg.exchange.to_owned());
            via.id.clone_from(&msg.id);
            via.from = msg.from.as_deref().cloned();
            via.trace = msg.trace;
            let delivery = Delivery {
                packet: Packet::new(msg.payload.clone()),
                via,
                attempt: msg.deliveries,
                acker: Box::new(MemAcker {
                    msg: Some(msg),
                    claw: self.claw.clone(),
                    kind: spec.kind.clone(),
                    queue: queue.clone(),
                    broker: self.broker.clone(),
                    max_deliveries: self.max_deliveries,
                    _permit: permit,
                }),
            };
            let delivery = match events.try_received(delivery) {
                Ok(()) => continue,
                Err(d) if events.is_closed() => {
                    drop(d); // requeues itself
                    return;
                }
                Err(d) => d,
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return, // the dropped delivery requeues itself
                r = events.received(delivery) => if r.is_err() { return },
            }
        }
    }
}

struct MemAcker {
    msg: Option<Message>,
    claw: Arc<str>,
    kind: QueueKind,
    queue: Arc<Queue>,
    broker: MemBroker,
    max_deliveries: u32,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl Acker for MemAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        self.msg = None;
        Ok(())
    }

    async fn reject(mut self: Box<Self>, reason: &Error) -> Result<()> {
        if let Some(msg) = self.msg.take() {
            if msg.deliveries >= self.max_deliveries {
                tracing::warn!(deliveries = msg.deliveries, %reason, "dead-lettering a stanza");
                self.broker.dead_letter(msg);
                crate::metrics::dead_lettered(&self.claw, &self.kind);
            } else {
                self.queue.push_front(msg);
            }
        }
        Ok(())
    }
}

impl Drop for MemAcker {
    fn drop(&mut self) {
        // Never settled (a cancelled task, a router gone): back to the queue, as a closed AMQP
        // channel would do.
        if let Some(msg) = self.msg.take() {
            self.queue.push_front(msg);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn misuse_gets_typed_errors() {
        let broker = MemBroker::new();
        let claw = broker.claw("svc@example.com/w1").unwrap();
        let peer = broker.claw("peer@example.com/p").unwrap();
        let (events, _rx) = Events::channel(8);
        claw.start(events).await.unwrap();
        // A claw that only sends needs no start.
        peer.send(&claw.jid().clone(), None, Packet::from("<message/>"))
            .await
            .unwrap();
        let (events, _rx2) = Events::channel(8);
        let err = claw.start(events).await.unwrap_err();
        assert!(matches!(err, Error::AlreadyStarted { .. }), "{err}");
        claw.close().await.unwrap();
        let (events, _rx3) = Events::channel(8);
        let err = claw.start(events).await.unwrap_err();
        assert!(matches!(err, Error::Closed { .. }), "{err}");
        let err = claw.publish(Packet::from("<message/>")).await.unwrap_err();
        assert!(matches!(err, Error::Closed { .. }), "{err}");
    }
}
