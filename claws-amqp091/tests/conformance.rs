//! The claws conformance suite (`claws_test::conformance`) against RabbitMQ, fault-proxy cases
//! included.

mod common;

use claws_core::TimingBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp091::topology::{plan, TopologyOptions};
use claws_amqp091::AmqpClaw;
use claws_core::topology::{Subscriptions, DEAD_LETTER_QUEUE};
use claws_core::{jid, Claw, Packet, Result};
use claws_test::conformance::{self, ClawFactory, Options};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};

struct Rabbit;

impl Rabbit {
    fn build(&self, url: &str, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        let claw = AmqpClaw::builder(url, jid)
            .name(opts.name.as_deref().unwrap_or("amqp091"))
            .max_deliveries(opts.max_deliveries)
            .prefetch(opts.prefetch)
            .subscriptions(opts.subscriptions)
            .send_timeout(Duration::from_secs(30))
            .close_timeout(Duration::from_secs(30))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1))
            .build()?;
        Ok(Arc::new(claw))
    }
}

#[claws_core::async_trait]
impl ClawFactory for Rabbit {
    fn name(&self) -> String {
        "amqp091 on RabbitMQ".into()
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        self.build(&common::url(), jid, opts)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], 5672)))
    }

    async fn make_at(&self, jid: &str, opts: &Options, addr: SocketAddr) -> Result<Arc<dyn Claw>> {
        self.build(&format!("amqp://guest:guest@{addr}/%2f"), jid, opts)
    }

    async fn unreachable(&self, jid: &str) -> Option<Result<Arc<dyn Claw>>> {
        Some(self.build(
            "amqp://guest:guest@127.0.0.1:1/%2f",
            jid,
            &Options::default(),
        ))
    }

    /// Restarts RabbitMQ's application (`rabbitmqctl stop_app` / `start_app`): durable queues and
    /// persistent messages must survive, and running claws must reconnect.
    async fn restart_broker(&self) -> Option<Result<()>> {
        Some(claws_test::rabbitmq::restart_app().await)
    }

    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        // Everything in the dead-letter queue; unacked, so closing the channel keeps it there.
        let conn = common::raw().await;
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
        let conn = common::raw().await;
        let Ok(ch) = conn.create_channel().await else {
            return;
        };
        for j in jids {
            let Ok(j) = jid::parse(j) else { continue };
            let Ok(t) = plan(&j, Subscriptions::all(), &TopologyOptions::default()) else {
                continue;
            };
            for (q, _) in t.consumed() {
                let _ = ch
                    .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        // Remove the case's stanzas from the shared dead-letter queue (their routing key is the
        // JID, or the queue name for a copy the claw re-queued); leave everyone else's.
        let mine = |key: &str| {
            jids.iter().any(|j| {
                let bare = j.split('/').next().unwrap_or(j);
                [j.as_str(), bare]
                    .iter()
                    .any(|k| key == *k || key.ends_with(&format!(":{k}")))
            })
        };
        for _ in 0..100_000 {
            let Ok(Some(m)) = ch
                .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
                .await
            else {
                break;
            };
            if mine(m.delivery.routing_key.as_str()) {
                let _ = m.delivery.acker.ack(Default::default()).await;
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
