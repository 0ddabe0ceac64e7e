//! [`Echo`]: a ready service that answers XEP-0199 pings, echoes messages, and refuses other
//! requests. The `claws echo` command runs it; tests and scenarios use it as a known handler.

use async_trait::async_trait;

use crate::handler::{Context, Handler, HandlerResult};
use crate::stanza::{Condition, Element};
use crate::{Error, Packet, Via};

/// Answers each packet, replying through [`Context::reply`] (back the way it came):
///
/// - an XEP-0199 ping gets an `<iq type="result"/>`;
/// - a `<message>` comes back with `from` and `to` swapped (unless it is an error);
/// - any other `<iq type="get|set">` gets a `service-unavailable` error;
/// - everything else (presence, results, errors, non-XML payloads) is acknowledged and dropped.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

/// The namespace of the marker an echo carries.
pub const ECHO_NS: &str = "urn:xmpp:claws:echo:0";
/// The marker element's name: `<echoed xmlns='urn:xmpp:claws:echo:0'/>`.
pub const ECHOED: &str = "echoed";

impl Echo {
    /// The reply `Echo` gives to `stanza`, if any.
    pub fn answer(stanza: &Element) -> Option<Element> {
        match stanza.name() {
            "iq" if stanza.is_ping() => stanza.iq_result().ok(),
            "iq" if stanza.is_iq_request() => {
                Some(stanza.error_reply(Condition::ServiceUnavailable, None))
            }
            // An echo is marked, and a marked message is not answered: two echo services (or an
            // echo meeting its own echo) never ping-pong.
            "message"
                if stanza.attr("type") != Some("error")
                    && stanza.get_child(ECHOED, ECHO_NS).is_none() =>
            {
                let mut echo = stanza.clone();
                echo.swap_addresses();
                Some(echo.with_child(Element::new(ECHOED, Some(ECHO_NS))))
            }
            _ => None,
        }
    }
}

#[async_trait]
impl Handler for Echo {
    async fn received(&self, packet: Packet, via: Via, ctx: &Context) -> HandlerResult {
        let stanza = match packet.parse() {
            Ok(stanza) => stanza,
            Err(err) => {
                tracing::info!(claw = &*via.claw, %err, "echo: not a stanza, dropped");
                return Ok(());
            }
        };
        if let Some(reply) = Echo::answer(&stanza) {
            match ctx.reply(&via, Packet::from(&reply)).await {
                // Its own echo, or a stanza naming no sender: nothing to answer, and retrying
                // would not help.
                Err(err @ (Error::SelfSend { .. } | Error::NoSender { .. })) => {
                    tracing::info!(claw = &*via.claw, %err, "echo: not answered");
                }
                other => other?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(xml: &str) -> Option<String> {
        Echo::answer(&xml.parse().unwrap()).map(|e| e.to_string())
    }

    #[test]
    fn answers() {
        assert_eq!(
            answer(
                r#"<iq type="get" id="1" from="u@d/r" to="e@d"><ping xmlns="urn:xmpp:ping"/></iq>"#
            )
            .unwrap(),
            r#"<iq type="result" id="1" from="e@d" to="u@d/r"/>"#
        );
        assert_eq!(
            answer(r#"<message from="u@d/r" to="e@d"><body>hi</body></message>"#).unwrap(),
            r#"<message from="e@d" to="u@d/r"><body>hi</body><echoed xmlns="urn:xmpp:claws:echo:0"/></message>"#
        );
        // An echo is not echoed.
        assert_eq!(
            answer(
                r#"<message from="e@d" to="u@d/r"><body>hi</body><echoed xmlns="urn:xmpp:claws:echo:0"/></message>"#
            ),
            None
        );
        let err =
            answer(r#"<iq type="set" id="2" from="u@d/r"><query xmlns="jabber:iq:version"/></iq>"#)
                .unwrap();
        assert!(
            err.contains("service-unavailable") && err.contains(r#"type="error""#),
            "{err}"
        );
        assert_eq!(answer(r#"<presence/>"#), None);
        assert_eq!(answer(r#"<iq type="result" id="3"/>"#), None);
        assert_eq!(answer(r#"<message type="error"/>"#), None);
    }
}
