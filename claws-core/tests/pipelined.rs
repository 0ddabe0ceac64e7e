//! Pipelined sends within a lane: a handler's sends are published in lane order and the lane
//! goes on while their confirms are outstanding; a delivery is settled only once its handler
//! returned and every send it made was confirmed. A claw whose confirms the test resolves by
//! hand shows each rule.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use claws_core::claw::Confirmation;
use claws_core::mem::MemBroker;
use claws_core::{
    async_trait, handler_fn, jid, Acker, Capabilities, Claw, Delivery, Error, Events, Jid, Packet,
    QueueKind, Result, Router, Via,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// A send the test claw took: where to, what, and the means to give the broker's verdict.
struct Sent {
    body: String,
    verdict: oneshot::Sender<Result<()>>,
}

/// How a delivery was settled.
#[derive(Debug, PartialEq, Eq)]
enum Settled {
    Acked(u32),
    Rejected(u32, String),
}

/// A claw whose sends wait for the test to confirm them, and whose deliveries the test hands
/// in and watches being settled.
#[derive(Debug)]
struct Gated {
    jid: Jid,
    events: Mutex<Option<Events>>,
    sent: mpsc::UnboundedSender<Sent>,
    settled: mpsc::UnboundedSender<Settled>,
}

struct GatedAcker {
    n: u32,
    settled: mpsc::UnboundedSender<Settled>,
}

#[async_trait]
impl Acker for GatedAcker {
    async fn ack(self: Box<Self>) -> Result<()> {
        let _ = self.settled.send(Settled::Acked(self.n));
        Ok(())
    }
    async fn reject(self: Box<Self>, reason: &Error) -> Result<()> {
        let _ = self
            .settled
            .send(Settled::Rejected(self.n, reason.to_string()));
        Ok(())
    }
}

#[async_trait]
impl Claw for Gated {
    fn name(&self) -> &str {
        "gated"
    }
    fn jid(&self) -> &Jid {
        &self.jid
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
    }
    async fn start(&self, events: Events) -> Result<()> {
        *self.events.lock().unwrap() = Some(events);
        Ok(())
    }
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        self.send_ordered(to, id, packet).await?.await
    }
    async fn send_ordered(
        &self,
        _to: &Jid,
        _id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        let (verdict, rx) = oneshot::channel();
        let body = packet.as_str().unwrap_or("?").to_owned();
        self.sent
            .send(Sent { body, verdict })
            .map_err(|_| Error::Closed {
                claw: "gated".into(),
            })?;
        Ok(Confirmation::new(async move {
            rx.await.unwrap_or(Err(Error::Closed {
                claw: "gated".into(),
            }))
        }))
    }
    async fn publish(&self, _packet: Packet) -> Result<()> {
        Ok(())
    }
    async fn close(&self) -> Result<()> {
        // The router's dispatcher ends once no claw holds its events channel.
        self.events.lock().unwrap().take();
        Ok(())
    }
}

struct Harness {
    router: Router,
    claw: Arc<Gated>,
    sent: mpsc::UnboundedReceiver<Sent>,
    settled: mpsc::UnboundedReceiver<Settled>,
}

impl Harness {
    /// A router with one lane over the gated claw, and a handler that answers each packet
    /// `n` with `reply n` through `ctx.reply`.
    async fn new(max_unconfirmed: usize) -> Self {
        let (sent_tx, sent) = mpsc::unbounded_channel();
        let (settled_tx, settled) = mpsc::unbounded_channel();
        let claw = Arc::new(Gated {
            jid: jid::parse("svc@d/w").unwrap(),
            events: Mutex::new(None),
            sent: sent_tx,
            settled: settled_tx,
        });
        let router = Router::builder()
            .claw_arc(claw.clone())
            .concurrency(1)
            .max_unconfirmed(max_unconfirmed)
            .build()
            .unwrap();
        router
            .start(handler_fn(|p, v, ctx| async move {
                let n = p.as_str().unwrap_or("?").to_owned();
                ctx.reply(&v, format!("reply {n}")).await?;
                Ok(())
            }))
            .await
            .unwrap();
        Self {
            router,
            claw,
            sent,
            settled,
        }
    }

    /// Hands in delivery `n` from `user@d/u`.
    async fn deliver(&self, n: u32) {
        let events = self.claw.events.lock().unwrap().clone().unwrap();
        let mut via = Via::new("gated", QueueKind::Direct, "svc@d/w");
        via.from = Some(jid::parse("user@d/u").unwrap());
        let delivery = Delivery {
            packet: Packet::from(n.to_string()),
            via,
            attempt: 1,
            acker: Box::new(GatedAcker {
                n,
                settled: self.claw.settled.clone(),
            }),
        };
        events.received(delivery).await.unwrap();
    }

