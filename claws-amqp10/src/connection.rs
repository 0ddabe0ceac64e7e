//! Connecting, and the recovery state machine fe2o3-amqp leaves to its users.
//!
//! One *generation* is a connection, a session on it, the receiving links and the sending links
//! attached so far ([`Live`]). The supervisor task owns the generations:
//!
//! ```text
//!   for the next endpoint (a shuffled walk over the URLs; backoff after each full round):
//!     declare over 0-9-1 (RabbitMQ scheme, same node) -> connect (bounded) -> begin the
//!     sending session -> attach each receiver on a session of its own
//!     -> publish Up, report Connected (queues whose node is down: ConsumerLost, retried)
//!     -> wait: connection closed | a link failed | close()
//!     -> publish Down, report Disconnected -> next endpoint ...
//! ```
//!
//! Sends wait (bounded by `send_timeout`) for a generation that is up; a send whose link fails
//! is retried on the next generation, so nothing the claw was asked to send is lost (it may
//! arrive twice). Deliveries are settled on the link that delivered them; when that link is
//! gone the broker has already put them back in their queue.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::task::{Context, Poll};
use std::time::Duration;

use claws_core::runtime::{redact_url, Alive, Fuse};
use claws_core::{Error, Result};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::{ReceiverAttachError, SenderAttachError, SessionStopReason};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions::{self, AmqpError, ErrorCondition};
use fe2o3_amqp::types::messaging::Target;
use fe2o3_amqp::{Connection, Sender, Session};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

use crate::address::Dialect;

