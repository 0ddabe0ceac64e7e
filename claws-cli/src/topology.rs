//! `claws topology`: the exchanges, queues and bindings a claw declares.

use claws::topology::{self, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use claws::Config;
#[cfg(feature = "amqp091")]
use claws::Transport;
use serde_json::{json, Map, Value};

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;
use crate::session;

/// Print (or --apply) the exchanges, queues and bindings of --jid.
///
/// Prints what the claw declares for --jid (a config's [subscriptions] table selects the
/// queues; on amqp091 the queue arguments are shown too). With --apply, declares them on the
/// broker (amqp091: declared directly, nothing consumed;
/// other transports: by starting the claw once, then closing it).
///
/// JSON lines: {"kind":"exchange","name":..,"type":..}, {"kind":"queue","name":..,
/// "subscription":..,"arguments":{..}}, {"kind":"binding","queue":..,"exchange":..,
/// "routing_key":..}.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Declare them on the broker too.
    #[arg(long)]
    apply: bool,
}

/// What a claw declares, in declaration order.
#[derive(Debug, Default)]
struct Plan {
    /// Name, type and durability.
    exchanges: Vec<(String, String, bool)>,
    queues: Vec<QueueRow>,
    /// Queue, exchange, routing key.
    bindings: Vec<(String, String, String)>,
}

/// Name, subscription (none for claw-internal queues), durability, arguments.
type QueueRow = (String, Option<String>, bool, Vec<(String, Value)>);

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let config = global.config()?;
    let plan = plan(&config)?;
    let printer = Printer::new(global.format);
    print(&printer, &plan);
    if args.apply {
        apply(&config).await?;
        printer.line(
            || format!("applied on {}", session::endpoint(&config)),
            || json!({"event": "applied", "transport": config.transport.as_str()}),
        );
    }
    Ok(())
}

fn plan(config: &Config) -> Result<Plan, Failure> {
    #[cfg(feature = "amqp091")]
    if config.transport == Transport::Amqp091 {
        return amqp091_plan(config);
    }
    let jid = config.jid()?;
    let mut plan = Plan::default();
    for (name, kind) in [(DIRECT_EXCHANGE, "direct"), (FANOUT_EXCHANGE, "fanout")] {
        plan.exchanges.push((name.into(), kind.into(), true));
    }
    for q in topology::queues(&jid, config.subscriptions)? {
        plan.queues.push((
            q.name.clone(),
            Some(q.kind.as_str().into()),
            true,
            Vec::new(),
        ));
        plan.bindings
            .push((q.name, q.exchange.into(), q.routing_key));
    }
    Ok(plan)
}

#[cfg(feature = "amqp091")]
fn amqp091_plan(config: &Config) -> Result<Plan, Failure> {
    use claws::amqp091::topology::ArgValue;
    let claw = claws::amqp091::AmqpClaw::from_config(config)?;
    let t = claw.topology();
    Ok(Plan {
        exchanges: t
            .exchanges
            .iter()
            .map(|e| (e.name.into(), e.kind.as_str().into(), e.durable))
            .collect(),
        queues: t
            .queues
            .iter()
            .map(|q| {
                let args = q
                    .arguments
                    .iter()
                    .map(|(k, v)| {
                        let v = match v {
                            ArgValue::Str(s) => json!(s),
                            ArgValue::Int(i) => json!(i),
                        };
                        ((*k).to_owned(), v)
                    })
                    .collect();
                (
                    q.name.clone(),
                    q.kind.as_ref().map(|k| k.as_str().to_owned()),
                    q.durable,
                    args,
                )
            })
            .collect(),
        bindings: t
            .bindings
            .iter()
            .map(|b| (b.queue.clone(), b.exchange.into(), b.routing_key.clone()))
            .collect(),
    })
}

async fn apply(config: &Config) -> Result<(), Failure> {
    #[cfg(feature = "amqp091")]
    if config.transport == Transport::Amqp091 {
        let claw = claws::amqp091::AmqpClaw::from_config(config)?;
        let conn = crate::rabbit::open(config).await?;
        let declared = async {
            let mut channel = conn
                .create_channel()
                .await
                .map_err(|e| Failure::other(format!("cannot open a channel: {e}")))?;
            let done = claws::amqp091::topology::declare(
                claws::Claw::name(&claw),
                &conn,
                &mut channel,
                claw.topology(),
                claws::amqp091::topology::OnMismatch::Fail,
                claws::amqp091::topology::answer_within(crate::session::CONNECT_TIMEOUT),
            )
            .await?;
            let _ = channel.close(200, "declared".into()).await;
            if !done.unavailable.is_empty() {
                return Err(Failure::connect(format!(
                    "declared all but {}: the node holding them is down; run this again once \
                     it is back (quorum queues, `quorum_groups = true`, do not depend on one node)",
                    done.unavailable.join(", ")
                )));
            }
            Ok::<_, Failure>(())
        }
        .await;
        let _ = conn.close(200, "declared".into()).await;
        return declared;
    }
    let session = session::open(config).await?;
    drop(session.events);
    session.claw.close().await?;
    Ok(())
}

fn print(printer: &Printer, plan: &Plan) {
    let durability = |d: bool| if d { "durable" } else { "transient" };
    for (name, kind, durable) in &plan.exchanges {
        printer.line(
            || format!("exchange {name} ({kind}, {})", durability(*durable)),
            || json!({"kind": "exchange", "name": name, "type": kind, "durable": durable}),
        );
    }
    for (name, subscription, durable, args) in &plan.queues {
        printer.line(
            || {
                let what = subscription.as_deref().unwrap_or("claw-internal");
                let args: Vec<String> = args.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let d = durability(*durable);
                if args.is_empty() {
                    format!("queue    {name} ({what}, {d})")
                } else {
                    format!("queue    {name} ({what}, {d}) {}", args.join(" "))
                }
            },
            || {
                let arguments: Map<String, Value> = args.iter().cloned().collect();
                json!({"kind": "queue", "name": name, "subscription": subscription,
                       "durable": durable, "arguments": arguments})
            },
        );
    }
    for (queue, exchange, key) in &plan.bindings {
        printer.line(
            || format!("binding  {exchange} -> {queue} (routing key {key:?})"),
            || json!({"kind": "binding", "queue": queue, "exchange": exchange, "routing_key": key}),
        );
    }
}
