//! Sending: `send` (direct, mandatory) and `publish` (fanout), each complete once the broker
//! confirmed it.
//!
//! A send that meets a dead connection (the publish or its confirm fails) waits for the next
//! session and publishes again, until `send_timeout` has passed since it started: at-least-once,
//! so a stanza whose confirm was lost with the connection may arrive twice.

use std::sync::Arc;

use claws_core::jid::Jid;
use claws_core::topology::{DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws_core::trace::TRACEPARENT;
use claws_core::{Error, Packet, Result};
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Confirmation};
use tokio::time::Instant;
use tracing::Instrument;

use crate::session::Shared;
use crate::topology::short;

/// Where a stanza goes.
pub(crate) enum Target<'a> {
    /// `xmpp_direct`, routing key = the JID, mandatory.
    Direct(&'a Jid),
    /// `xmpp_fanout`, routing key = the sender's JID.
    Fanout,
}

/// Publishes `packet` and waits for the broker's confirm, in a `claws.send` span; the trace
/// context current on the task, if any, travels in a `traceparent` header.
pub(crate) async fn publish(
    shared: &Arc<Shared>,
    target: Target<'_>,
    id: Option<&str>,
    packet: Packet,
) -> Result<()> {
    let to = match &target {
        Target::Direct(jid) => jid.as_str(),
        Target::Fanout => "broadcast",
    };
    let (span, traceparent) = claws_core::trace::outgoing(&shared.name, to);
    confirmed(shared, target, id, packet, traceparent)
        .instrument(span)
        .await
}

async fn confirmed(
    shared: &Arc<Shared>,
    target: Target<'_>,
    id: Option<&str>,
    packet: Packet,
    traceparent: Option<String>,
) -> Result<()> {
    let started = Instant::now();
    let (exchange, routing_key, mandatory, to) = match target {
        Target::Direct(jid) => (
            DIRECT_EXCHANGE,
            short("routing key", jid.as_str())?,
            true,
            jid.as_str(),
        ),
        Target::Fanout => (
            FANOUT_EXCHANGE,
            shared.jid_short.clone(),
            false,
            "broadcast",
        ),
    };
    let mut properties = BasicProperties::default()
        .with_delivery_mode(if shared.settings.durable { 2 } else { 1 })
        .with_reply_to(shared.jid_short.clone());
    if let Some(id) = id {
        properties = properties.with_correlation_id(short("correlation id", id)?);
    }
    if let Some(traceparent) = traceparent {
        let mut headers = FieldTable::default();
        headers.insert(
            ShortString::from(TRACEPARENT),
            AMQPValue::LongString(traceparent.into()),
        );
        properties = properties.with_headers(headers);
    }
    let options = BasicPublishOptions {
        mandatory,
        immediate: false,
    };
    let _guard = shared.sends.enter();
    let deadline = started + shared.settings.timing.send_timeout;
    let mut nack_backoff = shared.settings.timing.backoff();
    loop {
        let session = shared
            .current
            .wait_live(started, shared.settings.timing.send_timeout)
            .await?;
        let channel = session.publisher();
        // The connection's user, which the broker checks: the receiver's `Via::user`.
        let properties = match &session.user {
            Some(user) => properties.clone().with_user_id(user.clone()),
            None => properties.clone(),
        };
        let attempt = async {
            channel
                .basic_publish(
                    ShortString::from(exchange),
                    routing_key.clone(),
                    options,
                    packet.as_bytes(),
                    properties,
                )
                .await?
                .await
        };
        let Ok(confirmation) = tokio::time::timeout_at(deadline, attempt).await else {
            return Err(Error::Timeout {
                what: format!(
                    "claw `{}` waiting for the broker to confirm the stanza sent to `{to}`",
                    shared.name
                ),
                after: shared.settings.timing.send_timeout,
            });
        };
        match confirmation {
            Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => return Ok(()),
            Ok(Confirmation::Ack(Some(returned))) => {
                // Never the payload (nor the properties): the routing key and sizes only.
                tracing::warn!(claw = &*shared.name, routing_key = %returned.routing_key,
                    reply_code = returned.reply_code, reply_text = %returned.reply_text,
                    bytes = returned.data.len(), sent_bytes = packet.len(),
                    "the broker returned a stanza no queue takes (no route)");
                if returned.routing_key != routing_key {
                    tracing::warn!(claw = &*shared.name, expected = %routing_key, got = %returned.routing_key,
                        "a returned message was matched to another send");
                }
                return Err(Error::NoRoute {
                    to: to.to_owned(),
                    claw: shared.name.to_string(),
                });
            }
            Ok(Confirmation::Nack(_)) => {
                // The broker could not store it now: on a cluster, a quorum queue is electing
                // a new leader after a node died. Sent again after a pause, within the send
                // time-out; only then is it refused.
                let pause = nack_backoff.next_delay();
                if tokio::time::Instant::now() + pause >= deadline {
                    return Err(Error::Refused {
                        to: to.to_owned(),
                        claw: shared.name.to_string(),
                        reason: format!(
                            "negative publisher confirm (basic.nack) on every attempt for {:?}: \
                             the broker could not store it",
                            shared.settings.timing.send_timeout
                        ),
                    });
                }
                tracing::debug!(claw = &*shared.name, %to, ?pause, "send nacked; sending again on a new channel");
                if let Err(err) = session.renew_publisher(&channel).await {
                    shared.mark_dead(&session, format!("opening a publishing channel: {err}"));
                }
                tokio::time::sleep(pause).await;
            }
            Err(err) => {
                // The channel or connection failed under the send: retry on the next session.
                shared.mark_dead(&session, format!("publishing failed: {err}"));
                tracing::debug!(claw = &*shared.name, %err, "send interrupted; retrying on the next connection");
            }
        }
    }
}
