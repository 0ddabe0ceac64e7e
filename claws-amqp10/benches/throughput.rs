//! Throughput and latency of claws-amqp10 against raw fe2o3-amqp doing the same work on RabbitMQ:
//! unsettled sends each awaiting `accepted`, receive and accept, the same payload sizes and the
//! same credit. Closed loop: at most 64 stanzas between the start of a send and their receipt, so
//! latency measures the pipeline rather than a backlog. A warm-up, then 5 rounds alternating which
//! side goes first; throughput is the median round, latency over all rounds.
//!
//! Run with: `cargo bench -p claws-amqp10 --bench throughput` (RabbitMQ at 127.0.0.1:5672;
//! `BENCH_QUICK=1` for a short run).

use claws_core::TopologyBuilder;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use claws_amqp10::{AddressScheme, Amqp10Claw};
use claws_core::topology::Subscriptions;
use claws_core::{Claw, Event, Events, Packet};
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Header, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Connection, Receiver, Sender, Session};
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::sync::{Mutex, Semaphore};

const URL: &str = "amqp://guest:guest@127.0.0.1:5672";
const CREDIT: u16 = 64;
const WINDOW: usize = 64;
const ROUNDS: usize = 5;

struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Run {
    /// The median round's duration, every round's latencies.
    fn combine(mut runs: Vec<Run>) -> Run {
        runs.sort_by_key(|r| r.elapsed);
        let elapsed = runs[runs.len() / 2].elapsed;
        let per_round = runs[0].latencies.len();
        let mut latencies: Vec<Duration> = runs.into_iter().flat_map(|r| r.latencies).collect();
        latencies.sort();
        // rate() divides the count by the duration: keep one round's count.
        let step = latencies.len() / per_round;
        let latencies = latencies.into_iter().step_by(step.max(1)).collect();
        Run { elapsed, latencies }
    }

    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }
    fn pct(&self, p: f64) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        l[((l.len() as f64 - 1.0) * p) as usize]
    }
}

fn suffix() -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{:x}", n & 0xffff_ffff_ffff)
}

/// The payload: the message index in the first 8 bytes, then filler.
fn payload(i: usize, size: usize) -> Vec<u8> {
    let mut p = vec![b'x'; size];
    p[..8].copy_from_slice(&(i as u64).to_be_bytes());
    p
}

fn index(p: &[u8]) -> usize {
    u64::from_be_bytes(p[..8].try_into().unwrap()) as usize
}

