//! Faults for claws on the local RabbitMQ: [`restart_app`] restarts the broker the way an
//! operator does, for [`ClawFactory::restart_broker`](crate::conformance::ClawFactory::restart_broker).
//!
//! ```no_run
//! # async fn demo() -> claws_core::Result<()> {
//! claws_test::rabbitmq::restart_app().await?; // durable queues and persistent messages stay
//! # Ok(()) }
//! ```

use claws_core::{Error, Result};

/// Restarts the local RabbitMQ node's application (`rabbitmqctl stop_app`, `start_app`, then
/// `await_startup`) and returns once it accepts connections again. Every connection is closed;
/// durable queues, persistent messages and the configured listeners come back.
///
/// The whole broker restarts: run it only where no other test uses RabbitMQ at the same time
/// (a conformance run is sequential; cargo runs test binaries one after another).
pub async fn restart_app() -> Result<()> {
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

/// The URL of a vhost of the local RabbitMQ for transient (`durable = false`) instances,
/// whose exchanges are transient too and so cannot share the default vhost's durable ones.
/// Created, with guest's permissions, when missing; panics with the reason when it cannot be.
pub fn transient_url() -> String {
    const VHOST: &str = "claws-transient";
    let _ = std::process::Command::new("rabbitmqctl")
        .args(["-q", "add_vhost", VHOST])
        .output();
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "set_permissions",
            "-p",
            VHOST,
            "guest",
            ".*",
            ".*",
            ".*",
        ])
        .output()
        .expect("rabbitmqctl (scripts/provision)");
    assert!(
        out.status.success(),
        "cannot give guest the vhost {VHOST}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!("amqp://guest:guest@127.0.0.1:5672/{VHOST}")
}
