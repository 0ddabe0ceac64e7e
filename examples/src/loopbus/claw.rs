//! [`LoopClaw`]: a claw on a [`LoopBroker`](super::LoopBroker), with recovery.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use claws_core::jid::{self, Jid};
use claws_core::topology::{self, QueueSpec, Subscriptions, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws_core::{Acker, Capabilities, Claw, Delivery, Error, Events, Packet, Result, Via};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::wire::{Frame, NO_ROUTE, OK};

/// Builds a [`LoopClaw`]; start from [`LoopClaw::builder`].
#[must_use]
#[derive(Debug)]
pub struct LoopClawBuilder {
    addr: SocketAddr,
    jid: Jid,
    name: String,
    prefetch: u16,
    max_deliveries: u32,
    subscriptions: Subscriptions,
    send_timeout: Duration,
    close_timeout: Duration,
}

impl LoopClawBuilder {
    /// The claw's name (default `loopbus`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// How many deliveries may be unacked at once (default 32).
    pub fn prefetch(mut self, n: u16) -> Self {
        self.prefetch = n.max(1);
        self
    }
    /// After this many deliveries a rejected stanza is dead-lettered (default 5).
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.max_deliveries = n.max(1);
        self
    }
    /// Which subscriptions to consume (default all four).
    pub fn subscriptions(mut self, s: Subscriptions) -> Self {
        self.subscriptions = s;
        self
    }
    /// How long a send waits for a connection while disconnected (default 10 s).
    pub fn send_timeout(mut self, t: Duration) -> Self {
        self.send_timeout = t;
        self
    }
    /// How long `close` waits for in-flight deliveries (default 30 s).
    pub fn close_timeout(mut self, t: Duration) -> Self {
        self.close_timeout = t;
        self
    }
    /// Checks the queue names and builds the claw.
    pub fn build(self) -> Result<LoopClaw> {
        let queues = topology::queues(&self.jid, self.subscriptions)?;
        let name: Arc<str> = self.name.into();
        Ok(LoopClaw {
            cfg: Arc::new(Cfg {
                name: name.clone(),
                addr: self.addr,
                queues,
                prefetch: self.prefetch,
                max_deliveries: self.max_deliveries,
                send_timeout: self.send_timeout,
                close_timeout: self.close_timeout,
            }),
            name,
            jid: self.jid,
            link: watch::channel(None).0,
            in_flight: Arc::new(watch::channel(0).0),
            stop: watch::channel(false).0,
            phase: Mutex::new(Phase::New),
        })
    }
}

#[derive(Debug)]
struct Cfg {
    name: Arc<str>,
    addr: SocketAddr,
    queues: Vec<QueueSpec>,
    prefetch: u16,
    max_deliveries: u32,
    send_timeout: Duration,
    close_timeout: Duration,
}

enum Phase {
    New,
    Running(Vec<JoinHandle<()>>),
    Closed,
}

/// A claw over a loopbus connection: TOPOLOGY.md's queues, acks after the handler, bounded
/// redelivery then dead-lettering, confirmed sends, and recovery (reconnect, re-declare,
/// re-consume) when the connection drops. Acks go on the connection that delivered; a delivery
/// whose connection died is requeued by the broker.
pub struct LoopClaw {
    name: Arc<str>,
    jid: Jid,
    cfg: Arc<Cfg>,
    link: watch::Sender<Option<Arc<Link>>>,
    in_flight: Arc<watch::Sender<usize>>,
    stop: watch::Sender<bool>,
    phase: Mutex<Phase>,
}

impl fmt::Debug for LoopClaw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoopClaw")
            .field("name", &self.name)
            .field("jid", &self.jid.as_str())
            .field("broker", &self.cfg.addr)
            .finish_non_exhaustive()
    }
}

impl LoopClaw {
    /// A builder for an instance `jid` on the broker at `addr`.
    pub fn builder(addr: SocketAddr, jid: &str) -> Result<LoopClawBuilder> {
        Ok(LoopClawBuilder {
            addr,
            jid: jid::parse(jid)?,
            name: "loopbus".into(),
            prefetch: 32,
            max_deliveries: 5,
            subscriptions: Subscriptions::all(),
            send_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(30),
        })
    }

    fn closed(&self) -> Error {
        Error::Closed {
            claw: self.name.to_string(),
        }
    }

