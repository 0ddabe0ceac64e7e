//! # claws-test
//!
//! Testing for claws, in three parts:
//!
//! - [`conformance`]: the suite every claw must pass. One function runs every case against a
//!   [`ClawFactory`](conformance::ClawFactory) that makes claws of your kind; a claw opts out of
//!   a case only through its own [`capabilities()`](claws_core::Claw::capabilities), and the
//!   [`Report`](conformance::Report) names each skipped case and why.
//! - [`fault`]: [`FaultProxy`](fault::FaultProxy), a loopback TCP proxy to put between a claw and
//!   its broker: cut every connection, stall traffic, add latency, refuse connections, heal.
//! - [`scenario`]: snatch-style XML scenario files that send stanzas to a
//!   [`Handler`](claws_core::Handler) and say what it must answer, with `{{var}}` binding and a
//!   readable diff on failure. The CLI runs them with `claws test FILE...`.
//!
//! [`mem::MemFactory`] runs the suite (and scenarios) on the in-memory claw.
//!
//! ## Running the suite
//!
//! ```
//! use claws_test::{conformance, mem::MemFactory};
//!
//! # #[tokio::main] async fn main() {
//! let report = conformance::run(MemFactory::new()).await;
//! println!("{report}"); // one line per case, then "17 passed, 0 failed, 3 skipped in 0.25s"
//! report.assert_passed();
//! # }
//! ```
//!
//! Each backend crate calls this from its own integration tests with its own factory. Set
//! `CLAWS_CONFORMANCE_ONLY=case,case` to run a few cases while debugging, or use
//! [`Suite`](conformance::Suite) (`only`, `patience`, `case_timeout`).
//!
//! ## The cases
//!
//! | case | checks | runs when |
//! |------|--------|-----------|
//! | `direct_full_jid` | a stanza to a full JID reaches that instance only; every `Via` field (`jid`, `exchange`, `claw`, `id`, `queue`, `from`) and `attempt` | always |
//! | `bare_jid_load_balancing` | 3 instances share a bare JID: 3000 stanzas, each handled once, every instance a share | `load_balancing` |
//! | `broadcast_per_instance_and_group` | a broadcast reaches each instance once (`fanout`) and each group once (`group_fanout`) | `fanout` |
//! | `isolation` | no instance sees stanzas meant for another JID (`/1` vs `/10`, neighbouring groups) | always |
//! | `correlation_id_round_trip` | the id given to `send` arrives in `Via::id` and comes back on a reply | always |
//! | `payloads_byte_exact` | UTF-8 beyond the BMP, CDATA, 1 MiB, all 256 byte values, JSON, whitespace: byte for byte | always |
//! | `order_single_consumer` | 500 stanzas from one sender arrive in order | `ordering` |
//! | `concurrent_senders` | 50 concurrent senders x 100 stanzas: all arrive, a duplicate only as a redelivery | always |
//! | `handler_error_redelivery` | a rejected stanza comes back with `attempt` 2; acked ones never do | `redelivery` |
//! | `dead_letter_after_bound` | a stanza that always fails is delivered `max_deliveries` times, then dead-lettered | `dead_letter` |
//! | `persistence_across_restart` | an instance closed mid-stream twice, restarted with its JID, gets the rest | `persistence` |
//! | `graceful_close_busy` | `close` while handlers are busy: they finish and their acks succeed; nothing comes back | always |
//! | `use_after_close` | a send after `close` fails with `Error::Closed` | always |
//! | `router_reply_through_origin` | a [`Router`](claws_core::Router) over two claws replies through the one a stanza came from | always |
//! | `reconnect_after_cut` | the fault proxy cuts the connections while 10 000 stanzas flow and refuses new ones for 0.5 s: `Disconnected`, `Connected`, none lost (without `lossless_cut`: at most the receiver's prefetch window lost) | `reconnect` and `broker_addr()` |
//! | `broker_restart` | stanzas stored while the receiver was away survive a broker restart | `survives_broker_restart` and `restart_broker()` |
//! | `invalid_jid` | `make` refuses invalid JIDs with `Error::InvalidJid` | always |
//! | `oversize_name` | a JID whose queue names pass 255 bytes is refused with `Error::NameTooLong` | always |
//! | `unroutable_send` | a send nobody consumes fails with `Error::NoRoute` | `unroutable_errors` |
//! | `unreachable_broker` | `start` against a closed port fails within 30 s | `unreachable()` or `broker_addr()` |
//!
//! Every case uses JIDs with a random suffix and payloads carrying a per-case token (so a shared
//! broker's other traffic is ignored), waits on events with timeouts (never fixed sleeps), and
//! calls the factory's [`cleanup`](conformance::ClawFactory::cleanup) afterwards.
//!
//! ## Scenarios
//!
//! ```
//! use claws_test::scenario::Scenario;
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let scenario = Scenario::from_str(r#"
//!   <functional><steps>
//!     <step name="ping" timeout="5">
//!       <vars><value key="id">p1</value></vars>
//!       <send><iq type="get" id="{{id}}" from="{{tester}}" to="{{service}}"><ping xmlns="urn:xmpp:ping"/></iq></send>
//!       <expected><iq type="result" id="{{id}}" from="{{service}}" to="{{tester}}"/></expected>
//!     </step>
//!   </steps></functional>"#)?;
//! let report = scenario.run(claws_core::Echo).await;
//! assert!(report.is_success(), "{report}");
//! # Ok(()) }
//! ```
//!
//! See [`scenario`] for the format; `claws-test/scenarios/` holds examples.
//!
//! ## Writing your own claw
//!
//! A claw connects one instance (a JID) to a bus. `examples/src/loopbus/` in the repository is
//! a complete one in a few hundred lines (a tiny broker on loopback TCP and its claw) that passes
//! every case here; read it alongside these steps. What every claw needs around its protocol
//! calls is in [`claws_core::runtime`], and loopbus uses it: the run state and its errors
//! (`Lifecycle`), the connection that serves sends (`Current`), reconnecting with a jittered
//! backoff (`Reconnect`), the stop signal (`CancellationToken`) and what `close` waits for
//! (`InFlight`, `drain`).
//!
//! 1. **Names.** Take exchange and queue names from [`claws_core::topology`]
//!    (`topology::queues(&jid, subscriptions)` gives the four queues of TOPOLOGY.md, checked
//!    against the 255-byte limit); check a destination with `topology::check_name`.
//! 2. **`start(events)`.** Connect, declare, start consuming, report
//!    [`Events::connected`](claws_core::Events::connected), and only then return. An unreachable
//!    broker is an error ([`Error::Connect`](claws_core::Error::Connect)) within a bounded time.
//! 3. **Deliveries.** Hand each one to [`Events::received`](claws_core::Events::received) with a
//!    [`Via`](claws_core::Via) (`jid` = the routing key, `queue` = which subscription, `id` =
//!    the correlation id, `from` = the sender, so that the router can route replies) and
//!    `attempt` (1, then 2 on the first redelivery...). Never block your connection's reader on
//!    `received`: the router applies back-pressure there while handlers send and ack.
//! 4. **The [`Acker`](claws_core::Acker).** `ack` removes the stanza; `reject` requeues it, or
//!    dead-letters it once `attempt` reached `max_deliveries`; dropping an unsettled acker
//!    requeues it. Settle on the connection that delivered; if that connection is gone, fail
//!    (the broker redelivers).
//! 5. **Sending.** `send` publishes to the direct exchange with routing key = the JID, `publish`
//!    to the fanout exchange with routing key = your JID; return once the broker took
//!    responsibility (a confirm), `Error::NoRoute` when nobody is bound, and while disconnected
//!    wait (bounded) for the connection to come back.
//! 6. **`close`.** Stop consuming, wait (bounded) until every delivery handed out is settled,
//!    then disconnect. Afterwards `send` fails with [`Error::Closed`](claws_core::Error::Closed).
//! 7. **Recovery** (if you declare `reconnect`). When the connection drops, report
//!    `Disconnected`, reconnect with back-off, re-declare and re-consume, report `Connected`.
//!    Declare `lossless_cut` too when the broker keeps deliveries until you settle them.
//!    For RabbitMQ-backed claws, [`rabbitmq::restart_app`] implements `restart_broker()`.
//! 8. **Capabilities.** Return what you really guarantee from `capabilities()`; the suite skips
//!    the rest and says so.
//! 9. **The factory.** In your tests implement [`ClawFactory`](conformance::ClawFactory): `make`
//!    applies every field of [`Options`](conformance::Options); a network claw also gives
//!    `broker_addr()` and `make_at()` (the fault-proxy case), optionally `restart_broker()`,
//!    `dead_lettered()` and `cleanup()`. Then:
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use claws_core::{Claw, Result};
//! # use claws_test::conformance::{self, ClawFactory, Options};
//! # struct MyFactory;
//! # #[claws_core::async_trait] impl ClawFactory for MyFactory {
//! #     fn name(&self) -> String { "mine".into() }
//! #     async fn make(&self, _: &str, _: &Options) -> Result<Arc<dyn Claw>> { unimplemented!() }
//! # }
//! #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
//! async fn my_claw_passes_the_conformance_suite() {
//!     let report = conformance::run(MyFactory).await;
//!     println!("{report}");
//!     report.assert_passed();
//! }
//! ```
//!
//! ## Feature flags
//!
//! None: the crate needs only `claws-core`, `async-trait`, `tokio`, `tracing`, `futures-util`,
//! `serde_json` and `thiserror`.

pub mod cluster;
pub mod conformance;
pub mod fault;
pub mod hostile;
pub mod mem;
pub mod rabbitmq;
pub mod rabbitmq4;
pub mod scenario;
mod script;
