//! The hostile-input suite: what a publisher with rights on the broker can send a claws
//! service, delivered to a running instance by a raw client ([`RawPublisher`]), each followed
//! by a canary. It checks that the instance survives (no disconnection), the canary behind
//! each input arrives, and each input meets its documented fate ([`Fate`]): delivered to the
//! handler unchanged, once, and parsed or refused by the stanza parser as `claws echo` would
//! (a refused one is dropped: acked).
//!
//! ```no_run
//! # use claws_test::{hostile, mem::MemFactory};
//! # async fn demo() {
//! let factory = MemFactory::new();
//! let raw = hostile::MemRaw::new(factory.broker());
//! let report = hostile::run(&factory, &raw).await;
//! println!("{report}");
//! report.assert_passed();
//! # }
//! ```
//!
//! What the client library cannot decode (non-UTF-8 properties, garbage AMQP 1.0 sections) is
//! tested per claw (`tests/hostile.rs` of claws-amqp091 and claws-amqp10): it never reaches a
//! handler.

use std::fmt;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use claws_core::mem::{MemBroker, MemClaw};
use claws_core::{Claw, Event, Events, Packet};

use crate::conformance::{ClawFactory, Options};

/// A header value a hostile publisher sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Header {
    /// A string (0-9-1 long string).
    Str(String),
    /// A signed integer.
    Int(i64),
    /// Bytes that are not UTF-8 (0-9-1 long string).
    Bytes(Vec<u8>),
}

/// What must become of a hostile input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fate {
    /// Delivered unchanged, once, and the stanza parser takes it.
    Parsed,
    /// Delivered unchanged, once, and the stanza parser refuses it with an error whose text
    /// holds this (`claws echo` drops it: acked).
    Refused(&'static str),
}

/// One hostile input.
#[derive(Debug, Clone)]
pub struct Input {
    /// Its name in the report.
    pub name: &'static str,
    /// The body, as sent.
    pub body: Vec<u8>,
    /// Headers, as sent (claws' own names with the wrong types).
    pub headers: Vec<(String, Header)>,
    /// What must become of it.
    pub fate: Fate,
}

fn input(name: &'static str, body: impl Into<Vec<u8>>, fate: Fate) -> Input {
    Input {
        name,
        body: body.into(),
        headers: Vec::new(),
        fate,
    }
}

/// The inputs that held in issue 15's attack, which must keep holding.
pub fn inputs() -> Vec<Input> {
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    let laughs = {
        let mut dtd = String::from("<!ENTITY lol \"lol\">");
        for i in 1..10 {
            let prev = if i == 1 {
                "lol".to_owned()
            } else {
                format!("lol{}", i - 1)
            };
            dtd.push_str(&format!(
                "<!ENTITY lol{i} \"{}\">",
                format!("&{prev};").repeat(10)
            ));
        }
        format!(
            "<?xml version=\"1.0\"?><!DOCTYPE lolz [{dtd}]><message><body>&lol9;</body></message>"
        )
    };
    let attributes = {
        let mut s = String::from("<message");
        for i in 0..100_000 {
            s.push_str(&format!(" a{i}=\"x\""));
        }
        s.push_str("/>");
        s
    };
    let big = format!("<message><body>{}</body></message>", "A".repeat(4 << 20));
    let mut typed = input(
        "wrong-typed claws headers",
        "<message><body>typed headers</body></message>",
        Fate::Parsed,
    );
    typed.headers = vec![
        ("x-claws-deliveries".into(), Header::Str("many".into())),
        ("x-claws-routing-key".into(), Header::Int(42)),
        ("x-claws-exchange".into(), Header::Bytes(vec![0xff, 0xfe])),
        ("x-claws-user-id".into(), Header::Int(7)),
        ("x-delivery-count".into(), Header::Str("lots".into())),
    ];
    vec![
        input("empty", "", Fate::Refused("")),
        input(
            "invalid UTF-8",
            b"<message><body>\xff\xfe\xc3</body></message>".to_vec(),
            Fate::Refused(""),
        ),
        input("not XML", "{\"json\": true}", Fate::Refused("")),
        input("unclosed", "<message><body>unclosed", Fate::Refused("")),
        input("10,000-deep XML", deep, Fate::Refused("deep")),
        input("billion laughs", laughs, Fate::Refused("DOCTYPE")),
        input(
            "external entity",
            "<!DOCTYPE m [<!ENTITY xxe SYSTEM \"file:///etc/passwd\">]>\
             <message><body>&xxe;</body></message>",
            Fate::Refused("DOCTYPE"),
        ),
        input(
            "processing instructions",
            "<?xml-stylesheet href=\"http://evil/x.xsl\"?><message><?evil data?><body>pi</body></message>",
            Fate::Parsed,
        ),
        input("100,000 attributes", attributes, Fate::Refused("attributes")),
        input("a 4 MiB stanza", big, Fate::Parsed),
        typed,
    ]
}

