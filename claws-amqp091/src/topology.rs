//! Making a [`Topology`] so on the broker: [`declare`] executes the plan that
//! [`claws_core::topology::plan`] computed (the names and arguments live there, once), and the
//! headers the claw puts on its own requeued copies.
//!
//! The AMQP 1.0 claw declares through this module too (RabbitMQ 3.x's AMQP 1.0 plugin cannot
//! bind queues), with [`OnMismatch::Adopt`].

use std::future::Future;
use std::time::Duration;

use claws_core::{Error, Result};
use lapin::options::{
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

pub use claws_core::topology::{
    plan, ArgValue, BindingDecl, ExchangeDecl, ExchangeType, QueueDecl, Topology, TopologyOptions,
};

/// The header holding how many times a stanza was delivered and failed (set when the claw
/// re-queues a failed stanza; see the crate docs).
pub const DELIVERIES_HEADER: &str = "x-claws-deliveries";
/// The header keeping a re-queued stanza's original exchange.
pub const EXCHANGE_HEADER: &str = "x-claws-exchange";
/// The header keeping a re-queued stanza's original routing key.
pub const ROUTING_KEY_HEADER: &str = "x-claws-routing-key";

/// A checked AMQP short string: [`Error::NameTooLong`] over 255 bytes (names were checked by
/// [`plan`]; this never panics).
pub fn short(kind: &'static str, s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| Error::NameTooLong {
        kind,
        name: s.chars().take(60).collect::<String>() + "...",
        len: s.len(),
    })
}

fn table(arguments: &[(&'static str, ArgValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in arguments {
        let value = match v {
            ArgValue::Str(s) => AMQPValue::LongString(LongString::from(*s)),
            ArgValue::Int(i) => AMQPValue::LongLongInt(*i),
        };
        t.insert(ShortString::from(*k), value);
    }
    t
}

/// What [`declare`] does with a queue that exists with other arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnMismatch {
    /// Fail with an [`Error::Config`] that names the queue, the argument and the fix.
    Fail,
    /// Use the queue as it is (another instance's choices, such as quorum group queues, win).
    Adopt,
}

/// What [`declare`] could not declare because the node holding it is down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Declared {
    /// Queues that exist on a node that is down or unreachable (RabbitMQ's `NOT_FOUND - home
    /// node ... is down`): not declared, not bound. A claw consumes them once the node is back.
    pub unavailable: Vec<String>,
}

/// Declares `topology`: exchanges, then each queue with its bindings. Idempotent.
///
/// `claw` names the claw in errors; `channel` is a channel of `connection`. A queue or exchange that already exists with other
/// settings (PRECONDITION_FAILED, which closes the channel) gives an [`Error::Config`] naming
/// it, the broker's reply (which names the differing argument), and the option to change; with
/// [`OnMismatch::Adopt`] a queue is checked passively on a new channel instead and used as it
/// is. A queue whose node is down is listed in [`Declared::unavailable`] instead of failing
/// the whole declaration: on a cluster, one dead node must not keep an instance from its
/// other queues. So is a queue whose declaration or binding gets no answer within
/// `answer_within`: RabbitMQ 4.0 holds the declaration of a classic queue whose node was
/// killed for about 66 s before it answers `NOT_FOUND` (3.x answers at once). Whenever a
/// failure closed `channel` (or left it waiting), it is replaced by a new one.
pub async fn declare(
    claw: &str,
    connection: &Connection,
    channel: &mut Channel,
    topology: &Topology,
    on_mismatch: OnMismatch,
    answer_within: Duration,
) -> Result<Declared> {
    for e in &topology.exchanges {
        let kind = match e.kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        };
        let options = ExchangeDeclareOptions {
            durable: e.durable,
            ..ExchangeDeclareOptions::default()
        };
        let declared = channel
            .exchange_declare(
                short("exchange", e.name)?,
                kind.clone(),
                options,
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {}
            Err(err)
                if on_mismatch == OnMismatch::Adopt
                    && err.to_string().contains("PRECONDITION_FAILED") =>
            {
                // Use the exchange as it is (its durability is another instance's choice).
                reopen(claw, connection, channel, e.name).await?;
                let passive = ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                };
                channel
                    .exchange_declare(
                        short("exchange", e.name)?,
                        kind,
                        passive,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|err| declare_error(claw, "exchange", e.name, &err))?;
            }
            Err(err) => return Err(declare_error(claw, "exchange", e.name, &err)),
        }
    }
    let mut declared = Declared::default();
    for q in &topology.queues {
        if !declare_queue(
            claw,
            connection,
            channel,
            topology,
            q,
            on_mismatch,
            answer_within,
        )
        .await?
        {
            declared.unavailable.push(q.name.clone());
        }
    }
    Ok(declared)
}

