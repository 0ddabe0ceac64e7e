//! The RabbitMQ address scheme on RabbitMQ 4 (127.0.0.1:5690, `scripts/rabbitmq4`, 4.3's
//! defaults: v1 addresses refused): v2 addresses chosen from the broker's version, `released`
//! as `NoRoute`, refused attaches as configuration errors, and interop with a 0-9-1 claw.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use claws_amqp091::AmqpClaw;
use claws_amqp10::{AddressScheme, Addresses, Amqp10Claw};
use claws_core::topology::{queues, Subscriptions};
use claws_core::{Claw, Error, Packet, QueueKind, TimingBuilder};
use claws_test::rabbitmq4;
use common::{unique, Inbox};

/// Fails loudly when the RabbitMQ 4 node is missing.
async fn node() -> String {
    rabbitmq4::up()
        .await
        .expect("the RabbitMQ 4 node (scripts/rabbitmq4 up; scripts/provision sets it up)");
    rabbitmq4::url()
}

async fn started(b: claws_amqp10::Amqp10ClawBuilder) -> (Arc<Amqp10Claw>, Inbox) {
    let c = Arc::new(b.build().expect("valid claw"));
    let (events, mut inbox) = Inbox::new();
    c.start(events).await.expect("start against RabbitMQ 4");
    inbox.until_connected().await;
    (c, inbox)
}

