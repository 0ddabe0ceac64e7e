//! The XEP-0114 handshake: the stream header a component opens with, and the proof of the shared
//! secret (the lowercase hex SHA-1 of the stream id the server sent, followed by the secret).
//!
//! ```
//! use claws_component::handshake::digest;
//! use claws_component::config::Secret;
//! assert_eq!(digest("3BF96D32", &Secret::new("sesame")), "7a98dc4c9e92493d7fd66a25364c862637789c45");
//! ```

use quick_xml::escape::escape;
use sha1::{Digest, Sha1};

use crate::config::Secret;

/// The namespace of a component stream.
pub const COMPONENT_NS: &str = "jabber:component:accept";
/// The namespace of the `stream:` prefix.
pub const STREAMS_NS: &str = "http://etherx.jabber.org/streams";

/// The stream header a component sends to open its stream for `domain`.
pub fn stream_header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream xmlns='{COMPONENT_NS}' xmlns:stream='{STREAMS_NS}' to='{}'>",
        escape(domain)
    )
}

/// The hex SHA-1 of `stream_id` followed by the secret, as `<handshake/>` carries it.
pub fn digest(stream_id: &str, secret: &Secret) -> String {
    let mut hasher = Sha1::new();
    hasher.update(stream_id.as_bytes());
    hasher.update(secret.expose().as_bytes());
    hex::encode(hasher.finalize())
}

/// The `<handshake>` element proving the secret for `stream_id`.
pub fn handshake(stream_id: &str, secret: &Secret) -> String {
    format!("<handshake>{}</handshake>", digest(stream_id, secret))
}

/// The closing tag of a stream.
pub const STREAM_END: &str = "</stream:stream>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_sha1sum() {
        // printf '%s' 'abcs3cret' | sha1sum
        assert_eq!(
            digest("abc", &Secret::new("s3cret")),
            "31998b73ea3a9f9924c37e68133695467a6701e6"
        );
        // The id is hashed as sent, secret appended; empty parts are fine.
        assert_eq!(
            digest("", &Secret::new("")),
            "da39a3ee5e6b4b0d3255bfef95601890afd80709"
        );
        let h = handshake("3BF96D32", &Secret::new("sesame"));
        assert_eq!(
            h,
            "<handshake>7a98dc4c9e92493d7fd66a25364c862637789c45</handshake>"
        );
        assert!(!h.contains("sesame"));
    }

    #[test]
    fn header_escapes_the_domain() {
        let h = stream_header("a'b.example");
        assert!(h.contains("to='a&apos;b.example'"), "{h}");
        assert!(h.contains("xmlns='jabber:component:accept'"));
    }
}