/// Puts bytes straight onto the broker, as a hostile peer would: to `xmpp_direct` with the
/// routing key `to` (or the broker's equivalent).
#[async_trait]
pub trait RawPublisher: Send + Sync {
    /// Whether it can set headers (inputs with headers are skipped otherwise).
    fn headers(&self) -> bool {
        true
    }

    /// Publishes `body` with `headers` to the instance `to`, waiting until the broker took it.
    async fn publish(
        &self,
        to: &str,
        body: &[u8],
        headers: &[(String, Header)],
    ) -> Result<(), String>;
}

/// The raw publisher for the in-memory broker: a claw of its own that sends the bytes as they
/// are (the mem broker has no headers).
#[derive(Debug)]
pub struct MemRaw {
    broker: MemBroker,
    sender: tokio::sync::OnceCell<MemClaw>,
}

impl MemRaw {
    /// Publishes on `broker`.
    pub fn new(broker: &MemBroker) -> Self {
        Self {
            broker: broker.clone(),
            sender: tokio::sync::OnceCell::new(),
        }
    }
}

#[async_trait]
impl RawPublisher for MemRaw {
    fn headers(&self) -> bool {
        false
    }

    async fn publish(
        &self,
        to: &str,
        body: &[u8],
        _headers: &[(String, Header)],
    ) -> Result<(), String> {
        let sender = self
            .sender
            .get_or_try_init(|| async {
                let jid = format!("hostile-raw-{}@hostile.test/raw", unique_suffix());
                let claw = self
                    .broker
                    .claw_builder(&jid)
                    .and_then(|b| b.build())
                    .map_err(|e| e.to_string())?;
                let (events, _rx) = Events::channel(1);
                claw.start(events).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(claw)
            })
            .await?;
        let to = claws_core::jid::parse(to).map_err(|e| e.to_string())?;
        sender
            .send(&to, None, Packet::from(body.to_vec()))
            .await
            .map_err(|e| e.to_string())
    }
}

/// What became of one input.
#[derive(Debug, Clone)]
pub struct Row {
    /// The input's name.
    pub input: &'static str,
    /// Its size in bytes.
    pub bytes: usize,
    /// What was seen, in words.
    pub seen: String,
    /// Why it does not meet its fate, if it does not.
    pub failure: Option<String>,
}

/// The suite's outcome for one claw.
#[derive(Debug, Clone)]
pub struct Report {
    /// The factory's name.
    pub claw: String,
    /// One row per input.
    pub rows: Vec<Row>,
    /// Failures outside one input (the instance did not start, or it disconnected).
    pub failures: Vec<String>,
}

impl Report {
    /// Whether every input met its fate and the instance held.
    pub fn passed(&self) -> bool {
        self.failures.is_empty() && self.rows.iter().all(|r| r.failure.is_none())
    }

    /// Panics with the report unless it [`passed`](Self::passed).
    pub fn assert_passed(&self) {
        assert!(self.passed(), "hostile-input suite failed:\n{self}");
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "hostile inputs against {}:", self.claw)?;
        for r in &self.rows {
            let mark = if r.failure.is_none() { "ok  " } else { "FAIL" };
            writeln!(f, "  {mark} {:<26} {:>9} B  {}", r.input, r.bytes, r.seen)?;
            if let Some(why) = &r.failure {
                writeln!(f, "       {why}")?;
            }
        }
        for why in &self.failures {
            writeln!(f, "  FAIL {why}")?;
        }
        Ok(())
    }
}

/// A random-enough suffix, unique per call and run.
fn unique_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

/// How long one input and its canary may take.
const WAIT: Duration = Duration::from_secs(30);

