//! Helpers shared by the integration tests: unique names, an event inbox, the Proton broker.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use claws_core::{Delivery, Event, Events};
use tokio::sync::mpsc;

/// The RabbitMQ node under test (scripts/provision starts it): 5672, or the RabbitMQ 4 node
/// with `TEST_RABBITMQ=4` (see `claws_test::rabbitmq`).
pub fn url() -> String {
    claws_test::rabbitmq::url()
}
/// The address of the RabbitMQ node under test.
pub fn rabbit() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], claws_test::rabbitmq::port()))
}
/// The target a raw AMQP 1.0 sender attaches to so that its messages reach the direct
/// exchange with routing key `jid`: RabbitMQ 3.x's `/exchange/xmpp_direct` (the key is the
/// message's `subject`, which the caller sets), or RabbitMQ 4's `/exchanges/xmpp_direct/<jid>`
/// (4.3 refuses the v1 form).
pub fn direct_exchange_target(jid: &str) -> String {
    if claws_test::rabbitmq::on_rabbitmq4() {
        format!(
            "/exchanges/xmpp_direct/{}",
            claws_amqp10::percent_encode(jid)
        )
    } else {
        "/exchange/xmpp_direct".to_owned()
    }
}
/// How long any single wait may take.
pub const WAIT: Duration = Duration::from_secs(15);

/// A name no other test (or run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos();
    format!(
        "{prefix}{:x}{}",
        nanos & 0xffff_ffff_ffff,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Collects what a claw reports.
pub struct Inbox {
    rx: mpsc::Receiver<Event>,
    pub connected: usize,
    pub disconnected: usize,
}

impl Inbox {
    pub fn new() -> (Events, Inbox) {
        let (events, rx) = Events::channel(256);
        (
            events,
            Inbox {
                rx,
                connected: 0,
                disconnected: 0,
            },
        )
    }

    /// The next event, failing the test after `WAIT`.
    pub async fn event(&mut self) -> Event {
        let e = tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("no event within the wait")
            .expect("the claw dropped its events");
        match &e {
            Event::Connected { .. } => self.connected += 1,
            Event::Disconnected { .. } => self.disconnected += 1,
            _ => {}
        }
        e
    }

    /// The next delivery whose payload contains `token`; others (broadcasts of other tests)
    /// are acked and skipped.
    pub async fn delivery(&mut self, token: &str) -> Delivery {
        loop {
            if let Event::Received(d) = self.event().await {
                if d.packet.as_str().is_some_and(|s| s.contains(token)) {
                    return d;
                }
                let _ = d.acker.ack().await;
            }
        }
    }

    /// Waits for a `Connected` event (deliveries meanwhile carrying `token` fail the test).
    pub async fn until_connected(&mut self) {
        loop {
            match self.event().await {
                Event::Connected { .. } => return,
                Event::Disconnected { .. } => {}
                Event::Received(d) => {
                    let _ = d.acker.ack().await;
                }
                _ => {}
            }
        }
    }

    /// Whether a delivery carrying `token` arrives within `window` (acking others).
    pub async fn nothing_within(&mut self, token: &str, window: Duration) -> Option<Delivery> {
        let deadline = tokio::time::Instant::now() + window;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => return None,
                Ok(None) => return None,
                Ok(Some(Event::Received(d))) => {
                    if d.packet.as_str().is_some_and(|s| s.contains(token)) {
                        return Some(d);
                    }
                    let _ = d.acker.ack().await;
                }
                Ok(Some(Event::Connected { .. })) => self.connected += 1,
                Ok(Some(Event::Disconnected { .. })) => self.disconnected += 1,
                Ok(Some(_)) => {}
            }
        }
    }
}

/// The Qpid Proton C example broker (built by scripts/provision.d/amqp10.sh), on a free
/// loopback port; killed on drop.
pub struct ProtonBroker {
    child: Child,
    pub port: u16,
}

impl ProtonBroker {
    pub fn path() -> String {
        std::env::var("CLAWS_PROTON_BROKER")
            .unwrap_or_else(|_| "/tmp/claws-proton-broker/broker".to_owned())
    }

    pub fn start() -> ProtonBroker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        Self::start_on(port)
    }

    pub fn start_on(port: u16) -> ProtonBroker {
        let path = Self::path();
        let mut child = Command::new(&path)
            .args(["127.0.0.1", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run the Proton example broker `{path}` ({e}); run scripts/provision")
            });
        let stdout = child.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("listening on") => break,
                Some(Ok(_)) => continue,
                other => panic!("the Proton broker did not start: {other:?}"),
            }
        }
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ProtonBroker { child, port }
    }

    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for ProtonBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
