//! # claws-component
//!
//! An XMPP server hands a domain (say `echo.example.com`) to an external **component**
//! ([XEP-0114]); the component gets every stanza addressed to that domain and may send stanzas
//! from it. This crate makes that component a claw, [`ComponentClaw`], and builds on it the
//! deployment claws exists for, the **gateway** ([`gateway`]): one router holding the component
//! claw and a broker claw, so that the server's traffic for the domain flows over AMQP to groups
//! of workers, and their replies flow back through the component to the users.
//!
//! ```text
//!  user ──c2s──► XMPP server ──XEP-0114──► gateway ──AMQP──► worker group (bare JID)
//!  user ◄─────── XMPP server ◄──────────── gateway ◄──AMQP── worker (ctx.reply)
//! ```
//!
//! [XEP-0114]: https://xmpp.org/extensions/xep-0114.html
//!
//! ## Example
//!
//! The gateway in front of RabbitMQ (`claws gateway` does this from a config file), and a worker
//! group answering pings and echoing messages sent to `echo@echo.example.com`:
//!
//! ```no_run
//! use std::sync::Arc;
//! use claws_component::{gateway, ComponentClaw};
//! use claws_core::{mem::MemBroker, Claw, Echo, Router};
//!
//! # #[tokio::main] async fn main() -> claws_core::Result<()> {
//! let broker = MemBroker::new(); // or claws_amqp091::AmqpClaw::builder(url, jid).build()?
//! // The server's side: its component port, the domain it hands us, the shared secret.
//! let component = ComponentClaw::builder("127.0.0.1:5347", "echo.example.com", "secret")
//!     .ping(Some(std::time::Duration::from_secs(30)))
//!     .build()?;
//! // The bus side: the gateway instance's own JID on the bus.
//! let bus: Arc<dyn Claw> = Arc::new(broker.claw("gateway@echo.example.com/gw1")?);
//! let gateway = gateway::start(component, bus).await?;
//!
//! // Workers: a group sharing the bare JID that users write to.
//! let worker = Router::builder().claw(broker.claw("echo@echo.example.com/w1")?).build()?;
//! worker.start(Echo).await?;
//!
//! tokio::signal::ctrl_c().await.ok();
//! gateway.close().await?;
//! worker.close().await
//! # }
//! ```
//!
//! ## The component claw
//!
//! [`ComponentClaw::builder`]`(server, domain, secret)` or [`ComponentClaw::from_config`] (the
//! `[component]` table, see [`config`]). Options:
//!
//! | Option (builder / `[component]` key) | Description | Default |
//! |---|---|---|
//! | `name` | the claw's name in `Via::claw` | `component` |
//! | `trimmed` | drop whitespace-only text nodes from received stanzas | off |
//! | `adjust_attrs` | on sent stanzas, set `to` from the send call, `id` from the call when given, `from` = the component's domain when missing | on |
//! | `ping` | whitespace keepalive after this long without writing (`ping = "0s"`: off) | 60 s |
//! | `max_stanza_bytes` | a larger stanza from the server ends the stream (then reconnect) | 1 MiB |
//!
//! Time-outs are the top-level keys every claw shares ([`Timing`](claws_core::config::Timing);
//! builder setters through [`TimingBuilder`](claws_core::config::TimingBuilder)):
//! `connect_timeout` bounds TCP connect + stream header + handshake (5 s), `send_timeout` how
//! long a send waits for the stream to be up (30 s), `reconnect_min`/`reconnect_max` the
//! jittered waits between reconnection attempts (100 ms to 5 s).
//!
//! What it does, in [`Claw`](claws_core::Claw) terms:
//! - **start** connects, opens the `jabber:component:accept` stream and authenticates (the hex
//!   SHA-1 of the stream id and the secret, [`handshake`]); it fails with a clear
//!   [`Error::Connect`](claws_core::Error::Connect) (a refused handshake says to check the
//!   secret; the secret itself never appears in errors or logs).
//! - **received stanzas** come with `Via { jid: from, from: Some(from), id: stanza id,
//!   queue: Other("component"), exchange: None }`, so `ctx.reply(&via, ..)` answers the user.
//! - **send** writes the stanza to the server. It is first checked to be one well-formed element
//!   (a bad payload cannot break the stream), moved into the stream's namespace
//!   (`jabber:client` becomes the stream default), adjusted (`adjust_attrs`), and refused if its
//!   `from` is outside the domain (servers close the stream for that).
//! - **publish** fails with [`Error::Unsupported`](claws_core::Error::Unsupported): an XMPP
//!   server has no broadcast.
//! - **no acknowledgements**: [`Capabilities`](claws_core::Capabilities) reports only ordering;
//!   ack is a no-op; a rejected stanza is logged and dropped, since the server cannot deliver it
//!   again.
//! - **reconnection**: a lost stream, a stream error or a refused handshake reports
//!   `Disconnected` to the router and reconnects with a doubling, capped, jittered backoff
//!   ([`claws_core::runtime::Backoff`]; never a tight loop, and gateways that lost the same
//!   server do not come back in lockstep); success reports `Connected`. The states are in [`state`]. Sends wait for the stream
//!   up to `send_timeout`, then fail with [`Error::Disconnected`](claws_core::Error::Disconnected).
//!
//! ## The gateway's routing rules
//!
//! [`gateway::Gateway`] routes by the stanza's `to`. "On the bus" means the JID's domain is the
//! component's domain; "the gateway" is the bus claw's own JID, full or bare.
//!
//! | Arrives from | Stanza `to` | Goes | Notes |
//! |---|---|---|---|
//! | XMPP server (component) | a JID of the component's domain | over the bus, direct to that JID | a bare JID load-balances over the worker group; the stanza id travels as correlation id; the gateway's JID is the sender, so a worker's `ctx.reply` comes back to this gateway instance |
//! | XMPP server | the gateway itself | back to the sender as a `service-unavailable` error | |
//! | XMPP server | (bus send fails) | back to the sender as an error: `service-unavailable` when nobody consumes the JID, else `internal-server-error` | errors and results are never answered |
//! | XMPP server | missing, invalid, or outside the domain | dropped, with a warning | |
//! | bus | a JID outside the component's domain (a user) | through the component to the XMPP server | if the server is unreachable past `send_timeout`, the handler fails and the bus redelivers (or dead-letters) it |
//! | bus | another JID of the component's domain | over the bus to that JID | nobody consuming it: dropped with a warning |
//! | bus | the gateway itself, missing, or invalid | dropped, with a warning | |
//!
//! So an `Echo` worker's reply (it calls `ctx.reply(&via, ..)`, which sends to `via.from`, the
//! gateway instance's JID, a stanza whose `to` is the user) reaches this gateway on the bus and,
//! being addressed outside the domain, goes to the XMPP server and the user.
//!
//! [`gateway::run`] runs a gateway until a shutdown future completes: what `claws gateway` calls.
//!
//! ## Latency: configure the XMPP server with Nagle's algorithm off
//!
//! The component claw writes with `TCP_NODELAY`, and so do lapin and RabbitMQ; Prosody does not
//! by default (`net.server_epoll`'s `nagle = true`). With Nagle's algorithm on, Prosody holds
//! every small write while an earlier one waits for the peer's ACK, which the peer delays (up to
//! 40 ms on Linux): a burst of 20 messages through the gateway came back as the first echo after
//! 4 ms and the other 19 together at 47 ms. Turn it off in Prosody's global section:
//!
//! ```lua
//! network_settings = { nagle = false }
//! ```
//!
//! `scripts/bench-gateway` measures round trips through Prosody, `claws gateway`, RabbitMQ and
//! two `claws echo` workers with and without it (docs/BENCHMARKS.md). What remains in a burst
//! is one publisher-confirm round trip per stanza and sender: the router handles one sender's
//! stanzas in order on one lane, and the gateway's handler waits for each bus send to be
//! confirmed (so that a failed one is answered with an error), so the n-th stanza of a burst
//! from one user waits for the n-1 confirms before it.
//!
//! ## Tests
//!
//! `tests/state_machine.rs` drives the claw against a fake XEP-0114 server (refused handshakes,
//! backoff, stream errors, restarts, keepalives, limits); `tests/gateway_mem.rs` checks the
//! routing table on the mem claw; `tests/gateway_e2e.rs` runs Prosody (configured by the test in
//! a temporary directory, loopback ports only), a slixmpp client, the gateway and `Echo` workers
//! behind RabbitMQ, and restarts Prosody and drops the RabbitMQ connection under it.
//! `scripts/provision` installs Prosody and `python3-slixmpp`.

pub mod claw;
pub mod config;
pub mod gateway;
pub mod handshake;
mod outbound;
mod session;
pub mod state;
pub mod stream;
mod supervisor;

pub use claw::{ComponentClaw, ComponentClawBuilder};
pub use config::Secret;
pub use gateway::Gateway;
pub use state::State;
