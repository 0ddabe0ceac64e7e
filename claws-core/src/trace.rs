//! W3C trace context across hops: one stanza's path through gateway → worker → reply is one
//! trace.
//!
//! A delivery that carries a `traceparent` (an AMQP 0-9-1 header, an AMQP 1.0 application
//! property, a field of the in-memory broker) arrives with it in [`Via::trace`](crate::Via::trace).
//! The router runs the handler in a `claws.delivery` span and, for its duration, makes the
//! delivery's context *current* (a task-local): the trace it continues, or a new one when the
//! sender sent none. Every send or publish made while a context is current carries a
//! `traceparent` with the same trace id and a new parent id (the send's own `claws.send` span).
//! Peers that send no `traceparent` are unaffected; peers that do not read it ignore a header.
//!
//! The ids are fields of the spans (`trace_id`, `span_id`, `parent_id`), so any `tracing`
//! subscriber can correlate them; claws does not depend on OpenTelemetry. A handler that spawns
//! a task and sends from it must carry the context itself ([`scope`] with [`current`]).
//!
//! ```
//! use claws_core::trace::{self, TraceContext};
//! let incoming = TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .expect("a valid traceparent");
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! trace::scope(incoming.child(), async {
//!     let sent = trace::current().unwrap().child();
//!     assert_eq!(sent.trace_id(), incoming.trace_id());
//!     assert_ne!(sent.span_id(), incoming.span_id());
//!     assert!(sent.to_string().starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
//! })
//! .await;
//! # });
//! assert!(trace::current().is_none(), "outside a scope there is none");
//! ```

use std::fmt;
use std::future::Future;

/// The header (AMQP 0-9-1) or application property (AMQP 1.0) holding the context.
pub const TRACEPARENT: &str = "traceparent";

/// One hop's W3C trace context (`traceparent`, version `00`): the trace it belongs to, the span
/// that sent it, and whether the trace is sampled.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    sampled: bool,
}

impl TraceContext {
    /// Reads a `traceparent` header: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
    /// `None` for anything else (an all-zero id, another length, upper-case hex, a version
    /// `ff`): a peer's malformed header starts a new trace rather than failing the delivery.
    /// Later versions are read by their first four fields, as the specification asks.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let mut parts = header.trim().split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let hex = |s: &str, len: usize| {
            (s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
                .then_some(())
        };
        hex(version, 2)?;
        hex(trace, 32)?;
        hex(span, 16)?;
        hex(flags, 2)?;
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|&t| t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|&s| s != 0)?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace (random ids), sampled.
    pub fn new_root() -> TraceContext {
        TraceContext {
            trace_id: fastrand::u128(1..),
            span_id: fastrand::u64(1..),
            sampled: true,
        }
    }

    /// The next hop of the same trace: a new span id, the same trace id and sampling.
    pub fn child(&self) -> TraceContext {
        TraceContext {
            span_id: fastrand::u64(1..),
            ..*self
        }
    }

    /// The trace id as 32 lower-case hex digits.
    pub fn trace_id(&self) -> String {
        format!("{:032x}", self.trace_id)
    }

    /// The span id as 16 lower-case hex digits (in a `traceparent`: the sending span).
    pub fn span_id(&self) -> String {
        format!("{:016x}", self.span_id)
    }

    /// Whether the trace is sampled (flag `01`).
    pub fn sampled(&self) -> bool {
        self.sampled
    }
}

/// The `traceparent` header value.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.span_id,
            u8::from(self.sampled)
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// Runs `fut` with `context` current: sends made inside carry it (as their parent).
pub async fn scope<F: Future>(context: TraceContext, fut: F) -> F::Output {
    CURRENT.scope(context, fut).await
}

/// The context current on this task, if any.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// For a claw's send or publish: the `claws.send` span covering it (until the broker confirmed)
/// and the `traceparent` to put on the message, when a context is current (else no header and
/// a span without ids).
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let (_span, header) = claws_core::trace::outgoing("amqp091", "to@example.com");
/// assert!(header.is_none());
/// let root = claws_core::trace::TraceContext::new_root();
/// claws_core::trace::scope(root, async {
///     let (_span, header) = claws_core::trace::outgoing("amqp091", "to@example.com");
///     assert!(header.unwrap().contains(&root.trace_id()));
/// })
/// .await;
/// # });
/// ```
pub fn outgoing(claw: &str, to: &str) -> (tracing::Span, Option<String>) {
    let (span, hop) = outgoing_context(claw, to);
    (span, hop.map(|h| h.to_string()))
}

/// [`outgoing`] for a claw that carries the context itself (the mem claw): the span and the
/// next hop's context.
pub fn outgoing_context(claw: &str, to: &str) -> (tracing::Span, Option<TraceContext>) {
    match current() {
        Some(parent) => {
            let hop = parent.child();
            let span = tracing::debug_span!(
                "claws.send",
                claw,
                to,
                trace_id = %hop.trace_id(),
                span_id = %hop.span_id(),
                parent_id = %parent.span_id(),
            );
            (span, Some(hop))
        }
        None => (tracing::debug_span!("claws.send", claw, to), None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_specifications_example_round_trips() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(h).unwrap();
        assert_eq!(c.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id(), "00f067aa0ba902b7");
        assert!(c.sampled());
        assert_eq!(c.to_string(), h);
        let unsampled = TraceContext::parse(&h.replace("-01", "-00")).unwrap();
        assert!(!unsampled.sampled());
    }

    #[test]
    fn malformed_headers_are_none() {
        for h in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceContext::parse(h), None, "{h:?}");
        }
        // A later version is read by its first four fields.
        assert!(
            TraceContext::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x")
                .is_some()
        );
    }

    #[tokio::test]
    async fn the_scope_makes_a_context_current_and_sends_continue_it() {
        assert!(current().is_none());
        assert!(outgoing("c", "t").1.is_none());
        let root = TraceContext::new_root();
        let header = scope(root, async { outgoing("c", "t").1.unwrap() }).await;
        let sent = TraceContext::parse(&header).unwrap();
        assert_eq!(sent.trace_id(), root.trace_id());
        assert_ne!(sent.span_id(), root.span_id());
        assert!(current().is_none());
    }

    proptest! {
        #[test]
        fn any_string_parses_or_is_none_and_valid_ones_round_trip(s in ".{0,80}") {
            if let Some(c) = TraceContext::parse(&s) {
                prop_assert_eq!(TraceContext::parse(&c.to_string()), Some(c));
            }
        }

        #[test]
        fn formatted_contexts_round_trip(t in 1u128.., p in 1u64.., sampled: bool) {
            let c = TraceContext { trace_id: t, span_id: p, sampled };
            prop_assert_eq!(TraceContext::parse(&c.to_string()), Some(c));
        }
    }
}
