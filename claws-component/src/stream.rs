//! Streaming XML framing of an XMPP stream: bytes in (as TCP delivers them), [`Frame`]s out.
//!
//! A [`Framer`] is fed whatever each read returned ([`Framer::feed`]) and yields complete frames
//! ([`Framer::next_frame`]): the stream header, each top-level stanza with its exact bytes, a
//! `<stream:error/>`, or the end of the stream. A stanza split across reads waits for the rest;
//! several stanzas in one read come out one by one. A stanza (or unparsed run of bytes) over the
//! size limit, a DOCTYPE, or unbalanced tags are a [`FrameError`], after which the stream is
//! unusable.
//!
//! ```
//! use claws_component::stream::{Frame, Framer};
//! let mut framer = Framer::new(64 * 1024);
//! framer.feed(b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' id='s1'><message to='a@b'><bo");
//! assert!(matches!(framer.next_frame()?, Some(Frame::Header(h)) if h.id.as_deref() == Some("s1")));
//! assert!(framer.next_frame()?.is_none()); // the message is not complete yet
//! framer.feed(b"dy>hi</body></message><presence/>");
//! let Some(Frame::Stanza(m)) = framer.next_frame()? else { panic!() };
//! assert_eq!(m.bytes.as_ref(), b"<message to='a@b'><body>hi</body></message>");
//! assert_eq!(m.head.to.as_deref(), Some("a@b"));
//! assert!(matches!(framer.next_frame()?, Some(Frame::Stanza(p)) if p.head.name == "presence"));
//! # Ok::<(), claws_component::stream::FrameError>(())
//! ```

use bytes::Bytes;
use quick_xml::errors::{Error as XmlError, SyntaxError};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

/// Why a stream cannot be read any further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Happens when a stanza (or a run of bytes that does not finish one) exceeds the limit.
    #[error("a stanza of {size}+ bytes exceeds the {limit}-byte limit (raise `max_stanza_bytes` if such stanzas are legitimate)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
        /// How many bytes were buffered when the limit was hit.
        size: usize,
    },
    /// Happens when the bytes are not a well-formed XMPP stream.
    #[error("malformed XML stream: {0}")]
    Malformed(String),
}

/// The attributes of a stanza's (or the stream header's) root element that claws looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Head {
    /// The element's name as written (with its prefix, e.g. `stream:error`).
    pub name: String,
    /// `from`.
    pub from: Option<String>,
    /// `to`.
    pub to: Option<String>,
    /// `id`.
    pub id: Option<String>,
    /// `type`.
    pub kind: Option<String>,
}

impl Head {
    fn from_start(start: &BytesStart<'_>) -> Result<Self, FrameError> {
        let mut head = Head {
            name: String::from_utf8_lossy(start.name().as_ref()).into_owned(),
            ..Head::default()
        };
        for attr in start.attributes() {
            let attr =
                attr.map_err(|e| FrameError::Malformed(format!("in <{}>: {e}", head.name)))?;
            let slot = match attr.key.as_ref() {
                b"from" => &mut head.from,
                b"to" => &mut head.to,
                b"id" => &mut head.id,
                b"type" => &mut head.kind,
                _ => continue,
            };
            let value = attr
                .unescape_value()
                .map_err(|e| FrameError::Malformed(format!("in <{}>: {e}", head.name)))?;
            *slot = Some(value.into_owned());
        }
        Ok(head)
    }

    /// The head of the first element in `bytes` (a whole stanza, or at least its start tag).
    pub fn parse(bytes: &[u8]) -> Result<Self, FrameError> {
        let mut reader = Reader::from_reader(bytes);
        loop {
            match reader.read_event() {
                Ok(Event::Start(s)) | Ok(Event::Empty(s)) => return Head::from_start(&s),
                Ok(Event::Eof) => return Err(FrameError::Malformed("no element found".into())),
                Ok(Event::DocType(_)) => {
                    return Err(FrameError::Malformed("a DOCTYPE is not allowed".into()))
                }
                Ok(_) => {}
                Err(e) => return Err(FrameError::Malformed(e.to_string())),
            }
        }
    }

    /// The local name (without a prefix).
    pub fn local_name(&self) -> &str {
        self.name.rsplit(':').next().unwrap_or(&self.name)
    }
}

/// A complete top-level stanza: its head and its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stanza {
    /// The root element's name and addressing.
    pub head: Head,
    /// The stanza exactly as it was on the wire. Namespaces declared on the stream header (the
    /// default `jabber:component:accept`) are inherited there and so do not appear here.
    pub bytes: Bytes,
}

