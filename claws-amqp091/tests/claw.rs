//! The claw against the real RabbitMQ: routing per TOPOLOGY.md, Via, confirms and returns,
//! settling, close, names, mismatches, unreachable brokers.

mod common;

use claws_amqp091::AmqpClaw;
use claws_core::TimingBuilder;
use claws_core::TopologyBuilder;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use claws_core::topology::{QueueKind, Subscriptions, DEAD_LETTER_QUEUE};
use claws_core::{jid, Claw, Error, Events, Packet};
use common::*;
use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

#[tokio::test]
async fn full_jid_send_arrives_with_via_and_correlation_id() {
    let u = uid();
    let mut svc = start(builder(&format!("svc-{u}@test/a")).name("rabbit")).await;
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;

    let to = svc.claw.jid().clone();
    client
        .claw
        .send(
            &to,
            Some("id-1"),
            Packet::from(format!("<message id='id-1'>{u}</message>")),
        )
        .await
        .expect("confirmed send");
    let d = next(&mut svc.rx, &u).await;
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, to.as_str());
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_direct"));
    assert_eq!(&*d.via.claw, "rabbit");
    assert_eq!(d.via.id.as_deref(), Some("id-1"));
    assert_eq!(d.via.from.as_ref(), Some(client.claw.jid()));
    assert_eq!(d.attempt, 1);
    assert_eq!(
        d.packet.as_str(),
        Some(format!("<message id='id-1'>{u}</message>").as_str())
    );
    d.acker.ack().await.expect("ack");

    // Without an id there is no correlation id.
    client
        .claw
        .send(&to, None, Packet::from(format!("<presence>{u}</presence>")))
        .await
        .unwrap();
    let d = next(&mut svc.rx, &u).await;
    assert_eq!(d.via.id, None);
    d.acker.ack().await.unwrap();

    svc.claw.close().await.expect("close");
    client.claw.close().await.expect("close");
    cleanup(&[&svc.claw, &client.claw]).await;
}

#[tokio::test]
async fn bare_jid_sends_are_balanced_across_three_instances() {
    let u = uid();
    let group = format!("pool-{u}@test");
    let mut instances = Vec::new();
    for i in 0..3 {
        let b = builder(&format!("{group}/w{i}"))
            .name(format!("w{i}"))
            .prefetch(1);
        instances.push(start(b).await);
    }
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    let to = jid::parse(&group).unwrap();
    const N: usize = 30;
    for i in 0..N {
        client
            .claw
            .send(&to, None, Packet::from(format!("{u} #{i}")))
            .await
            .unwrap();
    }
    // Collect until N distinct stanzas arrived; every one exactly once, every instance some.
    let (tx, mut all) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for inst in instances.iter_mut() {
        let mut rx = std::mem::replace(&mut inst.rx, Events::channel(1).1);
        let tx = tx.clone();
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let d = next(&mut rx, &u).await;
                assert_eq!(d.via.queue, QueueKind::GroupDirect);
                let _ = tx.send((
                    d.via.claw.to_string(),
                    d.packet.as_str().unwrap().to_owned(),
                ));
                d.acker.ack().await.unwrap();
            }
        }));
    }
    let mut seen = HashSet::new();
    let mut per: HashMap<String, usize> = HashMap::new();
    while seen.len() < N {
        let (claw, payload) = tokio::time::timeout(WAIT, all.recv())
            .await
            .expect("all stanzas")
            .unwrap();
        assert!(seen.insert(payload.clone()), "{payload} delivered twice");
        *per.entry(claw).or_default() += 1;
    }
    assert_eq!(per.len(), 3, "every instance takes a share: {per:?}");
    for t in tasks {
        t.abort();
    }
    for inst in &instances {
        inst.claw.close().await.unwrap();
    }
    client.claw.close().await.unwrap();
    let claws: Vec<_> = instances
        .iter()
        .map(|i| &*i.claw)
        .chain([&*client.claw])
        .collect();
    cleanup(&claws).await;
}

