//! Run with: cargo run -p claws-examples --example minimal_bot
//!
//! The README's bot: a handler that prints each packet with its `Via` and answers it back the
//! way it came. It runs on the in-memory claw (no broker to install); a client instance sends
//! it one message, waits for the answer, and the program ends.
//!
//! To run the same bot on RabbitMQ, build its claw from a config with
//! `transport = "amqp091"` and a `url` instead.

use std::time::Duration;

use claws::{
    async_trait, handler_fn, jid, Config, Context, Handler, HandlerResult, Packet, Router, Via,
};
use tokio::sync::mpsc;

struct Bot;

#[async_trait]
impl Handler for Bot {
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        println!(
            "{} via {} ({})",
            packet.as_str().unwrap_or("<binary>"),
            via.queue,
            via.claw
        );
        ctx.reply(&via, packet).await?; // back the way it came
        Ok(())
    }
}

/// A router on the mem claw for `jid` (every mem claw `claws::connect` builds shares one
/// in-process broker).
fn router(jid: &str) -> claws::Result<Router> {
    let config = Config {
        jid: jid.into(),
        ..Config::default()
    };
    Router::builder().claw_arc(claws::connect(&config)?).build()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bot = router("bot@example.com/r1")?;
    bot.start(Bot).await?;

    // A client that hands every answer it gets to this function.
    let (answers, mut answer) = mpsc::unbounded_channel();
    let client = router("client@example.com/c1")?;
    client
        .start(handler_fn(move |packet: Packet, _via, _ctx| {
            let answers = answers.clone();
            async move {
                answers.send(packet)?;
                Ok(())
            }
        }))
        .await?;

    client
        .send(
            &jid::parse("bot@example.com")?,
            Some("hello-1"),
            Packet::from(
                r#"<message from="client@example.com/c1"><body>hello, bot</body></message>"#,
            ),
        )
        .await?;
    let back = tokio::time::timeout(Duration::from_secs(5), answer.recv())
        .await?
        .ok_or("the client stopped")?;
    println!(
        "the client got its answer: {}",
        back.as_str().unwrap_or("<binary>")
    );

    client.close().await?;
    bot.close().await?;
    Ok(())
}
