//! claws and a peer that behaves as the Erlang claw does when deployed
//! (`tests/interop/erlang_peer.py`: transient exchanges, `direct:F`/`fanout:F` bound with `F`
//! and `B`, never `reply_to`), on one vhost, in both start orders; and a group that mixes both
//! with `layout = "erlang"`.

mod common;

use claws_core::TopologyBuilder;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

use claws_amqp091::AmqpClaw;
use claws_core::topology::{Layout, QueueKind};
use claws_core::{handler_fn, jid, Packet, Router, Via};
use common::*;
use serde_json::Value;
use tokio::sync::mpsc;

/// The Python peer: commands on its stdin, one JSON line per delivery on its stdout.
struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::UnboundedReceiver<Value>,
}

impl Peer {
    async fn start(url: &str, jid: &str) -> Peer {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/erlang_peer.py");
        let mut command = Command::new("/usr/bin/python3");
        command.args([script, url, jid]);
        if claws_test::rabbitmq::on_rabbitmq4() {
            // 4.3 refuses the Erlang claw's transient non-exclusive queues (see the script).
            command.arg("exclusive");
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 with pika (scripts/provision)");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            child,
            stdin,
            lines,
        };
        let ready = peer.next().await;
        assert_eq!(ready["ready"], true, "{ready}");
        peer
    }

    async fn next(&mut self) -> Value {
        tokio::time::timeout(WAIT, self.lines.recv())
            .await
            .expect("the peer answered in time")
            .expect("the peer is running")
    }

    /// The next delivery whose payload contains `tag` (others, such as the broadcasts of tests
    /// running beside this one on the vhost, are skipped).
    async fn delivery(&mut self, tag: &str) -> Value {
        loop {
            let v = self.next().await;
            if v["payload"].as_str().is_some_and(|p| p.contains(tag)) {
                return v;
            }
        }
    }

    fn command(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the peer reads commands");
    }

    fn quit(mut self) {
        self.command("quit");
        let _ = self.child.wait();
    }
}

/// A claws instance behind a router whose handler hands every packet to the test.
async fn instance(
    url: &str,
    jid: &str,
    layout: Layout,
) -> (
    Router,
    Arc<AmqpClaw>,
    mpsc::UnboundedReceiver<(Packet, Via)>,
) {
    let claw = Arc::new(
        AmqpClaw::builder(url, jid)
            .durable(false)
            .layout(layout)
            .build()
            .unwrap(),
    );
    let router = Router::builder().claw(claw.clone()).build().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    router
        .start(handler_fn(move |packet, via, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((packet, via));
                Ok(())
            }
        }))
        .await
        .expect("a transient claws instance starts beside the Erlang world");
    (router, claw, rx)
}

async fn received(rx: &mut mpsc::UnboundedReceiver<(Packet, Via)>, tag: &str) -> Via {
    loop {
        let (packet, via) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing containing `{tag}` arrived"))
            .unwrap();
        if packet.as_str().is_some_and(|s| s.contains(tag)) {
            return via;
        }
    }
}

