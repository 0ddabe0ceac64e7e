//! A claws-amqp10 instance and a claws-amqp091 instance on one RabbitMQ exchange stanzas both ways.

mod common;

use claws_core::TimingBuilder;
use std::time::Duration;

use claws_amqp091::AmqpClaw;
use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::topology::{queues, Subscriptions};
use claws_core::trace::{self, TraceContext};
use claws_core::{Claw, Packet, QueueKind};
use common::{unique, Inbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp091_and_amqp10_instances_talk_both_ways() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let s = unique("");
    let old = AmqpClaw::builder(&common::url(), format!("old{s}@example.com/r1"))
        .send_timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let new = Amqp10Claw::builder(
        &common::url(),
        format!("new{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .build()
    .unwrap();
    let (ev_old, mut in_old) = Inbox::new();
    let (ev_new, mut in_new) = Inbox::new();
    old.start(ev_old).await.expect("0-9-1 claw starts");
    in_old.until_connected().await;
    new.start(ev_new).await.expect("1.0 claw starts");
    in_new.until_connected().await;

    // 0-9-1 -> 1.0, direct with an id, inside a trace.
    let t1 = unique("to-new-");
    let root = TraceContext::new_root();
    trace::scope(
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
    assert_eq!(
        d.packet.as_str(),
        Some(&*format!("<iq>{t1}</iq>")),
        "payload unchanged"
    );
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, new.jid().as_str());
    assert_eq!(d.via.id.as_deref(), Some("q1"));
    assert_eq!(
        d.via.from.as_ref(),
        Some(old.jid()),
        "reply_to read as the sender"
    );
    // RabbitMQ 3.x drops 0-9-1 headers on the way to an AMQP 1.0 consumer, `traceparent`
    // with them, and hands 1.0 application properties to 0-9-1 as an encoded 1.0 section
    // (`x-amqp-1.0-app-properties`): no trace crosses protocols there; the delivery is
    // unaffected. RabbitMQ 4 carries it both ways.
    if claws_test::rabbitmq::on_rabbitmq4() {
        let carried = d.via.trace.expect("4.x: the trace crosses protocols");
        assert_eq!(carried.trace_id(), root.trace_id());
    } else {
        assert_eq!(d.via.trace, None);
    }
    let reply_to = d.via.reply_to().unwrap();
    d.acker.ack().await.unwrap();

    // 1.0 -> 0-9-1: the reply goes back the way it came.
    let t2 = unique("to-old-");
    trace::scope(
        root,
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
        "a data body arrives raw"
    );
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, old.jid().as_str());
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_direct"));
    assert_eq!(d.via.id.as_deref(), Some("q1"));
    assert_eq!(
        d.via.from.as_ref(),
        Some(new.jid()),
        "the sender's JID read back from reply_to"
    );
    if claws_test::rabbitmq::on_rabbitmq4() {
        // 4.x hands the 0-9-1 header over as an application property.
        assert!(d.via.trace.is_some(), "4.x: the trace crosses protocols");
    } else {
        assert_eq!(d.via.trace, None, "3.x: no trace across protocols");
    }
    d.acker.ack().await.unwrap();

    // Broadcasts both ways.
    let t3 = unique("bc-new-");
    new.publish(Packet::from(t3.clone())).await.unwrap();
    let d = in_old.delivery(&t3).await;
    assert_eq!(d.via.jid, new.jid().as_str());
    assert!(matches!(
        d.via.queue,
        QueueKind::Fanout | QueueKind::GroupFanout
    ));
    d.acker.ack().await.unwrap();
    let t4 = unique("bc-old-");
    old.publish(Packet::from(t4.clone())).await.unwrap();
    let d = in_new.delivery(&t4).await;
    assert_eq!(d.via.jid, old.jid().as_str());
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_fanout"));
    d.acker.ack().await.unwrap();

    // Undelivered events (other tests' broadcasts) go back to their queues.
    drop((in_old, in_new));
    old.close().await.unwrap();
    new.close().await.unwrap();
    new.delete_queues().await.unwrap();
    let conn = lapin::Connection::connect(&common::url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for q in queues(old.jid(), Subscriptions::all()).unwrap() {
        ch.queue_delete(q.name.as_str().into(), Default::default())
            .await
            .unwrap();
    }
}
