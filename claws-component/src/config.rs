//! The component claw's settings: the `[component]` table of `claws.toml`, their defaults, and
//! [`Secret`], which never prints.
//!
//! ```toml
//! [component]
//! server = "127.0.0.1:5347"        # the XMPP server's component port (host:port)
//! domain = "echo.example.com"      # the domain the server hands to this component
//! secret = "..."                   # or CLAWS_COMPONENT__SECRET in the environment
//! # name = "component"             # the claw's name in Via
//! # trimmed = false                # drop whitespace-only text nodes from received stanzas
//! # adjust_attrs = true            # set to/from/id on sent stanzas from the send call
//! # ping = 60                      # seconds of write silence before a whitespace keepalive; 0: off
//! # max_stanza_bytes = 1048576     # larger received stanzas end the stream
//! # backoff_cap = 30               # longest wait between reconnection attempts, in seconds
//! # connect_timeout = 10           # seconds for TCP connect + stream header + handshake
//! # send_timeout = 10              # seconds a send waits for the stream to be up
//! ```

use std::fmt;
use std::time::Duration;

use claws_core::runtime::Backoff;
use claws_core::{Error, Result};
use serde::Deserialize;

/// A shared secret. Its `Debug` shows `Secret(***)`, so it stays out of logs and errors.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the handshake only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Default claw name.
pub const DEFAULT_NAME: &str = "component";
/// Default largest stanza accepted from the server: 1 MiB.
pub const DEFAULT_MAX_STANZA_BYTES: usize = 1 << 20;
/// Default whitespace keepalive interval.
pub const DEFAULT_PING: Duration = Duration::from_secs(60);
/// Default first wait before reconnecting; the ceiling of the (jittered) wait doubles on each
/// failed attempt.
pub const DEFAULT_BACKOFF_INITIAL: Duration = Duration::from_millis(250);
/// Default longest wait between reconnection attempts.
pub const DEFAULT_BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Default bound on TCP connect + stream header + handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default bound on how long a send waits for the stream to be up.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The `[component]` table of a claws config, as written (see the [module docs](self)).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComponentSection {
    /// The XMPP server's component port, `host:port`.
    pub server: Option<String>,
    /// The component's domain.
    pub domain: Option<String>,
    /// The shared secret.
    pub secret: Option<Secret>,
    /// The claw's name (default `component`).
    pub name: Option<String>,
    /// Drop whitespace-only text nodes from received stanzas.
    pub trimmed: Option<bool>,
    /// Set `to`, `from` and `id` on sent stanzas from the send call.
    pub adjust_attrs: Option<bool>,
    /// Seconds of write silence before a whitespace keepalive (0: off).
    pub ping: Option<f64>,
    /// Largest stanza accepted from the server.
    pub max_stanza_bytes: Option<usize>,
    /// Longest wait between reconnection attempts, in seconds.
    pub backoff_cap: Option<f64>,
    /// Seconds for TCP connect + stream header + handshake.
    pub connect_timeout: Option<f64>,
    /// Seconds a send waits for the stream to be up.
    pub send_timeout: Option<f64>,
}

impl ComponentSection {
    /// `server`, `domain` and `secret`, or an error naming the missing key.
    pub fn required(&self) -> Result<(&str, &str, &Secret)> {
        let missing = |key: &str, example: &str| {
            Error::Config(format!(
                "[component] needs `{key}` ({example}); set it in claws.toml or as CLAWS_COMPONENT__{}",
                key.to_uppercase()
            ))
        };
        let server = self.server.as_deref().ok_or_else(|| {
            missing(
                "server",
                "the XMPP server's component port, e.g. \"127.0.0.1:5347\"",
            )
        })?;
        let domain = self.domain.as_deref().ok_or_else(|| {
            missing(
                "domain",
                "the component's domain, e.g. \"echo.example.com\"",
            )
        })?;
        let secret = self
            .secret
            .as_ref()
            .ok_or_else(|| missing("secret", "the component secret configured on the server"))?;
        Ok((server, domain, secret))
    }
}

/// Seconds from a config value, checked.
pub(crate) fn seconds(key: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        Error::Config(format!(
            "[component] `{key}` must be a number of seconds, 0 or more (got {value})"
        ))
    })
}

/// The settings a [`ComponentClaw`](crate::ComponentClaw) runs with, validated.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) name: String,
    pub(crate) server: String,
    pub(crate) domain: String,
    pub(crate) secret: Secret,
    pub(crate) trimmed: bool,
    pub(crate) adjust_attrs: bool,
    pub(crate) ping: Option<Duration>,
    pub(crate) max_stanza_bytes: usize,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) send_timeout: Duration,
}

impl Settings {
    /// A fresh reconnection backoff: jittered waits whose ceiling doubles from
    /// `backoff_initial` up to `backoff_cap` (a zero initial wait counts as 1 ms, a cap below
    /// it as the initial wait), so never a tight loop.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff::new(self.backoff_initial, self.backoff_cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let section = ComponentSection {
            secret: Some(s),
            ..Default::default()
        };
        assert!(!format!("{section:?}").contains("hunter2"));
    }

    #[test]
    fn backoff_runs_from_the_initial_wait_to_the_cap() {
        let settings = |initial, cap| Settings {
            name: DEFAULT_NAME.into(),
            server: "h:1".into(),
            domain: "d".into(),
            secret: Secret::new("x"),
            trimmed: false,
            adjust_attrs: true,
            ping: None,
            max_stanza_bytes: DEFAULT_MAX_STANZA_BYTES,
            backoff_initial: initial,
            backoff_cap: cap,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
        };
        let ms = Duration::from_millis;
        let backoff = settings(ms(40), ms(160)).backoff();
        assert_eq!(backoff.bounds(), (ms(40), ms(160)));
        // A zero initial wait is never a tight loop; a cap below it counts as it.
        assert_eq!(
            settings(Duration::ZERO, Duration::ZERO).backoff().bounds(),
            (ms(1), ms(1))
        );
        assert_eq!(
            settings(ms(500), ms(100)).backoff().bounds(),
            (ms(500), ms(500))
        );
    }

    #[test]
    fn missing_keys_are_named() {
        let err = ComponentSection::default()
            .required()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`server`") && err.contains("CLAWS_COMPONENT__SERVER"),
            "{err}"
        );
        let err = ComponentSection {
            server: Some("h:1".into()),
            domain: Some("d".into()),
            ..Default::default()
        }
        .required()
        .unwrap_err()
        .to_string();
        assert!(err.contains("`secret`"), "{err}");
        assert!(seconds("ping", -1.0)
            .unwrap_err()
            .to_string()
            .contains("`ping`"));
        assert_eq!(seconds("ping", 1.5).unwrap(), Duration::from_millis(1500));
    }
}
