//! Messages built to hurt, against the real RabbitMQ (127.0.0.1:5672, AMQP 1.0 plugin): none may
//! block the queue or lose its content silently.

mod common;

use std::sync::Arc;
use std::time::Duration;

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::topology::DEAD_LETTER_QUEUE;
use claws_core::Claw;
use common::{unique, Inbox};
use fe2o3_amqp::types::messaging::{AmqpValue, Message, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use lapin::options::{BasicAckOptions, BasicGetOptions};

async fn started(jid: &str) -> (Arc<Amqp10Claw>, Inbox) {
    let c = Arc::new(
        Amqp10Claw::builder(&common::url(), jid, AddressScheme::RabbitMq)
            .build()
            .expect("valid claw"),
    );
    let (events, mut inbox) = Inbox::new();
    c.start(events).await.expect("start against RabbitMQ");
    inbox.until_connected().await;
    (c, inbox)
}

async fn finish(c: Arc<Amqp10Claw>, inbox: Inbox) {
    drop(inbox);
    c.close().await.expect("clean close");
    c.delete_queues().await.expect("delete queues");
}

/// Takes the message containing `needle` from the dead-letter queue (the others go back);
/// false if it is not there.
async fn take_dead_letter(needle: &str) -> bool {
    let conn = lapin::Connection::connect(&common::url(), Default::default())
        .await
        .expect("0-9-1 connection");
    let ch = conn.create_channel().await.unwrap();
    let mut found = false;
    for _ in 0..100_000 {
        let Ok(Some(m)) = ch
            .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
            .await
        else {
            break;
        };
        if String::from_utf8_lossy(&m.delivery.data).contains(needle) {
            m.delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
            found = true;
            break;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    found
}

/// An amqp-value body other than a string or binary is not a stanza's bytes: it became an empty payload and was acked (its
/// content lost). Now it is dead-lettered unread, with its reason, and the queue goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_data_is_dead_lettered_not_emptied() {
    let s = unique("");
    let me = format!("value{s}@example.com/r");
    let (c, mut inbox) = started(&me).await;
    let token = unique("amqp-value-");
    let mut conn = fe2o3_amqp::Connection::open("hostile-sender", &*common::url())
        .await
        .unwrap();
    let mut session = fe2o3_amqp::Session::begin(&mut conn).await.unwrap();
    let mut tx =
        fe2o3_amqp::Sender::attach(&mut session, "hostile", common::direct_exchange_target(&me))
            .await
            .unwrap();
    // RabbitMQ 3.x: the routing key is the subject (4.x: the target's address).
    let props = || Properties::builder().subject(me.clone()).build();
    let value = Message::builder()
        .properties(props())
        .body(AmqpValue(Value::List(vec![Value::String(format!(
            "<message>{token}</message>"
        ))])))
        .build();
    tx.send(value)
        .await
        .unwrap()
        .accepted_or_else(|o| o)
        .unwrap();
    let canary = Message::builder()
        .properties(props())
        .data(Binary::from(
            format!("<message>canary {token}</message>").into_bytes(),
        ))
        .build();
    tx.send(canary)
        .await
        .unwrap()
        .accepted_or_else(|o| o)
        .unwrap();
    // The canary is the first delivery: the amqp-value message never reaches the handler.
    let canary = loop {
        if let claws_core::Event::Received(d) = inbox.event().await {
            break d;
        }
    };
    assert_eq!(
        canary.packet.as_str(),
        Some(&*format!("<message>canary {token}</message>")),
        "the amqp-value message reached the handler"
    );
    canary.acker.ack().await.unwrap();
    assert!(
        inbox
            .nothing_within("", Duration::from_millis(300))
            .await
            .is_none(),
        "the amqp-value message reached the handler"
    );
    assert!(
        take_dead_letter(&token).await,
        "the amqp-value message is not dead-lettered"
    );
    let _ = tx.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
    finish(c, inbox).await;
}

/// A message whose AMQP 1.0 sections do not decode (RabbitMQ 3.x hands a 0-9-1 publisher's
/// `x-amqp-1.0-properties` header to a 1.0 consumer as the message's properties section).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_sections_do_not_block_the_queue() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../claws-amqp091/tests/interop/poison.py"
    );
    for kind in ["amqp10_properties", "amqp10_type"] {
        let s = unique("");
        let me = format!("sections{s}@example.com/r");
        let (c, mut inbox) = started(&me).await;
        let tag = unique(kind);
        let out = std::process::Command::new("/usr/bin/python3")
            .args([script, "publish", &common::url(), &me, kind, &tag])
            .output()
            .expect("/usr/bin/python3 with pika");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let canary = inbox.delivery(&format!("canary {tag}")).await;
        canary.acker.ack().await.unwrap();
        assert!(
            take_dead_letter(&format!("poison {tag}")).await,
            "{kind}: not dead-lettered"
        );
        finish(c, inbox).await;
    }
}

