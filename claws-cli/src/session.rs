//! Building and starting the claw a command runs on, and reading stanzas.

use std::sync::Arc;
use std::time::Duration;

use claws::{Claw, Config, Event, Events, Packet, Router};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::exit::{Failure, CONNECT, OTHER};

/// How long connecting may take before the command gives up with exit code 3.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A started claw and the events it reports.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) claw: Arc<dyn Claw>,
    pub(crate) events: mpsc::Receiver<Event>,
}

/// Builds the claw `config` names, connects it, and starts consuming what it subscribes to.
pub(crate) async fn open(config: &Config) -> Result<Session, Failure> {
    // Used without a router: its sends are measured here (a router measures its own).
    let claw = claws::metrics::metered(claws::connect(config)?);
    // Room for every unsettled delivery (up to `prefetch` per subscription) and the events
    // around them, so that `start` never waits for us.
    let (events, rx) = Events::channel(usize::from(config.prefetch) * 4 + 16);
    start(config, claw.start(events)).await?;
    Ok(Session { claw, events: rx })
}

/// Builds a router on the claw `config` names and starts `handler` on it.
pub(crate) async fn router(
    config: &Config,
    handler: impl claws::Handler,
) -> Result<Router, Failure> {
    let claw = claws::connect(config)?;
    let router = Router::builder()
        .claw_arc(claw)
        .concurrency(config.concurrency)
        .build()?;
    start(config, router.start(handler)).await?;
    Ok(router)
}

/// Awaits a start, bounded by [`CONNECT_TIMEOUT`]; failures to start are connection failures
/// (exit 3) unless they are about the configuration (exit 2).
pub(crate) async fn start(
    config: &Config,
    start: impl std::future::Future<Output = claws::Result<()>>,
) -> Result<(), Failure> {
    let endpoint = endpoint(config);
    match tokio::time::timeout(CONNECT_TIMEOUT, start).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => {
            let mut failure = Failure::from(err);
            if failure.code == OTHER {
                failure.code = CONNECT;
                failure.message = format!("cannot connect to {endpoint}: {}", failure.message);
            }
            Err(failure)
        }
        Err(_) => Err(Failure::connect(format!(
            "cannot connect to {endpoint}: no answer within {} s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// Where a config connects, for messages (without the password).
pub(crate) fn endpoint(config: &Config) -> String {
    match &config.url {
        Some(url) if config.transport != claws::Transport::Mem => {
            format!("`{}`", crate::exit::clean(url))
        }
        _ => format!("the {} transport", config.transport.as_str()),
    }
}

/// The stanza argument, or stdin when it is `-` or absent.
pub(crate) async fn read_stanza(arg: Option<String>) -> Result<Packet, Failure> {
    match arg.as_deref() {
        Some(text) if text != "-" => Ok(Packet::from(text.to_owned())),
        _ => {
            let mut text = String::new();
            tokio::io::stdin()
                .read_to_string(&mut text)
                .await
                .map_err(|e| Failure::other(format!("cannot read the stanza from stdin: {e}")))?;
            let text = text.trim_end();
            if text.is_empty() {
                return Err(Failure::usage(
                    "no stanza given: pass it as an argument or on stdin",
                ));
            }
            Ok(Packet::from(text.to_owned()))
        }
    }
}

/// The command's one listener for Ctrl-C (SIGINT) and SIGTERM, installed before anything
/// connects: a signal that arrives while a delivery is being handled is kept until
/// [`recv`](Self::recv) is next awaited, never lost.
#[derive(Debug)]
pub(crate) struct Shutdown {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
    received: bool,
}

impl Shutdown {
    /// Installs the handlers (inside the runtime).
    pub(crate) fn install() -> Result<Self, Failure> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handler = |kind: SignalKind| {
                signal(kind)
                    .map_err(|e| Failure::other(format!("cannot install the signal handlers: {e}")))
            };
            Ok(Self {
                interrupt: handler(SignalKind::interrupt())?,
                terminate: handler(SignalKind::terminate())?,
                received: false,
            })
        }
        #[cfg(not(unix))]
        Ok(Self { received: false })
    }

    /// Waits for Ctrl-C or SIGTERM; once one came, returns at once every time. Cancel-safe:
    /// use it in `select!` on every loop turn.
    pub(crate) async fn recv(&mut self) {
        if self.received {
            return;
        }
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        self.received = true;
    }
}

/// A number unique enough to keep runs apart (names on a shared broker).
pub(crate) fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}