/// What a stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The `<stream:stream>` header (its `id` is what the handshake hashes).
    Header(Head),
    /// A top-level element other than a stream error.
    Stanza(Stanza),
    /// A `<stream:error>`: the peer is closing the stream.
    StreamError {
        /// The defined condition (`not-authorized`, `conflict`, ...), or `undefined-condition`.
        condition: String,
        /// The optional `<text>`.
        text: Option<String>,
    },
    /// `</stream:stream>`.
    End,
}

/// Splits a byte stream into [`Frame`]s. See the [module docs](self).
#[derive(Debug)]
pub struct Framer {
    /// Bytes not yet handed out: the current (incomplete) stanza starts at 0 when one is open.
    buf: Vec<u8>,
    /// How far `buf` has been parsed into whole events.
    scan: usize,
    /// 0 before the header, 1 inside the stream, 2+ inside a stanza.
    depth: usize,
    /// Names of the elements open inside the current stanza.
    open: Vec<Vec<u8>>,
    /// The current stanza's head, once its start tag is read.
    head: Option<Head>,
    max: usize,
    failed: Option<FrameError>,
}

const HEADER_LIMIT: usize = 64 * 1024;

enum Step {
    /// Keep scanning.
    Continue,
    /// A frame is complete; `buf[..end]` may be dropped.
    Frame(Frame, usize),
    /// The rest of the input has not arrived yet.
    NeedMore,
}

