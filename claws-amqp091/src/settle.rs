//! Acknowledging in batches: one `basic.ack(multiple = true)` for a run of deliveries.
//!
//! A channel's delivery tags grow by one per delivery, and `basic.ack(tag, multiple = true)`
//! acknowledges every delivery of the channel up to `tag` that is still unacknowledged. So the
//! acks of one channel ([`Batcher`]) are coalesced over the **contiguous prefix** of its
//! deliveries whose handlers finished:
//!
//! - each delivery is [`register`](Batcher::register)ed in tag order when it is handed over;
//! - a finished one is [`ack`](Batcher::ack)ed (kept, not sent) or, when it was settled exactly
//!   (`basic.reject`, `basic.nack`, sent and awaited by the caller first), marked
//!   [`settled`](Batcher::settled);
//! - the prefix grows while its first delivery is finished; a delivery finished out of order
//!   (concurrent handlers) waits until every earlier one is, so no ack ever covers a delivery
//!   whose handler is still running, and an exact settlement is on the wire before any ack
//!   that covers its tag;
//! - the prefix is sent as one ack, carrying the highest *acked* tag in it (RabbitMQ refuses
//!   an ack whose own tag is no longer outstanding), once it holds `bound` acks, else after
//!   `delay`, and at once when the claw closes. Sends are serialised, so a lower tag never
//!   follows a higher one.
//!
//! Each acked delivery keeps what it holds (its in-flight guard, its channel) until the ack
//! that covers it was written: the claw's close waits for that, so a graceful close loses no
//! ack. A delivery registered and never finished (its acker dropped without a runtime) holds
//! the prefix back: the broker then redelivers what follows it, which is safe.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claws_core::runtime::{CancellationToken, InFlightGuard};
use lapin::options::BasicAckOptions;
use lapin::Channel;

use crate::session::Session;

/// One delivery's acknowledgement, as the batcher sends it.
pub(crate) trait Ack: Send + 'static {
    /// Acknowledges this delivery and every earlier unacknowledged one of its channel
    /// (`basic.ack(multiple = true)`); false when it could not be sent (the channel is gone, so
    /// the broker requeues them all).
    fn ack_up_to(self) -> impl Future<Output = bool> + Send;
}

/// How long a partial batch waits for more acks before it is sent.
const DELAY: Duration = Duration::from_millis(2);

/// The batcher of one consuming channel with `prefetch`: a batch is sent once it holds a
/// quarter of the prefetch (at most 256), so the broker's window never waits on it long.
pub(crate) fn for_channel(prefetch: u16, closing: CancellationToken) -> Batcher<LapinAck> {
    let bound = usize::from(prefetch).div_ceil(4).clamp(1, 256);
    Batcher::new(bound, DELAY, closing)
}

/// A finished 0-9-1 delivery waiting in a batch: what it held stays held until the ack that
/// covers it is written.
pub(crate) struct LapinAck {
    pub(crate) acker: lapin::Acker,
    /// The delivering channel, kept open until this delivery is acknowledged.
    pub(crate) channel: Arc<Channel>,
    pub(crate) session: Arc<Session>,
    /// The claw's close waits for it.
    pub(crate) guard: Option<InFlightGuard>,
}

impl Ack for LapinAck {
    async fn ack_up_to(self) -> bool {
        let multiple = BasicAckOptions { multiple: true };
        // lapin may never resolve a frame queued on a connection that just failed.
        let sent = tokio::select! {
            r = self.acker.ack(multiple) => matches!(r, Ok(true)),
            _ = self.session.died() => false,
        };
        drop((self.channel, self.guard));
        sent
    }
}

/// The acks of one channel; see the module docs. Cloning is cheap; every clone is the same.
pub(crate) struct Batcher<A: Ack> {
    inner: Arc<Inner<A>>,
}

