//! Run with: cargo bench -p claws-amqp091 --bench throughput
//!
//! claws-amqp091 and raw lapin doing the same work on the same broker, in one run: publish
//! with confirms (mandatory, persistent, `reply_to` set), consume, ack; the same payloads
//! (200 B and 16 KiB), the same prefetch (64) and the same in-flight window (at most 64 stanzas
//! between publish and receipt, each send awaiting its confirm). Prints throughput and p50/p99
//! latency (publish start to consumer receipt) and the
//! claws/lapin ratios as a Markdown table. `CLAWS_URL` picks the broker; `BENCH_SCALE`
//! (default 1.0) scales the message counts.
//!
//! Over TLS, both sides alike: `CLAWS_URL=amqps://guest:guest@127.0.0.1:5671/%2f
//! CLAWS_AMQP091__TLS_CA_FILE=/etc/rabbitmq/claws-tls/ca.pem cargo bench -p claws-amqp091 --features tls
//! --bench throughput` (the listener and CA that `scripts/provision` sets up).

use std::sync::Arc;
use std::time::{Duration, Instant};

use claws_amqp091::AmqpClaw;
use claws_core::topology::Subscriptions;
use claws_core::{Claw, Event, Events, Packet};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use tokio::sync::Semaphore;

const PREFETCH: u16 = 64;
const WINDOW: usize = 64;
const ROUNDS: usize = 5;

struct RunResult {
    elapsed: Duration,
    latencies: Vec<Duration>,
}

fn payload(base: Instant, size: usize) -> Vec<u8> {
    let mut v = vec![b'x'; size];
    let nanos = base.elapsed().as_nanos() as u64;
    v[..8].copy_from_slice(&nanos.to_le_bytes());
    v
}

fn latency(base: Instant, data: &[u8]) -> Duration {
    let sent = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
    base.elapsed().saturating_sub(Duration::from_nanos(sent))
}

fn uid() -> String {
    format!(
        "{}-{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

fn url() -> String {
    // The config's names (CLAWS_URL, CLAWS_AMQP091__TLS_CA_FILE); the old ones still work.
    std::env::var("CLAWS_URL")
        .or_else(|_| std::env::var("CLAWS_AMQP_URL"))
        .unwrap_or_else(|_| claws_amqp091::DEFAULT_URL.to_owned())
}

/// The CA both sides trust over TLS (`CLAWS_AMQP091__TLS_CA_FILE`), if any.
fn tls_ca() -> Option<String> {
    std::env::var("CLAWS_AMQP091__TLS_CA_FILE")
        .or_else(|_| std::env::var("CLAWS_TLS_CA"))
        .ok()
}

/// A claw builder for `jid`, trusting the CA file when set.
fn claw(jid: &str) -> claws_amqp091::AmqpClawBuilder {
    let b = AmqpClaw::builder(&url(), jid);
    match tls_ca() {
        Some(ca) => b.tls_ca_file(ca),
        None => b,
    }
}

/// A raw lapin connection, trusting the CA file when set.
async fn connect() -> Connection {
    let tls = lapin::tcp::OwnedTLSConfig {
        identity: None,
        cert_chain: tls_ca()
            .map(|p| std::fs::read_to_string(p).expect("readable CLAWS_AMQP091__TLS_CA_FILE")),
    };
    let runtime = lapin::runtime::default_runtime().expect("tokio runtime");
    Connection::connect_with_config(&url(), ConnectionProperties::default(), tls, runtime)
        .await
        .expect("connect to the broker")
}

/// The claw: a sender claw sends to a receiver claw's full JID; the receiver acks each.
async fn run_claws(n: usize, size: usize) -> RunResult {
    let u = uid();
    let receiver = Arc::new(
        claw(&format!("bench-{u}@bench/r"))
            .prefetch(PREFETCH)
            .subscriptions(Subscriptions {
                direct: true,
                ..Subscriptions::none()
            })
            .build()
            .unwrap(),
    );
    let sender = Arc::new(
        claw(&format!("bench-client-{u}@bench/s"))
            .subscriptions(Subscriptions::none())
            .build()
            .unwrap(),
    );
    let (events, mut rx) = Events::channel(1024);
    receiver.start(events).await.unwrap();
    sender.start(Events::channel(8).0).await.unwrap();
    let base = Instant::now();
    let window = Arc::new(Semaphore::new(WINDOW));
    let returns = window.clone();
    let consumer = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n);
        while latencies.len() < n {
            match rx.recv().await {
                Some(Event::Received(d)) => {
                    latencies.push(latency(base, d.packet.as_bytes()));
                    returns.add_permits(1);
                    d.acker.ack().await.unwrap();
                }
                Some(_) => {}
                None => break,
            }
        }
        (latencies, base.elapsed())
    });
    let to = receiver.jid().clone();
    let mut sends = Vec::with_capacity(n);
    for _ in 0..n {
        window.acquire().await.unwrap().forget();
        let sender = sender.clone();
        let to = to.clone();
        sends.push(tokio::spawn(async move {
            sender
                .send(&to, None, Packet::from(payload(base, size)))
                .await
                .unwrap();
        }));
    }
    let (latencies, elapsed) = consumer.await.unwrap();
    for s in sends {
        s.await.unwrap();
    }
    sender.close().await.unwrap();
    receiver.close().await.unwrap();
    delete(&[&receiver.topology().queues[1].name]).await;
    RunResult { elapsed, latencies }
}