/// Where and how to connect, parsed from the URL once. Its `Display` never shows the password.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) user: Option<String>,
    pub(crate) password: Option<String>,
    pub(crate) vhost: String,
    redacted: String,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl Endpoint {
    /// Parses `amqp://[user[:password]@]host[:port][/vhost]`.
    pub(crate) fn parse(url: &str, claw: &str) -> Result<Self> {
        let bad = |reason: String| {
            Error::Config(format!(
                "claw `{claw}`: bad broker URL `{}`: {reason}; expected \
                 `amqp://user:password@host:5672`",
                redact_url(url)
            ))
        };
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        match parsed.scheme() {
            "amqp" => {}
            "amqps" => {
                return Err(bad(
                    "TLS (`amqps`) is not built into claws-amqp10; use `amqp` or a TLS proxy"
                        .into(),
                ))
            }
            other => return Err(bad(format!("unknown scheme `{other}`"))),
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = parsed.port().unwrap_or(5672);
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let user = Some(parsed.username())
            .filter(|u| !u.is_empty())
            .map(|u| percent_decode(u, &decode));
        let password = parsed.password().map(|p| percent_decode(p, &decode));
        let path = parsed.path().trim_start_matches('/');
        let vhost = if path.is_empty() {
            "/".to_owned()
        } else {
            percent_decode(path, &decode)
        };
        Ok(Self {
            host,
            port,
            user,
            password,
            vhost,
            redacted: redact_url(url),
        })
    }

    /// The URL a 0-9-1 client (lapin) uses for the same broker, credentials and vhost.
    pub(crate) fn amqp091_url(&self) -> String {
        let enc = |s: &str| -> String {
            url::form_urlencoded::byte_serialize(s.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        let creds = match (&self.user, &self.password) {
            (Some(u), Some(p)) => format!("{}:{}@", enc(u), enc(p)),
            (Some(u), None) => format!("{}@", enc(u)),
            _ => String::new(),
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        format!("amqp://{creds}{host}:{}/{}", self.port, enc(&self.vhost))
    }
}

fn percent_decode(s: &str, decode: &dyn Fn(&str) -> String) -> String {
    // form_urlencoded turns `+` into a space; keep a literal `+`.
    decode(&s.replace('+', "%2B"))
}

/// An open connection, its first session, and the broker's version (from its `open` frame).
pub(crate) struct Opened {
    pub(crate) connection: ConnectionHandle<()>,
    pub(crate) session: SessionHandle<()>,
    pub(crate) version: Option<String>,
}

/// Opens a connection and a session, bounded by `timeout`.
pub(crate) async fn open(
    endpoint: &Endpoint,
    container_id: &str,
    idle_timeout: Option<Duration>,
    timeout: Duration,
    claw: &str,
) -> Result<Opened> {
    let fail = |reason: String| Error::Connect {
        claw: claw.to_owned(),
        endpoint: endpoint.to_string(),
        reason,
    };
    let attempt = async {
        let stream = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
            .await
            .map_err(|e| fail(format!("TCP connect failed: {e}")))?;
        let _ = stream.set_nodelay(true);
        let version = Arc::new(StdMutex::new(None));
        let stream = Sniff::new(stream, version.clone());
        let hostname = if endpoint.vhost == "/" {
            endpoint.host.clone()
        } else {
            format!("vhost:{}", endpoint.vhost)
        };
        let mut builder = Connection::builder()
            .container_id(container_id)
            .scheme("amqp")
            .hostname(hostname.as_str())
            .sasl_hostname(endpoint.host.as_str());
        if let Some(idle) = idle_timeout {
            let ms = u32::try_from(idle.as_millis()).unwrap_or(u32::MAX);
            builder = builder.idle_time_out(ms);
        }
        if let Some(user) = &endpoint.user {
            builder = builder.sasl_profile(SaslProfile::Plain {
                username: user.clone(),
                password: endpoint.password.clone().unwrap_or_default(),
            });
        }
        let mut connection = builder.open_with_stream(stream).await.map_err(|e| {
            let text = e.to_string();
            if text.to_lowercase().contains("sasl") || format!("{e:?}").contains("Sasl") {
                fail(format!(
                    "the broker refused the credentials (SASL: {text}); check the user and \
                     password in the URL"
                ))
            } else {
                fail(format!("AMQP open failed: {text}"))
            }
        })?;
        let session = match Session::begin(&mut connection).await {
            Ok(s) => s,
            Err(e) => {
                let _ = connection.close().await;
                return Err(fail(format!("could not begin a session: {e}")));
            }
        };
        // fe2o3 returns from `open` once the broker's `open` frame arrived.
        let version = version.lock().unwrap_or_else(|e| e.into_inner()).take();
        Ok(Opened {
            connection,
            session,
            version,
        })
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "no answer within {timeout:?} (raise `connect_timeout` if the broker is slow)"
        ))),
    }
}

/// The TCP stream, reading the broker's `version` from its `open` frame as it passes (fe2o3
/// keeps the remote `open` to itself). Only the first frames are looked at (64 KiB at most);
/// after that it is a plain pass-through.
#[derive(Debug)]
struct Sniff {
    inner: TcpStream,
    seen: Vec<u8>,
    done: bool,
    version: Arc<StdMutex<Option<String>>>,
}

impl Sniff {
    fn new(inner: TcpStream, version: Arc<StdMutex<Option<String>>>) -> Self {
        Self {
            inner,
            seen: Vec::new(),
            done: false,
            version,
        }
    }

    /// Walks the protocol headers and frames read so far, up to the first AMQP frame (`open`).
    fn scan(&mut self) {
        let mut pos = 0;
        loop {
            let rest = &self.seen[pos..];
            if rest.len() < 8 {
                break;
            }
            if &rest[..4] == b"AMQP" {
                pos += 8; // a protocol header (SASL's, then AMQP's)
                continue;
            }
            let size = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            let doff = usize::from(rest[4]) * 4;
            if size < 8 || doff < 8 || doff > size {
                self.finish(None);
                return;
            }
            if rest.len() < size {
                break;
            }
            if rest[5] == 0 {
                let found = property_string(&rest[doff..size], b"version");
                self.finish(found);
                return;
            }
            pos += size; // a SASL frame
        }
        if self.seen.len() > 64 * 1024 {
            self.finish(None);
        }
    }

    fn finish(&mut self, version: Option<String>) {
        self.done = true;
        self.seen = Vec::new();
        *self.version.lock().unwrap_or_else(|e| e.into_inner()) = version;
    }
}

/// The string value following the symbol `key` in an encoded `open` (its `properties` map):
/// `sym8 key` then `str8`/`str32`.
fn property_string(body: &[u8], key: &[u8]) -> Option<String> {
    let mut needle = vec![0xa3, u8::try_from(key.len()).ok()?];
    needle.extend_from_slice(key);
    let at = body.windows(needle.len()).position(|w| w == needle)? + needle.len();
    let value = body.get(at..)?;
    let (len, start) = match value.first()? {
        0xa1 => (usize::from(*value.get(1)?), 2),
        0xb1 => (
            u32::from_be_bytes(value.get(1..5)?.try_into().ok()?) as usize,
            5,
        ),
        _ => return None,
    };
    let bytes = value.get(start..start + len)?;
    String::from_utf8(bytes.to_vec()).ok()
}

impl AsyncRead for Sniff {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if !this.done && matches!(polled, Poll::Ready(Ok(()))) {
            this.seen.extend_from_slice(&buf.filled()[before..]);
            this.scan();
        }
        polled
    }
}

