//! Printing events for people (`--format human`) or scripts (`--format json`, one object a line).

use std::io::Write;

use claws::{Packet, Via};
use serde_json::{json, Value};

use crate::options::Format;

/// Writes events to stdout in the chosen format, flushing after each line.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Printer {
    pub(crate) format: Format,
    /// Whether human lines colour their event word: see [`Printer::new`].
    colour: bool,
}

impl Printer {
    /// Human lines are coloured only when stdout is a terminal and `NO_COLOR` is unset or empty
    /// (<https://no-color.org>); JSON never is.
    pub(crate) fn new(format: Format) -> Self {
        use std::io::IsTerminal;
        Self::for_stdout(format, std::io::stdout().is_terminal())
    }

    /// As [`new`](Self::new), told whether stdout is a `terminal`.
    fn for_stdout(format: Format, terminal: bool) -> Self {
        let colour = format == Format::Human && colour_wanted(terminal);
        Self { format, colour }
    }

    /// `word` in `tone` when this printer colours, else as it is.
    pub(crate) fn paint(&self, word: &str, tone: Tone) -> String {
        paint(word, tone, self.colour)
    }

    /// Prints `human` or `json`, whichever the format asks for. A closed stdout (the reader
    /// went away) is ignored here; see [`try_line`](Self::try_line).
    pub(crate) fn line(&self, human: impl FnOnce() -> String, json: impl FnOnce() -> Value) {
        let _ = self.try_line(human, json);
    }

    /// As [`line`](Self::line), reporting whether the line was written.
    pub(crate) fn try_line(
        &self,
        human: impl FnOnce() -> String,
        json: impl FnOnce() -> Value,
    ) -> std::io::Result<()> {
        let text = match self.format {
            Format::Human => human(),
            Format::Json => json().to_string(),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{text}")?;
        out.flush()
    }

    /// `{"event":"connected","claw":NAME,"endpoint":URL}` (the endpoint when the claw has one,
    /// never with a password).
    pub(crate) fn connected(&self, claw: &str, endpoint: Option<&str>) {
        self.line(
            || match endpoint {
                Some(e) => format!(
                    "{}: claw `{claw}` is consuming, via {e}",
                    self.paint("connected", Tone::Good)
                ),
                None => format!(
                    "{}: claw `{claw}` is consuming",
                    self.paint("connected", Tone::Good)
                ),
            },
            || match endpoint {
                Some(e) => json!({"event": "connected", "claw": claw, "endpoint": e}),
                None => json!({"event": "connected", "claw": claw}),
            },
        );
    }

    /// `{"event":"consumer_lost","claw":NAME,"queue":Q,"reason":..}`.
    pub(crate) fn consumer_lost(&self, claw: &str, queue: &str, reason: &str) {
        self.line(
            || {
                format!(
                    "{}: claw `{claw}`, queue `{queue}`: {reason}; subscribing again",
                    self.paint("consumer lost", Tone::Warn)
                )
            },
            || json!({"event": "consumer_lost", "claw": claw, "queue": queue, "reason": reason}),
        );
    }

    /// `{"event":"consumer_restored","claw":NAME,"queue":Q}`.
    pub(crate) fn consumer_restored(&self, claw: &str, queue: &str) {
        self.line(
            || {
                format!(
                    "{}: claw `{claw}`, queue `{queue}`",
                    self.paint("consumer restored", Tone::Good)
                )
            },
            || json!({"event": "consumer_restored", "claw": claw, "queue": queue}),
        );
    }

    /// `{"event":"disconnected","claw":NAME,"reason":..}`.
    pub(crate) fn disconnected(&self, claw: &str, reason: &str) {
        self.line(
            || {
                format!(
                    "{}: claw `{claw}`: {reason}",
                    self.paint("disconnected", Tone::Warn)
                )
            },
            || json!({"event": "disconnected", "claw": claw, "reason": reason}),
        );
    }

    /// `{"event":"received","payload":TEXT,"via":{..}}`; fails if stdout is closed.
    pub(crate) fn received(&self, packet: &Packet, via: &Via) -> std::io::Result<()> {
        self.try_line(
            || {
                format!(
                    "{} {} via {}",
                    self.paint("received", Tone::Good),
                    payload_line(packet),
                    via_text(via)
                )
            },
            || json!({"event": "received", "payload": payload_text(packet), "via": via_json(via)}),
        )
    }
}

/// How an event word reads: [`paint`] gives each its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tone {
    /// Green: connected, consumer restored, received, done.
    Good,
    /// Yellow: disconnected, consumer lost.
    Warn,
    /// Bold: a heading (the demo's steps).
    Strong,
}

/// `word` wrapped in an ANSI SGR colour for `tone` and a reset, when `on`; else `word` as it
/// is. Only ever applied to the tool's own words, never to a payload (whose escape characters
/// [`escape_line`] shows as `\x1b`).
pub(crate) fn paint(word: &str, tone: Tone, on: bool) -> String {
    if !on {
        return word.to_owned();
    }
    let sgr = match tone {
        Tone::Good => "32",
        Tone::Warn => "33",
        Tone::Strong => "1",
    };
    format!("\x1b[{sgr}m{word}\x1b[0m")
}

