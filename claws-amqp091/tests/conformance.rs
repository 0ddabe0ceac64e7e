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
            // Bounded: a message lapin cannot decode kills the connection under the get.
            let get = ch.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default());
            let Ok(Ok(Some(m))) = tokio::time::timeout(Duration::from_secs(10), get).await else {
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

/// `rabbitmqctl list_queues name durable arguments` on the RabbitMQ 4 node, one line per queue.
async fn queues_on_rabbitmq4(vhost: &str) -> String {
    claws_test::rabbitmq4::ctl(&[
        "-q",
        "list_queues",
        "-p",
        vhost,
        "name",
        "durable",
        "arguments",
    ])
    .await
    .expect("rabbitmqctl on the RabbitMQ 4 node")
}

fn line<'a>(listing: &'a str, queue: &str) -> &'a str {
    listing
        .lines()
        .find(|l| l.split('\t').next() == Some(queue))
        .unwrap_or_else(|| panic!("queue {queue} not listed:\n{listing}"))
}

/// RabbitMQ 4.3 refuses transient queues shared by connections (541, closing the connection):
/// `durable = false` declares them durable with `x-expires` instead, and messages stay
/// non-persistent.
#[tokio::test]
async fn transient_mode_works_on_rabbitmq4_with_expiring_durable_queues() {
    // Not while the conformance run restarts the node.
    let _alone = RABBITMQ4.lock().await;
    claws_test::rabbitmq4::up()
        .await
        .expect("the RabbitMQ 4 node (scripts/provision)");
    // A vhost of its own: transient exchanges cannot share the default vhost's durable ones.
    let url = claws_test::rabbitmq4::vhost_url("claws-transient")
        .await
        .expect("a vhost on the RabbitMQ 4 node");
    let u = common::uid();
    let transient = |jid: &str| {
        AmqpClaw::builder(&url, jid)
            .durable(false)
            .queue_expiry(Duration::from_secs(120))
            .connect_timeout(Duration::from_secs(5))
            .send_timeout(Duration::from_secs(20))
    };
    // An instance starts (its first connection is refused, the second declares durable
    // queues), takes a stanza end to end, and closes, leaving its queues.
    let server_jid = format!("transient-{u}@test/a");
    let server = common::start(transient(&server_jid)).await;
    let client = common::start(
        transient(&format!("transient-client-{u}@test/c")).subscriptions(Subscriptions::none()),
    )
    .await;
    let to = jid::parse(&server_jid).unwrap();
    client
        .claw
        .send(&to, None, Packet::from(format!("first {u}")))
        .await
        .unwrap();
    let mut rx = server.rx;
    let d = common::next(&mut rx, &format!("first {u}")).await;
    d.acker.ack().await.unwrap();
    let planned: Vec<_> = server
        .claw
        .topology()
        .consumed()
        .map(|(q, _)| (q.name.clone(), q.durable))
        .collect();
    assert!(planned.iter().all(|(_, durable)| *durable), "{planned:?}");
    server.claw.close().await.unwrap();

    let listing = queues_on_rabbitmq4("claws-transient").await;
    for (name, _) in &planned {
        let l = line(&listing, name);
        assert!(l.contains("\ttrue\t"), "durable: {l}");
        assert!(
            l.contains("x-expires") && l.contains("120000"),
            "expires: {l}"
        );
    }
    // What is sent is not persistent: read it back from the closed instance's queue.
    client
        .claw
        .send(&to, None, Packet::from(format!("second {u}")))
        .await
        .unwrap();
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let own = format!("xmpp_direct:{server_jid}");
    let got = ch
        .basic_get(own.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the stanza sent to the closed instance is queued");
    assert_eq!(
        String::from_utf8_lossy(&got.delivery.data),
        format!("second {u}")
    );
    assert_eq!(
        got.delivery.properties.delivery_mode(),
        &Some(1),
        "non-persistent"
    );
    for (name, _) in &planned {
        let _ = ch
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "ok".into()).await;
    client.claw.close().await.unwrap();
}

/// Quorum queues get `x-delivery-limit = max_deliveries` (RabbitMQ 4's default is 20, 3.x has
/// none), and a queue declared before claws set it (another limit, or none) is adopted, not a
/// failed start.
async fn delivery_limit_is_max_deliveries(url: &str, ctl: impl AsyncFn(&[&str]) -> String) {
    let u = common::uid();
    let group = format!("limit-{u}@test");
    // An old deployment's group queue: quorum, no delivery limit.
    let conn = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString("xmpp_dead_letter".into()),
    );
    let old = format!("xmpp_fanout:{group}");
    ch.queue_declare(
        old.as_str().into(),
        lapin::options::QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    let s = common::start(
        AmqpClaw::builder(url, format!("{group}/a").as_str())
            .quorum_groups(true)
            .max_deliveries(3)
            .send_timeout(Duration::from_secs(20)),
    )
    .await;
    let listing = ctl(&["-q", "list_queues", "name", "arguments"]).await;
    let fresh = line(&listing, &format!("xmpp_direct:{group}"));
    assert!(
        fresh.contains("x-delivery-limit") && fresh.contains(",3}"),
        "{fresh}"
    );
    let adopted = line(&listing, &old);
    assert!(!adopted.contains("x-delivery-limit"), "{adopted}");
    s.claw.close().await.unwrap();
    for (q, _) in s.claw.topology().consumed() {
        let _ = ch
            .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "ok".into()).await;
}

#[tokio::test]
async fn delivery_limit_is_max_deliveries_on_rabbitmq() {
    delivery_limit_is_max_deliveries(&common::url(), async |args: &[&str]| {
        String::from_utf8_lossy(&common::ctl(args).stdout).into_owned()
    })
    .await;
}

#[tokio::test]
async fn delivery_limit_is_max_deliveries_on_rabbitmq4() {
    let _alone = RABBITMQ4.lock().await;
    claws_test::rabbitmq4::up()
        .await
        .expect("the RabbitMQ 4 node (scripts/provision)");
    delivery_limit_is_max_deliveries(&claws_test::rabbitmq4::url(), async |args: &[&str]| {
        claws_test::rabbitmq4::ctl(args)
            .await
            .expect("rabbitmqctl on the RabbitMQ 4 node")
    })
    .await;
}
