//! The local RabbitMQ node the broker tests run against, and faults on it: [`restart_app`]
//! restarts the broker the way an operator does, for
//! [`ClawFactory::restart_broker`](crate::conformance::ClawFactory::restart_broker).
//!
//! `TEST_RABBITMQ=4` points [`url`], [`port`], [`ctl`], [`transient_url`] and
//! [`restart_app`] at the RabbitMQ 4 node ([`crate::rabbitmq4`], 4.0.5 with 4.3's defaults)
//! instead of the default 3.x node on 5672, `TEST_RABBITMQ=4.3` at the RabbitMQ 4.3 node, so
//! that one test suite runs on each (`scripts/test` runs the broker suites three times).
//!
//! ```no_run
//! # async fn demo() -> claws_core::Result<()> {
//! let url = claws_test::rabbitmq::url(); // amqp://guest:guest@127.0.0.1:5672/%2f by default
//! claws_test::rabbitmq::restart_app().await?; // durable queues and persistent messages stay
//! # let _ = url; Ok(()) }
//! ```

use claws_core::{Error, Result};

/// The RabbitMQ 4 node the broker tests run against: `TEST_RABBITMQ=4` (4.0) or `4.3`;
/// `None` for the default 3.x node.
pub fn rabbitmq4_release() -> Option<crate::rabbitmq4::Release> {
    use crate::rabbitmq4::Release;
    match std::env::var("TEST_RABBITMQ").ok()?.trim() {
        "4" | "4.0" => Some(Release::V4_0),
        "4.3" => Some(Release::V4_3),
        _ => None,
    }
}

/// Whether the broker tests run against a RabbitMQ 4 node (`TEST_RABBITMQ=4` or `4.3`).
pub fn on_rabbitmq4() -> bool {
    rabbitmq4_release().is_some()
}

/// The AMQP port of the node under test: 5672, or the RabbitMQ 4 node's.
pub fn port() -> u16 {
    rabbitmq4_release().map_or(5672, |r| r.port())
}

/// The TLS (`amqps://`) port of the node under test: 5671, or the RabbitMQ 4 node's (5691,
/// 5695); all use the test CA of `scripts/provision.d/amqp091-tls.sh`.
pub fn tls_port() -> u16 {
    rabbitmq4_release().map_or(5671, |r| r.tls_port())
}

/// The AMQP URL of the node under test (guest/guest, vhost `/`).
pub fn url() -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", port())
}

/// `rabbitmqctl ARGS...` against the node under test, blocking (tests call it from plain
/// threads and `Drop`s too). Panics when the command cannot run at all.
pub fn ctl(args: &[&str]) -> std::process::Output {
    let mut command = if let Some(release) = rabbitmq4_release() {
        let mut c = std::process::Command::new(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/rabbitmq4"),
        );
        c.env("RMQ4_RELEASE", release.as_str()).arg("ctl");
        c
    } else {
        std::process::Command::new("rabbitmqctl")
    };
    command
        .args(args)
        .output()
        .expect("rabbitmqctl of the node under test (run scripts/provision)")
}

/// Restarts the node under test's application (`rabbitmqctl stop_app`, `start_app`, then
/// `await_startup`) and returns once it accepts connections again. Every connection is closed;
/// durable queues, persistent messages and the configured listeners come back.
///
/// The whole broker restarts: run it only where no other test uses RabbitMQ at the same time
/// (a conformance run is sequential; cargo runs test binaries one after another).
pub async fn restart_app() -> Result<()> {
    if let Some(release) = rabbitmq4_release() {
        return crate::rabbitmq4::run_on(release, &["restart_app"])
            .await
            .map(drop);
    }
    tokio::task::spawn_blocking(|| {
        for args in [
            &["stop_app"][..],
            &["start_app"][..],
            &["await_startup", "--timeout", "60"][..],
        ] {
            let out = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .map_err(|e| {
                    Error::backend(format!(
                        "cannot run rabbitmqctl (is RabbitMQ installed? run scripts/provision): {e}"
                    ))
                })?;
            if !out.status.success() {
                return Err(Error::backend(format!(
                    "rabbitmqctl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| Error::backend(format!("the rabbitmqctl task failed: {e}")))?
}

/// The URL of the vhost `vhost` of the node under test, created with guest's permissions when
/// missing (panics with the reason when it cannot be); its `xmpp_dead_letter` queue is purged
/// when `purge_dead_letters`. For tests whose messages must not reach other tests' queues
/// (poison that another client would choke on).
pub fn vhost_url(vhost: &str, purge_dead_letters: bool) -> String {
    let _ = ctl(&["-q", "add_vhost", vhost]);
    let out = ctl(&[
        "-q",
        "set_permissions",
        "-p",
        vhost,
        "guest",
        ".*",
        ".*",
        ".*",
    ]);
    assert!(
        out.status.success(),
        "cannot give guest the vhost {vhost}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if purge_dead_letters {
        let _ = ctl(&["-q", "purge_queue", "-p", vhost, "xmpp_dead_letter"]);
    }
    format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", port())
}

/// The URL of a vhost of the node under test for transient (`durable = false`) instances,
/// whose exchanges are transient too and so cannot share the default vhost's durable ones.
/// Created, with guest's permissions, when missing; panics with the reason when it cannot be.
pub fn transient_url() -> String {
    vhost_url("claws-transient", false)
}
