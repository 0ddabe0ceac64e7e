//! Accepting in ranges: one `disposition` frame for a run of deliveries.
//!
//! An AMQP 1.0 `disposition` settles the deliveries `first..=last` of a session at once. The
//! ackers of a link put their accepts in its [`Accepts`] queue and the link task writes them
//! together (fe2o3's `accept_all`, which sends one frame per run of consecutive delivery ids):
//!
//! - a delivery enters the queue only once its handler finished (its acker accepts it), and a
//!   range only ever names the deliveries in the queue, so nothing is settled before its
//!   handler returned, whatever order handlers finish in;
//! - the link task is woken by the first accept of a batch (it then writes the batch
//!   [`DELAY`] later) and by the one that makes it [`wake_at`](Accepts::wake_at) long: the
//!   bound (a quarter of the credit), or fewer when the link is out of credit and that many
//!   settlements let credit be granted again, or 1 once the claw closes. Other accepts wake
//!   nobody: one task switch per batch instead of one per delivery;
//! - rejects (dead-lettering, with their reason) and releases (redelivery) do not go through
//!   here: each is its own disposition, written when asked for;
//! - each accepted delivery keeps its in-flight guard until the frame that settles it was
//!   handed to the session, so the claw's `close` waits for the batch. Once the link is gone
//!   the queue is [`close`](Accepts::close)d: what waited is dropped (the broker redelivers
//!   it) and later accepts are refused.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use claws_core::runtime::InFlightGuard;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

/// How long a partial batch waits for more accepts before it is written.
pub(crate) const DELAY: Duration = Duration::from_millis(2);

/// The batch bound of a link with `credit`: a quarter of it (at most 256), so the broker's
/// window never waits long on a batch.
pub(crate) fn bound_for(credit: u32) -> usize {
    usize::try_from(credit.div_ceil(4))
        .unwrap_or(256)
        .clamp(1, 256)
}

/// The accepts of one link waiting to be written as ranges, in the order they were asked for.
/// `T` is what names a delivery on the wire (fe2o3's `DeliveryInfo`).
pub(crate) struct Accepts<T> {
    state: Mutex<State<T>>,
    notify: Notify,
    /// The queue length whose accept wakes the link task (besides a batch's first).
    wake_at: AtomicUsize,
    bound: usize,
}

struct State<T> {
    infos: Vec<T>,
    /// Released once the batch was written.
    guards: Vec<InFlightGuard>,
    /// The link is gone.
    closed: bool,
}

/// A batch taken out to be written: the deliveries, and the guards to drop once it was.
pub(crate) struct Taken<T> {
    /// The deliveries to accept.
    pub(crate) infos: Vec<T>,
    /// Their in-flight guards: drop them after writing.
    pub(crate) guards: Vec<InFlightGuard>,
}

impl<T> Accepts<T> {
    /// An empty queue whose link task is woken at `bound` accepts (at least 1).
    pub(crate) fn new(bound: usize) -> Self {
        let bound = bound.max(1);
        Self {
            state: Mutex::new(State {
                infos: Vec::with_capacity(bound),
                guards: Vec::with_capacity(bound),
                closed: false,
            }),
            notify: Notify::new(),
            wake_at: AtomicUsize::new(bound),
            bound,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a finished delivery's accept; false (and `guard` released) when the link is
    /// gone, so the broker redelivers it.
    pub(crate) fn push(&self, info: T, guard: Option<InFlightGuard>) -> bool {
        let n = {
            let mut state = self.state();
            if state.closed {
                return false;
            }
            state.infos.push(info);
            state.guards.extend(guard);
            state.infos.len()
        };
        if n == 1 || n == self.wake_at.load(Ordering::SeqCst) {
            self.notify.notify_one();
        }
        true
    }

    /// Accepts waiting.
    pub(crate) fn len(&self) -> usize {
        self.state().infos.len()
    }

    /// The bound a batch is written at.
    pub(crate) fn bound(&self) -> usize {
        self.bound
    }

    /// Wakes the link task once `n` accepts wait (clamped to 1..=bound); returns how many
    /// wait now (if already `n` or more, nobody will be woken for them: write them).
    pub(crate) fn wake_at(&self, n: usize) -> usize {
        self.wake_at.store(n.clamp(1, self.bound), Ordering::SeqCst);
        self.len()
    }

    /// Resolves when a batch started or reached [`wake_at`](Self::wake_at) (a wake-up given
    /// while nobody waited is kept for the next call).
    pub(crate) fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Takes the waiting accepts out (empty if none wait).
    pub(crate) fn take(&self) -> Taken<T> {
        let mut state = self.state();
        let cap = self.bound;
        Taken {
            infos: std::mem::replace(&mut state.infos, Vec::with_capacity(cap)),
            guards: std::mem::take(&mut state.guards),
        }
    }

    /// The link is gone: drops what waits and refuses what comes.
    pub(crate) fn close(&self) {
        let taken = {
            let mut state = self.state();
            state.closed = true;
            (
                std::mem::take(&mut state.infos),
                std::mem::take(&mut state.guards),
            )
        };
        drop(taken);
    }
}

/// Closes the accepts of a link when its task ends, however it ends (failed or aborted).
pub(crate) struct CloseOnDrop<'a, T>(pub(crate) &'a Accepts<T>);

impl<T> Drop for CloseOnDrop<'_, T> {
    fn drop(&mut self) {
        self.0.close();
    }
}

