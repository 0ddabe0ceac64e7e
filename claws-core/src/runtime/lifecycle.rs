//! [`Lifecycle`]: a claw's run state, New → Starting → Running → Closed.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::{Error, Result};

enum Stage<R> {
    New,
    Starting,
    Running(R),
    Closed,
}

/// A claw's run state, holding what a running claw owns (`R`: its supervisor task, its stop
/// token). Each misuse gets its typed error: [`Error::AlreadyStarted`], [`Error::NotStarted`],
/// [`Error::Closed`].
///
/// ```
/// use claws_core::runtime::Lifecycle;
/// use claws_core::Error;
/// let life: Lifecycle<&str> = Lifecycle::new("rabbit");
/// assert!(matches!(life.check_running(), Err(Error::NotStarted { .. })));
/// life.begin_start()?;
/// assert!(matches!(life.begin_start(), Err(Error::AlreadyStarted { .. })));
/// life.started("supervisor");
/// assert_eq!(life.close(), Some("supervisor"));
/// assert!(matches!(life.begin_start(), Err(Error::Closed { .. })));
/// # Ok::<(), Error>(())
/// ```
pub struct Lifecycle<R> {
    claw: Arc<str>,
    stage: Mutex<Stage<R>>,
}

impl<R> std::fmt::Debug for Lifecycle<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let stage = match *self.lock() {
            Stage::New => "new",
            Stage::Starting => "starting",
            Stage::Running(_) => "running",
            Stage::Closed => "closed",
        };
        f.debug_struct("Lifecycle")
            .field("claw", &self.claw)
            .field("stage", &stage)
            .finish()
    }
}

impl<R> Lifecycle<R> {
    /// A new claw named `claw`, not started.
    pub fn new(claw: impl Into<Arc<str>>) -> Self {
        Self {
            claw: claw.into(),
            stage: Mutex::new(Stage::New),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stage<R>> {
        // The lock is never held across an await or user code: a poisoned one is still sound.
        self.stage.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn closed(&self) -> Error {
        Error::Closed {
            claw: self.claw.to_string(),
        }
    }

    /// New → Starting. Fails if the claw is starting, running or closed.
    pub fn begin_start(&self) -> Result<()> {
        let mut stage = self.lock();
        match *stage {
            Stage::New => {
                *stage = Stage::Starting;
                Ok(())
            }
            Stage::Starting | Stage::Running(_) => Err(Error::AlreadyStarted {
                claw: self.claw.to_string(),
            }),
            Stage::Closed => Err(self.closed()),
        }
    }

    /// Starting → Running, keeping `running`. If the claw was closed meanwhile, `running` comes
    /// back so that the caller stops it.
    pub fn started(&self, running: R) -> std::result::Result<(), R> {
        let mut stage = self.lock();
        match *stage {
            Stage::Closed => Err(running),
            _ => {
                *stage = Stage::Running(running);
                Ok(())
            }
        }
    }

    /// Starting → New: a failed start may be retried.
    pub fn start_failed(&self) {
        let mut stage = self.lock();
        if matches!(*stage, Stage::Starting) {
            *stage = Stage::New;
        }
    }

    /// Any stage → Closed; what a running claw held, to stop it.
    pub fn close(&self) -> Option<R> {
        match std::mem::replace(&mut *self.lock(), Stage::Closed) {
            Stage::Running(r) => Some(r),
            _ => None,
        }
    }

    /// Ok while starting or running; [`Error::NotStarted`] or [`Error::Closed`] otherwise.
    pub fn check_running(&self) -> Result<()> {
        match *self.lock() {
            Stage::Starting | Stage::Running(_) => Ok(()),
            Stage::New => Err(Error::NotStarted {
                claw: self.claw.to_string(),
            }),
            Stage::Closed => Err(self.closed()),
        }
    }

    /// Whether `close` was called.
    pub fn is_closed(&self) -> bool {
        matches!(*self.lock(), Stage::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_may_be_retried() {
        let life: Lifecycle<u8> = Lifecycle::new("c");
        life.begin_start().unwrap();
        life.start_failed();
        life.begin_start().unwrap();
        assert!(life.check_running().is_ok());
        assert_eq!(life.started(1), Ok(()));
    }

    #[test]
    fn closing_during_start_hands_back_the_task() {
        let life: Lifecycle<u8> = Lifecycle::new("c");
        life.begin_start().unwrap();
        assert_eq!(life.close(), None);
        assert_eq!(life.started(7), Err(7));
        assert!(life.is_closed());
        let err = life.check_running().unwrap_err().to_string();
        assert!(err.contains("`c` is closed"), "{err}");
    }
}
