//! [`ComponentClaw`]: a [`Claw`] that is an XEP-0114 component of an XMPP server.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use claws_core::config::{Timing, TimingBuilder};
use claws_core::runtime::{CancellationToken, Lifecycle};
use claws_core::{Capabilities, Claw, Config, Confirmation, Error, Events, Jid, Packet, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{self, ComponentSection, Secret, Settings};
use crate::outbound;
use crate::session::{self, Command};
use crate::state::{Shared, State};
use crate::supervisor;

/// How many stanzas may wait for the stream at once before `send` itself waits.
const QUEUE: usize = 1024;

/// Builds a [`ComponentClaw`]; see the crate docs for the options table. Time-outs and
/// reconnection bounds are set through [`TimingBuilder`] (`connect_timeout`, `send_timeout`,
/// `reconnect_backoff`; the heartbeat is the component's own [`ping`](Self::ping)).
#[must_use]
#[derive(Debug)]
pub struct ComponentClawBuilder {
    settings: Settings,
}

impl ComponentClawBuilder {
    /// The claw's name in [`Via::claw`](claws_core::Via::claw) (default `component`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.settings.name = name.into();
        self
    }

    /// Drop whitespace-only text nodes from received stanzas (default off).
    pub fn trimmed(mut self, on: bool) -> Self {
        self.settings.trimmed = on;
        self
    }

    /// On sent stanzas, set `to` from the send call, `id` from the call when it gives one, and
    /// `from` to the component's domain when the stanza has none (default on).
    pub fn adjust_attrs(mut self, on: bool) -> Self {
        self.settings.adjust_attrs = on;
        self
    }

    /// Write a whitespace keepalive after this long without writing (default 60 s); `None`: never.
    pub fn ping(mut self, every: Option<Duration>) -> Self {
        self.settings.ping = every.filter(|d| !d.is_zero());
        self
    }

    /// The largest stanza accepted from the server (default 1 MiB); a larger one ends the stream.
    pub fn max_stanza_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_stanza_bytes = bytes;
        self
    }

    /// Validates the settings and builds the claw (it connects in [`Claw::start`]).
    pub fn build(self) -> Result<ComponentClaw> {
        let s = self.settings;
        if s.name.is_empty() {
            return Err(Error::Config(
                "the component claw's name must not be empty".into(),
            ));
        }
        if s.server
            .rsplit_once(':')
            .is_none_or(|(host, port)| host.is_empty() || port.parse::<u16>().is_err())
        {
            return Err(Error::Config(format!(
                "component server `{}` is not host:port; give the XMPP server's component port, \
                 e.g. \"127.0.0.1:5347\"",
                s.server
            )));
        }
        let jid = claws_core::jid::parse(&s.domain)?;
        if !jid.is_bare() || jid.node().is_some() {
            return Err(Error::Config(format!(
                "component domain `{}` must be a bare domain such as `echo.example.com`",
                s.domain
            )));
        }
        if s.max_stanza_bytes == 0 {
            return Err(Error::Config(
                "`max_stanza_bytes` must be at least 1".into(),
            ));
        }
        s.timing.validate()?;
        let name: Arc<str> = s.name.as_str().into();
        let (state, _) = watch::channel(State::Disconnected);
        let (cmds, rx) = mpsc::channel(QUEUE);
        Ok(ComponentClaw {
            life: Lifecycle::new(name.clone()),
            shared: Arc::new(Shared {
                settings: s,
                name,
                state,
            }),
            jid,
            cmds,
            pending: Mutex::new(Some(rx)),
        })
    }
}

impl TimingBuilder for ComponentClawBuilder {
    fn timing_mut(&mut self) -> &mut Timing {
        &mut self.settings.timing
    }
}

/// What a running claw owns: its supervisor task and the token that stops it.
#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// An XEP-0114 component: connects to an XMPP server's component port, authenticates for its
/// domain, hands every stanza the server routes to that domain to the router, and writes what
/// is sent through it to the server. It reconnects by itself (see [`State`]).
///
/// Received stanzas arrive with a [`Via`](claws_core::Via) whose `jid` and `from` are the
/// stanza's `from`, `queue` is `QueueKind::Other("component")`, `id` the stanza's `id`, and no
/// exchange, so a reply through [`Context::reply`](claws_core::Context::reply) goes back to the
/// user through the server.
///
/// A component stream has no acknowledgements and no queue: [`Claw::capabilities`] reports none
/// but ordering, acking is a no-op, and a rejected stanza is logged and dropped (it cannot be
/// delivered again). [`Claw::publish`] has no meaning here and fails.
#[derive(Debug)]
pub struct ComponentClaw {
    shared: Arc<Shared>,
    jid: Jid,
    cmds: mpsc::Sender<Command>,
    /// New → Starting → Running → Closed.
    life: Lifecycle<Running>,
    /// The receiving end of `cmds`, until `start` hands it to the supervisor (and back after a
    /// failed start).
    pending: Mutex<Option<mpsc::Receiver<Command>>>,
}

impl ComponentClaw {
    /// A builder for a component of `domain` on the server's component port `server_addr`
    /// (`host:port`), authenticating with `secret`.
    pub fn builder(server_addr: &str, domain: &str, secret: &str) -> ComponentClawBuilder {
        ComponentClawBuilder {
            settings: Settings {
                name: config::DEFAULT_NAME.into(),
                server: server_addr.into(),
                domain: domain.into(),
                secret: Secret::new(secret),
                trimmed: false,
                adjust_attrs: true,
                ping: Some(config::DEFAULT_PING),
                max_stanza_bytes: config::DEFAULT_MAX_STANZA_BYTES,
                timing: Timing::default(),
            },
        }
    }