/// Declares one queue of `topology` and its bindings (see [`declare`]). `Ok(false)`: its node
/// is down (or did not answer within `answer_within`), nothing was declared, and `channel` was
/// replaced.
pub async fn declare_queue(
    claw: &str,
    connection: &Connection,
    channel: &mut Channel,
    topology: &Topology,
    q: &QueueDecl,
    on_mismatch: OnMismatch,
    answer_within: Duration,
) -> Result<bool> {
    let options = QueueDeclareOptions {
        durable: q.durable,
        ..QueueDeclareOptions::default()
    };
    let name = short("queue", &q.name)?;
    let declared = answered(
        answer_within,
        channel.queue_declare(name.clone(), options, table(&q.arguments)),
    )
    .await;
    let Some(declared) = declared else {
        return unanswered(claw, connection, channel, &q.name, answer_within).await;
    };
    if let Err(err) = declared {
        if is_unavailable(&err) {
            reopen(claw, connection, channel, &q.name).await?;
            tracing::warn!(claw, queue = %q.name, error = %err, "queue unavailable: its node is down");
            return Ok(false);
        }
        // The dead-letter queue is one per vhost, shared by every instance and peer: the first
        // declaration (or `claws topology --apply`) decides its type, later ones adopt it. A
        // quorum queue declared before claws set `x-delivery-limit` (or with another limit)
        // is adopted too: the limit is a safety net, not what the queue is, and failing would
        // stop every instance at an upgrade.
        let text = err.to_string();
        let limit_differs = text.contains("inequivalent arg 'x-delivery-limit'");
        let adopt = on_mismatch == OnMismatch::Adopt || q.kind.is_none() || limit_differs;
        if !adopt || !text.contains("PRECONDITION_FAILED") {
            return Err(declare_error(claw, "queue", &q.name, &err));
        }
        if limit_differs {
            tracing::warn!(claw, queue = %q.name, error = %err,
                "the queue exists with another x-delivery-limit: the broker keeps its own; to \
                 align it, set a `delivery-limit` policy on the queue or re-create it");
        }
        // The failed declare closed the channel; look at the queue that is there.
        reopen(claw, connection, channel, &q.name).await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(name, passive, FieldTable::default())
            .await
            .map_err(|e| declare_error(claw, "queue", &q.name, &e))?;
        tracing::info!(claw, queue = %q.name, error = %err, "adopting an existing queue declared with other arguments");
    }
    for b in topology.bindings.iter().filter(|b| b.queue == q.name) {
        let bound = answered(
            answer_within,
            channel.queue_bind(
                short("queue", &b.queue)?,
                short("exchange", b.exchange)?,
                short("routing key", &b.routing_key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await;
        let Some(bound) = bound else {
            return unanswered(claw, connection, channel, &q.name, answer_within).await;
        };
        match bound {
            Ok(()) => {}
            Err(err) if is_unavailable(&err) => {
                reopen(claw, connection, channel, &q.name).await?;
                return Ok(false);
            }
            Err(err) => return Err(declare_error(claw, "binding of queue", &b.queue, &err)),
        }
    }
    Ok(true)
}

/// How long [`declare`] waits for the answer to one queue's declaration or binding, for a claw
/// whose connection attempts are bounded by `connect_timeout`: half of it (the claw's whole
/// setup, several queues included, is bounded by three times `connect_timeout`).
pub fn answer_within(connect_timeout: Duration) -> Duration {
    connect_timeout / 2
}

/// `op`'s outcome, or `None` when the broker did not answer within `answer_within`.
async fn answered<T>(
    answer_within: Duration,
    op: impl Future<Output = lapin::Result<T>>,
) -> Option<lapin::Result<T>> {
    tokio::time::timeout(answer_within, op).await.ok()
}

/// A queue operation the broker did not answer: the queue counts as unavailable (its node is
/// most likely down), and the channel still waiting for the answer is replaced.
async fn unanswered(
    claw: &str,
    connection: &Connection,
    channel: &mut Channel,
    queue: &str,
    answer_within: Duration,
) -> Result<bool> {
    tracing::warn!(claw, %queue, ?answer_within,
        "queue unavailable: the broker did not answer its declaration (its node is likely down)");
    reopen(claw, connection, channel, queue).await?;
    Ok(false)
}

/// Whether `err` says the queue's node is down (or the queue is gone): `NOT_FOUND`, which a
/// non-passive declare and a bind only give for that.
pub fn is_unavailable(err: &lapin::Error) -> bool {
    err.to_string().contains("NOT_FOUND")
}

async fn reopen(
    claw: &str,
    connection: &Connection,
    channel: &mut Channel,
    queue: &str,
) -> Result<()> {
    *channel = connection
        .create_channel()
        .await
        .map_err(|e| declare_error(claw, "queue", queue, &e))?;
    Ok(())
}

/// Deletes the queues named (for tests and tools).
pub async fn delete_queues(claw: &str, channel: &Channel, names: &[String]) -> Result<()> {
    for name in names {
        channel
            .queue_delete(short("queue", name)?, QueueDeleteOptions::default())
            .await
            .map_err(|err| declare_error(claw, "deletion of queue", name, &err))?;
    }
    Ok(())
}

/// The deprecated RabbitMQ feature a broker names when it refuses a transient queue.
const TRANSIENT_FEATURE: &str = "transient_nonexcl_queues";

/// Whether `err` is [`declare`]'s error for a broker that refuses transient queues shared by
/// connections (`deprecated_features.permit.transient_nonexcl_queues = false`, RabbitMQ
/// 4.3's default); the claws then declare
/// [`Topology::without_transient_queues`](claws_core::topology::Topology::without_transient_queues).
pub fn refuses_transient(err: &Error) -> bool {
    matches!(err, Error::Config(m) if m.contains(TRANSIENT_FEATURE))
}

fn declare_error(claw: &str, what: &str, name: &str, err: &lapin::Error) -> Error {
    let text = err.to_string();
    if text.contains(TRANSIENT_FEATURE) {
        // RabbitMQ 4.3's default (4.0 with the setting): transient queues are refused, and
        // the broker closes the whole connection (541).
        return Error::Config(format!(
            "claw `{claw}`: the broker refuses the transient (non-durable) {what} `{name}`: its \
             `deprecated_features.permit.transient_nonexcl_queues` is false (RabbitMQ 4.3's \
             default). A claw then declares its queues durable with `x-expires` (it does so by \
             itself when it connects); to declare that here too, set `amqp091.durable = true` \
             (builder: `.durable(true)`), or permit the feature in the broker's rabbitmq.conf"
        ));
    }
    if !text.contains("PRECONDITION_FAILED") {
        return Error::Broker {
            claw: claw.to_owned(),
            what: format!("declaring {what} `{name}`"),
            source: err.clone().into(),
        };
    }
    let arg = text
        .split("inequivalent arg '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or("");
    if what == "exchange" {
        let fix = if arg == "durable" {
            "set `amqp091.durable` (builder: `.durable(..)`) to what the broker holds (the \
             Erlang claw declares them transient: `durable = false`), use another vhost, or \
             delete the exchange (`rabbitmqadmin delete exchange name=...`) once nothing uses it"
        } else {
            "another application uses this exchange name with another type; rename it there, \
             or use another vhost"
        };
        return Error::Config(format!(
            "exchange `{name}` already exists with other settings (argument `{arg}` differs): \
             {text}; {fix}"
        ));
    }
    let fix = match arg {
        "durable" => "set `amqp091.durable` (builder: `.durable(..)`) to match it",
        "x-expires" => {
            "set `amqp091.queue_expiry` (e.g. \"30m\"; builder: `.queue_expiry(..)`) to match it"
        }
        "x-queue-type" => {
            "set `amqp091.quorum_groups` / `quorum_instances` (builder: `.quorum_groups(..)`, \
             `.quorum_instances(..)`) to match it"
        }
        "x-quorum-initial-group-size" | "x-delivery-limit" | "x-queue-leader-locator" => {
            "set `amqp091.quorum_size`, `delivery_limit` and `leader_locator` to match it"
        }
        "type" => "another application uses this exchange name with another type; rename it there",
        "x-dead-letter-exchange" => {
            "claws always declares `x-dead-letter-exchange = xmpp_dead_letter`, so something \
             else declared this queue; rename that application's queue"
        }
        _ => "align the claw's options with it",
    };
    let arg_note = if arg.is_empty() {
        String::new()
    } else {
        format!(" (argument `{arg}` differs)")
    };
    Error::Config(format!(
        "{what} `{name}` already exists with other settings{arg_note}: {text}; {fix}, or delete the {what} \
         (`rabbitmqctl delete_queue`) if nothing in it is needed"
    ))
}
