//! The in-memory claw: an in-process broker ([`MemBroker`]) and claws on it ([`MemClaw`]).
//!
//! It needs no broker, keeps TOPOLOGY.md exactly, and is what users test their handlers on:
//!
//! ```
//! use claws_core::{mem::MemBroker, Claw, Events, Event, Packet};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> claws_core::Result<()> {
//! let broker = MemBroker::new();
//! let worker = broker.claw("svc@example.com/w1")?;
//! let (events, mut rx) = Events::channel(16);
//! worker.start(events).await?;
//! let client = broker.claw("client@example.com/c")?;
//! client.send(&claws_core::jid::parse("svc@example.com")?, Some("id-1"), Packet::from("<message/>")).await?;
//! # let mut got = None;
//! while let Some(event) = rx.recv().await {
//!     if let Event::Received(d) = event {
//!         assert_eq!(d.via.queue.as_str(), "group_direct");
//!         assert_eq!(d.via.id.as_deref(), Some("id-1"));
//!         got = Some(d.packet.clone());
//!         d.acker.ack().await?;
//!         break;
//!     }
//! }
//! # assert!(got.is_some());
//! # Ok(()) }
//! ```

mod broker;
mod claw;

pub use broker::MemBroker;
pub use claw::{MemClaw, MemClawBuilder};