    /// A builder from the `[component]` table of a claws config (see [`config`]) and its
    /// top-level [`Timing`] keys.
    pub fn builder_from_config(config: &Config) -> Result<ComponentClawBuilder> {
        let section: ComponentSection = config.section("component")?;
        let (server, domain, secret) = section.required()?;
        let mut b = Self::builder(server, domain, secret.expose());
        if let Some(name) = &section.name {
            b = b.name(name.clone());
        }
        if let Some(on) = section.trimmed {
            b = b.trimmed(on);
        }
        if let Some(on) = section.adjust_attrs {
            b = b.adjust_attrs(on);
        }
        if let Some(ping) = section.ping {
            b = b.ping(Some(ping));
        }
        if let Some(bytes) = section.max_stanza_bytes {
            b = b.max_stanza_bytes(bytes);
        }
        Ok(b.timing(config.timing))
    }

    /// The claw described by the `[component]` table of a claws config.
    pub fn from_config(config: &Config) -> Result<Self> {
        Self::builder_from_config(config)?.build()
    }

    /// The component's domain.
    pub fn domain(&self) -> &str {
        &self.shared.settings.domain
    }

    /// The server's component port, `host:port`.
    pub fn server(&self) -> &str {
        &self.shared.settings.server
    }

    /// Where the connection is now.
    pub fn state(&self) -> State {
        self.shared.state.borrow().clone()
    }

    /// A receiver that sees every state change (for monitoring and tests).
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    fn connect_error(&self, reason: String) -> Error {
        Error::Connect {
            claw: self.shared.name.to_string(),
            endpoint: format!(
                "{} (component {})",
                self.shared.settings.server, self.shared.settings.domain
            ),
            reason,
        }
    }
}

#[async_trait]
impl Claw for ComponentClaw {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn jid(&self) -> &Jid {
        &self.jid
    }

    fn capabilities(&self) -> Capabilities {
        // One TCP stream keeps order; nothing else: no queue, no acks, no redelivery, and a
        // stanza in flight when the stream breaks is lost.
        let mut c = Capabilities::none();
        c.ordering = true;
        c
    }

    async fn start(&self, events: Events) -> Result<()> {
        self.life.begin_start()?;
        // Starting is exclusive, and a new claw holds its receiver: a failed start puts it back
        // before it makes the claw new again.
        let cmds = self
            .pending
            .lock()
            .expect("pending lock poisoned")
            .take()
            .expect("a new claw holds its command receiver");
        match session::establish(&self.shared).await {
            Ok(stream) => {
                tracing::info!(claw = &*self.shared.name, server = %self.shared.settings.server, domain = %self.shared.settings.domain, "component stream ready");
                self.shared.set(State::Ready);
                events.connected(&self.shared.name).await;
                let stop = CancellationToken::new();
                let task = tokio::spawn(supervisor::supervise(
                    self.shared.clone(),
                    stream,
                    cmds,
                    events,
                    stop.clone(),
                ));
                if let Err(running) = self.life.started(Running { stop, task }) {
                    // Closed while starting: the supervisor ends the stream and stops.
                    running.stop.cancel();
                }
                Ok(())
            }
            Err(failure) => {
                self.shared.set(State::Disconnected);
                *self.pending.lock().expect("pending lock poisoned") = Some(cmds);
                self.life.start_failed();
                Err(self.connect_error(failure.to_string()))
            }
        }
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        self.send_ordered(to, id, packet).await?.await
    }

    /// Queues the stanza for the stream's writer (its place in the stream is fixed once this
    /// returns); the confirmation resolves once the writer has written it to the socket. The
    /// writer takes everything queued at once, so a burst goes out in one write.
    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        self.life.check_running()?;
        let bytes = outbound::prepare(&self.shared.settings, to, id, &packet)?;
        let waited = self.shared.settings.timing.send_timeout;
        let deadline = tokio::time::Instant::now() + waited;
        let name = self.shared.name.clone();
        let to = to.to_string();
        let failed = move |reason: &str| {
            Error::backend(format!(
                "component claw `{name}`: the stanza for `{to}` was not written to the XMPP \
                 server: {reason}"
            ))
        };
        let disconnected = {
            let claw = self.shared.name.to_string();
            move || Error::Disconnected { claw, waited }
        };
        let (done, written) = oneshot::channel();
        match tokio::time::timeout_at(deadline, self.cmds.send(Command { bytes, done })).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(failed("the claw is closed")),
            Err(_) => return Err(disconnected()),
        }
        Ok(Confirmation::new(async move {
            match tokio::time::timeout_at(deadline, written).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err(reason))) => Err(failed(&reason)),
                Ok(Err(_)) => Err(failed("the stream broke before the stanza was written")),
                Err(_) => Err(disconnected()),
            }
        }))
    }

    async fn publish(&self, _packet: Packet) -> Result<()> {
        Err(Error::Unsupported {
            claw: self.shared.name.to_string(),
            what: "publish",
            why: "it is an XEP-0114 component, and an XMPP server has no broadcast to publish to; \
                  send to a JID instead, or publish through a broker claw"
                .into(),
        })
    }

    async fn close(&self) -> Result<()> {
        if let Some(Running { stop, mut task }) = self.life.close() {
            stop.cancel();
            let bound = self.shared.settings.timing.connect_timeout + Duration::from_secs(5);
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                task.abort();
                self.shared.set(State::Closed);
                return Err(Error::Timeout {
                    what: format!("closing component claw `{}`", self.shared.name),
                    after: bound,
                });
            }
        }
        self.shared.set(State::Closed);
        Ok(())
    }
}
