//! The one error type of claws-core.

use std::time::Duration;

/// A boxed error from a backend or a handler, for what claws cannot classify.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with claws' [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in claws-core and the claws built on it.
///
/// Each message names the problem and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Happens when a string is not a valid JID (RFC 7622).
    #[error("invalid JID `{input}`: {reason}; a JID looks like `node@domain/resource`, `node@domain` or `domain`")]
    InvalidJid {
        /// The string that was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Happens when a full JID (with a resource) was required and a bare one was given.
    #[error("JID `{jid}` has no resource, but {what} needs a full JID such as `{jid}/worker-1`")]
    NeedFullJid {
        /// The JID that was given.
        jid: String,
        /// What needed the full JID.
        what: &'static str,
    },

    /// Happens when a payload that should be XML is not well-formed, or breaks a parser limit.
    #[error("malformed XML at byte {position}: {reason}")]
    MalformedXml {
        /// Byte offset in the payload where the problem was found.
        position: u64,
        /// What is wrong.
        reason: String,
    },

    /// Happens when a direct send reaches no queue: nobody is bound to the destination JID.
    #[error("no route to `{to}`: no instance consumes that JID on claw `{claw}`; start one, or check the JID")]
    NoRoute {
        /// The destination JID.
        to: String,
        /// The claw that tried to send.
        claw: String,
    },

    /// Happens when a reply has nowhere to go: the delivery carried no sender (`reply_to`) and
    /// its stanza no `from` attribute.
    #[error("cannot reply on claw `{claw}`: the packet delivered under `{jid}` names no sender (no reply_to, no `from` attribute); set `from` in the stanza the peer sends")]
    NoSender {
        /// The claw that delivered it.
        claw: String,
        /// The address it was delivered under.
        jid: String,
    },

    /// Happens when a send or reply is addressed to the sending instance's own full JID, which
    /// is how reply loops start.
    #[error("claw `{claw}` refuses to send to its own JID `{to}` (a reply loop?); if that is meant, build the router with `allow_self_sends(true)`")]
    SelfSend {
        /// The claw.
        claw: String,
        /// Its own JID.
        to: String,
    },

    /// Happens when a router is asked for a claw it does not hold.
    #[error("unknown claw `{name}`; the router holds: {known}")]
    UnknownClaw {
        /// The name asked for.
        name: String,
        /// The names the router holds, comma separated.
        known: String,
    },

    /// Happens when a queue or exchange name derived from a JID is longer than AMQP allows.
    #[error("{kind} name `{name}` is {len} bytes, over AMQP's 255-byte limit; use a shorter JID (node or resource)")]
    NameTooLong {
        /// What the name is for (`queue`, `exchange`, `routing key`).
        kind: &'static str,
        /// The name, possibly shortened for display.
        name: String,
        /// Its length in bytes.
        len: usize,
    },

    /// Happens when the configuration has an unknown key or a bad value.
    #[error("configuration error: {0}")]
    Config(String),

    /// Happens when `start` is called on a claw (or router) that is starting or running.
    #[error("claw `{claw}` is already started; start it once, or build another")]
    AlreadyStarted {
        /// The claw's name.
        claw: String,
    },

    /// Happens when a claw is used before `start`.
    #[error("claw `{claw}` is not started; call `start` (or start its router) first")]
    NotStarted {
        /// The claw's name.
        claw: String,
    },

    /// Happens when a claw is asked for something its transport cannot do (a broadcast on a
    /// plain queue broker, a publish through an XMPP component).
    #[error("claw `{claw}` cannot {what}: {why}")]
    Unsupported {
        /// The claw's name.
        claw: String,
        /// What was asked.
        what: &'static str,
        /// Why not, and what to use instead.
        why: String,
    },

    /// Happens when a broker operation fails; `source` is the client library's error.
    #[error("claw `{claw}`: {what} failed: {source}")]
    Broker {
        /// The claw's name.
        claw: String,
        /// What was being done.
        what: String,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// Happens when something is used after `close()`.
    #[error("claw `{claw}` is closed; create a new one")]
    Closed {
        /// The claw's name.
        claw: String,
    },

    /// Happens when a claw cannot reach its broker.
    #[error("cannot connect claw `{claw}` to {endpoint}: {reason}")]
    Connect {
        /// The claw's name.
        claw: String,
        /// Where it tried to connect (never includes a password).
        endpoint: String,
        /// Why it failed.
        reason: String,
    },

    /// Happens when a send waited for a reconnection longer than its bound.
    #[error("claw `{claw}` has been disconnected for {waited:?}; the send was not made (raise `send_timeout` to wait longer)")]
    Disconnected {
        /// The claw's name.
        claw: String,
        /// How long the send waited.
        waited: Duration,
    },

    /// Happens when an operation does not finish within its deadline.
    #[error("{what} timed out after {after:?}")]
    Timeout {
        /// The operation.
        what: String,
        /// The deadline.
        after: Duration,
    },

    /// Happens when the broker refused a send (a negative confirm, a rejected outcome).
    #[error("broker refused the stanza sent to `{to}` on claw `{claw}`: {reason}")]
    Refused {
        /// Destination (JID, or `broadcast`).
        to: String,
        /// The claw's name.
        claw: String,
        /// What the broker said.
        reason: String,
    },

    /// Happens when a handler returns an error or panics; the stanza is redelivered.
    #[error("handler failed: {0}")]
    Handler(BoxError),

    /// Happens for backend errors that claws cannot classify further.
    #[error(transparent)]
    Backend(BoxError),
}

impl Error {
    /// Wraps any backend error.
    pub fn backend(err: impl Into<BoxError>) -> Self {
        Error::Backend(err.into())
    }
}

impl From<figment::Error> for Error {
    fn from(err: figment::Error) -> Self {
        Error::Config(err.to_string())
    }
}
