//! End to end: a real XMPP client (slixmpp) logs in to a real Prosody, configured and started by
//! the test, and talks to `echo@<component domain>`; the gateway (the component claw plus the
//! RabbitMQ claw) carries the stanzas over RabbitMQ to `Echo` workers, and their replies back.
//!
//! The gateway survives Prosody restarting and RabbitMQ dropping its connection.
//!
//! Needs Prosody, python3-slixmpp and RabbitMQ at 127.0.0.1:5672 (the node `TEST_RABBITMQ`
//! selects, or `CLAWS_AMQP_URL`); run
//! `scripts/provision`. Missing, they fail the test.

mod common;

use claws_core::TimingBuilder;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp091::AmqpClaw;
use claws_component::{ComponentClaw, Gateway};
use claws_core::{async_trait, Context, Echo, Handler, HandlerResult, Packet, Router, Via};
use common::{xmpp_client, Prosody};
use lapin::options::QueueDeleteOptions;
use tokio::sync::mpsc;

fn amqp_url() -> String {
    std::env::var("CLAWS_AMQP_URL").unwrap_or_else(|_| claws_test::rabbitmq::url())
}

/// The gateway's handler, also telling the test about connection events.
struct Observed {
    gateway: Gateway,
    events: mpsc::UnboundedSender<String>,
}

#[async_trait]
impl Handler for Observed {
    async fn connected(&self, claw: &str, ctx: &Context) {
        let _ = self.events.send(format!("connected {claw}"));
        self.gateway.connected(claw, ctx).await;
    }

    async fn disconnected(&self, claw: &str, reason: &str, ctx: &Context) {
        let _ = self.events.send(format!("disconnected {claw}"));
        self.gateway.disconnected(claw, reason, ctx).await;
    }

    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        self.gateway.received(packet, via, ctx).await
    }
}

struct Setup {
    prosody: Prosody,
    gateway: Router,
    workers: Vec<Router>,
    bus_claws: Vec<Arc<AmqpClaw>>,
    events: mpsc::UnboundedReceiver<String>,
    target: String,
}

impl Setup {
    async fn start() -> Setup {
        let prosody = Prosody::start().await;
        let domain = prosody.component_domain.clone();
        let url = amqp_url();
        let mut bus_claws = Vec::new();

        // Two Echo workers sharing `echo@<domain>`, as two processes would.
        let mut workers = Vec::new();
        for w in ["w1", "w2"] {
            let claw = Arc::new(
                AmqpClaw::builder(&url, format!("echo@{domain}/{w}"))
                    .name(w)
                    .build()
                    .unwrap(),
            );
            bus_claws.push(claw.clone());
            let router = Router::builder().claw_arc(claw).build().unwrap();
            router
                .start(Echo)
                .await
                .expect("RabbitMQ must be running (scripts/provision)");
            workers.push(router);
        }

        let component = ComponentClaw::builder(&prosody.component_addr(), &domain, &prosody.secret)
            .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(500))
            .build()
            .unwrap();
        let bus = Arc::new(
            AmqpClaw::builder(&url, format!("gateway@{domain}/gw1"))
                .name("amqp091")
                .build()
                .unwrap(),
        );
        bus_claws.push(bus.clone());
        let gateway = Router::builder()
            .claw_arc(bus)
            .claw(component)
            .default_claw("amqp091")
            .build()
            .unwrap();
        let (tx, mut events) = mpsc::unbounded_channel();
        gateway
            .start(Observed {
                gateway: Gateway::new(&domain),
                events: tx,
            })
            .await
            .unwrap_or_else(|e| panic!("the gateway starts: {e}\n{}", prosody.logs()));
        let mut seen = vec![next(&mut events).await, next(&mut events).await];
        seen.sort();
        assert_eq!(seen, ["connected amqp091", "connected component"]);
        Setup {
            target: format!("echo@{domain}"),
            prosody,
            gateway,
            workers,
            bus_claws,
            events,
        }
    }

    /// Closes everything and deletes the queues the test declared.
    async fn finish(mut self) {
        self.gateway.close().await.unwrap();
        for w in &self.workers {
            w.close().await.unwrap();
        }
        self.prosody.stop().await;
        let conn = lapin::Connection::connect(&amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("RabbitMQ for cleanup");
        let ch = conn.create_channel().await.unwrap();
        for claw in &self.bus_claws {
            for (q, _) in claw.topology().consumed() {
                let _ = ch
                    .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "cleanup".into()).await;
    }
}

async fn next(events: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .expect("a connection event within 20 s")
        .expect("the gateway is running")
}

fn assert_both_replies(out: &str, target: &str) {
    assert!(out.contains(&format!("message-reply {target}")), "{out}");
    assert!(out.contains(&format!("ping-reply {target}")), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_gets_message_and_ping_replies_from_workers_behind_rabbitmq() {
    let setup = Setup::start().await;
    let out = xmpp_client(&setup.prosody, &setup.target).await;
    assert_both_replies(&out, &setup.target);
    setup.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_survives_prosody_restarting() {
    let mut setup = Setup::start().await;
    let out = xmpp_client(&setup.prosody, &setup.target).await;
    assert_both_replies(&out, &setup.target);

    setup.prosody.stop().await;
    assert_eq!(next(&mut setup.events).await, "disconnected component");
    setup.prosody.launch().await;
    assert_eq!(next(&mut setup.events).await, "connected component");

    let out = xmpp_client(&setup.prosody, &setup.target).await;
    assert_both_replies(&out, &setup.target);
    setup.finish().await;
}

/// Closes, from RabbitMQ's side, the connection whose client properties mention `needle`.
async fn close_amqp_connection(needle: &str) {
    let needle = needle.to_owned();
    tokio::task::spawn_blocking(move || {
        let ctl = claws_test::rabbitmq::ctl; // the node under test (TEST_RABBITMQ)
        let out = ctl(&["-q", "list_connections", "pid", "client_properties"]);
        let text = String::from_utf8_lossy(&out.stdout);
        let pid = text
            .lines()
            .find(|l| l.contains(&needle))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no connection like `{needle}` in:\n{text}"))
            .to_owned();
        let closed = ctl(&["-q", "close_connection", &pid, "claws-component test"]);
        assert!(
            closed.status.success(),
            "rabbitmqctl close_connection failed: {}",
            String::from_utf8_lossy(&closed.stderr)
        );
    })
    .await
    .expect("rabbitmqctl task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_survives_rabbitmq_dropping_its_connection() {
    let mut setup = Setup::start().await;
    let domain = setup.prosody.component_domain.clone();
    close_amqp_connection(&format!("gateway@{domain}/gw1")).await;
    assert_eq!(next(&mut setup.events).await, "disconnected amqp091");
    assert_eq!(next(&mut setup.events).await, "connected amqp091");

    let out = xmpp_client(&setup.prosody, &setup.target).await;
    assert_both_replies(&out, &setup.target);
    setup.finish().await;
}
