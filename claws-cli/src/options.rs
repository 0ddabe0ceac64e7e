//! The options every subcommand takes, and the [`Config`] they make.

use std::path::{Path, PathBuf};
use std::time::Duration;

use claws::topology::Subscriptions;
use claws::{Config, Transport};
use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::Figment;

use crate::exit::Failure;

/// Options on every subcommand. Precedence: flags, then `CLAWS_*` variables, then the file.
/// `--help` lists them under their own heading, apart from each subcommand's own options.
#[derive(Debug, clap::Args)]
#[command(next_help_heading = GLOBAL_HEADING)]
pub(crate) struct Global {
    /// Which claw: mem (in-process, the default), amqp091 (RabbitMQ), amqp10.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "CLAWS_TRANSPORT",
        hide_env_values = true
    )]
    pub(crate) transport: Option<TransportArg>,

    /// The broker's URL, e.g. amqp://guest:guest@127.0.0.1:5672/%2f. Repeat it (or separate
    /// URLs with commas) for the nodes of a cluster: each (re)connection tries them in turn.
    #[arg(long, global = true, env = "CLAWS_URL", hide_env_values = true)]
    pub(crate) url: Vec<String>,

    /// This instance's JID, e.g. svc@example.com/worker-1.
    #[arg(long, global = true, env = "CLAWS_JID", hide_env_values = true)]
    pub(crate) jid: Option<String>,

    /// The config file (TOML); default: ./claws.toml when it exists.
    #[arg(long, global = true, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Library logs on stderr: -v warnings, -vv info, -vvv debug, -vvvv trace (default: off;
    /// RUST_LOG=... also turns them on).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,

    /// Serve Prometheus metrics (text format, any path) on ADDR, e.g. 127.0.0.1:9464, while
    /// the command runs: received, acked, rejected, in flight, sent, send failures,
    /// reconnects, handler and send times (docs/OBSERVABILITY.md). For listen, echo and
    /// gateway, which run until stopped.
    #[arg(long, global = true, value_name = "ADDR")]
    pub(crate) metrics: Option<std::net::SocketAddr>,

    /// Output: human (one line per stanza; newlines and other control characters in
    /// payloads escaped as \n, \t, \x1b) or json (one object per line, exact payloads, for
    /// scripts).
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub(crate) format: Format,
}

/// The `--help` heading of the options every subcommand takes.
pub(crate) const GLOBAL_HEADING: &str = "Global options";

/// `--transport` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum TransportArg {
    /// The in-process broker.
    Mem,
    /// RabbitMQ over AMQP 0-9-1.
    Amqp091,
    /// AMQP 1.0.
    Amqp10,
}

impl From<TransportArg> for Transport {
    fn from(t: TransportArg) -> Self {
        match t {
            TransportArg::Mem => Transport::Mem,
            TransportArg::Amqp091 => Transport::Amqp091,
            TransportArg::Amqp10 => Transport::Amqp10,
        }
    }
}

/// `--format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Readable lines, one per stanza (control characters escaped).
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(serde::Serialize)]
struct Flags {
    #[serde(skip_serializing_if = "Option::is_none")]
    transport: Option<Transport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    jid: Option<String>,
}

impl Global {
    /// The config: defaults < file < `CLAWS_*` environment < flags.
    pub(crate) fn config(&self) -> Result<Config, Failure> {
        let default_file = Path::new("claws.toml");
        let file = match &self.config {
            Some(file) if !file.exists() => {
                return Err(Failure::usage(format!(
                    "config file `{}` does not exist; check the --config path",
                    file.display()
                )))
            }
            Some(file) if !file.is_file() => {
                return Err(Failure::usage(format!(
                    "config file `{}` is not a file; --config takes a TOML file",
                    file.display()
                )))
            }
            Some(file) if std::fs::File::open(file).is_err() => {
                return Err(Failure::usage(format!(
                    "config file `{}` cannot be read; check its permissions",
                    file.display()
                )))
            }
            Some(file) => Some(file.as_path()),
            None if default_file.exists() => Some(default_file),
            None => None,
        };
        let flags = Flags {
            transport: self.transport.map(Transport::from),
            url: (!self.url.is_empty()).then(|| self.url.join(",")),
            jid: self.jid.clone(),
        };
        let figment = figment(file).merge(Serialized::defaults(flags));
        let config = Config::from_figment(&figment).map_err(Failure::from)?;
        crate::exit::remember_passwords(config.urls().iter().map(String::as_str));
        Ok(config)
    }

    /// The config, as a pure sender: it consumes nothing, so it declares no queues of its own.
    pub(crate) fn sender_config(&self) -> Result<Config, Failure> {
        let mut config = self.config()?;
        config.subscriptions = Subscriptions::none();
        Ok(config)
    }
}

/// Variables this tool reads itself (flags' `env`), which are not config keys.
const FLAG_VARIABLES: &[&str] = &["component_secret"];

/// Defaults < `file` < `CLAWS_*` variables (`CLAWS_KEY`, `CLAWS_TABLE__KEY`), as
/// [`Config::figment`], without the variables the flags read.
fn figment(file: Option<&Path>) -> Figment {
    let mut figment = Figment::from(Serialized::defaults(Config::default()));
    if let Some(file) = file {
        figment = figment.merge(Toml::file(file));
    }
    figment.merge(Env::prefixed("CLAWS_").split("__").ignore(FLAG_VARIABLES))
}

/// A configuration error caused by a `CLAWS_*` variable says so, and names the scheme.
pub(crate) fn from_environment(mut failure: Failure) -> Failure {
    let culprit = std::env::vars_os()
        .filter_map(|(name, _)| name.into_string().ok())
        .filter(|name| name.starts_with("CLAWS_"))
        .find(|name| {
            let key = name["CLAWS_".len()..].to_lowercase();
            let last = key.rsplit("__").next().unwrap_or(&key);
            !FLAG_VARIABLES.contains(&key.as_str())
                && failure.message.contains(&format!("`{last}`"))
        });
    if let Some(name) = culprit {
        failure.message = format!(
            "{} (set by the environment variable {name}; config keys come from CLAWS_KEY for a \
             top-level key, e.g. CLAWS_URL, and CLAWS_TABLE__KEY for a table's, e.g. \
             CLAWS_AMQP091__TLS_CA_FILE)",
            failure.message.trim_end_matches('.')
        );
    }
    failure
}

/// The longest duration a flag takes.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// A duration flag: humantime (`5s`, `250ms`, `1m 30s`) or plain seconds (`2`, `0.5`);
/// positive and at most a year.
pub(crate) fn duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 => {
            Duration::try_from_secs_f64(secs).map_err(|_| "too long".to_owned())?
        }
        Ok(_) => return Err("must be a positive duration".into()),
        Err(_) => humantime::parse_duration(text)
            .map_err(|e| format!("{e}; write e.g. 5s, 250ms, 1m 30s, or a number of seconds"))?,
    };
    if parsed.is_zero() {
        return Err("must be a positive duration".into());
    }
    if parsed > MAX_DURATION {
        return Err("must be at most a year (365d)".into());
    }
    Ok(parsed)
}

/// A count flag: a whole number, at least 1.
pub(crate) fn positive(text: &str) -> Result<u64, String> {
    match text.trim().parse::<u64>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("{e}; expected a whole number, at least 1")),
    }
}
