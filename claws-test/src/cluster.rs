//! The local 3-node RabbitMQ cluster (`scripts/cluster`, provisioned by `scripts/provision`):
//! its URLs, and the faults a cluster test needs (kill a node, stop its app, bring it back).
//!
//! Nodes `c1@localhost`, `c2@localhost`, `c3@localhost` (RabbitMQ 3.10) listen on 127.0.0.1:5681,
//! 5682 and 5683 beside the default node (5672), which nothing here touches.
//!
//! `TEST_RABBITMQ=4` ([`on_rabbitmq4`]) selects the RabbitMQ 4
//! cluster instead (`scripts/cluster4`: RabbitMQ 4.0 with 4.3's defaults, nodes `r4c1@localhost`,
//! `r4c2@localhost`, `r4c3@localhost` on 127.0.0.1:5684, 5685 and 5686), with the same functions,
//! so that one cluster suite runs on both.
//!
//! ```no_run
//! # async fn demo() -> claws_core::Result<()> {
//! use claws_test::cluster;
//! cluster::up().await?;                 // idempotent; fails loudly when it cannot
//! let urls = cluster::urls();           // amqp://guest:guest@127.0.0.1:5681/%2f, ...
//! cluster::kill(1).await?;              // kill -9 of c1's VM
//! cluster::start(1).await?;             // back, rejoined
//! # let _ = urls; Ok(()) }
//! ```

use std::path::PathBuf;

use claws_core::{Error, Result};

use crate::rabbitmq::on_rabbitmq4;

/// The AMQP port of node `n` (1, 2 or 3): 5681-5683, or 5684-5686 on the RabbitMQ 4 cluster.
pub fn port(n: u8) -> u16 {
    if on_rabbitmq4() {
        5683 + u16::from(n)
    } else {
        5680 + u16::from(n)
    }
}

/// The Erlang node name of node `n` (1, 2 or 3): `c1@localhost`, or `r4c1@localhost` on the
/// RabbitMQ 4 cluster.
pub fn node_name(n: u8) -> String {
    if on_rabbitmq4() {
        format!("r4c{n}@localhost")
    } else {
        format!("c{n}@localhost")
    }
}

/// The script that runs the cluster under test: `scripts/cluster`, or `scripts/cluster4`.
fn script_name() -> &'static str {
    if on_rabbitmq4() {
        "cluster4"
    } else {
        "cluster"
    }
}

/// The path of that script, for the tests that run it themselves (blocking, e.g. in a `Drop`).
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(script_name())
}

/// The AMQP URL of node `n` (guest/guest, vhost `/`).
pub fn url(n: u8) -> String {
    format!("amqp://guest:guest@127.0.0.1:{}/%2f", port(n))
}

/// The URLs of all three nodes, node 1 first.
pub fn urls() -> Vec<String> {
    (1..=3).map(url).collect()
}

/// Runs `scripts/cluster ARGS...` (`scripts/cluster4` on RabbitMQ 4); its stdout, or an error
/// with its stderr.
pub async fn run(args: &[&str]) -> Result<String> {
    crate::script::run(script_name(), args).await
}

/// Starts what is not running and waits until all three nodes run clustered.
pub async fn up() -> Result<()> {
    run(&["up"]).await.map(drop)
}

/// `kill -9` of node `n`'s Erlang VM.
pub async fn kill(n: u8) -> Result<()> {
    run(&["kill", &n.to_string()]).await.map(drop)
}

/// Starts node `n` again (after [`kill`] or [`stop_app`]) and waits until it has rejoined.
pub async fn start(n: u8) -> Result<()> {
    run(&["start", &n.to_string()]).await.map(drop)
}

/// `rabbitmqctl stop_app` on node `n`: a graceful stop, the VM stays up.
pub async fn stop_app(n: u8) -> Result<()> {
    run(&["stop_app", &n.to_string()]).await.map(drop)
}

/// `rabbitmqctl ARGS...` against node `n`; its stdout.
pub async fn ctl(n: u8, args: &[&str]) -> Result<String> {
    let mut all = vec!["ctl".to_owned(), n.to_string()];
    all.extend(args.iter().map(|s| s.to_string()));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    run(&all).await
}

/// Held while a test kills or stops nodes, so that two such tests (in any process) never take
/// down two nodes at once. Released when dropped.
#[derive(Debug)]
pub struct Exclusive(PathBuf);

impl Drop for Exclusive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Waits (up to 10 minutes) until no other test holds the cluster under test, then holds it. A
/// lock left by a process that died is taken over. The two clusters have a lock each.
pub async fn exclusive() -> Result<Exclusive> {
    let dir = if on_rabbitmq4() {
        std::env::var_os("CLAWS_RMQ4_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/claws-rmq4"))
            .join("root/claws-cluster")
    } else {
        std::env::var_os("CLAWS_CLUSTER_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/tmp/claws-cluster"))
    };
    let path = dir.join("test.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut file) => {
                use std::io::Write;
                let _ = write!(file, "{}", std::process::id());
                return Ok(Exclusive(path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
                if !alive && !holder.is_empty() {
                    let _ = std::fs::remove_file(&path);
                    continue;
                }
            }
            Err(e) => {
                return Err(Error::backend(format!(
                    "cannot create {} (run scripts/provision): {e}",
                    path.display()
                )))
            }
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::backend(format!(
                "another test has held the cluster for 10 minutes ({})",
                path.display()
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
