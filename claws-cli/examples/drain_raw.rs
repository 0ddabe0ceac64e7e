//! The raw clients `scripts/bench-drain` measures `claws listen` against, and its queue filler.
//!
//! ```text
//! drain_raw fill   URL QUEUE COUNT SIZE     publish COUNT persistent SIZE-byte stanzas to QUEUE
//!                                           (default exchange, confirms pipelined)
//! drain_raw lapin  URL QUEUE COUNT PREFETCH consume QUEUE with raw lapin, ack each delivery
//! drain_raw fe2o3  URL QUEUE COUNT CREDIT [v1|v2]
//!                                           consume QUEUE with raw fe2o3-amqp (AMQP 1.0), accept
//!                                           each delivery; at /amq/queue/QUEUE (v1, RabbitMQ
//!                                           3.x, the default) or /queues/QUEUE (v2, RabbitMQ 4)
//! drain_raw delete URL QUEUE...             delete the queues
//! ```
//!
//! What a hand-written client does, with nothing left out that a correct one needs: each
//! delivery is acknowledged (0-9-1: `basic.ack`, awaited; 1.0: `accept`) once it was read, the
//! prefetch or credit bounds what is in flight. Exits 0 after COUNT deliveries.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A run that waits this long for the next delivery fails.
const STALL: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        ["fill", url, queue, count, size] => {
            fill(
                url,
                queue,
                count.parse().unwrap_or(0),
                size.parse().unwrap_or(200),
            )
            .await
        }
        ["lapin", url, queue, count, prefetch] => {
            lapin_drain(
                url,
                queue,
                count.parse().unwrap_or(0),
                prefetch.parse().unwrap_or(1000),
            )
            .await
        }
        ["fe2o3", url, queue, count, credit, form @ ..] if form.len() <= 1 => {
            fe2o3_drain(
                url,
                queue,
                count.parse().unwrap_or(0),
                credit.parse().unwrap_or(1000),
                form.first().is_some_and(|f| *f == "v2"),
            )
            .await
        }
        ["delete", url, queues @ ..] => delete(url, queues).await,
        _ => Err(
            "usage: drain_raw fill|lapin URL QUEUE COUNT N, drain_raw fe2o3 URL QUEUE COUNT N \
             [v1|v2], or drain_raw delete URL QUEUE..."
                .into(),
        ),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drain_raw: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn fill(url: &str, queue: &str, count: u64, size: usize) -> Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    // A stanza of `size` bytes (the payload is not parsed by either side of the benchmark).
    let mut stanza = b"<message to='drain@bench.claws/c'><body>".to_vec();
    stanza.resize(size.saturating_sub(17).max(stanza.len()), b'x');
    stanza.extend_from_slice(b"</body></message>");
    let channel = &channel;
    let stanza = &stanza;
    stream::iter(0..count)
        .map(|_| async move {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    stanza,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await?
                .await?;
            if confirm.is_nack() {
                return Err("the broker refused a message".into());
            }
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        })
        .buffer_unordered(1000)
        .try_for_each(|()| async { Ok(()) })
        .await?;
    let _ = conn.close(200, "filled".into()).await;
    Ok(())
}

async fn lapin_drain(url: &str, queue: &str, count: u64, prefetch: u16) -> Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "drain-raw".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0;
    while received < count {
        match tokio::time::timeout(STALL, consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack(BasicAckOptions::default()).await?;
                received += 1;
            }
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(None) => return Err("the consumer was cancelled".into()),
            Err(_) => return Err(format!("stalled after {received} of {count}").into()),
        }
    }
    let _ = channel.close(200, "drained".into()).await;
    let _ = conn.close(200, "drained".into()).await;
    Ok(())
}

async fn fe2o3_drain(url: &str, queue: &str, count: u64, credit: u32, v2: bool) -> Result<()> {
    use fe2o3_amqp::link::CreditMode;
    use fe2o3_amqp::types::messaging::Body;
    use fe2o3_amqp::types::primitives::Value;
    use fe2o3_amqp::{Receiver, Session};

    let url = url::Url::parse(url)?;
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let stream =
        tokio::net::TcpStream::connect((host.as_str(), url.port().unwrap_or(5672))).await?;
    // As the claw sets its socket up.
    stream.set_nodelay(true)?;
    let mut conn = fe2o3_amqp::Connection::builder()
        .container_id(format!("drain-raw-{}", std::process::id()))
        .scheme("amqp")
        .hostname(host.as_str())
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain {
            username: url.username().to_owned(),
            password: url.password().unwrap_or_default().to_owned(),
        })
        .open_with_stream(stream)
        .await?;
    let mut session = Session::begin(&mut conn).await?;
    let source = if v2 {
        // RabbitMQ 4's address of a queue, the name percent-encoded as the claw does.
        format!("/queues/{}", claws::amqp10::percent_encode(queue))
    } else {
        // RabbitMQ 3.x's address of a queue; `/` and `%` in its name percent-encoded.
        format!(
            "/amq/queue/{}",
            queue.replace('%', "%25").replace('/', "%2F")
        )
    };
    let mut receiver = Receiver::builder()
        .name("drain-raw")
        .source(source)
        .credit_mode(CreditMode::Manual)
        .attach(&mut session)
        .await?;
    // Credit granted again once used up (fe2o3's Auto mode refills at half, which RabbitMQ
    // 3.10 answers by over-sending), as the claw does.
    receiver.set_credit(credit).await?;
    let mut received = 0;
    while received < count {
        let d = match tokio::time::timeout(STALL, receiver.recv::<Body<Value>>()).await {
            Ok(d) => d?,
            Err(_) => return Err(format!("stalled after {received} of {count}").into()),
        };
        receiver.accept(&d).await?;
        received += 1;
        if receiver.credit() == 0 && received < count {
            receiver.set_credit(credit).await?;
        }
    }
    let _ = receiver.close().await;
    let _ = session.end().await;
    let _ = conn.close().await;
    Ok(())
}

async fn delete(url: &str, queues: &[&str]) -> Result<()> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    for queue in queues {
        channel
            .queue_delete((*queue).into(), QueueDeleteOptions::default())
            .await?;
    }
    let _ = conn.close(200, "deleted".into()).await;
    Ok(())
}
