//! `claws send` and `claws publish`: one stanza, confirmed by the broker.

use claws::jid;
use serde_json::json;

use crate::exit::Failure;
use crate::options::Global;
use crate::output::Printer;
use crate::session;

/// Send one stanza directly to a JID, confirmed.
///
/// A full JID reaches that instance; a bare JID one instance of its group. Exits 0 once the
/// broker confirmed it.
///
/// Sends as --jid, which consumes nothing here. On the mem transport only this process can
/// be reached, so the send fails with "no route"; use amqp091 or amqp10 to reach a listener in
/// another process.
#[derive(Debug, clap::Args)]
pub(crate) struct SendArgs {
    /// The destination JID.
    #[arg(long, value_name = "JID")]
    to: String,
    /// The correlation id (arrives as the receiver's Via id).
    #[arg(long, value_name = "ID")]
    id: Option<String>,
    /// The stanza; `-` or nothing reads it from stdin.
    #[arg(value_name = "STANZA")]
    stanza: Option<String>,
}

/// Broadcast one stanza to every instance and every group, confirmed.
///
/// Exits 0 once the broker confirmed it.
///
/// On the mem transport only this process can be reached; use amqp091 or amqp10 to reach
/// listeners in other processes.
#[derive(Debug, clap::Args)]
pub(crate) struct PublishArgs {
    /// The stanza; `-` or nothing reads it from stdin.
    #[arg(value_name = "STANZA")]
    stanza: Option<String>,
}

pub(crate) async fn run_send(global: &Global, args: SendArgs) -> Result<(), Failure> {
    let to = jid::parse(&args.to)?;
    let packet = session::read_stanza(args.stanza).await?;
    let config = global.sender_config()?;
    let session = session::open(&config).await?;
    let sent = session.claw.send(&to, args.id.as_deref(), packet).await;
    let closed = session.claw.close().await;
    sent?;
    closed?;
    Printer::new(global.format).line(
        || format!("sent to {to} (confirmed)"),
        || json!({"event": "sent", "to": to.as_str(), "id": args.id}),
    );
    Ok(())
}

pub(crate) async fn run_publish(global: &Global, args: PublishArgs) -> Result<(), Failure> {
    let packet = session::read_stanza(args.stanza).await?;
    let config = global.sender_config()?;
    let session = session::open(&config).await?;
    let published = session.claw.publish(packet).await;
    let closed = session.claw.close().await;
    published?;
    closed?;
    let from = session.claw.jid().to_string();
    Printer::new(global.format).line(
        || format!("published as {from} (confirmed)"),
        || json!({"event": "published", "from": from}),
    );
    Ok(())
}
