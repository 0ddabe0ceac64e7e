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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use claws_core::runtime::{redact_url, Alive, Fuse};
use claws_core::{Error, Result};
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::{Connection, Sender, Session};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

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

/// Opens a connection and a session, bounded by `timeout`.
pub(crate) async fn open(
    endpoint: &Endpoint,
    container_id: &str,
    idle_timeout: Option<Duration>,
    timeout: Duration,
    claw: &str,
) -> Result<(ConnectionHandle<()>, SessionHandle<()>)> {
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
        Ok((connection, session))
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err(fail(format!(
            "no answer within {timeout:?} (raise `connect_timeout` if the broker is slow)"
        ))),
    }
}

/// One generation: a session and the sending links attached on it so far.
pub(crate) struct Live {
    pub(crate) generation: u64,
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
    pub(crate) fn new(generation: u64, session: SessionHandle<()>) -> Self {
        Self {
            generation,
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

    /// The sending link for `address`, attached on first use.
    pub(crate) async fn sender(&self, address: &str, claw: &str) -> Result<Arc<Mutex<Sender>>> {
        if let Some(s) = self.senders_map().get(address) {
            return Ok(s.clone());
        }
        let _attaching = self.attaching.lock().await;
        {
            let mut senders = self.senders_map();
            if let Some(s) = senders.get(address) {
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
        let sender = {
            let mut session = self.session.lock().await;
            Sender::attach(&mut *session, name, address.to_owned())
                .await
                .map_err(|e| {
                    let what = format!("attaching a sending link to `{address}`");
                    // An attach error ends the session on RabbitMQ: start a new generation.
                    self.fail(format!("{what}: {e}"));
                    Error::Broker {
                        claw: claw.to_owned(),
                        what,
                        source: Box::new(e),
                    }
                })?
        };
        let sender = Arc::new(Mutex::new(sender));
        self.senders_map()
            .insert(address.to_owned(), sender.clone());
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
