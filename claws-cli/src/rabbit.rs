//! Raw lapin connections to RabbitMQ, for the baseline and for cleaning up after runs.

use claws::Config;
use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

use crate::exit::Failure;
use crate::session;

/// Connects to the config's broker (the local default when it names none), trying each of its
/// URLs (the nodes of a cluster) in turn.
pub(crate) async fn open(config: &Config) -> Result<Connection, Failure> {
    let mut urls: Vec<String> = config
        .urls()
        .iter()
        .map(|url| lapin_url(config.transport, url))
        .collect();
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

/// `url` as lapin reads it. An AMQP 1.0 URL without a vhost (`amqp://host:5672` or
/// `amqp://host:5672/`) means the default vhost `/`; to lapin an empty path is the vhost `""`,
/// which does not exist, so it gets `/%2f`.
fn lapin_url(transport: claws::Transport, url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let path_start = url[scheme_end..]
        .find('/')
        .map_or(url.len(), |i| scheme_end + i);
    let path = &url[path_start..];
    if transport == claws::Transport::Amqp10 && (path.is_empty() || path == "/") {
        format!("{}/%2f", &url[..path_start])
    } else {
        url.to_owned()
    }
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

#[cfg(test)]
mod tests {
    use super::lapin_url;
    use claws::Transport;

    #[test]
    fn an_amqp10_url_without_a_vhost_is_the_default_vhost() {
        for url in ["amqp://u:p@h:5672", "amqp://u:p@h:5672/"] {
            assert_eq!(lapin_url(Transport::Amqp10, url), "amqp://u:p@h:5672/%2f");
        }
        assert_eq!(lapin_url(Transport::Amqp10, "amqp://h/v"), "amqp://h/v");
        assert_eq!(lapin_url(Transport::Amqp091, "amqp://h:1/"), "amqp://h:1/");
    }
}