/// Colour on a terminal unless `NO_COLOR` is set to something (an empty value does not count,
/// as <https://no-color.org> says).
pub(crate) fn colour_wanted(terminal: bool) -> bool {
    terminal && no_color_allows(std::env::var_os("NO_COLOR").as_deref())
}

/// Whether a `NO_COLOR` of this value (`None`: unset) leaves colour on.
fn no_color_allows(no_color: Option<&std::ffi::OsStr>) -> bool {
    no_color.is_none_or(|v| v.is_empty())
}

/// The payload as text (invalid UTF-8 replaced).
pub(crate) fn payload_text(packet: &Packet) -> String {
    String::from_utf8_lossy(packet.as_bytes()).into_owned()
}

/// The payload for a human line: one line whatever it holds. Newlines, tabs and every other
/// control character (terminal escapes included) are escaped (`\n`, `\t`, `\x1b`, `\u{85}`),
/// and so is the backslash (`\\`), so that the line reads back unambiguously; `--format json`
/// gives the exact text.
pub(crate) fn payload_line(packet: &Packet) -> String {
    escape_line(&payload_text(packet))
}

/// `text` on one line, escaped as [`payload_line`] says.
pub(crate) fn escape_line(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            // C1 controls, and the line and paragraph separators.
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// `{"jid":..,"exchange":..,"claw":..,"id":..,"queue":..}`, absent values null; `from` and
/// `traceparent` (the sender's trace context) when the delivery carried them.
pub(crate) fn via_json(via: &Via) -> Value {
    let mut v = json!({
        "jid": via.jid,
        "exchange": via.exchange,
        "claw": &*via.claw,
        "id": via.id,
        "queue": via.queue.as_str(),
    });
    if let Some(from) = &via.from {
        v["from"] = json!(from.as_str());
    }
    if let Some(trace) = &via.trace {
        v["traceparent"] = json!(trace.to_string());
    }
    v
}

/// `queue=.. jid=.. exchange=.. claw=.. id=.. from=..` for people.
pub(crate) fn via_text(via: &Via) -> String {
    format!(
        "queue={} jid={} exchange={} claw={} id={} from={}",
        via.queue,
        via.jid,
        via.exchange.as_deref().unwrap_or("-"),
        via.claw,
        via.id.as_deref().unwrap_or("-"),
        via.from.as_ref().map(|j| j.as_str()).unwrap_or("-"),
    )
}

#[cfg(test)]
mod tests {
    use super::{escape_line, no_color_allows, paint, Printer, Tone};
    use crate::options::Format;

    #[test]
    fn colour_is_an_sgr_around_the_word_only_when_on() {
        assert_eq!(
            paint("connected", Tone::Good, true),
            "\x1b[32mconnected\x1b[0m"
        );
        assert_eq!(
            paint("consumer lost", Tone::Warn, true),
            "\x1b[33mconsumer lost\x1b[0m"
        );
        assert_eq!(
            paint("1. Direct", Tone::Strong, true),
            "\x1b[1m1. Direct\x1b[0m"
        );
        for tone in [Tone::Good, Tone::Warn, Tone::Strong] {
            assert_eq!(paint("received", tone, false), "received");
        }
        let on = Printer {
            format: Format::Human,
            colour: true,
        };
        assert_eq!(on.paint("received", Tone::Good), "\x1b[32mreceived\x1b[0m");
    }

    #[test]
    fn no_color_set_to_anything_turns_colour_off() {
        use std::ffi::OsStr;
        assert!(no_color_allows(None));
        assert!(no_color_allows(Some(OsStr::new(""))));
        assert!(!no_color_allows(Some(OsStr::new("1"))));
        assert!(!no_color_allows(Some(OsStr::new("0"))));
    }

    #[test]
    fn json_and_a_pipe_are_never_coloured() {
        assert!(!Printer::for_stdout(Format::Json, true).colour);
        assert!(!Printer::for_stdout(Format::Human, false).colour);
        assert!(!super::colour_wanted(false));
        let plain = Printer::for_stdout(Format::Human, false);
        assert_eq!(plain.paint("received", Tone::Good), "received");
    }

    #[test]
    fn a_payload_is_one_line() {
        assert_eq!(
            escape_line("<message>\n  <body>a\tb\r\n</body>\n</message>"),
            "<message>\\n  <body>a\\tb\\r\\n</body>\\n</message>"
        );
        assert_eq!(escape_line("\u{1b}[31mred\u{7f}"), "\\x1b[31mred\\x7f");
        assert_eq!(escape_line("a\u{85}b\u{2028}c"), "a\\u{85}b\\u{2028}c");
        assert_eq!(escape_line(r"C:\n"), r"C:\\n");
        assert_eq!(escape_line("héllo <b/>"), "héllo <b/>");
    }
}
