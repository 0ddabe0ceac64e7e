//! Keeping passwords out of logs and errors.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// `url` with its password replaced by `***` (parsed with the `url` crate; a string that does
/// not parse loses everything between `://` and the last `@`).
///
/// ```
/// use claws_core::runtime::redact_url;
/// assert_eq!(redact_url("amqp://guest:Pa/ss99@127.0.0.1:1/%2f"), "amqp://guest:***@127.0.0.1:1/%2f");
/// assert_eq!(redact_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
/// ```
pub fn redact_url(url: &str) -> String {
    if let Ok(mut u) = url::Url::parse(url) {
        if u.password().is_some() && u.set_password(Some("***")).is_ok() {
            return u.to_string();
        }
        if u.password().is_none() {
            return url.to_owned();
        }
    }
    // Unparsable (or a password the parser did not see, such as one with a `/`): hide the
    // whole user information.
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let user = url[s + 3..at].split(':').next().unwrap_or("");
            let user = if user.contains('/') { "" } else { user };
            format!("{}{user}:***{}", &url[..s + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// `text` with every occurrence of `secret`, plain or percent-encoded, replaced by `***`.
///
/// ```
/// use claws_core::runtime::scrub;
/// assert_eq!(scrub("login p@ss failed (p%40ss)", "p@ss"), "login *** failed (***)");
/// ```
pub fn scrub(text: &str, secret: &str) -> String {
    if secret.is_empty() {
        return text.to_owned();
    }
    let encoded = utf8_percent_encode(secret, NON_ALPHANUMERIC).to_string();
    text.replace(secret, "***")
        .replace(&encoded, "***")
        .replace(&encoded.to_lowercase(), "***")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_every_password_shape() {
        for (url, shown) in [
            ("amqp://u:s3cret@h:5672/%2f", "amqp://u:***@h:5672/%2f"),
            ("amqps://u:p%40ss@h/", "amqps://u:***@h/"),
            ("amqp://u@h", "amqp://u@h"),
            ("not a url u:pw@h", "not a url u:pw@h"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        let odd = redact_url("amqp://guest:Pa/ss99@127.0.0.1:1/%2f");
        assert!(!odd.contains("Pa/ss99") && !odd.contains("ss99"), "{odd}");
    }
}
