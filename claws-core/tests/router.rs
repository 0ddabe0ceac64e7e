//! The router: route learning, the default claw, bounded routes, replies, order and concurrency.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use claws_core::mem::MemBroker;
use claws_core::topology::Subscriptions;
use claws_core::{handler_fn, jid, Claw, Echo, Error, Packet, Router, Via};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

type Rx = mpsc::UnboundedReceiver<(Packet, Via)>;

async fn collector(router: &Router) -> Rx {
    let (tx, rx) = mpsc::unbounded_channel();
    router
        .start(handler_fn(move |p, v, _| {
            let tx = tx.clone();
            async move {
                tx.send((p, v))?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    rx
}

async fn next(rx: &mut Rx) -> (Packet, Via) {
    timeout(WAIT, rx.recv())
        .await
        .expect("timed out")
        .expect("closed")
}

#[tokio::test]
async fn build_checks_claws() {
    let err = Router::builder().build().unwrap_err();
    assert!(err.to_string().contains("at least one claw"));
    let a = MemBroker::new();
    let err = Router::builder()
        .claw(a.claw("x@d/1").unwrap())
        .claw(a.claw("y@d/1").unwrap())
        .build()
        .unwrap_err();
    assert!(
        err.to_string().contains("two claws are named `mem`"),
        "{err}"
    );
    let err = Router::builder()
        .claw(a.claw("x@d/1").unwrap())
        .default_claw("nope")
        .build()
        .unwrap_err();
    assert!(matches!(err, Error::UnknownClaw { .. }), "{err}");
}

/// Two buses (two brokers): a reply to a sender goes back through the claw its packet came
/// from, and JIDs with no learned route go to the default claw.
#[tokio::test]
async fn learns_routes_and_replies_the_way_packets_came() {
    let bus_a = MemBroker::new();
    let bus_b = MemBroker::new();
    let gw = Router::builder()
        .claw(
            bus_a
                .claw_builder("gw@d/a")
                .unwrap()
                .name("a")
                .build()
                .unwrap(),
        )
        .claw(
            bus_b
                .claw_builder("gw@d/b")
                .unwrap()
                .name("b")
                .build()
                .unwrap(),
        )
        .default_claw("a")
        .build()
        .unwrap();
    gw.start(Echo).await.unwrap();

    // A peer on bus b pings the gateway; the echo goes back over b, not the default a.
    let peer_b = Router::builder()
        .claw(
            bus_b
                .claw_builder("peer@d/p")
                .unwrap()
                .name("pb")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut rx_b = collector(&peer_b).await;
    let ping =
        r#"<iq type="get" id="p1" from="peer@d/p" to="gw@d/b"><ping xmlns="urn:xmpp:ping"/></iq>"#;
    peer_b
        .send(
            &jid::parse("gw@d/b").unwrap(),
            Some("corr-1"),
            Packet::from(ping),
        )
        .await
        .unwrap();
    let (reply, via) = next(&mut rx_b).await;
    assert_eq!(reply.parse().unwrap().attr("type"), Some("result"));
    assert_eq!(via.id.as_deref(), Some("corr-1"), "correlation id kept");
    assert_eq!(via.from.unwrap().as_str(), "gw@d/b");
    assert_eq!(gw.route(&jid::parse("peer@d/p").unwrap()).name(), "b");
    assert_eq!(gw.route_count(), 1);
    // Unknown JIDs go to the default claw.
    assert_eq!(gw.route(&jid::parse("stranger@d/x").unwrap()).name(), "a");
    gw.close().await.unwrap();
    peer_b.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_route_table_is_bounded_by_capacity_and_ttl() {
    let bus_a = MemBroker::new();
    let bus_b = MemBroker::new();
    let router = Router::builder()
        .claw(
            bus_a
                .claw_builder("r@d/a")
                .unwrap()
                .name("a")
                .build()
                .unwrap(),
        )
        .claw(
            bus_b
                .claw_builder("r@d/b")
                .unwrap()
                .name("b")
                .build()
                .unwrap(),
        )
        .route_capacity(3)
        .route_ttl(Duration::from_millis(300))
        .build()
        .unwrap();
    let mut rx = collector(&router).await;
    for i in 0..5 {
        let sender = bus_b
            .claw_builder(&format!("s{i}@d/x"))
            .unwrap()
            .subscriptions(Subscriptions::none())
            .build()
            .unwrap();
        sender
            .send(&jid::parse("r@d/b").unwrap(), None, Packet::from("x"))
            .await
            .unwrap();
        next(&mut rx).await;
    }
    assert_eq!(router.route_count(), 3, "capacity");
    // The oldest were evicted; the newest still route through b.
    assert_eq!(router.route(&jid::parse("s0@d/x").unwrap()).name(), "a");
    assert_eq!(router.route(&jid::parse("s4@d/x").unwrap()).name(), "b");
    tokio::time::advance(Duration::from_millis(400)).await;
    assert_eq!(
        router.route(&jid::parse("s4@d/x").unwrap()).name(),
        "a",
        "expired"
    );
    router.close().await.unwrap();
}

#[tokio::test]
async fn per_sender_order_is_kept_with_concurrency() {
    let broker = MemBroker::new();
    let router = Router::builder()
        .claw(
            broker
                .claw_builder("svc@d/w")
                .unwrap()
                .prefetch(64)
                .build()
                .unwrap(),
        )
        .concurrency(8)
        .build()
        .unwrap();
    let seen: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let (done_tx, mut done) = mpsc::unbounded_channel();
    let s = seen.clone();
    router
        .start(handler_fn(move |p, v, _| {
            let s = s.clone();
            let done_tx = done_tx.clone();
            async move {
                let n: u32 = p.as_str().unwrap().parse()?;
                // Uneven work so that lanes interleave.
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
                s.lock().unwrap().push((v.from.unwrap().to_string(), n));
                done_tx.send(())?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    let senders: Vec<_> = (0..5)
        .map(|i| {
            broker
                .claw_builder(&format!("s{i}@d/x"))
                .unwrap()
                .subscriptions(Subscriptions::none())
                .build()
                .unwrap()
        })
        .collect();
    let to = jid::parse("svc@d/w").unwrap();
    for n in 0..100u32 {
        for s in &senders {
            s.send(&to, None, Packet::from(n.to_string()))
                .await
                .unwrap();
        }
    }
    for _ in 0..500 {
        timeout(WAIT, done.recv()).await.unwrap().unwrap();
    }
    router.close().await.unwrap();
    let seen = seen.lock().unwrap();
    for i in 0..5 {
        let from = format!("s{i}@d/x");
        let order: Vec<u32> = seen
            .iter()
            .filter(|(f, _)| *f == from)
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(order, (0..100).collect::<Vec<_>>(), "order for {from}");
    }
}

#[tokio::test]
async fn reply_without_a_known_sender_is_a_clear_error() {
    let broker = MemBroker::new();
    let router = Router::builder()
        .claw(broker.claw("a@d/r").unwrap())
        .build()
        .unwrap();
    let via = Via::new("mem", claws_core::QueueKind::Direct, "not a jid@@");
    let err = router.reply(&via, Packet::from("x")).await.unwrap_err();
    assert!(err.to_string().contains("names no sender"), "{err}");
    // Never the routing key of a direct delivery: that is the receiver itself.
    let via = Via::new("mem", claws_core::QueueKind::Direct, "a@d/r");
    let err = router.reply(&via, Packet::from("x")).await.unwrap_err();
    assert!(matches!(err, claws_core::Error::NoSender { .. }), "{err}");
}

#[tokio::test]
async fn a_send_to_the_own_full_jid_is_refused_unless_allowed() {
    let broker = MemBroker::new();
    let me = claws_core::jid::parse("a@d/r").unwrap();
    let router = Router::builder()
        .claw(broker.claw("a@d/r").unwrap())
        .build()
        .unwrap();
    router
        .start(handler_fn(|_, _, _| async { Ok(()) }))
        .await
        .unwrap();
    let err = router.send(&me, None, Packet::from("x")).await.unwrap_err();
    assert!(matches!(err, claws_core::Error::SelfSend { .. }), "{err}");
    assert!(err.to_string().contains("allow_self_sends"), "{err}");
    // The bare JID (the group) is not the instance itself.
    router
        .send(&me.to_bare().into(), None, Packet::from("x"))
        .await
        .unwrap();
    router.close().await.unwrap();

    let allowed = Router::builder()
        .claw(broker.claw("b@d/r").unwrap())
        .allow_self_sends(true)
        .build()
        .unwrap();
    allowed
        .start(handler_fn(|_, _, _| async { Ok(()) }))
        .await
        .unwrap();
    allowed
        .send(
            &claws_core::jid::parse("b@d/r").unwrap(),
            None,
            Packet::from("x"),
        )
        .await
        .unwrap();
    allowed.close().await.unwrap();
}

#[tokio::test]
async fn a_claw_that_fails_to_start_fails_the_start_and_closes_the_others() {
    let broker = MemBroker::new();
    let broken = broker
        .claw_builder("b@d/1")
        .unwrap()
        .name("broken")
        .build()
        .unwrap();
    broken.close().await.unwrap(); // a closed claw cannot start
    let good = Arc::new(
        broker
            .claw_builder("g@d/1")
            .unwrap()
            .name("good")
            .build()
            .unwrap(),
    );
    let router = Router::builder()
        .claw_arc(good.clone())
        .claw(broken)
        .build()
        .unwrap();
    let err = router.start(Echo).await.unwrap_err();
    assert!(
        matches!(err, Error::Closed { ref claw } if claw == "broken"),
        "{err}"
    );
    let err = good
        .send(&jid::parse("g@d/1").unwrap(), None, Packet::from("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Closed { .. }),
        "the started claw was closed: {err}"
    );
    // The router is not left half-started: a second start reports the claw again.
    let err = router.start(Echo).await.unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
}

/// Trace context on the mem bus: a send made inside a trace arrives with it (the send's span as
/// parent), a reply made by the handler continues it, and without one nothing is carried.
#[tokio::test]
async fn a_reply_continues_the_senders_trace() {
    use claws_core::trace::{self, TraceContext};
    let bus = MemBroker::new();
    let server = Router::builder()
        .claw(bus.claw("svc@d/1").unwrap())
        .build()
        .unwrap();
    // The server replies from its handler: inside the delivery's trace.
    let (tx, mut seen) = mpsc::unbounded_channel();
    server
        .start(handler_fn(move |p, v: Via, ctx| {
            let tx = tx.clone();
            async move {
                tx.send((v.trace, trace::current()))?;
                ctx.router().reply(&v, p).await?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    let client = Router::builder()
        .claw(bus.claw("cli@d/1").unwrap())
        .build()
        .unwrap();
    let mut replies = collector(&client).await;
    let svc = jid::parse("svc@d/1").unwrap();

    let root = TraceContext::new_root();
    trace::scope(root, client.send(&svc, None, Packet::from("<m/>")))
        .await
        .unwrap();
    let (carried, current) = timeout(WAIT, seen.recv()).await.unwrap().unwrap();
    let carried = carried.expect("the send carried the trace");
    assert_eq!(carried.trace_id(), root.trace_id());
    assert_ne!(carried.span_id(), root.span_id(), "the send's own span");
    let current = current.expect("the handler runs inside the trace");
    assert_eq!(current.trace_id(), root.trace_id());
    let (_, via) = next(&mut replies).await;
    let back = via.trace.expect("the reply carried it");
    assert_eq!(back.trace_id(), root.trace_id());

    // No trace, no subscriber: nothing is carried, nothing is current.
    client.send(&svc, None, Packet::from("<m/>")).await.unwrap();
    let (carried, current) = timeout(WAIT, seen.recv()).await.unwrap().unwrap();
    assert_eq!((carried, current), (None, None));
    let (_, via) = next(&mut replies).await;
    assert_eq!(via.trace, None);
    server.close().await.unwrap();
    client.close().await.unwrap();
}
