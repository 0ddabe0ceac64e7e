//! [`Fuse`]: a one-way "this is dead, and here is why".

use tokio::sync::watch;

/// Trips once, keeping the first reason; every waiter wakes. A connection generation carries
/// one: whoever sees it fail (the connection watcher, a consumer, a send) trips it, and the
/// supervisor, the consumers and the sends still waiting on that generation all learn at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use claws_core::runtime::Fuse;
/// let fuse = Fuse::new();
/// assert!(fuse.trip("connection reset"));
/// assert!(!fuse.trip("a later reason")); // the first reason wins
/// assert_eq!(fuse.tripped().await, "connection reset");
/// # }
/// ```
#[derive(Debug)]
pub struct Fuse(watch::Sender<Option<String>>);

impl Default for Fuse {
    fn default() -> Self {
        Self::new()
    }
}

impl Fuse {
    /// An intact fuse.
    pub fn new() -> Self {
        Self(watch::Sender::new(None))
    }

    /// Trips the fuse with `reason`; returns whether this call tripped it (false if it was
    /// already tripped, and the first reason stays).
    pub fn trip(&self, reason: impl Into<String>) -> bool {
        let mut reason = Some(reason.into());
        self.0.send_if_modified(|r| {
            if r.is_none() {
                *r = reason.take();
                true
            } else {
                false
            }
        })
    }

    /// Whether it has tripped.
    pub fn is_tripped(&self) -> bool {
        self.0.borrow().is_some()
    }

    /// The reason, once tripped.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().clone()
    }

    /// Waits until the fuse trips; returns why.
    pub async fn tripped(&self) -> String {
        let mut rx = self.0.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.clone().unwrap_or_default(),
            // The sender is `self`, alive while we borrow it.
            Err(_) => String::from("dropped"),
        };
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_wakes_with_the_first_reason() {
        let fuse = Arc::new(Fuse::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let f = fuse.clone();
                tokio::spawn(async move { f.tripped().await })
            })
            .collect();
        tokio::task::yield_now().await;
        assert!(!fuse.is_tripped());
        fuse.trip("first");
        fuse.trip("second");
        for w in waiters {
            let r = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(r, "first");
        }
        assert_eq!(fuse.reason().as_deref(), Some("first"));
    }
}
