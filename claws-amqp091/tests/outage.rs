//! Outages through a fault proxy: a cut connection is reported and recovered; sends during an
//! outage wait (bounded) and then fail with `Error::Disconnected`.

mod common;

use claws_core::TimingBuilder;
use std::net::SocketAddr;
use std::time::Duration;

use claws_amqp091::AmqpClaw;
use claws_core::topology::Subscriptions;
use claws_core::{Claw, Error, Event, Packet};
use claws_test::fault::FaultProxy;
use common::*;

fn via(proxy: &FaultProxy, jid: &str) -> claws_amqp091::AmqpClawBuilder {
    AmqpClaw::builder(&format!("amqp://guest:guest@{}/%2f", proxy.addr()), jid)
        .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .close_timeout(Duration::from_secs(10))
}

async fn wait_for(
    rx: &mut tokio::sync::mpsc::Receiver<Event>,
    what: &str,
    f: impl Fn(&Event) -> bool,
) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let e = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
            .expect("events open");
        if f(&e) {
            return;
        }
        if let Event::Received(d) = e {
            let _ = d.acker.ack().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_is_reported_recovered_and_sends_wait_bounded() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("claws_amqp091=debug,lapin=debug")
        .with_test_writer()
        .try_init();
    let u = uid();
    let proxy = FaultProxy::start(SocketAddr::from((
        [127, 0, 0, 1],
        claws_test::rabbitmq::port(),
    )))
    .await
    .unwrap();
    let Started { claw, mut rx } =
        start(via(&proxy, &format!("cut-{u}@test/a")).send_timeout(Duration::from_millis(500)))
            .await;

    // Cut and refuse: Disconnected; a send waits send_timeout and fails clearly.
    proxy.refuse(true);
    proxy.cut();
    wait_for(&mut rx, "Disconnected", |e| {
        matches!(e, Event::Disconnected { .. })
    })
    .await;
    let started = std::time::Instant::now();
    let err = claw.publish(Packet::from("x")).await.unwrap_err();
    assert!(matches!(err, Error::Disconnected { .. }), "{err}");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Heal: Connected again, and the claw receives again.
    proxy.heal();
    wait_for(&mut rx, "Connected", |e| {
        matches!(e, Event::Connected { .. })
    })
    .await;
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    client
        .claw
        .send(claw.jid(), None, Packet::from(format!("after {u}")))
        .await
        .unwrap();
    let d = next(&mut rx, &u).await;
    d.acker.ack().await.unwrap();

    claw.close().await.unwrap();
    client.claw.close().await.unwrap();
    cleanup(&[&claw, &client.claw]).await;
}
