//! RabbitMQ scheme: declaring exchanges, queues and bindings over AMQP 0-9-1.
//!
//! RabbitMQ 3.10's AMQP 1.0 plugin cannot bind a named queue to an exchange (only server-named
//! queues, which are never deleted), so the claw opens a short AMQP 0-9-1 connection (lapin) at
//! every connect, declares what TOPOLOGY.md asks for, and closes it. A queue that exists
//! with other arguments is adopted as it is (a failed declare, then a passive one), so a 0-9-1 instance's arguments
//! (`x-expires`, quorum group queues) never clash with ours; only queues that are missing are
//! declared, with the 0-9-1 claw's defaults: durable, `x-dead-letter-exchange =
//! xmpp_dead_letter`, and `x-expires` on per-instance queues.

use std::time::Duration;

use claws_core::topology::{
    DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, DIRECT_EXCHANGE, FANOUT_EXCHANGE,
};
use claws_core::{Error, Result};
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::address::Source;
use crate::connection::Endpoint;

/// How queues that are missing get declared.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeclareOptions {
    pub(crate) durable: bool,
    pub(crate) queue_expiry: Option<Duration>,
}

/// Declares the exchanges, the dead-letter queue, and each source's queue and binding.
pub(crate) async fn declare(
    endpoint: &Endpoint,
    sources: &[Source],
    options: DeclareOptions,
    timeout: Duration,
    claw: &str,
) -> Result<()> {
    let fail = |reason: String| Error::Connect {
        claw: claw.to_owned(),
        endpoint: endpoint.to_string(),
        reason: format!("declaring the topology over AMQP 0-9-1: {reason}"),
    };
    let work = async {
        let conn = Connection::connect(&endpoint.amqp091_url(), ConnectionProperties::default())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let result = declare_on(&conn, sources, options, claw).await;
        let _ = conn.close(200, "declared".into()).await;
        result
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!("no answer within {timeout:?}"))),
    }
}

fn short(s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| Error::NameTooLong {
        kind: "queue",
        name: s.chars().take(60).collect(),
        len: s.len(),
    })
}

async fn declare_on(
    conn: &Connection,
    sources: &[Source],
    options: DeclareOptions,
    claw: &str,
) -> Result<()> {
    let backend = |what: String, e: lapin::Error| Error::Backend(format!("{what}: {e}").into());
    let mut ch = conn
        .create_channel()
        .await
        .map_err(|e| backend("opening a channel".into(), e))?;
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for (name, kind) in [
        (DIRECT_EXCHANGE, ExchangeKind::Direct),
        (FANOUT_EXCHANGE, ExchangeKind::Fanout),
        (DEAD_LETTER_EXCHANGE, ExchangeKind::Fanout),
    ] {
        ch.exchange_declare(name.into(), kind, durable, FieldTable::default())
            .await
            .map_err(|e| mismatch(name, "exchange", e, claw))?;
    }
    ensure_queue(
        conn,
        &mut ch,
        DEAD_LETTER_QUEUE,
        true,
        FieldTable::default(),
        claw,
    )
    .await?;
    ch.queue_bind(
        DEAD_LETTER_QUEUE.into(),
        DEAD_LETTER_EXCHANGE.into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .map_err(|e| backend(format!("binding `{DEAD_LETTER_QUEUE}`"), e))?;
    for source in sources {
        let spec = &source.spec;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(LongString::from(DEAD_LETTER_EXCHANGE)),
        );
        if !spec.kind.is_group() {
            if let Some(expiry) = options.queue_expiry {
                let ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX).max(1);
                args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
            }
        }
        ensure_queue(conn, &mut ch, &spec.name, options.durable, args, claw).await?;
        ch.queue_bind(
            short(&spec.name)?,
            spec.exchange.into(),
            short(&spec.routing_key)?,
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| backend(format!("binding `{}` to `{}`", spec.name, spec.exchange), e))?;
    }
    // Closed before the connection: a channel dropped open races the connection's close, and
    // lapin logs that race as an error.
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

/// Declares `name` with our arguments; if it exists with other ones (a 0-9-1 instance's
/// choices), adopts it as it is.
async fn ensure_queue(
    conn: &Connection,
    ch: &mut Channel,
    name: &str,
    durable: bool,
    args: FieldTable,
    claw: &str,
) -> Result<()> {
    let options = QueueDeclareOptions {
        durable,
        ..QueueDeclareOptions::default()
    };
    let Err(declare_error) = ch.queue_declare(short(name)?, options, args).await else {
        return Ok(());
    };
    // The failed declare closed the channel; look at the queue that is there.
    *ch = conn
        .create_channel()
        .await
        .map_err(|e| Error::Backend(format!("reopening a channel: {e}").into()))?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match ch
        .queue_declare(short(name)?, passive, FieldTable::default())
        .await
    {
        Ok(_) => {
            tracing::debug!(queue = name, error = %declare_error, "adopting an existing queue declared with other arguments");
            Ok(())
        }
        Err(e) => Err(Error::Backend(
            format!(
                "claw `{claw}`: could not declare queue `{name}` ({declare_error}) nor find it ({e})"
            )
            .into(),
        )),
    }
}

fn mismatch(name: &str, what: &str, e: lapin::Error, claw: &str) -> Error {
    Error::Backend(
        format!(
            "claw `{claw}`: {what} `{name}` could not be declared ({e}); if it exists with \
             another type or durability, delete it or align the other users"
        )
        .into(),
    )
}

/// Deletes queues (for tests and tools): a short 0-9-1 connection.
pub(crate) async fn delete_queues(endpoint: &Endpoint, names: &[String]) -> Result<()> {
    let conn = Connection::connect(&endpoint.amqp091_url(), ConnectionProperties::default())
        .await
        .map_err(|e| Error::Backend(format!("connecting to delete queues: {e}").into()))?;
    let ch = conn
        .create_channel()
        .await
        .map_err(|e| Error::Backend(format!("opening a channel: {e}").into()))?;
    for name in names {
        ch.queue_delete(short(name)?, QueueDeleteOptions::default())
            .await
            .map_err(|e| Error::Backend(format!("deleting `{name}`: {e}").into()))?;
    }
    let _ = ch.close(200, "deleted".into()).await;
    let _ = conn.close(200, "deleted".into()).await;
    Ok(())
}