impl<A: Ack> Clone for Batcher<A> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<A> {
    state: Mutex<State<A>>,
    /// Held while a batch is taken and written: batches go out in order.
    sending: tokio::sync::Mutex<()>,
    bound: usize,
    delay: Duration,
    closing: CancellationToken,
}

enum Slot<A> {
    /// Its handler is running.
    Open,
    /// Finished: to be covered by the next ack.
    Acked(A),
    /// Settled exactly by its own frame (already written).
    Settled,
}

struct State<A> {
    /// Registered deliveries not yet in the prefix, in tag order.
    window: VecDeque<(u64, Slot<A>)>,
    /// The highest acked delivery of the prefix not yet sent: its ack covers the batch.
    last: Option<A>,
    /// The other acked deliveries of that batch, released once the ack is written.
    covered: Vec<A>,
    /// Acks in the batch.
    pending: usize,
    /// A flush is scheduled.
    timer: bool,
}

impl<A: Ack> Batcher<A> {
    /// A batcher that sends once `bound` acks wait (at least 1), or `delay` after the first, and
    /// at once when `closing` is cancelled.
    pub(crate) fn new(bound: usize, delay: Duration, closing: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    window: VecDeque::new(),
                    last: None,
                    covered: Vec::new(),
                    pending: 0,
                    timer: false,
                }),
                sending: tokio::sync::Mutex::new(()),
                bound: bound.max(1),
                delay,
                closing,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<A>> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A delivery handed over, in tag order (its handler runs from now on).
    pub(crate) fn register(&self, tag: u64) {
        let mut state = self.state();
        debug_assert!(
            state.window.back().is_none_or(|(t, _)| *t < tag),
            "delivery tags are registered in order"
        );
        state.window.push_back((tag, Slot::Open));
    }

    /// The handler of `tag` finished well: `ack` is sent (covered by a later tag's) once every
    /// earlier delivery finished too. Gives `ack` back if `tag` was not registered here.
    pub(crate) async fn ack(&self, tag: u64, ack: A) -> Result<(), A> {
        self.finish(tag, Slot::Acked(ack))
            .map_err(|slot| match slot {
                Slot::Acked(a) => a,
                _ => unreachable!("given back as given"),
            })?;
        self.after_finish().await;
        Ok(())
    }

    /// `tag` was settled exactly, and its frame written (or its channel is gone).
    pub(crate) async fn settled(&self, tag: u64) {
        if self.finish(tag, Slot::Settled).is_ok() {
            self.after_finish().await;
        }
    }

    /// Marks `tag` finished and moves the finished head of the window into the batch.
    fn finish(&self, tag: u64, slot: Slot<A>) -> Result<(), Slot<A>> {
        let mut state = self.state();
        let Ok(i) = state.window.binary_search_by_key(&tag, |(t, _)| *t) else {
            return Err(slot);
        };
        if !matches!(state.window[i].1, Slot::Open) {
            return Err(slot);
        }
        state.window[i].1 = slot;
        let state = &mut *state;
        while matches!(state.window.front(), Some((_, s)) if !matches!(s, Slot::Open)) {
            if let Some((_, Slot::Acked(a))) = state.window.pop_front() {
                if let Some(previous) = state.last.replace(a) {
                    state.covered.push(previous);
                }
                state.pending += 1;
            }
        }
        Ok(())
    }

    /// Sends the batch if it is full, else makes sure a flush is scheduled.
    async fn after_finish(&self) {
        let schedule = {
            let mut state = self.state();
            if state.pending >= self.inner.bound {
                false
            } else if state.pending > 0 && !state.timer {
                state.timer = true;
                true
            } else {
                return;
            }
        };
        if !schedule {
            self.flush().await;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let this = self.clone();
                handle.spawn(async move {
                    tokio::select! {
                        _ = tokio::time::sleep(this.inner.delay) => {}
                        _ = this.inner.closing.cancelled() => {}
                    }
                    this.flush().await;
                });
            }
            Err(_) => self.flush().await,
        }
    }

    /// Sends the batch now (nothing if it is empty).
    pub(crate) async fn flush(&self) {
        let _sending = self.inner.sending.lock().await;
        let (last, covered) = {
            let mut state = self.state();
            state.timer = false;
            state.pending = 0;
            (state.last.take(), std::mem::take(&mut state.covered))
        };
        if let Some(last) = last {
            last.ack_up_to().await;
        }
        // What the batch held (in-flight guards, channels) goes only now.
        drop(covered);
    }

    /// Registered deliveries whose handlers have not finished, and acks not yet sent (tests).
    #[cfg(test)]
    fn counts(&self) -> (usize, usize) {
        let state = self.state();
        (state.window.len(), state.pending)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    type Log = Arc<Mutex<Vec<u64>>>;

    /// Records the tag each ack was sent with; counts those alive (their guards).
    struct Fake {
        tag: u64,
        log: Log,
        alive: Arc<AtomicUsize>,
    }

    impl Ack for Fake {
        async fn ack_up_to(self) -> bool {
            self.log.lock().unwrap().push(self.tag);
            true
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    struct Rig {
        batcher: Batcher<Fake>,
        log: Log,
        alive: Arc<AtomicUsize>,
        closing: CancellationToken,
    }

    impl Rig {
        fn new(bound: usize, delay: Duration) -> Self {
            let closing = CancellationToken::new();
            Self {
                batcher: Batcher::new(bound, delay, closing.clone()),
                log: Log::default(),
                alive: Arc::new(AtomicUsize::new(0)),
                closing,
            }
        }

        fn fake(&self, tag: u64) -> Fake {
            self.alive.fetch_add(1, Ordering::SeqCst);
            Fake {
                tag,
                log: self.log.clone(),
                alive: self.alive.clone(),
            }
        }

        async fn ack(&self, tag: u64) {
            let fake = self.fake(tag);
            assert!(
                self.batcher.ack(tag, fake).await.is_ok(),
                "{tag} registered"
            );
        }

        fn sent(&self) -> Vec<u64> {
            self.log.lock().unwrap().clone()
        }
    }

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test(start_paused = true)]
    async fn a_full_prefix_is_one_ack_with_its_highest_tag() {
        let rig = Rig::new(4, LONG);
        for tag in 1..=8 {
            rig.batcher.register(tag);
        }
        for tag in 1..=3 {
            rig.ack(tag).await;
        }
        assert!(rig.sent().is_empty(), "below the bound nothing is sent");
        assert_eq!(rig.alive.load(Ordering::SeqCst), 3, "held until sent");
        rig.ack(4).await;
        assert_eq!(rig.sent(), [4]);
        assert_eq!(rig.alive.load(Ordering::SeqCst), 0, "released once written");
        for tag in 5..=8 {
            rig.ack(tag).await;
        }
        assert_eq!(rig.sent(), [4, 8]);
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_order_completions_wait_for_the_prefix() {
        let rig = Rig::new(2, LONG);
        for tag in 1..=4 {
            rig.batcher.register(tag);
        }
        // 2, 3 and 4 finish while 1's handler still runs: nothing may cover them yet.
        for tag in [4, 3, 2] {
            rig.ack(tag).await;
        }
        assert!(
            rig.sent().is_empty(),
            "1 is still running: {:?}",
            rig.sent()
        );
        assert_eq!(rig.batcher.counts(), (4, 0));
        rig.ack(1).await;
        assert_eq!(rig.sent(), [4], "one ack covers 1 to 4");
        assert_eq!(rig.batcher.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exact_settlement_is_never_the_acks_tag() {
        let rig = Rig::new(10, LONG);
        for tag in 1..=4 {
            rig.batcher.register(tag);
        }
        rig.ack(1).await;
        rig.ack(2).await;
        // 3 was rejected by its own frame: the batch's ack is 2's (3 is no longer outstanding
        // on the broker, which would refuse an ack carrying its tag).
        rig.batcher.settled(3).await;
        rig.batcher.flush().await;
        assert_eq!(rig.sent(), [2]);
        // A prefix of exact settlements alone sends nothing.
        rig.batcher.settled(4).await;
        rig.batcher.flush().await;
        assert_eq!(rig.sent(), [2]);
        assert_eq!(rig.batcher.counts(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_delivery_holds_back_everything_after_it() {
        let rig = Rig::new(1, Duration::from_millis(1));
        for tag in 1..=3 {
            rig.batcher.register(tag);
        }
        rig.ack(1).await;
        assert_eq!(rig.sent(), [1], "bound 1: sent at once");
        rig.ack(3).await;
        // Long past the delay (virtual time: the test's clock is paused and advances itself).
        tokio::time::sleep(Duration::from_millis(50)).await;
        rig.batcher.flush().await;
        assert_eq!(rig.sent(), [1], "2 still running, so 3 waits");
        rig.batcher.settled(2).await;
        assert_eq!(rig.sent(), [1, 3]);
    }

    /// Waits (bounded, generously) until `want` was sent.
    async fn until_sent(rig: &Rig, want: &[u64]) {
        for _ in 0..10_000 {
            if rig.sent() == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("sent {:?}, not {want:?}", rig.sent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_batch_goes_after_the_delay() {
        let rig = Rig::new(100, Duration::from_millis(5));
        for tag in 1..=3 {
            rig.batcher.register(tag);
        }
        rig.ack(1).await;
        rig.ack(2).await;
        until_sent(&rig, &[2]).await;
        rig.ack(3).await;
        until_sent(&rig, &[2, 3]).await;
        assert_eq!(rig.alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn closing_sends_at_once() {
        let rig = Rig::new(100, LONG);
        rig.batcher.register(7);
        rig.ack(7).await;
        tokio::task::yield_now().await;
        assert!(rig.sent().is_empty(), "an hour's delay");
        rig.closing.cancel();
        // The scheduled flush wakes on the cancellation, not after the delay.
        until_sent(&rig, &[7]).await;
        assert_eq!(rig.alive.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_or_finished_tags_are_given_back() {
        let rig = Rig::new(10, LONG);
        rig.batcher.register(2);
        let fake = rig.fake(1);
        assert!(rig.batcher.ack(1, fake).await.is_err(), "never registered");
        rig.ack(2).await;
        let fake = rig.fake(2);
        assert!(rig.batcher.ack(2, fake).await.is_err(), "acked already");
        rig.batcher.flush().await;
        assert_eq!(rig.sent(), [2]);
    }

    #[tokio::test(start_paused = true)]
    async fn tags_with_gaps_batch_as_well() {
        // A delivery rejected before it was handed over (hostile headers) is never
        // registered: its tag is a gap.
        let rig = Rig::new(3, LONG);
        for tag in [1, 3, 4] {
            rig.batcher.register(tag);
        }
        for tag in [4, 3, 1] {
            rig.ack(tag).await;
        }
        assert_eq!(rig.sent(), [4]);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_batches_go_out_in_tag_order() {
        let rig = Rig::new(1, LONG);
        let n = 200;
        for tag in 1..=n {
            rig.batcher.register(tag);
        }
        let mut tasks = Vec::new();
        let rig = Arc::new(rig);
        for tag in (1..=n).rev() {
            let rig = rig.clone();
            tasks.push(tokio::spawn(async move { rig.ack(tag).await }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        rig.batcher.flush().await;
        let sent = rig.sent();
        assert!(sent.windows(2).all(|w| w[0] < w[1]), "{sent:?}");
        assert_eq!(sent.last(), Some(&n));
        assert_eq!(rig.alive.load(Ordering::SeqCst), 0);
    }
}
