//! What the claw declares for a JID, as data ([`Topology`]), and [`declare`] to make it so.
//!
//! Names come from [`claws_core::topology`] (TOPOLOGY.md); this module adds the AMQP 0-9-1
//! specifics: durability, `x-expires` on per-instance queues, quorum group queues, and the
//! dead-letter exchange every queue points at.

use std::fmt;
use std::time::Duration;

use claws_core::jid::Jid;
use claws_core::topology::{
    self as names, QueueKind, Subscriptions, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE,
    DIRECT_EXCHANGE, FANOUT_EXCHANGE,
};
use claws_core::{Error, Result};
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, ExchangeKind};

/// The header holding how many times a stanza was delivered and failed (set when the claw
/// re-queues a failed stanza; see the crate docs).
pub const DELIVERIES_HEADER: &str = "x-claws-deliveries";
/// The header keeping a re-queued stanza's original exchange.
pub const EXCHANGE_HEADER: &str = "x-claws-exchange";
/// The header keeping a re-queued stanza's original routing key.
pub const ROUTING_KEY_HEADER: &str = "x-claws-routing-key";

/// How the claw declares its queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopologyOptions {
    /// Durable queues (exchanges are always durable, so that instances with either setting
    /// share them).
    pub durable: bool,
    /// `x-expires` on per-instance (full-JID) queues.
    pub queue_expiry: Option<Duration>,
    /// `x-queue-type = quorum` on group (bare-JID) queues.
    pub quorum_groups: bool,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            durable: true,
            queue_expiry: Some(Duration::from_secs(1800)),
            quorum_groups: false,
        }
    }
}

/// An exchange type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeType {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeType {
    /// `direct` or `fanout`.
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeType::Direct => "direct",
            ExchangeType::Fanout => "fanout",
        }
    }
}

/// One exchange declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExchangeDecl {
    /// Its name.
    pub name: &'static str,
    /// Its type.
    pub kind: ExchangeType,
    /// Whether it survives a broker restart.
    pub durable: bool,
}

/// A queue argument's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArgValue {
    /// A string (`x-queue-type`, `x-dead-letter-exchange`).
    Str(&'static str),
    /// An integer (`x-expires`, in milliseconds).
    Int(i64),
}

impl fmt::Display for ArgValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgValue::Str(s) => f.write_str(s),
            ArgValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// One queue declaration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDecl {
    /// Its name.
    pub name: String,
    /// Which subscription it is (`None` for the dead-letter queue).
    pub kind: Option<QueueKind>,
    /// Whether it survives a broker restart.
    pub durable: bool,
    /// Its arguments (`x-expires`, `x-queue-type`, `x-dead-letter-exchange`).
    pub arguments: Vec<(&'static str, ArgValue)>,
}

/// One binding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingDecl {
    /// The queue.
    pub queue: String,
    /// The exchange.
    pub exchange: &'static str,
    /// The routing key (the JID; ignored by fanout exchanges).
    pub routing_key: String,
}

/// Everything one instance declares, in declaration order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// The exchanges: `xmpp_direct`, `xmpp_fanout`, `xmpp_dead_letter`.
    pub exchanges: Vec<ExchangeDecl>,
    /// The dead-letter queue, then the consumed queues.
    pub queues: Vec<QueueDecl>,
    /// How queues are bound.
    pub bindings: Vec<BindingDecl>,
}

impl Topology {
    /// The queues the instance consumes (the dead-letter queue excluded).
    pub fn consumed(&self) -> impl Iterator<Item = (&QueueDecl, &QueueKind)> {
        self.queues
            .iter()
            .filter_map(|q| q.kind.as_ref().map(|k| (q, k)))
    }
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.exchanges {
            writeln!(
                f,
                "exchange {} ({}{})",
                e.name,
                e.kind.as_str(),
                if e.durable { ", durable" } else { "" }
            )?;
        }
        for q in &self.queues {
            write!(f, "queue {}", q.name)?;
            if let Some(kind) = &q.kind {
                write!(f, " [{kind}]")?;
            }
            write!(f, "{}", if q.durable { " durable" } else { " transient" })?;
            for (k, v) in &q.arguments {
                write!(f, " {k}={v}")?;
            }
            writeln!(f)?;
        }
        for b in &self.bindings {
            writeln!(
                f,
                "bind {} -> {} key `{}`",
                b.exchange, b.queue, b.routing_key
            )?;
        }
        Ok(())
    }
}

