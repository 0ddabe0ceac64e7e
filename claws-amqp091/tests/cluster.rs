//! The 0-9-1 claw on a 3-node RabbitMQ cluster (`scripts/cluster`, 127.0.0.1:5681-5683; with
//! `TEST_RABBITMQ=4` the RabbitMQ 4 cluster, `scripts/cluster4`, 127.0.0.1:5684-5686): a node dies
//! under load and the group goes on, with nothing lost.
//!
//! The tests here kill and restart cluster nodes, so they run one after another (one lock).

mod common;

use claws_core::TopologyBuilder;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claws_amqp091::{AmqpClaw, AmqpClawBuilder};
use claws_core::topology::Subscriptions;
use claws_core::{jid, Claw, Event, Events, Packet, TimingBuilder};
use claws_test::cluster;
use common::uid;
use tokio::sync::{mpsc, Mutex};

/// One cluster test at a time: they kill nodes.
static CLUSTER: Mutex<()> = Mutex::const_new(());

/// Brings a node back when dropped, so that a failing test leaves the cluster whole.
struct Revive(Option<u8>);

impl Drop for Revive {
    fn drop(&mut self) {
        if let Some(n) = self.0.take() {
            let _ = std::process::Command::new(cluster::script())
                .args(["start", &n.to_string()])
                .status();
        }
    }
}

const N: usize = 2000;

fn builder(jid: &str) -> AmqpClawBuilder {
    AmqpClaw::builder(&cluster::url(1), jid)
        .urls(cluster::urls())
        .quorum_groups(true)
        .connect_timeout(Duration::from_secs(2))
        .send_timeout(Duration::from_secs(30))
        .close_timeout(Duration::from_secs(5))
}

/// The node (1-3) an endpoint such as `amqp://guest@127.0.0.1:5682/%2F` points at.
fn node_of(endpoint: &str) -> u8 {
    (1..=3)
        .find(|n| endpoint.contains(&format!(":{}/", cluster::port(*n))))
        .unwrap_or_else(|| panic!("endpoint `{endpoint}` is not a cluster node"))
}

async fn start(builder: AmqpClawBuilder) -> (Arc<AmqpClaw>, mpsc::Receiver<Event>, u8) {
    let claw = Arc::new(builder.build().expect("valid claw"));
    let (events, mut rx) = Events::channel(4096);
    claw.start(events)
        .await
        .unwrap_or_else(|e| panic!("start on the cluster failed (scripts/cluster up): {e}"));
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(Event::Connected {
                endpoint: Some(endpoint),
                ..
            })) => return (claw, rx, node_of(&endpoint)),
            Ok(Some(Event::ConsumerLost { .. })) => {}
            other => panic!("expected Connected with its endpoint first, got {other:?}"),
        }
    }
}

/// Deletes the queues of `claws` through a node that is up.
async fn cleanup(claws: &[&AmqpClaw]) {
    for claw in claws {
        for (q, _) in claw.topology().consumed() {
            let _ = cluster::ctl(2, &["delete_queue", &q.name]).await;
        }
    }
}

/// The queues reported lost and restored, by every drain task.
type QueuesSeen = Arc<std::sync::Mutex<(HashSet<String>, HashSet<String>)>>;

/// What one group member saw.
#[derive(Default)]
struct Seen {
    bodies: HashMap<String, u32>,
    reconnected_after_kill: Option<Duration>,
    /// From losing the connection (the first Disconnected after the kill) to Connected.
    reconnected_after_loss: Option<Duration>,
    lost_at: Option<Instant>,
    received_after_reconnect: usize,
}

