//! Sending: one link per target address, unsettled transfers, and the broker's outcome awaited.
//!
//! A send is complete when the broker answered `accepted`; `rejected`, `released` and
//! `modified` are [`Error::Refused`], except `released` from RabbitMQ 4 (no queue took it):
//! [`Error::NoRoute`] for a direct send, success for a broadcast nobody listens to (as on 0-9-1).
//!
//! On RabbitMQ 4 (v2 addresses) every exchange send goes through one anonymous link, each
//! message naming its destination in `to` (`/exchanges/xmpp_direct/J`): one attach per
//! generation instead of one per destination, and no cache of links to evict. Transfers are pipelined: the link is locked only while a
//! transfer is handed over, and each send awaits its own outcome; `send_ordered` returns once
//! the transfer is handed over (in order on its link), its outcome awaited by the
//! confirmation. A send whose link or
//! connection fails is retried on the next generation (see [`connection`](crate::connection)),
//! bounded by `send_timeout`: the stanza may arrive twice, but is not lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use claws_core::trace::TRACEPARENT;
use claws_core::{Error, Result};
use fe2o3_amqp::link::delivery::DeliveryFut;
use fe2o3_amqp::link::SendError;
use fe2o3_amqp::types::messaging::{ApplicationProperties, Header, Message, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, SimpleValue};
use tokio::time::Instant;

use crate::address::Route;
use crate::connection::Live;
use crate::shared::Shared;

/// The `reply-to` of an outgoing message.
#[derive(Debug, Clone)]
pub(crate) enum ReplyTo {
    /// This instance, spelt for the connection's dialect.
    Me,
    /// As it was (a copy sent back to its queue).
    Copy(Option<String>),
}

/// One message to send, as the claw builds it.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) route: Route,
    pub(crate) subject: Option<String>,
    pub(crate) reply_to: ReplyTo,
    pub(crate) correlation_id: Option<String>,
    pub(crate) message_id: Option<String>,
    pub(crate) payload: Bytes,
    pub(crate) delivery_count: u32,
    pub(crate) durable: bool,
    /// The W3C trace context, as the `traceparent` application property.
    pub(crate) traceparent: Option<String>,
}

impl Outgoing {
    /// The message, with `to` (v2 addresses) and the `reply-to` spelt for the connection.
    pub(crate) fn to_message(
        &self,
        to: Option<&str>,
        reply_to: Option<String>,
        user: Option<&str>,
    ) -> Message<fe2o3_amqp::types::messaging::Data> {
        let mut props = Properties::builder();
        if let Some(user) = user {
            props = props.user_id(Binary::from(user.as_bytes().to_vec()));
        }
        if let Some(id) = &self.message_id {
            props = props.message_id(id.clone());
        }
        if let Some(to) = to {
            props = props.to(to.to_owned());
        }
        if let Some(s) = &self.subject {
            props = props.subject(s.clone());
        }
        if let Some(r) = reply_to {
            props = props.reply_to(r);
        }
        if let Some(c) = &self.correlation_id {
            props = props.correlation_id(c.clone());
        }
        let application_properties = self.traceparent.as_ref().map(|t| {
            ApplicationProperties::builder()
                .insert(TRACEPARENT.to_owned(), SimpleValue::String(t.clone()))
                .build()
        });
        Message::builder()
            .header(Header {
                durable: self.durable,
                delivery_count: self.delivery_count,
                ..Header::default()
            })
            .properties(props.build())
            .application_properties(application_properties)
            .data(Binary::from(self.payload.to_vec()))
            .build()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A message id unique enough for counting redeliveries: time, process, counter.
pub(crate) fn message_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    format!("{:x}-{:x}-{n:x}", nanos, std::process::id())
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Accepted(_) => "accepted".into(),
        Outcome::Rejected(r) => match &r.error {
            Some(e) => format!(
                "rejected: {:?}{}",
                e.condition,
                e.description
                    .as_deref()
                    .map(|d| format!(" ({d})"))
                    .unwrap_or_default()
            ),
            None => "rejected".into(),
        },
        Outcome::Released(_) => "released (the broker did not take it)".into(),
        Outcome::Modified(_) => "modified (the broker did not take it)".into(),
    }
}

/// The outcome of a transfer handed to its link.
type OutcomeFut = DeliveryFut<std::result::Result<Outcome, SendError>>;

/// A transfer handed to its link (so in order with every later transfer on it), on the
/// generation `live`, and its outcome to come.
pub(crate) struct HandedOver {
    live: Arc<Live>,
    outcome: OutcomeFut,
}

impl Shared {
    /// Sends `out` and waits for the broker's outcome, across reconnections, within
    /// `send_timeout`. `to` names the destination in errors.
    pub(crate) async fn send_outgoing(&self, out: &Outgoing, to: &str) -> Result<()> {
        self.deliver(out, to, Instant::now(), None).await
    }