#[tokio::test]
async fn broadcasts_reach_every_instance_and_each_group_once() {
    let u = uid();
    let mut g1 = start(builder(&format!("grp-{u}@test/1")).name("g1")).await;
    let mut g2 = start(builder(&format!("grp-{u}@test/2")).name("g2")).await;
    let mut other = start(builder(&format!("other-{u}@test/x")).name("o")).await;
    let publisher =
        start(builder(&format!("pub-{u}@test/p")).subscriptions(Subscriptions::none())).await;

    publisher
        .claw
        .publish(Packet::from(format!("<presence>{u}</presence>")))
        .await
        .unwrap();

    // Each instance: one copy on its own fanout queue. Group grp: one copy among g1/g2.
    // Group other: one copy.
    let mut kinds: Vec<(String, QueueKind)> = Vec::new();
    for s in [&mut g1, &mut g2, &mut other] {
        let d = next(&mut s.rx, &u).await;
        assert_eq!(d.via.exchange.as_deref(), Some("xmpp_fanout"));
        assert_eq!(d.via.jid, publisher.claw.jid().as_str());
        assert_eq!(d.via.from.as_ref(), Some(publisher.claw.jid()));
        kinds.push((d.via.claw.to_string(), d.via.queue.clone()));
        d.acker.ack().await.unwrap();
    }
    let d = next(&mut other.rx, &u).await;
    kinds.push((d.via.claw.to_string(), d.via.queue.clone()));
    d.acker.ack().await.unwrap();
    // The group's copy goes to g1 or g2: wait on both.
    let d = tokio::select! {
        d = next(&mut g1.rx, &u) => d,
        d = next(&mut g2.rx, &u) => d,
    };
    kinds.push((d.via.claw.to_string(), d.via.queue.clone()));
    d.acker.ack().await.unwrap();

    let own = kinds
        .iter()
        .filter(|(_, k)| *k == QueueKind::Fanout)
        .count();
    let groups = kinds
        .iter()
        .filter(|(_, k)| *k == QueueKind::GroupFanout)
        .count();
    assert_eq!((own, groups), (3, 2), "{kinds:?}");
    assert!(
        kinds.contains(&("o".into(), QueueKind::GroupFanout)),
        "{kinds:?}"
    );
    // And no second group copy for grp.
    assert!(nothing_more(&mut g1.rx, &u, Duration::from_millis(300)).await);
    assert!(nothing_more(&mut g2.rx, &u, Duration::from_millis(300)).await);

    // Other tests' broadcasts may still be arriving: dropped unread, they go back to their
    // queues, instead of holding close until its deadline.
    let claws = [g1, g2, other, publisher].map(|s| s.claw);
    for claw in &claws {
        claw.close().await.unwrap();
    }
    cleanup(&[&claws[0], &claws[1], &claws[2], &claws[3]]).await;
}

