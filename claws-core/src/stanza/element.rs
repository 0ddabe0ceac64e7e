//! The element tree, its bounded parser and its serialiser.

use std::fmt;

use quick_xml::escape::escape;
use quick_xml::events::{BytesStart, Event};
use quick_xml::name::ResolveResult;
use quick_xml::NsReader;

use crate::{Error, Result};

/// Bounds the parser keeps, so that hostile input gives an error instead of a blow-up in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload accepted, in bytes.
    pub max_bytes: usize,
    /// Deepest element nesting accepted.
    pub max_depth: usize,
    /// Most nodes (elements and text runs) in one stanza.
    pub max_nodes: usize,
    /// Most attributes on one element.
    pub max_attributes: usize,
}

impl Default for Limits {
    /// 16 MiB, depth 64, 100 000 nodes, 256 attributes per element.
    fn default() -> Self {
        Self {
            max_bytes: 16 << 20,
            max_depth: 64,
            max_nodes: 100_000,
            max_attributes: 256,
        }
    }
}

/// A child of an [`Element`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A nested element.
    Element(Element),
    /// Text (CDATA sections become text; adjacent runs are merged).
    Text(String),
}

/// An XML element: name, namespace, attributes, children.
///
/// Namespace declarations with a prefix (`xmlns:p`) are kept as attributes so that prefixed
/// attributes stay valid; the default namespace is the element's [`ns`](Element::ns) and is
/// written only where it changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    name: String,
    ns: Option<String>,
    attrs: Vec<(String, String)>,
    children: Vec<Node>,
}

impl Element {
    /// A new element with no attributes and no children.
    pub fn new(name: impl Into<String>, ns: Option<&str>) -> Self {
        Self {
            name: name.into(),
            ns: ns.map(str::to_owned),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Sets an attribute (replacing one of the same name).
    #[must_use]
    pub fn with_attr(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Appends a child element.
    #[must_use]
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Appends text.
    #[must_use]
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        self.push_text(text.into());
        self
    }

    /// The local name, e.g. `iq`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace, e.g. `jabber:client`.
    pub fn ns(&self) -> Option<&str> {
        self.ns.as_deref()
    }

    /// Whether the element has this local name and namespace.
    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns.as_deref() == Some(ns)
    }

    /// An attribute's value.
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// All attributes, in document order.
    pub fn attrs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.attrs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Sets an attribute (replacing one of the same name).
    pub fn set_attr(&mut self, name: impl Into<String>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    /// Removes an attribute, returning its value.
    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let at = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(at).1)
    }

    /// The children, elements and text.
    pub fn nodes(&self) -> &[Node] {
        &self.children
    }

    /// The child elements.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    /// The first child element with this name and namespace.
    pub fn get_child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    /// The element's direct text, concatenated.
    pub fn text(&self) -> String {
        self.children
            .iter()
            .filter_map(|n| match n {
                Node::Text(t) => Some(t.as_str()),
                Node::Element(_) => None,
            })
            .collect()
    }

    /// Drops text children that are only whitespace, recursively (snatch's `trimmed` option).
    pub fn trim_whitespace(&mut self) {
        self.children.retain(|n| match n {
            Node::Text(t) => !t.chars().all(char::is_whitespace),
            Node::Element(_) => true,
        });
        for n in &mut self.children {
            if let Node::Element(e) = n {
                e.trim_whitespace();
            }
        }
    }

    fn push_text(&mut self, text: String) {
        if text.is_empty() {
            return;
        }
        if let Some(Node::Text(last)) = self.children.last_mut() {
            last.push_str(&text);
        } else {
            self.children.push(Node::Text(text));
        }
    }

    /// Parses one element from `input` with the default [`Limits`].
    pub fn parse(input: &[u8]) -> Result<Self> {
        Self::parse_with(input, &Limits::default())
    }

    /// Parses one element from `input` within `limits`. A DOCTYPE, an undeclared entity, a second
    /// root, unbalanced tags or anything over a limit is an [`Error::MalformedXml`].
    pub fn parse_with(input: &[u8], limits: &Limits) -> Result<Self> {
        if input.len() > limits.max_bytes {
            return Err(malformed(
                0,
                format!(
                    "the payload is {} bytes, over the {}-byte limit",
                    input.len(),
                    limits.max_bytes
                ),
            ));
        }
        Parser::new(input, limits).run()
    }
}

fn malformed(position: u64, reason: impl Into<String>) -> Error {
    Error::MalformedXml {
        position,
        reason: reason.into(),
    }
}

struct Parser<'a> {
    reader: NsReader<&'a [u8]>,
    tree: Tree<'a>,
}

/// The tree under construction, apart from the reader so that both can be borrowed at once.
struct Tree<'a> {
    limits: &'a Limits,
    stack: Vec<Element>,
    root: Option<Element>,
    nodes: usize,
}

