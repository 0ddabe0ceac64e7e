//! Metrics: what the router, the events channel and the mem claw record, read back through a
//! recorder of the test's own (installed for this thread only: the runtime is single-threaded,
//! so every task runs under it).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claws_core::mem::MemBroker;
use claws_core::metrics as m;
use claws_core::{
    handler_fn, jid, Acker, Claw, Delivery, Error, Events, Packet, QueueKind, Router, Via,
};
use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// Every metric by `name{label=value,...}` (labels sorted).
#[derive(Default)]
struct Store {
    counters: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<BTreeMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<BTreeMap<String, Arc<Samples>>>,
}

#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn render(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    format!("{}{{{}}}", key.name(), labels.join(","))
}

#[derive(Clone, Default)]
struct TestRecorder(Arc<Store>);

impl Recorder for TestRecorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut map = self.0.counters.lock().unwrap();
        Counter::from_arc(map.entry(render(key)).or_default().clone())
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut map = self.0.gauges.lock().unwrap();
        Gauge::from_arc(map.entry(render(key)).or_default().clone())
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut map = self.0.histograms.lock().unwrap();
        Histogram::from_arc(map.entry(render(key)).or_default().clone())
    }
}

impl TestRecorder {
    fn counter(&self, key: &str) -> Option<u64> {
        let map = self.0.counters.lock().unwrap();
        map.get(key).map(|c| c.load(Ordering::Acquire))
    }
    fn gauge(&self, key: &str) -> Option<f64> {
        let map = self.0.gauges.lock().unwrap();
        map.get(key)
            .map(|g| f64::from_bits(g.load(Ordering::Acquire)))
    }
    fn samples(&self, key: &str) -> usize {
        let map = self.0.histograms.lock().unwrap();
        map.get(key).map_or(0, |h| h.0.lock().unwrap().len())
    }
    fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.0.counters.lock().unwrap().keys().cloned().collect();
        keys.extend(self.0.gauges.lock().unwrap().keys().cloned());
        keys.extend(self.0.histograms.lock().unwrap().keys().cloned());
        keys
    }
}

/// Runs `test` on a single-threaded runtime with `recorder` installed for this thread.
fn with_recorder<F: std::future::Future<Output = ()>>(recorder: &TestRecorder, test: F) {
    m::enable();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    metrics::with_local_recorder(recorder, || rt.block_on(test));
}

/// A router on the mem claw: received, acked, rejected and dead-lettered per queue kind,
/// handler times, sends by outcome, connected, and nothing in flight once closed.
#[test]
fn the_router_and_the_mem_claw_record_every_outcome() {
    let recorder = TestRecorder::default();
    with_recorder(&recorder, async {
        let broker = MemBroker::new();
        let service = broker
            .claw_builder("svc@metrics.test/s")
            .unwrap()
            .name("bus")
            .max_deliveries(2)
            .build()
            .unwrap();
        let router = Router::builder().claw(service).build().unwrap();
        let (tx, mut handled) = mpsc::unbounded_channel();
        router
            .start(handler_fn(move |packet, via, ctx| {
                let tx = tx.clone();
                async move {
                    let text = packet.as_str().unwrap_or("").to_owned();
                    let _ = tx.send(text.clone());
                    if text.contains("fail") {
                        return Err("asked to fail".into());
                    }
                    if text.contains("answer") {
                        ctx.reply(&via, Packet::from("<message><body>answer</body></message>"))
                            .await?;
                    }
                    Ok(())
                }
            }))
            .await
            .unwrap();

        // A client used without a router: its sends are measured through `metered`.
        let client = m::metered(Arc::new(broker.claw("client@metrics.test/c").unwrap()));
        let (events, mut client_rx) = Events::channel(16);
        client.start(events).await.unwrap();
        let svc = jid::parse("svc@metrics.test/s").unwrap();
        for body in ["one", "two", "answer", "fail"] {
            client
                .send(
                    &svc,
                    None,
                    Packet::from(format!("<message><body>{body}</body></message>")),
                )
                .await
                .unwrap();
        }
        let err = client
            .send(
                &jid::parse("nobody@metrics.test/x").unwrap(),
                None,
                Packet::from("<m/>"),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NoRoute { .. }), "{err}");
        // Four stanzas, the failing one twice (max_deliveries 2, then dead-lettered).
        for _ in 0..5 {
            timeout(WAIT, handled.recv())
                .await
                .expect("handled")
                .unwrap();
        }
        // The answer reaches the client, which acks it.
        loop {
            match timeout(WAIT, client_rx.recv())
                .await
                .expect("the answer")
                .unwrap()
            {
                claws_core::Event::Received(d) => {
                    d.acker.ack().await.unwrap();
                    break;
                }
                _ => continue,
            }
        }
        // Close waits until every delivery is settled.
        router.close().await.unwrap();
        client.close().await.unwrap();
    });

    let direct = "claw=bus,queue=direct";
    assert_eq!(
        recorder.counter(&format!("{}{{{direct}}}", m::RECEIVED)),
        Some(5)
    );
    assert_eq!(
        recorder.counter(&format!("{}{{{direct}}}", m::ACKED)),
        Some(3)
    );
    assert_eq!(
        recorder.counter(&format!("{}{{{direct}}}", m::REJECTED)),
        Some(2)
    );
    assert_eq!(
        recorder.counter(&format!("{}{{{direct}}}", m::DEAD_LETTERED)),
        Some(1)
    );
    assert_eq!(
        recorder.gauge(&format!("{}{{{direct}}}", m::IN_FLIGHT)),
        Some(0.0)
    );
    assert_eq!(
        recorder.samples(&format!("{}{{{direct}}}", m::HANDLER_SECONDS)),
        5
    );
    // The service's reply, measured by its router.
    assert_eq!(
        recorder.counter(&format!("{}{{claw=bus}}", m::SENT)),
        Some(1)
    );
    assert_eq!(
        recorder.samples(&format!("{}{{claw=bus}}", m::SEND_SECONDS)),
        1
    );
    // The client: four sent, one without a route; the other reasons present at 0.
    assert_eq!(
        recorder.counter(&format!("{}{{claw=mem}}", m::SENT)),
        Some(4)
    );
    for (reason, n) in [
        ("no_route", 1),
        ("refused", 0),
        ("timeout", 0),
        ("other", 0),
    ] {
        assert_eq!(
            recorder.counter(&format!("{}{{claw=mem,reason={reason}}}", m::SEND_FAILED)),
            Some(n),
            "{reason}"
        );
    }
    assert_eq!(
        recorder.samples(&format!("{}{{claw=mem}}", m::SEND_SECONDS)),
        5
    );
    // The client's answer came through its own channel.
    assert_eq!(
        recorder.counter(&format!("{}{{claw=mem,queue=direct}}", m::ACKED)),
        Some(1)
    );
    assert_eq!(
        recorder.gauge(&format!("{}{{claw=bus}}", m::CONNECTED)),
        Some(1.0)
    );
    assert_eq!(
        recorder.counter(&format!("{}{{claw=bus}}", m::RECONNECTS)),
        Some(0)
    );
    // Never a JID in a label.
    for key in recorder.keys() {
        assert!(!key.contains('@'), "{key}");
    }
}