#[tokio::test]
async fn a_send_nobody_consumes_is_no_route() {
    let u = uid();
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    let err = client
        .claw
        .send(
            &jid::parse(&format!("nobody-{u}@test/x")).unwrap(),
            None,
            Packet::from("<message/>"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NoRoute { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("nobody-{u}@test/x")),
        "{err}"
    );
    // The claw still works after a return.
    client
        .claw
        .publish(Packet::from("<presence/>"))
        .await
        .unwrap();
    client.claw.close().await.unwrap();
}

#[tokio::test]
async fn failures_are_redelivered_then_dead_lettered() {
    let u = uid();
    let mut svc = start(builder(&format!("fail-{u}@test/a")).max_deliveries(3)).await;
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    let body = format!("<message>{u}</message>");
    client
        .claw
        .send(svc.claw.jid(), Some("x1"), Packet::from(body.clone()))
        .await
        .unwrap();

    for attempt in 1..=3 {
        let d = next(&mut svc.rx, &u).await;
        assert_eq!(d.attempt, attempt);
        // The Via stays the original one on every attempt.
        assert_eq!(d.via.jid, svc.claw.jid().as_str());
        assert_eq!(d.via.exchange.as_deref(), Some("xmpp_direct"));
        assert_eq!(d.via.id.as_deref(), Some("x1"));
        assert_eq!(d.via.from.as_ref(), Some(client.claw.jid()));
        d.acker
            .reject(&Error::Handler("boom".into()))
            .await
            .unwrap();
    }
    assert!(
        nothing_more(&mut svc.rx, &u, Duration::from_millis(300)).await,
        "no 4th delivery"
    );

    // It is in the dead-letter queue.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let mut found = false;
    for _ in 0..10_000 {
        let Some(m) = ch
            .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
            .await
            .unwrap()
        else {
            break;
        };
        if m.delivery.data == body.as_bytes() {
            m.delivery.acker.ack(Default::default()).await.unwrap();
            found = true;
            break;
        }
        // Someone else's: left unacked; closing the channel requeues it.
    }
    assert!(found, "the stanza is in `{DEAD_LETTER_QUEUE}`");
    ch.close(200, "ok".into()).await.unwrap();

    // A delivery dropped unsettled comes back.
    client
        .claw
        .send(svc.claw.jid(), None, Packet::from(format!("again {u}")))
        .await
        .unwrap();
    let d = next(&mut svc.rx, &u).await;
    drop(d);
    let d = next(&mut svc.rx, &u).await;
    assert_eq!(d.packet.as_str(), Some(format!("again {u}").as_str()));
    d.acker.ack().await.unwrap();

    svc.claw.close().await.unwrap();
    client.claw.close().await.unwrap();
    let _ = conn.close(200, "ok".into()).await;
    cleanup(&[&svc.claw, &client.claw]).await;
}

#[tokio::test]
async fn close_waits_for_in_flight_deliveries_then_acks_them() {
    let u = uid();
    let mut svc = start(builder(&format!("close-{u}@test/a"))).await;
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    client
        .claw
        .send(svc.claw.jid(), None, Packet::from(format!("work {u}")))
        .await
        .unwrap();
    let d = next(&mut svc.rx, &u).await;

    let claw = svc.claw.clone();
    let mut closing = tokio::spawn(async move { claw.close().await });
    // close() is waiting for the handler.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut closing)
            .await
            .is_err()
    );
    // Sends still work while draining (a handler may reply).
    client
        .claw
        .send(client.claw.jid(), None, Packet::from("x"))
        .await
        .expect_err("client consumes nothing");
    d.acker.ack().await.expect("ack during close");
    tokio::time::timeout(WAIT, closing)
        .await
        .expect("close finished")
        .unwrap()
        .expect("close ok");

    // The stanza was acked: its queue is empty.
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            svc.claw.topology().queues[1].name.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count(), 0);
    // After close, sends fail clearly.
    let err = svc
        .claw
        .send(client.claw.jid(), None, Packet::from("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed { .. }), "{err}");
    client.claw.close().await.unwrap();
    let _ = conn.close(200, "ok".into()).await;
    cleanup(&[&svc.claw, &client.claw]).await;
}

#[tokio::test]
async fn close_gives_unsettled_deliveries_back_after_its_deadline() {
    let u = uid();
    let mut svc =
        start(builder(&format!("stuck-{u}@test/a")).close_timeout(Duration::from_millis(300)))
            .await;
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    client
        .claw
        .send(svc.claw.jid(), None, Packet::from(format!("stuck {u}")))
        .await
        .unwrap();
    let d = next(&mut svc.rx, &u).await;
    let err = svc.claw.close().await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Acking on the closed connection fails; the stanza is back in its queue.
    assert!(d.acker.ack().await.is_err());
    let again = start(builder(&format!("stuck-{u}@test/a"))).await;
    let mut again = again;
    let d = next(&mut again.rx, &u).await;
    d.acker.ack().await.unwrap();
    // Other tests' broadcasts may still be arriving on the fanout queues: dropped unread,
    // they go back to their queues instead of holding close until its deadline.
    drop(again.rx);
    again.claw.close().await.unwrap();
    client.claw.close().await.unwrap();
    cleanup(&[&again.claw, &client.claw]).await;
}

#[tokio::test]
async fn names_over_255_bytes_fail_at_build() {
    let jid = format!("n@test/{}", "r".repeat(250));
    let err = builder(&jid).build().unwrap_err();
    assert!(matches!(err, Error::NameTooLong { .. }), "{err}");
    assert!(err.to_string().contains("255-byte"), "{err}");
    // A 255-byte queue name is fine.
    let resource = "r".repeat(255 - "xmpp_direct:n@test/".len());
    let claw = builder(&format!("n@test/{resource}")).build().unwrap();
    assert_eq!(claw.topology().queues[1].name.len(), 255);
    // So is sending to a long JID: an error, not a panic.
    let client = builder("c@test/c")
        .subscriptions(Subscriptions::none())
        .build()
        .unwrap();
    let long = jid::parse(&format!("n@test/{}", "r".repeat(300))).unwrap();
    let err = client
        .send(&long, None, Packet::from("x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NameTooLong { .. }), "{err}");
}

#[tokio::test]
async fn an_existing_queue_with_other_settings_is_named_with_the_fix() {
    let u = uid();
    let group = format!("pc-{u}@test");
    let queue = format!("xmpp_direct:{group}");
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    // Someone declared the group queue transient (RabbitMQ 4.3 refuses that: a quorum queue
    // there).
    let four = claws_test::rabbitmq::on_rabbitmq4();
    let mut arguments = FieldTable::default();
    if four {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(claws_core::topology::DEAD_LETTER_EXCHANGE.into()),
        );
    }
    let options = QueueDeclareOptions {
        durable: four,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue.as_str().into(), options, arguments)
        .await
        .unwrap();
    let claw = builder(&format!("{group}/a")).build().unwrap();
    let err = claw.start(Events::channel(8).0).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Config(_)), "{msg}");
    assert!(msg.contains(&queue), "{msg}");
    let (arg, fix) = if four {
        ("x-queue-type", "quorum_groups")
    } else {
        ("durable", "amqp091.durable")
    };
    assert!(msg.contains(arg) && msg.contains(fix), "{msg}");
    let _ = ch
        .queue_delete(queue.as_str().into(), Default::default())
        .await;
    let _ = conn.close(200, "ok".into()).await;
    cleanup(&[&claw]).await;
}

