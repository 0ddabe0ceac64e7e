//! The raw-lapin side of `claws bench --baseline`: the same work without claws.
//!
//! Two connections (a sender and a receiver, as the claws run has two instances), a durable
//! queue of its own on the default exchange, persistent messages, publisher confirms (up to
//! `in_flight` outstanding), a consumer with the config's prefetch that acknowledges each
//! delivery.

use std::time::Instant;

use claws::Config;
use futures_util::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::BasicProperties;

use super::claw::STALL;
use super::stats::{self, Stats};
use super::Work;
use crate::exit::Failure;
use crate::rabbit;

fn lapin_err(what: &str) -> impl Fn(lapin::Error) -> Failure + '_ {
    move |e| Failure::other(format!("lapin {what} failed: {e}"))
}

pub(super) async fn run(config: &Config, work: Work, bar: ProgressBar) -> Result<Stats, Failure> {
    let conn = rabbit::open(config).await?;
    let sender = rabbit::open(config).await?;
    let queue = format!(
        "claws_bench_baseline:{}-{}",
        std::process::id(),
        crate::session::unique()
    );
    let publisher = conn
        .create_channel()
        .await
        .map_err(lapin_err("create_channel"))?;
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(lapin_err("confirm_select"))?;
    let consumer_ch = conn
        .create_channel()
        .await
        .map_err(lapin_err("create_channel"))?;
    consumer_ch
        .basic_qos(config.prefetch, BasicQosOptions::default())
        .await
        .map_err(lapin_err("basic_qos"))?;
    consumer_ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_err("queue_declare"))?;
    let mut consumer = consumer_ch
        .basic_consume(
            queue.as_str().into(),
            "claws-bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(lapin_err("basic_consume"))?;

    let start = Instant::now();
    let send = stream::iter(0..work.messages)
        .map(|_| {
            let publisher = &publisher;
            let queue = &queue;
            async move {
                let payload = stats::payload(start, work.size);
                let confirm = publisher
                    .basic_publish(
                        "".into(),
                        queue.as_str().into(),
                        BasicPublishOptions::default(),
                        &payload,
                        BasicProperties::default().with_delivery_mode(2),
                    )
                    .await
                    .map_err(lapin_err("basic_publish"))?;
                let confirmation = confirm.await.map_err(lapin_err("publisher confirm"))?;
                if confirmation.is_nack() {
                    return Err(Failure::other("the broker refused a baseline message"));
                }
                Ok(())
            }
        })
        .buffer_unordered(work.in_flight)
        .try_for_each(|()| async { Ok(()) });
    let receive = async {
        let mut latencies = Vec::with_capacity(work.messages as usize);
        while (latencies.len() as u64) < work.messages {
            match tokio::time::timeout(STALL, consumer.next()).await {
                Ok(Some(Ok(delivery))) => {
                    latencies.push(stats::latency(start, &delivery.data));
                    delivery
                        .ack(BasicAckOptions::default())
                        .await
                        .map_err(lapin_err("basic_ack"))?;
                    bar.inc(1);
                }
                Ok(Some(Err(e))) => return Err(lapin_err("consume")(e)),
                Ok(None) => return Err(Failure::other("the baseline consumer was cancelled")),
                Err(_) => return Err(Failure::other("the baseline stalled")),
            }
        }
        Ok(latencies)
    };
    let outcome = tokio::try_join!(send, receive);
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let _ = consumer_ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = consumer_ch.close(200, "bench done".into()).await;
    let _ = publisher.close(200, "bench done".into()).await;
    let _ = conn.close(200, "bench done".into()).await;
    let _ = sender.close(200, "bench done".into()).await;
    let ((), latencies) = outcome?;
    Ok(Stats::new(elapsed, latencies))
}
