//! Run with: `cargo run -p claws-examples --example gateway -- XMPP_HOST:PORT DOMAIN SECRET [AMQP_URL]`
//!
//! The XMPP gateway: a XEP-0114 component on an XMPP server (Prosody, ejabberd, ...) whose
//! domain's traffic flows over RabbitMQ to worker groups, and whose replies flow back to the
//! server. Start workers with `claws --transport amqp091 --jid bot@DOMAIN/w1 echo`, then message
//! `bot@DOMAIN` from any XMPP client. Ctrl-C stops the gateway after draining.

use std::sync::Arc;

use claws::amqp091::AmqpClaw;
use claws::component::{gateway, ComponentClaw};

#[tokio::main]
async fn main() -> claws::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [server, domain, secret, rest @ ..] = args.as_slice() else {
        eprintln!("usage: gateway XMPP_HOST:PORT DOMAIN SECRET [AMQP_URL]");
        std::process::exit(2);
    };
    let url = rest
        .first()
        .map_or("amqp://guest:guest@127.0.0.1:5672/%2f", String::as_str);
    let component = ComponentClaw::builder(server, domain, secret).build()?;
    // The gateway's own instance on the bus: replies from workers come back to it.
    let bus = AmqpClaw::builder(url, format!("gateway@{domain}/gw1")).build()?;
    eprintln!("gateway for {domain}: XMPP server {server} <-> {url}");
    gateway::run(component, Arc::new(bus), async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
