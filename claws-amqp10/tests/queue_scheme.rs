//! The queue address scheme against the Qpid Proton C example broker (each test starts its own).

mod common;

use claws_core::TimingBuilder;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::jid::parse;
use claws_core::{Claw, Error, Event, Packet, QueueKind};
use claws_test::fault::FaultProxy;
use common::{unique, Inbox, ProtonBroker};
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;

async fn started(
    url: &str,
    b: impl FnOnce(claws_amqp10::Amqp10ClawBuilder) -> claws_amqp10::Amqp10ClawBuilder,
    jid: &str,
) -> (Arc<Amqp10Claw>, Inbox) {
    let c = Arc::new(
        b(Amqp10Claw::builder(url, jid, AddressScheme::Queue))
            .build()
            .unwrap(),
    );
    let (events, mut inbox) = Inbox::new();
    c.start(events)
        .await
        .expect("start against the Proton broker");
    inbox.until_connected().await;
    (c, inbox)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_and_bare_sends_with_via() {
    let broker = ProtonBroker::start();
    let url = broker.url();
    let (a, _ia) = started(&url, |b| b, "a@example.com/r1").await;
    let (w1, mut i1) = started(&url, |b| b.name("q1"), "svc@example.com/w1").await;
    let (w2, mut i2) = started(&url, |b| b.name("q2"), "svc@example.com/w2").await;

    a.send(
        w1.jid(),
        Some("id-1"),
        Packet::from("<message>direct</message>"),
    )
    .await
    .unwrap();
    let d = i1.delivery("direct").await;
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, "svc@example.com/w1");
    assert_eq!(d.via.exchange, None);
    assert_eq!(d.via.id.as_deref(), Some("id-1"));
    assert_eq!(d.via.from.as_ref(), Some(a.jid()));
    assert_eq!(d.attempt, 1);
    d.acker.ack().await.unwrap();

    let bare = parse("svc@example.com").unwrap();
    for n in 0..20 {
        a.send(&bare, None, Packet::from(format!("lb:{n}")))
            .await
            .unwrap();
    }
    let mut seen = HashSet::new();
    while seen.len() < 20 {
        let d = tokio::select! { d = i1.delivery("lb:") => d, d = i2.delivery("lb:") => d };
        assert_eq!(d.via.queue, QueueKind::GroupDirect);
        assert_eq!(d.via.jid, "svc@example.com");
        assert!(
            seen.insert(d.packet.as_str().unwrap().to_owned()),
            "delivered twice"
        );
        d.acker.ack().await.unwrap();
    }
    assert!(i1
        .nothing_within("lb:", Duration::from_millis(300))
        .await
        .is_none());
    assert!(i2
        .nothing_within("lb:", Duration::from_millis(300))
        .await
        .is_none());

    let e = a.publish(Packet::from("all")).await.unwrap_err();
    assert!(
        matches!(e, Error::Unsupported { .. }) && e.to_string().contains("no broadcast"),
        "{e}"
    );
    let caps = a.capabilities();
    assert!(!caps.fanout && !caps.persistence && caps.load_balancing);
    for c in [a, w1, w2] {
        c.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_sent_back_then_dead_lettered() {
    let broker = ProtonBroker::start();
    let url = broker.url();
    let (b, mut ib) = started(&url, |b| b.max_deliveries(3), "dl@example.com/r1").await;
    b.send(b.jid(), Some("x"), Packet::from("doomed"))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let d = ib.delivery("doomed").await;
        assert_eq!(d.attempt, attempt);
        assert_eq!(
            d.via.id.as_deref(),
            Some("x"),
            "the copy keeps its properties"
        );
        d.acker
            .reject(&Error::Handler("fails".into()))
            .await
            .unwrap();
    }
    assert!(ib
        .nothing_within("doomed", Duration::from_millis(300))
        .await
        .is_none());
    // A dropped acker sends its delivery back without counting an attempt.
    b.send(b.jid(), None, Packet::from("dropped"))
        .await
        .unwrap();
    drop(ib.delivery("dropped").await);
    let d = ib.delivery("dropped").await;
    assert_eq!(d.attempt, 1);
    d.acker.ack().await.unwrap();
    b.close().await.unwrap();

    // The dead letter waits in the `xmpp_dead_letter` queue.
    let mut conn = fe2o3_amqp::Connection::open("dl-reader", url.as_str())
        .await
        .unwrap();
    let mut session = fe2o3_amqp::Session::begin(&mut conn).await.unwrap();
    let mut r = fe2o3_amqp::Receiver::attach(&mut session, "dl", "xmpp_dead_letter")
        .await
        .unwrap();
    let d = tokio::time::timeout(common::WAIT, r.recv::<Body<Value>>())
        .await
        .unwrap()
        .unwrap();
    let Body::Data(data) = d.body() else {
        panic!("a data body")
    };
    assert_eq!(data[0].0.as_slice(), b"doomed");
    drop(r);
    let _ = conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_a_cut_and_a_broker_restart() {
    let broker = ProtonBroker::start();
    let proxy = FaultProxy::start(broker.addr()).await.unwrap();
    let url = format!("amqp://{}", proxy.addr());
    let backoff = |b: claws_amqp10::Amqp10ClawBuilder| {
        b.reconnect_backoff(Duration::from_millis(50), Duration::from_millis(300))
    };
    let (b, mut ib) = started(&url, backoff, "rc@example.com/r1").await;
    let (a, _ia) = started(&broker.url(), |b| b, "rca@example.com/r1").await;
    const N: usize = 600;
    let sender = {
        let (a, to) = (a.clone(), b.jid().clone());
        tokio::spawn(async move {
            for n in 0..N {
                a.send(&to, None, Packet::from(format!("rc:{n}")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = HashSet::new();
    let mut cut = false;
    let lost_in_flight = loop {
        match tokio::time::timeout(Duration::from_secs(3), ib.event()).await {
            Ok(Event::Received(d)) => {
                seen.insert(d.packet.as_str().unwrap_or_default().to_owned());
                // A delivery of the link the cut ended cannot be settled any more (this broker
                // settled it when sending): the ack says so, and there is nothing to redeliver.
                let _ = d.acker.ack().await;
                if seen.len() == N / 3 && !cut {
                    proxy.cut();
                    cut = true;
                }
                if seen.len() == N {
                    break 0;
                }
            }
            Ok(_) => {}
            // The example broker settles on send: what was on the wire at the cut is gone.
            Err(_) => break N - seen.len(),
        }
    };
    sender.await.unwrap();
    eprintln!("lost at the cut: {lost_in_flight} of {N}");
    assert!(
        ib.disconnected >= 1 && ib.connected >= 2,
        "Disconnected then Connected"
    );
    assert!(
        lost_in_flight <= 32,
        "at most one credit window lost, lost {lost_in_flight}"
    );

    // A broker restart on the same port: the claw comes back by itself.
    let port = broker.port;
    drop(broker);
    loop {
        if let Event::Disconnected { .. } = ib.event().await {
            break;
        }
    }
    let _broker2 = ProtonBroker::start_on(port);
    ib.until_connected().await;
    let token = unique("back-");
    b.send(b.jid(), None, Packet::from(token.clone()))
        .await
        .unwrap();
    ib.delivery(&token).await.acker.ack().await.unwrap();
    b.close().await.unwrap();
    let _ = a.close().await;
}