    /// Publishes, waiting (bounded) for a connection, and again on a new one if the connection
    /// drops before the broker confirmed.
    async fn publish_frame(
        &self,
        exchange: &str,
        key: &str,
        id: Option<&str>,
        mandatory: bool,
        packet: Packet,
    ) -> Result<()> {
        if matches!(*self.phase.lock().expect("phase lock"), Phase::Closed) {
            return Err(self.closed());
        }
        let started = Instant::now();
        let deadline = started + self.cfg.send_timeout;
        let mut links = self.link.subscribe();
        let payload = packet.as_bytes().to_vec();
        loop {
            let link = tokio::time::timeout_at(deadline.into(), links.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(|l| l.ok().and_then(|l| l.clone()));
            let Some(link) = link else {
                return Err(Error::Disconnected {
                    claw: self.name.to_string(),
                    waited: started.elapsed(),
                });
            };
            let frame = |req| Frame::Publish {
                req,
                exchange: exchange.to_owned(),
                key: key.to_owned(),
                id: id.map(str::to_owned),
                from: Some(self.jid.to_string()),
                mandatory,
                payload: payload.clone(),
            };
            match link
                .request(frame, deadline.saturating_duration_since(Instant::now()))
                .await
            {
                Ok((OK, _)) => return Ok(()),
                Ok((NO_ROUTE, _)) => {
                    return Err(Error::NoRoute {
                        to: key.to_owned(),
                        claw: self.name.to_string(),
                    })
                }
                Ok((_, reason)) => {
                    return Err(Error::Refused {
                        to: key.to_owned(),
                        claw: self.name.to_string(),
                        reason,
                    })
                }
                Err(Lost) => {
                    // The connection died before the confirm: wait for the next one and resend
                    // (at least once).
                    let _ = tokio::time::timeout_at(
                        deadline.into(),
                        links.wait_for(|l| !l.as_ref().is_some_and(|l2| Arc::ptr_eq(l2, &link))),
                    )
                    .await;
                }
            }
        }
    }
}

#[async_trait]
impl Claw for LoopClaw {
    fn name(&self) -> &str {
        &self.name
    }

    fn jid(&self) -> &Jid {
        &self.jid
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::all()
    }

    async fn start(&self, events: Events) -> Result<()> {
        match *self.phase.lock().expect("phase lock") {
            Phase::New => {}
            Phase::Running(_) => {
                return Err(Error::Config(format!(
                    "claw `{}` is already started",
                    self.name
                )))
            }
            Phase::Closed => return Err(self.closed()),
        }
        let (deliveries, rx) = mpsc::unbounded_channel();
        let forwarder = tokio::spawn(forward(rx, events.clone()));
        let ctx = LinkCtx {
            cfg: self.cfg.clone(),
            deliveries,
            in_flight: self.in_flight.clone(),
        };
        let link = match Link::open(&ctx).await {
            Ok(link) => link,
            Err(e) => {
                forwarder.abort();
                return Err(e);
            }
        };
        self.link.send_replace(Some(link.clone()));
        events.connected(&self.name).await;
        let supervisor = tokio::spawn(supervise(
            ctx,
            link,
            self.link.clone(),
            self.stop.subscribe(),
            events,
        ));
        let mut phase = self.phase.lock().expect("phase lock");
        if matches!(*phase, Phase::Closed) {
            // closed while starting
            supervisor.abort();
            forwarder.abort();
            return Err(self.closed());
        }
        *phase = Phase::Running(vec![supervisor, forwarder]);
        Ok(())
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        topology::check_name("routing key", to.as_str())?;
        self.publish_frame(DIRECT_EXCHANGE, to.as_str(), id, true, packet)
            .await
    }

    async fn publish(&self, packet: Packet) -> Result<()> {
        self.publish_frame(FANOUT_EXCHANGE, self.jid.as_str(), None, false, packet)
            .await
    }

    async fn close(&self) -> Result<()> {
        let tasks =
            match std::mem::replace(&mut *self.phase.lock().expect("phase lock"), Phase::Closed) {
                Phase::Running(tasks) => tasks,
                Phase::New | Phase::Closed => return Ok(()),
            };
        self.stop.send_replace(true);
        let link = self.link.borrow().clone();
        if let Some(link) = &link {
            for consumer in 0..self.cfg.queues.len() as u64 {
                let _ = link
                    .request(
                        |req| Frame::Cancel { req, consumer },
                        Duration::from_secs(5),
                    )
                    .await;
            }
        }
        let mut in_flight = self.in_flight.subscribe();
        let drained =
            tokio::time::timeout(self.cfg.close_timeout, in_flight.wait_for(|n| *n == 0)).await;
        for t in tasks {
            t.abort();
        }
        if let Some(link) = self.link.send_replace(None) {
            link.kill();
        }
        match drained {
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for in-flight stanzas on close",
                    self.name
                ),
                after: self.cfg.close_timeout,
            }),
        }
    }
}

