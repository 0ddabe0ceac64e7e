//! Property tests: serialising a parsed stanza gives equivalent XML, and the parser never panics.

use claws_core::stanza::{Element, Limits};
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    // Printable text, markup characters, and characters beyond the BMP.
    "[a-zA-Z0-9 <>&'\"=;/\u{e9}\u{4e2d}\u{1F600}\n\t]{1,24}"
}

fn element() -> impl Strategy<Value = Element> {
    let name = "[a-z][a-z0-9_-]{0,7}";
    let ns = proptest::option::of(prop_oneof![
        Just("jabber:client".to_owned()),
        Just("urn:xmpp:ping".to_owned()),
        Just("urn:x:y".to_owned()),
    ]);
    let attrs = proptest::collection::btree_map("[a-z][a-z0-9]{0,5}", text(), 0..4);
    let leaf = (name, ns, attrs).prop_map(|(name, ns, attrs)| {
        attrs
            .into_iter()
            .fold(Element::new(name, ns.as_deref()), |e, (k, v)| {
                e.with_attr(k, v)
            })
    });
    leaf.prop_recursive(4, 32, 4, |inner| {
        (
            inner.clone(),
            proptest::collection::vec(prop_oneof![inner.prop_map(Ok), text().prop_map(Err)], 0..4),
        )
            .prop_map(|(parent, children)| {
                children.into_iter().fold(parent, |p, c| match c {
                    Ok(child) => p.with_child(child),
                    Err(text) => p.with_text(text),
                })
            })
    })
}

proptest! {
    #[test]
    fn serialise_then_parse_is_identity(el in element()) {
        let xml = el.to_string();
        let again = Element::parse(xml.as_bytes()).map_err(|e| TestCaseError::fail(format!("{e}: {xml}")))?;
        prop_assert_eq!(&again, &el);
        prop_assert_eq!(again.to_string(), xml);
    }

    #[test]
    fn parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Element::parse(&bytes);
    }

    #[test]
    fn parser_never_panics_on_xmlish(s in "(<[a-z:]{0,3}( [a-z:]{1,3}=['\"][^<]{0,4}['\"])?/?>|</[a-z:]{0,3}>|&[a-z#0-9]{0,5};|<!\\[CDATA\\[|\\]\\]>|<!DOCTYPE|<\\?xml|[a-z ]){0,40}") {
        let limits = Limits { max_depth: 8, max_nodes: 50, ..Limits::default() };
        let _ = Element::parse_with(s.as_bytes(), &limits);
    }
}