/// The topology of an instance with `jid` consuming `subscriptions` (TOPOLOGY.md).
///
/// Fails with [`Error::NameTooLong`] if a queue name or the JID is over 255 bytes.
///
/// ```
/// use claws_amqp091::topology::{plan, TopologyOptions};
/// use claws_core::topology::Subscriptions;
/// let jid = claws_core::jid::parse("news@example.com/r1")?;
/// let t = plan(&jid, Subscriptions::all(), &TopologyOptions::default())?;
/// assert_eq!(t.exchanges.len(), 3);
/// assert_eq!(t.consumed().count(), 4);
/// print!("{t}");
/// # Ok::<(), claws_core::Error>(())
/// ```
pub fn plan(
    jid: &Jid,
    subscriptions: Subscriptions,
    options: &TopologyOptions,
) -> Result<Topology> {
    names::check_name("JID (reply-to and routing key)", jid.as_str())?;
    let exchanges = vec![
        ExchangeDecl {
            name: DIRECT_EXCHANGE,
            kind: ExchangeType::Direct,
            durable: true,
        },
        ExchangeDecl {
            name: FANOUT_EXCHANGE,
            kind: ExchangeType::Fanout,
            durable: true,
        },
        ExchangeDecl {
            name: DEAD_LETTER_EXCHANGE,
            kind: ExchangeType::Fanout,
            durable: true,
        },
    ];
    let mut queues = vec![QueueDecl {
        name: DEAD_LETTER_QUEUE.to_owned(),
        kind: None,
        durable: true,
        arguments: Vec::new(),
    }];
    let mut bindings = vec![BindingDecl {
        queue: DEAD_LETTER_QUEUE.to_owned(),
        exchange: DEAD_LETTER_EXCHANGE,
        routing_key: String::new(),
    }];
    for spec in names::queues(jid, subscriptions)? {
        let mut arguments = vec![(
            "x-dead-letter-exchange",
            ArgValue::Str(DEAD_LETTER_EXCHANGE),
        )];
        let group = spec.kind.is_group();
        if group && options.quorum_groups {
            arguments.push(("x-queue-type", ArgValue::Str("quorum")));
        }
        if !group {
            if let Some(expiry) = options.queue_expiry {
                let ms = i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX).max(1);
                arguments.push(("x-expires", ArgValue::Int(ms)));
            }
        }
        bindings.push(BindingDecl {
            queue: spec.name.clone(),
            exchange: spec.exchange,
            routing_key: spec.routing_key,
        });
        queues.push(QueueDecl {
            name: spec.name,
            kind: Some(spec.kind),
            // Quorum queues are always durable.
            durable: options.durable || (group && options.quorum_groups),
            arguments,
        });
    }
    Ok(Topology {
        exchanges,
        queues,
        bindings,
    })
}

