//! RFC 6120 §8.3 stanza error conditions and types, with XEP-0086 legacy codes.

use std::fmt;

use super::Element;

/// The namespace of stanza error conditions.
pub const STANZAS_NS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";

/// A stanza error type (RFC 6120 §8.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// Retry after providing credentials.
    Auth,
    /// Do not retry.
    Cancel,
    /// Proceed (the condition was only a warning).
    Continue,
    /// Retry after changing the data sent.
    Modify,
    /// Retry after waiting.
    Wait,
}

impl ErrorType {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

macro_rules! conditions {
    ($($variant:ident => $name:literal, $kind:ident, $code:expr;)*) => {
        /// A defined stanza error condition (RFC 6120 §8.3.3).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Condition {
            $(
                #[doc = concat!("`<", $name, "/>`")]
                $variant,
            )*
        }

        impl Condition {
            /// Every condition.
            pub const ALL: &'static [Condition] = &[$(Condition::$variant),*];

            /// The element name, e.g. `service-unavailable`.
            pub fn as_str(self) -> &'static str {
                match self { $(Condition::$variant => $name),* }
            }

            /// The type RFC 6120 and XEP-0086 pair with this condition.
            pub fn default_type(self) -> ErrorType {
                match self { $(Condition::$variant => ErrorType::$kind),* }
            }

            /// The XEP-0086 legacy error `code`, where that table has one.
            pub fn legacy_code(self) -> Option<u16> {
                match self { $(Condition::$variant => $code),* }
            }

            /// The condition named `name`, if it is one.
            pub fn from_name(name: &str) -> Option<Self> {
                match name { $($name => Some(Condition::$variant),)* _ => None }
            }
        }
    };
}

conditions! {
    BadRequest => "bad-request", Modify, Some(400);
    Conflict => "conflict", Cancel, Some(409);
    FeatureNotImplemented => "feature-not-implemented", Cancel, Some(501);
    Forbidden => "forbidden", Auth, Some(403);
    Gone => "gone", Modify, Some(302);
    InternalServerError => "internal-server-error", Wait, Some(500);
    ItemNotFound => "item-not-found", Cancel, Some(404);
    JidMalformed => "jid-malformed", Modify, Some(400);
    NotAcceptable => "not-acceptable", Modify, Some(406);
    NotAllowed => "not-allowed", Cancel, Some(405);
    NotAuthorized => "not-authorized", Auth, Some(401);
    PolicyViolation => "policy-violation", Modify, None;
    RecipientUnavailable => "recipient-unavailable", Wait, Some(404);
    Redirect => "redirect", Modify, Some(302);
    RegistrationRequired => "registration-required", Auth, Some(407);
    RemoteServerNotFound => "remote-server-not-found", Cancel, Some(404);
    RemoteServerTimeout => "remote-server-timeout", Wait, Some(504);
    ResourceConstraint => "resource-constraint", Wait, Some(500);
    ServiceUnavailable => "service-unavailable", Cancel, Some(503);
    SubscriptionRequired => "subscription-required", Auth, Some(407);
    UndefinedCondition => "undefined-condition", Cancel, Some(500);
    UnexpectedRequest => "unexpected-request", Wait, Some(400);
}

impl Condition {
    /// `<error type=".." code=".."><condition xmlns=".."/><text>..</text></error>`, in the
    /// stanza's namespace `ns`.
    pub fn to_error_element(
        self,
        ns: Option<&str>,
        kind: ErrorType,
        text: Option<&str>,
    ) -> Element {
        let mut error = Element::new("error", ns).with_attr("type", kind.as_str());
        if let Some(code) = self.legacy_code() {
            error.set_attr("code", code.to_string());
        }
        let mut error = error.with_child(Element::new(self.as_str(), Some(STANZAS_NS)));
        if let Some(text) = text {
            error = error.with_child(Element::new("text", Some(STANZAS_NS)).with_text(text));
        }
        error
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_condition_round_trips_by_name() {
        for c in Condition::ALL {
            assert_eq!(Condition::from_name(c.as_str()), Some(*c));
        }
        assert_eq!(Condition::ALL.len(), 22);
    }

    #[test]
    fn message_error_reply() {
        let msg: Element = r#"<message xmlns="jabber:client" from="u@d/r" to="bot@d" id="m1" type="chat"><body>x</body></message>"#.parse().unwrap();
        let reply = msg.error_reply(Condition::ItemNotFound, Some("nobody here"));
        let xml = reply.to_string();
        assert_eq!(reply.attr("from"), Some("bot@d"));
        assert_eq!(reply.attr("to"), Some("u@d/r"));
        assert_eq!(reply.attr("id"), Some("m1"));
        assert_eq!(reply.attr("type"), Some("error"));
        let error = reply.get_child("error", "jabber:client").unwrap();
        assert_eq!(error.attr("type"), Some("cancel"));
        assert_eq!(error.attr("code"), Some("404"));
        assert!(error.get_child("item-not-found", STANZAS_NS).is_some());
        assert_eq!(
            error.get_child("text", STANZAS_NS).unwrap().text(),
            "nobody here"
        );
        assert_eq!(Element::parse(xml.as_bytes()).unwrap(), reply);
    }

    #[test]
    fn iq_result_only_for_requests() {
        let iq: Element = r#"<iq type="set" id="7" from="a@b/c" to="d"/>"#.parse().unwrap();
        assert_eq!(
            iq.iq_result().unwrap().to_string(),
            r#"<iq type="result" id="7" from="d" to="a@b/c"/>"#
        );
        let res: Element = r#"<iq type="result" id="7"/>"#.parse().unwrap();
        assert!(res.iq_result().is_err());
        let msg: Element = "<message/>".parse().unwrap();
        assert!(msg.iq_result().is_err());
    }

    #[test]
    fn policy_violation_has_no_legacy_code() {
        let el = Condition::PolicyViolation.to_error_element(None, ErrorType::Modify, None);
        assert_eq!(el.attr("code"), None);
    }
}
