//! Messages built to hurt (a publisher with rights on the broker can send any headers): none may
//! crash the process or block the queue. A binary of its own without libtest's harness, so that
//! `main` calls `protect_parser_stack` before any thread starts, as a service does.

mod common;

use claws_core::topology::DEAD_LETTER_QUEUE;
use claws_core::Claw;
use common::*;
use lapin::options::{BasicAckOptions, BasicGetOptions};

const HOSTILE_VHOST: &str = "claws-hostile";

fn main() {
    claws_amqp091::protect_parser_stack();
    // A vhost of their own: the poison these tests publish ends in its dead-letter queue,
    // never in the one other tests read with lapin (which cannot decode it).
    std::env::set_var(
        "CLAWS_AMQP_URL",
        claws_test::rabbitmq::vhost_url(HOSTILE_VHOST, true),
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        // On a worker thread (their stacks follow RUST_MIN_STACK): the test reads the poisoned
        // message back from the dead-letter queue, and freeing it recurses as deep as it nests.
        .block_on(async {
            tokio::spawn(headers_nested_thousands_deep_are_dead_lettered_and_the_queue_goes_on())
                .await
                .unwrap();
            println!(
                "test headers_nested_thousands_deep_are_dead_lettered_and_the_queue_goes_on ... ok"
            );
            tokio::spawn(requeue_headers_from_a_publisher_do_not_redirect_replies())
                .await
                .unwrap();
            println!("test requeue_headers_from_a_publisher_do_not_redirect_replies ... ok");
            tokio::spawn(undecodable_messages_are_dead_lettered_and_the_queue_goes_on())
                .await
                .unwrap();
            println!("test undecodable_messages_are_dead_lettered_and_the_queue_goes_on ... ok");
            tokio::spawn(a_queued_undecodable_message_does_not_stop_a_start())
                .await
                .unwrap();
            println!("test a_queued_undecodable_message_does_not_stop_a_start ... ok");
            tokio::spawn(the_publishing_user_is_verified_and_carried())
                .await
                .unwrap();
            println!("test the_publishing_user_is_verified_and_carried ... ok");
            tokio::spawn(the_hostile_input_suite_holds()).await.unwrap();
            println!("test the_hostile_input_suite_holds ... ok");
        });
}

async fn headers_nested_thousands_deep_are_dead_lettered_and_the_queue_goes_on() {
    let u = uid();
    let me = format!("deep-{u}@test/a");
    let mut s = start(builder(&me)).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/deep_headers.py");
    // 1,000 deep aborted every 0-9-1 claws process (lapin's parser on a 2 MiB stack); 18,000
    // is about the deepest a 128 KiB frame holds.
    for depth in ["1000", "18000"] {
        let tag = format!("{u}-{depth}");
        let out = std::process::Command::new("/usr/bin/python3")
            .args([script, &url(), &me, depth, &tag])
            .output()
            .expect("/usr/bin/python3 with pika (scripts/provision)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The canary behind it arrives: the queue is not blocked, the process is alive.
        let d = next(&mut s.rx, &format!("canary {tag}")).await;
        d.acker.ack().await.unwrap();
        // The poisoned one is in the dead-letter queue, never handed to the handler.
        let conn = raw().await;
        let ch = conn.create_channel().await.unwrap();
        let mut found = false;
        for _ in 0..10_000 {
            let Ok(Some(m)) = ch
                .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions::default())
                .await
            else {
                break;
            };
            if String::from_utf8_lossy(&m.delivery.data).contains(&format!("poison {tag}")) {
                found = true;
                let _ = m.delivery.acker.ack(BasicAckOptions::default()).await;
                break;
            }
        }
        let _ = conn.close(200, "done".into()).await;
        assert!(found, "the {depth}-deep message was not dead-lettered");
    }
    assert!(
        nothing_more(
            &mut s.rx,
            &format!("poison {u}"),
            std::time::Duration::from_millis(300)
        )
        .await,
        "a poisoned message reached the handler"
    );
    s.claw.close().await.unwrap();
    cleanup(&[&s.claw]).await;
}

/// The claw's own requeue headers (`x-claws-deliveries`, `x-claws-routing-key`) on a message a
/// publisher sent to `xmpp_direct` are not believed: `Via.jid` stays the delivery's routing key.
async fn requeue_headers_from_a_publisher_do_not_redirect_replies() {
    use lapin::options::BasicPublishOptions;
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    use lapin::BasicProperties;
    let u = uid();
    let me = format!("redirect-{u}@test/a");
    let mut s = start(builder(&me)).await;
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-claws-deliveries"),
        AMQPValue::LongLongInt(1),
    );
    headers.insert(
        ShortString::from("x-claws-routing-key"),
        AMQPValue::LongString("victim@test/v".into()),
    );
    ch.basic_publish(
        ShortString::from("xmpp_direct"),
        ShortString::from(me.as_str()),
        BasicPublishOptions::default(),
        format!("<message><body>redirect {u}</body></message>").as_bytes(),
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let d = next(&mut s.rx, &format!("redirect {u}")).await;
    assert_eq!(d.via.jid, me, "the headers rewrote Via.jid");
    assert_eq!(d.attempt, 1, "the headers counted as earlier deliveries");
    d.acker.ack().await.unwrap();
    let _ = conn.close(200, "done".into()).await;
    s.claw.close().await.unwrap();
    cleanup(&[&s.claw]).await;
}

/// Runs tests/interop/poison.py with `args`; its output, or `None` if it exited 1.
fn poison_py(args: &[&str]) -> Option<String> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/poison.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script)
        .args(args)
        .output()
        .expect("/usr/bin/python3 with pika (scripts/provision)");
    match out.status.code() {
        Some(0) => Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()),
        Some(1) => None,
        _ => panic!("poison.py failed: {}", String::from_utf8_lossy(&out.stderr)),
    }
}