    /// Hands `out` to its link and returns without waiting for the outcome (`Some`), or
    /// `None` when the generation failed under it (then [`deliver`](Self::deliver) sends it
    /// again on the next one). `started` is when the send began (`send_timeout` counts from
    /// it).
    pub(crate) async fn hand_over(
        &self,
        out: &Outgoing,
        to: &str,
        started: Instant,
    ) -> Result<Option<HandedOver>> {
        let deadline = started + self.settings.timing.send_timeout;
        let live = self
            .current
            .wait_live(started, self.settings.timing.send_timeout)
            .await?;
        match self.transfer(&live, out, to, deadline).await {
            Ok(Ok(outcome)) => Ok(Some(HandedOver { live, outcome })),
            Err(e @ (Error::Timeout { .. } | Error::Config(_))) => Err(e),
            Ok(Err(e)) if e.recovery().link_is_usable() => Err(Error::Broker {
                claw: self.name.to_string(),
                what: format!("sending to `{to}`"),
                source: Box::new(e),
            }),
            Ok(Err(e)) => {
                live.fail(format!("sending to `{to}`: {e}"));
                Ok(None)
            }
            Err(e) if !live.is_failed() => Err(e),
            Err(_) => Ok(None),
        }
    }

    /// Hands the message to its link (attaching it on first use), bounded by `deadline` and
    /// by the generation's life.
    async fn transfer(
        &self,
        live: &Arc<Live>,
        out: &Outgoing,
        to: &str,
        deadline: Instant,
    ) -> Result<std::result::Result<OutcomeFut, SendError>> {
        let spelt = out.route.spell(live.dialect);
        let reply_to = match &out.reply_to {
            ReplyTo::Me => Some(self.settings.scheme.reply_to(&self.jid, live.dialect)),
            ReplyTo::Copy(r) => r.clone(),
        };
        let message = out.to_message(spelt.to.as_deref(), reply_to, live.user.as_deref());
        let attempt = async {
            let link = live.sender(spelt.link.as_deref(), &self.name).await?;
            let mut sender = link.lock().await;
            Ok(sender.send_batchable(message).await)
        };
        self.bounded(live, to, deadline, attempt).await
    }

    /// `attempt`, unless the generation fails first (credit, an attach or an outcome awaited
    /// on a dead connection never comes) or `deadline` passes.
    async fn bounded<T>(
        &self,
        live: &Live,
        to: &str,
        deadline: Instant,
        attempt: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let attempt = async {
            tokio::select! {
                biased; // an outcome that has arrived wins over the failure that followed it
                r = attempt => r,
                reason = live.failed() => Err(Error::Broker {
                    claw: self.name.to_string(),
                    what: format!("sending to `{to}`"),
                    source: reason.into(),
                }),
            }
        };
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for the broker's outcome for a stanza to `{to}`",
                    self.name
                ),
                after: self.settings.timing.send_timeout,
            }),
        }
    }

    /// Waits for the outcome of `handed` (or sends `out` first), sending again on the next
    /// generation when this one fails, until `send_timeout` has passed since `started`.
    pub(crate) async fn deliver(
        &self,
        out: &Outgoing,
        to: &str,
        started: Instant,
        mut handed: Option<HandedOver>,
    ) -> Result<()> {
        let deadline = started + self.settings.timing.send_timeout;
        loop {
            let (live, result) = match handed.take() {
                Some(HandedOver { live, outcome }) => {
                    let result = self
                        .bounded(&live, to, deadline, async { Ok(outcome.await) })
                        .await;
                    (live, result)
                }
                None => {
                    let live = self
                        .current
                        .wait_live(started, self.settings.timing.send_timeout)
                        .await?;
                    let result = match self.transfer(&live, out, to, deadline).await {
                        Ok(Ok(outcome)) => {
                            self.bounded(&live, to, deadline, async { Ok(outcome.await) })
                                .await
                        }
                        Ok(Err(e)) => Ok(Err(e)),
                        Err(e) => Err(e),
                    };
                    (live, result)
                }
            };
            match result {
                Ok(Ok(Outcome::Accepted(_))) => return Ok(()),
                // RabbitMQ 4 releases what no queue took.
                Ok(Ok(Outcome::Released(_))) if live.broker4 && out.route.is_direct() => {
                    return Err(Error::NoRoute {
                        to: to.to_owned(),
                        claw: self.name.to_string(),
                    })
                }
                // A broadcast no queue is bound for: nobody to hear it, as on 0-9-1.
                Ok(Ok(Outcome::Released(_)))
                    if live.broker4 && matches!(out.route, Route::Exchange { .. }) =>
                {
                    return Ok(())
                }
                Ok(Ok(other)) => {
                    return Err(Error::Refused {
                        to: to.to_owned(),
                        claw: self.name.to_string(),
                        reason: describe(&other),
                    })
                }
                Ok(Err(e)) if e.recovery().link_is_usable() => {
                    return Err(Error::Broker {
                        claw: self.name.to_string(),
                        what: format!("sending to `{to}`"),
                        source: Box::new(e),
                    })
                }
                Ok(Err(e)) => {
                    // The link or connection failed: a new generation retries the send.
                    live.fail(format!("sending to `{to}`: {e}"));
                }
                Err(e @ Error::Timeout { .. }) => return Err(e),
                // A refused attach is not retried: every generation would be refused alike.
                Err(e @ Error::Config(_)) => return Err(e),
                Err(e) => {
                    if !live.is_failed() {
                        return Err(e);
                    }
                }
            }
        }
    }
}
