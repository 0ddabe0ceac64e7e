//! One connection to the server: connecting and authenticating ([`establish`]), then serving
//! the stream ([`serve`]): a reader handing stanzas to the router and, beside it, a writer writing
//! sends (in batches) and whitespace keepalives.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use claws_core::runtime::CancellationToken;
use claws_core::{Acker, Delivery, Error, Events, Jid, Packet, QueueKind, Via};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, timeout, Instant};

use crate::config::Settings;
use crate::handshake;
use crate::state::{Shared, State};
use crate::stream::{Frame, FrameError, Framer, Stanza};

/// Why a connection attempt or an established stream failed. Never holds the secret.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// The TCP connection failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Connecting, or waiting for the server, took longer than `connect_timeout`.
    #[error("timed out after {0:?} {1}")]
    Timeout(Duration, &'static str),
    /// The server's bytes are not a readable stream.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server refused the handshake (a wrong secret, or a domain it does not serve).
    #[error(
        "the server refused the handshake for `{domain}` ({condition}{}); check that the \
         component secret matches the server's for this domain, and that the server serves \
         `{domain}` as a component",
        suffix(.text)
    )]
    HandshakeRefused {
        domain: String,
        condition: String,
        text: Option<String>,
    },
    /// The server ended the stream with a stream error.
    #[error(
        "the server ended the stream with a stream error ({condition}{})",
        suffix(.text)
    )]
    StreamError {
        condition: String,
        text: Option<String>,
    },
    /// The server closed the connection (when: in the message).
    #[error("the server closed the connection {0}")]
    ClosedByServer(&'static str),
    /// The server broke the XEP-0114 protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
}

/// `: text` after a stream error's condition, when the server gave a text.
fn suffix(text: &Option<String>) -> String {
    text.as_ref().map(|t| format!(": {t}")).unwrap_or_default()
}

/// A stanza to write, and who waits for it being written.
#[derive(Debug)]
pub(crate) struct Command {
    pub(crate) bytes: Bytes,
    pub(crate) done: oneshot::Sender<Result<(), String>>,
}

/// An established (Ready) stream.
#[derive(Debug)]
pub(crate) struct Stream {
    reader: OwnedReadHalf,
    writer: OwnedWriteHalf,
    framer: Framer,
}

const READ_CHUNK: usize = 16 * 1024;

async fn read_frame(reader: &mut OwnedReadHalf, framer: &mut Framer) -> Result<Frame, Failure> {
    let mut chunk = [0u8; READ_CHUNK];
    loop {
        if let Some(frame) = framer.next_frame()? {
            return Ok(frame);
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Err(Failure::ClosedByServer("(end of TCP stream)"));
        }
        framer.feed(&chunk[..n]);
    }
}

/// Connects, opens the stream and authenticates, moving through Connected, StreamInit and
/// Authenticate, all within the connect timeout.
pub(crate) async fn establish(shared: &Shared) -> Result<Stream, Failure> {
    let settings = &shared.settings;
    let bound = settings.timing.connect_timeout;
    match timeout(bound, establish_unbounded(shared)).await {
        Ok(result) => result,
        Err(_) => Err(Failure::Timeout(
            bound,
            match *shared.state.borrow() {
                State::StreamInit => "waiting for the server's stream header",
                State::Authenticate => "waiting for the server's answer to the handshake",
                _ => "connecting",
            },
        )),
    }
}

