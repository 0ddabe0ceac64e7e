//! What the claw does to a stanza before writing it to the server: checks that it is one
//! well-formed element (so a bad payload cannot corrupt the stream), moves it into the stream's
//! namespace, applies `adjust_attrs`, and checks its `from` (a server closes a component's
//! stream on a `from` outside the component's domain).

use bytes::Bytes;
use claws_core::stanza::{Element, Limits, Node};
use claws_core::{Error, Jid, Packet, Result};

use crate::config::Settings;

/// Namespaces a stanza may carry that mean "the stream's content namespace".
const CONTENT_NS: [&str; 3] = ["jabber:client", "jabber:server", "jabber:component:accept"];

/// The bytes to write for `packet` sent to `to` with correlation id `id`.
pub(crate) fn prepare(
    settings: &Settings,
    to: &Jid,
    id: Option<&str>,
    packet: &Packet,
) -> Result<Bytes> {
    let limits = Limits {
        max_bytes: settings.max_stanza_bytes.max(Limits::default().max_bytes),
        ..Limits::default()
    };
    let mut stanza = Element::parse_with(packet.as_bytes(), &limits).map_err(|err| match err {
        Error::MalformedXml { position, reason } => Error::MalformedXml {
            position,
            reason: format!(
                "the stanza for `{to}` on claw `{}` is not one well-formed XML element: {reason}",
                settings.name
            ),
        },
        other => other,
    })?;
    if let Some(ns) = stanza
        .ns()
        .filter(|ns| CONTENT_NS.contains(ns))
        .map(str::to_owned)
    {
        stanza = into_stream_ns(&stanza, &ns);
    }
    if settings.adjust_attrs {
        stanza.set_attr("to", to.as_str());
        if let Some(id) = id {
            stanza.set_attr("id", id);
        }
        if stanza.attr("from").is_none() {
            stanza.set_attr("from", settings.domain.as_str());
        }
    }
    if let Some(from) = stanza.attr("from") {
        check_from(settings, to, from)?;
    }
    Ok(Bytes::from(stanza.to_string()))
}

fn check_from(settings: &Settings, to: &Jid, from: &str) -> Result<()> {
    let refuse = |why: String| Error::Refused {
        to: to.to_string(),
        claw: settings.name.clone(),
        reason: why,
    };
    let jid = claws_core::jid::parse(from)
        .map_err(|e| refuse(format!("its `from` is not a JID: {e}")))?;
    if !jid.domain().as_str().eq_ignore_ascii_case(&settings.domain) {
        return Err(refuse(format!(
            "its from=`{from}` is outside the component's domain `{}`, and the server would close \
             the stream for it; send from a JID of `{}` (or omit `from` with adjust_attrs on)",
            settings.domain, settings.domain
        )));
    }
    Ok(())
}

/// A copy of `element` where every element in namespace `ns` (from the root down, as long as the
/// namespace does not change) has the stream's default namespace instead.
fn into_stream_ns(element: &Element, ns: &str) -> Element {
    let own = if element.ns() == Some(ns) {
        None
    } else {
        element.ns()
    };
    let mut copy = Element::new(element.name(), own);
    for (k, v) in element.attrs() {
        copy.set_attr(k, v);
    }
    for node in element.nodes() {
        copy = match node {
            Node::Element(child) if child.ns() == Some(ns) => {
                copy.with_child(into_stream_ns(child, ns))
            }
            Node::Element(child) => copy.with_child(child.clone()),
            Node::Text(text) => copy.with_text(text.clone()),
        };
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Secret, Settings};

    fn settings(adjust_attrs: bool) -> Settings {
        Settings {
            name: "component".into(),
            server: "127.0.0.1:1".into(),
            domain: "echo.example".into(),
            secret: Secret::new("x"),
            trimmed: false,
            adjust_attrs,
            ping: None,
            max_stanza_bytes: 1 << 20,
            timing: claws_core::config::Timing::default(),
        }
    }

    fn out(adjust: bool, to: &str, id: Option<&str>, xml: &'static str) -> Result<String> {
        let to = claws_core::jid::parse(to).unwrap();
        prepare(&settings(adjust), &to, id, &Packet::from(xml))
            .map(|b| String::from_utf8(b.to_vec()).unwrap())
    }

    #[test]
    fn adjust_attrs_sets_to_id_and_missing_from() {
        assert_eq!(
            out(
                true,
                "u@d/r",
                Some("i1"),
                "<message><body>x</body></message>"
            )
            .unwrap(),
            r#"<message to="u@d/r" id="i1" from="echo.example"><body>x</body></message>"#
        );
        assert_eq!(
            out(
                true,
                "u@d/r",
                None,
                r#"<iq type="result" id="p1" from="e@echo.example" to="other@d"/>"#
            )
            .unwrap(),
            r#"<iq type="result" id="p1" from="e@echo.example" to="u@d/r"/>"#
        );
        assert_eq!(
            out(false, "u@d/r", Some("zz"), "<presence/>").unwrap(),
            "<presence/>"
        );
    }

    #[test]
    fn client_namespace_becomes_the_stream_default() {
        assert_eq!(
            out(false, "u@d", None, r#"<message xmlns="jabber:client" from="echo.example"><body>hi</body><x xmlns="urn:x"><y/></x></message>"#).unwrap(),
            r#"<message from="echo.example"><body>hi</body><x xmlns="urn:x"><y/></x></message>"#
        );
    }

    #[test]
    fn bad_payloads_and_foreign_from_are_refused() {
        let err = out(true, "u@d", None, "<message><body></message>").unwrap_err();
        assert!(matches!(err, Error::MalformedXml { .. }), "{err}");
        assert!(
            err.to_string().contains("not one well-formed XML element"),
            "{err}"
        );
        let err = out(true, "u@d", None, "</stream:stream>").unwrap_err();
        assert!(matches!(err, Error::MalformedXml { .. }), "{err}");
        let err = out(
            true,
            "u@d",
            None,
            r#"<message from="bot@elsewhere.example"/>"#,
        )
        .unwrap_err();
        assert!(matches!(err, Error::Refused { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("outside the component's domain `echo.example`"),
            "{err}"
        );
    }
}
