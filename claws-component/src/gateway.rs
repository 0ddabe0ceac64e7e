//! The XMPP gateway: one [`Router`] holding a [`ComponentClaw`] (the XMPP server's side) and a
//! bus claw (RabbitMQ, AMQP 1.0, or the mem claw in tests), with [`Gateway`] as its handler.
//!
//! The routing rules are in the [crate docs](crate#the-gateways-routing-rules). The simplest
//! entry point is [`run`]: it starts both claws and routes until `shutdown` completes.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use claws_core::stanza::Condition;
use claws_core::{
    Claw, Confirmation, Context, Error, Handler, HandlerResult, Jid, Packet, Result, Router, Via,
};

use crate::stream::Head;
use crate::ComponentClaw;

/// Where the gateway sends a stanza.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// Over the bus, directly to this JID.
    ToBus(Jid),
    /// Through the component to the XMPP server.
    ToServer(Jid),
    /// Addressed to the gateway instance itself.
    ToGateway,
    /// Nowhere, because of this.
    Drop(&'static str),
}

/// The gateway's [`Handler`]: forwards stanzas between the component claw and the bus claw of
/// its router by the stanza's `to` (see the [crate docs](crate#the-gateways-routing-rules)).
///
/// ```
/// use claws_component::gateway::Gateway;
/// let gateway = Gateway::new("echo.example.com"); // claws named `component` and any other
/// let gateway = Gateway::new("echo.example.com").component_claw("xmpp").bus_claw("amqp091");
/// # let _ = gateway;
/// ```
#[derive(Debug, Clone)]
pub struct Gateway {
    domain: String,
    component: String,
    bus: Option<String>,
}

impl Gateway {
    /// A gateway for the component domain `component_domain`, using the router's claw named
    /// `component` as the XMPP side and its other claw as the bus.
    pub fn new(component_domain: &str) -> Self {
        Self {
            domain: component_domain.to_owned(),
            component: crate::config::DEFAULT_NAME.to_owned(),
            bus: None,
        }
    }

    /// The name of the component claw in the router (default `component`).
    #[must_use]
    pub fn component_claw(mut self, name: impl Into<String>) -> Self {
        self.component = name.into();
        self
    }

    /// The name of the bus claw (default: the router's first claw that is not the component).
    #[must_use]
    pub fn bus_claw(mut self, name: impl Into<String>) -> Self {
        self.bus = Some(name.into());
        self
    }

    /// The component's domain.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Whether `jid` is on the bus: its domain is the component's.
    pub fn is_on_bus(&self, jid: &Jid) -> bool {
        jid.domain().as_str().eq_ignore_ascii_case(&self.domain)
    }

