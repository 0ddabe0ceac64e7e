//! Typed configuration from `claws.toml`, `CLAWS_*` environment variables and code (figment).
//!
//! Keys common to every claw live at the top level, with one name, unit and default each
//! (durations are humantime strings: see [`Timing`]); each backend reads its own table
//! (`[amqp091]`, `[amqp10]`, ...) from [`Config::section`]. Unknown keys are errors.
//!
//! ```toml
//! transport = "amqp091"
//! url = "amqp://guest:guest@127.0.0.1:5672/%2f"
//! jid = "news.example.com/worker-1"
//! prefetch = 64
//! send_timeout = "10s"
//!
//! [subscriptions]
//! fanout = false
//!
//! [amqp091]
//! durable = true
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::Value;
use figment::Figment;
use serde::{Deserialize, Serialize};

mod timing;

pub use timing::{Timing, TimingBuilder};

use crate::jid::{self, Jid};
use crate::topology::Subscriptions;
use crate::{Error, Result};

/// Which claw a config asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Transport {
    /// The in-memory claw (no broker).
    #[default]
    Mem,
    /// RabbitMQ over AMQP 0-9-1 (`claws-amqp091`).
    Amqp091,
    /// AMQP 1.0 (`claws-amqp10`).
    Amqp10,
}

impl Transport {
    /// The config value: `mem`, `amqp091`, `amqp10`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Mem => "mem",
            Transport::Amqp091 => "amqp091",
            Transport::Amqp10 => "amqp10",
        }
    }
}

/// The configuration every claw shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Which claw to build.
    pub transport: Transport,
    /// The broker's URL (`amqp://user:pass@host:port/vhost`); unused by `mem`. Several, for a
    /// cluster, separated by commas (`CLAWS_URL=amqp://a,amqp://b`), or in `urls`.
    pub url: Option<String>,
    /// More broker URLs (the nodes of a cluster), used together with `url`; see
    /// [`Config::urls`].
    pub urls: Vec<String>,
    /// The instance's JID (validated by [`Config::jid`]).
    pub jid: String,
    /// The claw's name as it appears in `Via` (default: the transport's name).
    pub name: Option<String>,
    /// Unsettled deliveries allowed at once per consumed queue (AMQP 0-9-1 `basic.qos`,
    /// AMQP 1.0 link credit, the mem claw's window; default 32).
    pub prefetch: u16,
    /// Handler calls in flight at once.
    pub concurrency: usize,
    /// Deliveries after which a failing stanza is dead-lettered.
    pub max_deliveries: u32,
    /// Which subscriptions to consume.
    pub subscriptions: Subscriptions,
    /// Time-outs and reconnection bounds (top-level keys `send_timeout`, `connect_timeout`,
    /// ...).
    #[serde(flatten)]
    pub timing: Timing,
    /// Backend tables (`[amqp091]`, `[amqp10]`, ...), read by each backend with
    /// [`Config::section`] and set with [`Config::set_section`]. Any other key lands here too
    /// and [`Config::validate`] refuses it.
    #[serde(flatten)]
    pub sections: Sections,
}

/// The backend tables of a [`Config`], kept as read until a backend asks for its own with
/// [`Config::section`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sections(BTreeMap<String, Value>);

impl Sections {
    /// The names of the tables present.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }

    /// Whether a table of that name is present.
    pub fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    /// Removes a table, so that it reads as absent (its backend's defaults).
    pub fn remove(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            transport: Transport::Mem,
            url: None,
            urls: Vec::new(),
            jid: "claws@localhost/main".into(),
            name: None,
            prefetch: 32,
            concurrency: 8,
            max_deliveries: 5,
            subscriptions: Subscriptions::all(),
            timing: Timing::default(),
            sections: Sections::default(),
        }
    }
}

/// Broker URLs as given: each may hold several separated by commas; blanks are dropped.
///
/// ```
/// let urls = claws_core::config::split_urls(["amqp://a, amqp://b", "", "amqp://c"]);
/// assert_eq!(urls, ["amqp://a", "amqp://b", "amqp://c"]);
/// ```
pub fn split_urls<'a>(urls: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    urls.into_iter()
        .flat_map(|u| u.split(','))
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The backend tables a config may hold.
pub const SECTIONS: &[&str] = &["amqp091", "amqp10", "component"];

