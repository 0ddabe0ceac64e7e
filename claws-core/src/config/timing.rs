//! [`Timing`]: the waits every claw has, with one name, unit and default each.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::Backoff;
use crate::{Error, Result};

/// How long a claw waits, and how it retries: the same keys, the same defaults, in every claw.
///
/// In a config file (and `CLAWS_*` variables) these are top-level keys, written as
/// [humantime](https://docs.rs/humantime) durations:
///
/// ```toml
/// send_timeout = "30s"      # a send waits this long for a connection and the broker's answer
/// connect_timeout = "5s"    # one connection attempt (TCP, TLS, protocol handshake)
/// close_timeout = "30s"     # close waits this long for in-flight deliveries and confirms
/// heartbeat = "10s"         # AMQP heartbeat / idle time-out ("0s" turns it off)
/// reconnect_min = "100ms"   # the first pause before reconnecting…
/// reconnect_max = "5s"      # …doubling (jittered) up to this, per round over the endpoints
/// ```
///
/// In code, every claw's builder has a setter per field through [`TimingBuilder`], and
/// `timing(Timing)` to set them all.
///
/// ```
/// use std::time::Duration;
/// let mut timing = claws_core::config::Timing::default();
/// timing.send_timeout = Duration::from_secs(5);
/// assert_eq!(timing.connect_timeout, Duration::from_secs(5));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Timing {
    /// How long a send waits for a live connection and then for the broker's confirmation,
    /// before it fails with [`Error::Disconnected`] (default 30 s).
    #[serde(with = "humantime_serde")]
    pub send_timeout: Duration,
    /// The bound on one connection attempt, handshakes included (default 5 s).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// How long `close` waits for in-flight deliveries and sends to finish (default 30 s).
    #[serde(with = "humantime_serde")]
    pub close_timeout: Duration,
    /// The AMQP heartbeat (0-9-1) or idle time-out (1.0) that notices a dead peer (default
    /// 10 s; zero turns it off, which is not recommended). The component claw's keepalive is
    /// its own `ping`.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
    /// The first pause before reconnecting (default 100 ms).
    #[serde(with = "humantime_serde")]
    pub reconnect_min: Duration,
    /// The longest pause between reconnection rounds (default 5 s): pauses double from
    /// `reconnect_min`, jittered, up to this.
    #[serde(with = "humantime_serde")]
    pub reconnect_max: Duration,
}

impl Timing {
    /// The default send time-out.
    pub const SEND_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default connect time-out.
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
    /// The default close time-out.
    pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default heartbeat.
    pub const HEARTBEAT: Duration = Duration::from_secs(10);
    /// The default first reconnection pause.
    pub const RECONNECT_MIN: Duration = Duration::from_millis(100);
    /// The default longest reconnection pause.
    pub const RECONNECT_MAX: Duration = Duration::from_secs(5);

    /// A fresh reconnection backoff from `reconnect_min` to `reconnect_max`.
    pub fn backoff(&self) -> Backoff {
        Backoff::new(self.reconnect_min, self.reconnect_max)
    }

    /// The heartbeat, or `None` when it is off.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        (!self.heartbeat.is_zero()).then_some(self.heartbeat)
    }

    /// Checks that the time-outs that bound a wait are not zero.
    pub fn validate(&self) -> Result<()> {
        for (key, value) in [
            ("send_timeout", self.send_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(Error::Config(format!(
                    "`{key}` must be more than 0 (write a duration such as \"5s\")"
                )));
            }
        }
        if self.reconnect_max < self.reconnect_min {
            return Err(Error::Config(format!(
                "`reconnect_max` ({:?}) is below `reconnect_min` ({:?}); the pauses grow from min to max",
                self.reconnect_max, self.reconnect_min
            )));
        }
        Ok(())
    }
}

/// The [`Timing`] setters every claw builder has, written once (bring the trait into scope:
/// `use claws_core::config::TimingBuilder;`, or the facade's prelude).
///
/// ```
/// use std::time::Duration;
/// use claws_core::config::{Timing, TimingBuilder};
///
/// #[derive(Default)]
/// struct MyClawBuilder { timing: Timing }
///
/// impl TimingBuilder for MyClawBuilder {
///     fn timing_mut(&mut self) -> &mut Timing { &mut self.timing }
/// }
///
/// let b = MyClawBuilder::default().send_timeout(Duration::from_secs(2));
/// assert_eq!(b.timing.send_timeout, Duration::from_secs(2));
/// ```
pub trait TimingBuilder: Sized {
    /// The builder's timing, for the provided setters.
    fn timing_mut(&mut self) -> &mut Timing;

    /// All time-outs, the heartbeat and the reconnection bounds at once.
    fn timing(mut self, timing: Timing) -> Self {
        *self.timing_mut() = timing;
        self
    }

    /// [`Timing::send_timeout`] (default 30 s).
    fn send_timeout(mut self, timeout: Duration) -> Self {
        self.timing_mut().send_timeout = timeout;
        self
    }

    /// [`Timing::connect_timeout`] (default 5 s).
    fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timing_mut().connect_timeout = timeout;
        self
    }

    /// [`Timing::close_timeout`] (default 30 s).
    fn close_timeout(mut self, timeout: Duration) -> Self {
        self.timing_mut().close_timeout = timeout;
        self
    }

    /// [`Timing::heartbeat`] (default 10 s; zero turns it off).
    fn heartbeat(mut self, interval: Duration) -> Self {
        self.timing_mut().heartbeat = interval;
        self
    }

    /// [`Timing::reconnect_min`] and [`Timing::reconnect_max`] (default 100 ms to 5 s; a
    /// `max` below `min` counts as `min`).
    fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        let timing = self.timing_mut();
        timing.reconnect_min = min;
        timing.reconnect_max = max.max(min);
        self
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            send_timeout: Self::SEND_TIMEOUT,
            connect_timeout: Self::CONNECT_TIMEOUT,
            close_timeout: Self::CLOSE_TIMEOUT,
            heartbeat: Self::HEARTBEAT,
            reconnect_min: Self::RECONNECT_MIN,
            reconnect_max: Self::RECONNECT_MAX,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let mut t = Timing::default();
        assert!(t.validate().is_ok());
        t.send_timeout = Duration::ZERO;
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("send_timeout"));
        let t = Timing {
            reconnect_min: Duration::from_secs(10),
            ..Timing::default()
        };
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("reconnect_max"));
    }

    #[test]
    fn a_zero_heartbeat_is_off() {
        let mut t = Timing::default();
        assert_eq!(t.heartbeat_interval(), Some(Duration::from_secs(10)));
        t.heartbeat = Duration::ZERO;
        assert_eq!(t.heartbeat_interval(), None);
    }
}
