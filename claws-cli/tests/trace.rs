//! One stanza's path across two processes is one trace (issue 19): this process sends inside a
//! trace, `claws echo` (another process) handles it and replies, and the reply comes back in the
//! same trace. Spans are read back with an in-memory collector (a `tracing` layer that keeps
//! every span's fields); the echo process prints the `traceparent` it received.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use claws::trace::{self, TraceContext};
use claws::{handler_fn, jid, Packet, Router, Via};
use serde_json::Value;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

const CLAWS: &str = env!("CARGO_BIN_EXE_claws");
const WAIT: Duration = Duration::from_secs(30);

/// A span's name and fields.
type Span = (String, HashMap<String, String>);

/// Every span seen: its name and fields (later `record`s included); `changed` ticks at each.
#[derive(Clone)]
struct Collector {
    spans: Arc<Mutex<HashMap<u64, Span>>>,
    changed: Arc<tokio::sync::watch::Sender<u64>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
}

impl<S: tracing::Subscriber> Layer<S> for Collector {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.insert(id.into_u64(), (attrs.metadata().name().to_owned(), fields));
        self.changed.send_modify(|n| *n += 1);
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut Fields(fields));
        }
        self.changed.send_modify(|n| *n += 1);
    }
}

impl Collector {
    fn new() -> Self {
        Collector {
            spans: Default::default(),
            changed: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The first span that `pick` accepts, waiting for it as spans come and change.
    async fn wait_for(
        &self,
        what: &str,
        pick: impl Fn(&str, &HashMap<String, String>) -> bool,
    ) -> HashMap<String, String> {
        let mut changed = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            changed.borrow_and_update();
            let found = {
                let spans = self.spans.lock().unwrap();
                spans
                    .values()
                    .find(|(n, f)| pick(n, f))
                    .map(|(_, f)| f.clone())
            };
            if let Some(f) = found {
                return f;
            }
            tokio::time::timeout_at(deadline, changed.changed())
                .await
                .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
                .unwrap();
        }
    }

    /// The fields of every span named `name`.
    fn spans(&self, name: &str) -> Vec<HashMap<String, String>> {
        let spans = self.spans.lock().unwrap();
        spans
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stanza_echoed_by_another_process_comes_back_in_the_same_trace() {
    let collector = Collector::new();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(collector.clone()))
        .expect("the only subscriber of this test binary");
    let url = claws_test::rabbitmq::url();
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let id = format!("{}-{n:x}", std::process::id());
    let echo_jid = format!("trace-echo-{id}@test.claws/e");
    let me = format!("trace-client-{id}@test.claws/c");

    // The other process: `claws echo`, printing what it receives as JSON.
    let mut echo = Command::new(CLAWS)
        .args([
            "--transport",
            "amqp091",
            "--url",
            &url,
            "--jid",
            &echo_jid,
            "--format",
            "json",
            "echo",
            "--count",
            "1",
        ])
        .env_remove("CLAWS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn claws echo");
    let (lines_tx, lines) = std::sync::mpsc::channel::<Value>();
    let out = echo.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line) {
                if lines_tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    assert_eq!(
        lines.recv_timeout(WAIT).expect("echo connects")["event"],
        "connected"
    );

    // This process: a router whose handler hands over what arrives.
    let claw = claws::amqp091::AmqpClaw::builder(&url, me.as_str())
        .build()
        .unwrap();
    let router = Router::builder().claw(claw).build().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Packet, Via)>();
    router
        .start(handler_fn(move |packet, via, _ctx| {
            let tx = tx.clone();
            async move {
                let _ = tx.send((packet, via));
                Ok(())
            }
        }))
        .await
        .unwrap();

    let root = TraceContext::new_root();
    let stanza =
        format!("<message from='{me}' to='{echo_jid}' id='t1'><body>trace {id}</body></message>");
    trace::scope(
        root,
        router.send(
            &jid::parse(&echo_jid).unwrap(),
            Some("t1"),
            Packet::from(stanza),
        ),
    )
    .await
    .unwrap();

    // The echo process received our send's context: our trace, parented by our send span.
    let seen = lines.recv_timeout(WAIT).expect("echo printed what it got");
    let theirs = TraceContext::parse(seen["via"]["traceparent"].as_str().expect("a traceparent"))
        .expect("a valid traceparent");
    assert_eq!(theirs.trace_id(), root.trace_id(), "{seen}");
    let sends = collector.spans("claws.send");
    let our_send = sends
        .iter()
        .find(|s| s.get("to").map(String::as_str) == Some(echo_jid.as_str()))
        .unwrap_or_else(|| panic!("no claws.send span to {echo_jid}: {sends:?}"));
    assert_eq!(our_send["trace_id"], root.trace_id());
    assert_eq!(our_send["parent_id"], root.span_id());
    assert_eq!(
        our_send["span_id"],
        theirs.span_id(),
        "the echo's parent is our send"
    );

    // The reply comes back in the same trace, parented by the echo's send.
    let (reply, via) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the echo's reply")
        .unwrap();
    assert!(reply.as_str().unwrap().contains(&format!("trace {id}")));
    let back = via.trace.expect("the reply carries a traceparent");
    assert_eq!(back.trace_id(), root.trace_id());
    assert_ne!(back.span_id(), theirs.span_id(), "a new hop");
    // Our delivery span continues it, and records the outcome once settled.
    let delivery = collector
        .wait_for("settled delivery span", |name, s| {
            name == "claws.delivery"
                && s.get("parent_id") == Some(&back.span_id())
                && s.contains_key("outcome")
        })
        .await;
    assert_eq!(delivery["trace_id"], root.trace_id());
    assert_eq!(delivery["outcome"], "acked");
    assert_eq!(delivery["queue"], "direct");

    let status = echo.wait().unwrap();
    assert!(status.success(), "echo exits after --count 1");
    router.close().await.unwrap();
    // Clean up both instances' queues.
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    for j in [&echo_jid, &me] {
        let bare = j.split('/').next().unwrap();
        for q in [
            format!("xmpp_direct:{j}"),
            format!("xmpp_direct:{bare}"),
            format!("xmpp_fanout:{j}"),
            format!("xmpp_fanout:{bare}"),
        ] {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
    }
    let _ = conn.close(200, "ok".into()).await;
}
