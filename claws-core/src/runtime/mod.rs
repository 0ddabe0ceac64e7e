//! The machinery every claw shares, written and tested once: what a backend needs around its
//! protocol calls to start, recover and close correctly.
//!
//! | piece | what it does | used for |
//! |---|---|---|
//! | [`Lifecycle`] | New → Starting → Running → Closed, with typed errors | `start` twice, `send` before `start`, use after `close` |
//! | [`Current`] | the connection that serves sends now, and [`Current::wait_live`] | sends during an outage wait (bounded), then fail with [`Error::Disconnected`](crate::Error::Disconnected) |
//! | [`Fuse`] | trips once, with the first reason; everyone waiting wakes | a connection generation that died |
//! | [`InFlight`] | counts unsettled deliveries and unconfirmed sends | `close` waits for them |
//! | [`Backoff`], [`Endpoints`], [`Reconnect`], [`Stint`] | jittered exponential backoff per round over a list of endpoints, reset only by a connection that held | reconnecting without a tight loop or a stampede, also when each connection dies at once |
//! | [`CancellationToken`] | one stop signal for every task of a claw | `close` |
//! | [`redact_url`], [`scrub`] | URLs and messages without passwords | every log line and error |
//!
//! A backend keeps only what is its own: the protocol calls (connect, declare, consume,
//! publish, settle).

mod backoff;
mod current;
mod fuse;
mod in_flight;
mod lifecycle;
mod redact;

pub use backoff::{Backoff, Endpoints, Reconnect, Stint, STABLE};
pub use current::{Alive, Current};
pub use fuse::Fuse;
pub use in_flight::{drain, InFlight, InFlightGuard};
pub use lifecycle::Lifecycle;
pub use redact::{redact_url, scrub};
pub use tokio_util::sync::CancellationToken;