/// The 1.0 claw sets `user-id` (RabbitMQ refuses one that is not the connection's user), and
/// `Via::user` carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publishing_user_is_carried() {
    let s = unique("");
    let (a, ia) = started(&format!("ua{s}@example.com/r")).await;
    let (b, mut ib) = started(&format!("ub{s}@example.com/r")).await;
    let token = unique("user-");
    a.send(
        b.jid(),
        None,
        claws_core::Packet::from(format!("<message>{token}</message>")),
    )
    .await
    .expect("accepted");
    let d = ib.delivery(&token).await;
    assert_eq!(d.via.user(), Some("guest"));
    d.acker.ack().await.unwrap();
    finish(a, ia).await;
    finish(b, ib).await;
}

/// The instances the hostile-input suite runs against (their queues deleted by name after).
struct Factory;

#[claws_core::async_trait]
impl claws_test::conformance::ClawFactory for Factory {
    fn name(&self) -> String {
        "amqp10 on RabbitMQ".into()
    }

    async fn make(
        &self,
        jid: &str,
        opts: &claws_test::conformance::Options,
    ) -> claws_core::Result<Arc<dyn Claw>> {
        let claw = Amqp10Claw::builder(&common::url(), jid, AddressScheme::RabbitMq)
            .max_deliveries(opts.max_deliveries)
            .prefetch(opts.prefetch)
            .subscriptions(opts.subscriptions)
            .build()?;
        Ok(Arc::new(claw))
    }

    async fn cleanup(&self, jids: &[String]) {
        use lapin::options::QueueDeleteOptions;
        let conn = raw().await;
        let ch = conn.create_channel().await.unwrap();
        for jid in jids {
            let bare = jid.split('/').next().unwrap_or(jid);
            for q in [
                format!("xmpp_direct:{jid}"),
                format!("xmpp_fanout:{jid}"),
                format!("xmpp_direct:{bare}"),
                format!("xmpp_fanout:{bare}"),
            ] {
                let _ = ch
                    .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                    .await;
            }
        }
        let _ = conn.close(200, "done".into()).await;
    }
}

async fn raw() -> lapin::Connection {
    lapin::Connection::connect(&common::url(), Default::default())
        .await
        .expect("0-9-1 connection")
}

/// Publishes with a plain 0-9-1 connection, as a hostile peer would.
struct LapinRaw(lapin::Channel);

#[claws_core::async_trait]
impl claws_test::hostile::RawPublisher for LapinRaw {
    async fn publish(
        &self,
        to: &str,
        body: &[u8],
        headers: &[(String, claws_test::hostile::Header)],
    ) -> Result<(), String> {
        use claws_test::hostile::Header;
        use lapin::options::BasicPublishOptions;
        use lapin::types::{AMQPValue, FieldTable, ShortString};
        let mut table = FieldTable::default();
        for (k, v) in headers {
            let v = match v {
                Header::Str(s) => AMQPValue::LongString(s.as_str().into()),
                Header::Int(i) => AMQPValue::LongLongInt(*i),
                Header::Bytes(b) => AMQPValue::LongString(b.clone().into()),
            };
            table.insert(ShortString::from(k.as_str()), v);
        }
        self.0
            .basic_publish(
                ShortString::from("xmpp_direct"),
                ShortString::from(to),
                BasicPublishOptions {
                    mandatory: true,
                    immediate: false,
                },
                body,
                lapin::BasicProperties::default().with_headers(table),
            )
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
            .map(drop)
    }
}

/// Every input of claws_test::hostile against a running 1.0 instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_input_suite_holds() {
    use lapin::options::ConfirmSelectOptions;
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let report = claws_test::hostile::run(&Factory, &LapinRaw(ch)).await;
    println!("{report}");
    let _ = conn.close(200, "done".into()).await;
    report.assert_passed();
}

/// Each connection cut as soon as it is reported (what an undecodable message did on every
/// delivery, ~20 reconnections a second): the reconnections slow down to the backoff's cap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_at_once_are_made_no_faster_than_the_backoff() {
    use claws_core::{Event, TimingBuilder};
    let proxy = claws_test::fault::FaultProxy::start(common::rabbit())
        .await
        .unwrap();
    let s = unique("");
    let c = Amqp10Claw::builder(
        format!("amqp://guest:guest@{}", proxy.addr()).as_str(),
        format!("killed{s}@example.com/r"),
        AddressScheme::RabbitMq,
    )
    .reconnect_backoff(Duration::from_millis(100), Duration::from_millis(800))
    .build()
    .unwrap();
    let (events, mut inbox) = Inbox::new();
    c.start(events).await.unwrap();
    let started = std::time::Instant::now();
    let mut connects = Vec::new();
    while connects.len() < 7 {
        if let Event::Connected { .. } = inbox.event().await {
            connects.push(started.elapsed());
            proxy.cut();
        }
    }
    let floor: Duration = [100u64, 200, 400, 800, 800, 800]
        .iter()
        .map(|ms| Duration::from_millis(*ms) / 2)
        .sum();
    let span = connects[6] - connects[0];
    assert!(
        span >= floor,
        "7 connections in {span:?}, under the backoff's {floor:?}: {connects:?}"
    );
    drop(inbox);
    c.close().await.unwrap();
    c.delete_queues().await.unwrap();
}
