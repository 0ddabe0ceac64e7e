//! Reconnecting: [`Backoff`] (jittered, exponential), [`Endpoints`] (a list walked from a
//! shuffled start) and [`Reconnect`], which tries every endpoint once per round and backs off
//! between rounds; [`Stint`]: whether a connection held, the one rule for starting the delays
//! over.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::InFlight;
use crate::{Error, Result};

/// The shortest time a connection must stay up to count as held ([`Stint`]); the backoff's
/// longest delay when that is longer.
pub const STABLE: Duration = Duration::from_secs(10);

/// One connection's stay, from when it was made ([`begin`](Self::begin),
/// [`watching`](Self::watching)) to when it ended: whether it *held*, the only thing that
/// starts the backoff over from its shortest delay ([`Backoff::after`], [`Reconnect::after`]).
///
/// A connection held when it stayed up for the stable period ([`STABLE`], 10 s, or the
/// backoff's longest delay if that is longer) and, when it watches deliveries, it settled one
/// or was handed none. A connection that dies at once on each connect (a broker that closes it
/// after the handshake, a message that kills it each time it is delivered) never holds, so
/// its reconnections slow down to the longest delay instead of starting over each time; nor
/// does one that stayed up while its deliveries never settled.
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
/// use std::time::Duration;
/// use claws_core::runtime::{Backoff, InFlight, Stint};
/// let deliveries = InFlight::new();
/// let stint = Stint::watching(&deliveries);
/// drop(deliveries.enter()); // a delivery handed out and settled
/// let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// assert!(!backoff.after(&stint), "up for no time: did not hold");
/// tokio::time::advance(Duration::from_secs(10)).await;
/// assert!(backoff.after(&stint), "up 10 s, settled a delivery: held");
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Stint {
    since: Instant,
    /// The deliveries watched, how many had been handed out and how many finished at the start.
    deliveries: Option<(Arc<InFlight>, u64, u64)>,
}

impl Stint {
    /// A connection made now, judged by how long it stays up (a claw without deliveries to
    /// settle, such as a component stream).
    pub fn begin() -> Self {
        Self {
            since: Instant::now(),
            deliveries: None,
        }
    }

    /// A connection made now that hands out `deliveries`: it holds only if it also settled
    /// one of them, or was handed none.
    pub fn watching(deliveries: &Arc<InFlight>) -> Self {
        let finished = deliveries.finished();
        let handed = finished + deliveries.count() as u64;
        Self {
            since: Instant::now(),
            deliveries: Some((deliveries.clone(), handed, finished)),
        }
    }

    /// How long since the connection was made.
    pub fn up_for(&self) -> Duration {
        self.since.elapsed()
    }

    /// Whether the connection held for `stable`: up that long, and if it watches deliveries,
    /// settled one of them or was handed none.
    pub fn held(&self, stable: Duration) -> bool {
        if self.up_for() < stable {
            return false;
        }
        match &self.deliveries {
            None => true,
            Some((d, handed, finished)) => {
                let finished_now = d.finished();
                let handed_now = finished_now + d.count() as u64;
                finished_now > *finished || handed_now == *handed
            }
        }
    }
}

/// Exponential backoff with jitter: the n-th delay is drawn from `[d/2, d]` where
/// `d = min × 2ⁿ` capped at `max`. The jitter spreads a fleet that lost the same node, so it
/// does not come back in lockstep; the lower half-bound keeps it from ever being a tight loop.
///
/// ```
/// use std::time::Duration;
/// use claws_core::runtime::Backoff;
/// let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
/// let first = b.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// for _ in 0..20 { assert!(b.next_delay() <= Duration::from_secs(5)); }
/// b.reset();
/// assert!(b.next_delay() <= Duration::from_millis(100));
/// ```
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    step: u32,
}

