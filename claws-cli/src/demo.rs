//! `claws demo`: a small cluster in one process showing the three kinds of delivery.

use std::time::Duration;

use claws::topology::DIRECT_EXCHANGE;
use claws::{async_trait, jid, Config, Context, Echo, Handler, HandlerResult, Packet, Router, Via};
use serde_json::json;
use tokio::sync::mpsc;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::{payload_line, payload_text, via_json, via_text, Printer, Tone};
use crate::session;

/// How long a worker spends on a job sent to the group.
const JOB_TIME: Duration = Duration::from_millis(15);

/// How long a step waits for its deliveries.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Show direct, load-balanced and broadcast delivery in a small cluster.
///
/// Starts a small cluster in this process (a worker group of two instances sharing a bare
/// JID, an echo service, a client) and shows direct, load-balanced and broadcast delivery,
/// each packet with its Via.
///
/// Runs on the in-process mem broker by default (nothing to install); with
/// `--transport amqp091 --url amqp://...` the same happens on RabbitMQ.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// How many stanzas the load-balancing step sends to the group's bare JID.
    #[arg(long, default_value_t = 6, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    messages: u32,
}

/// One packet an instance received.
struct Seen {
    instance: &'static str,
    packet: Packet,
    via: Via,
}

/// Records what an instance receives; the echo service then answers it.
struct Recorder {
    instance: &'static str,
    seen: mpsc::UnboundedSender<Seen>,
    echo: bool,
}

#[async_trait]
impl Handler for Recorder {
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        if self.echo {
            Echo.received(packet.clone(), via.clone(), ctx).await?;
        } else if via.queue.is_group() && via.exchange.as_deref() == Some(DIRECT_EXCHANGE) {
            // A job for the group takes the worker a moment, so the other takes the next ones.
            tokio::time::sleep(JOB_TIME).await;
        }
        let _ = self.seen.send(Seen {
            instance: self.instance,
            packet,
            via,
        });
        Ok(())
    }
}

struct Cluster {
    routers: Vec<Router>,
    seen: mpsc::UnboundedReceiver<Seen>,
    printer: Printer,
}

pub(crate) async fn run(global: &Global, args: Args) -> Result<(), Failure> {
    if args.messages == 0 {
        return Err(Failure::usage("--messages must be at least 1"));
    }
    let base = global.config()?;
    let printer = Printer::new(global.format);
    // On a real broker, names unique to this run keep runs (and other users) apart.
    let suffix = match base.transport {
        claws::Transport::Mem => String::new(),
        _ => format!("-{}-{}", std::process::id(), session::unique() % 1_000_000),
    };
    let group = format!("svc{suffix}@demo.claws");
    let w1 = format!("{group}/w1");
    let w2 = format!("{group}/w2");
    let echo = format!("echo{suffix}@demo.claws/e");
    let client = format!("client{suffix}@demo.claws/c");

    printer.line(
        || {
            format!(
                "claws demo on {}\n\n  {w1:<28} worker 1 of the group {group}\n  {w2:<28} worker 2 of \
                 the group {group}\n  {echo:<28} the echo service\n  {client:<28} a client",
                where_(&base)
            )
        },
        || json!({"event": "cluster", "transport": base.transport.as_str(),
                  "instances": {"w1": w1, "w2": w2, "echo": echo, "client": client}}),
    );

    let (tx, seen) = mpsc::unbounded_channel();
    let mut cluster = Cluster {
        routers: Vec::new(),
        seen,
        printer,
    };
    let started = async {
        for (instance, jid, is_echo) in [
            ("w1", &w1, false),
            ("w2", &w2, false),
            ("echo", &echo, true),
            ("client", &client, false),
        ] {
            let config = Config {
                jid: jid.clone(),
                // One job at a time per subscription, so that the group shares the work visibly.
                prefetch: 1,
                ..base.clone()
            };
            let handler = Recorder {
                instance,
                seen: tx.clone(),
                echo: is_echo,
            };
            cluster
                .routers
                .push(session::router(&config, handler).await?);
        }
        Ok::<_, Failure>(())
    }
    .await;
    let result = match started {
        Ok(()) => steps(&mut cluster, &args, [&w1, &group, &echo, &client]).await,
        Err(failure) => Err(failure),
    };
    for router in &cluster.routers {
        let _ = router.close().await;
    }
    // On RabbitMQ (over either protocol), leave nothing behind.
    #[cfg(feature = "amqp091")]
    if base.transport != claws::Transport::Mem {
        crate::rabbit::delete_queues_of(&base, &[&w1, &w2, &echo, &client]).await;
    }
    result
}

