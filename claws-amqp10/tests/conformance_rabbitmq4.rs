//! The claws conformance suite against RabbitMQ 4 (127.0.0.1:5690, `scripts/rabbitmq4`, with
//! 4.3's defaults: v1 addresses refused) with the `rabbitmq` address scheme and v2 addresses,
//! fault-proxy and broker-restart cases included.
//!
//! The claws are built with `addresses(Addresses::V2)`: the suite reads `capabilities()` from a
//! claw that has not connected, and with `auto` the version (hence `unroutable_errors`) is only
//! known once connected (`tests/rabbitmq4.rs` covers `auto`).

use claws_core::TimingBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp10::{AddressScheme, Addresses, Amqp10Claw};
use claws_core::topology::{queues, Subscriptions, DEAD_LETTER_QUEUE};
use claws_core::{jid, Claw, Packet, Result};
use claws_test::conformance::{self, ClawFactory, Options};
use claws_test::rabbitmq4;
use lapin::options::{BasicGetOptions, QueueDeleteOptions};

struct Rabbit;

fn build(url: &str, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
    let claw = Amqp10Claw::builder(url, jid, AddressScheme::RabbitMq)
        .addresses(Addresses::V2)
        .name(opts.name.as_deref().unwrap_or("amqp10"))
        .max_deliveries(opts.max_deliveries)
        .prefetch(opts.prefetch)
        .subscriptions(opts.subscriptions)
        .send_timeout(Duration::from_secs(30))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
        .build()?;
    Ok(Arc::new(claw))
}

async fn raw() -> lapin::Connection {
    lapin::Connection::connect(rabbitmq4::URL, Default::default())
        .await
        .expect("RabbitMQ 4 at 127.0.0.1:5690 (scripts/rabbitmq4 up)")
}

#[claws_core::async_trait]
impl ClawFactory for Rabbit {
    fn name(&self) -> String {
        "amqp10 (rabbitmq scheme, v2 addresses) on RabbitMQ 4".into()
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        build(rabbitmq4::URL, jid, opts)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], rabbitmq4::PORT)))
    }

    async fn make_at(&self, jid: &str, opts: &Options, addr: SocketAddr) -> Result<Arc<dyn Claw>> {
        build(&format!("amqp://guest:guest@{addr}"), jid, opts)
    }

    async fn unreachable(&self, jid: &str) -> Option<Result<Arc<dyn Claw>>> {
        Some(build(
            "amqp://guest:guest@127.0.0.1:1",
            jid,
            &Options::default(),
        ))
    }

    /// Restarts the RabbitMQ 4 node's application (`scripts/rabbitmq4 restart_app`): the
    /// durable queues and their stanzas survive, and running claws reconnect.
    async fn restart_broker(&self) -> Option<Result<()>> {
        Some(rabbitmq4::restart_app().await)
    }

    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        // Unacked gets: closing the channel leaves them in the queue.
        let conn = raw().await;
        let ch = conn.create_channel().await.ok()?;
        let mut out = Vec::new();
        while let Ok(Some(m)) = ch
            .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
            .await
        {
            out.push(Packet::from(m.delivery.data));
            if out.len() >= 100_000 {
                break;
            }
        }
        let _ = conn.close(200, "ok".into()).await;
        Some(out)
    }

    async fn cleanup(&self, jids: &[String]) {
        let conn = raw().await;
        let Ok(ch) = conn.create_channel().await else {
            return;
        };
        for j in jids {
            let Ok(j) = jid::parse(j) else { continue };
            let Ok(qs) = queues(&j, Subscriptions::all()) else {
                continue;
            };
            for q in qs {
                let _ = ch
                    .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "ok".into()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_rabbitmq4() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    rabbitmq4::up()
        .await
        .expect("the RabbitMQ 4 node (scripts/rabbitmq4 up; scripts/provision sets it up)");
    let report = conformance::run(Rabbit).await;
    println!("{report}");
    report.assert_passed();
}
