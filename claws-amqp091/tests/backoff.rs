//! Reconnection backs off when each connection dies at once: a connection that did not hold
//! does not start the delays over (issue 15: a poison message that killed every connection
//! made the 1.0 claw reconnect ~20 times a second).

mod common;

use std::time::{Duration, Instant};

use claws_amqp091::AmqpClaw;
use claws_core::{Claw, Event, Events, TimingBuilder};
use claws_test::fault::FaultProxy;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_at_once_are_made_no_faster_than_the_backoff() {
    let upstream = ([127, 0, 0, 1], claws_test::rabbitmq::port()).into();
    let proxy = FaultProxy::start(upstream).await.unwrap();
    let me = format!("backoff-{}@test/a", uid());
    let claw = AmqpClaw::builder(&format!("amqp://guest:guest@{}/%2f", proxy.addr()), &me)
        .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(800))
        .build()
        .unwrap();
    let (events, mut rx) = Events::channel(64);
    claw.start(events).await.unwrap();
    // Each connection is cut as soon as it is reported: 7 connections in a row.
    let mut connects = Vec::new();
    let started = Instant::now();
    while connects.len() < 7 {
        match tokio::time::timeout(WAIT, rx.recv()).await {
            Ok(Some(Event::Connected { .. })) => {
                connects.push(started.elapsed());
                proxy.cut();
            }
            Ok(Some(_)) => {}
            other => panic!("expected Connected, got {other:?}"),
        }
    }
    // Delays [d/2, d] with d = 100, 200, 400, 800, 800, 800 ms: at least 1.55 s in all
    // (before, the delay started over after every connect: ~7 connections in well under 1 s).
    let floor: Duration = [100u64, 200, 400, 800, 800, 800]
        .iter()
        .map(|ms| Duration::from_millis(*ms) / 2)
        .sum();
    let span = connects[6] - connects[0];
    assert!(
        span >= floor,
        "7 connections in {span:?}, under the backoff's {floor:?}: {connects:?}"
    );
    for pair in connects.windows(2).skip(3) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(400),
            "reconnected faster than the capped delay allows: {connects:?}"
        );
    }
    claw.close().await.unwrap();
    cleanup(&[&claw]).await;
}