/// A message lapin cannot decode (not UTF-8 where AMQP wants a short string) killed the
/// connection on every delivery, and the broker delivered it first to every new one: the queue
/// was blocked for good. Now the claw sweeps its queues after such a death: the message is
/// dead-lettered after one delivery and the canary behind it arrives.
async fn undecodable_messages_are_dead_lettered_and_the_queue_goes_on() {
    use claws_core::topology::TopologyBuilder;
    for quorum in [false, true] {
        let u = uid();
        let me = format!("poison-{u}@test/a");
        let mut s = start(builder(&me).quorum_instances(quorum)).await;
        for kind in ["correlation_id", "reply_to", "header_key"] {
            let tag = format!("{u}-{kind}");
            poison_py(&["publish", &url(), &me, kind, &tag]).expect("published");
            let d = next(&mut s.rx, &format!("canary {tag}")).await;
            d.acker.ack().await.unwrap();
            let reason =
                poison_py(&["find", &url(), DEAD_LETTER_QUEUE, &tag]).unwrap_or_else(|| {
                    panic!("the message with a bad {kind} is not dead-lettered (quorum: {quorum})")
                });
            assert_eq!(reason, "rejected", "{kind}, quorum: {quorum}");
        }
        assert!(
            nothing_more(
                &mut s.rx,
                &format!("poison {u}"),
                std::time::Duration::from_millis(300)
            )
            .await,
            "an undecodable message reached the handler"
        );
        s.claw.close().await.unwrap();
        cleanup(&[&s.claw]).await;
    }
}

