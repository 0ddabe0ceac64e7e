//! The custom loopbus claw passes the claws conformance suite, the fault-proxy cut included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use claws_core::{Claw, Packet, Result};
use claws_examples::loopbus::{LoopBroker, LoopClaw};
use claws_test::conformance::{self, ClawFactory, Options};

struct LoopFactory {
    broker: LoopBroker,
}

impl LoopFactory {
    fn build(&self, addr: SocketAddr, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        let claw = LoopClaw::builder(addr, jid)?
            .name(opts.name.as_deref().unwrap_or("loopbus"))
            .prefetch(opts.prefetch)
            .max_deliveries(opts.max_deliveries)
            .subscriptions(opts.subscriptions)
            .send_timeout(Duration::from_secs(30))
            .build()?;
        Ok(Arc::new(claw))
    }
}

#[claws_core::async_trait]
impl ClawFactory for LoopFactory {
    fn name(&self) -> String {
        format!("loopbus (examples) on {}", self.broker.addr())
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        self.build(self.broker.addr(), jid, opts)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(self.broker.addr())
    }

    async fn make_at(&self, jid: &str, opts: &Options, addr: SocketAddr) -> Result<Arc<dyn Claw>> {
        self.build(addr, jid, opts)
    }

    async fn restart_broker(&self) -> Option<Result<()>> {
        Some(
            self.broker
                .restart()
                .await
                .map_err(claws_core::Error::backend),
        )
    }

    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        Some(
            self.broker
                .dead_letters()
                .into_iter()
                .map(Packet::from)
                .collect(),
        )
    }

    async fn cleanup(&self, jids: &[String]) {
        for name in self.broker.queue_names() {
            let owner = name.split_once(':').map(|(_, jid)| jid);
            let ours = owner.is_some_and(|o| {
                jids.iter()
                    .any(|j| j == o || j.split('/').next() == Some(o))
            });
            if ours {
                self.broker.delete_queue(&name);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopbus_claw_passes_the_conformance_suite() {
    let factory = LoopFactory {
        broker: LoopBroker::start().await.expect("a loopback port"),
    };
    let report = conformance::run(factory).await;
    println!("{report}");
    report.assert_passed();
    let skipped: Vec<_> = report.skipped().map(|c| c.name).collect();
    assert!(
        skipped.is_empty(),
        "loopbus declares every capability, yet skipped {skipped:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenarios_run_over_the_loopbus_claw_too() {
    let factory = LoopFactory {
        broker: LoopBroker::start().await.expect("a loopback port"),
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../claws-test/scenarios/ping.xml"
    );
    let report = claws_test::scenario::Scenario::from_file(path)
        .expect("the example scenario parses")
        .check("replied_once", |out| match out.sent.len() {
            1 => Ok(()),
            n => Err(format!("{n} replies")),
        })
        .run_on(claws_core::Echo, &factory)
        .await;
    println!("{report}");
    report.assert_passed();
    assert_eq!(report.passed(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misuse_gets_the_runtime_s_typed_errors() {
    use claws_core::{Error, Events};
    let broker = LoopBroker::start().await.expect("a loopback port");
    let claw = LoopClaw::builder(broker.addr(), "svc@example.com/w1")
        .unwrap()
        .build()
        .unwrap();
    let to = claws_core::jid::parse("svc@example.com").unwrap();
    let err = claw
        .send(&to, None, Packet::from("<message/>"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotStarted { .. }), "{err}");
    let (events, _rx) = Events::channel(16);
    claw.start(events).await.unwrap();
    let (events, _rx2) = Events::channel(16);
    let err = claw.start(events).await.unwrap_err();
    assert!(matches!(err, Error::AlreadyStarted { .. }), "{err}");
    claw.close().await.unwrap();
    let (events, _rx3) = Events::channel(16);
    let err = claw.start(events).await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    let err = claw
        .send(&to, None, Packet::from("<message/>"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
}
