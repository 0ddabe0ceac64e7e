//! The raw fe2o3-amqp side of `claws bench --baseline --transport amqp10`: the same work
//! without claws.
//!
//! Two AMQP 1.0 connections (a sender and a receiver, as the claws run has two instances), a
//! durable queue of its own bound to `xmpp_direct` (declared over 0-9-1, as the claw's
//! queues are), durable messages sent unsettled to `xmpp_direct` with the routing key (up to
//! `in_flight` awaiting their `accepted` outcome), a receiving link on the queue with the
//! config's prefetch as credit (granted again once used up, as the claw does) that accepts
//! each delivery.
//!
//! The addresses are RabbitMQ's, in the form the claw would use (`[amqp10] addresses`):
//! v1 (3.x: `/amq/queue/Q`, `/exchange/xmpp_direct` with the routing key as `subject`) or v2
//! (4.x: `/queues/Q`, `/exchanges/xmpp_direct/KEY`; RabbitMQ 4.3 refuses v1). With `auto`
//! (the default) the receiving link tries v2 first and falls back to v1 when the broker
//! refuses it, as RabbitMQ 3.x does (the claw reads the broker's version instead, which
//! fe2o3 does not show).

use std::sync::Arc;
use std::time::Instant;

use claws::amqp10::{Addresses, Amqp10Options};
use claws::Config;
use fe2o3_amqp::link::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Header, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Receiver, Sender, Session};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use lapin::options::{QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use tokio::sync::Mutex;

use super::claw::STALL;
use super::stats::{self, Stats};
use super::Work;
use crate::exit::Failure;
use crate::rabbit;

fn err<E: std::fmt::Display>(what: &str) -> impl Fn(E) -> Failure + '_ {
    move |e| Failure::other(format!("fe2o3 {what} failed: {e}"))
}

/// The first of the config's URLs (the local default when it names none).
fn url(config: &Config) -> Result<url::Url, Failure> {
    let text = config
        .urls()
        .first()
        .cloned()
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672".to_owned());
    url::Url::parse(&text).map_err(|e| Failure::usage(format!("cannot read the URL: {e}")))
}

/// A raw connection, the socket set up as the claw sets its own (TCP_NODELAY).
async fn connect(
    url: &url::Url,
    id: &str,
) -> Result<fe2o3_amqp::connection::ConnectionHandle<()>, Failure> {
    let host = url.host_str().unwrap_or("127.0.0.1");
    let stream = tokio::net::TcpStream::connect((host, url.port().unwrap_or(5672)))
        .await
        .map_err(|e| Failure::connect(format!("fe2o3 cannot connect to {host}: {e}")))?;
    stream
        .set_nodelay(true)
        .map_err(err::<std::io::Error>("set_nodelay"))?;
    let user = percent_encoding::percent_decode_str(url.username()).decode_utf8_lossy();
    let password =
        percent_encoding::percent_decode_str(url.password().unwrap_or("")).decode_utf8_lossy();
    fe2o3_amqp::Connection::builder()
        .container_id(id)
        .scheme("amqp")
        .hostname(host)
        .sasl_profile(fe2o3_amqp::sasl_profile::SaslProfile::Plain {
            username: user.into_owned(),
            password: password.into_owned(),
        })
        .open_with_stream(stream)
        .await
        .map_err(err("open"))
}

/// RabbitMQ's AMQP 1.0 address forms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// RabbitMQ 3.x's.
    V1,
    /// RabbitMQ 4.x's.
    V2,
}

impl Form {
    /// The source address of `queue`.
    fn source(self, queue: &str) -> String {
        match self {
            Form::V1 => format!(
                "/amq/queue/{}",
                queue.replace('%', "%25").replace('/', "%2F")
            ),
            Form::V2 => format!("/queues/{}", claws::amqp10::percent_encode(queue)),
        }
    }

    /// The sending link's target for `key` on `xmpp_direct` (v1: the key goes as `subject`).
    fn target(self, key: &str) -> String {
        let exchange = claws::topology::DIRECT_EXCHANGE;
        match self {
            Form::V1 => format!("/exchange/{exchange}"),
            Form::V2 => format!(
                "/exchanges/{exchange}/{}",
                claws::amqp10::percent_encode(key)
            ),
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Form::V1 => "v1",
            Form::V2 => "v2",
        }
    }
}

type Attached = (
    Form,
    fe2o3_amqp::connection::ConnectionHandle<()>,
    fe2o3_amqp::session::SessionHandle<()>,
    Receiver,
);