/// Consumes `rx` (acking everything tagged `tag`) until `stop`, recording what arrived.
fn drain(
    mut rx: mpsc::Receiver<Event>,
    tag: String,
    total: Arc<std::sync::Mutex<HashSet<String>>>,
    killed_at: Arc<std::sync::Mutex<Option<Instant>>>,
    queues: QueuesSeen,
    stop: tokio_util_stop::Stop,
) -> tokio::task::JoinHandle<Seen> {
    tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = stop.wait() => return seen,
            };
            match event {
                Some(Event::Received(d)) => {
                    let body = d.packet.as_str().unwrap_or_default().to_owned();
                    // An ack on a connection that just died fails: the broker redelivers.
                    if d.acker.ack().await.is_ok() && body.starts_with(&tag) {
                        *seen.bodies.entry(body.clone()).or_default() += 1;
                        total.lock().unwrap().insert(body);
                        if seen.reconnected_after_kill.is_some() {
                            seen.received_after_reconnect += 1;
                        }
                    }
                }
                Some(Event::Disconnected { .. }) => {
                    if killed_at.lock().unwrap().is_some() {
                        seen.lost_at.get_or_insert_with(Instant::now);
                    }
                }
                Some(Event::Connected { .. }) => {
                    if let Some(at) = *killed_at.lock().unwrap() {
                        seen.reconnected_after_kill.get_or_insert(at.elapsed());
                        if let Some(lost) = seen.lost_at {
                            seen.reconnected_after_loss.get_or_insert(lost.elapsed());
                        }
                    }
                }
                Some(Event::ConsumerLost { queue, .. }) => {
                    queues.lock().unwrap().0.insert(queue);
                }
                Some(Event::ConsumerRestored { queue, .. }) => {
                    queues.lock().unwrap().1.insert(queue);
                }
                Some(_) => {}
                None => return seen,
            }
        }
    })
}