impl AsyncWrite for Sniff {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The broker's error when it refused an attach for a reason that retrying cannot fix: an
/// address it does not accept (`invalid-field`, e.g. RabbitMQ 4's `amqp_address_v1_not_permitted`),
/// a node that does not exist (`not-found`), or no permission (`unauthorized-access`).
pub(crate) fn refusal(error: Option<&definitions::Error>) -> Option<&definitions::Error> {
    let e = error?;
    let description = e.description.as_deref().unwrap_or("");
    if description.contains("is down or inaccessible") {
        return None; // RabbitMQ 3.x: the queue's node is down, which passes
    }
    matches!(
        e.condition,
        ErrorCondition::AmqpError(
            AmqpError::InvalidField | AmqpError::NotFound | AmqpError::UnauthorizedAccess
        )
    )
    .then_some(e)
}

/// The broker's error carried by a failed sending attach, if any.
pub(crate) fn sender_attach_error(e: &SenderAttachError) -> Option<&definitions::Error> {
    match e {
        SenderAttachError::RemoteClosedWithError(e) => Some(e),
        SenderAttachError::SessionStopped(SessionStopReason::RemoteEndedWithError(e)) => Some(e),
        _ => None,
    }
}

/// The broker's error carried by a failed receiving attach, if any.
pub(crate) fn receiver_attach_error(e: &ReceiverAttachError) -> Option<&definitions::Error> {
    match e {
        ReceiverAttachError::RemoteClosedWithError(e) => Some(e),
        ReceiverAttachError::SessionStopped(SessionStopReason::RemoteEndedWithError(e)) => Some(e),
        _ => None,
    }
}

/// The configuration error for a refused attach to `address`.
pub(crate) fn refused_attach(
    claw: &str,
    what: &str,
    address: &str,
    error: &definitions::Error,
    dialect: Dialect,
) -> Error {
    let condition = match &error.condition {
        ErrorCondition::AmqpError(AmqpError::InvalidField) => "amqp:invalid-field",
        ErrorCondition::AmqpError(AmqpError::NotFound) => "amqp:not-found",
        ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess) => "amqp:unauthorized-access",
        _ => "refused",
    };
    let description = error.description.as_deref().unwrap_or("no description");
    let hint = match (&error.condition, dialect) {
        (ErrorCondition::AmqpError(AmqpError::InvalidField), Dialect::V1) => {
            "this looks like RabbitMQ 4 refusing the v1 address form \
             (`deprecated_features.permit.amqp_address_v1 = false`, the default from 4.3): \
             set `[amqp10] addresses = \"v2\"` (or \"auto\")"
        }
        (ErrorCondition::AmqpError(AmqpError::InvalidField), Dialect::V2) => {
            "the broker does not understand RabbitMQ 4's v2 address form (RabbitMQ 3.x?): \
             set `[amqp10] addresses = \"v1\"` (or \"auto\")"
        }
        (ErrorCondition::AmqpError(AmqpError::NotFound), _) => {
            "the queue or exchange does not exist: enable `declare`, or declare it yourself"
        }
        (ErrorCondition::AmqpError(AmqpError::UnauthorizedAccess), _) => {
            "the user in the URL lacks permission on it (`rabbitmqctl set_permissions`)"
        }
        _ => "check the address and the broker's configuration",
    };
    Error::Config(format!(
        "claw `{claw}`: the broker refused {what} `{address}` ({condition}: {description}); {hint}"
    ))
}

/// One generation: a session and the sending links attached on it so far.
pub(crate) struct Live {
    pub(crate) generation: u64,
    /// The address form this connection uses.
    pub(crate) dialect: Dialect,
    /// The broker is RabbitMQ 4 or later: `released` means that no queue took a message.
    pub(crate) broker4: bool,
    /// The user this connection logged in as, set as `user-id` on everything it sends
    /// (RabbitMQ checks it: the receiver's `Via::user`); `None` on the queue scheme.
    pub(crate) user: Option<String>,
    pub(crate) session: Mutex<SessionHandle<()>>,
    /// Sending links by target address. A std mutex: looked up on every send, never held
    /// across an await (contended async locks cost a task switch per send).
    senders: StdMutex<HashMap<String, Arc<Mutex<Sender>>>>,
    /// Serialises attaching new sending links.
    attaching: Mutex<()>,
    /// Numbers sending links, so that a name is never reused within a generation (an evicted
    /// link may still be detaching when its successor attaches).
    attached: AtomicU64,
    dead: Fuse,
}

