//! The claws side of the benchmark: a sender instance and a receiver instance.

use std::sync::Arc;
use std::time::{Duration, Instant};

use claws::topology::Subscriptions;
use claws::{jid, Claw, Config, Event, Packet};
use futures_util::stream::{self, StreamExt, TryStreamExt};
use indicatif::ProgressBar;

use super::stats::{self, Stats};
use super::Work;
use crate::exit::Failure;
use crate::session;

/// How long the receiver waits for the next stanza before the run fails.
pub(super) const STALL: Duration = Duration::from_secs(30);

pub(super) async fn run(base: &Config, work: Work, bar: ProgressBar) -> Result<Stats, Failure> {
    let run_id = format!("{}-{}", std::process::id(), session::unique());
    let receiver_config = Config {
        jid: format!("bench-{run_id}@bench.claws/r"),
        subscriptions: Subscriptions {
            direct: true,
            ..Subscriptions::none()
        },
        ..base.clone()
    };
    let sender_config = Config {
        jid: format!("bench-{run_id}-s@bench.claws/s"),
        subscriptions: Subscriptions::none(),
        ..base.clone()
    };
    let mut receiver = session::open(&receiver_config).await?;
    let sender = match session::open(&sender_config).await {
        Ok(s) => s,
        Err(e) => {
            let _ = receiver.claw.close().await;
            return Err(e);
        }
    };
    let to = jid::parse(&receiver_config.jid)?;
    let start = Instant::now();

    let send = {
        let claw: Arc<dyn Claw> = sender.claw.clone();
        async move {
            stream::iter(0..work.messages)
                .map(|_| {
                    let claw = claw.clone();
                    let to = to.clone();
                    async move {
                        let packet = Packet::from(stats::payload(start, work.size));
                        claw.send(&to, None, packet).await
                    }
                })
                .buffer_unordered(work.in_flight)
                .try_for_each(|()| async { Ok(()) })
                .await
                .map_err(Failure::from)
        }
    };
    let receive = async {
        let mut latencies = Vec::with_capacity(work.messages as usize);
        while (latencies.len() as u64) < work.messages {
            match tokio::time::timeout(STALL, receiver.events.recv()).await {
                Ok(Some(Event::Received(d))) => {
                    latencies.push(stats::latency(start, d.packet.as_bytes()));
                    d.acker.ack().await?;
                    bar.inc(1);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(Failure::other("the receiving claw stopped")),
                Err(_) => {
                    return Err(Failure::other(format!(
                        "the benchmark stalled: {} of {} stanzas arrived, none in the last {:?}",
                        latencies.len(),
                        work.messages,
                        STALL
                    )))
                }
            }
        }
        Ok(latencies)
    };
    let outcome = tokio::try_join!(send, receive);
    let elapsed = start.elapsed();
    bar.finish_and_clear();
    let _ = sender.claw.close().await;
    drop(receiver.events);
    let _ = receiver.claw.close().await;
    // On RabbitMQ (over either protocol), leave nothing behind.
    #[cfg(feature = "amqp091")]
    if base.transport != claws::Transport::Mem {
        crate::rabbit::delete_queues_of(base, &[&receiver_config.jid, &sender_config.jid]).await;
    }
    let ((), latencies) = outcome?;
    Ok(Stats::new(elapsed, latencies))
}