    async fn next_sent(&mut self) -> Sent {
        timeout(WAIT, self.sent.recv())
            .await
            .expect("a send in time")
            .expect("the claw lives")
    }

    async fn next_settled(&mut self) -> Settled {
        timeout(WAIT, self.settled.recv())
            .await
            .expect("a settlement in time")
            .expect("the claw lives")
    }

    fn nothing_settled_yet(&mut self) {
        assert!(
            matches!(
                self.settled.try_recv(),
                Err(mpsc::error::TryRecvError::Empty)
            ),
            "a delivery was settled before its send was confirmed"
        );
    }
}

fn confirm(sent: Sent) {
    let _ = sent.verdict.send(Ok(()));
}

/// (1) and (2): the lane handles stanza 2 while stanza 1's send waits for its confirm, and
/// neither is acked before its own send is confirmed.
#[tokio::test]
async fn the_lane_goes_on_while_confirms_are_outstanding() {
    let mut h = Harness::new(64).await;
    h.deliver(1).await;
    h.deliver(2).await;
    let first = h.next_sent().await;
    // Stanza 2 was handled (its reply sent) while stanza 1's confirm is outstanding.
    let second = h.next_sent().await;
    assert_eq!(
        (first.body.as_str(), second.body.as_str()),
        ("reply 1", "reply 2")
    );
    h.nothing_settled_yet();
    confirm(first);
    assert_eq!(h.next_settled().await, Settled::Acked(1));
    h.nothing_settled_yet();
    confirm(second);
    assert_eq!(h.next_settled().await, Settled::Acked(2));
    h.router.close().await.unwrap();
}

/// (3): a send that is not confirmed fails its delivery as a handler error would (rejected,
/// so redelivered or dead-lettered); the deliveries after it are unaffected.
#[tokio::test]
async fn a_failed_confirm_rejects_the_delivery() {
    let mut h = Harness::new(64).await;
    h.deliver(1).await;
    h.deliver(2).await;
    let first = h.next_sent().await;
    let second = h.next_sent().await;
    let _ = first.verdict.send(Err(Error::NoRoute {
        to: "user@d/u".into(),
        claw: "gated".into(),
    }));
    confirm(second);
    match h.next_settled().await {
        Settled::Rejected(1, reason) => assert!(reason.contains("user@d/u"), "{reason}"),
        other => panic!("delivery 1 must be rejected, not {other:?}"),
    }
    assert_eq!(h.next_settled().await, Settled::Acked(2));
    h.router.close().await.unwrap();
}

/// (4): one sender's replies go out in the order its stanzas came, however their confirms
/// come back; deliveries are settled in lane order.
#[tokio::test]
async fn order_is_kept_whatever_order_confirms_come_in() {
    let mut h = Harness::new(64).await;
    for n in 1..=20 {
        h.deliver(n).await;
    }
    let mut sent = Vec::new();
    for _ in 1..=20 {
        sent.push(h.next_sent().await);
    }
    let bodies: Vec<_> = sent.iter().map(|s| s.body.clone()).collect();
    let expected: Vec<_> = (1..=20).map(|n| format!("reply {n}")).collect();
    assert_eq!(bodies, expected);
    h.nothing_settled_yet();
    // Confirmed last to first.
    while let Some(s) = sent.pop() {
        confirm(s);
    }
    for n in 1..=20 {
        assert_eq!(h.next_settled().await, Settled::Acked(n));
    }
    h.router.close().await.unwrap();
}

/// (5): closing waits until every outstanding confirm resolved and its delivery was settled.
#[tokio::test(start_paused = true)]
async fn close_waits_for_outstanding_confirms() {
    let mut h = Harness::new(64).await;
    h.deliver(1).await;
    let first = h.next_sent().await;
    let router = h.router.clone();
    let mut closing = tokio::spawn(async move { router.close().await });
    // Paused time: this only passes once every task waits, with close still unfinished.
    assert!(
        timeout(Duration::from_secs(1), &mut closing).await.is_err(),
        "close returned while a send waited for its confirm"
    );
    h.nothing_settled_yet();
    confirm(first);
    assert_eq!(h.next_settled().await, Settled::Acked(1));
    timeout(WAIT, closing)
        .await
        .expect("close ends once confirmed")
        .unwrap()
        .unwrap();
}

