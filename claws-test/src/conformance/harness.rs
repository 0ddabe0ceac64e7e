//! What every case uses: unique JIDs and payload tokens, instances whose deliveries are collected
//! into an [`Inbox`] and settled per a [`Policy`], waits with deadlines, and cleanup.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use claws_core::{Capabilities, Claw, Event, Events, Packet, Via};
use tokio::sync::{mpsc, watch};

use super::{ClawFactory, Options, Outcome};

/// The usual wait for a delivery.
pub(crate) const WAIT: Duration = Duration::from_secs(20);
/// The wait for a bulk transfer (thousands of stanzas).
pub(crate) const BULK: Duration = Duration::from_secs(90);
/// The domain of every JID the suite makes.
pub(crate) const DOMAIN: &str = "conformance.claws.test";

/// Why a case did not pass.
#[derive(Debug)]
pub(crate) enum CaseError {
    /// The case does not apply.
    Skip(String),
    /// A check failed.
    Fail(String),
}

impl CaseError {
    pub(crate) fn into_outcome(self) -> Outcome {
        match self {
            CaseError::Skip(why) => Outcome::Skipped(why),
            CaseError::Fail(why) => Outcome::Failed(why),
        }
    }
}

impl From<&str> for CaseError {
    fn from(s: &str) -> Self {
        CaseError::Fail(s.to_owned())
    }
}

impl From<String> for CaseError {
    fn from(s: String) -> Self {
        CaseError::Fail(s)
    }
}

pub(crate) type CaseResult<T = ()> = Result<T, CaseError>;

/// Fails the case with a formatted message unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err($crate::conformance::harness::CaseError::Fail(format!($($fmt)+)));
        }
    };
}
pub(crate) use ensure;

/// Adds what was being done to an error, making it a failure.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl fmt::Display) -> CaseResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl fmt::Display) -> CaseResult<T> {
        self.map_err(|e| CaseError::Fail(format!("{what}: {e}")))
    }
}

/// Skips the case unless `has` holds, naming the capability.
pub(crate) fn require(has: bool, capability: &str) -> CaseResult {
    if has {
        Ok(())
    } else {
        Err(CaseError::Skip(format!(
            "capabilities().{capability} is false"
        )))
    }
}

/// A random-enough suffix, unique per case and run.
fn token() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// One case's context: the factory, the claw's capabilities, the case's token, and what to clean.
pub(crate) struct Harness {
    pub(crate) factory: Arc<dyn ClawFactory>,
    /// How long to wait for a delivery.
    pub(crate) wait: Duration,
    /// How long to wait for a bulk transfer.
    pub(crate) bulk: Duration,
    caps: Result<Capabilities, String>,
    token: String,
    instances: AtomicUsize,
    jids: Mutex<Vec<String>>,
    claws: Mutex<Vec<Arc<dyn Claw>>>,
    /// Kept alive until the claws are closed (a fault proxy they connect through).
    held: Mutex<Vec<Box<dyn std::any::Any + Send>>>,
}

impl Harness {
    pub(crate) fn new(
        factory: Arc<dyn ClawFactory>,
        caps: Result<Capabilities, String>,
        wait: Duration,
    ) -> Self {
        Self {
            factory,
            wait,
            bulk: wait * 9 / 2,
            caps,
            token: token(),
            instances: AtomicUsize::new(0),
            jids: Mutex::new(Vec::new()),
            claws: Mutex::new(Vec::new()),
            held: Mutex::new(Vec::new()),
        }
    }

    /// The claw's capabilities (failing the case if no claw could be made to read them).
    pub(crate) fn caps(&self) -> CaseResult<Capabilities> {
        self.caps.clone().map_err(CaseError::Fail)
    }

    /// This case's token, in every JID and payload it makes.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// A bare JID unique to this case: `{local}-{token}@conformance.claws.test`.
    pub(crate) fn bare(&self, local: &str) -> String {
        format!("{local}-{}@{DOMAIN}", self.token)
    }

    /// A full JID unique to this case.
    pub(crate) fn full(&self, local: &str, resource: &str) -> String {
        format!("{}/{resource}", self.bare(local))
    }

