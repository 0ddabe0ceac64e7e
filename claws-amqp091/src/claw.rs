//! [`AmqpClaw`]: the claw itself: starting, sending, closing.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use claws_core::jid::Jid;
use claws_core::runtime::{drain, Lifecycle};
use claws_core::topology::{Subscriptions, Topology};
use claws_core::{Capabilities, Claw, Confirmation, Events, Packet, Result};
use tokio::task::JoinHandle;

use crate::connection;
use crate::publisher;
use crate::session::Shared;

/// The RabbitMQ claw. See the [crate docs](crate) for what it puts on the wire.
pub struct AmqpClaw {
    shared: Arc<Shared>,
    run: Lifecycle<Running>,
}

/// What a running claw owns.
struct Running {
    supervisor: JoinHandle<()>,
}

impl std::fmt::Debug for AmqpClaw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpClaw")
            .field("name", &self.shared.name)
            .field("jid", &self.shared.jid.as_str())
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl AmqpClaw {
    pub(crate) fn new(shared: Shared) -> Self {
        let run = Lifecycle::new(shared.name.clone());
        Self {
            shared: Arc::new(shared),
            run,
        }
    }

    /// What this claw declares: exchanges, queues with their arguments, bindings. With
    /// `durable = false`, once a broker refused a transient queue (RabbitMQ 4.3's default),
    /// the plan without transient queues
    /// ([`Topology::without_transient_queues`](claws_core::topology::Topology::without_transient_queues)).
    pub fn topology(&self) -> &Topology {
        self.shared.topology()
    }

    /// Which queues it consumes.
    pub fn subscriptions(&self) -> Subscriptions {
        self.shared.subscriptions
    }

    /// The broker endpoint (the first, for a cluster), without the password.
    pub fn endpoint(&self) -> &str {
        &self.shared.settings.endpoints[0].shown
    }

    /// The endpoint of the connection in use now, without the password.
    pub fn connected_endpoint(&self) -> Option<String> {
        self.shared.current.get().map(|s| s.endpoint.clone())
    }

    /// The name the claw gives its connections (`rabbitmqctl list_connections name
    /// client_properties` shows it as `connection_name`).
    pub fn connection_name(&self) -> String {
        format!("claws-amqp091 {} {}", self.shared.name, self.shared.jid)
    }

    /// Whether the claw is connected now.
    pub fn is_connected(&self) -> bool {
        self.shared.current.get().is_some()
    }
}

#[async_trait]
impl Claw for AmqpClaw {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn jid(&self) -> &Jid {
        &self.shared.jid
    }

    fn capabilities(&self) -> Capabilities {
        let mut c = Capabilities::all();
        c.persistence = self.shared.settings.durable;
        c.survives_broker_restart = self.shared.settings.durable;
        c
    }

    async fn start(&self, events: Events) -> Result<()> {
        self.run.begin_start()?;
        let mut retry = match connection::reconnect(&self.shared) {
            Ok(r) => r,
            Err(e) => {
                self.run.start_failed();
                return Err(e);
            }
        };
        self.shared.current.down();
        let shared = &self.shared;
        let session = match retry
            .round(|endpoint| {
                let events = &events;
                async move { connection::establish(shared, events, &endpoint).await }
            })
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.shared.current.reset();
                self.run.start_failed();
                return Err(e);
            }
        };
        let supervisor = tokio::spawn(connection::supervise(
            self.shared.clone(),
            events,
            session,
            retry,
        ));
        if let Err(running) = self.run.started(Running { supervisor }) {
            // Closed while starting.
            running.supervisor.abort();
        }
        Ok(())
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        publisher::publish(&self.shared, publisher::Target::Direct(to), id, packet).await
    }

    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        publisher::publish_ordered(&self.shared, publisher::Target::Direct(to), id, packet).await
    }

    async fn publish(&self, packet: Packet) -> Result<()> {
        publisher::publish(&self.shared, publisher::Target::Fanout, None, packet).await
    }

    async fn close(&self) -> Result<()> {
        let Some(Running { mut supervisor }) = self.run.close() else {
            self.shared.current.close();
            return Ok(());
        };
        let shared = &self.shared;
        let deadline = tokio::time::Instant::now() + shared.settings.timing.close_timeout;
        let session = shared.current.get();
        // 1. Stop consuming: our tasks stop taking deliveries (what they hold goes back to its
        // queue) and cancel their consumers, so the broker stops sending. A consumer cancelled
        // from here on is not a fault.
        shared.closing.cancel();
        if let Some(session) = &session {
            let handles =
                std::mem::take(&mut *session.consumers.lock().unwrap_or_else(|e| e.into_inner()));
            for h in handles {
                let _ = tokio::time::timeout_at(deadline, h).await;
            }
        }
        // 2. Let in-flight deliveries be settled and sends be confirmed.
        let result = drain(&shared.name, deadline, &shared.in_flight, &shared.sends).await;
        // 3. Stop recovering, close the connection.
        if tokio::time::timeout(Duration::from_secs(5), &mut supervisor)
            .await
            .is_err()
        {
            supervisor.abort();
        }
        let last = shared.current.get();
        shared.current.close();
        if let Some(s) = last.or(session) {
            s.shut("closed").await;
        }
        result
    }
}