/// Raw lapin: the same queue arguments, properties, confirms, prefetch and window.
async fn run_lapin(n: usize, size: usize) -> RunResult {
    let u = uid();
    let key = format!("rawbench-{u}@bench/r");
    let queue = format!("xmpp_direct:{key}");
    let pub_conn = connect().await;
    let sub_conn = connect().await;
    let publish = pub_conn.create_channel().await.unwrap();
    publish
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("xmpp_dead_letter")),
    );
    args.insert("x-expires".into(), AMQPValue::LongLongInt(1_800_000));
    publish
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    publish
        .queue_bind(
            queue.as_str().into(),
            "xmpp_direct".into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let consume = sub_conn.create_channel().await.unwrap();
    consume
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = consume
        .basic_consume(
            queue.as_str().into(),
            "raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let base = Instant::now();
    let window = Arc::new(Semaphore::new(WINDOW));
    let returns = window.clone();
    let reader = tokio::spawn(async move {
        let mut latencies = Vec::with_capacity(n);
        while latencies.len() < n {
            let d = consumer.next().await.unwrap().unwrap();
            latencies.push(latency(base, &d.data));
            returns.add_permits(1);
            d.acker.ack(BasicAckOptions::default()).await.unwrap();
        }
        (latencies, base.elapsed())
    });
    let reply_to: lapin::types::ShortString = "bench-client@bench/s".into();
    let mut sends = Vec::with_capacity(n);
    for _ in 0..n {
        window.acquire().await.unwrap().forget();
        let publish = publish.clone();
        let key = key.clone();
        let reply_to = reply_to.clone();
        sends.push(tokio::spawn(async move {
            let confirm = publish
                .basic_publish(
                    "xmpp_direct".into(),
                    key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        immediate: false,
                    },
                    &payload(base, size),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_reply_to(reply_to),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack());
        }));
    }
    let (latencies, elapsed) = reader.await.unwrap();
    for s in sends {
        s.await.unwrap();
    }
    let _ = pub_conn.close(200, "done".into()).await;
    let _ = sub_conn.close(200, "done".into()).await;
    delete(&[&queue]).await;
    RunResult { elapsed, latencies }
}

async fn delete(queues: &[&str]) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    for q in queues {
        let _ = ch
            .queue_delete((*q).into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "done".into()).await;
}

struct Summary {
    rate: f64,
    p50: Duration,
    p99: Duration,
}

fn summarize(n: usize, runs: Vec<RunResult>) -> Summary {
    let mut rates: Vec<f64> = runs
        .iter()
        .map(|r| n as f64 / r.elapsed.as_secs_f64())
        .collect();
    rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mut all: Vec<Duration> = runs.into_iter().flat_map(|r| r.latencies).collect();
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Summary {
        rate: rates[rates.len() / 2],
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo test --benches` runs this with `--bench`-less args; keep that quick.
    if std::env::args().any(|a| a == "--test" || a == "--list") {
        return;
    }
    let scale: f64 = std::env::var("BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    println!(
        "claws-amqp091 vs raw lapin: publish with confirms + consume + ack; prefetch {PREFETCH}, \
         {WINDOW} stanzas in flight end to end; median of {ROUNDS} rounds (throughput), all rounds (latency)\n"
    );
    println!("| payload | messages | claws msg/s | lapin msg/s | ratio | claws p50 ms | lapin p50 ms | claws p99 ms | lapin p99 ms | p99 ratio |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for (label, size, n) in [
        ("200 B", 200usize, 20_000usize),
        ("16 KiB", 16 * 1024, 5_000),
    ] {
        let n = ((n as f64 * scale) as usize).max(100);
        // Warm up both paths (connections, queues, JIT-free but caches and broker state).
        let _ = run_claws(n / 10, size).await;
        let _ = run_lapin(n / 10, size).await;
        let (mut c, mut l) = (Vec::new(), Vec::new());
        for round in 0..ROUNDS {
            // Alternate who goes first, so that neither always meets a warmer broker.
            if round % 2 == 0 {
                c.push(run_claws(n, size).await);
                l.push(run_lapin(n, size).await);
            } else {
                l.push(run_lapin(n, size).await);
                c.push(run_claws(n, size).await);
            }
        }
        let (c, l) = (summarize(n, c), summarize(n, l));
        println!(
            "| {label} | {n} | {:.0} | {:.0} | {:.2}x | {} | {} | {} | {} | {:.2}x |",
            c.rate,
            l.rate,
            c.rate / l.rate,
            ms(c.p50),
            ms(l.p50),
            ms(c.p99),
            ms(l.p99),
            c.p99.as_secs_f64() / l.p99.as_secs_f64()
        );
    }
}