/// What a connection needs from its claw.
#[derive(Clone)]
struct LinkCtx {
    cfg: Arc<Cfg>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    in_flight: Arc<watch::Sender<usize>>,
}

/// The connection died before the reply.
struct Lost;

/// One connection to the broker.
struct Link {
    out: mpsc::UnboundedSender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<(u8, String)>>>,
    next_req: AtomicU64,
    dead: watch::Sender<Option<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Link {
    /// Connects, then declares and consumes every queue.
    async fn open(ctx: &LinkCtx) -> Result<Arc<Link>> {
        let cfg = &ctx.cfg;
        let connect_error = |reason: String| Error::Connect {
            claw: cfg.name.to_string(),
            endpoint: format!("loopbus://{}", cfg.addr),
            reason,
        };
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(cfg.addr))
            .await
            .map_err(|_| connect_error("no answer within 5 s".into()))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        let (out, mut outgoing) = mpsc::unbounded_channel::<Frame>();
        let link = Arc::new(Link {
            out,
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU64::new(1),
            dead: watch::channel(None).0,
            tasks: Mutex::new(Vec::new()),
        });
        let writer = tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Some(frame) = outgoing.recv().await {
                buf.clear();
                buf.extend(frame.encode());
                while let Ok(more) = outgoing.try_recv() {
                    buf.extend(more.encode());
                }
                if write.write_all(&buf).await.is_err() {
                    break;
                }
            }
        });
        let reader = {
            let link = link.clone();
            let ctx = ctx.clone();
            tokio::spawn(async move {
                let reason = loop {
                    match Frame::read(&mut read).await {
                        Ok(Some(Frame::Reply { req, code, message })) => {
                            let waiter = link.pending.lock().expect("pending lock").remove(&req);
                            if let Some(w) = waiter {
                                let _ = w.send((code, message));
                            }
                        }
                        Ok(Some(Frame::Deliver {
                            consumer,
                            tag,
                            exchange,
                            key,
                            id,
                            from,
                            count,
                            payload,
                        })) => {
                            let Some(spec) = ctx.cfg.queues.get(consumer as usize) else {
                                continue;
                            };
                            ctx.in_flight.send_modify(|n| *n += 1);
                            let via = Via::new(ctx.cfg.name.clone(), spec.kind.clone(), key)
                                .with_exchange(exchange)
                                .with_id(id)
                                .with_from(from.and_then(|f| jid::parse(&f).ok()));
                            let delivery = Delivery {
                                packet: Packet::from(payload),
                                via,
                                attempt: count,
                                acker: Box::new(LoopAcker {
                                    link: link.clone(),
                                    tag,
                                    dead_letter: count >= ctx.cfg.max_deliveries,
                                    settled: false,
                                    in_flight: ctx.in_flight.clone(),
                                }),
                            };
                            let _ = ctx.deliveries.send(delivery);
                        }
                        Ok(Some(other)) => {
                            tracing::warn!(?other, "loopbus: unexpected frame from the broker")
                        }
                        Ok(None) => break "the broker closed the connection".to_owned(),
                        Err(e) => break format!("connection lost: {e}"),
                    }
                };
                link.pending.lock().expect("pending lock").clear();
                link.dead.send_replace(Some(reason));
            })
        };
        link.tasks
            .lock()
            .expect("tasks lock")
            .extend([writer, reader]);
        let setup = async {
            let check = |what: String, r: std::result::Result<(u8, String), Lost>| match r {
                Ok((OK, _)) => Ok(()),
                Ok((_, reason)) => Err(Error::Refused {
                    to: what,
                    claw: cfg.name.to_string(),
                    reason,
                }),
                Err(Lost) => Err(connect_error(format!("connection lost during {what}"))),
            };
            let t = Duration::from_secs(10);
            let prefetch = u32::from(cfg.prefetch);
            check(
                "hello".into(),
                link.request(|req| Frame::Hello { req, prefetch }, t).await,
            )?;
            for q in &cfg.queues {
                let declare = |req| Frame::Declare {
                    req,
                    queue: q.name.clone(),
                    exchange: q.exchange.to_owned(),
                    key: q.routing_key.clone(),
                };
                check(
                    format!("declaring {}", q.name),
                    link.request(declare, t).await,
                )?;
            }
            for (i, q) in cfg.queues.iter().enumerate() {
                let consume = |req| Frame::Consume {
                    req,
                    queue: q.name.clone(),
                    consumer: i as u64,
                };
                check(
                    format!("consuming {}", q.name),
                    link.request(consume, t).await,
                )?;
            }
            Ok(())
        };
        if let Err(e) = setup.await {
            link.kill();
            return Err(e);
        }
        Ok(link)
    }

    /// Sends a request and waits (bounded) for the broker's reply.
    async fn request(
        &self,
        frame: impl FnOnce(u64) -> Frame,
        within: Duration,
    ) -> std::result::Result<(u8, String), Lost> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(req, tx);
        if self.dead.borrow().is_some() || self.out.send(frame(req)).is_err() {
            self.pending.lock().expect("pending lock").remove(&req);
            return Err(Lost);
        }
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) | Err(_) => {
                self.pending.lock().expect("pending lock").remove(&req);
                Err(Lost)
            }
        }
    }

    /// Stops the connection's tasks, closing its socket.
    fn kill(&self) {
        for t in self.tasks.lock().expect("tasks lock").drain(..) {
            t.abort();
        }
        self.dead.send_if_modified(|d| {
            let was = d.is_none();
            if was {
                *d = Some("closed".into());
            }
            was
        });
    }
}