/// `Connected` after the first is a reconnection, `Disconnected` sets connected to 0, a lost
/// consumer is counted under its queue's kind; a delivery that comes back (the router is
/// gone) is not counted.
#[test]
fn the_events_channel_records_connections() {
    let recorder = TestRecorder::default();
    with_recorder(&recorder, async {
        let (events, mut rx) = Events::channel(8);
        let claw: Arc<str> = Arc::from("amqp");
        events.connected_to(&claw, "amqp://node-1").await;
        events.disconnected(&claw, "cut").await;
        assert_eq!(
            recorder.gauge(&format!("{}{{claw=amqp}}", m::CONNECTED)),
            Some(0.0)
        );
        events.connected_to(&claw, "amqp://node-2").await;
        events.connected(&claw).await;
        events
            .consumer_lost(&claw, "xmpp_direct:svc@metrics.test", "node down")
            .await;
        events
            .consumer_lost(&claw, "xmpp_fanout:svc@metrics.test/s", "node down")
            .await;
        while rx.try_recv().is_ok() {}
        drop(rx);
        let delivery = Delivery {
            packet: Packet::from("<m/>"),
            via: Via::new(claw.clone(), QueueKind::Direct, "svc@metrics.test/s"),
            attempt: 1,
            acker: Box::new(Settled),
        };
        let back = events
            .received(delivery)
            .await
            .expect_err("the router is gone");
        let back = events.try_received(back).expect_err("the router is gone");
        back.acker.ack().await.unwrap();
    });
    assert_eq!(
        recorder.counter(&format!("{}{{claw=amqp,queue=direct}}", m::RECEIVED)),
        None
    );
    assert_eq!(
        recorder.counter(&format!("{}{{claw=amqp,queue=direct}}", m::ACKED)),
        None
    );
    assert_eq!(
        recorder.counter(&format!("{}{{claw=amqp}}", m::RECONNECTS)),
        Some(2)
    );
    assert_eq!(
        recorder.gauge(&format!("{}{{claw=amqp}}", m::CONNECTED)),
        Some(1.0)
    );
    assert_eq!(
        recorder.counter(&format!(
            "{}{{claw=amqp,queue=group_direct}}",
            m::CONSUMER_LOST
        )),
        Some(1)
    );
    assert_eq!(
        recorder.counter(&format!("{}{{claw=amqp,queue=fanout}}", m::CONSUMER_LOST)),
        Some(1)
    );
}

struct Settled;

#[claws_core::async_trait]
impl Acker for Settled {
    async fn ack(self: Box<Self>) -> claws_core::Result<()> {
        Ok(())
    }
    async fn reject(self: Box<Self>, _: &Error) -> claws_core::Result<()> {
        Ok(())
    }
}

/// Without a recorder nothing is kept, and everything works.
#[tokio::test]
async fn without_a_recorder_nothing_changes() {
    let broker = MemBroker::new();
    let router = Router::builder()
        .claw(broker.claw("quiet@metrics.test/q").unwrap())
        .build()
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    router
        .start(handler_fn(move |_, _, _| {
            let tx = tx.clone();
            async move {
                tx.send(())?;
                Ok(())
            }
        }))
        .await
        .unwrap();
    let client = broker.claw("c@metrics.test/c").unwrap();
    client
        .send(
            &jid::parse("quiet@metrics.test/q").unwrap(),
            None,
            Packet::from("<m/>"),
        )
        .await
        .unwrap();
    timeout(WAIT, rx.recv()).await.unwrap().unwrap();
    router.close().await.unwrap();
}
