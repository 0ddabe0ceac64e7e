//! Interoperability: a Python peer using pika, written from TOPOLOGY.md alone
//! (`tests/interop/peer.py`), sends to a claw's full and bare JIDs and broadcasts, and receives
//! what the claw sends it. Needs `/usr/bin/python3` with pika (scripts/provision installs it).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use claws_core::topology::QueueKind;
use claws_core::{jid, Claw, Packet};
use common::*;
use tokio::sync::mpsc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pika_peer_following_topology_md_talks_to_a_claw() {
    let u = uid();
    let Started { claw, mut rx } = start(builder(&format!("svc-{u}@test/r1")).name("rabbit")).await;
    let peer = format!("py-{u}@test/p");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
    let mut child = Command::new("/usr/bin/python3")
        .args([script, &url(), &u, claw.jid().as_str()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("/usr/bin/python3 must exist with pika installed (run scripts/provision)");
    let stdout = child.stdout.take().expect("piped stdout");
    let (lines_tx, mut lines) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = tokio::time::timeout(WAIT, lines.recv())
        .await
        .expect("peer sent")
        .expect("peer output");
    assert_eq!(line, "SENT");

    // Full JID, bare JID, and the broadcast twice (own copy, group copy).
    let mut kinds = Vec::new();
    for _ in 0..4 {
        let d = next(&mut rx, &u).await;
        assert_eq!(d.via.from.as_ref().map(|j| j.as_str()), Some(peer.as_str()));
        let body = d.packet.as_str().unwrap().to_owned();
        match d.via.queue {
            QueueKind::Direct => {
                assert_eq!(body, format!("<message>full {u}</message>"));
                assert_eq!(d.via.jid, claw.jid().as_str());
                assert_eq!(d.via.id.as_deref(), Some("py-1"));
            }
            QueueKind::GroupDirect => {
                assert_eq!(body, format!("<message>bare {u}</message>"));
                assert_eq!(d.via.jid, format!("svc-{u}@test"));
                assert_eq!(d.via.id.as_deref(), Some("py-2"));
            }
            QueueKind::Fanout | QueueKind::GroupFanout => {
                assert_eq!(body, format!("<presence>all {u}</presence>"));
                assert_eq!(d.via.jid, peer);
                assert_eq!(d.via.exchange.as_deref(), Some("xmpp_fanout"));
            }
            ref other => panic!("unexpected queue {other}"),
        }
        kinds.push(d.via.queue.clone());
        d.acker.ack().await.unwrap();
    }
    kinds.sort_by_key(|k| k.as_str().to_owned());
    assert_eq!(
        kinds,
        [
            QueueKind::Direct,
            QueueKind::Fanout,
            QueueKind::GroupDirect,
            QueueKind::GroupFanout
        ]
    );

    // The claw answers the peer directly and broadcasts.
    claw.send(
        &jid::parse(&peer).unwrap(),
        Some("c-1"),
        Packet::from(format!("<message>reply {u}</message>")),
    )
    .await
    .unwrap();
    claw.publish(Packet::from(format!("<presence>bye {u}</presence>")))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let line = tokio::time::timeout(WAIT, lines.recv())
            .await
            .expect("peer received")
            .expect("peer output");
        let fields: Vec<String> = line.split('\t').map(str::to_owned).collect();
        assert_eq!(fields[0], "MSG", "{line}");
        got.push(fields);
    }
    got.sort_by(|a, b| a[2].cmp(&b[2]));
    let direct = got
        .iter()
        .find(|f| f[2] == "xmpp_direct")
        .expect("direct stanza");
    assert_eq!(direct[1], format!("xmpp_direct:{peer}"));
    assert_eq!(direct[3], peer);
    assert_eq!(direct[4], "c-1");
    assert_eq!(direct[5], claw.jid().as_str());
    assert_eq!(direct[6], format!("<message>reply {u}</message>"));
    let fanout = got
        .iter()
        .find(|f| f[2] == "xmpp_fanout")
        .expect("broadcast");
    assert_eq!(fanout[3], claw.jid().as_str());
    assert_eq!(fanout[5], claw.jid().as_str());
    assert_eq!(fanout[6], format!("<presence>bye {u}</presence>"));

    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "peer exited with {status}");
    // The claw's own broadcast came back to it too; unhandled, it returns to its queue.
    drop(rx);
    claw.close().await.unwrap();
    cleanup(&[&claw]).await;
}