    /// A stanza carrying this case's token and `key`, which [`key_of`] reads back.
    pub(crate) fn stanza(&self, key: &str) -> Packet {
        Packet::from(format!(
            "<message xmlns=\"jabber:client\" id=\"{}/{key}\"><body>{key}</body></message>",
            self.token
        ))
    }

    /// Makes a claw (recorded for closing and cleanup).
    pub(crate) async fn make(&self, jid: &str, opts: &Options) -> CaseResult<Arc<dyn Claw>> {
        self.note_jid(jid);
        let claw = tokio::time::timeout(WAIT, self.factory.make(jid, opts))
            .await
            .map_err(|_| format!("factory.make({jid}) did not return within {WAIT:?}"))?
            .ctx(format_args!("factory.make({jid})"))?;
        self.note_claw(&claw);
        Ok(claw)
    }

    pub(crate) fn note_jid(&self, jid: &str) {
        self.jids.lock().expect("jids lock").push(jid.to_owned());
    }

    pub(crate) fn note_claw(&self, claw: &Arc<dyn Claw>) {
        self.claws.lock().expect("claws lock").push(claw.clone());
    }

    /// Keeps `thing` alive until the case's claws are closed.
    pub(crate) fn hold(&self, thing: impl std::any::Any + Send) {
        self.held.lock().expect("held lock").push(Box::new(thing));
    }

    /// A new inbox; instances started with its sender report into it.
    pub(crate) fn inbox(&self) -> (Tx, Inbox) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Tx(tx), Inbox { rx })
    }

    /// Makes and starts an instance for `jid`.
    pub(crate) async fn start(
        &self,
        jid: &str,
        opts: &Options,
        policy: Policy,
        tx: &Tx,
    ) -> CaseResult<Instance> {
        let claw = self.make(jid, opts).await?;
        self.start_claw(claw, policy, tx).await
    }

    /// Starts a claw made elsewhere, collecting what it receives into `tx`'s inbox.
    pub(crate) async fn start_claw(
        &self,
        claw: Arc<dyn Claw>,
        policy: Policy,
        tx: &Tx,
    ) -> CaseResult<Instance> {
        let index = self.instances.fetch_add(1, Ordering::Relaxed);
        let (events, rx) = Events::channel(256);
        tokio::spawn(collect(rx, index, policy, self.token.clone(), tx.0.clone()));
        let jid = claw.jid().to_string();
        tokio::time::timeout(WAIT, claw.start(events))
            .await
            .map_err(|_| format!("start() of {jid} did not return within {WAIT:?}"))?
            .ctx(format_args!("start() of {jid}"))?;
        Ok(Instance { claw, index })
    }

    /// A started claw that consumes nothing, for sending.
    pub(crate) async fn sender(&self, local: &str) -> CaseResult<Arc<dyn Claw>> {
        let opts = Options {
            subscriptions: claws_core::topology::Subscriptions::none(),
            ..Options::default()
        };
        let (tx, _inbox) = self.inbox();
        let jid = self.full(local, "sender");
        Ok(self.start(&jid, &opts, Policy::Ack, &tx).await?.claw)
    }

    /// Closes every claw the case made and lets the factory clean up.
    pub(crate) async fn finish(&self) {
        let claws = std::mem::take(&mut *self.claws.lock().expect("claws lock"));
        let closing = claws.iter().map(|c| async move {
            let _ = tokio::time::timeout(WAIT, c.close()).await;
        });
        futures_util::future::join_all(closing).await;
        self.held.lock().expect("held lock").clear();
        let jids = std::mem::take(&mut *self.jids.lock().expect("jids lock"));
        if !jids.is_empty() {
            let _ = tokio::time::timeout(WAIT, self.factory.cleanup(&jids)).await;
        }
    }
}

/// A started claw and its index in the inbox's reports.
#[derive(Clone)]
pub(crate) struct Instance {
    pub(crate) claw: Arc<dyn Claw>,
    pub(crate) index: usize,
}

impl Instance {
    /// The claw's JID as a string.
    pub(crate) fn jid(&self) -> String {
        self.claw.jid().to_string()
    }