impl Framer {
    /// A framer that refuses stanzas larger than `max_stanza_bytes`.
    pub fn new(max_stanza_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            scan: 0,
            depth: 0,
            open: Vec::new(),
            head: None,
            max: max_stanza_bytes.max(1),
            failed: None,
        }
    }

    /// Appends bytes as they were read.
    pub fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// How many bytes are buffered and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next complete frame, `None` when more input is needed. After an error, every call
    /// returns the same error.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.scan_frame() {
            Ok(frame) => Ok(frame),
            Err(err) => {
                self.failed = Some(err.clone());
                Err(err)
            }
        }
    }

    fn scan_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let (event, consumed) = {
                let mut reader = Reader::from_reader(&self.buf[self.scan..]);
                let config = reader.config_mut();
                config.trim_text(false);
                // Each read starts a fresh reader mid-document: the framer checks end names.
                config.check_end_names = false;
                config.allow_unmatched_ends = true;
                config.expand_empty_elements = false;
                let event = match reader.read_event() {
                    Ok(event) => Ev::from_event(event, self.depth)?,
                    Err(err) => self.on_error(&err, reader.error_position())?,
                };
                (
                    event,
                    usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX),
                )
            };
            match self.on_event(event, consumed)? {
                Step::Continue => {}
                Step::Frame(frame, end) => {
                    self.buf.drain(..end);
                    self.scan = 0;
                    if end > self.max && !matches!(frame, Frame::Header(_)) {
                        return Err(FrameError::TooLarge {
                            limit: self.max,
                            size: end,
                        });
                    }
                    return Ok(Some(frame));
                }
                Step::NeedMore => {
                    if self.buf.len() > self.limit() {
                        return Err(FrameError::TooLarge {
                            limit: self.limit(),
                            size: self.buf.len(),
                        });
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// The size limit for what is being read: stanzas get `max`; the stream header (read at
    /// depth 0) at least 64 KiB, since it is no stanza.
    fn limit(&self) -> usize {
        if self.depth == 0 {
            self.max.max(HEADER_LIMIT)
        } else {
            self.max
        }
    }

    /// Handles one complete event that ended `consumed` bytes after `self.scan`.
    fn on_event(&mut self, event: Ev, consumed: usize) -> Result<Step, FrameError> {
        let end = self.scan + consumed;
        match (self.depth, event) {
            (_, Ev::NeedMore) => Ok(Step::NeedMore),
            (_, Ev::DocType) => Err(FrameError::Malformed(
                "a DOCTYPE is not allowed in an XMPP stream".into(),
            )),
            (0, Ev::Start { name, head }) => {
                if local(&name) != b"stream" {
                    return Err(FrameError::Malformed(format!(
                        "expected a <stream:stream> header, got <{}>",
                        String::from_utf8_lossy(&name)
                    )));
                }
                self.depth = 1;
                Ok(Step::Frame(Frame::Header(head.unwrap_or_default()), end))
            }
            (0, Ev::Blank | Ev::Markup) => self.skip(end),
            (0, other) => Err(FrameError::Malformed(format!(
                "expected a <stream:stream> header, got {}",
                other.describe()
            ))),
            (1, Ev::Start { name, head }) => {
                self.head = head;
                self.open.push(name);
                self.depth = 2;
                self.scan = end;
                Ok(Step::Continue)
            }
            (1, Ev::Empty { head }) => {
                // `buf` starts at this element: everything before it was dropped by `skip`.
                let frame = self.frame(head.unwrap_or_default(), end);
                Ok(Step::Frame(frame, end))
            }
            (1, Ev::End { .. }) => Ok(Step::Frame(Frame::End, end)),
            // Whitespace keepalives, stray text, comments: nothing to hand out.
            (1, _) => self.skip(end),
            (_, Ev::Start { name, .. }) => {
                self.open.push(name);
                self.depth += 1;
                self.scan = end;
                Ok(Step::Continue)
            }
            (_, Ev::End { name }) => {
                let expected = self.open.pop().unwrap_or_default();
                if name != expected {
                    return Err(FrameError::Malformed(format!(
                        "</{}> closes <{}>",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(&expected)
                    )));
                }
                self.depth -= 1;
                if self.depth == 1 {
                    let head = self.head.take().unwrap_or_default();
                    let frame = self.frame(head, end);
                    return Ok(Step::Frame(frame, end));
                }
                self.scan = end;
                Ok(Step::Continue)
            }
            (_, _) => {
                self.scan = end;
                Ok(Step::Continue)
            }
        }
    }

    /// Drops `buf[..end]` (between stanzas) and keeps scanning.
    fn skip(&mut self, end: usize) -> Result<Step, FrameError> {
        self.buf.drain(..end);
        self.scan = 0;
        Ok(Step::Continue)
    }

    fn frame(&self, head: Head, end: usize) -> Frame {
        let bytes = Bytes::copy_from_slice(&self.buf[..end]);
        if head.name == "stream:error" || (head.local_name() == "error" && head.name.contains(':'))
        {
            let (condition, text) = stream_error_details(&bytes);
            return Frame::StreamError { condition, text };
        }
        Frame::Stanza(Stanza { head, bytes })
    }

    /// A parse error: more input may complete the construct, or the stream is broken.
    fn on_error(&self, err: &XmlError, position: u64) -> Result<Ev, FrameError> {
        match err {
            XmlError::Syntax(
                SyntaxError::UnclosedTag
                | SyntaxError::UnclosedComment
                | SyntaxError::UnclosedCData
                | SyntaxError::UnclosedPIOrXmlDecl
                | SyntaxError::UnclosedDoctype,
            ) => Ok(Ev::NeedMore),
            // `<!` at the very end of the input: the rest of `<!--` or `<![CDATA[` is coming.
            XmlError::Syntax(SyntaxError::InvalidBangMarkup)
                if usize::try_from(position).is_ok_and(|p| self.scan + p + 2 >= self.buf.len()) =>
            {
                Ok(Ev::NeedMore)
            }
            other => Err(FrameError::Malformed(other.to_string())),
        }
    }
}

fn is_blank(text: &[u8]) -> bool {
    text.iter().all(u8::is_ascii_whitespace)
}

fn local(name: &[u8]) -> &[u8] {
    name.rsplit(|b| *b == b':').next().unwrap_or(name)
}

/// An event, copied out of the buffer so that the framer can change the buffer.
enum Ev {
    /// The input ends before the next event is complete.
    NeedMore,
    DocType,
    /// A start tag; its head is read only at the stream and stanza level.
    Start {
        name: Vec<u8>,
        head: Option<Head>,
    },
    Empty {
        head: Option<Head>,
    },
    End {
        name: Vec<u8>,
    },
    /// Whitespace-only text.
    Blank,
    /// Other text or CDATA.
    Text,
    /// An XML declaration, comment or processing instruction.
    Markup,
}

impl Ev {
    fn from_event(event: Event<'_>, depth: usize) -> Result<Self, FrameError> {
        let head = |start: &BytesStart<'_>| -> Result<Option<Head>, FrameError> {
            if depth <= 1 {
                Head::from_start(start).map(Some)
            } else {
                Ok(None)
            }
        };
        Ok(match event {
            Event::Eof => Ev::NeedMore,
            Event::DocType(_) => Ev::DocType,
            Event::Start(s) => Ev::Start {
                name: s.name().as_ref().to_vec(),
                head: head(&s)?,
            },
            Event::Empty(s) => Ev::Empty { head: head(&s)? },
            Event::End(e) => Ev::End {
                name: e.name().as_ref().to_vec(),
            },
            Event::Text(t) if is_blank(&t) => Ev::Blank,
            Event::Text(_) | Event::CData(_) => Ev::Text,
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => Ev::Markup,
        })
    }

    fn describe(&self) -> String {
        match self {
            Ev::Start { name, .. } => format!("<{}>", String::from_utf8_lossy(name)),
            Ev::Empty { head } => format!("<{}/>", head.as_ref().map_or("?", |h| h.name.as_str())),
            Ev::End { name } => format!("</{}>", String::from_utf8_lossy(name)),
            Ev::Text | Ev::Blank => "text".into(),
            _ => "markup".into(),
        }
    }
}

/// The condition and text of a `<stream:error>`.
fn stream_error_details(bytes: &[u8]) -> (String, Option<String>) {
    let mut reader = Reader::from_reader(bytes);
    let mut depth = 0usize;
    let mut condition = None;
    let mut text: Option<String> = None;
    let mut in_text = false;
    loop {
        match reader.read_event() {
            Ok(Event::Start(s)) => {
                depth += 1;
                if depth == 2 {
                    if s.local_name().as_ref() == b"text" {
                        in_text = true;
                    } else if condition.is_none() {
                        condition =
                            Some(String::from_utf8_lossy(s.local_name().as_ref()).into_owned());
                    }
                }
            }
            Ok(Event::Empty(s)) if depth == 1 && s.local_name().as_ref() != b"text" => {
                condition.get_or_insert_with(|| {
                    String::from_utf8_lossy(s.local_name().as_ref()).into_owned()
                });
            }
            Ok(Event::Text(t)) if in_text => {
                let t = t.unescape().map(|c| c.into_owned()).unwrap_or_default();
                text.get_or_insert_with(String::new).push_str(&t);
            }
            Ok(Event::End(_)) => {
                in_text = false;
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Eof) | Err(_) => break,
            Ok(_) => {}
        }
    }
    (
        condition.unwrap_or_else(|| "undefined-condition".into()),
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = b"<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' from='comp.example' id='abc123'>";

    fn drain(framer: &mut Framer) -> Result<Vec<Frame>, FrameError> {
        let mut out = Vec::new();
        while let Some(f) = framer.next_frame()? {
            out.push(f);
        }
        Ok(out)
    }

    fn stanzas(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .filter_map(|f| match f {
                Frame::Stanza(s) => Some(String::from_utf8(s.bytes.to_vec()).unwrap()),
                _ => None,
            })
            .collect()
    }

    const BODY: &str = concat!(
        "<message from='u@d/r' to='e@c' id='m1'><body>a &amp; b &lt;c&gt;</body><!-- x --><![CDATA[<raw>]]></message>",
        " \n ",
        "<iq type='get' id='p1' from='u@d/r' to='e@c'><ping xmlns='urn:xmpp:ping'/></iq>",
        "<presence from='u@d/r'/>",
        "<message from='u@d/r' to='e@c'><body>caf\u{e9} \u{1f980}</body><x><y><z/></y></x></message>",
    );

    #[test]
    fn header_and_several_stanzas_in_one_read() {
        let mut f = Framer::new(1 << 16);
        f.feed(HEADER);
        f.feed(BODY.as_bytes());
        let frames = drain(&mut f).unwrap();
        let Frame::Header(h) = &frames[0] else {
            panic!("{frames:?}")
        };
        assert_eq!(h.id.as_deref(), Some("abc123"));
        assert_eq!(h.from.as_deref(), Some("comp.example"));
        let s = stanzas(&frames);
        assert_eq!(s.len(), 4);
        assert_eq!(s.concat(), BODY.replace(" \n ", ""));
        let Frame::Stanza(m) = &frames[1] else {
            panic!()
        };
        assert_eq!(m.head.name, "message");
        assert_eq!(m.head.id.as_deref(), Some("m1"));
        assert_eq!(m.head.from.as_deref(), Some("u@d/r"));
        let Frame::Stanza(iq) = &frames[2] else {
            panic!()
        };
        assert_eq!(iq.head.kind.as_deref(), Some("get"));
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn every_split_point_gives_the_same_frames() {
        let mut whole = HEADER.to_vec();
        whole.extend_from_slice(BODY.as_bytes());
        whole.extend_from_slice(b"</stream:stream>");
        let mut reference = Framer::new(1 << 16);
        reference.feed(&whole);
        let expected = drain(&mut reference).unwrap();
        assert!(matches!(expected.last(), Some(Frame::End)));
        // Two cuts anywhere, even inside a tag, an entity, a comment, a CDATA or a UTF-8 char.
        // Every single cut (b == len), and pairs of cuts on a grid.
        for a in 0..whole.len() {
            let step = if a % 5 == 0 { 11 } else { whole.len() };
            for b in (a..whole.len()).step_by(step).chain([whole.len()]) {
                let mut f = Framer::new(1 << 16);
                let mut got = Vec::new();
                for part in [&whole[..a], &whole[a..b], &whole[b..]] {
                    f.feed(part);
                    got.extend(drain(&mut f).unwrap());
                }
                assert_eq!(got, expected, "cuts at {a} and {b}");
            }
        }
    }

    #[test]
    fn byte_by_byte() {
        let mut f = Framer::new(1 << 16);
        let mut got = Vec::new();
        for b in HEADER.iter().chain(BODY.as_bytes()) {
            f.feed(&[*b]);
            got.extend(drain(&mut f).unwrap());
        }
        assert_eq!(stanzas(&got).len(), 4);
    }

    #[test]
    fn whitespace_keepalives_are_skipped() {
        let mut f = Framer::new(64);
        f.feed(HEADER);
        drain(&mut f).unwrap();
        for _ in 0..1000 {
            f.feed(b" ");
            assert!(drain(&mut f).unwrap().is_empty());
        }
        assert_eq!(f.buffered(), 0);
        f.feed(b"<presence/>");
        assert_eq!(stanzas(&drain(&mut f).unwrap()), ["<presence/>"]);
    }

    #[test]
    fn oversize_stanzas_are_refused_complete_or_not() {
        let mut f = Framer::new(100);
        f.feed(HEADER);
        drain(&mut f).unwrap();
        f.feed(b"<message><body>");
        assert!(drain(&mut f).unwrap().is_empty());
        f.feed(&[b'x'; 200]);
        let err = drain(&mut f).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { limit: 100, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("max_stanza_bytes"));
        // Stays failed.
        f.feed(b"</body></message>");
        assert!(f.next_frame().is_err());

        let mut f = Framer::new(100);
        f.feed(HEADER);
        let big = format!("<message><body>{}</body></message>", "y".repeat(100));
        f.feed(big.as_bytes());
        assert!(matches!(drain(&mut f), Err(FrameError::TooLarge { .. })));

        // A stanza of exactly the limit passes.
        let mut f = Framer::new(30);
        f.feed(HEADER);
        let fits = format!("<m>{}</m>", "z".repeat(23));
        assert_eq!(fits.len(), 30);
        f.feed(fits.as_bytes());
        assert_eq!(stanzas(&drain(&mut f).unwrap()), [fits]);
    }

    #[test]
    fn malformed_input_is_an_error() {
        for (bad, what) in [
            (&b"<message><body></message>"[..], "closes"),
            (b"<!DOCTYPE x><message/>", "DOCTYPE"),
            (b"<message a='1' a='2'/>", "message"),
            (b"<message><!x></message>", ""),
        ] {
            let mut f = Framer::new(1 << 16);
            f.feed(HEADER);
            f.feed(bad);
            let err = drain(&mut f).unwrap_err();
            assert!(matches!(err, FrameError::Malformed(_)), "{err}");
            assert!(err.to_string().contains(what), "{err}");
        }
        let mut f = Framer::new(1 << 16);
        f.feed(b"<html><body/>");
        let err = drain(&mut f).unwrap_err().to_string();
        assert!(
            err.contains("expected a <stream:stream> header, got <html>"),
            "{err}"
        );
    }

    #[test]
    fn stream_errors_and_end() {
        let mut f = Framer::new(1 << 16);
        f.feed(HEADER);
        f.feed(b"<stream:error><not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/><text xmlns='urn:ietf:params:xml:ns:xmpp-streams'>bad secret &amp; more</text></stream:error></stream:stream>");
        let frames = drain(&mut f).unwrap();
        assert_eq!(
            frames[1..],
            [
                Frame::StreamError {
                    condition: "not-authorized".into(),
                    text: Some("bad secret & more".into())
                },
                Frame::End
            ]
        );
        let mut f = Framer::new(1 << 16);
        f.feed(HEADER);
        f.feed(
            b"<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
        );
        assert_eq!(
            drain(&mut f).unwrap()[1],
            Frame::StreamError {
                condition: "conflict".into(),
                text: None
            }
        );
    }

    #[test]
    fn head_parse() {
        let h =
            Head::parse(b"<iq xmlns='jabber:client' type='get' id='a&amp;b' to='x@y'><ping/></iq>")
                .unwrap();
        assert_eq!(h.name, "iq");
        assert_eq!(h.id.as_deref(), Some("a&b"));
        assert_eq!(h.to.as_deref(), Some("x@y"));
        assert_eq!(h.from, None);
        assert!(Head::parse(b"just text").is_err());
    }
}
