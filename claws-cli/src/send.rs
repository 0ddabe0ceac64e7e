//! `claws send` and `claws publish`: one stanza, confirmed by the broker.

use claws::{jid, Packet};
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
    /// Send the payload as it is, without checking that it is one well-formed XML element.
    #[arg(long)]
    raw: bool,
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
    /// Publish the payload as it is, without checking that it is one well-formed XML element.
    #[arg(long)]
    raw: bool,
}

/// The stanza, checked to be one well-formed element unless `raw`. A stanza without `from`
/// gets `from = sender` (peers that read the sender from the stanza, as XMPP does, can then
/// answer); `raw` sends the bytes unchanged.
async fn stanza(arg: Option<String>, raw: bool, sender: &str) -> Result<Packet, Failure> {
    let packet = session::read_stanza(arg).await?;
    if packet.as_bytes().iter().all(u8::is_ascii_whitespace) {
        return Err(Failure::usage("the stanza is empty"));
    }
    if raw {
        return Ok(packet);
    }
    match packet.parse() {
        Err(err) => Err(Failure::usage(format!(
            "the stanza is not one well-formed XML element ({err}); pass --raw to send it as it is"
        ))),
        Ok(element) if element.attr("from").is_none() => {
            Ok(Packet::from(&element.with_attr("from", sender)))
        }
        Ok(_) => Ok(packet),
    }
}

/// What the broker's answer means: `confirmed` where it reports unroutable messages, else only
/// accepted (AMQP 1.0 on RabbitMQ 3.x takes a message no queue receives).
fn outcome(claw: &dyn claws::Claw) -> (&'static str, &'static str) {
    if claw.capabilities().unroutable_errors {
        ("confirmed", "verified")
    } else {
        (
            "accepted; routing not verified on this broker",
            "not verified",
        )
    }
}

pub(crate) async fn run_send(global: &Global, args: SendArgs) -> Result<(), Failure> {
    let to = jid::parse(&args.to)?;
    let config = global.sender_config()?;
    let packet = stanza(args.stanza, args.raw, &config.jid).await?;
    let session = session::open(&config).await?;
    let sent = session.claw.send(&to, args.id.as_deref(), packet).await;
    let closed = session.claw.close().await;
    sent?;
    closed?;
    let (said, routing) = outcome(session.claw.as_ref());
    Printer::new(global.format).line(
        || format!("sent to {to} ({said})"),
        || json!({"event": "sent", "to": to.as_str(), "id": args.id, "routing": routing}),
    );
    Ok(())
}

pub(crate) async fn run_publish(global: &Global, args: PublishArgs) -> Result<(), Failure> {
    let config = global.sender_config()?;
    let packet = stanza(args.stanza, args.raw, &config.jid).await?;
    let session = session::open(&config).await?;
    let published = session.claw.publish(packet).await;
    let closed = session.claw.close().await;
    published?;
    closed?;
    let from = session.claw.jid().to_string();
    let (said, _) = outcome(session.claw.as_ref());
    Printer::new(global.format).line(
        || format!("published as {from} ({said})"),
        || json!({"event": "published", "from": from}),
    );
    Ok(())
}