/// Connects and attaches the receiving link on `queue` in the first of `forms` the broker
/// accepts (a refused attach may end the session, so each form gets a connection of its own).
async fn attach_receiver(
    url: &url::Url,
    id: &str,
    queue: &str,
    forms: &[Form],
) -> Result<Attached, Failure> {
    let mut refused = Vec::new();
    for &form in forms {
        let mut conn = connect(url, &format!("bench-raw-rx-{id}")).await?;
        let mut session = Session::begin(&mut conn).await.map_err(err("begin"))?;
        let source = form.source(queue);
        let attached = Receiver::builder()
            .name("bench-raw-rx")
            .source(source.clone())
            .credit_mode(CreditMode::Manual)
            .attach(&mut session)
            .await;
        match attached {
            Ok(receiver) => return Ok((form, conn, session, receiver)),
            Err(e) => {
                refused.push(format!("{} address `{source}`: {e}", form.as_str()));
                let _ = conn.close().await;
            }
        }
    }
    Err(Failure::other(format!(
        "fe2o3 attach receiver failed: {}",
        refused.join("; ")
    )))
}

pub(super) async fn run(config: &Config, work: Work, bar: ProgressBar) -> Result<Stats, Failure> {
    let url = url(config)?;
    let id = format!("{}-{}", std::process::id(), crate::session::unique());
    let queue = format!("claws_bench_baseline10:{id}");
    let key = format!("bench-{id}@bench.claws/raw");
    // The queue, declared over 0-9-1 as the claw's queues are.
    let declarer = rabbit::open(config).await?;
    let channel = declarer
        .create_channel()
        .await
        .map_err(err("lapin create_channel"))?;
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(err("lapin queue_declare"))?;
    channel
        .queue_bind(
            queue.as_str().into(),
            claws::topology::DIRECT_EXCHANGE.into(),
            key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(err("lapin queue_bind"))?;

    let forms = match config
        .section::<Amqp10Options>("amqp10")
        .map_err(|e| Failure::usage(e.to_string()))?
        .addresses
    {
        Addresses::V1 => vec![Form::V1],
        Addresses::V2 => vec![Form::V2],
        Addresses::Auto => vec![Form::V2, Form::V1],
    };
    let (form, mut rconn, mut rsession, mut receiver) =
        attach_receiver(&url, &id, &queue, &forms).await?;
    let credit = u32::from(config.prefetch);
    receiver
        .set_credit(credit)
        .await
        .map_err(err("set_credit"))?;
    let mut tconn = connect(&url, &format!("bench-raw-tx-{id}")).await?;
    let mut tsession = Session::begin(&mut tconn).await.map_err(err("begin"))?;
    let sender = Arc::new(Mutex::new(
        Sender::attach(&mut tsession, "bench-raw-tx", form.target(&key))
            .await
            .map_err(err("attach sender"))?,
    ));

    let start = Instant::now();
    let send = stream::iter(0..work.messages)
        .map(|_| {
            let sender = &sender;
            let key = &key;
            async move {
                let message = Message::builder()
                    .header(Header {
                        durable: true,
                        ..Header::default()
                    })
                    .properties(Properties::builder().subject(key.clone()).build())
                    .data(Binary::from(stats::payload(start, work.size)))
                    .build();
                let outcome = sender
                    .lock()
                    .await
                    .send_batchable(message)
                    .await
                    .map_err(err("send"))?;
                match outcome.await.map_err(err("send outcome"))? {
                    Outcome::Accepted(_) => Ok(()),
                    other => Err(Failure::other(format!(
                        "the broker did not accept a baseline message: {other:?}"
                    ))),
                }
            }
        })
        .buffer_unordered(work.in_flight)
        .try_for_each(|()| async { Ok(()) });
    let receive = async {
        let mut latencies = Vec::with_capacity(work.messages as usize);
        while (latencies.len() as u64) < work.messages {
            let d = match tokio::time::timeout(STALL, receiver.recv::<Body<Value>>()).await {
                Ok(d) => d.map_err(err("recv"))?,
                Err(_) => return Err(Failure::other("the baseline stalled")),
            };
            match d.body() {
                Body::Data(batch) if !batch.is_empty() => {
                    latencies.push(stats::latency(start, batch[0].0.as_slice()))
                }
                _ => return Err(Failure::other("a baseline message without a data body")),
            }
            receiver.accept(&d).await.map_err(err("accept"))?;
            if receiver.credit() == 0 && (latencies.len() as u64) < work.messages {
                receiver
                    .set_credit(credit)
                    .await
                    .map_err(err("set_credit"))?;
            }
            bar.inc(1);
        }
        Ok(latencies)
    };
    let outcome = tokio::try_join!(send, receive);
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let _ = receiver.close().await;
    if let Ok(sender) = Arc::try_unwrap(sender) {
        let _ = sender.into_inner().close().await;
    }
    let _ = rsession.end().await;
    let _ = tsession.end().await;
    let _ = rconn.close().await;
    let _ = tconn.close().await;
    let _ = channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = declarer.close(200, "bench done".into()).await;
    let ((), latencies) = outcome?;
    Ok(Stats::new(elapsed, latencies))
}
