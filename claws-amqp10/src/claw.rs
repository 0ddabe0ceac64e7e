//! [`Amqp10Claw`]: the claw itself: starting, sending, closing.

use std::sync::Arc;

use async_trait::async_trait;
use claws_core::jid::Jid;
use claws_core::runtime::{CancellationToken, Current, Endpoints, InFlight, Lifecycle, Reconnect};
use claws_core::{Capabilities, Claw, Confirmation, Error, Events, Packet, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::address::Target;
use crate::address::{AddressScheme, Addresses, Source};
use crate::attempts::Attempts;
use crate::config::Settings;
use crate::connection::Endpoint;
use crate::declare;
use crate::publisher::{message_id, Outgoing, ReplyTo};
use crate::shared::Shared;
use crate::supervisor;

/// What a running claw owns.
#[derive(Debug)]
struct Running {
    stop: CancellationToken,
    supervisor: JoinHandle<Result<()>>,
}

/// The AMQP 1.0 claw. Build it with [`Amqp10Claw::builder`] or [`Amqp10Claw::from_config`];
/// use it through the [`Claw`] trait (usually inside a [`Router`](claws_core::Router)).
#[derive(Debug)]
pub struct Amqp10Claw {
    shared: Arc<Shared>,
    run: Lifecycle<Running>,
}

impl Amqp10Claw {
    pub(crate) fn new(
        name: Arc<str>,
        jid: Jid,
        endpoints: Vec<Endpoint>,
        sources: Vec<Source>,
        settings: Settings,
    ) -> Self {
        let run_name = name.clone();
        let container_id = format!("claws-{}-{}", jid.as_str(), message_id());
        Self {
            shared: Arc::new(Shared {
                name,
                jid,
                endpoints,
                sources,
                settings,
                current: Current::new(run_name.clone()),
                attempts: Attempts::default(),
                in_flight: InFlight::new(),
                sends: InFlight::new(),
                container_id,
                broker: Default::default(),
                dialect: Default::default(),
            }),
            run: Lifecycle::new(run_name),
        }
    }

    /// The address scheme in use.
    pub fn scheme(&self) -> AddressScheme {
        self.shared.settings.scheme
    }

    /// The RabbitMQ address form setting (`auto`, `v1` or `v2`).
    pub fn addresses(&self) -> Addresses {
        self.shared.settings.addresses
    }

    /// The source address of each subscription, in TOPOLOGY.md's order, with the queue name it
    /// stands for (for logs and tools). With `addresses = "auto"` the address form is the
    /// last connection's (v1 before the first).
    pub fn sources(&self) -> Vec<(String, String)> {
        let dialect = self.shared.dialect();
        self.shared
            .sources
            .iter()
            .map(|s| (s.address(dialect), s.spec.name.clone()))
            .collect()
    }

    /// RabbitMQ scheme: deletes this instance's queues over AMQP 0-9-1 (for tests and tools;
    /// the claw should be closed). Group queues shared with running instances go too. With
    /// several URLs, the first node that answers does it.
    pub async fn delete_queues(&self) -> Result<()> {
        let s = &self.shared;
        let names: Vec<String> = s.sources.iter().map(|s| s.spec.name.clone()).collect();
        let mut nodes = Reconnect::new(
            s.name.to_string(),
            Endpoints::in_order(s.endpoints.clone())?,
            s.settings.timing.backoff(),
        );
        nodes
            .round(|endpoint| {
                let names = &names;
                async move { declare::delete_queues(&endpoint, &s.name, names).await }
            })
            .await
    }

    /// A direct send to `to`, checked.
    fn direct(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<Outgoing> {
        // A 0-9-1 recipient's broker closes its connection over a correlation id longer than
        // an AMQP short string (255 bytes): refused here, as the 0-9-1 claw does.
        if let Some(id) = id.filter(|id| id.len() > 255) {
            return Err(Error::NameTooLong {
                kind: "correlation id",
                name: id.chars().take(60).collect::<String>() + "...",
                len: id.len(),
            });
        }
        let target = self.shared.settings.scheme.direct_target(to)?;
        Ok(self.outgoing(target, id, packet))
    }

    fn outgoing(&self, target: Target, id: Option<&str>, packet: Packet) -> Outgoing {
        let s = &self.shared;
        Outgoing {
            route: target.route,
            subject: Some(target.subject),
            reply_to: ReplyTo::Me,
            correlation_id: id.map(str::to_owned),
            message_id: Some(message_id()),
            payload: packet.into_bytes(),
            delivery_count: 0,
            durable: s.settings.queues.durable,
            traceparent: None,
        }
    }
}

#[async_trait]
impl Claw for Amqp10Claw {
    fn name(&self) -> &str {
        &self.shared.name
    }

    fn jid(&self) -> &Jid {
        &self.shared.jid
    }

    fn capabilities(&self) -> Capabilities {
        let s = &self.shared.settings;
        match s.scheme {
            AddressScheme::RabbitMq => {
                let mut c = Capabilities::all();
                c.persistence = s.queues.durable;
                c.survives_broker_restart = s.queues.durable;
                // RabbitMQ 3.x's AMQP 1.0 plugin accepts a transfer no queue takes; RabbitMQ 4
                // releases it (NoRoute). Known once connected (or with `addresses = "v2"`).
                c.unroutable_errors = self.shared.broker4().unwrap_or(false);
                c
            }
            AddressScheme::Queue => {
                let mut c = Capabilities::none();
                c.load_balancing = true;
                c.ordering = true;
                c.redelivery = true;
                c.dead_letter = true;
                // The claw reconnects, but a broker that settles deliveries when it sends them
                // (the Proton example broker) loses what was on the wire at the cut: at most
                // the credit window of each link (`lossless_cut` stays false).
                c.reconnect = true;
                c
            }
        }
    }

    async fn start(&self, events: Events) -> Result<()> {
        self.run.begin_start()?;
        let (first_tx, first_rx) = oneshot::channel();
        let stop = CancellationToken::new();
        self.shared.current.down();
        let supervisor = tokio::spawn(supervisor::supervise(
            self.shared.clone(),
            events,
            stop.clone(),
            first_tx,
        ));
        match first_rx.await {
            Ok(Ok(())) => {
                if let Err(running) = self.run.started(Running { stop, supervisor }) {
                    // Closed while starting.
                    running.stop.cancel();
                }
                Ok(())
            }
            Ok(Err(e)) => {
                self.run.start_failed();
                self.shared.current.reset();
                Err(e)
            }
            Err(_) => {
                self.run.start_failed();
                Err(Error::backend(format!(
                    "claw `{}`: the connection task ended unexpectedly",
                    self.shared.name
                )))
            }
        }
    }

    async fn send(&self, to: &Jid, id: Option<&str>, packet: Packet) -> Result<()> {
        let out = self.direct(to, id, packet)?;
        let (span, traceparent) = claws_core::trace::outgoing(&self.shared.name, to.as_str());
        let out = Outgoing { traceparent, ..out };
        let _guard = self.shared.sends.enter();
        self.shared
            .send_outgoing(&out, to.as_str())
            .instrument(span)
            .await
    }

    async fn send_ordered(
        &self,
        to: &Jid,
        id: Option<&str>,
        packet: Packet,
    ) -> Result<Confirmation> {
        let out = self.direct(to, id, packet)?;
        let (span, traceparent) = claws_core::trace::outgoing(&self.shared.name, to.as_str());
        let out = Outgoing { traceparent, ..out };
        let guard = self.shared.sends.enter();
        let started = tokio::time::Instant::now();
        let to = to.to_string();
        let shared = self.shared.clone();
        let handed = shared
            .hand_over(&out, &to, started)
            .instrument(span.clone())
            .await?;
        if handed.is_none() {
            // The generation failed under the transfer: sent again here, so that it keeps
            // its place.
            let result = shared
                .deliver(&out, &to, started, None)
                .instrument(span)
                .await;
            drop(guard);
            return result.map(|()| Confirmation::confirmed());
        }
        Ok(Confirmation::new(
            async move {
                let _guard = guard;
                shared.deliver(&out, &to, started, handed).await
            }
            .instrument(span),
        ))
    }

    async fn publish(&self, packet: Packet) -> Result<()> {
        let Some(target) = self.shared.settings.scheme.fanout_target(&self.shared.jid) else {
            return Err(Error::Unsupported {
                claw: self.shared.name.to_string(),
                what: "broadcast",
                why: "the `queue` address scheme has no broadcast (a plain queue broker has no \
                      fanout); use the `rabbitmq` scheme for broadcasts"
                    .into(),
            });
        };
        let mut out = self.outgoing(target, None, packet);
        let (span, traceparent) = claws_core::trace::outgoing(&self.shared.name, "broadcast");
        out.traceparent = traceparent;
        let _guard = self.shared.sends.enter();
        self.shared
            .send_outgoing(&out, "broadcast")
            .instrument(span)
            .await
    }

    async fn close(&self) -> Result<()> {
        let Some(Running { stop, supervisor }) = self.run.close() else {
            self.shared.current.close();
            return Ok(());
        };
        stop.cancel();
        match supervisor.await {
            Ok(r) => r,
            Err(e) => Err(Error::Broker {
                claw: self.shared.name.to_string(),
                what: "the connection task".into(),
                source: e.into(),
            }),
        }
    }
}