async fn establish_unbounded(shared: &Shared) -> Result<Stream, Failure> {
    let settings = &shared.settings;
    let tcp = TcpStream::connect(&settings.server).await?;
    tcp.set_nodelay(true)?;
    shared.set(State::Connected);
    let (mut reader, mut writer) = tcp.into_split();
    let mut framer = Framer::new(settings.max_stanza_bytes);

    writer
        .write_all(handshake::stream_header(&settings.domain).as_bytes())
        .await?;
    shared.set(State::StreamInit);
    let id = match read_frame(&mut reader, &mut framer).await {
        Ok(Frame::Header(head)) => head.id.ok_or_else(|| {
            Failure::Protocol("the server's stream header has no `id` to hash".into())
        })?,
        Ok(Frame::StreamError { condition, text }) => {
            return Err(Failure::StreamError { condition, text })
        }
        Ok(other) => {
            return Err(Failure::Protocol(format!(
                "expected a stream header, got {other:?}"
            )))
        }
        Err(Failure::ClosedByServer(_)) => {
            return Err(Failure::ClosedByServer("before sending its stream header"))
        }
        Err(e) => return Err(e),
    };

    writer
        .write_all(handshake::handshake(&id, &settings.secret).as_bytes())
        .await?;
    shared.set(State::Authenticate);
    let refused = |condition: String, text| Failure::HandshakeRefused {
        domain: settings.domain.clone(),
        condition,
        text,
    };
    match read_frame(&mut reader, &mut framer).await {
        Ok(Frame::Stanza(s)) if s.head.name == "handshake" => {}
        Ok(Frame::StreamError { condition, text }) => return Err(refused(condition, text)),
        Ok(Frame::End) | Err(Failure::ClosedByServer(_)) => {
            return Err(refused("the server closed the stream".into(), None))
        }
        Ok(other) => {
            return Err(Failure::Protocol(format!(
                "expected <handshake/>, got {other:?}"
            )))
        }
        Err(e) => return Err(e),
    }
    Ok(Stream {
        reader,
        writer,
        framer,
    })
}

/// How serving a stream ended.
pub(crate) enum Outcome {
    /// The claw was closed: the stream was ended cleanly.
    Stopped,
    /// The stream was lost; reconnect.
    Lost(Failure),
}

/// How long a closing claw keeps reading after it sent `</stream:stream>`.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// Serves an established stream: reads stanzas to the router while writing sends and
/// keepalives, until the stream is lost or `stop` is cancelled (then the stream is ended).
pub(crate) async fn serve(
    shared: &Shared,
    stream: &mut Stream,
    cmds: &mut mpsc::Receiver<Command>,
    events: &Events,
    stop: &CancellationToken,
) -> Outcome {
    let Stream {
        reader,
        writer,
        framer,
    } = stream;
    let read = read_loop(shared, reader, framer, events);
    let write = write_loop(shared, writer, cmds, stop);
    tokio::pin!(read, write);
    tokio::select! {
        failure = &mut read => Outcome::Lost(failure),
        written = &mut write => match written {
            Ok(()) => {
                // We sent `</stream:stream>`: take what the server still sends until it closes.
                let _ = timeout(CLOSE_DRAIN, &mut read).await;
                Outcome::Stopped
            }
            Err(failure) => Outcome::Lost(failure),
        },
    }
}

async fn read_loop(
    shared: &Shared,
    reader: &mut OwnedReadHalf,
    framer: &mut Framer,
    events: &Events,
) -> Failure {
    loop {
        match read_frame(reader, framer).await {
            Ok(Frame::Stanza(stanza)) => deliver(shared, stanza, events).await,
            Ok(Frame::StreamError { condition, text }) => {
                return Failure::StreamError { condition, text }
            }
            Ok(Frame::End) => return Failure::ClosedByServer("(it sent </stream:stream>)"),
            Ok(Frame::Header(_)) => {
                return Failure::Protocol("the server sent a second stream header".into())
            }
            Err(failure) => return failure,
        }
    }
}

async fn deliver(shared: &Shared, stanza: Stanza, events: &Events) {
    let Stanza { head, bytes } = stanza;
    let packet = if shared.settings.trimmed {
        trimmed(&bytes, &shared.settings).unwrap_or_else(|| Packet::new(bytes))
    } else {
        Packet::new(bytes)
    };
    let from: Option<Jid> = head.from.as_deref().and_then(|f| match claws_core::jid::parse(f) {
        Ok(jid) => Some(jid),
        Err(err) => {
            tracing::warn!(claw = &*shared.name, %err, "stanza with an invalid `from`; no route learned");
            None
        }
    });
    let via = Via::new(
        shared.name.clone(),
        QueueKind::Other("component".into()),
        head.from.clone().unwrap_or_default(),
    )
    .with_id(head.id.clone())
    .with_from(from);
    let delivery = Delivery {
        packet,
        via,
        attempt: 1,
        acker: Box::new(ComponentAcker {
            claw: shared.name.clone(),
            from: head.from,
            name: head.name,
        }),
    };
    if events.received(delivery).await.is_err() {
        tracing::debug!(claw = &*shared.name, "router gone; stanza dropped");
    }
}