/// Hands deliveries to the router, off the connection's reader (which must keep reading
/// replies while handlers run).
async fn forward(mut rx: mpsc::UnboundedReceiver<Delivery>, events: Events) {
    while let Some(d) = rx.recv().await {
        if events.received(d).await.is_err() {
            return; // the router is gone; dropped deliveries requeue themselves
        }
    }
}

/// Watches the connection; when it dies, reports Disconnected and reconnects (backing off from
/// 50 ms to 1 s) until it is back (Connected) or the claw closes.
async fn supervise(
    ctx: LinkCtx,
    mut link: Arc<Link>,
    current: watch::Sender<Option<Arc<Link>>>,
    mut stop: watch::Receiver<bool>,
    events: Events,
) {
    loop {
        let mut dead = link.dead.subscribe();
        let reason = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            r = dead.wait_for(Option::is_some) => match r {
                Ok(r) => r.clone().unwrap_or_default(),
                Err(_) => return,
            },
        };
        link.kill();
        current.send_replace(None);
        events.disconnected(&ctx.cfg.name, reason).await;
        let mut backoff = Duration::from_millis(50);
        link = loop {
            if *stop.borrow() {
                return;
            }
            match Link::open(&ctx).await {
                Ok(l) => break l,
                Err(e) => {
                    tracing::debug!(claw = &*ctx.cfg.name, %e, "loopbus: reconnect failed");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        };
        current.send_replace(Some(link.clone()));
        events.connected(&ctx.cfg.name).await;
    }
}

/// Settles one delivery on the connection that delivered it.
struct LoopAcker {
    link: Arc<Link>,
    tag: u64,
    dead_letter: bool,
    settled: bool,
    in_flight: Arc<watch::Sender<usize>>,
}

impl LoopAcker {
    async fn settle(&mut self, frame: impl FnOnce(u64) -> Frame) -> Result<()> {
        self.settled = true;
        match self.link.request(frame, Duration::from_secs(10)).await {
            Ok((OK, _)) => Ok(()),
            Ok((_, reason)) => Err(Error::backend(format!("loopbus broker refused a settlement: {reason}"))),
            Err(Lost) => Err(Error::backend(
                "loopbus: the connection that delivered this stanza is gone; the broker will redeliver it",
            )),
        }
    }
}

#[async_trait]
impl Acker for LoopAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        let tag = self.tag;
        self.settle(|req| Frame::Ack { req, tag }).await
    }

    async fn reject(mut self: Box<Self>, _reason: &Error) -> Result<()> {
        let (tag, dead_letter) = (self.tag, self.dead_letter);
        self.settle(|req| Frame::Reject {
            req,
            tag,
            dead_letter,
        })
        .await
    }
}

impl Drop for LoopAcker {
    fn drop(&mut self) {
        if !self.settled {
            // Never settled: back to the queue (the reply is not awaited).
            let req = self.link.next_req.fetch_add(1, Ordering::Relaxed);
            let _ = self.link.out.send(Frame::Reject {
                req,
                tag: self.tag,
                dead_letter: false,
            });
        }
        self.in_flight.send_modify(|n| *n = n.saturating_sub(1));
    }
}
