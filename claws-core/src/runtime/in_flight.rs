//! [`InFlight`]: how many deliveries or sends are not finished, and a wait for none.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Counts operations in flight (unsettled deliveries, unconfirmed sends) so that `close` can
/// wait until there are none.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use claws_core::runtime::InFlight;
/// let sends = InFlight::new();
/// let guard = sends.enter();
/// assert_eq!(sends.count(), 1);
/// drop(guard);
/// sends.idle().await; // returns at once: nothing in flight
/// # }
/// ```
#[derive(Debug, Default)]
pub struct InFlight {
    count: AtomicUsize,
    /// How many guards were ever dropped (for [`Stint`](crate::runtime::Stint)).
    finished: AtomicU64,
    idle: Notify,
}

/// One operation in flight; dropping it marks it finished.
#[derive(Debug)]
#[must_use = "the operation counts as in flight only while the guard lives"]
pub struct InFlightGuard(Arc<InFlight>);

impl InFlight {
    /// A new tracker, shared.
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    /// Counts one more operation until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.count.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// How many are in flight now.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// How many operations ever finished (their guard dropped): with [`count`](Self::count),
    /// what a connection handed out and settled since a moment ([`Stint`](crate::runtime::Stint)).
    pub fn finished(&self) -> u64 {
        self.finished.load(Ordering::Acquire)
    }

    /// Waits until nothing is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a guard dropped in between still wakes us.
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What `close` does once consuming has stopped: waits until `deadline` for the `deliveries`
/// handed out to be settled and the `sends` to be confirmed. A timeout names what was left;
/// the deliveries return to their queue when the connection closes.
pub async fn drain(
    claw: &str,
    deadline: tokio::time::Instant,
    deliveries: &InFlight,
    sends: &InFlight,
) -> crate::Result<()> {
    let after = deadline.saturating_duration_since(tokio::time::Instant::now());
    if tokio::time::timeout_at(deadline, deliveries.idle())
        .await
        .is_err()
    {
        return Err(crate::Error::Timeout {
            what: format!(
                "claw `{claw}` waiting for {} in-flight stanza(s) to be settled on close (they return to their queue)",
                deliveries.count()
            ),
            after,
        });
    }
    if tokio::time::timeout_at(deadline, sends.idle())
        .await
        .is_err()
    {
        return Err(crate::Error::Timeout {
            what: format!(
                "claw `{claw}` waiting for {} send(s) to be confirmed on close",
                sends.count()
            ),
            after,
        });
    }
    Ok(())
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.finished.fetch_add(1, Ordering::Release);
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_the_last_guard() {
        let t = InFlight::new();
        let guards: Vec<_> = (0..100).map(|_| t.enter()).collect();
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.idle().await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        for g in guards {
            tokio::task::yield_now().await;
            drop(g);
        }
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("idle after the last guard")
            .unwrap();
        assert_eq!(t.count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_lost_wakeup_under_races() {
        for _ in 0..200 {
            let t = InFlight::new();
            let g = t.enter();
            let dropper = tokio::spawn(async move { drop(g) });
            tokio::time::timeout(Duration::from_secs(5), t.idle())
                .await
                .expect("a guard dropped concurrently must wake idle()");
            dropper.await.unwrap();
        }
    }
}
