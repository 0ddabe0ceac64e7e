//! The claws conformance suite against the Qpid Proton C example broker with the `queue` address
//! scheme; broadcast, persistence, dead-letter listing and unroutable errors are reported as
//! skipped with their reasons.

mod common;

use claws_core::TimingBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::{Claw, Result};
use claws_test::conformance::{self, ClawFactory, Options};
use common::ProtonBroker;

struct Proton(ProtonBroker);

fn build(url: &str, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
    let claw = Amqp10Claw::builder(url, jid, AddressScheme::Queue)
        .name(opts.name.as_deref().unwrap_or("amqp10"))
        .max_deliveries(opts.max_deliveries)
        .prefetch(opts.prefetch)
        .subscriptions(opts.subscriptions)
        .send_timeout(Duration::from_secs(30))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
        .build()?;
    Ok(Arc::new(claw))
}

#[claws_core::async_trait]
impl ClawFactory for Proton {
    fn name(&self) -> String {
        "amqp10 (queue scheme) on the Qpid Proton example broker".into()
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        build(&self.0.url(), jid, opts)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(self.0.addr())
    }

    async fn make_at(&self, jid: &str, opts: &Options, addr: SocketAddr) -> Result<Arc<dyn Claw>> {
        build(&format!("amqp://{addr}"), jid, opts)
    }

    async fn unreachable(&self, jid: &str) -> Option<Result<Arc<dyn Claw>>> {
        Some(build("amqp://127.0.0.1:1", jid, &Options::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_the_proton_broker() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let report = conformance::Suite::new()
        .run(Proton(ProtonBroker::start()))
        .await;
    println!("{report}");
    report.assert_passed();
}