    /// Closes the claw, bounded.
    pub(crate) async fn close(&self) -> CaseResult {
        let jid = self.jid();
        tokio::time::timeout(BULK, self.claw.close())
            .await
            .map_err(|_| format!("close() of {jid} did not return within {BULK:?}"))?
            .ctx(format_args!("close() of {jid}"))
    }
}

/// How an instance settles what it receives.
#[derive(Clone)]
pub(crate) enum Policy {
    /// Ack every delivery.
    Ack,
    /// Reject every delivery (a handler that always fails).
    Reject,
    /// Reject the first attempt, ack the later ones.
    RejectFirst,
    /// Hold every delivery until the gate opens, then ack it and report [`Seen::Settled`].
    Hold(watch::Receiver<bool>),
}

/// The sending side of an inbox.
#[derive(Clone)]
pub(crate) struct Tx(mpsc::UnboundedSender<Seen>);

/// One delivery as the suite saw it.
#[derive(Debug, Clone)]
pub(crate) struct Got {
    pub(crate) index: usize,
    pub(crate) packet: Packet,
    pub(crate) via: Via,
    pub(crate) attempt: u32,
    /// The key the payload was made with ([`Harness::stanza`]), if it has one.
    pub(crate) key: Option<String>,
}

/// What an instance reports.
#[derive(Debug)]
pub(crate) enum Seen {
    /// Boxed: a `Via` is much larger than the other variants.
    Packet(Box<Got>),
    Connected(usize),
    Disconnected(usize, String),
    /// A held delivery was acked (`Ok`) or the ack failed (`Err`).
    Settled(Option<String>, Result<(), String>),
}

/// The key of a payload made by [`Harness::stanza`] with `token`.
pub(crate) fn key_of(packet: &Packet, token: &str) -> Option<String> {
    let s = packet.as_str()?;
    let start = s.find(&format!("id=\"{token}/"))? + token.len() + 5;
    let end = s[start..].find('"')? + start;
    Some(s[start..end].to_owned())
}

fn carries(packet: &Packet, token: &str) -> bool {
    let bytes = packet.as_bytes();
    let token = token.as_bytes();
    bytes.windows(token.len()).any(|w| w == token)
}

async fn collect(
    mut rx: mpsc::Receiver<Event>,
    index: usize,
    policy: Policy,
    token: String,
    tx: mpsc::UnboundedSender<Seen>,
) {
    while let Some(event) = rx.recv().await {
        let delivery = match event {
            Event::Connected { .. } => {
                let _ = tx.send(Seen::Connected(index));
                continue;
            }
            Event::Disconnected { reason, .. } => {
                let _ = tx.send(Seen::Disconnected(index, reason));
                continue;
            }
            Event::Received(d) => d,
            // An event this suite does not know yet: nothing to check.
            _ => continue,
        };
        if !carries(&delivery.packet, &token) {
            // Someone else's broadcast on a shared broker.
            let _ = delivery.acker.ack().await;
            continue;
        }
        let got = Got {
            index,
            key: key_of(&delivery.packet, &token),
            packet: delivery.packet,
            via: delivery.via,
            attempt: delivery.attempt,
        };
        let key = got.key.clone();
        let attempt = got.attempt;
        let _ = tx.send(Seen::Packet(Box::new(got)));
        let acker = delivery.acker;
        let failed =
            || claws_core::Error::Handler("conformance: this handler fails on purpose".into());
        match &policy {
            Policy::Ack => {
                let _ = acker.ack().await;
            }
            Policy::Reject => {
                let _ = acker.reject(&failed()).await;
            }
            Policy::RejectFirst if attempt <= 1 => {
                let _ = acker.reject(&failed()).await;
            }
            Policy::RejectFirst => {
                let _ = acker.ack().await;
            }
            Policy::Hold(gate) => {
                let mut gate = gate.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _ = gate.wait_for(|open| *open).await;
                    let r = acker.ack().await.map_err(|e| e.to_string());
                    let _ = tx.send(Seen::Settled(key, r));
                });
            }
        }
    }
}

/// Everything the instances of a case received, in arrival order.
pub(crate) struct Inbox {
    rx: mpsc::UnboundedReceiver<Seen>,
}

