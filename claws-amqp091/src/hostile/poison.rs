//! Messages the client library cannot decode: found and dead-lettered before consuming again.
//!
//! lapin decodes a delivery's properties (its content-header frame) on its I/O thread; a
//! property it cannot decode (a `correlation_id`, `reply_to` or header key that is not UTF-8,
//! which RabbitMQ passes through as any publisher sent it) is a parse error of the whole
//! connection. The delivery never reaches claws' consumer, so its settle logic (and
//! `max_deliveries`) never sees it; the broker requeues it with the connection and delivers it
//! first again to the next one: the queue would be blocked for good.
//!
//! So a connection that died of a parse error marks the claw ([`Suspect`]), and before the
//! next connection consumes, [`sweep`] looks at the head of each consumed queue with a small
//! AMQP 0-9-1 client of its own that reads properties as raw bytes: it takes up to a prefetch
//! window of messages with `basic.get`, tries lapin's own parser on each one's properties, and
//! rejects (`requeue = false`) those it cannot decode, which the queue's
//! `x-dead-letter-exchange` moves to the dead-letter queue; the others go back to their queue
//! in their order when the sweep's connection closes. A poison message thus leaves its queue
//! after one delivery, on classic and quorum queues alike (quorum queues' `x-delivery-limit`
//! is the broker-side net besides).
//!
//! The sweep speaks plain TCP only: on an `amqps://` endpoint it logs an error that names the
//! fix (quorum queues with a delivery limit) instead.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::protocol::basic::parse_properties;
use lapin::uri::{AMQPScheme, AMQPUri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::Endpoint;
use crate::session::Shared;

/// Set when a connection died of a parse error: the next connection sweeps before consuming.
#[derive(Debug, Default)]
pub(crate) struct Suspect(AtomicBool);

impl Suspect {
    /// Notes `err` if it is a parse error (a delivery the client cannot decode); true if so.
    pub(crate) fn note(&self, err: &lapin::Error) -> bool {
        let parse = is_parse_error(err);
        if parse {
            self.0.store(true, Ordering::Release);
        }
        parse
    }

    /// Whether a sweep is due, clearing the mark.
    pub(crate) fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    /// Whether a sweep is due.
    pub(crate) fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Whether lapin failed to parse a frame the broker sent.
pub(crate) fn is_parse_error(err: &lapin::Error) -> bool {
    matches!(err.kind(), lapin::ErrorKind::ParsingError(_))
}

/// A message [`sweep`] dead-lettered.
#[derive(Debug)]
pub(crate) struct Swept {
    /// Why the client library cannot decode it.
    pub(crate) reason: String,
}

/// Dead-letters the messages among the first `window` of `queue` whose properties lapin cannot
/// decode; leaves the others in their queue, in their order. `Err` says why the sweep could not
/// run (the caller logs it and connects anyway).
pub(crate) async fn sweep(
    uri: &AMQPUri,
    queue: &str,
    window: u32,
    timeout: Duration,
) -> Result<Vec<Swept>, String> {
    if uri.scheme == AMQPScheme::AMQPS {
        return Err(
            "the sweep for undecodable messages speaks plain AMQP only, not amqps; make the \
             queues quorum (`quorum_groups`, `quorum_instances`) so that the broker's \
             x-delivery-limit drops such a message"
                .into(),
        );
    }
    match tokio::time::timeout(timeout, sweep_queue(uri, queue, window)).await {
        Ok(Ok(swept)) => Ok(swept),
        Ok(Err(err)) => Err(format!("sweeping `{queue}`: {err}")),
        Err(_) => Err(format!("sweeping `{queue}`: no answer within {timeout:?}")),
    }
}

async fn sweep_queue(uri: &AMQPUri, queue: &str, window: u32) -> std::io::Result<Vec<Swept>> {
    let mut raw = Raw::open(uri).await?;
    let mut swept = Vec::new();
    for _ in 0..window.max(1) {
        let mut args = Vec::new();
        args.extend_from_slice(&0u16.to_be_bytes());
        short_str(&mut args, queue);
        args.push(0); // no-ack = false: settled here, or back to the queue at close
        raw.method(1, (60, 70), &args).await?;
        let (id, args) = raw.expect_any(1).await?;
        match id {
            (60, 72) => break, // get-empty
            (60, 71) if args.len() >= 8 => {}
            other => return Err(unexpected(other)),
        }
        let tag = u64::from_be_bytes(args[..8].try_into().expect("8 bytes"));
        let header = raw.frame_of(2, 1).await?;
        if header.len() < 12 {
            return Err(bad("a content header shorter than 12 bytes"));
        }
        let body_size = u64::from_be_bytes(header[4..12].try_into().expect("8 bytes"));
        let mut read = 0u64;
        while read < body_size {
            read += raw.frame_of(3, 1).await?.len() as u64;
        }
        if let Err(reason) = decodes(header[12..].to_vec()) {
            let mut args = tag.to_be_bytes().to_vec();
            args.push(0); // requeue = false: to the queue's dead-letter exchange
            raw.method(1, (60, 90), &args).await?;
            swept.push(Swept { reason });
        }
    }
    raw.close().await;
    Ok(swept)
}

/// Whether lapin's parser decodes these properties; why not if it does not. On a thread with
/// a stack for the parser's recursion (headers can nest thousands deep, see `hostile`).
pub(crate) fn decodes(properties: Vec<u8>) -> Result<(), String> {
    let parse = move || match parse_properties(&properties[..]) {
        Ok(_) => Ok(()),
        Err(err) => Err(format!("lapin cannot decode its properties: {err}")),
    };
    std::thread::Builder::new()
        .name("claws-poison-parse".into())
        .stack_size(super::PARSER_STACK)
        .spawn(parse)
        .map_err(|e| format!("cannot start the parsing thread: {e}"))
        .and_then(|t| {
            t.join()
                .unwrap_or_else(|_| Err("the parser panicked on its properties".into()))
        })
}

fn bad(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned())
}

fn unexpected((class, method): (u16, u16)) -> std::io::Error {
    bad(&format!("unexpected method {class}.{method}"))
}

fn short_str(out: &mut Vec<u8>, s: &str) {
    let s = &s.as_bytes()[..s.len().min(255)];
    out.push(s.len() as u8);
    out.extend_from_slice(s);
}

fn long_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u32::try_from(s.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(s);
}

/// The broker's version (its `version` server property), asked over a short connection of its
/// own (lapin keeps the server properties to itself). `None` over TLS (the raw client speaks
/// plain TCP) or when the broker does not say.
pub(crate) async fn broker_version(uri: &AMQPUri, timeout: Duration) -> Option<String> {
    if uri.scheme == AMQPScheme::AMQPS {
        return None;
    }
    let asked = async {
        let raw = Raw::open(uri).await.ok()?;
        let version = raw.version.clone();
        raw.close().await;
        version
    };
    tokio::time::timeout(timeout, asked).await.ok().flatten()
}

/// Just enough AMQP 0-9-1 for the sweep: open, one channel, `basic.get`, `basic.reject`.
struct Raw {
    io: TcpStream,
    frame_max: u32,
    /// The broker's `version` server property, from its `connection.start`.
    version: Option<String>,
}

impl Raw {
    async fn open(uri: &AMQPUri) -> std::io::Result<Self> {
        let io = TcpStream::connect((uri.authority.host.as_str(), uri.authority.port)).await?;
        let mut raw = Raw {
            io,
            frame_max: 131_072,
            version: None,
        };
        raw.io.write_all(b"AMQP\x00\x00\x09\x01").await?;
        let start = raw.expect(0, (10, 10)).await?;
        raw.version = start
            .get(2..)
            .and_then(|table| lapin::types::parsing::parse_field_table(table).ok())
            .and_then(|(_, properties)| match properties.inner().get("version") {
                Some(lapin::types::AMQPValue::LongString(v)) => {
                    Some(String::from_utf8_lossy(v.as_bytes()).into_owned())
                }
                _ => None,
            });
        let mut args = Vec::new();
        let mut props = Vec::new();
        short_str(&mut props, "connection_name");
        props.push(b'S');
        long_str(&mut props, b"claws-amqp091 poison sweep");
        long_str(&mut args, &props);
        short_str(&mut args, "PLAIN");
        let user = &uri.authority.userinfo;
        long_str(
            &mut args,
            format!("\0{}\0{}", user.username, user.password).as_bytes(),
        );
        short_str(&mut args, "en_US");
        raw.method(0, (10, 11), &args).await?; // start-ok
        let tune = raw.expect(0, (10, 30)).await?;
        if tune.len() < 8 {
            return Err(bad("a short connection.tune"));
        }
        let frame_max = u32::from_be_bytes(tune[2..6].try_into().expect("4 bytes"));
        if frame_max != 0 {
            raw.frame_max = raw.frame_max.min(frame_max);
        }
        let mut args = 1u16.to_be_bytes().to_vec();
        args.extend_from_slice(&raw.frame_max.to_be_bytes());
        args.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats: the sweep is short
        raw.method(0, (10, 31), &args).await?; // tune-ok
        let mut args = Vec::new();
        short_str(&mut args, &uri.vhost);
        short_str(&mut args, "");
        args.push(0);
        raw.method(0, (10, 40), &args).await?; // open
        raw.expect(0, (10, 41)).await?;
        raw.method(1, (20, 10), &[0]).await?; // channel.open
        raw.expect(1, (20, 11)).await?;
        Ok(raw)
    }

    async fn method(
        &mut self,
        channel: u16,
        (class, method): (u16, u16),
        args: &[u8],
    ) -> std::io::Result<()> {
        let mut payload = Vec::with_capacity(4 + args.len());
        payload.extend_from_slice(&class.to_be_bytes());
        payload.extend_from_slice(&method.to_be_bytes());
        payload.extend_from_slice(args);
        let mut frame = Vec::with_capacity(8 + payload.len());
        frame.push(1);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len()).unwrap_or(0).to_be_bytes());
        frame.extend_from_slice(&payload);
        frame.push(0xCE);
        self.io.write_all(&frame).await
    }

    /// The next frame other than a heartbeat: its type, channel and payload.
    async fn frame(&mut self) -> std::io::Result<(u8, u16, Vec<u8>)> {
        loop {
            let mut head = [0u8; 7];
            self.io.read_exact(&mut head).await?;
            let size = u32::from_be_bytes(head[3..7].try_into().expect("4 bytes"));
            if size > self.frame_max.max(4096) {
                return Err(bad("a frame larger than negotiated"));
            }
            let mut payload = vec![0u8; size as usize + 1];
            self.io.read_exact(&mut payload).await?;
            if payload.pop() != Some(0xCE) {
                return Err(bad("a frame without its end marker"));
            }
            if head[0] != 8 {
                return Ok((head[0], u16::from_be_bytes([head[1], head[2]]), payload));
            }
        }
    }

    /// The payload of the next frame, which must be of `kind` on `channel`.
    async fn frame_of(&mut self, kind: u8, channel: u16) -> std::io::Result<Vec<u8>> {
        let (k, ch, payload) = self.frame().await?;
        if k == 1 {
            return Err(closed(&payload));
        }
        if k != kind || ch != channel {
            return Err(bad(&format!(
                "frame type {k} on channel {ch}; expected {kind}"
            )));
        }
        Ok(payload)
    }

    /// The next method on `channel`: its class and method ids, and its arguments. A close
    /// from the broker is an error with its reply text.
    async fn expect_any(&mut self, channel: u16) -> std::io::Result<((u16, u16), Vec<u8>)> {
        let (kind, ch, payload) = self.frame().await?;
        if kind != 1 || payload.len() < 4 {
            return Err(bad(&format!("frame type {kind}; expected a method")));
        }
        let id = (
            u16::from_be_bytes([payload[0], payload[1]]),
            u16::from_be_bytes([payload[2], payload[3]]),
        );
        if matches!(id, (10, 50) | (20, 40)) {
            return Err(closed(&payload));
        }
        if ch != channel {
            return Err(bad(&format!("a method on channel {ch}")));
        }
        Ok((id, payload[4..].to_vec()))
    }

    async fn expect(&mut self, channel: u16, id: (u16, u16)) -> std::io::Result<Vec<u8>> {
        match self.expect_any(channel).await? {
            (got, args) if got == id => Ok(args),
            (got, _) => Err(unexpected(got)),
        }
    }

    /// Closes the connection; the broker returns what was taken and not rejected to its queue.
    async fn close(mut self) {
        let mut args = 200u16.to_be_bytes().to_vec();
        short_str(&mut args, "swept");
        args.extend_from_slice(&[0, 0, 0, 0]);
        if self.method(0, (10, 50), &args).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok((kind, _, p)) = self.frame().await {
                    if kind == 1 && p.get(..4) == Some(&[0, 10, 0, 51]) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}

/// The broker closed the connection or channel: its reply code and text.
fn closed(payload: &[u8]) -> std::io::Error {
    let code = payload
        .get(4..6)
        .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
    let text = payload
        .get(6)
        .and_then(|&n| payload.get(7..7 + n as usize))
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    bad(&format!(
        "the broker closed the sweep's connection: {code} {text}"
    ))
}

/// Appended to the reason a connection died of a parse error.
pub(crate) const DIED_OF_ONE: &str = " (a delivery the client library cannot decode: a \
    correlation_id, reply_to or header key that is not UTF-8; it is dead-lettered before the \
    claw consumes again)";

/// After `establish` failed with `err`: notes whether a parse error killed the connection.
pub(crate) async fn note_setup_failure(
    shared: &Shared,
    err: &claws_core::Error,
    conn_events: &mut (impl futures_util::Stream<Item = lapin::Event> + Unpin),
) {
    use futures_util::StreamExt;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        if let Some(e) = e.downcast_ref::<lapin::Error>() {
            shared.poison.note(e);
        }
        source = e.source();
    }
    if shared.poison.is_set() {
        return;
    }
    // The parse error reaches the connection's events a moment after the failure it caused
    // (the setup may fail first with "invalid connection state"; seen on RabbitMQ 4.3, which
    // delivers a queued message right at `basic.consume`): wait a little for it.
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        while let Some(event) = conn_events.next().await {
            if let lapin::Event::Error(e) = event {
                if shared.poison.note(&e) {
                    break;
                }
            }
        }
    })
    .await;
}

/// Sweeps every queue `shared` consumes through `endpoint` (see the module docs), logging
/// what it dead-lettered, and why it could not sweep.
pub(crate) async fn sweep_consumed(shared: &Shared, endpoint: &Endpoint) {
    let window = u32::from(shared.settings.prefetch).saturating_add(1);
    let bound = shared.settings.timing.connect_timeout * 3;
    for (queue, kind) in shared.topology().consumed() {
        match sweep(&endpoint.uri, &queue.name, window, bound).await {
            Ok(swept) => {
                for s in swept {
                    tracing::error!(claw = &*shared.name, queue = %queue.name, reason = %s.reason,
                        "dead-lettered a message the client library cannot decode (it killed \
                         the connection each time it was delivered); fix its publisher");
                    claws_core::metrics::dead_lettered(&shared.name, kind);
                }
            }
            Err(why) => {
                tracing::error!(claw = &*shared.name, queue = %queue.name, endpoint = %endpoint,
                    "a message the client library cannot decode may block this queue: {why}");
            }
        }
    }
}
