//! [`Packet`]: a payload exactly as it travelled, parsed into a stanza only when asked.

use std::fmt;

use bytes::Bytes;

use crate::stanza::{Element, Limits};
use crate::Result;

/// A payload exactly as received or to be sent. Cloning is cheap (reference counted), and nothing
/// is parsed until [`Packet::parse`] is called, so non-XML payloads (JSON, raw bytes) pass through
/// untouched.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Packet {
    bytes: Bytes,
}

impl Packet {
    /// Wraps a payload without copying it.
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self {
            bytes: bytes.into(),
        }
    }

    /// The payload's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The payload as a cheap clone of its [`Bytes`].
    pub fn to_bytes(&self) -> Bytes {
        self.bytes.clone()
    }

    /// The payload, consuming the packet.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// The payload as UTF-8, if it is.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// The payload's length in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Whether the payload looks like XML (its first non-blank byte is `<`). Cheap; does not parse.
    pub fn looks_like_xml(&self) -> bool {
        self.bytes
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'<')
    }

    /// The value of attribute `name` on the payload's root element, reading only its start tag
    /// (cheap: the rest is not parsed). `None` when the payload is not XML, the root has no
    /// such attribute, or the value is not valid.
    ///
    /// ```
    /// let p = claws_core::Packet::from("<message from='a@b/c' to='d@e'><body>hi</body></message>");
    /// assert_eq!(p.root_attr("from").as_deref(), Some("a@b/c"));
    /// assert_eq!(p.root_attr("id"), None);
    /// ```
    pub fn root_attr(&self, name: &str) -> Option<String> {
        use quick_xml::events::Event;
        if !self.looks_like_xml() {
            return None;
        }
        let mut reader = quick_xml::Reader::from_reader(&self.bytes[..]);
        let mut buf = Vec::new();
        loop {
            match reader.read_event_into(&mut buf).ok()? {
                Event::Start(e) | Event::Empty(e) => {
                    let attr = e
                        .attributes()
                        .filter_map(|a| a.ok())
                        .find(|a| a.key.as_ref() == name.as_bytes())?;
                    return attr.unescape_value().ok().map(|v| v.into_owned());
                }
                Event::Decl(_) | Event::Comment(_) | Event::Text(_) | Event::PI(_) => {}
                _ => return None,
            }
            buf.clear();
        }
    }

    /// Parses the payload as one XML stanza with the default [`Limits`]. Parses on every call.
    pub fn parse(&self) -> Result<Element> {
        Element::parse_with(&self.bytes, &Limits::default())
    }
}

impl fmt::Debug for Packet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 200;
        match self.as_str() {
            Some(s) if s.len() <= SHOWN => write!(f, "Packet({s:?})"),
            Some(s) => {
                let cut = (0..=SHOWN)
                    .rev()
                    .find(|i| s.is_char_boundary(*i))
                    .unwrap_or(0);
                write!(f, "Packet({:?}... {} bytes)", &s[..cut], s.len())
            }
            None => write!(f, "Packet(<{} bytes, not UTF-8>)", self.bytes.len()),
        }
    }
}

impl From<&'static str> for Packet {
    fn from(s: &'static str) -> Self {
        Self::new(Bytes::from_static(s.as_bytes()))
    }
}

impl From<String> for Packet {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

impl From<Vec<u8>> for Packet {
    fn from(v: Vec<u8>) -> Self {
        Self::new(v)
    }
}

impl From<Bytes> for Packet {
    fn from(b: Bytes) -> Self {
        Self::new(b)
    }
}

impl From<&Element> for Packet {
    fn from(e: &Element) -> Self {
        Self::new(e.to_string())
    }
}

impl From<Element> for Packet {
    fn from(e: Element) -> Self {
        Self::from(&e)
    }
}
