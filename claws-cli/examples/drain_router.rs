//! The minimal router service `scripts/bench-drain` measures next to `claws listen` and the raw
//! clients (issue 18): what a user's service binary is, with nothing in its handler.
//!
//! ```text
//! drain_router amqp091|amqp10 URL JID COUNT PREFETCH
//!     consume the direct queue of JID through a claws::Router on one claw (the amqp091 or
//!     amqp10 claw, PREFETCH its prefetch or credit), with a handler that only counts; exit 0
//!     once it has handled COUNT stanzas, after router.close()
//! ```
//!
//! Each delivery is acknowledged by the router once its handler returned `Ok`, as in any
//! service; the router runs with its defaults (8 lanes, the config's concurrency). Only the
//! direct subscription is consumed, as by the other sides of the benchmark.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use claws::topology::Subscriptions;
use claws::{async_trait, Config, Context, Handler, HandlerResult, Packet, Router, Transport, Via};
use tokio::sync::Notify;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A run that waits this long for the next stanza fails.
const STALL: Duration = Duration::from_secs(30);

/// The handler: counts, and wakes `main` once `target` stanzas were handled.
struct Count {
    handled: AtomicU64,
    target: u64,
    done: Notify,
}

/// Shared with `main`, which waits on it.
struct Counter(Arc<Count>);

#[async_trait]
impl Handler for Counter {
    async fn received(&self, _packet: Packet, _via: Via, _ctx: &Context) -> HandlerResult {
        if self.0.handled.fetch_add(1, Ordering::Relaxed) + 1 == self.0.target {
            self.0.done.notify_one();
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome = match args.as_slice() {
        [transport @ ("amqp091" | "amqp10"), url, jid, count, prefetch] => {
            let transport = if *transport == "amqp10" {
                Transport::Amqp10
            } else {
                Transport::Amqp091
            };
            drain(
                transport,
                url,
                jid,
                count.parse().unwrap_or(0),
                prefetch.parse().unwrap_or(1000),
            )
            .await
        }
        _ => Err("usage: drain_router amqp091|amqp10 URL JID COUNT PREFETCH".into()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("drain_router: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn drain(
    transport: Transport,
    url: &str,
    jid: &str,
    count: u64,
    prefetch: u16,
) -> Result<()> {
    let config = Config {
        transport,
        url: Some(url.into()),
        jid: jid.into(),
        prefetch,
        subscriptions: Subscriptions {
            direct: true,
            ..Subscriptions::none()
        },
        ..Config::default()
    };
    let router = Router::builder()
        .claw_arc(claws::connect(&config)?)
        .concurrency(config.concurrency)
        .build()?;
    let count_state = Arc::new(Count {
        handled: AtomicU64::new(0),
        target: count,
        done: Notify::new(),
    });
    router.start(Counter(Arc::clone(&count_state))).await?;
    // Wakes at the target, or every STALL to see whether anything was handled meanwhile.
    let mut seen = 0;
    while count_state.handled.load(Ordering::Relaxed) < count {
        if tokio::time::timeout(STALL, count_state.done.notified())
            .await
            .is_err()
        {
            let handled = count_state.handled.load(Ordering::Relaxed);
            if handled == seen {
                let _ = router.close().await;
                return Err(format!("stalled after {handled} of {count}").into());
            }
            seen = handled;
        }
    }
    router.close().await?;
    Ok(())
}
