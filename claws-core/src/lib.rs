//! # claws-core
//!
//! The vocabulary every claws backend shares. claws carries XMPP stanzas between service
//! instances over a message broker: each instance has a JID; a stanza sent to a full JID reaches
//! that instance, one sent to a bare JID reaches exactly one instance of the group sharing it, and
//! a broadcast reaches every instance.
//!
//! - [`Claw`]: a transport (the in-memory [`mem`] claw here; RabbitMQ in `claws-amqp091`,
//!   AMQP 1.0 in `claws-amqp10`).
//! - [`Handler`]: what an application writes; [`Context`] lets it answer.
//! - [`Router`]: holds claws, hands each packet and its [`Via`] to the handler, acks after the
//!   handler finished and the broker confirmed its sends (pipelined: the next packet is handled
//!   meanwhile, see [`Claw::send_ordered`]), and sends replies back the way packets came.
//! - [`Packet`] and [`stanza::Element`]: payloads as they travelled, parsed only when asked.
//! - [`jid`], [`topology`] (the wire contract's names and the RabbitMQ plan), [`config`], [`Error`].
//! - [`metrics`]: what claws records through the `metrics` facade (nothing unless the
//!   application installs a recorder).
//! - [`runtime`]: what every claw needs around its protocol calls (run state, reconnect with
//!   backoff over endpoints, in-flight tracking, waiting for a live connection).
//!
//! ## Example
//!
//! A worker group of two instances sharing `svc@example.com`, on the in-memory broker:
//!
//! ```
//! use claws_core::{async_trait, jid, mem::MemBroker, Context, Handler, HandlerResult, Packet, Router, Via};
//! use tokio::sync::mpsc;
//!
//! struct Worker(mpsc::UnboundedSender<String>);
//!
//! #[async_trait]
//! impl Handler for Worker {
//!     async fn received(&self, packet: Packet, via: Via, _ctx: &Context) -> HandlerResult {
//!         self.0.send(format!("{} got {} via {}", via.claw, packet.as_str().unwrap_or("?"), via.queue))?;
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> claws_core::Result<()> {
//! let broker = MemBroker::new();
//! let (tx, mut rx) = mpsc::unbounded_channel();
//! let mut workers = Vec::new();
//! for name in ["w1", "w2"] {
//!     let claw = broker.claw_builder(&format!("svc@example.com/{name}"))?.name(name).build()?;
//!     let router = Router::builder().claw(claw).build()?;
//!     router.start(Worker(tx.clone())).await?;
//!     workers.push(router);
//! }
//! let client = broker.claw("client@example.com/c")?;
//! use claws_core::Claw;
//! client.send(&jid::parse("svc@example.com")?, None, Packet::from("<message/>")).await?;
//! let line = rx.recv().await.unwrap();
//! assert!(line.ends_with("via group_direct"));
//! for w in workers { w.close().await?; }
//! # Ok(()) }
//! ```

pub mod claw;
pub mod config;
pub mod echo;
mod error;
pub mod handler;
pub mod jid;
pub mod mem;
pub mod metrics;
mod packet;
pub mod router;
pub mod runtime;
pub mod stanza;
pub mod topology;
pub mod trace;
mod via;

pub use async_trait::async_trait;
pub use claw::{Acker, Capabilities, Claw, Confirmation, Delivery, Event, Events};
pub use config::{Config, Timing, TimingBuilder, Transport};
pub use echo::Echo;
pub use error::{BoxError, Error, Result};
pub use handler::{handler_fn, Context, Handler, HandlerFn, HandlerResult};
pub use jid::{BareJid, FullJid, Jid};
pub use packet::Packet;
pub use router::{Router, RouterBuilder};
pub use stanza::Element;
pub use topology::{QueueKind, TopologyBuilder};
pub use via::Via;
