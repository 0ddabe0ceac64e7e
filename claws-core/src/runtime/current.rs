//! [`Current`]: the connection that serves sends now, and waiting for one.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::{Error, Result};

/// Something that can die: a connection generation.
pub trait Alive {
    /// Whether it can still be used.
    fn is_alive(&self) -> bool;
}

impl<T: Alive + ?Sized> Alive for std::sync::Arc<T> {
    fn is_alive(&self) -> bool {
        (**self).is_alive()
    }
}

#[derive(Debug, Clone)]
enum Slot<S> {
    Idle,
    Down,
    Up(S),
    Closed,
}

/// The connection (generation `S`) that serves sends now, if any. The supervisor sets it
/// [`up`](Self::up) and [`down`](Self::down); a send takes it with [`wait_live`](Self::wait_live),
/// which waits through an outage, bounded.
#[derive(Debug)]
pub struct Current<S> {
    claw: std::sync::Arc<str>,
    slot: watch::Sender<Slot<S>>,
}

impl<S: Clone + Alive> Current<S> {
    /// Nothing yet: the claw is not started.
    pub fn new(claw: impl Into<std::sync::Arc<str>>) -> Self {
        Self {
            claw: claw.into(),
            slot: watch::Sender::new(Slot::Idle),
        }
    }

    /// Started, and no connection at the moment.
    pub fn down(&self) {
        self.slot.send_if_modified(|s| match s {
            Slot::Closed | Slot::Down => false,
            _ => {
                *s = Slot::Down;
                true
            }
        });
    }

    /// Down, if the current connection is the one `is_it` recognises (a late failure of an
    /// old generation must not take down its successor). Returns whether it went down.
    pub fn down_if(&self, is_it: impl Fn(&S) -> bool) -> bool {
        self.slot.send_if_modified(|s| match s {
            Slot::Up(current) if is_it(current) => {
                *s = Slot::Down;
                true
            }
            _ => false,
        })
    }

    /// `generation` serves sends from now on (unless the claw was closed).
    pub fn up(&self, generation: S) {
        self.slot.send_if_modified(|s| match s {
            Slot::Closed => false,
            _ => {
                *s = Slot::Up(generation);
                true
            }
        });
    }

    /// Closed for good: waiting sends fail with [`Error::Closed`].
    pub fn close(&self) {
        self.slot.send_replace(Slot::Closed);
    }

    /// Back to not started (after a failed start).
    pub fn reset(&self) {
        self.slot.send_replace(Slot::Idle);
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        matches!(*self.slot.borrow(), Slot::Closed)
    }

    /// The live connection now, if there is one.
    pub fn get(&self) -> Option<S> {
        match &*self.slot.borrow() {
            Slot::Up(s) if s.is_alive() => Some(s.clone()),
            _ => None,
        }
    }

    /// The live connection, waiting for one until `started + timeout`: then
    /// [`Error::Disconnected`]. [`Error::NotStarted`] before `start`, [`Error::Closed`] after
    /// `close`.
    pub async fn wait_live(&self, started: Instant, timeout: Duration) -> Result<S> {
        let deadline = started + timeout;
        let mut rx = self.slot.subscribe();
        loop {
            match &*rx.borrow_and_update() {
                Slot::Up(s) if s.is_alive() => return Ok(s.clone()),
                Slot::Closed => {
                    return Err(Error::Closed {
                        claw: self.claw.to_string(),
                    })
                }
                Slot::Idle => {
                    return Err(Error::NotStarted {
                        claw: self.claw.to_string(),
                    })
                }
                Slot::Up(_) | Slot::Down => {}
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // The sender lives in `self`: cannot happen while we borrow it.
                Ok(Err(_)) => {
                    return Err(Error::Closed {
                        claw: self.claw.to_string(),
                    })
                }
                Err(_) => {
                    return Err(Error::Disconnected {
                        claw: self.claw.to_string(),
                        waited: started.elapsed(),
                    })
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[derive(Debug, Default)]
    struct Gen(AtomicBool);
    impl Alive for Gen {
        fn is_alive(&self) -> bool {
            !self.0.load(Ordering::SeqCst)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sends_wait_through_an_outage() {
        let c = Arc::new(Current::<Arc<Gen>>::new("c"));
        assert!(matches!(
            c.wait_live(Instant::now(), Duration::from_secs(1)).await,
            Err(Error::NotStarted { .. })
        ));
        c.down();
        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.wait_live(Instant::now(), Duration::from_secs(10)).await })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        c.up(Arc::new(Gen::default()));
        assert!(waiter.await.unwrap().is_ok());
        let err = {
            c.down();
            c.wait_live(Instant::now(), Duration::from_secs(3))
                .await
                .unwrap_err()
        };
        assert!(matches!(err, Error::Disconnected { .. }), "{err}");
        c.close();
        assert!(matches!(
            c.wait_live(Instant::now(), Duration::from_secs(1)).await,
            Err(Error::Closed { .. })
        ));
        c.up(Arc::new(Gen::default()));
        assert!(c.is_closed(), "a closed claw stays closed");
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_generation_is_not_handed_out() {
        let c = Current::<Arc<Gen>>::new("c");
        let g = Arc::new(Gen::default());
        c.up(g.clone());
        assert!(c.get().is_some());
        g.0.store(true, Ordering::SeqCst);
        assert!(c.get().is_none());
        assert!(!c.down_if(|s| !Arc::ptr_eq(s, &g)));
        assert!(c.down_if(|s| Arc::ptr_eq(s, &g)));
    }
}
