//! # claws-amqp091
//!
//! The RabbitMQ claw: a [`claws_core::Claw`] on AMQP 0-9-1 (lapin), keeping the topology of
//! TOPOLOGY.md (the seed's README) with the guarantees the seed lacked: acks after the handler,
//! bounded redelivery and dead-lettering, publisher confirms, unroutable sends reported, and
//! recovery after a lost connection.
//!
//! ## Example
//!
//! ```no_run
//! use claws_amqp091::AmqpClaw;
//! use claws_core::{handler_fn, jid, Packet, Router};
//!
//! # #[tokio::main] async fn main() -> claws_core::Result<()> {
//! let claw = AmqpClaw::builder("amqp://guest:guest@127.0.0.1:5672/%2f", "news.example.com/worker-1")
//!     .name("rabbit")
//!     .prefetch(64)
//!     .build()?;
//! let router = Router::builder().claw(claw).build()?;
//! router
//!     .start(handler_fn(|packet, via, ctx| async move {
//!         // Answer whoever sent it, through the claw it came from, with the same id.
//!         ctx.reply(&via, packet).await?;
//!         Ok(())
//!     }))
//!     .await?;
//! router.send(&jid::parse("news.example.com")?, Some("id-1"), Packet::from("<message/>")).await?;
//! router.close().await
//! # }
//! ```
//!
//! From a config file, [`AmqpClaw::from_config`] reads the common keys and the `[amqp091]`
//! table ([`Amqp091Options`]).
//!
//! ## Wire decisions
//!
//! | what | on the wire |
//! |------|-------------|
//! | exchanges | `xmpp_direct` (direct), `xmpp_fanout` (fanout), `xmpp_dead_letter` (fanout); always durable |
//! | queues | `xmpp_direct:F`, `xmpp_direct:B`, `xmpp_fanout:F`, `xmpp_fanout:B` (names from [`claws_core::topology`]), bound with key `F`/`B`; only the subscribed ones are declared |
//! | durability | durable queues, persistent messages (`delivery_mode = 2`) by default; `durable(false)` gives transient queues and messages |
//! | per-instance queues | `x-expires` = the idle time (default 30 min), so instances gone for good leave nothing |
//! | group queues | classic, or quorum with `quorum_groups(true)` |
//! | every queue | `x-dead-letter-exchange = xmpp_dead_letter`; queue `xmpp_dead_letter` is bound to it |
//! | send | `xmpp_direct`, routing key = destination JID, `correlation_id` = id, `mandatory = true`: a send no queue takes is returned and fails with [`Error::NoRoute`](claws_core::Error::NoRoute) |
//! | publish | `xmpp_fanout`, routing key = the sender's JID |
//! | sender | the sender's full JID in `reply_to`; it becomes [`Via::from`](claws_core::Via::from) |
//! | confirms | publisher confirms on; a send returns after the broker's ack; a nack is [`Error::Refused`](claws_core::Error::Refused) |
//! | Via | `jid` = routing key, `exchange` = exchange, `claw` = claw name, `id` = `correlation_id`, `queue` = which of the four |
//! | ack | after the handler returned `Ok`, on the channel that delivered it; coalesced per channel into one `basic.ack(multiple = true)` over the contiguous run of finished deliveries (sent at a quarter of the prefetch, after 2 ms, or at once on close), so `Acker::ack` returns once the ack is queued |
//! | failed handler | attempts left: a copy goes straight back to the same queue (default exchange) with headers `x-claws-deliveries` = attempts so far, `x-claws-exchange` and `x-claws-routing-key` (so that `Via` stays the original), and once the copy is confirmed the original is acked; last attempt (`max_deliveries`, default 5): `basic.reject(requeue = false)`, dead-lettered by RabbitMQ |
//! | dropped acker | `basic.nack(requeue = true)` |
//! | connection name | `claws-amqp091 <claw name> <JID>` (visible in `rabbitmqctl list_connections`) |
//!
//! Why a copy rather than `basic.nack(requeue)`: classic queues do not count deliveries, so a
//! requeued stanza would come back forever and at once; the copy carries its count and goes to
//! the back of the queue. A handler's failure costs one publish and one confirm.
//!
//! ## Recovery
//!
//! The claw owns its state machine rather than using lapin's `enable_auto_recover()` (lapin
//! #450, and acks on the old channel, in its tracker): when the connection, a channel or a
//! consumer fails, the claw reports `Disconnected`, closes what is left, and reconnects with
//! capped exponential backoff (`reconnect_min` doubling to `reconnect_max`, jittered), declaring the
//! topology again and consuming again before reporting `Connected`. Sends made meanwhile wait up
//! to `send_timeout`, then fail with [`Error::Disconnected`](claws_core::Error::Disconnected); a
//! send whose confirm was lost with the connection is published again (at least once).
//! Deliveries of a dead connection are never acked on the new one: the broker has requeued them.
//! An unreachable broker at [`start`](claws_core::Claw::start) is an
//! [`Error::Connect`](claws_core::Error::Connect) after at most `connect_timeout`; URLs in errors and
//! logs never show the password.
//!
//! ## Flow
//!
//! `prefetch` is per consumer (basic.qos, non-global): each consumed queue may have that many
//! unsettled deliveries. Handler concurrency is the router's. Order per queue is kept while one
//! handler call is in flight; a failed stanza goes to the back of its queue.
//!
//! ## Close
//!
//! [`close`](claws_core::Claw::close) cancels the consumers (undispatched deliveries return to
//! their queues), waits up to `close_timeout` for in-flight deliveries to be settled and for
//! outstanding confirms, then closes the channels and the connection.
//!
//! ## Hostile publishers
//!
//! Anyone with publish rights can send any headers. lapin parses AMQP field tables recursively
//! on its I/O thread, and a message whose headers nest 1,000 deep aborts a process whose threads
//! have the default 2 MiB stack. Call [`protect_parser_stack`] first thing in `main` (or set
//! `RUST_MIN_STACK=268435456`): the deepest table a 128 KiB frame holds then parses, and the claw
//! dead-letters any message whose headers nest deeper than 64 levels without handing it to the
//! handler. The claw warns at its first connection when neither was done.
//!
//! A property lapin cannot decode (a `correlation_id`, `reply_to` or header key that is not
//! UTF-8) fails the whole connection before the claw sees the delivery, and the broker gives
//! the message back first to the next connection. The claw notes that parse error and, before
//! consuming again, sweeps its queues with a minimal client of its own that reads properties
//! as raw bytes: such a message is dead-lettered after one delivery and the queue goes on
//! (plain `amqp://` only; on `amqps://` an error log names the queue's fix: quorum queues,
//! whose `x-delivery-limit` drops it).
//!
//! Every publish carries `user_id` = the URL's user (not with `auth_mechanism=external`), which
//! RabbitMQ verifies; a delivery's [`Via::user`](claws_core::Via::user) is its publisher's.
//! See docs/SECURITY.md for the trust model.
//!
//! ## Features
//!
//! | Name | Description | Default |
//! |------|-------------|---------|
//! | (none) | plain `amqp://` over TCP; no TLS stack is built | |
//! | `tls` | `amqps://` through rustls (*ring*), trusting the system's roots plus [`tls_ca_file`](AmqpClawBuilder::tls_ca_file); client certificates with [`tls_client_cert`](AmqpClawBuilder::tls_client_cert) | no |

mod builder;
mod claw;
pub mod config;
mod connection;
mod consumer;
mod hostile;
mod publisher;
mod session;
mod settle;
mod subscription;
mod tls;
pub mod topology;

pub use builder::AmqpClawBuilder;
pub use claw::AmqpClaw;
pub use config::{Amqp091Options, UserId, DEFAULT_URL};
pub use hostile::protect_parser_stack;