impl Backoff {
    /// Delays from `min` doubling up to `max` (`max` below `min` counts as `min`; a zero `min`
    /// counts as 1 ms).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Self {
            min,
            max: max.max(min),
            step: 0,
        }
    }

    /// The shortest and longest delay.
    pub fn bounds(&self) -> (Duration, Duration) {
        (self.min, self.max)
    }

    /// The next delay to wait, and one step further.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .checked_mul(1u32 << self.step.min(20))
            .unwrap_or(self.max)
            .min(self.max);
        self.step = self.step.saturating_add(1);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(fastrand::u64(0..=spread))
    }

    /// Back to the first delay. Prefer [`after`](Self::after), which resets only after a
    /// connection that held.
    pub fn reset(&mut self) {
        self.step = 0;
    }

    /// How long a connection must stay up to count as held: [`STABLE`], or the longest delay
    /// if that is longer.
    pub fn stable(&self) -> Duration {
        self.max.max(STABLE)
    }

    /// The connection of `stint` ended: back to the first delay if it held ([`Stint`]), else
    /// the delays go on growing. Whether it held.
    pub fn after(&mut self, stint: &Stint) -> bool {
        let held = stint.held(self.stable());
        if held {
            self.reset();
        }
        held
    }
}

/// The endpoints of one broker (the nodes of a cluster), walked in turn from a shuffled start,
/// so that a fleet of instances does not stampede the first node of the list.
///
/// ```
/// use claws_core::runtime::Endpoints;
/// let mut e = Endpoints::shuffled(vec!["n1", "n2", "n3"])?;
/// let mut seen: Vec<_> = (0..3).map(|_| *e.next_endpoint()).collect();
/// assert!(e.round_complete());
/// seen.sort();
/// assert_eq!(seen, ["n1", "n2", "n3"]);
/// # Ok::<(), claws_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Endpoints<T> {
    list: Vec<T>,
    next: usize,
    tried: usize,
}

impl<T> Endpoints<T> {
    /// The endpoints in the order given, starting with the first.
    pub fn in_order(list: Vec<T>) -> Result<Self> {
        if list.is_empty() {
            return Err(Error::Config(
                "no broker URL given; set `url` (or `urls` for a cluster)".into(),
            ));
        }
        Ok(Self {
            list,
            next: 0,
            tried: 0,
        })
    }

    /// The endpoints in the order given, starting at a random one.
    pub fn shuffled(list: Vec<T>) -> Result<Self> {
        let mut e = Self::in_order(list)?;
        e.next = fastrand::usize(0..e.list.len());
        Ok(e)
    }

    /// The endpoint to try now; the one after it comes next.
    pub fn next_endpoint(&mut self) -> &T {
        let i = self.advance();
        &self.list[i]
    }

    fn advance(&mut self) -> usize {
        let i = self.next;
        self.next = (i + 1) % self.list.len();
        self.tried += 1;
        i
    }

    /// Whether every endpoint was tried since the last [`new_round`](Self::new_round).
    pub fn round_complete(&self) -> bool {
        self.tried >= self.list.len()
    }

    /// Starts counting a new round (the walk goes on where it was).
    pub fn new_round(&mut self) {
        self.tried = 0;
    }

    /// All endpoints, in the order given.
    pub fn as_slice(&self) -> &[T] {
        &self.list
    }
}

/// Connecting with retries: every endpoint once per round, then a [`Backoff`] delay, until an
/// attempt succeeds or the claw stops.
#[derive(Debug, Clone)]
pub struct Reconnect<T> {
    claw: String,
    endpoints: Endpoints<T>,
    backoff: Backoff,
}