#[cfg(test)]
mod tests {
    //! No clock needed: what is tested is who gets woken and what is taken.
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use claws_core::runtime::InFlight;

    use super::*;

    /// Whether a wake-up is waiting (consumes it).
    fn woken<T>(accepts: &Accepts<T>) -> bool {
        let mut notified = pin!(accepts.notified());
        let mut cx = Context::from_waker(Waker::noop());
        notified.as_mut().poll(&mut cx) == Poll::Ready(())
    }

    #[test]
    fn the_bound_is_a_quarter_of_the_credit_within_1_and_256() {
        assert_eq!(bound_for(0), 1);
        assert_eq!(bound_for(1), 1);
        assert_eq!(bound_for(10), 3);
        assert_eq!(bound_for(1000), 250);
        assert_eq!(bound_for(u32::MAX), 256);
    }

    #[test]
    fn the_first_accept_and_the_bound_wake_the_link_task_nothing_between() {
        let accepts = Accepts::new(4);
        assert!(!woken(&accepts));
        assert!(accepts.push(7, None));
        assert!(woken(&accepts), "a batch started: its delay runs from now");
        for id in [5, 6] {
            assert!(accepts.push(id, None));
            assert!(!woken(&accepts), "{id}: no task switch per accept");
        }
        assert!(accepts.push(8, None));
        assert!(woken(&accepts), "the bound");
        let taken = accepts.take();
        assert_eq!(taken.infos, [7, 5, 6, 8], "in the order asked");
        assert_eq!(accepts.len(), 0);
        assert!(accepts.push(9, None));
        assert!(woken(&accepts), "the next batch's first");
    }

    #[test]
    fn a_lowered_wake_point_wakes_sooner_and_says_what_already_waits() {
        let accepts = Accepts::new(250);
        accepts.push(1, None);
        assert!(woken(&accepts));
        accepts.push(2, None);
        // Out of credit: 3 settlements let credit be granted again.
        assert_eq!(accepts.wake_at(3), 2, "two wait already");
        accepts.push(3, None);
        assert!(woken(&accepts), "the third wakes the link task");
        assert_eq!(
            accepts.wake_at(2),
            3,
            "already past it: the caller writes them"
        );
        assert_eq!(accepts.wake_at(0), 3, "clamped to 1");
        assert_eq!(accepts.wake_at(10_000), 3, "clamped to the bound");
        assert_eq!(accepts.take().infos, [1, 2, 3]);
    }

    #[test]
    fn guards_are_held_until_the_taken_batch_is_dropped() {
        let in_flight = InFlight::new();
        let accepts = Accepts::new(10);
        accepts.push(1, Some(in_flight.enter()));
        accepts.push(2, Some(in_flight.enter()));
        assert_eq!(in_flight.count(), 2, "waiting accepts count in flight");
        let taken = accepts.take();
        assert_eq!(in_flight.count(), 2, "taken, not written yet");
        drop(taken.guards);
        assert_eq!(in_flight.count(), 0);
    }

    #[test]
    fn a_closed_queue_drops_what_waits_and_refuses_more() {
        let in_flight = InFlight::new();
        let accepts = Accepts::new(10);
        accepts.push(1, Some(in_flight.enter()));
        {
            let _link_task = CloseOnDrop(&accepts);
        }
        assert_eq!(in_flight.count(), 0, "the broker redelivers what waited");
        assert!(!accepts.push(2, Some(in_flight.enter())), "refused");
        assert_eq!(in_flight.count(), 0, "its guard released");
        assert!(accepts.take().infos.is_empty());
    }
}
