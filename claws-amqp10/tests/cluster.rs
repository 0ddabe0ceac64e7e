//! The amqp10 claw on the local 3-node RabbitMQ cluster (`scripts/cluster`: c1, c2, c3 on
//! 127.0.0.1:5681-5683; with `TEST_RABBITMQ=4` the RabbitMQ 4 cluster, `scripts/cluster4`: r4c1,
//! r4c2, r4c3 on 127.0.0.1:5684-5686): failover when the node it is connected to dies, and
//! connecting past a dead node. A test that kills a node brings it back, also when it fails; the tests of this
//! file take a lock so that they never kill nodes at the same time.

mod common;

use claws_core::TopologyBuilder;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::jid::parse;
use claws_core::topology::Subscriptions;
use claws_core::{Claw, Error, Event, Events, Packet, TimingBuilder};
use claws_test::cluster;
use common::{unique, WAIT};
use tokio::sync::{watch, Mutex};

/// One test at a time kills nodes.
static CLUSTER: Mutex<()> = Mutex::const_new(());

/// Which node an endpoint (as `Connected` shows it) is on.
fn node_of(endpoint: &str) -> u8 {
    (1..=3)
        .find(|n| endpoint.contains(&format!(":{}", cluster::port(*n))))
        .unwrap_or_else(|| panic!("`{endpoint}` is no node of the cluster"))
}

