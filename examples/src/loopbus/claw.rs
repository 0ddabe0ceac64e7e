//! [`LoopClaw`]: a claw on a [`LoopBroker`](super::LoopBroker), with recovery.
//!
//! What is the same for every claw comes from [`claws_core::runtime`]: the run state
//! ([`Lifecycle`]), the connection that serves sends ([`Current`], whose
//! [`wait_live`](Current::wait_live) waits through an outage), a connection's death ([`Fuse`]),
//! reconnecting with a jittered backoff ([`Reconnect`]), the stop signal
//! ([`CancellationToken`]) and what `close` waits for ([`InFlight`], [`drain`]). What is left
//! here is loopbus's own: its frames, connecting, declaring, consuming, publishing, settling.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use claws_core::jid::{self, Jid};
use claws_core::runtime::{
    drain, Alive, Backoff, CancellationToken, Current, Endpoints, Fuse, InFlight, InFlightGuard,
    Lifecycle, Reconnect,
};
use claws_core::topology::{self, QueueSpec, Subscriptions, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws_core::{Acker, Capabilities, Claw, Delivery, Error, Events, Packet, Result, Via};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

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
            current: Arc::new(Current::new(name.clone())),
            deliveries: InFlight::new(),
            sends: InFlight::new(),
            life: Lifecycle::new(name.clone()),
            name,
            jid: self.jid,
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

/// What a running claw owns: the token that stops its tasks, the supervisor (which hands back
/// its last connection when it stops) and the forwarder of deliveries.
struct Running {
    stop: CancellationToken,
    supervisor: JoinHandle<Option<Arc<Link>>>,
    forwarder: JoinHandle<()>,
}

/// A claw over a loopbus connection: TOPOLOGY.md's queues, acks after the handler, bounded
/// redelivery then dead-lettering, confirmed sends, and recovery (reconnect, re-declare,
/// re-consume) when the connection drops. Acks go on the connection that delivered; a delivery
/// whose connection died is requeued by the broker.
pub struct LoopClaw {
    name: Arc<str>,
    jid: Jid,
    cfg: Arc<Cfg>,
    /// The connection that serves sends; the supervisor sets it up and down.
    current: Arc<Current<Arc<Link>>>,
    /// Deliveries handed to the router and not settled yet.
    deliveries: Arc<InFlight>,
    /// Sends not confirmed yet.
    sends: Arc<InFlight>,
    /// New → Starting → Running → Closed.
    life: Lifecycle<Running>,
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
        let _sending = self.sends.enter();
        let started = Instant::now();
        let deadline = started + self.cfg.send_timeout;
        let payload = packet.as_bytes().to_vec();
        loop {
            // NotStarted before `start`, Closed after `close`, Disconnected past the deadline.
            let link = self
                .current
                .wait_live(started, self.cfg.send_timeout)
                .await?;
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
                    // No confirm: the connection died (then resend on the next one, at least
                    // once) or the deadline passed.
                    let _ = tokio::time::timeout_at(deadline, link.dead.tripped()).await;
                    if Instant::now() >= deadline {
                        return Err(Error::Disconnected {
                            claw: self.name.to_string(),
                            waited: started.elapsed(),
                        });
                    }
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
        let reconnect = Reconnect::new(
            self.name.to_string(),
            Endpoints::in_order(vec![self.cfg.addr])?,
            Backoff::new(Duration::from_millis(50), Duration::from_secs(1)),
        );
        self.life.begin_start()?;
        let (deliveries, rx) = mpsc::unbounded_channel();
        let ctx = LinkCtx {
            cfg: self.cfg.clone(),
            deliveries,
            in_flight: self.deliveries.clone(),
        };
        let link = match Link::open(&ctx).await {
            Ok(link) => link,
            Err(e) => {
                self.life.start_failed();
                return Err(e);
            }
        };
        let forwarder = tokio::spawn(forward(rx, events.clone()));
        self.current.up(link.clone());
        events.connected(&self.name).await;
        let stop = CancellationToken::new();
        let supervisor = tokio::spawn(supervise(
            ctx,
            link,
            reconnect,
            self.current.clone(),
            stop.clone(),
            events,
        ));
        if let Err(running) = self.life.started(Running {
            stop,
            supervisor,
            forwarder,
        }) {
            // Closed while starting: stop what was started.
            running.stop.cancel();
            running.forwarder.abort();
            if let Ok(Some(link)) = running.supervisor.await {
                link.kill();
            }
            return Err(Error::Closed {
                claw: self.name.to_string(),
            });
        }
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
        let running = self.life.close();
        // Sends waiting for a connection fail with Error::Closed from now on.
        self.current.close();
        let Some(Running {
            stop,
            mut supervisor,
            forwarder,
        }) = running
        else {
            return Ok(());
        };
        let deadline = Instant::now() + self.cfg.close_timeout;
        stop.cancel();
        // The supervisor's last connection: acks of the deliveries still in flight go over it.
        let link = match tokio::time::timeout_at(deadline, &mut supervisor).await {
            Ok(link) => link.ok().flatten(),
            Err(_) => {
                supervisor.abort();
                None
            }
        };
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
        let drained = drain(&self.name, deadline, &self.deliveries, &self.sends).await;
        forwarder.abort();
        if let Some(link) = link {
            link.kill();
        }
        drained
    }
}

/// What a connection needs from its claw.
#[derive(Clone)]
struct LinkCtx {
    cfg: Arc<Cfg>,
    deliveries: mpsc::UnboundedSender<Delivery>,
    in_flight: Arc<InFlight>,
}

/// The connection died before the reply.
struct Lost;

/// One connection to the broker.
struct Link {
    out: mpsc::UnboundedSender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<(u8, String)>>>,
    next_req: AtomicU64,
    /// Trips once the connection is dead, with why.
    dead: Fuse,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Alive for Link {
    fn is_alive(&self) -> bool {
        !self.dead.is_tripped()
    }
}

/// Kills a connection that is being opened unless [`defuse`](Self::defuse)d: a failed or
/// abandoned open leaves no task or socket behind.
struct KillOnDrop(Option<Arc<Link>>);

impl KillOnDrop {
    fn defuse(mut self) -> Arc<Link> {
        self.0.take().expect("defused once")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            link.kill();
        }
    }
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
            dead: Fuse::new(),
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
                            let in_flight = ctx.in_flight.enter();
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
                                    _in_flight: in_flight,
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
                link.dead.trip(reason);
            })
        };
        link.tasks
            .lock()
            .expect("tasks lock")
            .extend([writer, reader]);
        let guard = KillOnDrop(Some(link.clone()));
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
            Ok::<(), Error>(())
        };
        setup.await?;
        Ok(guard.defuse())
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
        if self.dead.is_tripped() || self.out.send(frame(req)).is_err() {
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
        self.dead.trip("closed");
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

/// Watches the connection; when it dies, reports Disconnected and reconnects (backing off,
/// jittered, from 50 ms to 1 s) until it is back (Connected) or `stop` is cancelled. Returns the
/// connection it ended with, if alive, for `close` to drain and end.
async fn supervise(
    ctx: LinkCtx,
    mut link: Arc<Link>,
    mut reconnect: Reconnect<SocketAddr>,
    current: Arc<Current<Arc<Link>>>,
    stop: CancellationToken,
    events: Events,
) -> Option<Arc<Link>> {
    loop {
        let reason = tokio::select! {
            _ = stop.cancelled() => return Some(link),
            r = link.dead.tripped() => r,
        };
        link.kill();
        current.down_if(|l| Arc::ptr_eq(l, &link));
        // Reporting waits for room in the router's queue; a close does not wait for it.
        tokio::select! {
            _ = stop.cancelled() => return None,
            () = events.disconnected(&ctx.cfg.name, reason) => {}
        }
        let ctx_ref = &ctx;
        link = reconnect.until(&stop, |_addr| Link::open(ctx_ref)).await?;
        reconnect.reset();
        if stop.is_cancelled() {
            return Some(link);
        }
        current.up(link.clone());
        tokio::select! {
            _ = stop.cancelled() => return Some(link),
            () = events.connected(&ctx.cfg.name) => {}
        }
    }
}

/// Settles one delivery on the connection that delivered it.
struct LoopAcker {
    link: Arc<Link>,
    tag: u64,
    dead_letter: bool,
    settled: bool,
    /// Counts the delivery as in flight until the acker is gone.
    _in_flight: InFlightGuard,
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
    }
}