/// A checked AMQP short string (names were checked by [`plan`]; this never panics).
pub(crate) fn short(kind: &'static str, s: &str) -> Result<ShortString> {
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

/// Declares `topology` on `channel`: exchanges, queues, bindings. Idempotent.
///
/// A queue or exchange that already exists with other settings (PRECONDITION_FAILED) gives an
/// [`Error::Config`] naming it, the broker's reply (which names the differing argument), and the
/// option to change. The channel is closed by the broker after such an error.
pub async fn declare(channel: &Channel, topology: &Topology) -> Result<()> {
    for e in &topology.exchanges {
        let kind = match e.kind {
            ExchangeType::Direct => ExchangeKind::Direct,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        };
        let options = ExchangeDeclareOptions {
            durable: e.durable,
            ..ExchangeDeclareOptions::default()
        };
        channel
            .exchange_declare(
                short("exchange", e.name)?,
                kind,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|err| declare_error("exchange", e.name, &err))?;
    }
    for q in &topology.queues {
        let options = QueueDeclareOptions {
            durable: q.durable,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(short("queue", &q.name)?, options, table(&q.arguments))
            .await
            .map_err(|err| declare_error("queue", &q.name, &err))?;
    }
    for b in &topology.bindings {
        channel
            .queue_bind(
                short("queue", &b.queue)?,
                short("exchange", b.exchange)?,
                short("routing key", &b.routing_key)?,
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|err| declare_error("binding of queue", &b.queue, &err))?;
    }
    Ok(())
}

fn declare_error(what: &str, name: &str, err: &lapin::Error) -> Error {
    let text = err.to_string();
    if !text.contains("PRECONDITION_FAILED") {
        return Error::backend(format!("declaring {what} `{name}` failed: {text}"));
    }
    let arg = text
        .split("inequivalent arg '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or("");
    let fix = match arg {
        "durable" => "set `amqp091.durable` (builder: `.durable(..)`) to match it",
        "x-expires" => "set `amqp091.queue_expiry_secs` (builder: `.queue_expiry(..)`) to match it",
        "x-queue-type" => "set `amqp091.quorum_groups` (builder: `.quorum_groups(..)`) to match it",
        "type" => "another application uses this exchange name with another type; rename it there",
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_topology_md() {
        let jid = claws_core::jid::parse("n@d/r").unwrap();
        let t = plan(&jid, Subscriptions::all(), &TopologyOptions::default()).unwrap();
        let names: Vec<_> = t.consumed().map(|(q, _)| q.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "xmpp_direct:n@d/r",
                "xmpp_direct:n@d",
                "xmpp_fanout:n@d/r",
                "xmpp_fanout:n@d"
            ]
        );
        let direct = &t.queues[1];
        assert!(direct
            .arguments
            .contains(&("x-expires", ArgValue::Int(1_800_000))));
        let group = &t.queues[2];
        assert!(!group.arguments.iter().any(|(k, _)| *k == "x-expires"));
        assert_eq!(t.bindings[2].routing_key, "n@d");
        assert_eq!(t.bindings[3].exchange, FANOUT_EXCHANGE);
    }

    #[test]
    fn quorum_groups_are_durable() {
        let jid = claws_core::jid::parse("n@d/r").unwrap();
        let options = TopologyOptions {
            durable: false,
            queue_expiry: None,
            quorum_groups: true,
        };
        let t = plan(&jid, Subscriptions::all(), &options).unwrap();
        let group = t
            .queues
            .iter()
            .find(|q| q.name == "xmpp_direct:n@d")
            .unwrap();
        assert!(group.durable);
        assert!(group
            .arguments
            .contains(&("x-queue-type", ArgValue::Str("quorum"))));
        let own = t
            .queues
            .iter()
            .find(|q| q.name == "xmpp_direct:n@d/r")
            .unwrap();
        assert!(!own.durable);
    }

    #[test]
    fn long_jids_are_refused() {
        let jid = claws_core::jid::parse(&format!("n@d/{}", "r".repeat(300))).unwrap();
        let err = plan(&jid, Subscriptions::none(), &TopologyOptions::default()).unwrap_err();
        assert!(matches!(err, Error::NameTooLong { .. }), "{err}");
        let jid = claws_core::jid::parse(&format!("n@d/{}", "r".repeat(250))).unwrap();
        let err = plan(&jid, Subscriptions::all(), &TopologyOptions::default()).unwrap_err();
        assert!(err.to_string().contains("xmpp_direct:n@d/rrr"), "{err}");
    }
}
