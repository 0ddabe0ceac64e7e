//! Run with: cargo run -p claws-examples --example worker_group
//!
//! Three instances of one service share the bare JID `jobs@example.com`. A client sends nine
//! jobs to the bare JID: each job reaches exactly one worker, and whichever worker is free
//! takes the next one (load balancing). Each worker answers the client directly. Then the
//! client broadcasts once: every worker gets its own copy (`fanout`) and the group one more
//! (`group_fanout`, taken by one of them). Runs on the in-memory claw and ends by itself.

use std::collections::BTreeMap;
use std::time::Duration;

use claws::topology::Subscriptions;
use claws::{
    async_trait, handler_fn, jid, Config, Context, Handler, HandlerResult, Packet, Router, Via,
};
use tokio::sync::mpsc;

const JOBS: usize = 9;

struct Worker {
    name: &'static str,
    seen: mpsc::UnboundedSender<(&'static str, String)>,
}

#[async_trait]
impl Handler for Worker {
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        self.seen.send((self.name, via.queue.to_string()))?;
        if via.queue.as_str() == "group_direct" {
            // The job takes a while, so that the other workers take the next ones meanwhile.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = format!(
                "<message><body>{} done by {}</body></message>",
                via.id.as_deref().unwrap_or("?"),
                self.name
            );
            ctx.reply(&via, Packet::from(done)).await?;
        }
        let _ = packet;
        Ok(())
    }
}

fn config(jid: &str, prefetch: u16) -> Config {
    Config {
        jid: jid.into(),
        prefetch,
        ..Config::default()
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let mut workers = Vec::new();
    for name in ["w1", "w2", "w3"] {
        // A small prefetch, so that an instance busy with a job leaves the next ones to
        // the others.
        let claw = claws::connect(&config(&format!("jobs@example.com/{name}"), 1))?;
        let router = Router::builder().claw_arc(claw).build()?;
        router
            .start(Worker {
                name,
                seen: seen_tx.clone(),
            })
            .await?;
        workers.push(router);
    }

    let (done_tx, mut done) = mpsc::unbounded_channel();
    let client_config = Config {
        // The client only needs its own direct queue, for the answers.
        subscriptions: Subscriptions {
            direct: true,
            ..Subscriptions::none()
        },
        ..config("client@example.com/c1", 32)
    };
    let client = Router::builder()
        .claw_arc(claws::connect(&client_config)?)
        .build()?;
    client
        .start(handler_fn(move |packet: Packet, _via, _ctx| {
            let done_tx = done_tx.clone();
            async move {
                done_tx.send(packet.as_str().unwrap_or("").to_owned())?;
                Ok(())
            }
        }))
        .await?;

    let group = jid::parse("jobs@example.com")?;
    for i in 1..=JOBS {
        let job =
            format!(r#"<message from="client@example.com/c1"><body>job {i}</body></message>"#);
        client
            .send(&group, Some(&format!("job-{i}")), Packet::from(job))
            .await?;
    }
    let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
    for _ in 0..JOBS {
        let answer = tokio::time::timeout(Duration::from_secs(5), done.recv())
            .await?
            .ok_or("client stopped")?;
        println!("client <- {answer}");
        let (worker, _) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await?
            .ok_or("workers stopped")?;
        *per_worker.entry(worker).or_default() += 1;
    }
    println!("each job reached exactly one worker: {per_worker:?}");

    client
        .publish(Packet::from(r#"<presence from="client@example.com/c1"/>"#))
        .await?;
    let mut copies = Vec::new();
    // Three instance copies and one group copy.
    for _ in 0..4 {
        let (worker, queue) = tokio::time::timeout(Duration::from_secs(5), seen.recv())
            .await?
            .ok_or("workers stopped")?;
        copies.push(format!("{worker} via {queue}"));
    }
    copies.sort();
    println!("the broadcast reached: {}", copies.join(", "));

    client.close().await?;
    for worker in workers {
        worker.close().await?;
    }
    Ok(())
}
