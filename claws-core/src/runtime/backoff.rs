//! Reconnecting: [`Backoff`] (jittered, exponential), [`Endpoints`] (a list walked from a
//! shuffled start) and [`Reconnect`], which tries every endpoint once per round and backs off
//! between rounds.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::{Error, Result};

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

    /// Back to the first delay (after a connection that held).
    pub fn reset(&mut self) {
        self.step = 0;
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

    /// Back to the first, shortest delay (after a connection that held).
    pub fn reset(&mut self) {
        self.backoff.reset();
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
