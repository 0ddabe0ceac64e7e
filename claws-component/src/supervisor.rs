//! The task that keeps a started component claw connected: it serves the stream, and when the
//! stream is lost reports `Disconnected`, reconnects with a jittered
//! [`Backoff`](claws_core::runtime::Backoff) and reports `Connected` again, until the claw's
//! [`CancellationToken`] is cancelled. The states it moves through are in [`crate::state`].

use std::sync::Arc;

use claws_core::runtime::{CancellationToken, Stint};
use claws_core::Events;
use tokio::sync::mpsc;
use tokio::time::sleep;

use crate::session::{establish, serve, Command, Outcome, Stream};
use crate::state::{Shared, State};

/// Runs the claw after its first connection: serves the stream until it is lost, reports
/// Disconnected, reconnects with backoff, reports Connected, ... until `stop` is cancelled.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut stream: Stream,
    mut cmds: mpsc::Receiver<Command>,
    events: Events,
    stop: CancellationToken,
) {
    let settings = &shared.settings;
    let mut backoff = settings.timing.backoff();
    let mut stint = Stint::begin();
    loop {
        shared.set(State::Ready);
        let failure = match serve(&shared, &mut stream, &mut cmds, &events, &stop).await {
            Outcome::Stopped => break,
            Outcome::Lost(failure) => failure,
        };
        drop(stream);
        shared.set(State::Disconnected);
        tracing::warn!(claw = &*shared.name, server = %settings.server, reason = %failure, "component stream lost; reconnecting");
        events.disconnected(&shared.name, failure.to_string()).await;

        // Only a stream that held starts the waits from the shortest again: one closed at
        // once after each connect (a server refusing it after the handshake) slows down.
        backoff.after(&stint);
        let mut attempt = 0u32;
        let mut delay = backoff.next_delay();
        stream = loop {
            attempt = attempt.saturating_add(1);
            shared.set(State::Retrying { attempt, delay });
            let attempt_result = tokio::select! {
                biased;
                _ = stop.cancelled() => None,
                r = async { sleep(delay).await; establish(&shared).await } => Some(r),
            };
            match attempt_result {
                None => {
                    shared.set(State::Closed);
                    return;
                }
                Some(Ok(stream)) => break stream,
                Some(Err(failure)) => {
                    shared.set(State::Disconnected);
                    delay = backoff.next_delay();
                    tracing::warn!(
                        claw = &*shared.name, server = %settings.server, attempt,
                        next_delay = ?delay, reason = %failure,
                        "component reconnection failed"
                    );
                }
            }
        };
        stint = Stint::begin();
        tracing::info!(claw = &*shared.name, server = %settings.server, attempt, "component stream re-established");
        events.connected(&shared.name).await;
    }
    shared.set(State::Closed);
}