async fn steps(cluster: &mut Cluster, args: &Args, jids: [&String; 4]) -> Result<(), Failure> {
    let [w1, group, echo, client] = jids;
    let sender = cluster.routers[3].clone();

    cluster.step(
        "direct",
        &format!("1. Direct: the client sends to {w1}; only that instance gets it"),
    );
    let to = jid::parse(w1)?;
    let stanza =
        format!(r#"<message from="{client}" to="{w1}" id="d1"><body>for w1 only</body></message>"#);
    sender.send(&to, Some("d1"), Packet::from(stanza)).await?;
    cluster.expect(1).await?;

    cluster.step(
        "reply",
        &format!("2. Direct, and a reply: the client pings {echo}; the echo service answers the way the ping came"),
    );
    let to = jid::parse(echo)?;
    let ping = format!(
        r#"<iq type="get" id="p1" from="{client}" to="{echo}"><ping xmlns="urn:xmpp:ping"/></iq>"#
    );
    sender.send(&to, Some("p1"), Packet::from(ping)).await?;
    cluster.expect(2).await?;

    cluster.step(
        "load-balanced",
        &format!(
            "3. Load-balanced: the client sends {} messages to the bare JID {group}; each reaches exactly one worker",
            args.messages
        ),
    );
    let to = jid::parse(group)?;
    for i in 1..=args.messages {
        let id = format!("lb{i}");
        let stanza = format!(
            r#"<message from="{client}" to="{group}" id="{id}"><body>job {i}</body></message>"#
        );
        sender.send(&to, Some(&id), Packet::from(stanza)).await?;
    }
    let seen = cluster.expect(args.messages as usize).await?;
    let w1_took = seen.iter().filter(|s| s.instance == "w1").count();
    let w2_took = seen.iter().filter(|s| s.instance == "w2").count();
    cluster.summary(
        &format!("w1 took {w1_took}, w2 took {w2_took}: each message once, shared by the group"),
        json!({"event": "summary", "step": "load-balanced", "w1": w1_took, "w2": w2_took}),
    );

    cluster.step(
        "broadcast",
        "4. Broadcast: the client publishes one presence; every instance gets its own copy \
         (queue=fanout) and every group one more (queue=group_fanout)",
    );
    let presence = format!(r#"<presence from="{client}"/>"#);
    sender.publish(Packet::from(presence)).await?;
    // Four instances, three groups (svc, echo, client).
    let seen = cluster.expect(7).await?;
    let own = seen
        .iter()
        .filter(|s| s.via.queue.as_str() == "fanout")
        .count();
    let groups = seen
        .iter()
        .filter(|s| s.via.queue.as_str() == "group_fanout")
        .count();
    cluster.summary(
        &format!("{own} instance copies, {groups} group copies"),
        json!({"event": "summary", "step": "broadcast", "fanout": own, "group_fanout": groups}),
    );
    cluster.printer.line(
        || {
            format!(
                "\n{}: direct, load-balanced and broadcast delivery, each packet with its Via.",
                cluster.printer.paint("done", Tone::Good)
            )
        },
        || json!({"event": "done"}),
    );
    Ok(())
}

impl Cluster {
    fn step(&self, name: &str, title: &str) {
        self.printer.line(
            || format!("\n{}", self.printer.paint(title, Tone::Strong)),
            || json!({"event": "step", "step": name, "title": title}),
        );
    }

    fn summary(&self, text: &str, json: serde_json::Value) {
        self.printer.line(|| format!("   => {text}"), || json);
    }

    /// Waits for `n` deliveries and prints them (sorted by instance, for reading).
    async fn expect(&mut self, n: usize) -> Result<Vec<Seen>, Failure> {
        let mut got = Vec::with_capacity(n);
        let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
        while got.len() < n {
            match tokio::time::timeout_at(deadline, self.seen.recv()).await {
                Ok(Some(seen)) => got.push(seen),
                Ok(None) | Err(_) => {
                    return Err(Failure::other(format!(
                        "the demo expected {n} deliveries in this step and saw {} within {:?}",
                        got.len(),
                        STEP_TIMEOUT
                    )))
                }
            }
        }
        got.sort_by(|a, b| {
            (a.instance, a.via.queue.as_str()).cmp(&(b.instance, b.via.queue.as_str()))
        });
        for s in &got {
            self.printer.line(
                || {
                    // Padded outside the colour, so that the columns stay aligned.
                    format!(
                        "   {}{:pad$} <- {}\n             via {}",
                        self.printer.paint(s.instance, Tone::Good),
                        "",
                        payload_line(&s.packet),
                        via_text(&s.via),
                        pad = 7usize.saturating_sub(s.instance.len()),
                    )
                },
                || {
                    json!({"event": "received", "instance": s.instance,
                           "payload": payload_text(&s.packet), "via": via_json(&s.via)})
                },
            );
        }
        Ok(got)
    }
}

fn where_(config: &Config) -> String {
    match config.transport {
        claws::Transport::Mem => {
            "the mem transport (an in-process broker; nothing to install)".into()
        }
        _ => session::endpoint(config),
    }
}