impl<'a> Parser<'a> {
    fn new(input: &'a [u8], limits: &'a Limits) -> Self {
        let mut reader = NsReader::from_reader(input);
        let config = reader.config_mut();
        config.trim_text(false);
        config.check_end_names = true;
        config.check_comments = true;
        config.expand_empty_elements = false;
        Self {
            reader,
            tree: Tree {
                limits,
                stack: Vec::new(),
                root: None,
                nodes: 0,
            },
        }
    }

    fn run(mut self) -> Result<Element> {
        loop {
            let pos = self.reader.buffer_position();
            let (ns, event) = match self.reader.read_resolved_event() {
                Ok(ok) => ok,
                Err(e) => {
                    let at = self.reader.error_position();
                    return Err(malformed(at, e.to_string()));
                }
            };
            let tree = &mut self.tree;
            match event {
                Event::Start(start) => {
                    let el = tree.open(resolve(ns, pos)?, &start, pos)?;
                    if tree.stack.len() >= tree.limits.max_depth {
                        return Err(malformed(
                            pos,
                            format!("elements nest deeper than {}", tree.limits.max_depth),
                        ));
                    }
                    tree.stack.push(el);
                }
                Event::Empty(start) => {
                    let el = tree.open(resolve(ns, pos)?, &start, pos)?;
                    tree.close(el);
                }
                Event::End(_) => {
                    let el = tree
                        .stack
                        .pop()
                        .ok_or_else(|| malformed(pos, "closing tag with no open element"))?;
                    tree.close(el);
                }
                Event::Text(text) => {
                    let text = text.unescape().map_err(|e| malformed(pos, e.to_string()))?;
                    tree.text(&text, pos)?;
                }
                Event::CData(cdata) => {
                    let text = std::str::from_utf8(&cdata)
                        .map_err(|e| malformed(pos, format!("CDATA is not UTF-8: {e}")))?;
                    tree.text(text, pos)?;
                }
                Event::DocType(_) => {
                    return Err(malformed(
                        pos,
                        "DOCTYPE is not allowed in a stanza (RFC 6120 section 11.1)",
                    ))
                }
                Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
                Event::Eof => break,
            }
        }
        let pos = self.reader.buffer_position();
        if let Some(open) = self.tree.stack.last() {
            return Err(malformed(
                pos,
                format!("unexpected end: <{}> is not closed", open.name),
            ));
        }
        self.tree
            .root
            .ok_or_else(|| malformed(pos, "no element found (the payload is empty or only text)"))
    }
}

fn resolve(ns: ResolveResult<'_>, pos: u64) -> Result<Option<String>> {
    match ns {
        ResolveResult::Bound(ns) => Ok(Some(utf8(ns.as_ref(), pos)?.to_owned())),
        ResolveResult::Unbound => Ok(None),
        ResolveResult::Unknown(prefix) => Err(malformed(
            pos,
            format!(
                "undeclared namespace prefix `{}`",
                String::from_utf8_lossy(&prefix)
            ),
        )),
    }
}

impl Tree<'_> {
    fn count_node(&mut self, pos: u64) -> Result<()> {
        self.nodes += 1;
        if self.nodes > self.limits.max_nodes {
            return Err(malformed(
                pos,
                format!("more than {} nodes in one stanza", self.limits.max_nodes),
            ));
        }
        Ok(())
    }

    fn text(&mut self, text: &str, pos: u64) -> Result<()> {
        match self.stack.last_mut() {
            Some(parent) => {
                if !text.is_empty() {
                    let merges = matches!(parent.children.last(), Some(Node::Text(_)));
                    parent.push_text(text.to_owned());
                    if !merges {
                        self.count_node(pos)?;
                    }
                }
                Ok(())
            }
            None if text.chars().all(char::is_whitespace) => Ok(()),
            None => Err(malformed(pos, "text outside the root element")),
        }
    }

    fn open(&mut self, ns: Option<String>, start: &BytesStart<'_>, pos: u64) -> Result<Element> {
        if self.root.is_some() {
            return Err(malformed(pos, "more than one root element"));
        }
        self.count_node(pos)?;
        let name = utf8(start.local_name().as_ref(), pos)?.to_owned();
        let mut el = Element::new(name, None);
        el.ns = ns;
        for attr in start.attributes().with_checks(true) {
            let attr = attr.map_err(|e| malformed(pos, e.to_string()))?;
            let key = utf8(attr.key.as_ref(), pos)?;
            if key == "xmlns" {
                continue;
            }
            if el.attrs.len() >= self.limits.max_attributes {
                return Err(malformed(
                    pos,
                    format!(
                        "more than {} attributes on <{}>",
                        self.limits.max_attributes, el.name
                    ),
                ));
            }
            let value = attr
                .unescape_value()
                .map_err(|e| malformed(pos, e.to_string()))?;
            el.attrs.push((key.to_owned(), value.into_owned()));
        }
        Ok(el)
    }

    fn close(&mut self, el: Element) {
        match self.stack.last_mut() {
            Some(parent) => parent.children.push(Node::Element(el)),
            None => self.root = Some(el),
        }
    }
}