/// Deletes the queues of `jids` over 0-9-1.
async fn delete_queues(url: &str, jids: &[&claws_core::jid::Jid]) {
    let conn = lapin::Connection::connect(url, Default::default())
        .await
        .expect("0-9-1 to RabbitMQ 4");
    let ch = conn.create_channel().await.expect("channel");
    for j in jids {
        for q in queues(j, Subscriptions::all()).expect("queue names") {
            let _ = ch
                .queue_delete(q.name.as_str().into(), Default::default())
                .await;
        }
    }
    let _ = conn.close(200, "ok".into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_picks_v2_on_rabbitmq4_and_unroutable_sends_fail() {
    let url = node().await;
    let s = unique("");
    let b = Amqp10Claw::builder(
        &url,
        format!("v2{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    );
    let unstarted = b.clone().build().unwrap();
    assert_eq!(unstarted.addresses(), Addresses::Auto);
    assert!(
        !unstarted.capabilities().unroutable_errors,
        "auto promises nothing before it met the broker"
    );
    let (c, mut inbox) = started(b).await;
    assert!(
        c.capabilities().unroutable_errors,
        "RabbitMQ 4 releases unroutable sends"
    );
    let sources = c.sources();
    assert!(
        sources.iter().all(|(a, _)| a.starts_with("/queues/")),
        "{sources:?}"
    );
    assert_eq!(
        sources[0].0,
        format!("/queues/xmpp_direct:v2{s}@example.com%2Fr1")
    );

    // Direct to itself (full and bare JID), with the sender read back from reply-to.
    let t = unique("self-");
    c.send(c.jid(), Some("id-1"), Packet::from(t.clone()))
        .await
        .unwrap();
    let d = inbox.delivery(&t).await;
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, c.jid().as_str());
    assert_eq!(d.via.id.as_deref(), Some("id-1"));
    assert_eq!(d.via.from.as_ref(), Some(c.jid()));
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_direct"));
    d.acker.ack().await.unwrap();
    let bare = c.jid().to_bare();
    let t = unique("bare-");
    c.send(&bare, None, Packet::from(t.clone())).await.unwrap();
    let d = inbox.delivery(&t).await;
    assert_eq!(d.via.queue, QueueKind::GroupDirect);
    d.acker.ack().await.unwrap();

    // A broadcast reaches both fanout queues.
    let t = unique("bc-");
    c.publish(Packet::from(t.clone())).await.unwrap();
    let mut kinds = vec![];
    for _ in 0..2 {
        let d = inbox.delivery(&t).await;
        assert_eq!(d.via.jid, c.jid().as_str());
        kinds.push(d.via.queue.clone());
        d.acker.ack().await.unwrap();
    }
    assert!(kinds.contains(&QueueKind::Fanout) && kinds.contains(&QueueKind::GroupFanout));

    // Nobody consumes this JID: released, NoRoute, at once.
    let nobody = claws_core::jid::parse(&format!("nobody{s}@example.com/x")).unwrap();
    let t0 = Instant::now();
    let e = c
        .send(&nobody, None, Packet::from("<lost/>"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::NoRoute { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // The link still works afterwards.
    let t = unique("after-");
    c.send(c.jid(), None, Packet::from(t.clone()))
        .await
        .unwrap();
    inbox.delivery(&t).await.acker.ack().await.unwrap();

    drop(inbox);
    c.close().await.unwrap();
    c.delete_queues().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_on_rabbitmq4_is_a_configuration_error_at_once() {
    let url = node().await;
    let s = unique("");
    let c = Amqp10Claw::builder(
        &url,
        format!("v1{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .addresses(Addresses::V1)
    .build()
    .unwrap();
    let t0 = Instant::now();
    let e = c.start(Inbox::new().0).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Config(_)), "{msg}");
    assert!(
        msg.contains("/amq/queue/xmpp_direct:v1"),
        "names the address: {msg}"
    );
    assert!(msg.contains("invalid-field"), "{msg}");
    assert!(msg.contains("addresses"), "hints at the setting: {msg}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    c.close().await.unwrap();

    // A missing queue (no declaring) is refused at once too, naming it.
    let c = Amqp10Claw::builder(
        &url,
        format!("nodecl{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .declare(false)
    .build()
    .unwrap();
    let t0 = Instant::now();
    let e = c.start(Inbox::new().0).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Config(_)), "{msg}");
    assert!(msg.contains("xmpp_direct:nodecl"), "{msg}");
    assert!(msg.contains("not-found"), "{msg}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    c.close().await.unwrap();

    // A claw consuming nothing (so it starts) whose sends use v1: the send fails at once
    // with the configuration error instead of reconnecting until send_timeout; close is prompt.
    let c = Amqp10Claw::builder(
        &url,
        format!("v1s{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .addresses(Addresses::V1)
    .subscriptions(Subscriptions::none())
    .send_timeout(Duration::from_secs(20))
    .build()
    .unwrap();
    c.start(Inbox::new().0).await.unwrap();
    let t0 = Instant::now();
    let e = c
        .send(c.jid(), None, Packet::from("<x/>"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
    assert!(e.to_string().contains("/exchange/xmpp_direct"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let t0 = Instant::now();
    c.close().await.unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp091_and_amqp10_talk_both_ways_on_rabbitmq4() {
    let url = node().await;
    let s = unique("");
    let old = AmqpClaw::builder(&url, format!("old4{s}@example.com/r1"))
        .send_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let new = Amqp10Claw::builder(
        &url,
        format!("new4{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .send_timeout(Duration::from_secs(10))
    .build()
    .unwrap();
    let (ev_old, mut in_old) = Inbox::new();
    let (ev_new, mut in_new) = Inbox::new();
    old.start(ev_old)
        .await
        .expect("0-9-1 claw starts on RabbitMQ 4");
    in_old.until_connected().await;
    new.start(ev_new)
        .await
        .expect("1.0 claw starts on RabbitMQ 4");
    in_new.until_connected().await;

    // 0-9-1 -> 1.0, then the 1.0 claw replies the way it came.
    let t1 = unique("to-new-");
    let root = claws_core::trace::TraceContext::new_root();
    claws_core::trace::scope(
        root,
        old.send(
            new.jid(),
            Some("q1"),
            Packet::from(format!("<iq>{t1}</iq>")),
        ),
    )
    .await
    .unwrap();
    let d = in_new.delivery(&t1).await;
    assert_eq!(d.packet.as_str(), Some(&*format!("<iq>{t1}</iq>")));
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, new.jid().as_str());
    assert_eq!(d.via.id.as_deref(), Some("q1"));
    assert_eq!(
        d.via.from.as_ref(),
        Some(old.jid()),
        "the 0-9-1 sender read back"
    );
    // The 0-9-1 `traceparent` header arrives as an application property (3.x dropped it).
    let carried = d.via.trace.expect("the trace crossed protocols");
    assert_eq!(carried.trace_id(), root.trace_id());
    assert_ne!(carried.span_id(), root.span_id(), "parented by the send");
    let reply_to = d.via.reply_to().unwrap();
    d.acker.ack().await.unwrap();
    let t2 = unique("reply-old-");
    claws_core::trace::scope(
        carried,
        new.send(
            &reply_to,
            Some("q1"),
            Packet::from(format!("<iq>{t2}</iq>")),
        ),
    )
    .await
    .unwrap();
    let d = in_old.delivery(&t2).await;
    assert_eq!(
        d.packet.as_str(),
        Some(&*format!("<iq>{t2}</iq>")),
        "raw data body"
    );
    let back = d.via.trace.expect("and back");
    assert_eq!(back.trace_id(), root.trace_id());
    assert_eq!(d.via.jid, old.jid().as_str());
    assert_eq!(d.via.id.as_deref(), Some("q1"));
    assert_eq!(
        d.via.from.as_ref(),
        Some(new.jid()),
        "the plain JID in reply-to"
    );
    d.acker.ack().await.unwrap();

    // 1.0 -> 0-9-1, then the 0-9-1 claw replies the way it came.
    let t3 = unique("to-old-");
    new.send(
        old.jid(),
        Some("q2"),
        Packet::from(format!("<iq>{t3}</iq>")),
    )
    .await
    .unwrap();
    let d = in_old.delivery(&t3).await;
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_direct"));
    assert_eq!(d.via.from.as_ref(), Some(new.jid()));
    let reply_to = d.via.reply_to().unwrap();
    assert_eq!(&reply_to, new.jid(), "never the receiver's own JID");
    d.acker.ack().await.unwrap();
    let t4 = unique("reply-new-");
    old.send(
        &reply_to,
        Some("q2"),
        Packet::from(format!("<iq>{t4}</iq>")),
    )
    .await
    .unwrap();
    let d = in_new.delivery(&t4).await;
    assert_eq!(d.via.jid, new.jid().as_str());
    assert_eq!(d.via.id.as_deref(), Some("q2"));
    assert_eq!(d.via.from.as_ref(), Some(old.jid()));
    d.acker.ack().await.unwrap();

    // Broadcasts both ways.
    let t5 = unique("bc-new-");
    new.publish(Packet::from(t5.clone())).await.unwrap();
    let d = in_old.delivery(&t5).await;
    assert_eq!(d.via.jid, new.jid().as_str());
    d.acker.ack().await.unwrap();
    let t6 = unique("bc-old-");
    old.publish(Packet::from(t6.clone())).await.unwrap();
    let d = in_new.delivery(&t6).await;
    assert_eq!(d.via.jid, old.jid().as_str());
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_fanout"));
    d.acker.ack().await.unwrap();

    drop((in_old, in_new));
    old.close().await.unwrap();
    new.close().await.unwrap();
    delete_queues(&url, &[old.jid(), new.jid()]).await;
}

#[test]
fn the_addresses_key_is_read_from_the_amqp10_table() {
    use figment::providers::Format;
    let toml = |extra: &str| {
        let text = format!(
            "transport = \"amqp10\"\nurl = \"amqp://guest:guest@127.0.0.1:5690\"\n\
             jid = \"cfg@example.com/r1\"\n[amqp10]\n{extra}"
        );
        let figment =
            claws_core::Config::figment(None).merge(figment::providers::Toml::string(&text));
        claws_core::Config::from_figment(&figment).unwrap()
    };
    let c = Amqp10Claw::from_config(&toml("addresses = \"v2\"")).unwrap();
    assert_eq!(c.addresses(), Addresses::V2);
    assert!(c.capabilities().unroutable_errors, "v2 is RabbitMQ 4");
    assert_eq!(c.sources()[0].0, "/queues/xmpp_direct:cfg@example.com%2Fr1");
    let c = Amqp10Claw::from_config(&toml("")).unwrap();
    assert_eq!(c.addresses(), Addresses::Auto);
    assert_eq!(
        c.sources()[0].0,
        "/amq/queue/xmpp_direct:cfg@example.com%2Fr1"
    );
    let e = Amqp10Claw::from_config(&toml("addresses = \"v3\""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("v3"), "{e}");
}

/// `durable = false` on a broker that refuses transient shared queues (4.3's default): the
/// declarer's first connection is refused (541), the second declares the queues durable with
/// `x-expires`, and stanzas flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_mode_declares_expiring_durable_queues_on_rabbitmq4() {
    use claws_core::TopologyBuilder;
    node().await;
    // Transient exchanges cannot share the default vhost's durable ones.
    let url = rabbitmq4::vhost_url("claws-transient")
        .await
        .expect("a vhost on the RabbitMQ 4 node");
    let s = unique("");
    let b = Amqp10Claw::builder(
        &url,
        format!("tr{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .durable(false)
    .queue_expiry(Duration::from_secs(90));
    let (c, mut inbox) = started(b).await;
    let t = unique("transient-");
    c.send(c.jid(), None, Packet::from(t.clone()))
        .await
        .unwrap();
    inbox.delivery(&t).await.acker.ack().await.unwrap();
    let listing = rabbitmq4::ctl(&[
        "-q",
        "list_queues",
        "-p",
        "claws-transient",
        "name",
        "durable",
        "arguments",
    ])
    .await
    .unwrap();
    let own = listing
        .lines()
        .find(|l| l.starts_with(&format!("xmpp_direct:tr{s}@example.com/r1\t")))
        .unwrap_or_else(|| panic!("not listed:\n{listing}"));
    assert!(own.contains("\ttrue\t") && own.contains("90000"), "{own}");
    drop(inbox);
    c.close().await.unwrap();
    c.delete_queues().await.unwrap();
}
