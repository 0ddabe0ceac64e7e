//! [`connect`]: the claw a [`Config`] names.

use std::sync::{Arc, OnceLock};

use claws_core::mem::MemBroker;
use claws_core::{Claw, Config, Error, Result, Transport};

/// The process-wide broker that [`connect`] builds `mem` claws on.
///
/// Every mem claw built by [`connect`] in one process shares it, so they reach each other; it
/// lives as long as the process. Another process has its own: the mem transport never crosses
/// process boundaries.
pub fn default_broker() -> &'static MemBroker {
    static BROKER: OnceLock<MemBroker> = OnceLock::new();
    BROKER.get_or_init(MemBroker::new)
}

/// Builds (without starting) the claw `config` names with its `transport` key.
///
/// The claw connects when it is started, by a [`Router`](claws_core::Router) or
/// [`Claw::start`]. `mem` claws are built on [`default_broker`]; `amqp091` and `amqp10` need
/// their Cargo feature, and asking for one whose feature is off is an
/// [`Error::Config`](claws_core::Error::Config) that names the feature.
///
/// ```
/// let config = claws::Config { jid: "bot@example.com/r1".into(), ..claws::Config::default() };
/// let claw = claws::connect(&config)?;
/// assert_eq!(claw.name(), "mem");
/// # Ok::<(), claws::Error>(())
/// ```
pub fn connect(config: &Config) -> Result<Arc<dyn Claw>> {
    config.validate()?;
    match config.transport {
        Transport::Mem => connect_mem(config, default_broker()),
        Transport::Amqp091 => amqp091(config),
        Transport::Amqp10 => amqp10(config),
        other => Err(Error::Config(format!(
            "transport `{}` is not built into this version of claws",
            other.as_str()
        ))),
    }
}

/// Builds a `mem` claw from `config` on `broker` (whatever `config.transport` says): its JID,
/// name, prefetch (counted across all its subscriptions), `max_deliveries` and subscriptions.
pub fn connect_mem(config: &Config, broker: &MemBroker) -> Result<Arc<dyn Claw>> {
    let claw = broker
        .claw_builder(&config.jid)?
        .name(config.claw_name())
        .prefetch(config.prefetch)
        .max_deliveries(config.max_deliveries)
        .subscriptions(config.subscriptions)
        .build()?;
    Ok(Arc::new(claw))
}

#[cfg(feature = "amqp091")]
fn amqp091(config: &Config) -> Result<Arc<dyn Claw>> {
    Ok(Arc::new(claws_amqp091::AmqpClaw::from_config(config)?))
}

#[cfg(not(feature = "amqp091"))]
fn amqp091(_config: &Config) -> Result<Arc<dyn Claw>> {
    Err(feature_off("amqp091"))
}

#[cfg(feature = "amqp10")]
fn amqp10(config: &Config) -> Result<Arc<dyn Claw>> {
    Ok(Arc::new(claws_amqp10::Amqp10Claw::from_config(config)?))
}

#[cfg(not(feature = "amqp10"))]
fn amqp10(_config: &Config) -> Result<Arc<dyn Claw>> {
    Err(feature_off("amqp10"))
}

#[cfg(not(all(feature = "amqp091", feature = "amqp10")))]
fn feature_off(feature: &str) -> claws_core::Error {
    claws_core::Error::Config(format!(
        "transport `{feature}` is not compiled in; enable the `{feature}` feature of the claws \
         crate (`cargo build --features {feature}`)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use claws_core::Error;

    #[test]
    fn mem_claws_share_the_default_broker() {
        let config = Config {
            jid: "unit@example.com/a".into(),
            name: Some("m1".into()),
            ..Config::default()
        };
        let claw = connect(&config).unwrap();
        assert_eq!(claw.name(), "m1");
        assert_eq!(claw.jid().as_str(), "unit@example.com/a");
    }

    #[tokio::test]
    async fn a_prefetch_of_one_still_serves_every_subscription() {
        use claws_core::{jid, Event, Events, Packet};
        let broker = MemBroker::new();
        let config = Config {
            jid: "p1@example.com/a".into(),
            prefetch: 1,
            ..Config::default()
        };
        let claw = connect_mem(&config, &broker).unwrap();
        let (events, mut rx) = Events::channel(16);
        claw.start(events).await.unwrap();
        let bare = jid::parse("p1@example.com").unwrap();
        let full = jid::parse("p1@example.com/a").unwrap();
        claw.send(&bare, None, Packet::from("<a/>")).await.unwrap();
        claw.send(&full, None, Packet::from("<b/>")).await.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let event = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                .await
                .expect("both packets arrive")
                .expect("events");
            if let Event::Received(d) = event {
                got.push(d.via.queue.to_string());
                d.acker.ack().await.unwrap();
            }
        }
        got.sort();
        assert_eq!(got, ["direct", "group_direct"]);
        drop(rx);
        claw.close().await.unwrap();
    }

    #[test]
    fn bad_config_is_refused() {
        let config = Config {
            jid: "a@b@c".into(),
            ..Config::default()
        };
        assert!(matches!(connect(&config), Err(Error::InvalidJid { .. })));
    }

    #[cfg(not(feature = "amqp10"))]
    #[test]
    fn a_transport_without_its_feature_names_the_feature() {
        let config = Config {
            transport: Transport::Amqp10,
            ..Config::default()
        };
        let err = connect(&config).unwrap_err().to_string();
        assert!(err.contains("enable the `amqp10` feature"), "{err}");
    }
}
