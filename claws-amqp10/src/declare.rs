//! RabbitMQ scheme: declaring exchanges, queues and bindings over AMQP 0-9-1.
//!
//! RabbitMQ 3.10's AMQP 1.0 plugin cannot bind a named queue to an exchange (only server-named
//! queues, which are never deleted), so the claw opens a short AMQP 0-9-1 connection (lapin) at
//! every connect and executes the same plan as the 0-9-1 claw ([`claws_core::topology::plan`],
//! through `claws_amqp091::topology::declare`), then closes it. A queue that exists with other
//! arguments is adopted as it is ([`OnMismatch::Adopt`]), so a 0-9-1 instance's choices
//! (`x-expires`, quorum group queues) never clash with ours; a missing queue gets the plan's
//! defaults: durable, `x-dead-letter-exchange = xmpp_dead_letter`, and `x-expires` on
//! per-instance queues.

use std::time::Duration;

use claws_amqp091::topology::{self as declarer, Declared, OnMismatch};
use claws_core::topology::{plan, Topology};
use claws_core::{Error, Result};
use lapin::{Connection, ConnectionProperties};

use crate::connection::Endpoint;
use crate::shared::Shared;

/// Opens the short 0-9-1 connection to `endpoint` (declaring, and the [`poison`](crate::poison)
/// sweep).
pub(crate) async fn open(endpoint: &Endpoint, claw: &str) -> Result<Connection> {
    Connection::connect(&endpoint.amqp091_url(), ConnectionProperties::default())
        .await
        .map_err(|e| Error::Connect {
            claw: claw.to_owned(),
            endpoint: endpoint.to_string(),
            reason: format!("declaring the topology over AMQP 0-9-1: {e}"),
        })
}

/// Declares the exchanges, the dead-letter queue, and each subscription's queue and binding,
/// through `endpoint` (the node the 1.0 connection is being opened to). Queues whose node is
/// down are listed in [`Declared::unavailable`] instead of failing. A broker that refuses
/// transient shared queues (RabbitMQ 4.3's default; it closes the connection) gets the plan
/// without them on a second connection
/// ([`Topology::without_transient_queues`](claws_core::topology::Topology::without_transient_queues)).
pub(crate) async fn declare(shared: &Shared, endpoint: &Endpoint) -> Result<Declared> {
    let s = &shared.settings;
    let queues = s.queues.delivery_limit_or(s.max_deliveries);
    let topology = plan(&shared.jid, s.subscriptions, &queues)?;
    match declare_plan(shared, endpoint, &topology).await {
        Err(e) if declarer::refuses_transient(&e) => {
            let durable = topology.without_transient_queues(&queues);
            declare_plan(shared, endpoint, &durable).await
        }
        other => other,
    }
}

async fn declare_plan(
    shared: &Shared,
    endpoint: &Endpoint,
    topology: &Topology,
) -> Result<Declared> {
    let connect_timeout = shared.settings.timing.connect_timeout;
    let unanswered = |what: &str, after: Duration| Error::Connect {
        claw: shared.name.to_string(),
        endpoint: endpoint.to_string(),
        reason: format!("declaring the topology over AMQP 0-9-1: {what} within {after:?}"),
    };
    let conn = tokio::time::timeout(connect_timeout, open(endpoint, &shared.name))
        .await
        .map_err(|_| unanswered("no connection", connect_timeout))??;
    let broker = |what: &str, e: lapin::Error| Error::Broker {
        claw: shared.name.to_string(),
        what: what.to_owned(),
        source: e.into(),
    };
    // As the 0-9-1 claw's setup: each queue's answer within half the connect time-out (a
    // queue whose node is down may not answer for a minute), the whole within three.
    let bound = connect_timeout * 3;
    let work = async {
        let mut ch = conn
            .create_channel()
            .await
            .map_err(|e| broker("opening a declaring channel", e))?;
        let declared = declarer::declare(
            &shared.name,
            &conn,
            &mut ch,
            topology,
            OnMismatch::Adopt,
            declarer::answer_within(connect_timeout),
        )
        .await?;
        // Closed before the connection: a channel dropped open races the connection's
        // close, and lapin logs that race as an error.
        let _ = ch.close(200, "declared".into()).await;
        Ok(declared)
    };
    let result = tokio::time::timeout(bound, work)
        .await
        .unwrap_or_else(|_| Err(unanswered("no answer", bound)));
    // Closed whatever happened: a connection left open would outlive this attempt.
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "declared".into())).await;
    result
}

/// Deletes queues (for tests and tools): a short 0-9-1 connection.
pub(crate) async fn delete_queues(endpoint: &Endpoint, claw: &str, names: &[String]) -> Result<()> {
    let conn = open(endpoint, claw).await?;
    let result = async {
        let ch = conn.create_channel().await.map_err(|e| Error::Broker {
            claw: claw.to_owned(),
            what: "opening a channel".into(),
            source: e.into(),
        })?;
        declarer::delete_queues(claw, &ch, names).await?;
        let _ = ch.close(200, "deleted".into()).await;
        Ok(())
    }
    .await;
    let _ = conn.close(200, "deleted".into()).await;
    result
}
