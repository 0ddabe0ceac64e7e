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
//! leads to `Disconnected`, then `Retrying` with a delay drawn by
//! [`Backoff`](claws_core::runtime::Backoff): jittered within `[d/2, d]`, where `d` doubles from
//! the initial backoff up to the cap, so never a tight loop, and a fleet of gateways that lost the
//! same server does not come back in lockstep. Reaching `Ready` reports `Connected` to the
//! router; losing it reports `Disconnected`. [`State::Closed`] is final.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Settings;

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
        /// How long the claw waits before it (drawn with jitter; see the [module docs](self)).
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
