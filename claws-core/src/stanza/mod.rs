//! Stanzas: the element tree ([`Element`]), its bounded parser, and builders for replies and
//! RFC 6120 stanza errors.
//!
//! ```
//! use claws_core::stanza::{Condition, Element};
//! let ping: Element = r#"<iq xmlns="jabber:client" type="get" id="p1" from="u@d/r" to="svc.d"><ping xmlns="urn:xmpp:ping"/></iq>"#.parse()?;
//! let pong = ping.iq_result()?;
//! assert_eq!(pong.to_string(), r#"<iq xmlns="jabber:client" type="result" id="p1" from="svc.d" to="u@d/r"/>"#);
//! let err = ping.error_reply(Condition::ServiceUnavailable, None);
//! assert_eq!(err.attr("type"), Some("error"));
//! # Ok::<(), claws_core::Error>(())
//! ```

mod element;
mod error;

pub use element::{Element, Limits, Node};
pub use error::{Condition, ErrorType, STANZAS_NS};

use crate::{Error, Result};

/// The namespace of XEP-0199 pings.
pub const PING_NS: &str = "urn:xmpp:ping";

impl Element {
    /// Whether this is an `<iq type="get|set">` (a request that wants a reply).
    pub fn is_iq_request(&self) -> bool {
        self.name() == "iq" && matches!(self.attr("type"), Some("get" | "set"))
    }

    /// Whether this is an XEP-0199 ping (`<iq type="get"><ping xmlns="urn:xmpp:ping"/></iq>`).
    pub fn is_ping(&self) -> bool {
        self.name() == "iq"
            && self.attr("type") == Some("get")
            && self.children().any(|c| c.is("ping", PING_NS))
    }

    /// A copy of this element's name, namespace and `id`, with `from` and `to` swapped and no
    /// children or other attributes: the start of any reply.
    pub fn reply_skeleton(&self) -> Element {
        let mut reply = Element::new(self.name(), self.ns());
        if let Some(id) = self.attr("id") {
            reply.set_attr("id", id);
        }
        if let Some(to) = self.attr("to") {
            reply.set_attr("from", to);
        }
        if let Some(from) = self.attr("from") {
            reply.set_attr("to", from);
        }
        reply
    }

    /// Swaps `from` and `to` in place (an echo).
    pub fn swap_addresses(&mut self) {
        let from = self.remove_attr("from");
        let to = self.remove_attr("to");
        if let Some(to) = to {
            self.set_attr("from", to);
        }
        if let Some(from) = from {
            self.set_attr("to", from);
        }
    }

    /// The empty `<iq type="result"/>` answering this iq get/set: same `id`, `from`/`to` swapped.
    pub fn iq_result(&self) -> Result<Element> {
        if !self.is_iq_request() {
            return Err(Error::MalformedXml {
                position: 0,
                reason: format!(
                    "an iq result answers an <iq type=\"get|set\">, not <{} type={:?}>",
                    self.name(),
                    self.attr("type")
                ),
            });
        }
        let mut reply = Element::new("iq", self.ns());
        reply.set_attr("type", "result");
        let mut skel = self.reply_skeleton();
        for key in ["id", "from", "to"] {
            if let Some(v) = skel.remove_attr(key) {
                reply.set_attr(key, v);
            }
        }
        Ok(reply)
    }

    /// The error reply to this stanza (RFC 6120 §8.3): same name, namespace and `id`, `from`/`to`
    /// swapped, `type="error"`, and an `<error>` with the condition's default type and its
    /// XEP-0086 legacy `code`.
    pub fn error_reply(&self, condition: Condition, text: Option<&str>) -> Element {
        self.error_reply_typed(condition, condition.default_type(), text)
    }

    /// As [`error_reply`](Self::error_reply), with an explicit error type.
    pub fn error_reply_typed(
        &self,
        condition: Condition,
        kind: ErrorType,
        text: Option<&str>,
    ) -> Element {
        let skel = self.reply_skeleton();
        let mut reply = Element::new(self.name(), self.ns()).with_attr("type", "error");
        for (k, v) in skel.attrs() {
            reply.set_attr(k, v);
        }
        reply.with_child(condition.to_error_element(self.ns(), kind, text))
    }
}
