//! Exit codes and the one-sentence error report.

use std::process::ExitCode;

use claws::Error;

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

/// Prints `failure` on stderr as one line, with passwords removed, and returns its exit code.
pub(crate) fn report(failure: &Failure, urls: &[String]) -> ExitCode {
    let mut message = redact(&failure.message);
    for url in urls.iter().flat_map(|u| u.split(',')) {
        if let Some(password) = password_of(url).filter(|p| !p.is_empty()) {
            message = message.replace(password, "***");
        }
    }
    let message = message.replace('\n', " ");
    let message = message.trim_end_matches('.');
    eprintln!("claws: {message}.");
    ExitCode::from(failure.code)
}

/// The password in `scheme://user:password@host...`, if any.
pub(crate) fn password_of(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    userinfo.split_once(':').map(|(_, p)| p)
}

/// Replaces the password of every `scheme://user:password@` in `text` with `***`.
pub(crate) fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '`' || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed() {
        assert_eq!(
            redact("cannot reach amqp://guest:s3cret@host:5672/%2f now"),
            "cannot reach amqp://guest:***@host:5672/%2f now"
        );
        assert_eq!(redact("amqp://host:5672/x"), "amqp://host:5672/x");
        assert_eq!(password_of("amqp://u:p@h:1/v"), Some("p"));
        assert_eq!(password_of("amqp://h:1/v"), None);
    }
}