/// The stanza with whitespace-only text removed, or `None` when it does not parse alone (it then
/// goes out as it came).
fn trimmed(bytes: &[u8], settings: &Settings) -> Option<Packet> {
    let limits = claws_core::stanza::Limits {
        max_bytes: settings.max_stanza_bytes.max(1),
        ..Default::default()
    };
    let mut element = claws_core::stanza::Element::parse_with(bytes, &limits).ok()?;
    element.trim_whitespace();
    Some(Packet::from(&element))
}

/// Most bytes written in one batch.
const BATCH_BYTES: usize = 256 * 1024;

/// Writes queued stanzas (in batches) and whitespace keepalives; once `stop` is cancelled, writes
/// what is queued and `</stream:stream>`, then returns `Ok`.
async fn write_loop(
    shared: &Shared,
    writer: &mut OwnedWriteHalf,
    cmds: &mut mpsc::Receiver<Command>,
    stop: &CancellationToken,
) -> Result<(), Failure> {
    let ping = shared.settings.ping;
    let mut last_write = Instant::now();
    let mut batch: Vec<Command> = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let idle = async {
            match ping {
                Some(every) => sleep_until(last_write + every).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            biased;
            _ = stop.cancelled() => {
                while let Ok(cmd) = cmds.try_recv() {
                    batch.push(cmd);
                }
                write_batch(writer, &mut batch, &mut buf).await?;
                writer.write_all(handshake::STREAM_END.as_bytes()).await?;
                let _ = writer.shutdown().await;
                return Ok(());
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else {
                    // The claw is gone: nothing will ever be sent again.
                    std::future::pending::<()>().await;
                    unreachable!("pending never completes");
                };
                batch.push(cmd);
                let mut size = batch[0].bytes.len();
                while size < BATCH_BYTES {
                    match cmds.try_recv() {
                        Ok(cmd) => {
                            size += cmd.bytes.len();
                            batch.push(cmd);
                        }
                        Err(_) => break,
                    }
                }
                write_batch(writer, &mut batch, &mut buf).await?;
                last_write = Instant::now();
            }
            _ = idle => {
                tracing::trace!(claw = &*shared.name, "whitespace keepalive");
                writer.write_all(b" ").await?;
                last_write = Instant::now();
            }
        }
    }
}

/// Writes every command whose sender still waits, then tells each how it went.
async fn write_batch(
    writer: &mut OwnedWriteHalf,
    batch: &mut Vec<Command>,
    buf: &mut Vec<u8>,
) -> Result<(), Failure> {
    // A sender that gave up (its send timed out) must not see its stanza go out later.
    batch.retain(|c| !c.done.is_closed());
    if batch.is_empty() {
        return Ok(());
    }
    buf.clear();
    for cmd in batch.iter() {
        buf.extend_from_slice(&cmd.bytes);
    }
    let result = writer.write_all(buf).await;
    let outcome = result.as_ref().map(|_| ()).map_err(|e| e.to_string());
    for cmd in batch.drain(..) {
        let _ = cmd.done.send(outcome.clone());
    }
    result.map_err(Failure::Io)
}

/// Settles a stanza from the server. XEP-0114 has no acknowledgements: the server handed the
/// stanza over when it wrote it, so acking does nothing, and a rejected stanza cannot be delivered
/// again; it is dropped, with a warning in the log.
struct ComponentAcker {
    claw: Arc<str>,
    from: Option<String>,
    name: String,
}

#[async_trait::async_trait]
impl Acker for ComponentAcker {
    async fn ack(self: Box<Self>) -> claws_core::Result<()> {
        Ok(())
    }

    async fn reject(self: Box<Self>, reason: &Error) -> claws_core::Result<()> {
        tracing::warn!(
            claw = &*self.claw,
            stanza = %self.name,
            from = self.from.as_deref().unwrap_or("(none)"),
            %reason,
            "the handler rejected a stanza from the XMPP server; a component stream cannot \
             redeliver it, so it is dropped"
        );
        Ok(())
    }
}
