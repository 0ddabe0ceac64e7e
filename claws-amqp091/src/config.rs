//! Settings: the `[amqp091]` table ([`Amqp091Options`]), the resolved settings a claw runs
//! with, and the URL helpers that keep passwords out of logs.

use std::path::PathBuf;

use claws_core::config::Timing;
use claws_core::runtime::redact_url;
use claws_core::topology::TopologyOptions;
use claws_core::{Error, Result};
use lapin::uri::AMQPUri;
use serde::{Deserialize, Serialize};

/// The URL used when neither `url` nor `host` is configured.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The `[amqp091]` table of a claws config file (every key optional).
///
/// ```toml
/// [amqp091]
/// host = "rabbit.example.com"   # the seed's parameters: host, username, password
/// username = "svc"
/// password = "secret"
/// durable = true
/// queue_expiry = "30m"
/// # On a cluster (see docs/CLUSTER.md):
/// quorum_groups = true          # group queues and xmpp_dead_letter are quorum queues
/// quorum_instances = false      # the instance's own queues too (a Raft group each)
/// # quorum_size = 3             # x-quorum-initial-group-size
/// # delivery_limit = 5          # x-delivery-limit (default: max_deliveries)
/// # leader_locator = "balanced" # or "client-local"
/// # layout = "erlang"           # mixed Erlang/claws groups (see the crate docs)
/// # user_id = "auto"            # or "always", "never": see UserId
/// # TLS, with an amqps:// URL and the `tls` feature:
/// tls_ca_file = "/etc/claws/ca.pem"        # the CA that signed the broker's certificate
/// tls_cert_file = "/etc/claws/client.pem"  # mutual TLS: the claw's certificate…
/// tls_key_file = "/etc/claws/client-key.pem" # …and its private key
/// # url = "amqps://rabbit.example.com/%2f?auth_mechanism=external" logs in as the certificate
/// # (RabbitMQ's rabbitmq_auth_mechanism_ssl plugin), with no password anywhere
/// ```
///
/// The common `url` key (top level) wins over `host`/`username`/`password`/`port`/`vhost`.
/// Time-outs, heartbeat and reconnection bounds are top-level keys too, the same for every
/// claw ([`Timing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Amqp091Options {
    /// The broker's host (the seed's `host`), used when no `url` is given.
    pub host: Option<String>,
    /// The broker's port (default 5672).
    pub port: u16,
    /// The virtual host (default `/`).
    pub vhost: String,
    /// The user name (default `guest`).
    pub username: String,
    /// The password (default `guest`). Never logged.
    pub password: String,
    /// Durability, queue expiry, quorum queues, layout: the queue settings every RabbitMQ
    /// claw shares ([`TopologyOptions`]), as keys of this table.
    #[serde(flatten)]
    pub queues: TopologyOptions,
    /// PEM file of the CA(s) that signed the broker's certificate, trusted beside the system's
    /// roots (`amqps://` only).
    pub tls_ca_file: Option<PathBuf>,
    /// PEM certificate (chain) the claw presents, for mutual TLS (`amqps://` only; needs
    /// `tls_key_file`).
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// Whether the claw sets `user_id` on what it publishes ([`UserId`], default `auto`).
    pub user_id: UserId,
}

/// Whether the claw sets the AMQP `user_id` property (its connection's user, which RabbitMQ
/// verifies) on what it publishes, so that a receiver's [`Via::user`](claws_core::Via::user)
/// says who sent a stanza.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserId {
    /// On RabbitMQ 4 and later, not on 3.x: RabbitMQ 3.x's AMQP 1.0 plugin hands a 0-9-1
    /// `user_id` to AMQP 1.0 consumers as a string where AMQP 1.0 has binary, which the 1.0
    /// client cannot decode, so every stanza from this claw to a 1.0 instance would be
    /// dead-lettered. The version is asked of each broker once, over a short connection of
    /// its own; over TLS, where the claw cannot ask, it is set.
    #[default]
    Auto,
    /// Always (a RabbitMQ 3.x deployment with no AMQP 1.0 consumer).
    Always,
    /// Never.
    Never,
}

impl Default for Amqp091Options {
    fn default() -> Self {
        Self {
            host: None,
            port: 5672,
            vhost: "/".into(),
            username: "guest".into(),
            password: "guest".into(),
            queues: TopologyOptions::default(),
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            user_id: UserId::Auto,
        }
    }
}

