//! Exit codes and the one-sentence error report.

use std::process::ExitCode;

use std::sync::Mutex;

use claws::runtime::{redact_url, scrub};
use claws::Error;
use percent_encoding::percent_decode_str;

/// Exit code: usage or configuration error.
pub(crate) const USAGE: u8 = 2;
/// Exit code: cannot connect.
pub(crate) const CONNECT: u8 = 3;
/// Exit code: anything else.
pub(crate) const OTHER: u8 = 1;

/// Why a command failed, and the exit code that says so.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) code: u8,
    pub(crate) message: String,
}

impl Failure {
    /// A usage or configuration error (exit 2).
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        Self {
            code: USAGE,
            message: message.into(),
        }
    }

    /// A connection failure (exit 3).
    pub(crate) fn connect(message: impl Into<String>) -> Self {
        Self {
            code: CONNECT,
            message: message.into(),
        }
    }

    /// Anything else (exit 1).
    pub(crate) fn other(message: impl Into<String>) -> Self {
        Self {
            code: OTHER,
            message: message.into(),
        }
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Config(_)
            | Error::InvalidJid { .. }
            | Error::NeedFullJid { .. }
            | Error::NameTooLong { .. }
            | Error::UnknownClaw { .. } => USAGE,
            Error::Connect { .. } => CONNECT,
            _ => OTHER,
        };
        Self {
            code,
            message: err.to_string(),
        }
    }
}

/// Passwords seen in the URLs of this command (flags, environment, config file), hidden from
/// every message.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Remembers the passwords of `urls` (each may hold several, separated by commas), so that
/// [`clean`] hides them wherever they appear.
pub(crate) fn remember_passwords<'a>(urls: impl IntoIterator<Item = &'a str>) {
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    for url in urls.into_iter().flat_map(|u| u.split(',')) {
        let Some(password) = password_of(url.trim()).filter(|p| !p.is_empty()) else {
            continue;
        };
        let decoded = percent_decode_str(password)
            .decode_utf8_lossy()
            .into_owned();
        for secret in [password.to_owned(), decoded] {
            if !secrets.contains(&secret) {
                secrets.push(secret);
            }
        }
    }
    // Longest first, so that a password containing another is hidden whole.
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// The password in `scheme://user:password@host...`, if any: everything between the first `:`
/// of the user information and the last `@` (so a `/` in the password does not end it).
pub(crate) fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let userinfo = &rest[..rest.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p)
}

/// `text` with every URL's password replaced by `***` (through claws-core's URL parser), and
/// every password [`remember_passwords`] saw hidden wherever else it appears.
pub(crate) fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        // The URL starts at its scheme and ends at a blank or a quote.
        let start = rest[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |j| j + 1);
        let end = rest[i..]
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | '<' | '>'))
            .map_or(rest.len(), |j| i + j);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    let secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    secrets
        .iter()
        .fold(out, |text, secret| scrub(&text, secret))
}

/// Prints `failure` on stderr as one sentence, with passwords removed, and returns its exit
/// code.
pub(crate) fn report(failure: &Failure) -> ExitCode {
    eprintln!("claws: {}.", sentence(&failure.message));
    ExitCode::from(failure.code)
}

/// Prints a warning on stderr as one sentence, with passwords removed. Warnings never carry a
/// payload.
pub(crate) fn warn(message: &str) {
    eprintln!("claws: warning: {}.", sentence(message));
}

/// One line, passwords removed, no final period (the caller adds one).
fn sentence(message: &str) -> String {
    let message = clean(message).replace(['\n', '\r'], " ");
    message.trim_end().trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed() {
        assert_eq!(
            clean("cannot reach amqp://guest:s3cret@host:5672/%2f now"),
            "cannot reach amqp://guest:***@host:5672/%2f now"
        );
        assert_eq!(clean("`amqp://host:5672/x`"), "`amqp://host:5672/x`");
        assert_eq!(password_of("amqp://u:p@h:1/v"), Some("p"));
        assert_eq!(password_of("amqp://u:Pa/ss99@h:1/v"), Some("Pa/ss99"));
        assert_eq!(password_of("amqp://h:1/v"), None);
        let odd = clean("at amqp://guest:Pa/ss99@127.0.0.1:1/%2f: refused");
        assert!(!odd.contains("ss99"), "{odd}");
        remember_passwords(["amqp://u:p%40ss-word@h/"]);
        assert_eq!(clean("login p@ss-word refused"), "login *** refused");
    }
}