fn user_id_py(url: &str, to: &str, claim: &str, tag: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/user_id.py");
    let out = std::process::Command::new("/usr/bin/python3")
        .args([script, url, to, claim, tag])
        .output()
        .expect("/usr/bin/python3 with pika (scripts/provision)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// RabbitMQ refuses a publish whose `user_id` is not its connection's user; claws sets it on
/// everything it publishes, and `Via::user` carries it: a handler knows who sent a stanza.
async fn the_publishing_user_is_verified_and_carried() {
    let u = uid();
    let user = format!("claws-pub-{u}");
    assert!(ctl(&["add_user", &user, "pw"]).status.success());
    assert!(ctl(&[
        "set_permissions",
        "-p",
        HOSTILE_VHOST,
        &user,
        ".*",
        ".*",
        ".*"
    ])
    .status
    .success());
    let as_user = url().replace("guest:guest", &format!("{user}:pw"));
    let me = format!("verified-{u}@test/a");
    // `always`: the claw's own copies carry its user on RabbitMQ 3.x too.
    let always = |jid: &str| builder(jid).user_id(claws_amqp091::UserId::Always);
    let mut s = start(always(&me)).await;

    // Claiming to be someone else is refused by the broker.
    let spoof = user_id_py(&as_user, &me, "guest", &u);
    assert!(spoof.starts_with("refused 406"), "{spoof}");
    // Its own name: delivered, and Via says who.
    assert_eq!(user_id_py(&as_user, &me, &user, &u), "published");
    let d = next(&mut s.rx, &format!("claims {user} {u}")).await;
    assert_eq!(d.via.user(), Some(user.as_str()));
    // A handler's failure: the claw's copy is published as the claw's user (guest), yet the
    // redelivery still names the original publisher.
    d.acker
        .reject(&claws_core::Error::Handler("try again".into()))
        .await
        .unwrap();
    let d = next(&mut s.rx, &format!("claims {user} {u}")).await;
    assert_eq!(d.attempt, 2);
    assert_eq!(
        d.via.user(),
        Some(user.as_str()),
        "the copy lost the publisher"
    );
    d.acker.ack().await.unwrap();
    // No claim: no user (nothing says who sent it), also on the claw's copy.
    assert_eq!(user_id_py(&as_user, &me, "-", &u), "published");
    let d = next(&mut s.rx, &format!("claims - {u}")).await;
    assert_eq!(d.via.user(), None);
    d.acker
        .reject(&claws_core::Error::Handler("try again".into()))
        .await
        .unwrap();
    let d = next(&mut s.rx, &format!("claims - {u}")).await;
    assert_eq!(d.via.user(), None, "the copy named the claw's own user");
    d.acker.ack().await.unwrap();
    // A claw's sends carry its connection's user.
    let peer = start(always(&format!("verified-peer-{u}@test/b"))).await;
    peer.claw
        .send(
            &claws_core::jid::parse(&me).unwrap(),
            None,
            claws_core::Packet::from(format!("<message><body>from a claw {u}</body></message>")),
        )
        .await
        .unwrap();
    let d = next(&mut s.rx, &format!("from a claw {u}")).await;
    assert_eq!(d.via.user(), Some("guest"));
    d.acker.ack().await.unwrap();
    // `auto` (the default): on RabbitMQ 4, not on 3.x (whose AMQP 1.0 plugin would hand it to
    // 1.0 consumers in a form they cannot decode).
    let auto = start(builder(&format!("verified-auto-{u}@test/c"))).await;
    auto.claw
        .send(
            &claws_core::jid::parse(&me).unwrap(),
            None,
            claws_core::Packet::from(format!("<message><body>auto {u}</body></message>")),
        )
        .await
        .unwrap();
    let d = next(&mut s.rx, &format!("auto {u}")).await;
    let expected = claws_test::rabbitmq::on_rabbitmq4().then_some("guest");
    assert_eq!(d.via.user(), expected);
    d.acker.ack().await.unwrap();

    auto.claw.close().await.unwrap();
    peer.claw.close().await.unwrap();
    s.claw.close().await.unwrap();
    cleanup(&[&s.claw, &peer.claw, &auto.claw]).await;
    ctl(&["delete_user", &user]);
}

/// The instances the hostile-input suite runs against.
struct Factory;

#[claws_core::async_trait]
impl claws_test::conformance::ClawFactory for Factory {
    fn name(&self) -> String {
        "amqp091 on RabbitMQ".into()
    }

    async fn make(
        &self,
        jid: &str,
        opts: &claws_test::conformance::Options,
    ) -> claws_core::Result<std::sync::Arc<dyn Claw>> {
        let claw = builder(jid)
            .max_deliveries(opts.max_deliveries)
            .prefetch(opts.prefetch)
            .subscriptions(opts.subscriptions)
            .build()?;
        Ok(std::sync::Arc::new(claw))
    }

    async fn cleanup(&self, jids: &[String]) {
        delete_queues(jids).await;
    }
}

/// Deletes the queues of `jids` (each full JID's and its bare JID's).
async fn delete_queues(jids: &[String]) {
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

/// Publishes with a plain lapin connection, as a hostile peer would.
struct LapinRaw(lapin::Channel, lapin::Connection);

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

/// Every input of claws_test::hostile against a running 0-9-1 instance.
async fn the_hostile_input_suite_holds() {
    use lapin::options::ConfirmSelectOptions;
    let conn = raw().await;
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let raw = LapinRaw(ch, conn);
    let report = claws_test::hostile::run(&Factory, &raw).await;
    println!("{report}");
    let _ = raw.1.close(200, "done".into()).await;
    report.assert_passed();
}

/// Such a message already queued when the service starts (`claws listen` exited 3, "cannot
/// connect", every time): `start` succeeds, the canary arrives, the message is dead-lettered.
async fn a_queued_undecodable_message_does_not_stop_a_start() {
    let u = uid();
    let me = format!("poison-start-{u}@test/a");
    // The queues exist (declared by a first run), the service is down.
    let first = start(builder(&me)).await;
    first.claw.close().await.unwrap();
    poison_py(&["publish", &url(), &me, "reply_to", &u]).expect("published");
    let mut s = start(builder(&me)).await;
    let d = next(&mut s.rx, &format!("canary {u}")).await;
    d.acker.ack().await.unwrap();
    assert_eq!(
        poison_py(&["find", &url(), DEAD_LETTER_QUEUE, &u]).as_deref(),
        Some("rejected")
    );
    s.claw.close().await.unwrap();
    cleanup(&[&s.claw]).await;
}
