//! Every rule of TOPOLOGY.md, on the mem claw.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claws_core::mem::MemBroker;
use claws_core::topology::{QueueKind, Subscriptions, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws_core::{handler_fn, jid, Claw, Error, Packet, Router, Via};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// A started router on one mem claw that forwards (instance name, packet, via) to a channel.
async fn instance(
    broker: &MemBroker,
    jid: &str,
    name: &str,
    tx: mpsc::UnboundedSender<(String, Packet, Via)>,
) -> Router {
    let claw = broker
        .claw_builder(jid)
        .unwrap()
        .name(name)
        .build()
        .unwrap();
    let router = Router::builder().claw(claw).build().unwrap();
    let name = name.to_owned();
    router
        .start(handler_fn(move |p, v, _| {
            let tx = tx.clone();
            let name = name.clone();
            async move {
                tx.send((name, p, v))?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    router
}

async fn next(rx: &mut mpsc::UnboundedReceiver<(String, Packet, Via)>) -> (String, Packet, Via) {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("channel closed")
}

fn assert_quiet(rx: &mut mpsc::UnboundedReceiver<(String, Packet, Via)>) {
    if let Ok(extra) = rx.try_recv() {
        panic!("unexpected delivery: {extra:?}");
    }
}

#[tokio::test]
async fn declares_the_four_queues_and_two_for_a_bare_jid() {
    let broker = MemBroker::new();
    let (tx, _rx) = mpsc::unbounded_channel();
    let a = instance(&broker, "svc@d/r1", "a", tx.clone()).await;
    let b = instance(&broker, "comp.d", "b", tx).await;
    assert_eq!(
        broker.queue_names(),
        [
            "xmpp_direct:comp.d",
            "xmpp_direct:svc@d",
            "xmpp_direct:svc@d/r1",
            "xmpp_fanout:comp.d",
            "xmpp_fanout:svc@d",
            "xmpp_fanout:svc@d/r1"
        ]
    );
    a.close().await.unwrap();
    b.close().await.unwrap();
}

#[tokio::test]
async fn full_jid_reaches_that_instance_only_with_every_via_field() {
    let broker = MemBroker::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let w1 = instance(&broker, "svc@d/w1", "w1", tx.clone()).await;
    let w2 = instance(&broker, "svc@d/w2", "w2", tx).await;
    let client = broker.claw("client@d/c").unwrap();
    client
        .send(
            &jid::parse("svc@d/w2").unwrap(),
            Some("id-7"),
            Packet::from("<message/>"),
        )
        .await
        .unwrap();
    let (who, packet, via) = next(&mut rx).await;
    assert_eq!(who, "w2");
    assert_eq!(packet.as_bytes(), b"<message/>");
    assert_eq!(via.jid, "svc@d/w2");
    assert_eq!(via.exchange.as_deref(), Some(DIRECT_EXCHANGE));
    assert_eq!(&*via.claw, "w2");
    assert_eq!(via.id.as_deref(), Some("id-7"));
    assert_eq!(via.queue, QueueKind::Direct);
    assert_eq!(via.from.unwrap().as_str(), "client@d/c");
    w1.close().await.unwrap();
    w2.close().await.unwrap();
    assert_quiet(&mut rx);
}

#[tokio::test]
async fn bare_jid_reaches_exactly_one_instance_of_the_group() {
    let broker = MemBroker::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut group = Vec::new();
    for n in ["w1", "w2", "w3"] {
        group.push(instance(&broker, &format!("svc@d/{n}"), n, tx.clone()).await);
    }
    let client = broker.claw("client@d/c").unwrap();
    let to = jid::parse("svc@d").unwrap();
    const N: usize = 300;
    for i in 0..N {
        client
            .send(&to, None, Packet::from(format!("<m n='{i}'/>")))
            .await
            .unwrap();
    }
    let mut seen = HashMap::new();
    let mut per_instance: HashMap<String, usize> = HashMap::new();
    for _ in 0..N {
        let (who, packet, via) = next(&mut rx).await;
        assert_eq!(via.queue, QueueKind::GroupDirect);
        assert_eq!(via.jid, "svc@d");
        *seen.entry(packet).or_insert(0) += 1;
        *per_instance.entry(who).or_default() += 1;
    }
    assert_eq!(seen.len(), N, "every stanza once");
    assert!(seen.values().all(|c| *c == 1));
    assert_eq!(
        per_instance.len(),
        3,
        "every instance takes a share: {per_instance:?}"
    );
    for r in group {
        r.close().await.unwrap();
    }
    assert_quiet(&mut rx);
}

#[tokio::test]
async fn broadcast_reaches_each_instance_once_and_each_group_once() {
    let broker = MemBroker::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a1 = instance(&broker, "a@d/1", "a1", tx.clone()).await;
    let a2 = instance(&broker, "a@d/2", "a2", tx.clone()).await;
    let b1 = instance(&broker, "b@d/1", "b1", tx.clone()).await;
    let publisher = broker.claw("pub@d/p").unwrap();
    publisher
        .publish(Packet::from("<presence/>"))
        .await
        .unwrap();
    let mut own = Vec::new();
    let mut group = Vec::new();
    for _ in 0..5 {
        let (who, _, via) = next(&mut rx).await;
        assert_eq!(via.exchange.as_deref(), Some(FANOUT_EXCHANGE));
        assert_eq!(via.jid, "pub@d/p", "routing key is the sender");
        match via.queue {
            QueueKind::Fanout => own.push(who),
            QueueKind::GroupFanout => group.push(via.claw.to_string().chars().next().unwrap()),
            other => panic!("unexpected {other}"),
        }
    }
    own.sort();
    group.sort();
    assert_eq!(own, ["a1", "a2", "b1"]);
    assert_eq!(group, ['a', 'b'], "each group once");
    for r in [a1, a2, b1] {
        r.close().await.unwrap();
    }
    assert_quiet(&mut rx);
}

#[tokio::test]
async fn a_subset_of_subscriptions_and_a_pure_publisher() {
    let broker = MemBroker::new();
    let only_direct = broker
        .claw_builder("svc@d/x")
        .unwrap()
        .subscriptions(Subscriptions {
            direct: true,
            ..Subscriptions::none()
        })
        .build()
        .unwrap();
    assert_eq!(only_direct.queues().len(), 1);
    let publisher = broker
        .claw_builder("pub@d/p")
        .unwrap()
        .subscriptions(Subscriptions::none())
        .build()
        .unwrap();
    assert!(publisher.queues().is_empty());
    let err = publisher
        .send(&jid::parse("pub@d/p").unwrap(), None, Packet::from("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoRoute { .. }), "{err}");
}

#[tokio::test]
async fn unroutable_send_is_an_error_not_silence() {
    let broker = MemBroker::new();
    let client = broker.claw("client@d/c").unwrap();
    let err = client
        .send(&jid::parse("nobody@d").unwrap(), None, Packet::from("<m/>"))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("no route to `nobody@d`"), "{msg}");
}

#[tokio::test]
async fn a_failing_handler_gets_redelivery_then_dead_letter() {
    let broker = MemBroker::new();
    let claw = broker
        .claw_builder("svc@d/w")
        .unwrap()
        .max_deliveries(3)
        .build()
        .unwrap();
    let router = Router::builder().claw(claw).build().unwrap();
    let calls = Arc::new(AtomicU32::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = calls.clone();
    router
        .start(handler_fn(move |p, _, ctx| {
            let c = c.clone();
            let tx = tx.clone();
            async move {
                c.fetch_add(1, Ordering::SeqCst);
                tx.send((p.clone(), ctx.attempt()))?;
                if p.as_bytes() == b"<poison/>" {
                    return Err("cannot handle this".into());
                }
                if p.as_bytes() == b"<flaky/>" && ctx.attempt() == 1 {
                    panic!("first try panics");
                }
                Ok(())
            }
        }))
        .await
        .unwrap();
    let client = broker.claw("client@d/c").unwrap();
    let to = jid::parse("svc@d/w").unwrap();
    client
        .send(&to, None, Packet::from("<flaky/>"))
        .await
        .unwrap();
    let mut flaky = Vec::new();
    while flaky.len() < 2 {
        let (p, attempt) = timeout(WAIT, rx.recv()).await.unwrap().unwrap();
        assert_eq!(p.as_bytes(), b"<flaky/>");
        flaky.push(attempt);
    }
    assert_eq!(flaky, [1, 2], "a panic leads to redelivery");
    client
        .send(&to, None, Packet::from("<poison/>"))
        .await
        .unwrap();
    let mut attempts = Vec::new();
    while attempts.len() < 3 {
        attempts.push(timeout(WAIT, rx.recv()).await.unwrap().unwrap().1);
    }
    assert_eq!(attempts, [1, 2, 3]);
    // Dead-lettered after the third: it shows up in the dead-letter queue, and no more calls.
    timeout(WAIT, async {
        while broker.dead_letters().is_empty() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    assert_eq!(broker.dead_letters(), [Packet::from("<poison/>")]);
    router.close().await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    assert_eq!(broker.queue_len("xmpp_direct:svc@d/w"), 0);
}

#[tokio::test]
async fn queues_outlive_an_instance_and_a_restart_gets_the_rest() {
    let broker = MemBroker::new();
    let client = broker.claw("client@d/c").unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let first = instance(&broker, "svc@d/w", "w", tx.clone()).await;
    first.close().await.unwrap();
    let to = jid::parse("svc@d/w").unwrap();
    for i in 0..10 {
        client
            .send(&to, None, Packet::from(format!("{i}")))
            .await
            .unwrap();
    }
    assert_eq!(broker.queue_len("xmpp_direct:svc@d/w"), 10);
    let again = instance(&broker, "svc@d/w", "w", tx).await;
    for i in 0..10 {
        let (_, p, _) = next(&mut rx).await;
        assert_eq!(p.as_str().unwrap(), i.to_string(), "in order");
    }
    again.close().await.unwrap();
}

#[tokio::test]
async fn close_waits_for_busy_handlers_and_loses_nothing() {
    let broker = MemBroker::new();
    let claw = broker
        .claw_builder("svc@d/w")
        .unwrap()
        .prefetch(4)
        .build()
        .unwrap();
    let router = Router::builder().claw(claw).concurrency(4).build().unwrap();
    let done = Arc::new(AtomicU32::new(0));
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let (release_tx, release) = tokio::sync::watch::channel(false);
    let d = done.clone();
    router
        .start(handler_fn(move |_, _, _| {
            let d = d.clone();
            let started_tx = started_tx.clone();
            let mut release = release.clone();
            async move {
                started_tx.send(())?;
                release.wait_for(|r| *r).await?;
                d.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }))
        .await
        .unwrap();
    let client = broker.claw("client@d/c").unwrap();
    for i in 0..20 {
        // Different senders' ids spread over the lanes; one sender here, so use distinct JIDs.
        let sender = broker
            .claw_builder(&format!("c{i}@d/c"))
            .unwrap()
            .subscriptions(Subscriptions::none())
            .build()
            .unwrap();
        sender
            .send(&jid::parse("svc@d/w").unwrap(), None, Packet::from("<m/>"))
            .await
            .unwrap();
    }
    drop(client);
    // Wait until handlers are busy, then close while they are.
    timeout(WAIT, started.recv()).await.unwrap().unwrap();
    let closing = tokio::spawn({
        let router = router.clone();
        async move { router.close().await }
    });
    tokio::task::yield_now().await;
    release_tx.send(true).unwrap();
    timeout(WAIT, closing).await.unwrap().unwrap().unwrap();
    let handled = done.load(Ordering::SeqCst) as usize;
    let left = broker.queue_len("xmpp_direct:svc@d/w");
    assert!(handled >= 1);
    assert_eq!(
        handled + left,
        20,
        "handled {handled}, left {left}: nothing lost"
    );
}

/// A prefetch smaller than the number of subscriptions starves none of them.
#[tokio::test]
async fn prefetch_one_still_serves_every_subscription() {
    let broker = MemBroker::new();
    let claw = broker
        .claw_builder("svc@d/w")
        .unwrap()
        .prefetch(1)
        .build()
        .unwrap();
    let router = Router::builder().claw(claw).build().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    router
        .start(handler_fn(move |_, v, _| {
            let tx = tx.clone();
            async move {
                tx.send(v.queue)?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    let client = broker.claw("client@d/c").unwrap();
    client
        .send(&jid::parse("svc@d").unwrap(), None, Packet::from("1"))
        .await
        .unwrap();
    client
        .send(&jid::parse("svc@d/w").unwrap(), None, Packet::from("2"))
        .await
        .unwrap();
    client.publish(Packet::from("3")).await.unwrap();
    let mut kinds = Vec::new();
    for _ in 0..4 {
        kinds.push(
            timeout(WAIT, rx.recv())
                .await
                .expect("starved")
                .unwrap()
                .to_string(),
        );
    }
    kinds.sort();
    assert_eq!(kinds, ["direct", "fanout", "group_direct", "group_fanout"]);
    router.close().await.unwrap();
}