/// A stop signal for the drain tasks (a watch flag).
mod tokio_util_stop {
    #[derive(Clone)]
    pub(crate) struct Stop(tokio::sync::watch::Receiver<bool>);
    pub(crate) fn pair() -> (tokio::sync::watch::Sender<bool>, Stop) {
        let (tx, rx) = tokio::sync::watch::channel(false);
        (tx, Stop(rx))
    }
    impl Stop {
        pub(crate) async fn wait(&self) {
            let mut rx = self.0.clone();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

/// Kills (or stops the app of) the node instance A is connected to while 2,000 stanzas flow to
/// A's group: nothing is lost, A consumes again through another node within 5 s, a brand-new
/// instance connects while the node is down, and the node rejoins.
async fn node_loss(graceful: bool) {
    let _one = CLUSTER.lock().await;
    let _held = cluster::exclusive().await.expect("the cluster lock");
    cluster::up()
        .await
        .expect("the cluster must be up (scripts/provision)");
    let u = uid();
    let group = format!("svc-{u}@cluster.test");
    let (a, rx_a, node) = start(builder(&format!("{group}/a"))).await;
    let (b, rx_b, _) = start(builder(&format!("{group}/b"))).await;
    let (sender, _rx_s, _) =
        start(builder(&format!("snd-{u}@cluster.test/s")).subscriptions(Subscriptions::none()))
            .await;

    let tag = format!("{u}:");
    let total = Arc::new(std::sync::Mutex::new(HashSet::new()));
    let killed_at = Arc::new(std::sync::Mutex::new(None));
    let (stop_tx, stop) = tokio_util_stop::pair();
    let queues = QueuesSeen::default();
    let seen_a = drain(
        rx_a,
        tag.clone(),
        total.clone(),
        killed_at.clone(),
        queues.clone(),
        stop.clone(),
    );
    let seen_b = drain(
        rx_b,
        tag.clone(),
        total.clone(),
        killed_at.clone(),
        queues.clone(),
        stop.clone(),
    );

    let to = jid::parse(&group).unwrap();
    let sending = {
        let sender = sender.clone();
        let tag = tag.clone();
        tokio::spawn(async move {
            for n in 0..N {
                sender
                    .send(&to, None, Packet::from(format!("{tag}{n}")))
                    .await
                    .unwrap_or_else(|e| panic!("send {n} failed: {e}"));
            }
        })
    };
    // Kill A's node once a quarter has arrived.
    let deadline = Instant::now() + Duration::from_secs(60);
    while total.lock().unwrap().len() < N / 4 {
        assert!(Instant::now() < deadline, "the first quarter never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    *killed_at.lock().unwrap() = Some(Instant::now());
    let mut revive = Revive(Some(node));
    if graceful {
        cluster::stop_app(node).await.unwrap();
    } else {
        cluster::kill(node).await.unwrap();
    }

    // While the node is down, a brand-new instance starts through the others and sends.
    let started = Instant::now();
    let (late, _rx_late, late_node) =
        start(builder(&format!("late-{u}@cluster.test/l")).subscriptions(Subscriptions::none()))
            .await;
    assert_ne!(late_node, node, "connected to the dead node?");
    let start_took = started.elapsed();
    late.send(
        &jid::parse(&group).unwrap(),
        None,
        Packet::from(format!("{tag}late")),
    )
    .await
    .expect("a send from the late instance");

    sending.await.expect("every send confirmed");
    let deadline = Instant::now() + Duration::from_secs(90);
    while total.lock().unwrap().len() < N + 1 {
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = total.lock().unwrap().len();
    // Bring the node back before asserting, so that a failure leaves the cluster whole.
    cluster::start(node).await.expect("the node rejoins");
    revive.0 = None;
    // The node is back: every queue reported lost (A's own, classic on that node) is consumed
    // again, with no reconnection: nothing is left stranded.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stranded = loop {
        let (lost, restored) = queues.lock().unwrap().clone();
        let missing: Vec<String> = lost.difference(&restored).cloned().collect();
        if missing.is_empty() || Instant::now() > deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = stop_tx.send(true);
    let (seen_a, seen_b) = (seen_a.await.unwrap(), seen_b.await.unwrap());
    let deliveries: u32 = seen_a.bodies.values().chain(seen_b.bodies.values()).sum();
    let duplicates = deliveries as usize - got;
    eprintln!(
        "cluster {} of node {node}: {got} of {} stanzas, {duplicates} duplicates; A connected again after {:?} ({:?} after losing its connection) and received {} after; a new instance started in {start_took:?}; queues lost/restored: {:?}",
        if graceful { "stop_app" } else { "kill -9" },
        N + 1,
        seen_a.reconnected_after_kill,
        seen_a.reconnected_after_loss,
        seen_a.received_after_reconnect,
        queues.lock().unwrap()
    );
    for claw in [&a, &b, &sender, &late] {
        let _ = claw.close().await;
    }
    cleanup(&[&a, &b]).await;

    assert_eq!(got, N + 1, "stanzas were lost");
    assert!(
        stranded.is_empty(),
        "queues never consumed again after the node came back: {stranded:?}"
    );
    let back = seen_a
        .reconnected_after_kill
        .expect("instance A never connected again");
    // On the RabbitMQ 4 cluster (4.0.5, Mnesia) the kill -9 case fails here: the broker answers
    // the declaration of a classic queue homed on the killed node (A's own queues) only after
    // about 66 s (3.10: at once, NOT_FOUND "home node ... is down"), past claws' setup bound
    // (3 x connect_timeout), so A cannot reconnect anywhere until the node is back. A claws bug on
    // 4.x (docs/CLUSTER.md, "The RabbitMQ 4 cluster"); the bound stays.
    // kill -9: from the kill; stop_app (which first moves leaders and drains, taking seconds
    // under load): from the moment the node closed A's connection.
    let back = if graceful {
        seen_a.reconnected_after_loss.unwrap_or(back)
    } else {
        back
    };
    assert!(
        back < Duration::from_secs(5),
        "A took {back:?} to connect through another node"
    );
    assert!(
        start_took < Duration::from_secs(10),
        "a new instance took {start_took:?} to start while a node was down"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_loses_nothing_and_the_group_goes_on() {
    node_loss(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_loses_nothing_and_the_group_goes_on() {
    node_loss(true).await;
}
