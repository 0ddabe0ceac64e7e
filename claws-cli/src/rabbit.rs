//! Raw lapin connections to RabbitMQ, for the baseline and for cleaning up after runs.

use claws::Config;
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

use crate::exit::Failure;
use crate::session;

/// Connects to the config's broker (the local default when it names none), trying each of its
/// URLs (the nodes of a cluster) in turn.
pub(crate) async fn open(config: &Config) -> Result<Connection, Failure> {
    let mut urls = config.urls();
    if urls.is_empty() {
        urls.push("amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    }
    let mut errors = Vec::new();
    for url in &urls {
        let connect = Connection::connect(url, ConnectionProperties::default());
        match tokio::time::timeout(session::CONNECT_TIMEOUT, connect).await {
            Ok(Ok(conn)) => return Ok(conn),
            Ok(Err(e)) => errors.push(format!("{}: {e}", crate::exit::clean(url))),
            Err(_) => errors.push(format!("{}: no answer", crate::exit::clean(url))),
        }
    }
    Err(Failure::connect(format!(
        "lapin cannot connect to {}: {}",
        session::endpoint(config),
        errors.join("; ")
    )))
}

/// Deletes the queues of `jids` (every subscription) on the config's broker, best effort.
pub(crate) async fn delete_queues_of(config: &Config, jids: &[&str]) {
    let mut names = Vec::new();
    for jid in jids {
        if let Ok(jid) = claws::jid::parse(jid) {
            if let Ok(queues) = claws::topology::queues(&jid, claws::topology::Subscriptions::all())
            {
                names.extend(queues.into_iter().map(|q| q.name));
            }
        }
    }
    let Ok(conn) = open(config).await else { return };
    if let Ok(channel) = conn.create_channel().await {
        for name in names {
            let _ = channel
                .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        let _ = channel.close(200, "cleanup done".into()).await;
    }
    let _ = conn.close(200, "cleanup done".into()).await;
}
