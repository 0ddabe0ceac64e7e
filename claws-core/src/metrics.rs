//! Metrics through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! claws records; it never exports. Nothing is recorded unless the application installs a
//! recorder (`metrics::set_global_recorder`, or an exporter such as
//! `metrics-exporter-prometheus`, as `claws --metrics ADDR` does) and then calls [`enable`],
//! both **before** it builds its routers and starts its claws:
//!
//! ```
//! // metrics_exporter_prometheus::PrometheusBuilder::new().install()?; (or any recorder)
//! claws_core::metrics::enable();
//! assert!(claws_core::metrics::enabled());
//! ```
//!
//! Until then claws' instrumentation is skipped: a stanza costs one atomic load more, no
//! allocation, no clock read. (A recorder cannot be told from the facade's no-op one, hence the
//! explicit switch.) Handles are taken on the first event of each claw and queue; a router
//! built before `enable` does not measure its sends.
//!
//! Each metric is recorded in one place, where the event happens:
//!
//! | metric | kind | labels | recorded by |
//! |---|---|---|---|
//! | [`RECEIVED`] | counter | `claw`, `queue` | [`Events::received`](crate::Events::received) (every claw hands its deliveries through it) |
//! | [`ACKED`] | counter | `claw`, `queue` | the delivery's acker, once the ack succeeded |
//! | [`REJECTED`] | counter | `claw`, `queue` | the delivery's acker: the handler failed or panicked |
//! | [`IN_FLIGHT`] | gauge | `claw`, `queue` | up when a delivery is handed over, down when it is settled (or dropped unsettled) |
//! | [`HANDLER_SECONDS`] | histogram | `claw`, `queue` | the [`Router`](crate::Router)'s lanes, around `Handler::received` |
//! | [`SENT`] | counter | `claw` | sends and broadcasts the broker took (through a router, or a claw wrapped by [`metered`]) |
//! | [`SEND_FAILED`] | counter | `claw`, `reason` | the same sends that failed: `no_route`, `refused`, `timeout`, `other` |
//! | [`SEND_SECONDS`] | histogram | `claw` | the same sends, until confirmed (or failed) |
//! | [`CONNECTED`] | gauge | `claw` | 1 on `Connected`, 0 on `Disconnected` ([`Events`](crate::Events)) |
//! | [`RECONNECTS`] | counter | `claw` | every `Connected` after a claw's first |
//! | [`CONSUMER_LOST`] | counter | `claw`, `queue` | `ConsumerLost` |
//! | [`DEAD_LETTERED`] | counter | `claw`, `queue` | the backends' ackers, when they dead-letter ([`dead_lettered`]) |
//!
//! `queue` is the [`QueueKind`] (`direct`, `group_direct`, `fanout`, `group_fanout`, or a
//! claw's own such as `component`), never a queue name or a JID: labels stay few.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use ::metrics::{Counter, Gauge, Histogram, SharedString};
use async_trait::async_trait;

use crate::claw::{Acker, Capabilities, Claw, Delivery};
use crate::jid::Jid;
use crate::topology::{DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use crate::{Error, Packet, QueueKind, Result};

/// Deliveries handed to the application (counter).
pub const RECEIVED: &str = "claws_received_total";
/// Deliveries acknowledged after the handler succeeded (counter).
pub const ACKED: &str = "claws_acked_total";
/// Deliveries rejected because the handler failed or panicked (counter).
pub const REJECTED: &str = "claws_rejected_total";
/// Deliveries handed over and not settled yet (gauge).
pub const IN_FLIGHT: &str = "claws_in_flight";
/// How long handlers take (histogram, seconds).
pub const HANDLER_SECONDS: &str = "claws_handler_seconds";
/// Sends and broadcasts the broker took (counter).
pub const SENT: &str = "claws_sent_total";
/// Sends that failed, by `reason` (counter).
pub const SEND_FAILED: &str = "claws_send_failed_total";
/// How long a send takes until the broker took it (histogram, seconds).
pub const SEND_SECONDS: &str = "claws_send_seconds";
/// Whether a claw is connected: 1 or 0 (gauge).
pub const CONNECTED: &str = "claws_connected";
/// Reconnections: every `Connected` after a claw's first (counter).
pub const RECONNECTS: &str = "claws_reconnects_total";
/// Queues that stopped being consumed while the connection stayed up (counter).
pub const CONSUMER_LOST: &str = "claws_consumer_lost_total";
/// Stanzas dead-lettered after failing on every delivery (counter).
pub const DEAD_LETTERED: &str = "claws_dead_lettered_total";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns claws' recording on for the whole process, and describes every metric to the installed
/// recorder (the `# HELP` lines of a Prometheus scrape). Call it once, after installing the
/// recorder, before building routers and starting claws.
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
    describe();
}

