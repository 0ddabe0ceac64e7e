//! Interop with an independent AMQP 1.0 client (Python qpid-proton, from Debian's
//! `python3-qpid-proton`): it sends to a claws instance's JIDs and receives what the instance
//! sends, following TOPOLOGY.md alone.

mod common;

use std::collections::HashSet;
use std::process::Stdio;

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::jid::parse;
use claws_core::{Claw, Packet, QueueKind};
use common::{unique, Inbox};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_proton_peer_sends_and_receives() {
    let s = unique("");
    let claw = Amqp10Claw::builder(
        &common::url(),
        format!("claw{s}@example.com/r1"),
        AddressScheme::RabbitMq,
    )
    .build()
    .unwrap();
    let (events, mut inbox) = Inbox::new();
    claw.start(events).await.unwrap();
    inbox.until_connected().await;

    // The peer's own queue, declared the 0-9-1 way (AMQP 1.0 cannot bind on RabbitMQ 3.10).
    let peer = format!("py{s}@example.com/py");
    let peer_queue = format!("xmpp_direct:{peer}");
    let conn = lapin::Connection::connect(&common::url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        peer_queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        peer_queue.as_str().into(),
        "xmpp_direct".into(),
        peer.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let token = unique("py-");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/proton_peer.py");
    let mut child = tokio::process::Command::new("/usr/bin/python3")
        .args([
            script,
            "amqp://guest:guest@127.0.0.1:5672",
            claw.jid().as_str(),
            &peer,
            &peer_queue,
            &token,
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3 with qpid-proton (run scripts/provision)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.as_deref(), Some("SENT"), "the peer could not send");

    let mut kinds = HashSet::new();
    for _ in 0..4 {
        let d = inbox.delivery(&token).await;
        let text = d.packet.as_str().unwrap().to_owned();
        assert_eq!(
            d.via.from.as_ref(),
            Some(&parse(&peer).unwrap()),
            "reply-to /queue/J is the sender"
        );
        match d.via.queue {
            QueueKind::Direct => {
                assert_eq!(text, format!("<message>{token}-full</message>"));
                assert_eq!(d.via.id.as_deref(), Some("py-full"));
                assert_eq!(d.via.jid, claw.jid().as_str());
            }
            QueueKind::GroupDirect => {
                assert_eq!(text, format!("<message>{token}-bare</message>"));
                assert_eq!(d.via.jid, claw.jid().to_bare().as_str());
            }
            QueueKind::Fanout | QueueKind::GroupFanout => {
                assert_eq!(text, format!("<message>{token}-broadcast</message>"));
                assert_eq!(d.via.exchange.as_deref(), Some("xmpp_fanout"));
            }
            ref other => panic!("unexpected subscription {other}"),
        }
        kinds.insert(d.via.queue.clone());
        d.acker.ack().await.unwrap();
    }
    assert_eq!(kinds.len(), 4, "full, bare, and both broadcast copies");

    claw.send(
        &parse(&peer).unwrap(),
        Some("claws-1"),
        Packet::from(format!("<reply>{token}</reply>")),
    )
    .await
    .unwrap();
    let line = tokio::time::timeout(common::WAIT, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .expect("the peer's report");
    let status = child.wait().await.unwrap();
    assert!(status.success(), "the peer failed: {line}");
    assert!(
        line.contains(&format!("\"body\": \"<reply>{token}</reply>\"")),
        "{line}"
    );
    assert!(line.contains("\"correlation_id\": \"claws-1\""), "{line}");
    assert!(
        line.contains(&format!("\"reply_to\": \"/queue/{}\"", claw.jid())),
        "{line}"
    );
    assert!(line.contains(&format!("\"subject\": \"{peer}\"")), "{line}");

    drop(inbox);
    claw.close().await.unwrap();
    claw.delete_queues().await.unwrap();
    ch.queue_delete(peer_queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
}
