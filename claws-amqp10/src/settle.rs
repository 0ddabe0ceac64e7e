//! Accepting in ranges: one `disposition` frame for a run of deliveries.
//!
//! An AMQP 1.0 `disposition` settles the deliveries `first..=last` of a session at once. A
//! link task keeps the accepts its ackers asked for in an [`Accepts`] batch and writes them
//! together (fe2o3's `accept_all`, which sends one frame per run of consecutive delivery ids):
//!
//! - a delivery enters the batch only once its handler finished (its acker asked to accept
//!   it), and a range only ever names the deliveries in the batch, so nothing is settled
//!   before its handler returned, whatever order handlers finish in;
//! - the batch is written once it holds `bound` accepts, else `delay` after its first one,
//!   and at once when the link has no credit left (the broker waits for the settlements that
//!   let it be granted again) or the claw closes;
//! - rejects (dead-lettering, with their reason) and releases (redelivery) are not batched:
//!   each is its own disposition, written when asked for;
//! - each accepted delivery keeps its in-flight guard until the frame that settles it was
//!   handed to the session, so the claw's `close` waits for the batch.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use claws_core::runtime::InFlightGuard;
use tokio::time::{Instant, Sleep};

/// How long a partial batch waits for more accepts before it is written.
pub(crate) const DELAY: Duration = Duration::from_millis(2);

/// The batch bound of a link with `credit`: a quarter of it (at most 256), so the broker's
/// window never waits long on a batch.
pub(crate) fn bound_for(credit: u32) -> usize {
    usize::try_from(credit.div_ceil(4))
        .unwrap_or(256)
        .clamp(1, 256)
}

/// Accepts waiting to be written as ranges, in the order they were asked for. `T` is what
/// names a delivery on the wire (fe2o3's `DeliveryInfo`).
pub(crate) struct Accepts<T> {
    infos: Vec<T>,
    /// Released once the batch was written.
    guards: Vec<InFlightGuard>,
    bound: usize,
    delay: Duration,
    /// When the batch is due; armed while the batch is not empty.
    timer: Pin<Box<Sleep>>,
}

/// A batch taken out to be written: the deliveries, and the guards to drop once it was.
pub(crate) struct Taken<T> {
    /// The deliveries to accept.
    pub(crate) infos: Vec<T>,
    /// Their in-flight guards: drop them after writing.
    pub(crate) guards: Vec<InFlightGuard>,
}

impl<T> Accepts<T> {
    /// An empty batch, full at `bound` accepts (at least 1), due `delay` after its first.
    pub(crate) fn new(bound: usize, delay: Duration) -> Self {
        let bound = bound.max(1);
        Self {
            infos: Vec::with_capacity(bound),
            guards: Vec::with_capacity(bound),
            bound,
            delay,
            timer: Box::pin(tokio::time::sleep(delay)),
        }
    }

    /// Adds a finished delivery; true when the batch is full and should be written now.
    pub(crate) fn push(&mut self, info: T, guard: Option<InFlightGuard>) -> bool {
        if self.infos.is_empty() {
            self.timer.as_mut().reset(Instant::now() + self.delay);
        }
        self.infos.push(info);
        self.guards.extend(guard);
        self.infos.len() >= self.bound
    }

    /// Accepts waiting.
    pub(crate) fn len(&self) -> usize {
        self.infos.len()
    }

    /// Whether nothing waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.infos.is_empty()
    }

    /// Resolves when a non-empty batch is due (`delay` after its first accept). Poll it only
    /// while the batch is not empty (`select!`'s `if !accepts.is_empty()`).
    pub(crate) fn due(&mut self) -> impl Future<Output = ()> + '_ {
        self.timer.as_mut()
    }

    /// Takes the batch out (empty if nothing waits), ready for the next one.
    pub(crate) fn take(&mut self) -> Taken<T> {
        let cap = self.bound;
        Taken {
            infos: std::mem::replace(&mut self.infos, Vec::with_capacity(cap)),
            guards: std::mem::take(&mut self.guards),
        }
    }
}

#[cfg(test)]
mod tests {
    //! On the real clock (this crate's tests have no paused time), without waiting: a deadline
    //! is checked against the instants around the push, and `due` is only polled.
    use claws_core::runtime::InFlight;

    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    /// Whether `due` resolves at once.
    async fn is_due<T>(accepts: &mut Accepts<T>) -> bool {
        tokio::time::timeout(Duration::ZERO, accepts.due())
            .await
            .is_ok()
    }

    #[test]
    fn the_bound_is_a_quarter_of_the_credit_within_1_and_256() {
        assert_eq!(bound_for(0), 1);
        assert_eq!(bound_for(1), 1);
        assert_eq!(bound_for(10), 3);
        assert_eq!(bound_for(1000), 250);
        assert_eq!(bound_for(u32::MAX), 256);
    }

    #[tokio::test]
    async fn full_at_the_bound_in_the_order_asked() {
        let mut accepts = Accepts::new(3, LONG);
        assert!(!accepts.push(7, None));
        assert!(!accepts.push(5, None));
        assert!(accepts.push(6, None), "the third fills a batch of 3");
        assert_eq!(accepts.len(), 3);
        let taken = accepts.take();
        assert_eq!(taken.infos, [7, 5, 6]);
        assert!(accepts.is_empty());
        assert!(!accepts.push(8, None), "a new batch starts empty");
        assert_eq!(accepts.take().infos, [8]);
        assert!(accepts.take().infos.is_empty(), "nothing waits");
    }

    #[tokio::test]
    async fn guards_are_held_until_the_taken_batch_is_dropped() {
        let in_flight = InFlight::new();
        let mut accepts = Accepts::new(10, LONG);
        accepts.push(1, Some(in_flight.enter()));
        accepts.push(2, Some(in_flight.enter()));
        assert_eq!(in_flight.count(), 2, "waiting accepts count in flight");
        let taken = accepts.take();
        assert_eq!(in_flight.count(), 2, "taken, not written yet");
        drop(taken.guards);
        assert_eq!(in_flight.count(), 0);
    }

    #[tokio::test]
    async fn due_the_delay_after_the_first_accept() {
        let delay = Duration::from_secs(60);
        let mut accepts = Accepts::new(100, delay);
        let before = Instant::now();
        accepts.push(1, None);
        let after = Instant::now();
        let deadline = accepts.timer.deadline();
        assert!(
            before + delay <= deadline && deadline <= after + delay,
            "due the delay after the first accept"
        );
        accepts.push(2, None);
        assert_eq!(
            accepts.timer.deadline(),
            deadline,
            "a later accept does not push the deadline back"
        );
        assert!(!is_due(&mut accepts).await, "not due before the delay");
        assert_eq!(accepts.take().infos, [1, 2]);

        // The next batch has its own deadline.
        let before = Instant::now();
        accepts.push(3, None);
        assert!(accepts.timer.deadline() >= before + delay);
    }

    #[tokio::test]
    async fn due_at_once_with_no_delay() {
        let mut accepts = Accepts::new(100, Duration::ZERO);
        accepts.push(1, None);
        assert!(is_due(&mut accepts).await);
        accepts.take();
        accepts.push(2, None);
        assert!(is_due(&mut accepts).await, "each batch is due again");
    }
}