/// Runs `scenario` in a task of its own; afterwards, also when it panicked, brings back the
/// node it recorded in its argument as killed, then re-raises its panic.
async fn reviving<F, Fut, T>(scenario: F) -> T
where
    F: FnOnce(Arc<AtomicU8>) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let killed = Arc::new(AtomicU8::new(0));
    let outcome = tokio::spawn(scenario(killed.clone())).await;
    let n = killed.load(Ordering::SeqCst);
    if n != 0 {
        if let Err(e) = cluster::start(n).await {
            // Someone else (another test run) may be starting or stopping nodes too: `up`
            // starts whatever is not running and waits until all three are clustered.
            let name = cluster::node_name(n);
            eprintln!("could not bring {name} back ({e}); trying `scripts/cluster up`");
            cluster::up()
                .await
                .unwrap_or_else(|e| panic!("could not bring {name} back: {e}"));
        }
    }
    match outcome {
        Ok(t) => t,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What a claw reported, as the collector saw it.
#[derive(Debug, Default)]
struct Seen {
    /// Deliveries per stanza number (the test's own stanzas only).
    counts: HashMap<u32, u32>,
    deliveries: u32,
    /// Each `Connected`: when, to which node, and when the first delivery after it came.
    connected: Vec<(Instant, u8, Option<Instant>)>,
    disconnected: Vec<(Instant, String)>,
    lost: Vec<String>,
    restored: Vec<String>,
}

impl Seen {
    fn summary(&self) -> String {
        format!(
            "{} distinct stanzas, {} deliveries, connected to {:?}, {} disconnections {:?}, \
             lost {:?}, restored {:?}",
            self.counts.len(),
            self.deliveries,
            self.connected.iter().map(|c| c.1).collect::<Vec<_>>(),
            self.disconnected.len(),
            self.disconnected.iter().map(|d| &d.1).collect::<Vec<_>>(),
            self.lost,
            self.restored
        )
    }
}

/// A claw's event channel and a task that acks every delivery and records what came: stanzas
/// carrying `token:N` by `N`.
fn collect(token: String) -> (Events, watch::Receiver<Seen>) {
    let (events, mut rx) = Events::channel(256);
    let (seen_tx, seen) = watch::channel(Seen::default());
    tokio::spawn(async move {
        let prefix = format!("{token}:");
        while let Some(event) = rx.recv().await {
            match event {
                Event::Received(d) => {
                    let now = Instant::now();
                    let n = d
                        .packet
                        .as_str()
                        .and_then(|s| s.split_once(&prefix))
                        .and_then(|(_, rest)| rest.split('<').next())
                        .and_then(|n| n.parse::<u32>().ok());
                    let _ = d.acker.ack().await;
                    if let Some(n) = n {
                        seen_tx.send_modify(|s| {
                            *s.counts.entry(n).or_default() += 1;
                            s.deliveries += 1;
                            if let Some(last) = s.connected.last_mut() {
                                last.2.get_or_insert(now);
                            }
                        });
                    }
                }
                Event::Connected { endpoint, .. } => {
                    let node = node_of(endpoint.as_deref().expect("an endpoint"));
                    seen_tx.send_modify(|s| s.connected.push((Instant::now(), node, None)));
                }
                Event::Disconnected { reason, .. } => {
                    seen_tx.send_modify(|s| s.disconnected.push((Instant::now(), reason)));
                }
                Event::ConsumerLost { queue, .. } => seen_tx.send_modify(|s| s.lost.push(queue)),
                Event::ConsumerRestored { queue, .. } => {
                    seen_tx.send_modify(|s| s.restored.push(queue))
                }
                _ => {}
            }
        }
    });
    (events, seen)
}

/// Waits (at most `within`) until what was seen satisfies `cond`.
async fn until(
    seen: &mut watch::Receiver<Seen>,
    within: Duration,
    what: &str,
    cond: impl FnMut(&Seen) -> bool,
) {
    let r = tokio::time::timeout(within, seen.wait_for(cond))
        .await
        .map(|r| r.is_ok());
    match r {
        Ok(true) => {}
        Ok(false) => panic!("the claw's events ended while waiting for {what}"),
        Err(_) => panic!(
            "{what}: not within {within:?}; seen: {}",
            seen.borrow().summary()
        ),
    }
}

/// Receiving again through another node must take less than this after the kill.
const FAILOVER_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_connected_node_loses_no_stanza() {
    let _alone = CLUSTER.lock().await;
    let _held = cluster::exclusive().await.expect("the cluster lock");
    cluster::up()
        .await
        .expect("the cluster (scripts/cluster up)");
    const N: u32 = 1000;
    let s = unique("");
    let bare = format!("failover{s}@example.com");
    let token = unique("kill-");

    let (claws, mut seen) = reviving({
        let bare = bare.clone();
        move |killed| async move {
            // The receiver knows every node (one comma-separated string here; `.urls` in the
            // other test) and makes its group queues quorum queues.
            let rx = Arc::new(
                Amqp10Claw::builder(
                    &cluster::urls().join(","),
                    format!("{bare}/w1"),
                    AddressScheme::RabbitMq,
                )
                .name("rx")
                .quorum_groups(true)
                .build()
                .expect("valid claw"),
            );
            let (events, mut seen) = collect(token.clone());
            rx.start(events).await.expect("start on the cluster");
            until(&mut seen, WAIT, "Connected", |s| !s.connected.is_empty()).await;
            let n = seen.borrow().connected[0].1;
            // The sender is on another node, which stays up.
            let other = n % 3 + 1;
            // Where the group queue's leader is (client-local by default: the receiver's node,
            // which declared it), for the record.
            let group_queue = format!("xmpp_direct:{bare}");
            let leader = cluster::ctl(other, &["list_queues", "name", "leader"])
                .await
                .expect("list_queues")
                .lines()
                .find_map(|l| {
                    l.strip_prefix(&format!("{group_queue}\t"))
                        .map(str::to_owned)
                })
                .unwrap_or_default();

            let tx = Arc::new(
                Amqp10Claw::builder(
                    &cluster::url(other),
                    format!("sender{s}@example.com/s"),
                    AddressScheme::RabbitMq,
                )
                .name("tx")
                .subscriptions(Subscriptions::none())
                .quorum_groups(true)
                .build()
                .expect("valid claw"),
            );
            let (tx_events, _tx_seen) = collect(String::new());
            tx.start(tx_events).await.expect("sender starts");
            let sent = Arc::new(AtomicU32::new(0));
            let sending = tokio::spawn({
                let (tx, sent, token) = (tx.clone(), sent.clone(), token.clone());
                let to = parse(&bare).expect("bare JID");
                async move {
                    for i in 0..N {
                        let id = i.to_string();
                        tx.send(
                            &to,
                            Some(&id),
                            Packet::from(format!("<message>{token}:{i}</message>")),
                        )
                        .await?;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, Error>(())
                }
            });
            until(&mut seen, WAIT, "the first fifth of the stanzas", |s| {
                s.counts.len() as u32 >= N / 5
            })
            .await;

            killed.store(n, Ordering::SeqCst);
            let killed_at = Instant::now();
            cluster::kill(n).await.expect("kill -9 of the node");
            let sent_at_kill = sent.load(Ordering::SeqCst);
            let received_at_kill = seen.borrow().counts.len();

            // On the RabbitMQ 4 cluster (4.0.5, Mnesia) this fails: the broker answers the
            // declaration of a classic queue homed on the killed node (the receiver's own
            // queues) only after about 66 s (3.10: at once, NOT_FOUND "home node ... is down"),
            // so the claw cannot reconnect anywhere until the node is back. A claws bug on 4.x
            // (docs/CLUSTER.md, "The RabbitMQ 4 cluster"); the bound stays.
            until(
                &mut seen,
                FAILOVER_BOUND + WAIT,
                "a delivery through another node",
                |s| {
                    s.connected
                        .iter()
                        .any(|c| c.0 > killed_at && c.1 != n && c.2.is_some())
                },
            )
            .await;
            let (reconnected, node, first) = *seen
                .borrow()
                .connected
                .iter()
                .find(|c| c.0 > killed_at && c.1 != n && c.2.is_some())
                .expect("found above");
            let failover = first.expect("found above") - killed_at;
            sending
                .await
                .expect("the sending task")
                .expect("every send accepted");
            until(&mut seen, Duration::from_secs(60), "every stanza", |s| {
                s.counts.len() as u32 == N
            })
            .await;
            let (duplicates, lost_queues) = {
                let s = seen.borrow();
                let dups: u32 = s.counts.values().map(|c| c - 1).sum();
                (dups, s.lost.clone())
            };
            let (dead, via) = (cluster::node_name(n), cluster::node_name(node));
            println!(
                "failover: killed {dead} (the receiver's node; the group queue's leader was \
                 {leader}) after {received_at_kill} of {N} stanzas received and {sent_at_kill} \
                 sent; reconnected to {via} after {:?}; \
                 first delivery through {via} {:?} after the kill; all {N} received, \
                 {duplicates} duplicates; queues unavailable meanwhile: {lost_queues:?}",
                reconnected - killed_at,
                failover
            );
            assert!(
                failover < FAILOVER_BOUND,
                "receiving again took {failover:?} (bound {FAILOVER_BOUND:?})"
            );
            assert!(
                sent_at_kill < N,
                "every stanza was sent before the kill; the test did not cut anything"
            );
            (vec![rx, tx], seen)
        }
    })
    .await;

    // The node is back: the queues that lived on it (the instance's own, classic) are consumed
    // again without a reconnection.
    let lost = seen.borrow().lost.len();
    until(
        &mut seen,
        Duration::from_secs(60),
        "ConsumerRestored",
        |s| s.restored.len() >= lost,
    )
    .await;
    println!("after the node came back: {}", seen.borrow().summary());
    for c in &claws {
        c.close().await.expect("clean close");
        c.delete_queues().await.expect("delete queues");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_claw_connects_past_a_dead_node() {
    let _alone = CLUSTER.lock().await;
    let _held = cluster::exclusive().await.expect("the cluster lock");
    cluster::up()
        .await
        .expect("the cluster (scripts/cluster up)");
    const DEAD: u8 = 1;
    let connect_timeout = Duration::from_secs(2);
    let bound = connect_timeout * 3;
    let s = unique("");
    let claws = reviving(move |killed| async move {
        killed.store(DEAD, Ordering::SeqCst);
        cluster::kill(DEAD).await.expect("kill -9 of the node");
        let mut claws = Vec::new();
        // The walk starts at a random endpoint: several claws, so that some start at the dead
        // node.
        for i in 0..6 {
            let jid = format!("late{s}-{i}@example.com/w");
            let claw = Arc::new(
                Amqp10Claw::builder(&cluster::url(DEAD), jid.as_str(), AddressScheme::RabbitMq)
                    .urls([cluster::url(DEAD), cluster::url(2), cluster::url(3)])
                    .quorum_groups(true)
                    .connect_timeout(connect_timeout)
                    .build()
                    .expect("valid claw"),
            );
            let token = unique("late-");
            let (events, mut seen) = collect(token.clone());
            let started = Instant::now();
            tokio::time::timeout(bound, claw.start(events))
                .await
                .unwrap_or_else(|_| panic!("start took more than {bound:?}"))
                .expect("start past the dead node");
            let took = started.elapsed();
            until(&mut seen, WAIT, "Connected", |s| !s.connected.is_empty()).await;
            let node = seen.borrow().connected[0].1;
            println!(
                "claw {i}: started through {} in {took:?}",
                cluster::node_name(node)
            );
            assert_ne!(node, DEAD);
            // It works: a stanza to its bare JID comes back.
            let bare = parse(&format!("late{s}-{i}@example.com")).expect("bare JID");
            claw.send(
                &bare,
                None,
                Packet::from(format!("<message>{token}:1</message>")),
            )
            .await
            .expect("send accepted");
            until(&mut seen, WAIT, "the stanza", |s| s.counts.contains_key(&1)).await;
            claw.close().await.expect("clean close");
            claws.push(claw);
        }
        claws
    })
    .await;
    for c in &claws {
        c.delete_queues().await.expect("delete queues");
    }
}

#[test]
fn a_bad_url_among_several_is_named() {
    let e = Amqp10Claw::builder(
        "amqp://guest:guest@127.0.0.1:5681, http://guest:secret@127.0.0.1:5682",
        "a@example.com/r",
        AddressScheme::RabbitMq,
    )
    .build()
    .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("http://guest:***@127.0.0.1:5682"), "{text}");
    assert!(!text.contains("secret"), "{text}");

    let e = Amqp10Claw::builder("amqp://h", "a@example.com/r", AddressScheme::RabbitMq)
        .urls(["amqp://h1", "amqp://h2:notaport"])
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, Error::Config(t) if t.contains("amqp://h2:notaport")),
        "{e}"
    );
    let e = Amqp10Claw::builder("amqp://h", "a@example.com/r", AddressScheme::RabbitMq)
        .urls(Vec::<String>::new())
        .build()
        .unwrap_err();
    assert!(matches!(e, Error::Config(_)), "{e}");
}

#[test]
fn from_config_takes_every_url() {
    use figment::providers::Format;
    let load = |toml: &str| {
        let figment =
            claws_core::Config::figment(None).merge(figment::providers::Toml::string(toml));
        claws_core::Config::from_figment(&figment).expect("a valid config")
    };
    let config = load(
        r#"
        transport = "amqp10"
        url = "amqp://guest:guest@127.0.0.1:5681,amqp://guest:guest@127.0.0.1:5682"
        urls = ["amqp://guest:guest@127.0.0.1:5683"]
        jid = "cfg@example.com/r1"
        [amqp10]
        quorum_groups = true
        quorum_size = 3
        leader_locator = "balanced"
        "#,
    );
    Amqp10Claw::from_config(&config).expect("three URLs");
    let config = load(
        r#"
        url = "amqp://guest:guest@127.0.0.1:5681"
        urls = ["amqp://guest:pw@[::1"]
        jid = "cfg@example.com/r1"
        "#,
    );
    let e = Amqp10Claw::from_config(&config).unwrap_err().to_string();
    assert!(e.contains("[::1"), "{e}");
    assert!(!e.contains("pw"), "{e}");
}
