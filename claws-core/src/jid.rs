//! JIDs (RFC 7622), from the well-kept [`jid`] crate, with claws' error messages.
//!
//! [`Jid`] may be bare or full; [`BareJid`] and [`FullJid`] are trusted once built.

pub use jid::{BareJid, FullJid, Jid};

use crate::{Error, Result};

/// Parses and validates a JID, full or bare.
///
/// ```
/// let jid = claws_core::jid::parse("news@example.com/worker-1")?;
/// assert_eq!(jid.to_bare().as_str(), "news@example.com");
/// assert!(claws_core::jid::parse("a@b@c").is_err());
/// # Ok::<(), claws_core::Error>(())
/// ```
pub fn parse(input: &str) -> Result<Jid> {
    Jid::new(input).map_err(|e| invalid(input, e))
}

/// A JID as a builder takes it: a [`Jid`] already parsed, or a string parsed (and checked)
/// when the claw is built, so a builder call never fails half-way.
///
/// ```
/// use claws_core::jid::{self, JidInput};
/// let a: JidInput = "svc@example.com/w1".into();
/// let b: JidInput = jid::parse("svc@example.com/w1")?.into();
/// assert_eq!(a.resolve()?, b.resolve()?);
/// assert!(JidInput::from("a@b@c").resolve().is_err());
/// # Ok::<(), claws_core::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JidInput(JidSource);

#[derive(Debug, Clone, PartialEq, Eq)]
enum JidSource {
    Parsed(Jid),
    Text(String),
}

impl JidInput {
    /// The JID, parsed if it was given as a string.
    pub fn resolve(self) -> Result<Jid> {
        match self.0 {
            JidSource::Parsed(jid) => Ok(jid),
            JidSource::Text(text) => parse(&text),
        }
    }
}

impl From<&str> for JidInput {
    fn from(s: &str) -> Self {
        Self(JidSource::Text(s.to_owned()))
    }
}

impl From<String> for JidInput {
    fn from(s: String) -> Self {
        Self(JidSource::Text(s))
    }
}

impl From<&String> for JidInput {
    fn from(s: &String) -> Self {
        Self(JidSource::Text(s.clone()))
    }
}

impl From<Jid> for JidInput {
    fn from(jid: Jid) -> Self {
        Self(JidSource::Parsed(jid))
    }
}

impl From<&Jid> for JidInput {
    fn from(jid: &Jid) -> Self {
        Self(JidSource::Parsed(jid.clone()))
    }
}

impl From<FullJid> for JidInput {
    fn from(jid: FullJid) -> Self {
        Self(JidSource::Parsed(jid.into()))
    }
}

impl From<BareJid> for JidInput {
    fn from(jid: BareJid) -> Self {
        Self(JidSource::Parsed(jid.into()))
    }
}

/// Parses a JID that must carry a resource.
pub fn parse_full(input: &str, what: &'static str) -> Result<FullJid> {
    parse(input)?
        .try_into_full()
        .map_err(|bare| Error::NeedFullJid {
            jid: bare.to_string(),
            what,
        })
}

/// The last string parsed into a JID, and what it gave. Consecutive stanzas mostly share their
/// sender (and routing key), and normalising a JID costs far more than comparing strings, so a
/// claw's receiving task keeps one of these per thing it parses.
///
/// ```
/// let mut last = claws_core::jid::LastJid::default();
/// let a = last.parse("a@example.com/r");
/// assert_eq!(last.parse("a@example.com/r"), a); // compared, not parsed again
/// assert!(last.parse("a@b@c").is_none());
/// ```
#[derive(Debug, Default)]
pub struct LastJid(Option<(String, Option<Jid>)>);

impl LastJid {
    /// `raw` as a JID (`None` if it is not one), parsed only if it differs from the last.
    pub fn parse(&mut self, raw: &str) -> Option<Jid> {
        self.parse_with(raw, |s| Jid::new(s).ok())
    }

    /// Like [`parse`](Self::parse), with `parse` turning `raw` into a JID (for addresses that
    /// wrap one).
    pub fn parse_with(
        &mut self,
        raw: &str,
        parse: impl FnOnce(&str) -> Option<Jid>,
    ) -> Option<Jid> {
        match &self.0 {
            Some((last, jid)) if last == raw => jid.clone(),
            _ => {
                let jid = parse(raw);
                self.0 = Some((raw.to_owned(), jid.clone()));
                jid
            }
        }
    }
}

fn invalid(input: &str, err: jid::Error) -> Error {
    let reason = if input.is_empty() {
        "it is empty".to_owned()
    } else {
        err.to_string()
    };
    Error::InvalidJid {
        input: input.chars().take(300).collect(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_bare() {
        let full = parse("bot@example.com/r1").unwrap();
        assert!(!full.is_bare());
        assert_eq!(full.resource().map(|r| r.as_str()), Some("r1"));
        assert_eq!(full.to_bare().to_string(), "bot@example.com");
        let comp = parse("news.example.com").unwrap();
        assert!(comp.is_bare());
    }

    #[test]
    fn invalid_jids_say_why() {
        for bad in ["", "@example.com", "a@", "user@example.com/", "a@b@c"] {
            let err = parse(bad).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("invalid JID"), "{bad}: {msg}");
            assert!(matches!(err, Error::InvalidJid { .. }));
        }
        assert!(parse("").unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn full_required() {
        let err = parse_full("bot@example.com", "a worker").unwrap_err();
        assert!(
            err.to_string().contains("bot@example.com/worker-1"),
            "{err}"
        );
        assert!(parse_full("bot@example.com/x", "a worker").is_ok());
    }
}