#[tokio::test]
async fn an_unreachable_broker_fails_fast_without_the_password() {
    let claw =
        claws_amqp091::AmqpClaw::builder("amqp://someone:s3cret@127.0.0.1:1/%2f", "x@test/a")
            .connect_timeout(Duration::from_secs(3))
            .build()
            .unwrap();
    let started = std::time::Instant::now();
    let err = claw.start(Events::channel(8).0).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    let msg = err.to_string();
    assert!(!msg.contains("s3cret"), "{msg}");
    assert!(msg.contains("someone@127.0.0.1:1"), "{msg}");
    assert!(!format!("{claw:?}").contains("s3cret"));
}

#[tokio::test]
async fn from_config_reads_the_amqp091_table() {
    let mut config = claws_core::Config {
        jid: "svc@test/a".into(),
        name: Some("rabbit".into()),
        ..Default::default()
    };
    config
        .set_section(
            "amqp091",
            &claws_amqp091::Amqp091Options {
                host: Some("broker.invalid".into()),
                password: "pw".into(),
                queues: claws_core::topology::TopologyOptions {
                    durable: false,
                    quorum_groups: true,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .unwrap();
    let claw = claws_amqp091::AmqpClaw::from_config(&config).unwrap();
    assert_eq!(claw.name(), "rabbit");
    assert_eq!(claw.endpoint(), "amqp://guest@broker.invalid:5672/%2F");
    assert!(!claw.topology().queues[1].durable);
    // The queue settings in the table reach the plan (flattened keys).
    assert!(claw.topology().queues[2]
        .arguments
        .iter()
        .any(|(k, v)| *k == "x-queue-type" && v.to_string() == "quorum"));

    config
        .set_section("amqp091", &HashMap::from([("durabel", true)]))
        .unwrap();
    let err = claws_amqp091::AmqpClaw::from_config(&config).unwrap_err();
    assert!(err.to_string().contains("durabel"), "{err}");
}

#[tokio::test]
async fn declarations_follow_the_options() {
    let u = uid();
    // durable = false is the transient world, exchanges included: its own vhost.
    let url = transient_url();
    let s = start(
        AmqpClaw::builder(&url, format!("decl-{u}@test/a").as_str())
            .durable(false)
            .queue_expiry(Duration::from_secs(60))
            .quorum_groups(true),
    )
    .await;
    // Works end to end on quorum group queues.
    let client = start(
        AmqpClaw::builder(&url, format!("client-{u}@test/c").as_str())
            .durable(false)
            .subscriptions(Subscriptions::none()),
    )
    .await;
    client
        .claw
        .send(
            &jid::parse(&format!("decl-{u}@test")).unwrap(),
            None,
            Packet::from(format!("q {u}")),
        )
        .await
        .unwrap();
    let mut rx = s.rx;
    let d = next(&mut rx, &u).await;
    assert_eq!(d.via.queue, QueueKind::GroupDirect);
    d.acker.ack().await.unwrap();

    let out = ctl(&[
        "-q",
        "list_queues",
        "-p",
        "claws-transient",
        "name",
        "durable",
        "type",
        "arguments",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = |name: &str| -> String {
        text.lines()
            .find(|l| l.split('\t').next() == Some(name))
            .unwrap_or_else(|| panic!("queue {name} not listed:\n{text}"))
            .to_owned()
    };
    let own = line(&format!("xmpp_direct:decl-{u}@test/a"));
    // RabbitMQ 4.3 refuses transient shared queues: durable with x-expires there.
    let durable = if claws_test::rabbitmq::on_rabbitmq4() {
        "\ttrue\tclassic\t"
    } else {
        "\tfalse\tclassic\t"
    };
    assert!(own.contains(durable), "{own}");
    assert!(own.contains("x-expires") && own.contains("60000"), "{own}");
    assert!(own.contains("xmpp_dead_letter"), "{own}");
    let group = line(&format!("xmpp_fanout:decl-{u}@test"));
    assert!(group.contains("\ttrue\tquorum\t"), "{group}");
    assert!(!group.contains("x-expires"), "{group}");

    drop(rx);
    s.claw.close().await.unwrap();
    client.claw.close().await.unwrap();
    for claw in [&s.claw, &client.claw] {
        for (q, _) in claw.topology().consumed() {
            let _ = ctl(&["-q", "delete_queue", "-p", "claws-transient", &q.name]);
        }
    }
}

#[tokio::test]
async fn a_cancelled_consumer_is_subscribed_again_while_the_others_consume() {
    let u = uid();
    let me = format!("cancel-{u}@test/a");
    let mut s = start(builder(&me)).await;
    let client =
        start(builder(&format!("client-{u}@test/c")).subscriptions(Subscriptions::none())).await;
    // The broker cancels the consumer of the instance's fanout queue (deleted under it).
    let fanout = format!("xmpp_fanout:{me}");
    let out = ctl(&["-q", "delete_queue", &fanout]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Reported, and the connection stays: the direct queue keeps consuming meanwhile.
    let (mut lost, mut restored) = (false, false);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !(lost && restored) {
        match tokio::time::timeout_at(deadline, s.rx.recv()).await {
            Ok(Some(claws_core::Event::ConsumerLost { queue, .. })) => {
                assert_eq!(queue, fanout);
                lost = true;
            }
            Ok(Some(claws_core::Event::ConsumerRestored { queue, .. })) => {
                assert_eq!(queue, fanout);
                assert!(lost, "restored before lost");
                restored = true;
            }
            Ok(Some(claws_core::Event::Disconnected { reason, .. })) => {
                panic!("one cancelled consumer took the connection down: {reason}")
            }
            Ok(Some(_)) => {}
            other => panic!("no ConsumerLost/ConsumerRestored for {fanout}: {other:?}"),
        }
    }
    client
        .claw
        .send(
            &jid::parse(&me).unwrap(),
            None,
            Packet::from(format!("d {u}")),
        )
        .await
        .unwrap();
    let d = next(&mut s.rx, &format!("d {u}")).await;
    assert_eq!(d.via.queue, QueueKind::Direct);
    d.acker.ack().await.unwrap();
    // The queue was declared again and bound: broadcasts reach it.
    client
        .claw
        .publish(Packet::from(format!("b {u}")))
        .await
        .unwrap();
    let mut kinds = HashSet::new();
    while kinds.len() < 2 {
        let d = next(&mut s.rx, &format!("b {u}")).await;
        kinds.insert(d.via.queue.clone());
        d.acker.ack().await.unwrap();
    }
    assert!(kinds.contains(&QueueKind::Fanout), "{kinds:?}");
    s.claw.close().await.unwrap();
    client.claw.close().await.unwrap();
    cleanup(&[&s.claw, &client.claw]).await;
}