impl Amqp091Options {
    /// The URL the seed's parameters describe: `amqp://username:password@host:port/vhost`.
    pub fn url_from_parts(&self, host: &str) -> String {
        format!(
            "amqp://{}:{}@{}:{}/{}",
            percent_encode(&self.username),
            percent_encode(&self.password),
            host,
            self.port,
            percent_encode(&self.vhost)
        )
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One broker endpoint: the parsed URL (which holds the password) and how it is shown.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) uri: AMQPUri,
    /// The URL without its password, for messages.
    pub(crate) shown: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Endpoint {
    /// Parses `url`, failing with a message that does not repeat the password.
    pub(crate) fn parse(url: &str) -> Result<Self> {
        let uri = parse_url(url)?;
        Ok(Self {
            shown: endpoint(&uri),
            uri,
        })
    }

    pub(crate) fn is_amqps(&self) -> bool {
        is_amqps(&self.uri)
    }
}

/// Everything a claw runs with, resolved from a builder or a config.
#[derive(Clone)]
pub(crate) struct Settings {
    /// Where the broker is (several for a cluster); at least one.
    pub(crate) endpoints: Vec<Endpoint>,
    /// Unsettled deliveries per consumer (basic.qos).
    pub(crate) prefetch: u16,
    /// Deliveries after which a failing stanza is dead-lettered.
    pub(crate) max_deliveries: u32,
    /// Durable queues and persistent messages.
    pub(crate) durable: bool,
    /// Time-outs, heartbeat and reconnection bounds.
    pub(crate) timing: Timing,
    /// What TLS trusts and presents (empty for amqp://). Holds a private key: never printed.
    pub(crate) tls: lapin::tcp::OwnedTLSConfig,
    /// Whether sends carry `user_id`.
    pub(crate) user_id: UserId,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("endpoints", &self.endpoints)
            .field("prefetch", &self.prefetch)
            .field("max_deliveries", &self.max_deliveries)
            .field("durable", &self.durable)
            .field("timing", &self.timing)
            .field("user_id", &self.user_id)
            .field("tls_ca", &self.tls.cert_chain.is_some())
            .field("tls_client_cert", &self.tls.identity.is_some())
            .finish()
    }
}

impl Settings {
    /// `text` with every endpoint's password scrubbed out.
    pub(crate) fn scrub(&self, text: &str) -> String {
        self.endpoints.iter().fold(text.to_owned(), |t, e| {
            claws_core::runtime::scrub(&t, &e.uri.authority.userinfo.password)
        })
    }
}

/// Parses `url`, failing with a message that does not repeat the password.
pub(crate) fn parse_url(url: &str) -> Result<AMQPUri> {
    let uri: AMQPUri = url.parse().map_err(|e: String| {
        let password = url::Url::parse(url)
            .ok()
            .and_then(|u| u.password().map(str::to_owned))
            .unwrap_or_default();
        Error::Config(format!(
            "invalid AMQP URL `{}`: {}; expected amqp://user:password@host:port/vhost",
            redact_url(url),
            claws_core::runtime::scrub(&e, &password)
        ))
    })?;
    Ok(uri)
}

/// Whether `uri` asks for TLS.
pub(crate) fn is_amqps(uri: &AMQPUri) -> bool {
    matches!(uri.scheme, lapin::uri::AMQPScheme::AMQPS)
}

/// The endpoint of a parsed URI, without the password; with `auth_mechanism=external` the
/// user is the client certificate's, so none is shown.
pub(crate) fn endpoint(uri: &AMQPUri) -> String {
    let external = matches!(
        uri.query.auth_mechanism,
        Some(lapin::uri::SASLMechanism::External)
    );
    let user = if external {
        "(certificate)"
    } else {
        uri.authority.userinfo.username.as_str()
    };
    format!(
        "{}://{}@{}:{}/{}",
        if is_amqps(uri) { "amqps" } else { "amqp" },
        user,
        uri.authority.host,
        uri.authority.port,
        percent_encode(&uri.vhost)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        let err = parse_url("amqp://u:s3cret@h:notaport/")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn seed_parameters_make_a_url() {
        let o = Amqp091Options {
            password: "p@ss word".into(),
            ..Amqp091Options::default()
        };
        let url = o.url_from_parts("example.com");
        assert_eq!(url, "amqp://guest:p%40ss%20word@example.com:5672/%2F");
        let uri = parse_url(&url).unwrap();
        assert_eq!(uri.authority.userinfo.password, "p@ss word");
        assert_eq!(uri.vhost, "/");
    }

    #[test]
    fn endpoints_keep_the_scheme() {
        let uri = parse_url("amqps://u:p@h").unwrap();
        assert_eq!(endpoint(&uri), "amqps://u@h:5671/%2F");
        let uri = parse_url("amqp://u:p@h").unwrap();
        assert_eq!(endpoint(&uri), "amqp://u@h:5672/%2F");
        let uri = parse_url("amqps://h?auth_mechanism=external").unwrap();
        assert_eq!(endpoint(&uri), "amqps://(certificate)@h:5671/%2F");
    }
}