fn utf8(bytes: &[u8], pos: u64) -> Result<&str> {
    std::str::from_utf8(bytes).map_err(|e| malformed(pos, format!("not UTF-8: {e}")))
}

impl Element {
    fn write(&self, out: &mut impl fmt::Write, parent_ns: Option<&str>) -> fmt::Result {
        write!(out, "<{}", self.name)?;
        if self.ns.as_deref() != parent_ns {
            write!(
                out,
                " xmlns=\"{}\"",
                escape(self.ns.as_deref().unwrap_or(""))
            )?;
        }
        for (k, v) in &self.attrs {
            write!(out, " {k}=\"{}\"", escape(v.as_str()))?;
        }
        if self.children.is_empty() {
            return out.write_str("/>");
        }
        out.write_char('>')?;
        for child in &self.children {
            match child {
                Node::Element(e) => e.write(out, self.ns.as_deref())?,
                Node::Text(t) => out.write_str(&escape(t.as_str()))?,
            }
        }
        write!(out, "</{}>", self.name)
    }
}

impl fmt::Display for Element {
    /// Serialises the element as XML; parsing the output gives an equal element.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, None)
    }
}

impl std::str::FromStr for Element {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_message() {
        let xml = r#"<message xmlns="jabber:client" to="a@b/c" id="1" xml:lang="en"><body>hi &amp; &#x1F600;</body><x xmlns="urn:x"/></message>"#;
        let el = Element::parse(xml.as_bytes()).unwrap();
        assert!(el.is("message", "jabber:client"));
        assert_eq!(el.attr("to"), Some("a@b/c"));
        assert_eq!(el.attr("xml:lang"), Some("en"));
        assert_eq!(
            el.get_child("body", "jabber:client").unwrap().text(),
            "hi & 😀"
        );
        assert!(el.get_child("x", "urn:x").is_some());
        let again = Element::parse(el.to_string().as_bytes()).unwrap();
        assert_eq!(el, again);
    }

    #[test]
    fn cdata_becomes_text() {
        let el = Element::parse(b"<a>x<![CDATA[<not a tag>]]>y</a>").unwrap();
        assert_eq!(el.text(), "x<not a tag>y");
        assert_eq!(el.nodes().len(), 1);
        assert_eq!(el.to_string(), "<a>x&lt;not a tag&gt;y</a>");
    }

    #[test]
    fn prefixed_names_keep_their_namespace() {
        let el = Element::parse(br#"<p:a xmlns:p="urn:p" p:x="1"><p:b/></p:a>"#).unwrap();
        assert_eq!(el.ns(), Some("urn:p"));
        assert_eq!(el.children().next().unwrap().ns(), Some("urn:p"));
        assert_eq!(Element::parse(el.to_string().as_bytes()).unwrap(), el);
    }

    fn err(input: &[u8]) -> String {
        match Element::parse(input) {
            Err(Error::MalformedXml { reason, .. }) => reason,
            other => panic!("expected MalformedXml, got {other:?}"),
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        assert!(err(b"").contains("no element"));
        assert!(err(b"just text").contains("text outside"));
        assert!(err(b"<a><b></a>").len() > 3);
        assert!(err(b"<a>").contains("not closed"));
        assert!(err(b"<a/><b/>").contains("more than one root"));
        assert!(err(b"<p:a/>").contains("undeclared namespace prefix"));
        assert!(!err(b"<a x='1' x='2'/>").is_empty());
        assert!(!err(b"<a>&bogus;</a>").is_empty());
        assert!(!err(b"<a \xff='1'/>").is_empty());
    }

    #[test]
    fn hostile_input_is_bounded() {
        let deep = "<a>".repeat(100_000);
        assert!(err(deep.as_bytes()).contains("deeper"));
        let bomb =
            r#"<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]><a>&lol2;</a>"#;
        assert!(err(bomb.as_bytes()).contains("DOCTYPE"));
        let wide = format!("<a>{}</a>", "<b/>".repeat(200_000));
        assert!(err(wide.as_bytes()).contains("nodes"));
        let attrs: String = (0..300).map(|i| format!(" a{i}='x'")).collect();
        assert!(err(format!("<a{attrs}/>").as_bytes()).contains("attributes"));
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(Element::parse_with(b"<aaaaaaaaaaaaa/>", &limits).is_err());
        // A huge attribute within the byte limit is fine and costs its size, no more.
        let big = format!("<a v='{}'/>", "x".repeat(1 << 20));
        assert_eq!(
            Element::parse(big.as_bytes())
                .unwrap()
                .attr("v")
                .unwrap()
                .len(),
            1 << 20
        );
    }
}
