//! Peers claws did not write: a publisher that never sets `reply_to` (the Erlang claw, scripts)
//! gets its reply through the stanza's `from`, and an echo service never loops.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claws_core::{handler_fn, Claw, Echo, Handler, Packet, Router};
use common::*;
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_peer_without_reply_to_goes_to_its_from_and_never_loops() {
    let u = uid();
    let me = format!("claws-{u}@x/r1");
    let peer = format!("orig-{u}@x/e1");
    // The echo service, counting what it is handed.
    let handled = Arc::new(AtomicU32::new(0));
    let claw = Arc::new(builder(&me).build().unwrap());
    let router = Router::builder().claw(claw.clone()).build().unwrap();
    let count = handled.clone();
    router
        .start(handler_fn(move |packet, via, ctx| {
            let count = count.clone();
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                Echo.received(packet, via, &ctx).await
            }
        }))
        .await
        .expect("RabbitMQ (scripts/provision)");

    // The peer: a queue bound under its own JID, and a publish with no reply_to, the way the
    // Erlang claw does it.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let inbox = format!("peer-inbox-{u}");
    ch.queue_declare(
        ShortString::from(inbox.as_str()),
        QueueDeclareOptions {
            // Exclusive: RabbitMQ 4.3 refuses transient queues shared by connections.
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        ShortString::from(inbox.as_str()),
        ShortString::from("xmpp_direct"),
        ShortString::from(peer.as_str()),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut replies = ch
        .basic_consume(
            ShortString::from(inbox.as_str()),
            ShortString::from("peer"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let stanza = format!("<message from='{peer}' to='{me}' id='m1'><body>hi {u}</body></message>");
    ch.basic_publish(
        ShortString::from("xmpp_direct"),
        ShortString::from(me.as_str()),
        BasicPublishOptions::default(),
        stanza.as_bytes(),
        BasicProperties::default().with_correlation_id(ShortString::from("m1")),
    )
    .await
    .unwrap()
    .await
    .unwrap();

    // Exactly one echo reaches the peer, addressed back to it.
    let echo = tokio::time::timeout(WAIT, replies.next())
        .await
        .expect("the echo reached the peer")
        .unwrap()
        .unwrap();
    let text = String::from_utf8(echo.data.clone()).unwrap();
    assert!(text.contains(&format!("to=\"{peer}\"")), "{text}");
    assert!(text.contains(&format!("hi {u}")), "{text}");
    assert_eq!(
        echo.properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("m1")
    );
    echo.ack(BasicAckOptions::default()).await.unwrap();
    // Nothing else: no second echo to the peer, and the service is not fed its own echoes.
    let more = tokio::time::timeout(Duration::from_secs(2), replies.next()).await;
    assert!(more.is_err(), "a second message reached the peer: {more:?}");
    assert_eq!(handled.load(Ordering::SeqCst), 1, "the echo service looped");

    router.close().await.unwrap();
    let _ = ch
        .queue_delete(
            ShortString::from(inbox.as_str()),
            QueueDeleteOptions::default(),
        )
        .await;
    let _ = conn.close(200, "done".into()).await;
    cleanup(&[&claw]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echo_of_its_own_echo_is_not_answered() {
    // Two echo services facing each other: the second does not answer the first's echo.
    let u = uid();
    let a = Arc::new(builder(&format!("ea-{u}@x/1")).build().unwrap());
    let b = Arc::new(builder(&format!("eb-{u}@x/1")).build().unwrap());
    // Each service reports every packet it is handed: (which service, payload).
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut routers = Vec::new();
    for (index, claw) in [a.clone(), b.clone()].into_iter().enumerate() {
        let router = Router::builder().claw(claw).build().unwrap();
        let seen_tx = seen_tx.clone();
        router
            .start(handler_fn(move |packet, via, ctx| {
                let _ = seen_tx.send((index, packet.as_str().unwrap_or_default().to_owned()));
                async move { Echo.received(packet, via, &ctx).await }
            }))
            .await
            .unwrap();
        routers.push(router);
    }
    // A message from b to a: a echoes it to b; b does not echo the echo.
    let stanza = format!(
        "<message from='{}' to='{}'><body>ping {u}</body></message>",
        b.jid(),
        a.jid()
    );
    routers[1]
        .send(a.jid(), None, Packet::from(stanza))
        .await
        .unwrap();
    let tag = format!("ping {u}");
    let mut handed = [0u32; 2];
    // a is handed the message, then b the echo.
    while handed[1] < 1 {
        let (index, payload) = tokio::time::timeout(WAIT, seen.recv())
            .await
            .expect("the echo reached b")
            .unwrap();
        if payload.contains(&tag) {
            handed[index] += 1;
        }
    }
    // Nothing more within a second: b does not answer the echo, so a is handed nothing else.
    let more = tokio::time::timeout(Duration::from_secs(1), async {
        while let Some((index, payload)) = seen.recv().await {
            if payload.contains(&tag) {
                return Some(index);
            }
        }
        None
    })
    .await;
    assert!(!matches!(more, Ok(Some(_))), "a further packet: {more:?}");
    assert_eq!(handed, [1, 1], "each service is handed exactly one packet");
    for r in routers {
        r.close().await.unwrap();
    }
    cleanup(&[&a, &b]).await;
}
