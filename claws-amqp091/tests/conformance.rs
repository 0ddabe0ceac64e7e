//! The claws conformance suite (`claws_test::conformance`) against RabbitMQ, fault-proxy cases
//! included.

mod common;

use claws_core::TimingBuilder;
use claws_core::TopologyBuilder;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp091::topology::{plan, TopologyOptions};
use claws_amqp091::AmqpClaw;
use claws_core::topology::{Subscriptions, DEAD_LETTER_QUEUE};
use claws_core::{jid, Claw, Packet, Result};
use claws_test::conformance::{self, ClawFactory, Options};
use lapin::options::{BasicGetOptions, QueueDeleteOptions};

/// A RabbitMQ node: the default 3.10 one, or the 4.x one with 4.3's defaults.
struct Rabbit {
    url: String,
    port: u16,
    four: bool,
}

impl Rabbit {
    fn three() -> Self {
        Self {
            url: common::url(),
            port: 5672,
            four: false,
        }
    }

    fn four() -> Self {
        Self {
            url: claws_test::rabbitmq4::url(),
            port: claws_test::rabbitmq4::PORT,
            four: true,
        }
    }

    /// A plain connection for checks and cleanup; retried for a while, since a case may have
    /// just restarted the broker.
    async fn raw(&self) -> lapin::Connection {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
                .await
            {
                Ok(conn) => return conn,
                Err(e) if tokio::time::Instant::now() > deadline => {
                    panic!("RabbitMQ must be running (run scripts/provision): {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

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
        if self.four {
            "amqp091 on RabbitMQ 4 (4.3's defaults)".into()
        } else {
            "amqp091 on RabbitMQ".into()
        }
    }

    async fn make(&self, jid: &str, opts: &Options) -> Result<Arc<dyn Claw>> {
        self.build(&self.url, jid, opts)
    }

    fn broker_addr(&self) -> Option<SocketAddr> {
        Some(SocketAddr::from(([127, 0, 0, 1], self.port)))
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
        if self.four {
            Some(claws_test::rabbitmq4::restart_app().await)
        } else {
            Some(claws_test::rabbitmq::restart_app().await)
        }
    }

    async fn dead_lettered(&self) -> Option<Vec<Packet>> {
        // Everything in the dead-letter queue; unacked, so closing the channel keeps it there.
        let conn = self.raw().await;
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
        let conn = self.raw().await;
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
    let report = conformance::run(Rabbit::three()).await;
    println!("{report}");
    report.assert_passed();
}

/// The RabbitMQ 4 tests take turns: the conformance run restarts the node.
static RABBITMQ4: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_on_rabbitmq4() {
    let _alone = RABBITMQ4.lock().await;
    claws_test::rabbitmq4::up()
        .await
        .expect("the RabbitMQ 4 node (scripts/provision)");
    let report = conformance::run(Rabbit::four()).await;
    println!("{report}");
    report.assert_passed();
}

#[tokio::test]
async fn transient_queues_refused_by_rabbitmq4_are_a_configuration_error() {
    // Not while the conformance run restarts the node.
    let _alone = RABBITMQ4.lock().await;
    claws_test::rabbitmq4::up()
        .await
        .expect("the RabbitMQ 4 node (scripts/provision)");
    // A vhost of its own: transient exchanges cannot share the default vhost's durable ones,
    // and what 4.3 refuses is the transient queue.
    for args in [
        &["add_vhost", "claws-transient"][..],
        &[
            "set_permissions",
            "-p",
            "claws-transient",
            "guest",
            ".*",
            ".*",
            ".*",
        ][..],
    ] {
        let _ = claws_test::rabbitmq4::ctl(args).await;
    }
    let u = common::uid();
    let claw = AmqpClaw::builder(
        &format!(
            "amqp://guest:guest@127.0.0.1:{}/claws-transient",
            claws_test::rabbitmq4::PORT
        ),
        format!("transient-{u}@test/a").as_str(),
    )
    .durable(false)
    .connect_timeout(Duration::from_secs(5))
    .build()
    .unwrap();
    let (events, _rx) = claws_core::Events::channel(16);
    let err = tokio::time::timeout(Duration::from_secs(30), claw.start(events))
        .await
        .expect("start answers")
        .unwrap_err();
    assert!(matches!(err, claws_core::Error::Config(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("transient_nonexcl_queues"), "{text}");
    assert!(text.contains("amqp091.durable = true"), "{text}");
}