impl Config {
    /// The figment that [`Config::load`] reads: defaults, then `file` (if it exists), then
    /// `CLAWS_*` variables (`CLAWS_AMQP091__DURABLE` for nested keys). Merge your own providers
    /// on top to let code override.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file(file));
        }
        figment.merge(Env::prefixed("CLAWS_").split("__"))
    }

    /// Loads from `file` (optional) and the environment, and validates.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        if let Some(file) = file {
            if !file.exists() {
                return Err(Error::Config(format!(
                    "config file `{}` does not exist",
                    file.display()
                )));
            }
        }
        Self::from_figment(&Self::figment(file))
    }

    /// Extracts and validates a config from any figment.
    pub fn from_figment(figment: &Figment) -> Result<Self> {
        // Timing alone first: flattened into Config, a bad duration's error would lose its key.
        figment.extract::<Timing>()?;
        let config: Config = figment.extract()?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the JID, numbers, and that every extra table is a known backend section.
    pub fn validate(&self) -> Result<()> {
        self.jid()?;
        if let Some(key) = self.sections.names().find(|k| !SECTIONS.contains(k)) {
            return Err(Error::Config(format!(
                "unknown key `{key}`; known keys are transport, url, urls, jid, name, prefetch, \
                 concurrency, max_deliveries, subscriptions, send_timeout, connect_timeout, \
                 close_timeout, heartbeat, reconnect_min, reconnect_max, and the tables {}",
                SECTIONS.join(", ")
            )));
        }
        self.timing.validate()?;
        if self.prefetch == 0 {
            return Err(Error::Config("`prefetch` must be at least 1".into()));
        }
        if self.concurrency == 0 {
            return Err(Error::Config("`concurrency` must be at least 1".into()));
        }
        if self.max_deliveries == 0 {
            return Err(Error::Config("`max_deliveries` must be at least 1".into()));
        }
        Ok(())
    }

    /// Every broker URL: `url` split at commas, then `urls`, blanks dropped (empty when none
    /// is configured). A claw tries them from a shuffled start at every (re)connection.
    pub fn urls(&self) -> Vec<String> {
        split_urls(self.url.iter().chain(&self.urls).map(String::as_str))
    }

    /// The parsed JID.
    pub fn jid(&self) -> Result<Jid> {
        jid::parse(&self.jid)
    }

    /// The claw name: `name`, or the transport's.
    pub fn claw_name(&self) -> &str {
        self.name.as_deref().unwrap_or(self.transport.as_str())
    }

    /// A backend's table, deserialized into its own type (missing table: `T::default()`).
    /// Use `#[serde(deny_unknown_fields)]` on `T` so that typos are errors.
    pub fn section<T: serde::de::DeserializeOwned + Default>(&self, name: &str) -> Result<T> {
        match self.sections.0.get(name) {
            None => Ok(T::default()),
            Some(value) => value
                .deserialize()
                .map_err(|e| Error::Config(format!("in [{name}]: {e}"))),
        }
    }

    /// Replaces a backend's table with `table` (any serializable value: the backend's options
    /// type, or a map), as if the file had held it.
    pub fn set_section<T: Serialize>(&mut self, name: &str, table: &T) -> Result<()> {
        let value = Value::serialize(table)
            .map_err(|e| Error::Config(format!("[{name}] cannot be represented: {e}")))?;
        self.sections.0.insert(name.to_owned(), value);
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment::Error
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Amqp {
        durable: bool,
    }

    #[test]
    fn file_env_and_sections() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "claws.toml",
                r#"
                transport = "amqp091"
                jid = "svc@example.com/w1"
                prefetch = 10
                [subscriptions]
                fanout = false
                [amqp091]
                durable = true
                "#,
            )?;
            jail.set_env("CLAWS_PREFETCH", "20");
            let c = Config::load(Some(Path::new("claws.toml"))).unwrap();
            assert_eq!(c.transport, Transport::Amqp091);
            assert_eq!(c.prefetch, 20);
            assert!(!c.subscriptions.fanout && c.subscriptions.direct);
            assert_eq!(
                c.section::<Amqp>("amqp091").unwrap(),
                Amqp { durable: true }
            );
            assert_eq!(c.section::<Amqp>("amqp10").unwrap(), Amqp::default());
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_clear() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "jid = \"a@b@c\"")?;
            let e = Config::load(Some(Path::new("a.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid JID `a@b@c`"), "{e}");

            jail.create_file("b.toml", "prefetchh = 3")?;
            let e = Config::load(Some(Path::new("b.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("unknown key `prefetchh`"), "{e}");

            jail.create_file("c.toml", "transport = \"kafka\"")?;
            let e = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("kafka"), "{e}");

            jail.create_file("d.toml", "prefetch = \"many\"")?;
            let e = Config::load(Some(Path::new("d.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("prefetch"), "{e}");

            jail.create_file("e.toml", "[amqp091]\ndurabel = true")?;
            let c = Config::load(Some(Path::new("e.toml"))).unwrap();
            let e = c.section::<Amqp>("amqp091").unwrap_err().to_string();
            assert!(e.contains("durabel"), "{e}");

            let e = Config::load(Some(Path::new("missing.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("does not exist"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn durations_are_humantime_everywhere() {
        use std::time::Duration;
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "t.toml",
                "send_timeout = \"2s\"\nreconnect_min = \"250ms\"\n[amqp091]\ndurable = true",
            )?;
            jail.set_env("CLAWS_CONNECT_TIMEOUT", "1m 30s");
            let c = Config::load(Some(Path::new("t.toml"))).unwrap();
            assert_eq!(c.timing.send_timeout, Duration::from_secs(2));
            assert_eq!(c.timing.reconnect_min, Duration::from_millis(250));
            assert_eq!(c.timing.connect_timeout, Duration::from_secs(90));
            assert_eq!(c.timing.close_timeout, Timing::CLOSE_TIMEOUT);
            assert!(c.sections.contains("amqp091"));

            jail.create_file("u.toml", "send_timeout = 30")?;
            let e = Config::load(Some(Path::new("u.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("send_timeout"), "{e}");

            jail.create_file("v.toml", "send_timeout = \"0s\"")?;
            let e = Config::load(Some(Path::new("v.toml")))
                .unwrap_err()
                .to_string();
            assert!(e.contains("`send_timeout` must be more than 0"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn urls_come_from_url_commas_and_urls() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("w.toml", "urls = [\"amqp://c\"]")?;
            jail.set_env("CLAWS_URL", "amqp://a, amqp://b");
            let c = Config::load(Some(Path::new("w.toml"))).unwrap();
            assert_eq!(c.urls(), ["amqp://a", "amqp://b", "amqp://c"]);
            Ok(())
        });
        assert!(Config::default().urls().is_empty());
    }

    #[test]
    fn sections_round_trip_through_set_section() {
        let mut c = Config::default();
        c.set_section("amqp091", &Amqp { durable: true }).unwrap();
        assert_eq!(
            c.section::<Amqp>("amqp091").unwrap(),
            Amqp { durable: true }
        );
        assert!(c.sections.remove("amqp091"));
        assert_eq!(c.section::<Amqp>("amqp091").unwrap(), Amqp::default());
    }
}