impl<T: fmt::Display + Clone> Reconnect<T> {
    /// Retries over `endpoints` with `backoff` for the claw named `claw` (for logs).
    pub fn new(claw: impl Into<String>, endpoints: Endpoints<T>, backoff: Backoff) -> Self {
        Self {
            claw: claw.into(),
            endpoints,
            backoff,
        }
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &Endpoints<T> {
        &self.endpoints
    }

    /// One round: each endpoint once, in turn (`attempt` gets a copy), until one succeeds. Fails with the last error
    /// if none did (what `start` reports: a broker unreachable on every URL).
    pub async fn round<C, F, Fut>(&mut self, mut attempt: F) -> Result<C>
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = Result<C>>,
    {
        self.endpoints.new_round();
        loop {
            let i = self.endpoints.advance();
            let endpoint = &self.endpoints.list[i];
            match attempt(endpoint.clone()).await {
                Ok(c) => return Ok(c),
                Err(err) if self.endpoints.round_complete() => return Err(err),
                Err(err) => {
                    tracing::warn!(claw = %self.claw, %endpoint, %err, "cannot connect; trying the next endpoint");
                }
            }
        }
    }

    /// Tries until an attempt succeeds, backing off after each round in which none did.
    /// `None` once `stop` is cancelled.
    pub async fn until<C, F, Fut>(&mut self, stop: &CancellationToken, mut attempt: F) -> Option<C>
    where
        F: FnMut(T) -> Fut,
        Fut: Future<Output = Result<C>>,
    {
        self.endpoints.new_round();
        loop {
            let i = self.endpoints.advance();
            let endpoint = &self.endpoints.list[i];
            let result = tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                r = attempt(endpoint.clone()) => r,
            };
            match result {
                Ok(c) => return Some(c),
                Err(err) if self.endpoints.round_complete() => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!(claw = %self.claw, %endpoint, %err, retry_in = ?delay, "reconnection failed");
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    self.endpoints.new_round();
                }
                Err(err) => {
                    tracing::warn!(claw = %self.claw, %endpoint, %err, "reconnection failed; trying the next endpoint");
                }
            }
        }
    }

    /// Back to the first, shortest delay. Prefer [`after`](Self::after), which resets only
    /// after a connection that held.
    pub fn reset(&mut self) {
        self.backoff.reset();
    }

    /// Call when the connection made by the last [`until`](Self::until) or
    /// [`round`](Self::round) ended, before reconnecting. If it held ([`Stint`]), the backoff
    /// starts over and the next attempt comes at once; if not, this waits for the next delay
    /// first, so that a connection that dies at once on each connect is made again no faster
    /// than the backoff allows (without the wait, `until` would reconnect at once: its first
    /// attempt succeeds). `false` if `stop` was cancelled while waiting.
    pub async fn after(&mut self, stint: &Stint, stop: &CancellationToken) -> bool {
        if self.backoff.after(stint) {
            return !stop.is_cancelled();
        }
        let delay = self.backoff.next_delay();
        tracing::warn!(claw = %self.claw, up_for = ?stint.up_for(), retry_in = ?delay,
            "the connection did not hold; backing off before reconnecting");
        tokio::select! {
            biased;
            _ = stop.cancelled() => false,
            _ = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn delays_double_within_jitter_and_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let expected_ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in expected_ceilings {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "{d:?} not in [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        for _ in 0..1000 {
            assert!(b.next_delay() <= Duration::from_secs(1));
        }
    }

    #[test]
    fn jitter_spreads_delays() {
        let draws: std::collections::HashSet<_> = (0..50)
            .map(|_| Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).next_delay())
            .collect();
        assert!(
            draws.len() > 10,
            "50 draws gave only {} distinct delays",
            draws.len()
        );
    }

    #[test]
    fn zero_and_inverted_bounds_are_safe() {
        let mut b = Backoff::new(Duration::ZERO, Duration::ZERO);
        assert!(b.next_delay() <= Duration::from_millis(1));
        assert_eq!(
            b.bounds(),
            (Duration::from_millis(1), Duration::from_millis(1))
        );
        assert!(Endpoints::<u8>::in_order(vec![]).is_err());
    }

    #[test]
    fn shuffled_starts_differ_and_walk_everything() {
        let starts: std::collections::HashSet<_> = (0..64)
            .map(|_| *Endpoints::shuffled(vec![1, 2, 3]).unwrap().next_endpoint())
            .collect();
        assert_eq!(starts.len(), 3, "every endpoint should start some walks");
    }

    #[tokio::test(start_paused = true)]
    async fn until_backs_off_per_round_not_per_endpoint() {
        let endpoints = Endpoints::in_order(vec!["a", "b", "c"]).unwrap();
        let mut r = Reconnect::new(
            "t",
            endpoints,
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1)),
        );
        let tries = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let stop = CancellationToken::new();
        let got = r
            .until(&stop, |e| {
                let n = tries.fetch_add(1, Ordering::SeqCst);
                let e = e.to_string();
                async move {
                    if n == 4 {
                        Ok(e)
                    } else {
                        Err(Error::Config("down".into()))
                    }
                }
            })
            .await;
        // a, b, c fail (one pause), a fails, b succeeds: one backoff of 0.5-1 s.
        assert_eq!(got.as_deref(), Some("b"));
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(500) && took <= Duration::from_secs(1),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn until_stops_when_cancelled() {
        let mut r = Reconnect::new(
            "t",
            Endpoints::in_order(vec!["a"]).unwrap(),
            Backoff::new(Duration::from_secs(60), Duration::from_secs(60)),
        );
        let stop = CancellationToken::new();
        let canceller = {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                stop.cancel();
            })
        };
        let got: Option<()> = r
            .until(&stop, |_| async { Err(Error::Config("down".into())) })
            .await;
        assert!(got.is_none());
        canceller.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_stint_holds_after_the_stable_period_with_settled_deliveries() {
        let stable = Duration::from_secs(10);
        let quiet = Stint::begin();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!quiet.held(stable), "9 s is short of the stable period");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(quiet.held(stable));

        let d = InFlight::new();
        let earlier = d.enter(); // handed out before the connection: not its own
        let stint = Stint::watching(&d);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(stint.held(stable), "up, and handed nothing: held");
        let stuck = d.enter();
        assert!(
            !stint.held(stable),
            "handed one, settled none: did not hold"
        );
        drop(stuck);
        assert!(stint.held(stable), "settled one: held");
        drop(earlier);

        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        assert_eq!(
            b.stable(),
            Duration::from_secs(60),
            "never shorter than the longest delay"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_after_resets_only_a_connection_that_held() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        for _ in 0..4 {
            b.next_delay();
        }
        let brief = Stint::begin();
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(!b.after(&brief));
        // 100 ms doubled 4 times: the fifth delay's ceiling is 1.6 s, so at least 0.8 s.
        assert!(b.next_delay() >= Duration::from_millis(800));
        let long = Stint::begin();
        tokio::time::advance(STABLE).await;
        assert!(b.after(&long));
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    /// A connection that is made, then killed at once, over and over: the reconnections come
    /// no faster than the backoff (before, the delay started over after every connect, and
    /// `until`'s first attempt is immediate, so this was a tight loop).
    #[tokio::test(start_paused = true)]
    async fn connections_that_die_at_once_are_made_no_faster_than_the_backoff() {
        let mut r = Reconnect::new(
            "t",
            Endpoints::in_order(vec!["a"]).unwrap(),
            Backoff::new(Duration::from_millis(100), Duration::from_secs(5)),
        );
        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let mut connects = Vec::new();
        for _ in 0..10 {
            let c = r.until(&stop, |_| async { Ok(()) }).await;
            assert!(c.is_some());
            connects.push(started.elapsed());
            let stint = Stint::begin(); // ... and the connection dies at once
            assert!(r.after(&stint, &stop).await);
        }
        // The waits' floors: [d/2, d] with d = 0.1, 0.2, ... capped at 5 s.
        let floor: Duration = [100u64, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
            .iter()
            .map(|ms| Duration::from_millis(*ms) / 2)
            .sum();
        assert!(
            connects[9] >= floor,
            "10 connects in {:?}, under the backoff's {floor:?}: {connects:?}",
            connects[9]
        );
        for pair in connects.windows(2).skip(6) {
            assert!(
                pair[1] - pair[0] >= Duration::from_millis(2500),
                "{connects:?}"
            );
        }
        // A connection that held: the next attempt comes at once, from the shortest delay.
        let held = Stint::begin();
        tokio::time::advance(STABLE).await;
        let before = tokio::time::Instant::now();
        assert!(r.after(&held, &stop).await);
        assert_eq!(before.elapsed(), Duration::ZERO);
        stop.cancel();
        assert!(
            !r.after(&Stint::begin(), &stop).await,
            "stopped while waiting"
        );
    }

    #[tokio::test]
    async fn round_reports_the_last_error() {
        let mut r = Reconnect::new(
            "t",
            Endpoints::in_order(vec!["a", "b"]).unwrap(),
            Backoff::new(Duration::from_millis(1), Duration::from_millis(1)),
        );
        let err = r
            .round(|e| {
                let e = e.to_string();
                async move { Err::<(), _>(Error::Config(format!("{e} down"))) }
            })
            .await
            .unwrap_err();
        assert!(err.to_string().contains("b down"), "{err}");
    }
}
