//! Helpers shared by the integration tests: unique names, a started claw with its event
//! channel, waiting for deliveries, cleanup through a plain lapin connection, rabbitmqctl.
#![allow(dead_code, unreachable_pub)]

use claws_core::TimingBuilder;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claws_amqp091::{AmqpClaw, AmqpClawBuilder};
use claws_core::{Claw, Delivery, Event, Events};
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::mpsc;

/// The broker the tests use (`CLAWS_AMQP_URL`, else the node under test:
/// `claws_test::rabbitmq::url`, the RabbitMQ 4 node with `TEST_RABBITMQ=4`).
pub fn url() -> String {
    std::env::var("CLAWS_AMQP_URL").unwrap_or_else(|_| claws_test::rabbitmq::url())
}

/// `rabbitmqctl ARGS...` on the node under test (see `claws_test::rabbitmq::ctl`).
pub fn ctl(args: &[&str]) -> std::process::Output {
    claws_test::rabbitmq::ctl(args)
}

/// The transient vhost's URL (see `claws_test::rabbitmq::transient_url`).
pub fn transient_url() -> String {
    claws_test::rabbitmq::transient_url()
}

/// A suffix unique to this test run and call.
pub fn uid() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{}-{:x}-{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub const WAIT: Duration = Duration::from_secs(20);

/// A started claw and what it reports.
pub struct Started {
    pub claw: Arc<AmqpClaw>,
    pub rx: mpsc::Receiver<Event>,
}

/// Starts the claw `builder` makes, asserting that it reports `Connected` first.
pub async fn start(builder: AmqpClawBuilder) -> Started {
    let claw = Arc::new(builder.build().expect("valid claw"));
    let (events, mut rx) = Events::channel(1024);
    claw.start(events).await.unwrap_or_else(|e| {
        panic!("start failed (is RabbitMQ running? run scripts/provision): {e}")
    });
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(Event::Connected { .. })) => {}
        other => panic!("expected Connected first, got {other:?}"),
    }
    Started { claw, rx }
}

/// A builder with test-friendly defaults.
pub fn builder(jid: &str) -> AmqpClawBuilder {
    AmqpClaw::builder(&url(), jid)
        .send_timeout(Duration::from_secs(20))
        .close_timeout(Duration::from_secs(20))
}

/// The next delivery whose payload contains `tag`; others (broadcasts of parallel tests) are
/// acked and skipped. Panics after [`WAIT`].
pub async fn next(rx: &mut mpsc::Receiver<Event>, tag: &str) -> Delivery {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no delivery containing `{tag}` within {WAIT:?}"))
            .expect("event channel open");
        match event {
            Event::Received(d) if d.packet.as_str().is_some_and(|s| s.contains(tag)) => return d,
            Event::Received(d) => {
                let _ = d.acker.ack().await;
            }
            _ => {}
        }
    }
}

/// Whether a delivery containing `tag` arrives within `within` (others are acked).
pub async fn nothing_more(rx: &mut mpsc::Receiver<Event>, tag: &str, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) | Ok(None) => return true,
            Ok(Some(Event::Received(d))) => {
                if d.packet.as_str().is_some_and(|s| s.contains(tag)) {
                    return false;
                }
                let _ = d.acker.ack().await;
            }
            Ok(Some(_)) => {}
        }
    }
}

/// A plain lapin connection for checks and cleanup.
pub async fn raw() -> Connection {
    Connection::connect(&url(), ConnectionProperties::default())
        .await
        .expect(
            "RabbitMQ must be running at CLAWS_AMQP_URL or the node under test (run scripts/provision)",
        )
}

/// Deletes every queue the claws consume.
pub async fn cleanup(claws: &[&AmqpClaw]) {
    let conn = raw().await;
    let ch = conn.create_channel().await.expect("channel");
    for claw in claws {
        for (q, _) in claw.topology().consumed() {
            let _ = ch
                .queue_delete(q.name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "cleanup".into()).await;
}

/// The `rabbitmqctl list_connections` row of the connection whose properties contain `needle`:
/// its client properties, then the columns asked for.
pub fn connection_row(needle: &str, columns: &[&str]) -> String {
    let mut args = vec!["-q", "list_connections", "client_properties"];
    args.extend_from_slice(columns);
    let out = ctl(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no connection named like `{needle}` in:\n{text}"))
        .to_owned()
}

/// Closes, from the broker's side, the connection whose name contains `needle`.
pub fn close_connection(needle: &str) {
    let row = connection_row(needle, &["pid"]);
    let pid = row
        .split_whitespace()
        .last()
        .expect("a row ends with the pid column")
        .to_owned();
    let out = ctl(&["-q", "close_connection", &pid, "claws fault test"]);
    assert!(out.status.success(), "rabbitmqctl close_connection failed");
}
