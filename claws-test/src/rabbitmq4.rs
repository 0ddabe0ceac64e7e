//! The local RabbitMQ 4 node (`scripts/rabbitmq4`, provisioned by `scripts/provision`): its URL,
//! and restarting it the way an operator does.
//!
//! Node `rmq4@localhost` runs Debian 13's RabbitMQ 4.0 in a chroot, listening on 127.0.0.1:5690
//! for AMQP 0-9-1 and AMQP 1.0 (native in 4.x), beside the default node (5672) and the cluster
//! (5681-5683), which nothing here touches. It is configured with RabbitMQ 4.3's defaults:
//! transient non-exclusive queues are refused (541 `Feature transient_nonexcl_queues is
//! deprecated`), AMQP 1.0 v1 addresses (`/amq/queue/...`, `/exchange/...`) are refused at
//! attach, `x-queue-master-locator` is refused, and a global `basic.qos` is applied per consumer.
//!
//! ```no_run
//! # async fn demo() -> claws_core::Result<()> {
//! use claws_test::rabbitmq4;
//! rabbitmq4::up().await?;                        // idempotent; fails loudly when it cannot
//! let url = rabbitmq4::url();                    // amqp://guest:guest@127.0.0.1:5690/%2f
//! let queues = rabbitmq4::ctl(&["-q", "list_queues", "name"]).await?;
//! rabbitmq4::restart_app().await?;               // durable queues and persistent messages stay
//! # let _ = (url, queues); Ok(()) }
//! ```

use claws_core::Result;

/// The node's AMQP port (0-9-1 and 1.0).
pub const PORT: u16 = 5690;

/// The node's TLS listener (the test CA's certificates, as on the default node's 5671).
pub const TLS_PORT: u16 = 5691;

/// The node's AMQP URL (guest/guest, vhost `/`).
pub const URL: &str = "amqp://guest:guest@127.0.0.1:5690/%2f";

/// The node's AMQP URL (guest/guest, vhost `/`), as an owned string: [`URL`].
pub fn url() -> String {
    URL.to_owned()
}

/// Runs `scripts/rabbitmq4 ARGS...` for this node (4.0); its stdout, or an error with its stderr.
pub async fn run(args: &[&str]) -> Result<String> {
    run_on(Release::V4_0, args).await
}

/// The RabbitMQ 4 nodes `scripts/rabbitmq4` runs (its `RMQ4_RELEASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Debian 13's RabbitMQ 4.0.5 with 4.3's defaults: [`PORT`], [`TLS_PORT`] (this module).
    V4_0,
    /// Debian unstable's RabbitMQ 4.3: [`PORT_4_3`], [`TLS_PORT_4_3`].
    V4_3,
}

impl Release {
    /// The script's `RMQ4_RELEASE` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Release::V4_0 => "4.0",
            Release::V4_3 => "4.3",
        }
    }

    /// The node's AMQP port.
    pub fn port(self) -> u16 {
        match self {
            Release::V4_0 => PORT,
            Release::V4_3 => PORT_4_3,
        }
    }

    /// The node's TLS port.
    pub fn tls_port(self) -> u16 {
        match self {
            Release::V4_0 => TLS_PORT,
            Release::V4_3 => TLS_PORT_4_3,
        }
    }
}

/// The RabbitMQ 4.3 node's AMQP port (`RMQ4_RELEASE=4.3 scripts/rabbitmq4`).
pub const PORT_4_3: u16 = 5694;
/// The RabbitMQ 4.3 node's TLS port.
pub const TLS_PORT_4_3: u16 = 5695;

/// Runs `scripts/rabbitmq4 ARGS...` for the node `release`.
pub async fn run_on(release: Release, args: &[&str]) -> Result<String> {
    crate::script::run_with("rabbitmq4", args, &[("RMQ4_RELEASE", release.as_str())]).await
}

/// Creates the chroot if it is missing, starts the node if it is not running, and waits until
/// it accepts connections. A few milliseconds when it is up already.
pub async fn up() -> Result<()> {
    run(&["up"]).await.map(drop)
}

/// `rabbitmqctl ARGS...` against the node; its stdout.
pub async fn ctl(args: &[&str]) -> Result<String> {
    let mut all = vec!["ctl"];
    all.extend_from_slice(args);
    run(&all).await
}

/// The URL of the vhost `vhost` of this node (guest/guest), created with guest's permissions
/// when missing.
pub async fn vhost_url(vhost: &str) -> Result<String> {
    let _ = ctl(&["add_vhost", vhost]).await;
    ctl(&["set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"]).await?;
    Ok(format!("amqp://guest:guest@127.0.0.1:{PORT}/{vhost}"))
}

/// Restarts the node's application (`rabbitmqctl stop_app`, `start_app`, then `await_startup`)
/// and returns once it accepts connections again. Every connection is closed; durable queues and
/// persistent messages stay.
///
/// The whole node restarts: run it only where no other test uses this node at the same time.
pub async fn restart_app() -> Result<()> {
    run(&["restart_app"]).await.map(drop)
}
