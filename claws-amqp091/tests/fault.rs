//! Recovery under fire: the broker closes the receiver's and then the sender's connection
//! (`rabbitmqctl close_connection`, found by the connection name that carries the JID) while
//! thousands of stanzas flow. Every stanza must arrive.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use claws_core::topology::Subscriptions;
use claws_core::{Claw, Event, Packet};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stanza_arrives_while_connections_are_cut() {
    const N: usize = 2500;
    let u = uid();
    let receiver = start(builder(&format!("rcv-{u}@test/r")).prefetch(50)).await;
    let sender =
        start(builder(&format!("snd-{u}@test/s")).subscriptions(Subscriptions::none())).await;
    let Started {
        claw: rclaw,
        mut rx,
    } = receiver;
    let to = rclaw.jid().clone();

    // Send N stanzas, 64 in flight at a time.
    let sending = {
        let sender = sender.claw.clone();
        let u = u.clone();
        tokio::spawn(async move {
            let sem = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::with_capacity(N);
            for i in 0..N {
                let permit = sem.clone().acquire_owned().await.expect("semaphore open");
                let sender = sender.clone();
                let to = to.clone();
                let body = format!("{u} #{i}");
                tasks.push(tokio::spawn(async move {
                    let r = sender.send(&to, None, Packet::from(body)).await;
                    drop(permit);
                    r
                }));
            }
            for t in tasks {
                t.await
                    .expect("send task")
                    .expect("every send succeeds despite the cuts");
            }
        })
    };

    let mut seen = HashSet::new();
    let (mut disconnects, mut connects) = (0, 0);
    let mut cut_receiver = false;
    let mut cut_sender = false;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while seen.len() < N {
        let event = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} stanzas arrived", seen.len()))
            .expect("events open");
        match event {
            Event::Received(d) => {
                let body = d.packet.as_str().unwrap_or_default().to_owned();
                // An ack on a dead connection fails; the broker redelivers that stanza.
                if d.acker.ack().await.is_ok() && body.contains(&u) {
                    seen.insert(body);
                }
            }
            Event::Disconnected { .. } => disconnects += 1,
            Event::Connected { .. } => connects += 1,
            _ => {}
        }
        if !cut_receiver && seen.len() >= N / 5 {
            cut_receiver = true;
            let needle = format!("rcv-{u}@test/r");
            tokio::task::spawn_blocking(move || close_connection(&needle))
                .await
                .unwrap();
        }
        if !cut_sender && seen.len() >= N / 2 {
            cut_sender = true;
            let needle = format!("snd-{u}@test/s");
            tokio::task::spawn_blocking(move || close_connection(&needle))
                .await
                .unwrap();
        }
    }
    sending.await.expect("sender finished");
    assert_eq!(seen.len(), N);
    assert!(
        disconnects >= 1 && connects >= 1,
        "the receiver reported the cut ({disconnects}/{connects})"
    );
    rclaw.close().await.unwrap();
    sender.claw.close().await.unwrap();
    cleanup(&[&rclaw, &sender.claw]).await;
}