async fn claws_run(n: usize, size: usize) -> Run {
    let s = suffix();
    let only_direct = Subscriptions {
        direct: true,
        ..Subscriptions::none()
    };
    let rx = Amqp10Claw::builder(URL, format!("benchrx{s}@bench/r"), AddressScheme::RabbitMq)
        .subscriptions(only_direct)
        .prefetch(CREDIT)
        .durable(false)
        .build()
        .unwrap();
    let tx = Arc::new(
        Amqp10Claw::builder(URL, format!("benchtx{s}@bench/r"), AddressScheme::RabbitMq)
            .subscriptions(Subscriptions::none())
            .durable(false)
            .build()
            .unwrap(),
    );
    let (events, mut inbox) = Events::channel(1024);
    rx.start(events).await.unwrap();
    let (ev2, _in2) = Events::channel(16);
    tx.start(ev2).await.unwrap();
    let to = rx.jid().clone();
    let sent_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let window = Arc::new(Semaphore::new(WINDOW));
    let start = Instant::now();
    let sender = {
        let (tx, sent_at, window) = (tx.clone(), sent_at.clone(), window.clone());
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                // Given back by the receiver on receipt (closed loop).
                window.acquire().await.unwrap().forget();
                let (tx, to, sent_at) = (tx.clone(), to.clone(), sent_at.clone());
                sent_at.lock().unwrap()[i] = Some(Instant::now());
                tasks.push(tokio::spawn(async move {
                    tx.send(&to, None, Packet::from(payload(i, size)))
                        .await
                        .unwrap();
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        if let Some(Event::Received(d)) = inbox.recv().await {
            let i = index(d.packet.as_bytes());
            let at = sent_at.lock().unwrap()[i].unwrap();
            d.acker.ack().await.unwrap();
            latencies.push(at.elapsed());
            window.add_permits(1);
        }
    }
    let elapsed = start.elapsed();
    sender.await.unwrap();
    drop(inbox);
    tx.close().await.unwrap();
    rx.close().await.unwrap();
    rx.delete_queues().await.unwrap();
    Run { elapsed, latencies }
}

/// A raw fe2o3 connection with the socket set up as the claw does (TCP_NODELAY).
async fn raw_connection(id: &str) -> fe2o3_amqp::connection::ConnectionHandle<()> {
    let stream = tokio::net::TcpStream::connect("127.0.0.1:5672")
        .await
        .unwrap();
    stream.set_nodelay(true).unwrap();
    Connection::builder()
        .container_id(id)
        .scheme("amqp")
        .hostname("127.0.0.1")
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain {
            username: "guest".into(),
            password: "guest".into(),
        })
        .open_with_stream(stream)
        .await
        .unwrap()
}

async fn raw_run(n: usize, size: usize) -> Run {
    let s = suffix();
    let queue = format!("bench_raw_{s}");
    let key = format!("rawbench{s}@bench/r");
    let lapin_conn =
        lapin::Connection::connect("amqp://guest:guest@127.0.0.1:5672/%2f", Default::default())
            .await
            .unwrap();
    let ch = lapin_conn.create_channel().await.unwrap();
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        "xmpp_direct".into(),
        key.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let mut rconn = raw_connection("raw-rx").await;
    let mut rsession = Session::begin(&mut rconn).await.unwrap();
    let mut receiver = Receiver::builder()
        .name("raw-rx")
        .source(format!("/amq/queue/{queue}"))
        .credit_mode(CreditMode::Manual)
        .attach(&mut rsession)
        .await
        .unwrap();
    // The same credit policy as the claw: grant CREDIT again once it is used up (fe2o3's Auto
    // mode refills at half, which RabbitMQ 3.10 answers by over-sending).
    receiver.set_credit(u32::from(CREDIT)).await.unwrap();
    let mut tconn = raw_connection("raw-tx").await;
    let mut tsession = Session::begin(&mut tconn).await.unwrap();
    let sender = Arc::new(Mutex::new(
        Sender::attach(&mut tsession, "raw-tx", "/exchange/xmpp_direct")
            .await
            .unwrap(),
    ));
    let sent_at: Arc<std::sync::Mutex<Vec<Option<Instant>>>> =
        Arc::new(std::sync::Mutex::new(vec![None; n]));
    let window = Arc::new(Semaphore::new(WINDOW));
    let start = Instant::now();
    let sending = {
        let (sender, sent_at, key, window, s) = (
            sender.clone(),
            sent_at.clone(),
            key.clone(),
            window.clone(),
            s.clone(),
        );
        tokio::spawn(async move {
            let mut tasks = Vec::with_capacity(n);
            for i in 0..n {
                window.acquire().await.unwrap().forget();
                sent_at.lock().unwrap()[i] = Some(Instant::now());
                // The properties a claw sends: subject, reply-to (the sender), message-id, and
                // a header with the durability it was built with.
                let message = Message::builder()
                    .header(Header {
                        durable: false,
                        ..Header::default()
                    })
                    .properties(
                        Properties::builder()
                            .subject(key.clone())
                            .reply_to(format!("/queue/{key}-sender"))
                            .message_id(format!("{s}-{i}"))
                            .build(),
                    )
                    .data(Binary::from(payload(i, size)))
                    .build();
                let fut = sender.lock().await.send_batchable(message).await.unwrap();
                tasks.push(tokio::spawn(async move {
                    let outcome = fut.await.unwrap();
                    assert!(matches!(outcome, Outcome::Accepted(_)));
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        })
    };
    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        let d = receiver.recv::<Body<Value>>().await.unwrap();
        let i = match d.body() {
            Body::Data(b) => index(b[0].0.as_slice()),
            _ => panic!("data body"),
        };
        receiver.accept(&d).await.unwrap();
        if receiver.credit() == 0 {
            receiver.set_credit(u32::from(CREDIT)).await.unwrap();
        }
        latencies.push(sent_at.lock().unwrap()[i].unwrap().elapsed());
        window.add_permits(1);
    }
    let elapsed = start.elapsed();
    sending.await.unwrap();
    let _ = receiver.detach().await;
    if let Ok(s) = Arc::try_unwrap(sender) {
        let _ = s.into_inner().detach().await;
    }
    let _ = rsession.end().await;
    let _ = tsession.end().await;
    let _ = rconn.close().await;
    let _ = tconn.close().await;
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let _ = lapin_conn.close(200, "done".into()).await;
    Run { elapsed, latencies }
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    let quick = std::env::var("BENCH_QUICK").is_ok();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up both paths (connections, JIT-free but caches and the broker's queues).
        let _ = raw_run(200, 200).await;
        let _ = claws_run(200, 200).await;
        println!("| payload | messages | raw fe2o3 msg/s | claws msg/s | ratio | raw p50 / p99 | claws p50 / p99 |");
        println!("|---|---|---|---|---|---|---|");
        let plan = if quick { [(200usize, 1000usize), (16 * 1024, 300)] } else { [(200, 20_000), (16 * 1024, 5_000)] };
        for (size, n) in plan {
            let (mut raws, mut clawses) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                if round % 2 == 0 {
                    raws.push(raw_run(n, size).await);
                    clawses.push(claws_run(n, size).await);
                } else {
                    clawses.push(claws_run(n, size).await);
                    raws.push(raw_run(n, size).await);
                }
            }
            let raw = Run::combine(raws);
            let claws = Run::combine(clawses);
            println!(
                "| {} B | {} | {:.0} | {:.0} | {:.2}x | {:.1} / {:.1} ms | {:.1} / {:.1} ms |",
                size,
                n,
                raw.rate(),
                claws.rate(),
                claws.rate() / raw.rate(),
                raw.pct(0.5).as_secs_f64() * 1e3,
                raw.pct(0.99).as_secs_f64() * 1e3,
                claws.pct(0.5).as_secs_f64() * 1e3,
                claws.pct(0.99).as_secs_f64() * 1e3,
            );
        }
    });
}