    fn bus<'r>(&self, router: &'r Router) -> Result<&'r Arc<dyn Claw>> {
        match &self.bus {
            Some(name) => router.claw(name),
            None => router
                .claw_names()
                .into_iter()
                .find(|n| *n != self.component)
                .map(|n| router.claw(n))
                .unwrap_or_else(|| {
                    Err(Error::Config(format!(
                        "the gateway's router holds no bus claw besides `{}`; add the AMQP claw",
                        self.component
                    )))
                }),
        }
    }

    fn route(&self, from_server: bool, to: Option<&str>, own: &Jid) -> Route {
        let Some(to) = to else {
            return Route::Drop("it has no `to`");
        };
        let Ok(to) = claws_core::jid::parse(to) else {
            return Route::Drop("its `to` is not a valid JID");
        };
        if &to == own || to == own.to_bare() {
            return Route::ToGateway;
        }
        match (from_server, self.is_on_bus(&to)) {
            (_, true) => Route::ToBus(to),
            (true, false) => Route::Drop(
                "the server sent it, yet it is addressed outside the component's domain",
            ),
            (false, false) => Route::ToServer(to),
        }
    }

    async fn on_server_stanza(&self, packet: Packet, head: Head, ctx: &Context) -> HandlerResult {
        let router = ctx.router();
        let bus = self.bus(router)?;
        match self.route(true, head.to.as_deref(), bus.jid()) {
            Route::ToBus(to) => {
                // Pipelined: the stanza is published in this sender's order and the lane goes
                // on with the next; the verdict comes later, off the lane. A failed send is
                // answered with a stanza error then, as before, and the server's stanza counts
                // as handled either way.
                let sent = bus
                    .send_ordered(&to, head.id.as_deref(), packet.clone())
                    .await;
                let component = self.component.clone();
                let bounced = router.clone();
                let answer = async move {
                    let Err(err) = verdict(sent).await else {
                        return Ok(());
                    };
                    let (condition, text) = match &err {
                        Error::NoRoute { .. } => (
                            Condition::ServiceUnavailable,
                            format!("no service answers at {to}"),
                        ),
                        _ => (
                            Condition::InternalServerError,
                            "the service bus is unavailable; try again later".to_owned(),
                        ),
                    };
                    tracing::warn!(to = %to, %err, "gateway: cannot pass a stanza from the XMPP server to the bus; answering with an error");
                    bounce(&bounced, &component, &packet, &head, condition, &text).await
                };
                router.settle_after(Confirmation::new(answer)).await?;
            }
            Route::ToGateway => {
                let text = "this address is the gateway itself, which offers no service";
                bounce(
                    router,
                    &self.component,
                    &packet,
                    &head,
                    Condition::ServiceUnavailable,
                    text,
                )
                .await?;
            }
            Route::ToServer(_) => unreachable!("stanzas from the server never go back to it"),
            Route::Drop(why) => {
                tracing::warn!(to = ?head.to, from = ?head.from, why, "gateway: dropped a stanza from the XMPP server");
            }
        }
        Ok(())
    }

    async fn on_bus_stanza(&self, packet: Packet, head: Head, ctx: &Context) -> HandlerResult {
        let router = ctx.router();
        let bus = self.bus(router)?;
        match self.route(false, head.to.as_deref(), bus.jid()) {
            Route::ToServer(to) => {
                // Pipelined too: queued for the stream in this sender's order, the delivery
                // settled once written. An error (the server is unreachable for longer than the
                // send timeout) makes the bus redeliver the stanza later, or dead-letter it
                // after max_deliveries.
                let written = router
                    .claw(&self.component)?
                    .send_ordered(&to, head.id.as_deref(), packet)
                    .await?;
                router.settle_after(written).await?;
            }
            Route::ToBus(to) => {
                // Pipelined as from the server; a failure other than "no route" fails the
                // delivery (redelivered by the bus, or dead-lettered).
                let sent = bus.send_ordered(&to, head.id.as_deref(), packet).await;
                let settled = async move {
                    match verdict(sent).await {
                        Err(Error::NoRoute { .. }) => {
                            tracing::warn!(to = %to, "gateway: no service consumes the stanza's `to` on the bus; dropped");
                            Ok(())
                        }
                        other => other,
                    }
                };
                router.settle_after(Confirmation::new(settled)).await?;
            }
            Route::ToGateway => {
                tracing::warn!(to = ?head.to, from = ?head.from, "gateway: a stanza on the bus is addressed to the gateway itself; dropped");
            }
            Route::Drop(why) => {
                tracing::warn!(to = ?head.to, from = ?head.from, why, "gateway: dropped a stanza from the bus");
            }
        }
        Ok(())
    }
}

/// The broker's verdict on a pipelined send: its confirmation's, or the error that kept it from
/// being sent at all.
async fn verdict(sent: Result<Confirmation>) -> Result<()> {
    sent?.await
}

/// Answers a stanza from the server with a stanza error through the component claw named
/// `component`, unless it is an error or a result itself (errors are never answered, so two
/// services cannot bounce errors forever).
async fn bounce(
    router: &Router,
    component: &str,
    packet: &Packet,
    head: &Head,
    condition: Condition,
    text: &str,
) -> Result<()> {
    if matches!(head.kind.as_deref(), Some("error" | "result")) {
        return Ok(());
    }
    let Some(sender) = head
        .from
        .as_deref()
        .and_then(|f| claws_core::jid::parse(f).ok())
    else {
        return Ok(());
    };
    let stanza = packet.parse()?;
    let reply = stanza.error_reply(condition, Some(text));
    router
        .claw(component)?
        .send(&sender, head.id.as_deref(), Packet::from(&reply))
        .await
}

