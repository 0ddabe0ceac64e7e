//! `claws topology`: the exchanges, queues and bindings a claw declares.

use claws::topology::{self, QueueSpec, DIRECT_EXCHANGE, FANOUT_EXCHANGE};
use serde_json::json;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;
use crate::session;

/// Print the exchanges, queues and bindings the claw declares for --jid (per the wire
/// contract; a config's [subscriptions] table selects the queues). With --apply, declare them
/// on the broker (by starting the claw once, then closing it).
///
/// JSON lines: {"kind":"exchange","name":..,"type":..}, {"kind":"queue","name":..,
/// "subscription":..}, {"kind":"binding","queue":..,"exchange":..,"routing_key":..}.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Declare them on the broker too.
    #[arg(long)]
    apply: bool,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    let config = global.config()?;
    let jid = config.jid()?;
    let queues = topology::queues(&jid, config.subscriptions)?;
    let printer = Printer::new(global.format);
    print(&printer, &queues);
    if args.apply {
        let session = session::open(&config).await?;
        drop(session.events);
        session.claw.close().await?;
        printer.line(
            || format!("applied on {}", session::endpoint(&config)),
            || json!({"event": "applied", "transport": config.transport.as_str()}),
        );
    }
    Ok(())
}

fn print(printer: &Printer, queues: &[QueueSpec]) {
    for (name, kind) in [(DIRECT_EXCHANGE, "direct"), (FANOUT_EXCHANGE, "fanout")] {
        printer.line(
            || format!("exchange {name} ({kind})"),
            || json!({"kind": "exchange", "name": name, "type": kind}),
        );
    }
    for q in queues {
        printer.line(
            || format!("queue    {} ({})", q.name, q.kind),
            || json!({"kind": "queue", "name": q.name, "subscription": q.kind.as_str()}),
        );
    }
    for q in queues {
        printer.line(
            || format!("binding  {} -> {} (routing key {})", q.exchange, q.name, q.routing_key),
            || {
                json!({"kind": "binding", "queue": q.name, "exchange": q.exchange,
                       "routing_key": q.routing_key})
            },
        );
    }
}
