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
//! # ping = "60s"                   # write silence before a whitespace keepalive; "0s": off
//! # max_stanza_bytes = 1048576     # larger received stanzas end the stream
//! ```
//!
//! `connect_timeout` (TCP connect + stream header + handshake), `send_timeout` (how long a send
//! waits for the stream to be up) and the reconnection bounds are the top-level keys every claw
//! shares ([`Timing`]).

use std::fmt;
use std::time::Duration;

use claws_core::config::Timing;
use claws_core::{Error, Result};
use serde::{Deserialize, Serialize};

/// A shared secret. Its `Debug` shows `Secret(***)`, so it stays out of logs and errors.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
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

/// The `[component]` table of a claws config, as written (see the [module docs](self)).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
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
    /// Write silence before a whitespace keepalive (`"0s"`: off).
    #[serde(with = "humantime_serde")]
    pub ping: Option<Duration>,
    /// Largest stanza accepted from the server.
    pub max_stanza_bytes: Option<usize>,
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
    pub(crate) timing: Timing,
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
}