/// Backpressure: with room for 2 unconfirmed sends, the lane handles a third stanza (its
/// send is made) and then waits; a fourth is handled only once a confirm came back.
#[tokio::test(start_paused = true)]
async fn a_lane_waits_when_its_unconfirmed_sends_reach_the_bound() {
    let mut h = Harness::new(2).await;
    for n in 1..=4 {
        h.deliver(n).await;
    }
    let first = h.next_sent().await;
    let second = h.next_sent().await;
    let third = h.next_sent().await;
    assert_eq!(third.body, "reply 3");
    assert!(
        timeout(Duration::from_secs(1), h.sent.recv())
            .await
            .is_err(),
        "stanza 4 was handled while the lane had 2 unconfirmed sends and a third waiting"
    );
    confirm(first);
    assert_eq!(h.next_settled().await, Settled::Acked(1));
    assert_eq!(h.next_sent().await.body, "reply 4");
    // The rest are never confirmed (their verdicts dropped): their deliveries are rejected,
    // and close does not wait for them forever.
    drop((second, third));
    h.sent = mpsc::unbounded_channel().1;
    timeout(WAIT, h.router.close()).await.unwrap().unwrap();
    for n in 2..=4 {
        assert!(
            matches!(h.next_settled().await, Settled::Rejected(m, _) if m == n),
            "delivery {n} rejected"
        );
    }
}

/// `max_unconfirmed(0)`: no pipelining, each send is awaited where it is made.
#[tokio::test(start_paused = true)]
async fn without_pipelining_each_send_is_awaited_in_the_handler() {
    let mut h = Harness::new(0).await;
    h.deliver(1).await;
    h.deliver(2).await;
    let first = h.next_sent().await;
    assert!(
        timeout(Duration::from_secs(1), h.sent.recv())
            .await
            .is_err(),
        "stanza 2 was handled before stanza 1's send was confirmed"
    );
    confirm(first);
    assert_eq!(h.next_settled().await, Settled::Acked(1));
    confirm(h.next_sent().await);
    assert_eq!(h.next_settled().await, Settled::Acked(2));
    h.router.close().await.unwrap();
}

/// `Router::settle_after`: a handler that handles a send's failure itself (the gateway
/// answers with an error stanza) gets the delivery acked, its handling run off the lane.
#[tokio::test]
async fn settle_after_runs_the_handlers_own_failure_handling() {
    let (sent_tx, mut sent) = mpsc::unbounded_channel();
    let (settled_tx, mut settled) = mpsc::unbounded_channel();
    let claw = Arc::new(Gated {
        jid: jid::parse("svc@d/w").unwrap(),
        events: Mutex::new(None),
        sent: sent_tx,
        settled: settled_tx,
    });
    let (failures_tx, mut failures) = mpsc::unbounded_channel();
    let router = Router::builder().claw_arc(claw.clone()).build().unwrap();
    router
        .start(handler_fn(move |_, v, ctx| {
            let failures = failures_tx.clone();
            async move {
                let to = v.from.clone().unwrap();
                let claw = ctx.router().claw("gated")?;
                let confirmation = claw.send_ordered(&to, None, Packet::from("x")).await?;
                ctx.router()
                    .settle_after(Confirmation::new(async move {
                        if let Err(err) = confirmation.await {
                            let _ = failures.send(err.to_string());
                        }
                        Ok(())
                    }))
                    .await?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    let h = Harness {
        router: router.clone(),
        claw,
        sent: mpsc::unbounded_channel().1,
        settled: mpsc::unbounded_channel().1,
    };
    h.deliver(7).await;
    let s = timeout(WAIT, sent.recv()).await.unwrap().unwrap();
    assert!(settled.try_recv().is_err(), "settled before the verdict");
    let _ = s.verdict.send(Err(Error::NoRoute {
        to: "user@d/u".into(),
        claw: "gated".into(),
    }));
    let failure = timeout(WAIT, failures.recv()).await.unwrap().unwrap();
    assert!(failure.contains("user@d/u"), "{failure}");
    assert_eq!(
        timeout(WAIT, settled.recv()).await.unwrap().unwrap(),
        Settled::Acked(7)
    );
    router.close().await.unwrap();
}

/// On the mem claw (whose sends are confirmed when they return) a handler's replies behave
/// as before: delivered in order, deliveries acked, nothing left in flight on close.
#[tokio::test]
async fn mem_claw_replies_arrive_in_order() {
    let broker = MemBroker::new();
    let router = Router::builder()
        .claw(broker.claw("svc@d/w").unwrap())
        .build()
        .unwrap();
    router
        .start(handler_fn(|p, v, ctx| async move {
            ctx.reply(&v, p).await?;
            Ok(())
        }))
        .await
        .unwrap();
    let client = broker.claw("client@d/c").unwrap();
    let (events, mut rx) = Events::channel(64);
    client.start(events).await.unwrap();
    let to = jid::parse("svc@d/w").unwrap();
    for n in 0..50 {
        client
            .send(&to, None, Packet::from(n.to_string()))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 50 {
        match timeout(WAIT, rx.recv()).await.unwrap().unwrap() {
            claws_core::Event::Received(d) => {
                got.push(d.packet.as_str().unwrap().parse::<u32>().unwrap());
                d.acker.ack().await.unwrap();
            }
            _ => continue,
        }
    }
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    router.close().await.unwrap();
    client.close().await.unwrap();
}