/// Whether [`enable`] was called.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn describe() {
    use ::metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(RECEIVED, "Deliveries handed to the application");
    describe_counter!(ACKED, "Deliveries acknowledged after the handler succeeded");
    describe_counter!(
        REJECTED,
        "Deliveries rejected: the handler failed or panicked"
    );
    describe_gauge!(IN_FLIGHT, "Deliveries handed over and not settled yet");
    describe_histogram!(HANDLER_SECONDS, Unit::Seconds, "Time spent in the handler");
    describe_counter!(SENT, "Sends and broadcasts the broker took");
    describe_counter!(SEND_FAILED, "Sends that failed, by reason");
    describe_histogram!(
        SEND_SECONDS,
        Unit::Seconds,
        "Time until the broker took a send"
    );
    describe_gauge!(
        CONNECTED,
        "1 while the claw is connected, 0 while it is not"
    );
    describe_counter!(RECONNECTS, "Connections after the first");
    describe_counter!(CONSUMER_LOST, "Queues no longer consumed while connected");
    describe_counter!(
        DEAD_LETTERED,
        "Stanzas dead-lettered after failing on every delivery"
    );
}

/// The `reason` labels of [`SEND_FAILED`], in the order of [`failure_reason`].
const REASONS: [&str; 4] = ["no_route", "refused", "timeout", "other"];

/// Which `reason` a failed send counts under.
pub fn failure_reason(err: &Error) -> &'static str {
    REASONS[reason_index(err)]
}

fn reason_index(err: &Error) -> usize {
    match err {
        Error::NoRoute { .. } => 0,
        Error::Refused { .. } => 1,
        // Disconnected: the send waited for a connection until its timeout.
        Error::Timeout { .. } | Error::Disconnected { .. } => 2,
        _ => 3,
    }
}

/// Counts a stanza dead-lettered by a backend's acker ([`DEAD_LETTERED`]).
pub fn dead_lettered(claw: &Arc<str>, queue: &QueueKind) {
    if !enabled() {
        return;
    }
    ::metrics::counter!(DEAD_LETTERED, "claw" => shared(claw), "queue" => queue_label(queue))
        .increment(1);
}

fn shared(claw: &Arc<str>) -> SharedString {
    SharedString::from(claw.clone())
}

fn queue_label(queue: &QueueKind) -> SharedString {
    match queue {
        QueueKind::Other(name) => SharedString::from(name.clone()),
        known => SharedString::const_str(static_kind(known)),
    }
}

fn static_kind(queue: &QueueKind) -> &'static str {
    match queue {
        QueueKind::Direct => "direct",
        QueueKind::GroupDirect => "group_direct",
        QueueKind::Fanout => "fanout",
        QueueKind::GroupFanout => "group_fanout",
        QueueKind::Other(_) => "other",
    }
}

/// The kind of a queue named `exchange:jid` (the wire contract's names); `other` for any other
/// name, so that no name (which holds a JID) becomes a label.
fn kind_of_queue_name(name: &str) -> &'static str {
    let bare = |jid: &str| !jid.contains('/');
    if let Some(jid) = name
        .strip_prefix(DIRECT_EXCHANGE)
        .and_then(|r| r.strip_prefix(':'))
    {
        if bare(jid) {
            "group_direct"
        } else {
            "direct"
        }
    } else if let Some(jid) = name
        .strip_prefix(FANOUT_EXCHANGE)
        .and_then(|r| r.strip_prefix(':'))
    {
        if bare(jid) {
            "group_fanout"
        } else {
            "fanout"
        }
    } else {
        "other"
    }
}

/// The handles of one claw's queue, taken on its first delivery.
#[derive(Debug)]
pub(crate) struct QueueMeters {
    claw: Arc<str>,
    queue: QueueKind,
    received: Counter,
    acked: Counter,
    rejected: Counter,
    in_flight: Gauge,
    handler_seconds: Histogram,
}

impl QueueMeters {
    fn new(claw: &Arc<str>, queue: &QueueKind) -> Self {
        let labels = [
            ::metrics::Label::new("claw", shared(claw)),
            ::metrics::Label::new("queue", queue_label(queue)),
        ];
        Self {
            claw: claw.clone(),
            queue: queue.clone(),
            received: ::metrics::counter!(RECEIVED, labels.iter()),
            acked: ::metrics::counter!(ACKED, labels.iter()),
            rejected: ::metrics::counter!(REJECTED, labels.iter()),
            in_flight: ::metrics::gauge!(IN_FLIGHT, labels.iter()),
            handler_seconds: ::metrics::histogram!(HANDLER_SECONDS, labels.iter()),
        }
    }

