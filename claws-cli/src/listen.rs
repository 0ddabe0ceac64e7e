//! `claws listen`: consume as `--jid` and print every event.

use std::time::Duration;

use claws::Event;
use tokio::time::Instant;

use crate::exit::{self, Failure};
use crate::options::Global;
use crate::output::Printer;
use crate::session::{self, Shutdown};

/// Consume as --jid and print every event.
///
/// Connects as --jid, declares its queues, consumes, and prints every event; each packet is
/// acknowledged once printed. Keeps running across connection loss: it prints `disconnected`,
/// then `connected` once the claw is back; a packet whose acknowledgement failed is the
/// broker's again and comes back (so it may be printed twice). Ctrl-C or SIGTERM stops taking
/// packets, closes, and exits 0; what was not printed stays on the broker.
///
/// JSON lines: {"event":"connected","claw":NAME,"endpoint":URL}; {"event":"received",
/// "payload":TEXT,"via":{"jid":..,"exchange":..,"claw":..,"id":..,"queue":..}};
/// {"event":"disconnected","claw":NAME,"reason":..}; {"event":"consumer_lost",..};
/// {"event":"consumer_restored",..}.
///
/// On the mem transport only this process can reach the broker; use amqp091 or amqp10 to
/// listen to other processes.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Exit (0) after this many packets printed and acknowledged (one printed again after a
    /// connection cut counts once).
    #[arg(long, value_name = "N", value_parser = crate::options::positive)]
    count: Option<u64>,
    /// Exit (1) if this long passes before --count packets arrived (or at all, without
    /// --count): 30s, 250ms, 1m 30s, or plain seconds.
    #[arg(long, value_name = "DURATION", value_parser = crate::options::duration)]
    timeout: Option<Duration>,
}

impl Args {
    /// `--count`.
    #[cfg(test)]
    pub(crate) fn count(&self) -> Option<u64> {
        self.count
    }

    /// `--timeout`.
    #[cfg(test)]
    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let mut shutdown = Shutdown::install()?;
    let timeout = args.timeout;
    let config = global.config()?;
    let printer = Printer::new(global.format);
    let mut session = session::open(&config).await?;
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    let mut received = 0u64;
    // Acknowledgements that failed since the claw last connected; the first one is reported.
    let mut failed_acks = 0u64;
    let mut window = AckWindow::new(usize::from(config.prefetch) * 4);
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
        // The signal first: under load an event is always ready.
        let event = tokio::select! {
            biased;
            () = shutdown.recv() => break Ok(()),
            e = next => e,
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
                failed_acks = 0;
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
                window.connection_lost();
                printer.disconnected(&claw, &reason)
            }
            Some(Some(Event::Received(delivery))) => {
                let queue = delivery.via.queue.clone();
                if let Err(err) = printer.received(&delivery.packet, &delivery.via) {
                    // Not printed, so not acknowledged: it goes back to its queue.
                    break Err(Failure::other(format!("cannot write to stdout: {err}")));
                }
                let key = AckWindow::key(&delivery.packet, &queue.to_string());
                match delivery.acker.ack().await {
                    Ok(()) if window.acknowledged(key) => received += 1,
                    // Counted already: its acknowledgement was lost with the connection.
                    Ok(()) => {}
                    Err(err) => {
                        // The connection that delivered it is gone: the broker delivers it again.
                        failed_acks += 1;
                        if failed_acks == 1 {
                            exit::warn(&format!(
                                "a packet from the {queue} queue was printed but could not be \
                                 acknowledged ({err}); the broker will deliver it again"
                            ));
                        }
                    }
                }
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

/// Keeps `--count` to distinct packets across a connection cut.
///
/// AMQP 0-9-1 does not confirm acknowledgements: the last ones written before a connection
/// died may never have reached the broker, which then delivers those packets again. At most a
/// prefetch window per consumed queue is concerned: the most recently acknowledged. When the
/// connection is lost they become uncertain; an uncertain packet (same queue, same bytes) that
/// comes back is printed again but not counted twice.
#[derive(Debug)]
struct AckWindow {
    size: usize,
    recent: std::collections::VecDeque<u64>,
    uncertain: std::collections::HashSet<u64>,
}

impl AckWindow {
    fn new(size: usize) -> Self {
        Self {
            size,
            recent: std::collections::VecDeque::with_capacity(size),
            uncertain: std::collections::HashSet::new(),
        }
    }

    fn key(packet: &claws::Packet, queue: &str) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        queue.hash(&mut hasher);
        packet.as_bytes().hash(&mut hasher);
        hasher.finish()
    }

    /// Records an acknowledged packet; false if it is the redelivery of an uncertain one.
    fn acknowledged(&mut self, key: u64) -> bool {
        if self.uncertain.remove(&key) {
            return false;
        }
        if self.recent.len() == self.size {
            self.recent.pop_front();
        }
        self.recent.push_back(key);
        true
    }

    fn connection_lost(&mut self) {
        // Bounded: older uncertain ones would have come back by now.
        if self.uncertain.len() > self.size * 4 {
            self.uncertain.clear();
        }
        self.uncertain.extend(self.recent.drain(..));
    }
}
