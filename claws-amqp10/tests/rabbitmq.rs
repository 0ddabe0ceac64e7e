//! The RabbitMQ address scheme against the real RabbitMQ (127.0.0.1:5672, AMQP 1.0 plugin).

mod common;

use claws_core::TimingBuilder;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::jid::parse;
use claws_core::{Claw, Error, Event, Packet, QueueKind};
use claws_test::fault::FaultProxy;
use common::{unique, Inbox, WAIT};
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;

fn claw(jid: &str) -> claws_amqp10::Amqp10ClawBuilder {
    Amqp10Claw::builder(&common::url(), jid, AddressScheme::RabbitMq)
}

async fn started(jid: &str) -> (Arc<Amqp10Claw>, Inbox) {
    started_with(claw(jid)).await
}

async fn started_with(b: claws_amqp10::Amqp10ClawBuilder) -> (Arc<Amqp10Claw>, Inbox) {
    let c = Arc::new(b.build().expect("valid claw"));
    let (events, mut inbox) = Inbox::new();
    c.start(events).await.expect("start against RabbitMQ");
    inbox.until_connected().await;
    (c, inbox)
}

/// Drops the inboxes (undelivered events return to their queues), closes, deletes the queues.
async fn finish(claws: &[&Arc<Amqp10Claw>], inboxes: impl IntoIterator<Item = Inbox>) {
    drop(inboxes.into_iter().collect::<Vec<_>>());
    for c in claws {
        c.close().await.expect("clean close");
        c.delete_queues().await.expect("delete queues");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_send_reaches_the_full_jid_with_its_via() {
    let s = unique("");
    let (a, _ia) = started(&format!("a{s}@example.com/r1")).await;
    let (b, mut ib) = started(&format!("b{s}@example.com/r/1")).await;
    let token = unique("direct-");
    let to = b.jid().clone();
    a.send(
        &to,
        Some("id-7"),
        Packet::from(format!("<message>{token}</message>")),
    )
    .await
    .expect("accepted");
    let d = ib.delivery(&token).await;
    assert_eq!(d.via.queue, QueueKind::Direct);
    assert_eq!(d.via.jid, to.as_str());
    assert_eq!(d.via.exchange.as_deref(), Some("xmpp_direct"));
    assert_eq!(d.via.id.as_deref(), Some("id-7"));
    assert_eq!(d.via.from.as_ref(), Some(a.jid()));
    assert_eq!(&*d.via.claw, "amqp10");
    assert_eq!(d.attempt, 1);
    assert_eq!(
        d.packet.as_str(),
        Some(&*format!("<message>{token}</message>"))
    );
    d.acker.ack().await.expect("ack");
    finish(&[&a, &b], [_ia, ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_jid_sends_are_load_balanced() {
    let s = unique("");
    let bare = format!("svc{s}@example.com");
    let (w1, mut i1) = started(&format!("{bare}/w1")).await;
    let (w2, mut i2) = started(&format!("{bare}/w2")).await;
    let token = unique("lb-");
    let to = parse(&bare).unwrap();
    for n in 0..20 {
        w1.send(&to, None, Packet::from(format!("{token}:{n}")))
            .await
            .unwrap();
    }
    let mut seen = HashSet::new();
    let mut per = [0, 0];
    while seen.len() < 20 {
        let (d, which) = tokio::select! {
            d = i1.delivery(&token) => (d, 0),
            d = i2.delivery(&token) => (d, 1),
        };
        assert_eq!(d.via.queue, QueueKind::GroupDirect);
        assert_eq!(d.via.jid, bare);
        assert!(
            seen.insert(d.packet.as_str().unwrap().to_owned()),
            "delivered twice"
        );
        per[which] += 1;
        d.acker.ack().await.unwrap();
    }
    assert!(i1
        .nothing_within(&token, Duration::from_millis(300))
        .await
        .is_none());
    assert!(i2
        .nothing_within(&token, Duration::from_millis(300))
        .await
        .is_none());
    assert_eq!(per[0] + per[1], 20);
    finish(&[&w1, &w2], [i1, i2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_the_instance_and_the_group() {
    let s = unique("");
    let (a, _ia) = started(&format!("pub{s}@example.com/p")).await;
    let (b, mut ib) = started(&format!("sub{s}@example.com/r1")).await;
    let token = unique("bc-");
    a.publish(Packet::from(format!("<presence>{token}</presence>")))
        .await
        .unwrap();
    let mut kinds = HashSet::new();
    for _ in 0..2 {
        let d = ib.delivery(&token).await;
        assert_eq!(d.via.exchange.as_deref(), Some("xmpp_fanout"));
        assert_eq!(
            d.via.jid,
            a.jid().as_str(),
            "a broadcast's key is the sender's JID"
        );
        assert_eq!(d.via.from.as_ref(), Some(a.jid()));
        kinds.insert(d.via.queue.clone());
        d.acker.ack().await.unwrap();
    }
    assert_eq!(
        kinds,
        HashSet::from([QueueKind::Fanout, QueueKind::GroupFanout])
    );
    finish(&[&a, &b], [_ia, ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_redelivered_then_dead_lettered() {
    // Watch the dead-letter exchange through a queue of our own.
    let conn = lapin::Connection::connect(&common::url(), Default::default())
        .await
        .expect("0-9-1 connection");
    let ch = conn.create_channel().await.unwrap();
    let watch = unique("test-dead-letters-");
    ch.queue_declare(
        watch.as_str().into(),
        // Exclusive: RabbitMQ 4.3 refuses transient non-exclusive queues.
        QueueDeclareOptions {
            auto_delete: true,
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let s = unique("");
    let (b, mut ib) = started_with(claw(&format!("dl{s}@example.com/r1")).max_deliveries(3)).await;
    ch.queue_bind(
        watch.as_str().into(),
        "xmpp_dead_letter".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let token = unique("dl-");
    b.send(b.jid(), None, Packet::from(token.clone()))
        .await
        .unwrap();
    for attempt in 1..=3 {
        let d = ib.delivery(&token).await;
        assert_eq!(d.attempt, attempt);
        d.acker
            .reject(&Error::Handler("fails".into()))
            .await
            .unwrap();
    }
    assert!(ib
        .nothing_within(&token, Duration::from_millis(500))
        .await
        .is_none());
    let found = tokio::time::timeout(common::WAIT, async {
        loop {
            if let Some(m) = ch
                .basic_get(watch.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                if m.data == token.as_bytes() {
                    return;
                }
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(found.is_ok(), "the stanza reached xmpp_dead_letter");
    ch.queue_delete(watch.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    finish(&[&b], [ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_acker_releases_its_delivery() {
    let s = unique("");
    let (b, mut ib) = started(&format!("drop{s}@example.com/r1")).await;
    let token = unique("drop-");
    b.send(b.jid(), None, Packet::from(token.clone()))
        .await
        .unwrap();
    let d = ib.delivery(&token).await;
    assert_eq!(d.attempt, 1);
    drop(d);
    let d = ib.delivery(&token).await;
    assert_eq!(d.attempt, 2);
    d.acker.ack().await.unwrap();
    finish(&[&b], [ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credit_bounds_unsettled_deliveries() {
    let s = unique("");
    let subs = claws_core::topology::Subscriptions {
        direct: true,
        ..claws_core::topology::Subscriptions::none()
    };
    let (b, mut ib) = started_with(
        claw(&format!("cr{s}@example.com/r1"))
            .prefetch(2)
            .subscriptions(subs),
    )
    .await;
    let token = unique("credit-");
    for n in 0..4 {
        b.send(b.jid(), None, Packet::from(format!("{token}:{n}")))
            .await
            .unwrap();
    }
    let d1 = ib.delivery(&token).await;
    let d2 = ib.delivery(&token).await;
    assert!(
        ib.nothing_within(&token, Duration::from_millis(400))
            .await
            .is_none(),
        "a third while two are unsettled"
    );
    d1.acker.ack().await.unwrap();
    let d3 = ib.delivery(&token).await;
    assert_eq!(
        d3.packet.as_str().unwrap(),
        format!("{token}:2"),
        "order kept"
    );
    for d in [d2, d3] {
        d.acker.ack().await.unwrap();
    }
    let d4 = ib.delivery(&token).await;
    d4.acker.ack().await.unwrap();
    finish(&[&b], [ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stanzas_wait_in_durable_queues_while_the_instance_is_away() {
    let s = unique("");
    let jid = format!("away{s}@example.com/r1");
    let (b, ib) = started(&jid).await;
    drop(ib);
    b.close().await.unwrap();
    let (a, _ia) = started(&format!("a{s}@example.com/r1")).await;
    let token = unique("away-");
    for n in 0..5 {
        a.send(
            &parse(&jid).unwrap(),
            None,
            Packet::from(format!("{token}:{n}")),
        )
        .await
        .unwrap();
    }
    let (b2, mut ib2) = started(&jid).await;
    for n in 0..5 {
        let d = ib2.delivery(&token).await;
        assert_eq!(d.packet.as_str().unwrap(), format!("{token}:{n}"));
        d.acker.ack().await.unwrap();
    }
    finish(&[&a, &b2], [_ia, ib2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_waits_for_in_flight_deliveries() {
    let s = unique("");
    // Direct only: no other test's broadcast can hold the close up.
    let direct = claws_core::topology::Subscriptions {
        direct: true,
        ..claws_core::topology::Subscriptions::none()
    };
    let (b, mut ib) =
        started_with(claw(&format!("cl{s}@example.com/r1")).subscriptions(direct)).await;
    let token = unique("close-");
    b.send(b.jid(), None, Packet::from(token.clone()))
        .await
        .unwrap();
    let d = ib.delivery(&token).await;
    let closer = {
        let b = b.clone();
        tokio::spawn(async move { b.close().await })
    };
    tokio::task::yield_now().await;
    assert!(
        !closer.is_finished(),
        "close waits for the unsettled delivery"
    );
    d.acker.ack().await.unwrap();
    closer.await.unwrap().expect("close after the ack");
    let e = b
        .send(b.jid(), None, Packet::from("late"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Closed { .. }), "{e}");
    b.delete_queues().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_a_connection_cut_losing_nothing() {
    let proxy = FaultProxy::start(common::rabbit()).await.unwrap();
    let s = unique("");
    let via_proxy = format!("amqp://guest:guest@{}", proxy.addr());
    let b = Arc::new(
        Amqp10Claw::builder(
            &via_proxy,
            format!("rc{s}@example.com/r1"),
            AddressScheme::RabbitMq,
        )
        .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
        .prefetch(50)
        .build()
        .unwrap(),
    );
    let (events, mut ib) = Inbox::new();
    b.start(events).await.unwrap();
    ib.until_connected().await;
    let (a, _ia) = started(&format!("rca{s}@example.com/r1")).await;
    let token = unique("rc-");
    const N: usize = 1000;
    let sender = {
        let (a, to, token) = (a.clone(), b.jid().clone(), token.clone());
        tokio::spawn(async move {
            for n in 0..N {
                a.send(&to, None, Packet::from(format!("{token}:{n}")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = HashSet::new();
    let mut cut = false;
    while seen.len() < N {
        if let Event::Received(d) = ib.event().await {
            let text = d.packet.as_str().unwrap_or_default().to_owned();
            if text.starts_with(&token) {
                seen.insert(text);
            }
            // Acks on the cut connection may fail: the broker redelivers those.
            let _ = d.acker.ack().await;
            if seen.len() == N / 3 && !cut {
                proxy.cut();
                cut = true;
            }
        }
    }
    sender.await.unwrap();
    assert!(cut);
    assert!(ib.disconnected >= 1, "Disconnected was reported");
    assert!(ib.connected >= 2, "Connected was reported again");
    // Sends from the recovered claw work too.
    let token2 = unique("after-");
    b.send(b.jid(), None, Packet::from(token2.clone()))
        .await
        .unwrap();
    ib.delivery(&token2).await.acker.ack().await.unwrap();
    finish(&[&a, &b], [_ia, ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_during_an_outage_are_bounded() {
    let proxy = FaultProxy::start(common::rabbit()).await.unwrap();
    let s = unique("");
    let url = format!("amqp://guest:guest@{}", proxy.addr());
    let b = Amqp10Claw::builder(
        &url,
        format!("out{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .send_timeout(Duration::from_millis(600))
    // Room for a loaded machine's first connect; the outage below is refused at once.
    .connect_timeout(Duration::from_secs(2))
    .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
    .build()
    .unwrap();
    let (events, mut ib) = Inbox::new();
    b.start(events).await.unwrap();
    ib.until_connected().await;
    proxy.refuse(true);
    proxy.cut();
    loop {
        if let Event::Disconnected { .. } = ib.event().await {
            break;
        }
    }
    let started = std::time::Instant::now();
    let e = b.send(b.jid(), None, Packet::from("x")).await.unwrap_err();
    assert!(matches!(e, Error::Disconnected { .. }), "{e}");
    assert!(started.elapsed() < Duration::from_secs(3));
    proxy.heal();
    ib.until_connected().await;
    let token = unique("healed-");
    b.send(b.jid(), None, Packet::from(token.clone()))
        .await
        .unwrap();
    ib.delivery(&token).await.acker.ack().await.unwrap();
    drop(ib);
    b.close().await.unwrap();
    b.delete_queues().await.unwrap();
}

/// Sends caught by a cut (awaiting credit, an attach or an outcome on the dead connection) are
/// sent again on the next connection at once, not after `send_timeout` (60 s here): with 64
/// sends in flight, none takes more than 15 s across the cut, and every stanza arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_caught_by_a_cut_complete_on_the_next_connection() {
    const N: usize = 3000;
    let proxy = FaultProxy::start(common::rabbit()).await.unwrap();
    let s = unique("");
    let url = format!("amqp://guest:guest@{}", proxy.addr());
    // A sender only: no receiving link notices the cut before the connection does.
    let b = Amqp10Claw::builder(
        &url,
        format!("caught{s}@example.com/s"),
        AddressScheme::RabbitMq,
    )
    .subscriptions(claws_core::topology::Subscriptions::none())
    .send_timeout(Duration::from_secs(60))
    .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(200))
    .build()
    .unwrap();
    let b = Arc::new(b);
    let (events, mut sender_events) = Inbox::new();
    b.start(events).await.unwrap();
    sender_events.until_connected().await;
    let (r, mut ib) = started(&format!("caught{s}@example.com/r")).await;
    let to = r.jid().clone();
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel();
    let sends = {
        let (b, s, to) = (b.clone(), s.clone(), to.clone());
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::new();
            for i in 0..N {
                let permit = gate.clone().acquire_owned().await.unwrap();
                let (b, sent_tx, to) = (b.clone(), sent_tx.clone(), to.clone());
                let body = format!("{s}-{i}");
                tasks.push(tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let r = b.send(&to, None, Packet::from(body)).await;
                    let _ = sent_tx.send(());
                    drop(permit);
                    (r, started.elapsed())
                }));
            }
            let mut slowest = Duration::ZERO;
            for t in tasks {
                let (r, took) = t.await.unwrap();
                r.expect("every send succeeds across the cut");
                slowest = slowest.max(took);
            }
            slowest
        })
    };
    for _ in 0..N / 4 {
        tokio::time::timeout(WAIT, sent_rx.recv())
            .await
            .expect("sends progress")
            .unwrap();
    }
    proxy.cut();
    let slowest = tokio::time::timeout(Duration::from_secs(45), sends)
        .await
        .expect("every send finished well before send_timeout")
        .unwrap();
    assert!(
        slowest < Duration::from_secs(15),
        "the slowest send took {slowest:?}: a send waited on the dead connection"
    );
    let mut seen = HashSet::new();
    while seen.len() < N {
        let d = ib.delivery(&s).await;
        if let Some(body) = d.packet.as_str() {
            seen.insert(body.to_owned());
        }
        // Deliveries of the cut connection cannot be acked: the broker redelivers them.
        let _ = d.acker.ack().await;
    }
    drop(sender_events);
    b.close().await.unwrap();
    finish(&[&r], [ib]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_errors_for_bad_urls_credentials_and_unreachable_brokers() {
    let e = Amqp10Claw::builder("http://x", "a@b/c", AddressScheme::RabbitMq)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("unknown scheme `http`"), "{e}");
    let e = Amqp10Claw::builder(&common::url(), "a@b@c", AddressScheme::RabbitMq)
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::InvalidJid { .. }));

    let s = unique("");
    let bad = Amqp10Claw::builder(
        &format!(
            "amqp://guest:s3cret-pw@127.0.0.1:{}",
            claws_test::rabbitmq::port()
        ),
        format!("sasl{s}@example.com/r"),
        AddressScheme::RabbitMq,
    )
    .declare(false)
    .build()
    .unwrap();
    let e = bad.start(Inbox::new().0).await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::Connect { .. }), "{msg}");
    assert!(!msg.contains("s3cret-pw"), "password shown: {msg}");
    assert!(msg.contains("***"), "{msg}");

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gone = Amqp10Claw::builder(
        &format!("amqp://guest:pw@127.0.0.1:{port}"),
        format!("gone{s}@example.com/r"),
        AddressScheme::RabbitMq,
    )
    .connect_timeout(Duration::from_millis(800))
    .build()
    .unwrap();
    let t = std::time::Instant::now();
    let e = gone.start(Inbox::new().0).await.unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(3));
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(!e.to_string().contains(":pw@"), "{e}");

    let e = claw(&format!("nodecl{s}@example.com/r"))
        .declare(false)
        .build()
        .unwrap()
        .start(Inbox::new().0)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("xmpp_direct:nodecl"), "{e}");
}

#[test]
fn from_config_reads_common_keys_and_the_amqp10_table() {
    let toml = r#"
        transport = "amqp10"
        url = "amqp://guest:guest@127.0.0.1:5672"
        jid = "cfg@example.com/r1"
        name = "one"
        prefetch = 7
        send_timeout = "1500ms"
        [subscriptions]
        fanout = false
        [amqp10]
        scheme = "queue"
        queue_expiry = "10m"
    "#;
    let figment = claws_core::Config::figment(None).merge(figment_toml(toml));
    let config = claws_core::Config::from_figment(&figment).unwrap();
    let c = Amqp10Claw::from_config(&config).unwrap();
    assert_eq!(c.name(), "one");
    assert_eq!(c.scheme(), AddressScheme::Queue);
    assert_eq!(c.sources().len(), 2);
    assert!(!c.capabilities().fanout);

    let bad = claws_core::Config::figment(None).merge(figment_toml(
        "url = \"amqp://h\"\njid = \"a@b/c\"\n[amqp10]\nschem = \"queue\"",
    ));
    let config = claws_core::Config::from_figment(&bad).unwrap();
    let e = Amqp10Claw::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("schem"), "{e}");
}

fn figment_toml(s: &str) -> figment::providers::Data<figment::providers::Toml> {
    use figment::providers::Format;
    figment::providers::Toml::string(s)
}

#[tokio::test]
async fn a_correlation_id_over_255_bytes_is_refused_before_sending() {
    // A 0-9-1 recipient's broker would close that recipient's connection over it.
    let claw = Amqp10Claw::builder(
        "amqp://guest:guest@127.0.0.1:5672",
        "longid@example.com/a",
        AddressScheme::RabbitMq,
    )
    .build()
    .unwrap();
    let id = "i".repeat(10_000);
    let err = claw
        .send(
            &claws_core::jid::parse("x@example.com").unwrap(),
            Some(&id),
            claws_core::Packet::from("<message/>"),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, claws_core::Error::NameTooLong { len: 10_000, .. }),
        "{err}"
    );
}