async fn both_ways(claws_first: bool) {
    let url = transient_url();
    let u = uid();
    let (pf, pb) = (format!("erl-{u}@x/e1"), format!("erl-{u}@x"));
    let (cf, cb) = (format!("cl-{u}@x/c1"), format!("cl-{u}@x"));
    let order = if claws_first {
        "claws first"
    } else {
        "peer first"
    };
    let (router, claw, mut rx, mut peer) = if claws_first {
        let (router, claw, rx) = instance(&url, &cf, Layout::Claws).await;
        let peer = Peer::start(&url, &pf).await;
        (router, claw, rx, peer)
    } else {
        let peer = Peer::start(&url, &pf).await;
        let (router, claw, rx) = instance(&url, &cf, Layout::Claws).await;
        (router, claw, rx, peer)
    };

    // claws -> peer: to F, to B, broadcast.
    for (to, tag) in [(&pf, "to-full"), (&pb, "to-bare")] {
        let stanza = format!("<message from='{cf}' to='{to}'><body>{tag} {u}</body></message>");
        router
            .send(&jid::parse(to).unwrap(), Some(tag), Packet::from(stanza))
            .await
            .unwrap();
        let d = peer.delivery(&format!("{tag} {u}")).await;
        println!("[{order}] claws -> peer, send to {to}: {d}");
        assert_eq!(d["queue"], format!("direct:{pf}"));
        assert_eq!(d["routing_key"], to.as_str());
        assert_eq!(d["correlation_id"], tag);
    }
    router
        .publish(Packet::from(format!(
            "<message from='{cf}'><body>cast {u}</body></message>"
        )))
        .await
        .unwrap();
    let d = peer.delivery(&format!("cast {u}")).await;
    println!("[{order}] claws -> peer, broadcast: {d}");
    assert_eq!(d["queue"], format!("fanout:{pf}"));
    assert_eq!(d["routing_key"], cf.as_str());

    // peer -> claws: direct to F, to B, broadcast; the sender comes from the stanza's `from`.
    peer.command(&format!(
        "send {cf} m1 <message from='{pf}' to='{cf}' id='m1'><body>p-full {u}</body></message>"
    ));
    let via = received(&mut rx, &format!("p-full {u}")).await;
    println!("[{order}] peer -> claws, send to F: {via:?}");
    assert_eq!(via.queue, QueueKind::Direct);
    assert_eq!(via.jid, cf);
    assert_eq!(via.id.as_deref(), Some("m1"));
    assert_eq!(via.from.as_ref().map(|j| j.as_str()), Some(pf.as_str()));
    // The reply goes back to the peer (by the stanza's `from`), never to claws itself.
    router
        .reply(
            &via,
            Packet::from(format!(
                "<message from='{cf}' to='{pf}'><body>reply {u}</body></message>"
            )),
        )
        .await
        .unwrap();
    let d = peer.delivery(&format!("reply {u}")).await;
    println!("[{order}] claws reply -> peer: {d}");
    assert_eq!(d["routing_key"], pf.as_str());
    assert_eq!(d["correlation_id"], "m1");
    assert!(d["payload"].as_str().unwrap().contains("reply"), "{d}");

    peer.command(&format!(
        "send {cb} - <message from='{pf}' to='{cb}'><body>p-bare {u}</body></message>"
    ));
    let via = received(&mut rx, &format!("p-bare {u}")).await;
    println!("[{order}] peer -> claws, send to B: {via:?}");
    assert_eq!(via.queue, QueueKind::GroupDirect);
    assert_eq!(via.jid, cb);

    peer.command(&format!(
        "publish <message from='{pf}'><body>p-cast {u}</body></message>"
    ));
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let via = received(&mut rx, &format!("p-cast {u}")).await;
        println!("[{order}] peer -> claws, broadcast: {via:?}");
        assert_eq!(via.jid, pf);
        kinds.push(via.queue);
    }
    kinds.sort_by_key(|k| k.to_string());
    assert_eq!(kinds, [QueueKind::Fanout, QueueKind::GroupFanout]);

    router.close().await.unwrap();
    peer.quit();
    for (q, _) in claw.topology().consumed() {
        let _ = ctl(&["-q", "delete_queue", "-p", "claws-transient", &q.name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claws_and_an_erlang_peer_talk_both_ways_when_claws_starts_first() {
    both_ways(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claws_and_an_erlang_peer_talk_both_ways_when_the_peer_starts_first() {
    both_ways(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_group_with_the_erlang_layout_behaves_as_an_erlang_group() {
    let url = transient_url();
    let u = uid();
    let group = format!("grp-{u}@x");
    let mut peer = Peer::start(&url, &format!("{group}/p")).await;
    let (router, claw, mut rx) = instance(&url, &format!("{group}/c"), Layout::Erlang).await;
    let (sender, sender_claw, _srx) = instance(&url, &format!("snd-{u}@x/s"), Layout::Claws).await;
    // A bare send reaches every instance of the group once, as in an Erlang-only group.
    sender
        .send(
            &jid::parse(&group).unwrap(),
            None,
            Packet::from(format!(
                "<message to='{group}'><body>all {u}</body></message>"
            )),
        )
        .await
        .unwrap();
    let via = received(&mut rx, &format!("all {u}")).await;
    println!("mixed group: claws (erlang layout) got {via:?}");
    assert_eq!(via.queue, QueueKind::Direct);
    assert_eq!(via.jid, group);
    let d = peer.delivery(&format!("all {u}")).await;
    println!("mixed group: the Erlang peer got {d}");
    assert_eq!(d["queue"], format!("direct:{group}/p"));
    assert_eq!(d["routing_key"], group.as_str());
    // Each once (other tests' broadcasts on the vhost may arrive meanwhile).
    let tag = format!("all {u}");
    let again = tokio::time::timeout(std::time::Duration::from_millis(500), async {
        while let Some((packet, _)) = rx.recv().await {
            if packet.as_str().is_some_and(|p| p.contains(&tag)) {
                return true;
            }
        }
        false
    })
    .await;
    assert!(!matches!(again, Ok(true)), "claws got it twice");
    router.close().await.unwrap();
    sender.close().await.unwrap();
    peer.quit();
    for c in [&claw, &sender_claw] {
        for (q, _) in c.topology().consumed() {
            let _ = ctl(&["-q", "delete_queue", "-p", "claws-transient", &q.name]);
        }
    }
}