    /// The time a handler took.
    pub(crate) fn handled(&self, started: Instant) {
        self.handler_seconds.record(started.elapsed().as_secs_f64());
    }
}

/// The handles and connection state behind one events channel (shared by its clones, so by
/// every claw of a router).
#[derive(Debug, Default)]
pub(crate) struct Meters {
    queues: RwLock<Vec<Arc<QueueMeters>>>,
    /// The claws that reported `Connected` at least once.
    connected_once: Mutex<Vec<Arc<str>>>,
}

impl Meters {
    /// The handles of `claw`'s `queue`, taken the first time.
    pub(crate) fn queue(&self, claw: &Arc<str>, queue: &QueueKind) -> Arc<QueueMeters> {
        let find = |list: &[Arc<QueueMeters>]| {
            list.iter()
                .find(|m| (Arc::ptr_eq(&m.claw, claw) || *m.claw == **claw) && m.queue == *queue)
                .cloned()
        };
        if let Some(found) = find(&self.queues.read().expect("meters lock poisoned")) {
            return found;
        }
        let mut list = self.queues.write().expect("meters lock poisoned");
        if let Some(found) = find(&list) {
            return found;
        }
        let made = Arc::new(QueueMeters::new(claw, queue));
        list.push(made.clone());
        made
    }

    /// A delivery is being handed over (its slot in the channel is taken): counts it received
    /// and in flight, and wraps its acker so that its settlement is counted.
    pub(crate) fn wrap(&self, mut delivery: Delivery) -> Delivery {
        if !enabled() {
            return delivery;
        }
        let meters = self.queue(&delivery.via.claw, &delivery.via.queue);
        meters.received.increment(1);
        meters.in_flight.increment(1.0);
        delivery.acker = Box::new(MeteredAcker {
            inner: Some(delivery.acker),
            meters,
        });
        delivery
    }

    /// `Connected`: the claw is up; every time after its first is a reconnection.
    pub(crate) fn connected(&self, claw: &Arc<str>) {
        if !enabled() {
            return;
        }
        ::metrics::gauge!(CONNECTED, "claw" => shared(claw)).set(1.0);
        let mut seen = self.connected_once.lock().expect("meters lock poisoned");
        if seen.iter().any(|c| **c == **claw) {
            ::metrics::counter!(RECONNECTS, "claw" => shared(claw)).increment(1);
        } else {
            // Present (at 0) from the first connection on, so that rate() has a start.
            ::metrics::counter!(RECONNECTS, "claw" => shared(claw)).absolute(0);
            seen.push(claw.clone());
        }
    }

    /// `Disconnected`.
    pub(crate) fn disconnected(claw: &Arc<str>) {
        if !enabled() {
            return;
        }
        ::metrics::gauge!(CONNECTED, "claw" => shared(claw)).set(0.0);
    }

    /// `ConsumerLost` of the queue named `queue`.
    pub(crate) fn consumer_lost(claw: &Arc<str>, queue: &str) {
        if !enabled() {
            return;
        }
        let kind = kind_of_queue_name(queue);
        ::metrics::counter!(CONSUMER_LOST, "claw" => shared(claw), "queue" => kind).increment(1);
    }
}

/// Counts a delivery's settlement, and takes it out of [`IN_FLIGHT`] however it ends.
struct MeteredAcker {
    inner: Option<Box<dyn Acker>>,
    meters: Arc<QueueMeters>,
}

#[async_trait]
impl Acker for MeteredAcker {
    async fn ack(mut self: Box<Self>) -> Result<()> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        let settled = inner.ack().await;
        if settled.is_ok() {
            self.meters.acked.increment(1);
        }
        settled
    }

    async fn reject(mut self: Box<Self>, reason: &Error) -> Result<()> {
        let Some(inner) = self.inner.take() else {
            return Ok(());
        };
        self.meters.rejected.increment(1);
        inner.reject(reason).await
    }
}

impl Drop for MeteredAcker {
    fn drop(&mut self) {
        // Settled, or dropped unsettled (the inner acker's own drop returns it to its queue).
        drop(self.inner.take());
        self.meters.in_flight.decrement(1.0);
    }
}

/// Wraps `claw` so that its sends and broadcasts are counted and timed ([`SENT`],
/// [`SEND_FAILED`], [`SEND_SECONDS`]); returns it as it is unless [`enable`]d. A
/// [`Router`](crate::Router) does this to every claw it holds when it is built; wrap a claw
/// used without a router (and never one given to a router: it would be counted twice).
pub fn metered(claw: Arc<dyn Claw>) -> Arc<dyn Claw> {
    if !enabled() {
        return claw;
    }
    Arc::new(Metered {
        inner: claw,
        meters: OnceLock::new(),
    })
}

