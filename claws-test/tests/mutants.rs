//! The suite has teeth: broken variants of the mem claw fail the cases that should catch them.

use std::sync::Arc;
use std::time::Duration;

use claws_core::jid::Jid;
use claws_core::{
    async_trait, Acker, Capabilities, Claw, Error, Event, Events, Packet, QueueKind, Result,
};
use claws_test::conformance::{ClawFactory, Options, Outcome, Suite};
use claws_test::mem::MemFactory;

#[derive(Debug, Clone, Copy)]
enum Bug {
    /// Loses the correlation id.
    DropsId,
    /// Acks on receipt, like the seed: failures are never redelivered.
    AcksOnReceipt,
    /// Reports every delivery as `direct`.
    WrongQueue,
    /// Forgets who sent a stanza.
    NoSender,
}

#[derive(Debug)]
struct Mutant {
    inner: Arc<dyn Claw>,
    bug: Bug,
}

/// An acker that does nothing (the stanza was acked on receipt).
struct Done;

#[async_trait]
impl Acker for Done {
    async fn ack(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    async fn reject(self: Box<Self>, _: &Error) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Claw for Mutant {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn jid(&self) -> &Jid {
        self.inner.jid()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn start(&self, events: Events) -> Result<()> {
        let (inner_events, mut rx) = Events::channel(64);
        let bug = self.bug;
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    Event::Connected { claw, .. } => events.connected(&claw).await,
                    Event::Disconnected { claw, reason } => {
                        events.disconnected(&claw, reason).await
                    }
                    Event::Received(mut d) => {
                        match bug {
                            Bug::DropsId => d.via.id = None,
                            Bug::WrongQueue => d.via.queue = QueueKind::Direct,
                            Bug::NoSender => d.via.from = None,
                            Bug::AcksOnReceipt => {
                                let acker = std::mem::replace(&mut d.acker, Box::new(Done));
                                let _ = acker.ack().await;
                            }
                        }
                        if events.received(d).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
        self.inner.start(inner_events).await
    }
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        self.inner.send(to, id, packet).await
    }
    async fn publish(&self, packet: Packet) -> Result<()> {
        self.inner.publish(packet).await
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

struct MutantFactory {
    inner: MemFactory,
    bug: Bug,
}

#[async_trait]
impl ClawFactory for MutantFactory {
    fn name(&self) -> String {
        format!("mem with {:?}", self.bug)
    }
    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        Ok(Arc::new(Mutant {
            inner: self.inner.make(jid, opts).await?,
            bug: self.bug,
        }))
    }
    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        self.inner.dead_lettered().await
    }
}

async fn failures(bug: Bug, cases: &[&str]) -> Vec<(&'static str, String)> {
    let factory = MutantFactory {
        inner: MemFactory::new(),
        bug,
    };
    let report = Suite::new()
        .only(cases)
        .patience(Duration::from_secs(2))
        .run(factory)
        .await;
    println!("{report}");
    assert_eq!(report.cases.len(), cases.len(), "every named case ran");
    report
        .cases
        .iter()
        .map(|c| match &c.outcome {
            Outcome::Failed(why) => (c.name, why.clone()),
            other => (c.name, format!("NOT FAILED: {other:?}")),
        })
        .collect()
}

#[tokio::test]
async fn a_lost_correlation_id_is_caught() {
    let f = failures(
        Bug::DropsId,
        &["direct_full_jid", "correlation_id_round_trip"],
    )
    .await;
    assert!(f[0].1.contains("via.id is None"), "{f:?}");
    assert!(f[1].1.contains("via.id is None"), "{f:?}");
}

#[tokio::test]
async fn acking_on_receipt_is_caught() {
    let f = failures(
        Bug::AcksOnReceipt,
        &["handler_error_redelivery", "dead_letter_after_bound"],
    )
    .await;
    assert!(f[0].1.contains("redelivered"), "{f:?}");
    assert!(f[1].1.contains("3 deliveries"), "{f:?}");
}

#[tokio::test]
async fn a_wrong_subscription_is_caught() {
    let f = failures(
        Bug::WrongQueue,
        &[
            "bare_jid_load_balancing",
            "broadcast_per_instance_and_group",
        ],
    )
    .await;
    assert!(f[0].1.contains("expected `group_direct`"), "{f:?}");
    assert!(f[1].1.contains("broadcast"), "{f:?}");
}

#[tokio::test]
async fn a_forgotten_sender_is_caught() {
    let f = failures(
        Bug::NoSender,
        &["direct_full_jid", "router_reply_through_origin"],
    )
    .await;
    assert!(f[0].1.contains("via.from is None"), "{f:?}");
    assert!(!f[1].1.starts_with("NOT FAILED"), "{f:?}");
}
