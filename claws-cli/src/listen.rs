//! `claws listen`: consume as `--jid` and print every event.

use std::time::Duration;

use claws::Event;
use tokio::time::Instant;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;
use crate::session;

/// Consume as --jid and print every event.
///
/// Connects as --jid, declares its queues, consumes, and prints every event; each packet is
/// acknowledged once printed.
///
/// JSON lines: {"event":"connected","claw":NAME}; {"event":"received","payload":TEXT,
/// "via":{"jid":..,"exchange":..,"claw":..,"id":..,"queue":..}};
/// {"event":"disconnected","claw":NAME,"reason":..}.
///
/// On the mem transport only this process can reach the broker; use amqp091 or amqp10 to
/// listen to other processes.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Exit (0) after this many packets.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Exit (1) if this many seconds pass before --count packets arrived (or at all, without
    /// --count).
    #[arg(long, value_name = "SECS")]
    timeout: Option<f64>,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let timeout = match args.timeout {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            return Err(Failure::usage(
                "--timeout must be a positive number of seconds",
            ))
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let config = global.config()?;
    let printer = Printer::new(global.format);
    let mut session = session::open(&config).await?;
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut received = 0u64;
    let outcome = loop {
        if args.count.is_some_and(|n| received >= n) {
            break Ok(());
        }
        let next = async {
            match deadline {
                Some(d) => tokio::time::timeout_at(d, session.events.recv()).await.ok(),
                None => Some(session.events.recv().await),
            }
        };
        let event = tokio::select! {
            e = next => e,
            () = session::shutdown_signal() => break Ok(()),
        };
        match event {
            None => {
                let expected = args.count.map(|n| format!(" of {n}")).unwrap_or_default();
                break Err(Failure::other(format!(
                    "listen timed out after {:?} having received {received}{expected} packets",
                    timeout.unwrap_or_default()
                )));
            }
            Some(None) => break Err(Failure::other("the claw stopped reporting events")),
            Some(Some(Event::Connected { claw, endpoint, .. })) => {
                printer.connected(&claw, endpoint.as_deref())
            }
            Some(Some(Event::ConsumerLost {
                claw,
                queue,
                reason,
            })) => printer.consumer_lost(&claw, &queue, &reason),
            Some(Some(Event::ConsumerRestored { claw, queue })) => {
                printer.consumer_restored(&claw, &queue)
            }
            Some(Some(Event::Disconnected { claw, reason })) => {
                printer.disconnected(&claw, &reason)
            }
            Some(Some(Event::Received(delivery))) => {
                if let Err(err) = printer.received(&delivery.packet, &delivery.via) {
                    // Not printed, so not acknowledged: it goes back to its queue.
                    break Err(Failure::other(format!("cannot write to stdout: {err}")));
                }
                delivery.acker.ack().await?;
                received += 1;
            }
            // An event this version does not print.
            Some(Some(_)) => {}
        }
    };
    // Deliveries not printed go back to their queue.
    drop(session.events);
    let closed = session.claw.close().await;
    outcome?;
    closed.map_err(Failure::from)
}