#[async_trait]
impl Handler for Gateway {
    async fn connected(&self, claw: &str, _ctx: &Context) {
        tracing::info!(claw, "gateway: claw connected");
    }

    async fn disconnected(&self, claw: &str, reason: &str, _ctx: &Context) {
        tracing::warn!(claw, reason, "gateway: claw disconnected");
    }

    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        let head = match Head::parse(packet.as_bytes()) {
            Ok(head) => head,
            Err(err) => {
                tracing::warn!(claw = &*via.claw, %err, "gateway: not a stanza; dropped");
                return Ok(());
            }
        };
        if *via.claw == *self.component {
            self.on_server_stanza(packet, head, ctx).await
        } else {
            self.on_bus_stanza(packet, head, ctx).await
        }
    }
}

/// Builds the gateway's router and starts it with a [`Gateway`] for the component's domain.
/// Close the returned router to stop.
///
/// The bus claw comes first: it is connected before the component hands over the first stanza
/// from the server, and on close it drains (its in-flight stanzas still go out through the open
/// component) before the component closes. Stanzas from the server in the last moment of a close
/// are answered with an error rather than lost silently.
pub async fn start(component: ComponentClaw, bus: Arc<dyn Claw>) -> Result<Router> {
    let gateway = Gateway::new(component.domain())
        .component_claw(component.name())
        .bus_claw(bus.name());
    let bus_name = bus.name().to_owned();
    let router = Router::builder()
        .claw_arc(bus)
        .claw(component)
        .default_claw(bus_name)
        .build()?;
    router.start(gateway).await?;
    Ok(router)
}

/// Runs the gateway until `shutdown` completes, then closes both claws (draining in-flight
/// stanzas). This is what `claws gateway` calls:
///
/// ```no_run
/// # async fn example(bus: std::sync::Arc<dyn claws_core::Claw>) -> claws_core::Result<()> {
/// use claws_component::ComponentClaw;
/// let config = claws_core::Config::load(Some("claws.toml".as_ref()))?;
/// let component = ComponentClaw::from_config(&config)?; // the [component] table
/// claws_component::gateway::run(component, bus, async {
///     let _ = tokio::signal::ctrl_c().await;
/// })
/// .await
/// # }
/// ```
pub async fn run(
    component: ComponentClaw,
    bus: Arc<dyn Claw>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let router = start(component, bus).await?;
    shutdown.await;
    router.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jid(s: &str) -> Jid {
        claws_core::jid::parse(s).unwrap()
    }

    #[test]
    fn routing_rules() {
        let g = Gateway::new("echo.example");
        let own = jid("gateway@echo.example/gw1");
        let route = |from_server, to: Option<&str>| g.route(from_server, to, &own);
        // From the server: JIDs of the domain go to the bus, bare or full.
        assert_eq!(
            route(true, Some("bot@echo.example")),
            Route::ToBus(jid("bot@echo.example"))
        );
        assert_eq!(
            route(true, Some("bot@Echo.Example/w1")),
            Route::ToBus(jid("bot@echo.example/w1"))
        );
        assert_eq!(
            route(true, Some("echo.example")),
            Route::ToBus(jid("echo.example"))
        );
        assert_eq!(route(true, Some("gateway@echo.example")), Route::ToGateway);
        assert_eq!(
            route(true, Some("gateway@echo.example/gw1")),
            Route::ToGateway
        );
        assert!(matches!(route(true, Some("u@elsewhere")), Route::Drop(_)));
        assert!(matches!(route(true, None), Route::Drop(_)));
        assert!(matches!(route(true, Some("a@b@c")), Route::Drop(_)));
        // From the bus: JIDs outside the domain go to the server, the domain's stay on the bus.
        assert_eq!(
            route(false, Some("user@xmpp.example/phone")),
            Route::ToServer(jid("user@xmpp.example/phone"))
        );
        assert_eq!(
            route(false, Some("other@echo.example")),
            Route::ToBus(jid("other@echo.example"))
        );
        assert_eq!(
            route(false, Some("gateway@echo.example/gw1")),
            Route::ToGateway
        );
        assert!(matches!(route(false, None), Route::Drop(_)));
    }
}
