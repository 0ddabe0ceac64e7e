//! [`Handler`]: what an application writes; [`Context`]: how it answers.

use std::sync::Arc;

use async_trait::async_trait;

use crate::jid::Jid;
use crate::{BoxError, Packet, Result, Router, Via};

/// What a handler returns: `Err` means "not handled", and the claw delivers the packet again
/// (or dead-letters it after `max_deliveries`). Any error type converts with `?`.
pub type HandlerResult = std::result::Result<(), BoxError>;

/// An application's service logic. Every hook has a do-nothing default, so implementing only
/// [`received`](Handler::received) is enough:
///
/// ```
/// use claws_core::{async_trait, Context, Handler, HandlerResult, Packet, Via};
///
/// struct Echo;
///
/// #[async_trait]
/// impl Handler for Echo {
///     async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
///         ctx.reply(&via, packet).await?;
///         Ok(())
///     }
/// }
/// ```
///
/// The packet is acknowledged only after `received` returns `Ok`; an error or a panic leads to
/// redelivery.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// A claw connected (again) and is consuming.
    async fn connected(&self, _claw: &str, _ctx: &Context) {}

    /// A claw lost its connection; it may be recovering.
    async fn disconnected(&self, _claw: &str, _reason: &str, _ctx: &Context) {}

    /// A packet arrived.
    async fn received(&self, _packet: Packet, _via: Via, _ctx: &Context) -> HandlerResult {
        Ok(())
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Arc<H> {
    async fn connected(&self, claw: &str, ctx: &Context) {
        (**self).connected(claw, ctx).await
    }
    async fn disconnected(&self, claw: &str, reason: &str, ctx: &Context) {
        (**self).disconnected(claw, reason, ctx).await
    }
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        (**self).received(packet, via, ctx).await
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for Box<H> {
    async fn connected(&self, claw: &str, ctx: &Context) {
        (**self).connected(claw, ctx).await
    }
    async fn disconnected(&self, claw: &str, reason: &str, ctx: &Context) {
        (**self).disconnected(claw, reason, ctx).await
    }
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        (**self).received(packet, via, ctx).await
    }
}

/// Given to every handler call: the way to send through the router.
#[derive(Debug, Clone)]
pub struct Context {
    router: Router,
    attempt: u32,
}

impl Context {
    pub(crate) fn new(router: Router, attempt: u32) -> Self {
        Self { router, attempt }
    }

    /// The router, for anything the shortcuts below do not cover.
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// Which delivery of the current packet this is (1 the first time). 0 outside `received`.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Sends directly to `to`, through the claw the router learned for it (or the default claw).
    ///
    /// Inside [`Handler::received`] the send is pipelined: this returns once its place on the
    /// wire is fixed ([`Claw::send_ordered`](crate::Claw::send_ordered)), and the delivery being
    /// handled is settled only after the broker confirmed it; a failure the broker reports
    /// later fails that delivery (retried or dead-lettered as a handler error) instead of
    /// returning here. Outside a handler it returns once the broker confirmed.
    pub async fn send(&self, to: &Jid, packet: impl Into<Packet>) -> Result<()> {
        self.router.send(to, None, packet.into()).await
    }

    /// As [`send`](Self::send), with a correlation id.
    pub async fn send_with_id(&self, to: &Jid, id: &str, packet: impl Into<Packet>) -> Result<()> {
        self.router.send(to, Some(id), packet.into()).await
    }

    /// Broadcasts through the default claw.
    pub async fn publish(&self, packet: impl Into<Packet>) -> Result<()> {
        self.router.publish(packet.into()).await
    }

    /// Replies to the sender of a received packet, through the claw that delivered it, with the
    /// same correlation id. Pipelined inside a handler, as [`send`](Self::send).
    pub async fn reply(&self, via: &Via, packet: impl Into<Packet>) -> Result<()> {
        self.router.reply(via, packet.into()).await
    }
}

/// A [`Handler`] from an async closure that receives packets; see [`handler_fn`].
pub struct HandlerFn<F> {
    f: F,
}

impl<F> std::fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Makes a [`Handler`] from `async |packet, via, ctx| -> HandlerResult`, for small services and
/// tests. The context is passed by value, so the future may keep it.
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Packet, Via, Context) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
{
    HandlerFn { f }
}

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Packet, Via, Context) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = HandlerResult> + Send + 'static,
{
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        (self.f)(packet, via, ctx.clone()).await
    }
}
