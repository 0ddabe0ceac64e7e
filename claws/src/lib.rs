//! # claws
//!
//! claws carries XMPP stanzas between service instances over a message broker. Each instance has
//! a JID; a stanza sent to a full JID (`svc@example.com/w1`) reaches that instance, one sent to a
//! bare JID (`svc@example.com`) reaches exactly one instance of the group sharing it (load
//! balancing), and a broadcast reaches every instance and every group. Every packet arrives with a
//! [`Via`] saying how it came (routing key, exchange, claw, correlation id, which queue), so that a
//! reply goes back the same way.
//!
//! This crate is the one to depend on: it re-exports [`claws_core`] (the [`Router`], the
//! [`Handler`] trait, the in-memory [`mem`] claw, ...) and the broker backends behind Cargo
//! features, and [`connect`] builds the claw a [`Config`] names. It also ships the `claws`
//! command-line tool (`claws demo`, `listen`, `send`, `publish`, `echo`, `bench`, `test`,
//! `topology`; run `claws --help`).
//!
//! ## The words
//!
//! - A [`Claw`] is a transport: the in-memory claw ([`mem`], always there), RabbitMQ over
//!   AMQP 0-9-1 (feature `amqp091`), AMQP 1.0 (feature `amqp10`).
//! - A [`Handler`] is what you write: `received(packet, via, ctx)`, answering through the
//!   [`Context`].
//! - A [`Router`] holds claws, hands each packet to the handler, acknowledges it once the handler
//!   returned `Ok` (an error means redelivery), and sends replies back through the claw a packet
//!   came from.
//!
//! ## Example
//!
//! A bot that answers every message, on the in-memory broker (no broker to install):
//!
//! ```
//! use claws::{async_trait, Config, Context, Handler, HandlerResult, Packet, Router, Via};
//!
//! struct Hello;
//!
//! #[async_trait]
//! impl Handler for Hello {
//!     async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
//!         println!("got {} via {}", packet.as_str().unwrap_or("?"), via.queue);
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> claws::Result<()> {
//! // transport = "mem" is the default; "amqp091" with a `url` talks to RabbitMQ instead.
//! let config = Config { jid: "bot@example.com/r1".into(), ..Config::default() };
//! let router = Router::builder().claw_arc(claws::connect(&config)?).build()?;
//! router.start(Hello).await?;
//! router.send(&claws::jid::parse("bot@example.com")?, None, Packet::from("<message/>")).await?;
//! router.close().await
//! # }
//! ```
//!
//! In a real service the config comes from `claws.toml` and `CLAWS_*` variables:
//! [`Config::load`]`(Some("claws.toml".as_ref()))`.
//!
//! ## The `claws` tool
//!
//! The command-line tool lives in its own crate, `claws-cli` (so this library pulls no clap):
//! `cargo install --path claws-cli`, or `cargo run -p claws-cli -- demo` in the workspace.
//!
//! ## The mem transport in `connect`
//!
//! [`connect`] builds `mem` claws on one process-wide [`MemBroker`](mem::MemBroker), [`default_broker`], so that
//! every mem claw a process builds from configs can reach every other. Processes do not share it:
//! across processes, use a real broker. To keep claws apart (in tests), build them on your own
//! broker with [`connect_mem`].
//!
//! ## Features
//!
//! | Name      | Description                                                              | Default |
//! |-----------|--------------------------------------------------------------------------|---------|
//! | `amqp091` | RabbitMQ over AMQP 0-9-1 (`claws-amqp091`, on lapin): `transport = "amqp091"` | yes |
//! | `amqp091-tls` | `amqps://` for `amqp091` (rustls with *ring*; `[amqp091]` keys `tls_ca_file`, `tls_cert_file`, `tls_key_file`) | no |
//! | `amqp10`  | AMQP 1.0 brokers (`claws-amqp10`, on fe2o3-amqp): `transport = "amqp10"` | no      |
//! | `component` | The XEP-0114 component claw and the XMPP gateway (`claws-component`; `claws gateway`) | yes |
//!
//! The mem claw needs no feature. Asking [`connect`] for a transport whose feature is off is an
//! [`Error::Config`] naming the feature to enable.

pub use claws_core::*;

/// The core crate, for paths like `claws::core::topology`.
pub use claws_core as core;

#[cfg(feature = "amqp091")]
pub use claws_amqp091 as amqp091;

#[cfg(feature = "amqp10")]
pub use claws_amqp10 as amqp10;

#[cfg(feature = "component")]
pub use claws_component as component;

mod connect;

pub use connect::{connect, connect_mem, default_broker};
