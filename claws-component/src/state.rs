//! The connection state machine, as snatch's component claw had it:
//!
//! ```text
//!  Disconnected ──► Connected ──► StreamInit ──► Authenticate ──► Ready
//!       ▲  (TCP up)     (header sent)   (handshake sent)    │ stream error,
//!       │                                                    │ EOF, I/O error
//!       └──────── Retrying { attempt, delay } ◄── Disconnected ◄┘
//! ```
//!
//! Any failure before `Ready` (refused connection, timeout, stream error, a refused handshake)
//! leads to `Disconnected`, then `Retrying` with a delay that doubles from the initial backoff up
//! to the cap: never a tight loop. Reaching `Ready` reports `Connected` to the router; losing it
//! reports `Disconnected`. [`State::Closed`] is final.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use claws_core::Events;
use tokio::sync::{mpsc, watch};
use tokio::time::sleep;

use crate::config::Settings;
use crate::session::{establish, serve, Command, Outcome, Stream};

/// Where a component claw's connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum State {
    /// No connection (before the first attempt, or after one was lost or failed).
    Disconnected,
    /// Waiting `delay` before reconnection attempt `attempt` (1 for the first after a loss).
    Retrying {
        /// Which attempt comes next since the connection was lost.
        attempt: u32,
        /// How long the claw waits before it.
        delay: Duration,
    },
    /// TCP is connected; the stream header is about to be sent.
    Connected,
    /// The stream header is sent; waiting for the server's (with the stream id).
    StreamInit,
    /// The handshake is sent; waiting for the server's `<handshake/>`.
    Authenticate,
    /// Stanzas flow both ways.
    Ready,
    /// The claw was closed.
    Closed,
}

impl State {
    /// A short name: `disconnected`, `retrying`, `connected`, `stream_init`, `authenticate`,
    /// `ready`, `closed`.
    pub fn as_str(&self) -> &'static str {
        match self {
            State::Disconnected => "disconnected",
            State::Retrying { .. } => "retrying",
            State::Connected => "connected",
            State::StreamInit => "stream_init",
            State::Authenticate => "authenticate",
            State::Ready => "ready",
            State::Closed => "closed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Retrying { attempt, delay } => {
                write!(f, "retrying (attempt {attempt} in {delay:?})")
            }
            other => f.write_str(other.as_str()),
        }
    }
}
/// What the claw's tasks share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) settings: Settings,
    pub(crate) name: Arc<str>,
    pub(crate) state: watch::Sender<State>,
}

impl Shared {
    pub(crate) fn set(&self, state: State) {
        tracing::debug!(claw = &*self.name, state = %state, "component state");
        self.state.send_replace(state);
    }
}
/// Completes once `stop` is set (the returned guard is not held across awaits).
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Runs the claw after its first connection: serves the stream until it is lost, reports
/// Disconnected, reconnects with backoff, reports Connected, ... until `stop`.
pub(crate) async fn supervise(
    shared: Arc<Shared>,
    mut stream: Stream,
    mut cmds: mpsc::Receiver<Command>,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    let settings = &shared.settings;
    loop {
        shared.set(State::Ready);
        let failure = match serve(&shared, &mut stream, &mut cmds, &events, &mut stop).await {
            Outcome::Stopped => break,
            Outcome::Lost(failure) => failure,
        };
        drop(stream);
        shared.set(State::Disconnected);
        tracing::warn!(claw = &*shared.name, server = %settings.server, reason = %failure, "component stream lost; reconnecting");
        events.disconnected(&shared.name, failure.to_string()).await;

        let mut attempt = 0u32;
        stream = loop {
            attempt = attempt.saturating_add(1);
            let delay = settings.backoff(attempt);
            shared.set(State::Retrying { attempt, delay });
            let attempt_result = tokio::select! {
                biased;
                _ = stopped(&mut stop) => None,
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
                    tracing::warn!(
                        claw = &*shared.name, server = %settings.server, attempt,
                        next_delay = ?settings.backoff(attempt + 1), reason = %failure,
                        "component reconnection failed"
                    );
                }
            }
        };
        tracing::info!(claw = &*shared.name, server = %settings.server, attempt, "component stream re-established");
        events.connected(&shared.name).await;
    }
    shared.set(State::Closed);
}
