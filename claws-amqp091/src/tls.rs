//! TLS (`amqps://`): the certificates a claw trusts and presents, read and checked when the claw
//! is built, so that a wrong path or a file that holds no certificate is an error before any
//! connection is tried.
//!
//! With the `tls` feature, lapin speaks TLS through rustls (the *ring* provider), trusting the
//! system's certificate store plus the CA of `tls_ca_file`. Without it, an `amqps://` URL is a
//! configuration error that names the feature.

use std::path::{Path, PathBuf};

use claws_core::{Error, Result};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};

/// The TLS files a claw was given (all optional).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// PEM file of the CA(s) that signed the broker's certificate, added to the system's roots.
    pub(crate) ca: Option<PathBuf>,
    /// PEM certificate chain and private key the claw presents (mutual TLS, `EXTERNAL` auth).
    pub(crate) client: Option<(PathBuf, PathBuf)>,
}

impl TlsFiles {
    fn is_empty(&self) -> bool {
        self.ca.is_none() && self.client.is_none()
    }
}

/// The TLS configuration for `url`'s scheme, or an error naming what to change.
pub(crate) fn config(url: &str, amqps: bool, files: &TlsFiles) -> Result<OwnedTLSConfig> {
    if !amqps {
        if files.is_empty() {
            return Ok(OwnedTLSConfig::default());
        }
        return Err(Error::Config(format!(
            "TLS files are set (`tls_ca_file`/`tls_cert_file`/`tls_key_file`) but the URL `{url}` \
             is plain amqp://; use amqps:// (RabbitMQ's TLS port is usually 5671) or drop the TLS files"
        )));
    }
    if !cfg!(feature = "tls") {
        return Err(Error::Config(format!(
            "URL `{url}` asks for TLS (amqps), but claws-amqp091 is built without a TLS stack; \
             enable its `tls` feature (`amqp091-tls` in the claws crate) or use amqp://"
        )));
    }
    let cert_chain = match &files.ca {
        Some(path) => Some(read_pem(path, "tls_ca_file", "CERTIFICATE")?),
        None => None,
    };
    let identity = match &files.client {
        Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
            pem: read_pem(cert, "tls_cert_file", "CERTIFICATE")?.into_bytes(),
            key: read_pem(key, "tls_key_file", "PRIVATE KEY")?.into_bytes(),
        }),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// Reads a PEM file that must hold a `-----BEGIN …{label}-----` block.
fn read_pem(path: &Path, key: &str, label: &str) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read `{key}` file `{}`: {e}; give the path of a PEM file",
            path.display()
        ))
    })?;
    let holds_label = text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !holds_label {
        return Err(Error::Config(format!(
            "`{key}` file `{}` holds no PEM {label} block; give a PEM file (`-----BEGIN {label}-----`)",
            path.display()
        )));
    }
    Ok(text)
}

/// A hint for a failed TLS connection, from the error text rustls gave.
pub(crate) fn hint(reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    if r.contains("certificate") || r.contains("unknownissuer") {
        Some("the broker's certificate is not trusted for this host: set `tls_ca_file` to the CA that signed it, and connect to a name or IP address the certificate lists")
    } else if r.contains("corrupt message") || r.contains("invalidcontenttype") {
        Some("the server did not answer with TLS: is this port a TLS listener? RabbitMQ's is usually 5671, and 5672 is plain amqp://")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "tls")]
    fn write(name: &str, text: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("claws-tls-{}-{name}", std::process::id()));
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn plain_urls_need_no_tls_and_refuse_tls_files() {
        assert_eq!(
            config("amqp://h", false, &TlsFiles::default()).unwrap(),
            OwnedTLSConfig::default()
        );
        let files = TlsFiles {
            ca: Some("/x.pem".into()),
            client: None,
        };
        let err = config("amqp://h", false, &files).unwrap_err().to_string();
        assert!(err.contains("amqps://"), "{err}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn files_are_checked_when_built() {
        let missing = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            client: None,
        };
        let err = config("amqps://h", true, &missing).unwrap_err().to_string();
        assert!(
            err.contains("tls_ca_file") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );

        let not_pem = TlsFiles {
            ca: Some(write("ca.txt", "hello")),
            client: None,
        };
        let err = config("amqps://h", true, &not_pem).unwrap_err().to_string();
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");

        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let key = write(
            "key.pem",
            "-----BEGIN EC PRIVATE KEY-----\nMHc\n-----END EC PRIVATE KEY-----\n",
        );
        let ok = TlsFiles {
            ca: Some(write("ca.pem", cert)),
            client: Some((write("cert.pem", cert), key)),
        };
        let tls = config("amqps://h", true, &ok).unwrap();
        assert!(tls.cert_chain.is_some() && tls.identity.is_some());
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn amqps_without_the_feature_names_it() {
        let err = config("amqps://h", true, &TlsFiles::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`tls` feature"), "{err}");
    }
}