/// Runs every input against an instance `factory` makes, publishing with `raw`.
pub async fn run(factory: &dyn ClawFactory, raw: &dyn RawPublisher) -> Report {
    let mut report = Report {
        claw: factory.name(),
        rows: Vec::new(),
        failures: Vec::new(),
    };
    let jid = format!("hostile-{}@hostile.test/r", unique_suffix());
    let claw = match factory.make(&jid, &Options::default()).await {
        Ok(c) => c,
        Err(e) => {
            report.failures.push(format!("making the instance: {e}"));
            return report;
        }
    };
    let (events, mut rx) = Events::channel(64);
    if let Err(e) = claw.start(events).await {
        report.failures.push(format!("starting the instance: {e}"));
        return report;
    }
    match tokio::time::timeout(WAIT, rx.recv()).await {
        Ok(Some(Event::Connected { .. })) => {}
        other => report
            .failures
            .push(format!("expected Connected first, got {other:?}")),
    }
    for input in inputs() {
        if !input.headers.is_empty() && !raw.headers() {
            continue;
        }
        let row = one(&jid, &input, raw, &mut rx).await;
        let disconnected = row
            .failure
            .as_deref()
            .is_some_and(|f| f.starts_with("disconnected"));
        report.rows.push(row);
        if disconnected {
            break;
        }
    }
    if let Err(e) = claw.close().await {
        report.failures.push(format!("closing the instance: {e}"));
    }
    factory.cleanup(&[jid]).await;
    report
}

async fn one(
    jid: &str,
    input: &Input,
    raw: &dyn RawPublisher,
    rx: &mut tokio::sync::mpsc::Receiver<Event>,
) -> Row {
    let mut row = Row {
        input: input.name,
        bytes: input.body.len(),
        seen: String::new(),
        failure: None,
    };
    let token = unique_suffix();
    let canary = format!("<message><body>canary {token}</body></message>");
    let started = Instant::now();
    if let Err(e) = raw.publish(jid, &input.body, &input.headers).await {
        row.failure = Some(format!("publishing it: {e}"));
        return row;
    }
    if let Err(e) = raw.publish(jid, canary.as_bytes(), &[]).await {
        row.failure = Some(format!("publishing the canary: {e}"));
        return row;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut times = 0;
    let mut seen = String::from("never delivered");
    loop {
        let event = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(e)) => e,
            Ok(None) => {
                row.failure = Some("disconnected: the instance's events ended".into());
                return row;
            }
            Err(_) => {
                row.failure = Some(format!("the canary did not arrive within {WAIT:?}"));
                return row;
            }
        };
        let d = match event {
            Event::Received(d) => d,
            Event::Disconnected { reason, .. } => {
                row.failure = Some(format!("disconnected: {reason}"));
                return row;
            }
            _ => continue,
        };
        if d.packet.as_bytes() == canary.as_bytes() {
            let _ = d.acker.ack().await;
            break;
        }
        if d.packet.as_bytes() != input.body.as_slice() {
            let _ = d.acker.ack().await; // other traffic (a broadcast of another test)
            continue;
        }
        times += 1;
        let parsed = d.packet.parse();
        seen = match &parsed {
            Ok(_) => "delivered unchanged, parsed, acked".to_owned(),
            Err(e) => format!("delivered unchanged, refused ({e}), dropped (acked)"),
        };
        let fate_ok = match (&input.fate, &parsed) {
            (Fate::Parsed, Ok(_)) => true,
            (Fate::Refused(what), Err(e)) => e.to_string().contains(what),
            _ => false,
        };
        if !fate_ok {
            row.failure = Some(format!("expected {:?}, saw: {seen}", input.fate));
        }
        if d.attempt != 1 || d.via.jid != jid {
            row.failure = Some(format!(
                "delivered as attempt {} under `{}`: its headers were believed",
                d.attempt, d.via.jid
            ));
        }
        let _ = d.acker.ack().await;
    }
    row.seen = format!("{seen}; canary after {:.0?}", started.elapsed());
    if times != 1 && row.failure.is_none() {
        row.failure = Some(format!("delivered {times} times, not once"));
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each input's fate, as far as the stanza parser decides it (no broker).
    #[test]
    fn the_fates_are_the_parsers() {
        for input in inputs() {
            let parsed = claws_core::stanza::Element::parse(&input.body);
            match (&input.fate, &parsed) {
                (Fate::Parsed, Ok(_)) => {}
                (Fate::Refused(what), Err(e)) if e.to_string().contains(what) => {}
                _ => panic!("{}: expected {:?}, got {parsed:?}", input.name, input.fate),
            }
        }
    }

    #[tokio::test]
    async fn mem_holds() {
        let factory = crate::mem::MemFactory::new();
        let raw = MemRaw::new(factory.broker());
        let report = run(&factory, &raw).await;
        println!("{report}");
        report.assert_passed();
    }
}