impl Alive for Live {
    fn is_alive(&self) -> bool {
        !self.is_failed()
    }
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation)
            .field("failed", &self.is_failed())
            .finish_non_exhaustive()
    }
}

/// Sending links kept per generation (one per target address); beyond this, the oldest go.
const MAX_SENDERS: usize = 256;

impl Live {
    pub(crate) fn new(
        generation: u64,
        dialect: Dialect,
        broker4: bool,
        user: Option<String>,
        session: SessionHandle<()>,
    ) -> Self {
        Self {
            generation,
            dialect,
            broker4,
            user,
            session: Mutex::new(session),
            senders: StdMutex::new(HashMap::new()),
            attaching: Mutex::new(()),
            attached: AtomicU64::new(0),
            dead: Fuse::new(),
        }
    }

    /// Marks the generation failed (the first reason wins) and wakes everyone waiting in
    /// [`failed`](Self::failed): the supervisor, and sends awaiting an outcome that will never
    /// come on this generation.
    pub(crate) fn fail(&self, reason: impl Into<String>) {
        self.dead.trip(reason);
    }

    pub(crate) fn is_failed(&self) -> bool {
        self.dead.is_tripped()
    }

    /// Waits until the generation is marked failed; returns why.
    pub(crate) async fn failed(&self) -> String {
        self.dead.tripped().await
    }

    /// The sending link for `address` (`None`: the anonymous link, whose messages carry their
    /// destination in `to`), attached on first use. A refusal retrying cannot fix is an
    /// [`Error::Config`] naming the address.
    pub(crate) async fn sender(
        &self,
        address: Option<&str>,
        claw: &str,
    ) -> Result<Arc<Mutex<Sender>>> {
        let key = address.unwrap_or("");
        if let Some(s) = self.senders_map().get(key) {
            return Ok(s.clone());
        }
        let _attaching = self.attaching.lock().await;
        {
            let mut senders = self.senders_map();
            if let Some(s) = senders.get(key) {
                return Ok(s.clone()); // attached meanwhile
            }
            if senders.len() >= MAX_SENDERS {
                if let Some(key) = senders.keys().next().cloned() {
                    if let Some(old) = senders.remove(&key) {
                        tokio::spawn(async move {
                            let sender = old.lock_owned().await;
                            drop(sender);
                        });
                    }
                }
            }
        }
        let number = self.attached.fetch_add(1, Ordering::Relaxed);
        let name = format!("{claw}-send-{}-{number}", self.generation);
        let shown = address.unwrap_or("(anonymous: each message's `to`)");
        let sender = {
            let mut session = self.session.lock().await;
            let target = match address {
                Some(a) => Target::from(a.to_owned()),
                None => Target::builder().build(),
            };
            Sender::builder()
                .name(name)
                .target(target)
                .attach(&mut *session)
                .await
                .map_err(|e| {
                    let what = format!("attaching a sending link to `{shown}`");
                    // An attach error ends the session on RabbitMQ: start a new generation.
                    self.fail(format!("{what}: {e}"));
                    match refusal(sender_attach_error(&e)) {
                        Some(refused) => {
                            refused_attach(claw, "a sending link to", shown, refused, self.dialect)
                        }
                        None => Error::Broker {
                            claw: claw.to_owned(),
                            what,
                            source: Box::new(e),
                        },
                    }
                })?
        };
        let sender = Arc::new(Mutex::new(sender));
        self.senders_map().insert(key.to_owned(), sender.clone());
        Ok(sender)
    }

    fn senders_map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Mutex<Sender>>>> {
        self.senders.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends every sending link: a detach where `close` is false (RabbitMQ 3.10 answers a
    /// closing detach with IllegalState), a closing detach otherwise (the Proton example broker
    /// never answers a plain detach, which cost 2 s per link).
    pub(crate) async fn end_senders(&self, close: bool) {
        let senders: Vec<_> = self.senders_map().drain().map(|(_, s)| s).collect();
        for s in senders {
            if let Ok(s) = Arc::try_unwrap(s) {
                let s = s.into_inner();
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    if close {
                        let _ = s.close().await;
                    } else {
                        let _ = s.detach().await;
                    }
                })
                .await;
            }
        }
    }
}
