//! The claws conformance suite against RabbitMQ with the `rabbitmq` address scheme, fault-proxy
//! and broker-restart cases included.

mod common;

use claws_core::TimingBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::topology::{queues, Subscriptions, DEAD_LETTER_QUEUE};
use claws_core::{jid, Claw, Packet, Result};
use claws_test::conformance::{self, ClawFactory, Options};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};

struct Rabbit;

fn build(url: &str, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
    let claw = Amqp10Claw::builder(url, jid, AddressScheme::RabbitMq)
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
    lapin::Connection::connect(&common::url(), Default::default())
        .await
        .expect("RabbitMQ at 127.0.0.1:5672 (run scripts/provision)")
}

#[claws_core::async_trait]
impl ClawFactory for Rabbit {
    fn name(&self) -> String {
        "amqp10 (rabbitmq scheme) on RabbitMQ".into()
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        build(&common::url(), jid, opts)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(common::rabbit())
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

    /// Restarts RabbitMQ's application (`rabbitmqctl stop_app` / `start_app`): the durable
    /// queues and their stanzas survive, and running claws reconnect.
    async fn restart_broker(&self) -> Option<Result<()>> {
        Some(claws_test::rabbitmq::restart_app().await)
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
async fn conformance_on_rabbitmq() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let report = conformance::run(Rabbit).await;
    println!("{report}");
    report.assert_passed();
}
