//! # claws-amqp10
//!
//! The AMQP 1.0 claw for claws, on [fe2o3-amqp](https://docs.rs/fe2o3-amqp). It keeps the wire
//! contract of TOPOLOGY.md (four subscriptions, direct sends and broadcasts) expressed in each
//! broker's addressing, chosen with an [`AddressScheme`], and the guarantees every claws backend
//! gives: a delivery is accepted only after the handler returned `Ok`, a send returns once the
//! broker accepted it, and a lost connection is recovered without losing stanzas.
//!
//! ## Example
//!
//! ```no_run
//! use claws_amqp10::{AddressScheme, Amqp10Claw};
//! use claws_core::{handler_fn, Packet, Router};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> claws_core::Result<()> {
//! let claw = Amqp10Claw::builder("amqp://guest:guest@127.0.0.1:5672", "svc@example.com/w1", AddressScheme::RabbitMq)
//!     .prefetch(64)
//!     .max_deliveries(5)
//!     .build()?;
//! let router = Router::builder().claw(claw).build()?;
//! router
//!     .start(handler_fn(|packet, via, ctx| async move {
//!         // Answer the sender the way the stanza came.
//!         ctx.reply(&via, packet).await?;
//!         Ok(())
//!     }))
//!     .await?;
//! router.send(&claws_core::jid::parse("other@example.com")?, Some("id-1"), Packet::from("<message/>")).await?;
//! router.close().await?;
//! # Ok(()) }
//! ```
//!
//! Or from a config file (`transport = "amqp10"`, with an optional `[amqp10]` table read into
//! [`Amqp10Options`]): [`Amqp10Claw::from_config`].
//!
//! ## A RabbitMQ cluster: several URLs
//!
//! Give every node: `url` may hold several URLs separated by commas, or set them with
//! [`urls`](Amqp10ClawBuilder::urls) (in a config, `url = "amqp://a,amqp://b"` or
//! `urls = [...]`). `start` and every reconnection walk them from a shuffled start (so that a
//! fleet does not stampede the first node), each attempt bounded by `connect_timeout`, with
//! the jittered backoff (`reconnect_min` doubling to `reconnect_max`) between full rounds, not
//! between URLs: a dead node costs one refused (or timed-out) attempt, not a pause. `start`
//! fails once every URL failed in one round, with the last error. The declaring 0-9-1
//! connection goes to the node being tried, and `Connected` names it (without password). A
//! bad URL among several fails `build` with an [`Error::Config`](claws_core::Error::Config)
//! naming it. One URL behaves as before.
//!
//! ```no_run
//! # use claws_amqp10::{AddressScheme, Amqp10Claw};
//! use claws_core::TopologyBuilder; // durable, quorum_groups, ...
//! # fn main() -> claws_core::Result<()> {
//! let claw = Amqp10Claw::builder("amqp://guest:guest@node1:5672", "svc@example.com/w1", AddressScheme::RabbitMq)
//!     .urls(["amqp://guest:guest@node1:5672", "amqp://guest:guest@node2:5672", "amqp://guest:guest@node3:5672"])
//!     .quorum_groups(true)
//!     .build()?;
//! # let _ = claw; Ok(()) }
//! ```
//!
//! A classic queue lives on one node and cannot be used while that node is down (RabbitMQ
//! 3.10 refuses to declare it and to attach to it: "home node ... is down or inaccessible").
//! The group queues (bare JID, shared by the instances) and `xmpp_dead_letter` should
//! therefore be quorum queues on a cluster: [`quorum_groups`](claws_core::TopologyBuilder::quorum_groups)
//! (and [`quorum_instances`](claws_core::TopologyBuilder::quorum_instances) for the instance's own
//! queues, at the price of a Raft group each; `quorum_size`, `delivery_limit` and
//! `leader_locator` set their arguments; the names are those of the 0-9-1 claw's options).
//! Queues that exist already are adopted as they are. When a queue cannot be consumed because
//! its node is down, the claw does not give up the connection: it consumes its other queues,
//! reports [`ConsumerLost`](claws_core::Event::ConsumerLost), attaches that queue again with
//! backoff, and reports [`ConsumerRestored`](claws_core::Event::ConsumerRestored) once the node
//! is back. Stanzas to a bare JID (quorum group queue) keep flowing meanwhile; stanzas to the
//! full JID of an instance whose classic queue is on the dead node wait in it until the node
//! returns.
//!
//! What RabbitMQ 3.10's AMQP 1.0 plugin does on a cluster, and how the claw copes:
//!
//! - When the node holding a *classic* queue the claw consumes dies, the plugin closes the
//!   claw's whole AMQP 1.0 connection, even when the claw is connected to another node: the
//!   claw reconnects, and that queue is reported as `ConsumerLost` as above. A quorum queue
//!   whose leader dies keeps its consumers: deliveries resume on the same connection once a
//!   new leader is elected (about 0.3 s on the local cluster).
//! - A refused attach (a queue whose node is down, a missing queue) ends the AMQP session it
//!   was tried on, so each receiving link has a session of its own (sessions are cheap: one
//!   0-9-1 channel each inside the plugin); sends use another one.
//! - Measured on a local 3-node 3.10 cluster (`tests/cluster.rs`): after `kill -9` of the node
//!   the claw was connected to, it consumed again through another node 0.2 to 0.6 s after the
//!   kill, with no stanza lost among 1 000 sent to its bare JID meanwhile (0 or 1 delivered
//!   twice).
//!
//! ## Address scheme `rabbitmq`: RabbitMQ 3.x (`rabbitmq_amqp1_0`) and 4.x (native AMQP 1.0)
//!
//! The exchanges and queues are exactly those of the 0-9-1 claw (names from
//! [`claws_core::topology`]), so AMQP 0-9-1 and AMQP 1.0 instances on one broker exchange stanzas
//! both ways. RabbitMQ spells addresses two ways: *v1* (3.x; refused by 4.3, and by 4.x with
//! `deprecated_features.permit.amqp_address_v1 = false`) and *v2* (4.0 and later). Which one
//! the claw uses is [`Addresses`] (`[amqp10] addresses`, or
//! [`addresses`](Amqp10ClawBuilder::addresses)): `auto` (the default) reads the broker's
//! `version` from the properties of its AMQP `open` frame at every connection, and uses v2 from
//! 4 on, v1 before (or when the broker does not say); `v1` and `v2` fix it.
//!
//! ### v2 addresses (RabbitMQ 4.x)
//!
//! `F` is the instance's full JID, `B` its bare JID, `J` a destination; each path segment is
//! percent-encoded except RFC 3986's unreserved characters, `:` and `@` (so `a@b/c` is
//! `a@b%2Fc`).
//!
//! | what | address | message | why |
//! |------|---------|---------|-----|
//! | subscription `direct` | source `/queues/xmpp_direct:F` | | consumes the existing queue (never declares) |
//! | subscription `group_direct` | source `/queues/xmpp_direct:B` | | competing consumers across the group |
//! | subscription `fanout` | source `/queues/xmpp_fanout:F` | | this instance's copy of each broadcast |
//! | subscription `group_fanout` | source `/queues/xmpp_fanout:B` | | the group's copy |
//! | direct send to `J` | the anonymous link (null target) | `to = /exchanges/xmpp_direct/J`, `subject = J` | v2 routes on the address, not on `subject` |
//! | broadcast | the anonymous link | `to = /exchanges/xmpp_fanout/F`, `subject = F` | the routing key of a broadcast is the sender's JID |
//! | sender | | `reply-to = F` | RabbitMQ 4 copies `reply-to` unchanged between 1.0 and 0-9-1, so the plain JID reads back on both |
//!
//! **One anonymous link, not a link per destination.** Every send of a generation goes through
//! one sending link whose messages name their destination in `to`: one attach per connection
//! instead of one per JID (an attach is a round trip, and per-destination links need a cache,
//! like the queue scheme's, bounded at 256 links per connection, that a service talking to many
//! JIDs churns; v1 needs neither, since 3.x routes on `subject`). The
//! conformance run on RabbitMQ 4.0.5 took 16.5 s against 18.3 s for v1 on 3.10 (the same cases,
//! `unroutable_send` included on 4.x only).
//!
//! **Outcomes on 4.x.** RabbitMQ 4 *releases* a message no queue takes: a direct send then fails
//! with [`Error::NoRoute`](claws_core::Error::NoRoute), at once; a broadcast no queue is bound
//! for succeeds (nobody to hear it, as with the 0-9-1 claw). So
//! [`Capabilities::unroutable_errors`](claws_core::Capabilities) is true on 4.x; with `auto` it
//! is known once the claw has connected (before `start` it reports false, promising nothing
//! it has not seen), with `addresses = "v2"` from the start.
//!
//! **Receiving on 4.x.** `Via::jid` is the `subject`, else the `x-routing-key` message
//! annotation (how RabbitMQ 4 hands a 0-9-1 publisher's routing key to a 1.0 consumer), else
//! the queue's own JID. `reply-to` is read back from `J`, `/queues/J` (percent-decoded),
//! `/queue/J` or `/exchange(s)/xmpp_direct/J`; one that is none of these is no sender
//! (`Via::from` is `None`, and a reply fails with `NoSender`), never the receiver's own JID.
//!
//! **Refused attaches.** An attach the broker refuses with `amqp:invalid-field` (v1 addresses on
//! RabbitMQ 4.3: `amqp_address_v1_not_permitted`), `amqp:not-found` (a missing queue with
//! `declare(false)`) or `amqp:unauthorized-access` is an
//! [`Error::Config`](claws_core::Error::Config) naming the address, with a hint: `start` fails
//! with it after one round over the URLs (not a reconnection loop), and a send whose sending
//! link is refused fails with it at once instead of being retried until `send_timeout`.
//!
//! ### v1 addresses (RabbitMQ 3.x)
//!
//! A `/` inside a queue name is written `%2F` in an address.
//!
//! | what | address | message | why |
//! |------|---------|---------|-----|
//! | subscription `direct` | source `/amq/queue/xmpp_direct:F` | | consumes the existing queue; `/queue/Q` would re-declare it and fail on any argument mismatch |
//! | subscription `group_direct` | source `/amq/queue/xmpp_direct:B` | | competing consumers across the group |
//! | subscription `fanout` | source `/amq/queue/xmpp_fanout:F` | | this instance's copy of each broadcast |
//! | subscription `group_fanout` | source `/amq/queue/xmpp_fanout:B` | | the group's copy |
//! | direct send to `J` | target `/exchange/xmpp_direct` | `subject = J` | RabbitMQ routes by `subject` when the target names no routing key: one link for every destination, and receivers learn `J` from the subject |
//! | broadcast | target `/exchange/xmpp_fanout` | `subject = F` | the routing key of a broadcast is the sender's JID (TOPOLOGY.md) |
//!
//! Every message carries its payload as one `data` section (an `amqp-value` body would reach
//! 0-9-1 peers AMQP-encoded), `correlation-id` = the stanza id as a string, `reply-to =
//! /queue/F` on v1 (RabbitMQ 3.x maps a 0-9-1 `reply_to` of `F` to the 1.0 `reply-to` `/queue/F` and
//! back, so [`Via::from`](claws_core::Via::from) is the sender on both sides), a `message-id`,
//! and `durable` set unless [`durable(false)`](claws_core::TopologyBuilder::durable). On receipt `Via::jid`
//! is the `subject` (RabbitMQ sets it to the routing key for 0-9-1 publishers), `Via::exchange`
//! the exchange the queue is bound to, `Via::id` the `correlation-id`.
//!
//! **Declaring.** RabbitMQ 3.10's AMQP 1.0 plugin cannot bind a named queue to an exchange, so
//! at every connect (and reconnect) the claw opens a short AMQP 0-9-1 connection (lapin, same
//! node as the AMQP 1.0 connection being set up, same credentials and vhost), declares the three exchanges and the dead-letter queue, makes
//! sure each subscribed queue exists, binds it, and closes. A queue that already exists is
//! adopted as it is, so a 0-9-1 instance's choices (quorum group queues, another expiry) never
//! clash; a missing queue is declared like the 0-9-1 claw does by default (durable,
//! `x-dead-letter-exchange = xmpp_dead_letter`, `x-expires` 30 min on per-instance queues).
//! The trade-off: the broker's 0-9-1 listener must be reachable with the same credentials, and
//! a connect costs one more short connection. With [`declare(false)`](Amqp10ClawBuilder::declare)
//! the claw speaks only AMQP 1.0 and the queues and bindings must exist beforehand (attaching to
//! a missing queue fails with an error naming it: a configuration error on 4.x and 3.x alike).
//! RabbitMQ 4 declares over 0-9-1 the same way (durable queues, the default, are what 4.3
//! allows; `durable(false)` is refused there: transient non-exclusive queues are denied).
//!
//! **Outcomes on 3.x.** RabbitMQ 3.x's plugin accepts a transfer that no queue takes, so an
//! unroutable send is not an error there ([`Capabilities::unroutable_errors`](claws_core::Capabilities)
//! is false).
//!
//! ## Address scheme `queue`: a plain AMQP 1.0 queue broker
//!
//! For brokers where an address is just a queue (Artemis, Service Bus, Qpid; tested against the
//! Qpid Proton C example broker). The queue names are TOPOLOGY.md's direct queues.
//!
//! | what | address | why |
//! |------|---------|-----|
//! | subscription `direct` | source `xmpp_direct:F` | one queue per full JID |
//! | subscription `group_direct` | source `xmpp_direct:B` | one queue per bare JID; instances compete on it |
//! | subscriptions `fanout`, `group_fanout` | none | a queue broker has no fanout |
//! | direct send to `J` | target `xmpp_direct:J` | the destination's queue, full or bare |
//! | broadcast | none: [`Error::Refused`](claws_core::Error::Refused) | no fanout |
//! | dead letters | target `xmpp_dead_letter` | a queue, since the broker has no dead-lettering |
//!
//! `reply-to` is `F` itself, `subject` is `J`. Such brokers may settle deliveries when they send
//! them (the Proton example broker does), so settlement cannot requeue there: a failed or
//! abandoned delivery is sent back to its queue as a copy with `delivery-count` raised and the
//! original accepted; after `max_deliveries` the copy goes to the `xmpp_dead_letter` queue.
//! Broadcast, persistence and surviving a broker restart are reported missing, and so is
//! `lossless_cut`: the claw reconnects and re-attaches (`reconnect`), but with a broker that
//! settles on send, the deliveries on the wire when a connection is cut are lost (at most one
//! credit window per link; the conformance run measured 0 to 2 of 10 000 at a cut).
//!
//! ## Guarantees
//!
//! - **Settlement**: `accepted` after the handler returned `Ok`; on error `released` (requeued)
//!   or, from the `max_deliveries`-th delivery on, `rejected` (dead-lettered through the queue's
//!   `x-dead-letter-exchange`). RabbitMQ 3.10 keeps `delivery-count` at 0 for AMQP 1.0
//!   consumers, so the claw counts deliveries itself by `message-id` (a group queue shared by
//!   several instances may therefore see up to `max_deliveries` per instance). An acker dropped
//!   unsettled releases its delivery. `ack` returns once the link's task holds the accept (it
//!   settles in order, and `close` waits for it); it fails only when that link is gone, in
//!   which case the broker redelivers.
//! - **Credit**: each receiving link has at most [`prefetch`](Amqp10ClawBuilder::prefetch)
//!   unsettled deliveries; credit is granted again once the granted credit is used up, in
//!   batches of at least half the window (RabbitMQ 3.10 over-sends when credit is refilled while
//!   transfers are in flight).
//! - **Sends**: unsettled transfers; `accepted` completes a send, any other outcome is
//!   [`Error::Refused`](claws_core::Error::Refused).
//! - **Recovery**: fe2o3-amqp does not reconnect, so the claw owns it: on a lost connection or
//!   link it reports `Disconnected`, reconnects over its URLs (every one once per round, from
//!   where the last walk stopped; jittered pauses from `reconnect_min` doubling to
//!   `reconnect_max` between rounds), re-declares, begins new sessions, re-attaches every
//!   link, and reports `Connected`. Sends wait for the connection up to `send_timeout`, then fail with
//!   [`Error::Disconnected`](claws_core::Error::Disconnected); a send cut off mid-way (awaiting
//!   credit, an attach or its outcome) is sent again on the new connection as soon as the old
//!   one is known dead (at least once), not after `send_timeout`.
//! - **Close**: stops granting credit, waits (up to `close_timeout`) for in-flight deliveries to
//!   be settled and for sends to be accepted, then detaches and closes.
//! - **Errors**: bad URLs and JIDs fail in `build`; an unreachable broker or refused credentials
//!   fail `start` within `connect_timeout` per URL; passwords are never shown.
//!
//! ## Features
//!
//! | Name | Description | Default |
//! |------|-------------|---------|
//! | (none) | TLS is not built in; use a TLS-terminating proxy for `amqps` | |