impl Inbox {
    /// The next report, within `within`.
    pub(crate) async fn next(&mut self, within: Duration) -> Option<Seen> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Collects packets until `done` says so (given every packet so far), within `within`.
    /// Connection events and settlements are returned too, in `others`.
    pub(crate) async fn until(
        &mut self,
        within: Duration,
        what: &str,
        done: impl FnMut(&[Got]) -> bool,
    ) -> CaseResult<Vec<Got>> {
        let (got, complete) = self.collect(within, done).await;
        if complete {
            return Ok(got);
        }
        Err(CaseError::Fail(format!(
            "waiting for {what}: gave up after {within:?} with {} packet(s) received{}",
            got.len(),
            summary(&got)
        )))
    }

    /// Collects packets until `done` says so or `within` passes; returns them and whether
    /// `done` was reached, so that the case can say precisely what is missing.
    pub(crate) async fn collect(
        &mut self,
        within: Duration,
        mut done: impl FnMut(&[Got]) -> bool,
    ) -> (Vec<Got>, bool) {
        let deadline = Instant::now() + within;
        let mut got = Vec::new();
        if done(&got) {
            return (got, true);
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(Seen::Packet(g))) => {
                    got.push(*g);
                    if done(&got) {
                        return (got, true);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return (got, false),
            }
        }
    }

    /// Collects packets until `n` have arrived.
    pub(crate) async fn packets(
        &mut self,
        n: usize,
        within: Duration,
        what: &str,
    ) -> CaseResult<Vec<Got>> {
        self.until(within, what, |g| g.len() >= n).await
    }

    /// Waits for a report matching `pred`, keeping the packets that arrive meanwhile in `kept`.
    pub(crate) async fn event(
        &mut self,
        within: Duration,
        what: &str,
        kept: &mut Vec<Got>,
        mut pred: impl FnMut(&Seen) -> bool,
    ) -> CaseResult<Seen> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(seen)) if pred(&seen) => return Ok(seen),
                Ok(Some(Seen::Disconnected(i, reason))) => {
                    tracing::info!(instance = i, %reason, "disconnected");
                }
                Ok(Some(Seen::Packet(g))) => kept.push(*g),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => {
                    return Err(CaseError::Fail(format!(
                        "waiting for {what}: nothing after {within:?}"
                    )))
                }
            }
        }
    }
}

/// A short description of what was received, for failure messages.
pub(crate) fn summary(got: &[Got]) -> String {
    if got.is_empty() {
        return String::new();
    }
    let shown: Vec<String> = got
        .iter()
        .rev()
        .take(3)
        .map(|g| {
            format!(
                "#{} key={:?} queue={} attempt={}",
                g.index,
                g.key.as_deref().unwrap_or("?"),
                g.via.queue,
                g.attempt
            )
        })
        .collect();
    format!("; the last: {}", shown.join(", "))
}

/// Parses a JID the suite made (they are valid by construction).
pub(crate) fn jid(s: &str) -> CaseResult<claws_core::Jid> {
    claws_core::jid::parse(s).ctx(format_args!("parsing the suite's own JID {s}"))
}

/// Sends a fence (key `fence-{index}`) to each instance's own JID from `sender`, and collects
/// until every fence arrived where it was sent. Returns the other packets received meanwhile:
/// on an ordered queue, anything misrouted to an instance arrives before its fence.
pub(crate) async fn fence_all(
    h: &Harness,
    inbox: &mut Inbox,
    sender: &dyn Claw,
    instances: &[&Instance],
) -> CaseResult<Vec<Got>> {
    for i in instances {
        let key = format!("fence-{}", i.index);
        sender
            .send(&jid(&i.jid())?, None, h.stanza(&key))
            .await
            .ctx(format_args!("sending a fence to {}", i.jid()))?;
    }
    let mut missing: Vec<(usize, String)> = instances
        .iter()
        .map(|i| (i.index, format!("fence-{}", i.index)))
        .collect();
    let got = inbox
        .until(h.wait, "the fences sent to each instance", |g| {
            if let Some(last) = g.last() {
                missing
                    .retain(|(idx, key)| !(last.index == *idx && last.key.as_deref() == Some(key)));
            }
            missing.is_empty()
        })
        .await?;
    Ok(got
        .into_iter()
        .filter(|g| !g.key.as_deref().is_some_and(|k| k.starts_with("fence-")))
        .collect())
}
