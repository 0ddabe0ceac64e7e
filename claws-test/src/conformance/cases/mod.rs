//! The cases, grouped by what they exercise.

mod bad_input;
mod delivery;
mod faults;
mod payload;
mod router;
mod routing;

use std::future::Future;
use std::pin::Pin;

use super::harness::{CaseResult, Harness};

type CaseFuture<'a> = Pin<Box<dyn Future<Output = CaseResult> + Send + 'a>>;

/// One case.
pub(super) struct Case {
    pub(super) name: &'static str,
    pub(super) about: &'static str,
    pub(super) run: for<'a> fn(&'a Harness) -> CaseFuture<'a>,
}

macro_rules! cases {
    ($($module:ident :: $name:ident => $about:literal,)*) => {
        pub(super) const ALL: &[Case] = &[$(Case {
            name: stringify!($name),
            about: $about,
            run: |h| Box::pin($module::$name(h)),
        },)*];
    };
}

cases! {
    routing::direct_full_jid => "a stanza to a full JID reaches that instance only, every Via field right",
    routing::bare_jid_load_balancing => "3 instances share a bare JID: 3000 stanzas, each handled once, every instance a share",
    routing::broadcast_per_instance_and_group => "a broadcast reaches each instance once (fanout) and each group once (group_fanout)",
    routing::isolation => "instances never see stanzas meant for other JIDs",
    routing::correlation_id_round_trip => "the correlation id travels in Via::id, there and back",
    payload::payloads_byte_exact => "payloads arrive byte for byte (UTF-8 beyond the BMP, CDATA, 1 MiB, non-XML bytes)",
    delivery::order_single_consumer => "500 stanzas from one sender reach a single-consumer instance in order",
    delivery::concurrent_senders => "50 concurrent senders x 100 stanzas: all arrive, none twice beyond at-least-once",
    delivery::handler_error_redelivery => "a handler error leads to redelivery with attempt 2; acked stanzas stay acked",
    delivery::dead_letter_after_bound => "a stanza that always fails is dead-lettered after max_deliveries",
    delivery::persistence_across_restart => "an instance closed mid-stream twice, restarted with its JID, gets the rest",
    delivery::graceful_close_busy => "close while handlers are busy: in-flight stanzas finish and are acked",
    delivery::use_after_close => "sending after close fails with Error::Closed",
    router::router_reply_through_origin => "a router replies through the claw a stanza came from",
    faults::reconnect_after_cut => "the fault proxy cuts the connections mid-stream and refuses new ones for 0.5 s: Disconnected, Connected, nothing lost (at most one prefetch window without lossless_cut)",
    faults::broker_restart => "persisted stanzas survive a broker restart (opt-in)",
    bad_input::invalid_jid => "invalid JIDs are refused with Error::InvalidJid",
    bad_input::oversize_name => "a JID making names over 255 bytes is refused with Error::NameTooLong",
    bad_input::unroutable_send => "a send nobody can receive fails with Error::NoRoute",
    bad_input::unreachable_broker => "start against an unreachable broker fails within 30 s",
}
