//! loopbus: a custom claw, end to end, in a few hundred lines: a tiny broker on loopback TCP
//! ([`LoopBroker`]) and a claw for it ([`LoopClaw`]) that passes the claws conformance suite,
//! the fault-proxy cut included.
//!
//! - `wire`: the frames (length-prefixed binary);
//! - `broker`: exchanges, queues, competing consumers, prefetch, requeue, dead-letters;
//! - `claw`: the [`Claw`](claws_core::Claw) implementation: connect, declare, consume, confirmed
//!   sends, acks after the handler, recovery.
//!
//! ```
//! use claws_core::{Claw, Event, Events, Packet};
//! use claws_examples::loopbus::{LoopBroker, LoopClaw};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let broker = LoopBroker::start().await?;
//! let worker = LoopClaw::builder(broker.addr(), "svc@example.com/w1")?.build()?;
//! let (events, mut rx) = Events::channel(16);
//! worker.start(events).await?;
//! let client = LoopClaw::builder(broker.addr(), "client@example.com/c")?.build()?;
//! client.start(Events::channel(16).0).await?;
//! client.send(&claws_core::jid::parse("svc@example.com")?, None, Packet::from("<message/>")).await?;
//! loop {
//!     if let Some(Event::Received(d)) = rx.recv().await {
//!         assert_eq!(d.via.queue.as_str(), "group_direct");
//!         d.acker.ack().await?;
//!         break;
//!     }
//! }
//! worker.close().await?;
//! client.close().await?;
//! # Ok(()) }
//! ```

mod broker;
mod claw;
mod wire;

pub use broker::LoopBroker;
pub use claw::{LoopClaw, LoopClawBuilder};