struct SendMeters {
    sent: Counter,
    failed: [Counter; 4],
    seconds: Histogram,
}

/// A claw whose sends are measured; everything else is the inner claw's.
struct Metered {
    inner: Arc<dyn Claw>,
    meters: OnceLock<SendMeters>,
}

impl std::fmt::Debug for Metered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Shown as the claw itself: the wrapper says nothing a log reader needs.
        self.inner.fmt(f)
    }
}

impl Metered {
    fn meters(&self) -> &SendMeters {
        self.meters.get_or_init(|| {
            let claw = SharedString::from(self.inner.name().to_owned());
            SendMeters {
                sent: ::metrics::counter!(SENT, "claw" => claw.clone()),
                failed: REASONS.map(|reason| {
                    ::metrics::counter!(SEND_FAILED, "claw" => claw.clone(), "reason" => reason)
                }),
                seconds: ::metrics::histogram!(SEND_SECONDS, "claw" => claw.clone()),
            }
        })
    }

    fn measured(&self, started: Instant, outcome: &Result<()>) {
        let meters = self.meters();
        meters.seconds.record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => meters.sent.increment(1),
            Err(err) => meters.failed[reason_index(err)].increment(1),
        }
    }
}

#[async_trait]
impl Claw for Metered {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn jid(&self) -> &Jid {
        self.inner.jid()
    }
    fn capabilities(&self) -> Capabilities {
        self.inner.capabilities()
    }
    async fn start(&self, events: crate::Events) -> Result<()> {
        // The handles are taken here, after the application installed its recorder.
        let _ = self.meters();
        self.inner.start(events).await
    }
    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        let started = Instant::now();
        let outcome = self.inner.send(to, id, packet).await;
        self.measured(started, &outcome);
        outcome
    }
    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<crate::claw::Confirmation> {
        let started = Instant::now();
        let confirmation = match self.inner.send_ordered(to, id, packet).await {
            Ok(confirmation) => confirmation,
            Err(err) => {
                let outcome = Err(err);
                self.measured(started, &outcome);
                return outcome.map(|()| crate::claw::Confirmation::confirmed());
            }
        };
        if confirmation.is_ready() {
            let outcome = confirmation.await;
            self.measured(started, &outcome);
            return Ok(crate::claw::Confirmation::ready(outcome));
        }
        // Measured when the verdict comes: until confirmed, as a plain send is.
        let meters = self.meters();
        let (sent, failed, seconds) = (
            meters.sent.clone(),
            meters.failed.clone(),
            meters.seconds.clone(),
        );
        Ok(crate::claw::Confirmation::new(async move {
            let outcome = confirmation.await;
            seconds.record(started.elapsed().as_secs_f64());
            match &outcome {
                Ok(()) => sent.increment(1),
                Err(err) => failed[reason_index(err)].increment(1),
            }
            outcome
        }))
    }
    async fn publish(&self, packet: Packet) -> Result<()> {
        let started = Instant::now();
        let outcome = self.inner.publish(packet).await;
        self.measured(started, &outcome);
        outcome
    }
    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_become_kinds_never_jids() {
        assert_eq!(kind_of_queue_name("xmpp_direct:a@b/r"), "direct");
        assert_eq!(kind_of_queue_name("xmpp_direct:a@b"), "group_direct");
        assert_eq!(kind_of_queue_name("xmpp_fanout:a@b/r/x"), "fanout");
        assert_eq!(kind_of_queue_name("xmpp_fanout:b"), "group_fanout");
        assert_eq!(kind_of_queue_name("xmpp_dead_letter"), "other");
        assert_eq!(kind_of_queue_name("/queues/a@b"), "other");
    }

    #[test]
    fn send_failures_have_four_reasons() {
        let claw = || "c".to_owned();
        assert_eq!(
            failure_reason(&Error::NoRoute {
                to: "x".into(),
                claw: claw()
            }),
            "no_route"
        );
        assert_eq!(
            failure_reason(&Error::Refused {
                to: "x".into(),
                claw: claw(),
                reason: "nack".into()
            }),
            "refused"
        );
        assert_eq!(
            failure_reason(&Error::Disconnected {
                claw: claw(),
                waited: std::time::Duration::from_secs(1)
            }),
            "timeout"
        );
        assert_eq!(
            failure_reason(&Error::Timeout {
                what: "send".into(),
                after: std::time::Duration::from_secs(1)
            }),
            "timeout"
        );
        assert_eq!(failure_reason(&Error::Closed { claw: claw() }), "other");
    }
}