mod address;
mod attempts;
mod builder;
mod claw;
mod config;
mod connection;
mod consumer;
mod declare;
mod poison;
mod publisher;
mod settle;
mod shared;
mod supervisor;

pub use address::{percent_encode, AddressScheme, Addresses};
pub use builder::Amqp10ClawBuilder;
pub use claw::Amqp10Claw;
pub use config::Amqp10Options;

impl Amqp10Claw {
    /// A builder for an instance with JID `jid` on the broker at `url`
    /// (`amqp://user:password@host:port[/vhost]`; several, separated by commas, for the nodes
    /// of a cluster: see [`urls`](Amqp10ClawBuilder::urls)), addressing per `scheme`.
    pub fn builder(
        url: &str,
        jid: impl Into<claws_core::jid::JidInput>,
        scheme: AddressScheme,
    ) -> Amqp10ClawBuilder {
        Amqp10ClawBuilder::new(url, jid, scheme)
    }

    /// A claw from a claws [`Config`](claws_core::Config): `url` and `urls` (every URL of
    /// [`Config::urls`](claws_core::Config::urls)), `jid`, `name` (default
    /// `amqp10`), `prefetch` (link credit), `max_deliveries`, `subscriptions`, the
    /// [`Timing`](claws_core::config::Timing) keys, and the `[amqp10]` table ([`Amqp10Options`]).
    pub fn from_config(config: &claws_core::Config) -> claws_core::Result<Amqp10Claw> {
        builder::from_config(config)
    }
}
