//! TLS (`amqps://`): the certificates a claw trusts and presents, read and checked when the claw
//! is built, so that a wrong path or a file that holds no certificate is an error before any
//! connection is tried.
//!
//! With the `tls` feature, lapin speaks TLS through rustls (the *ring* provider), trusting the
//! system's certificate store plus the CA of `tls_ca_file`. Without it, an `amqps://` URL is a
//! configuration error that names the feature.

#[cfg(feature = "tls")]
use std::path::Path;
use std::path::PathBuf;

use claws_core::{Error, Result};
#[cfg(feature = "tls")]
use lapin::tcp::OwnedIdentity;
use lapin::tcp::OwnedTLSConfig;

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
    #[cfg(not(feature = "tls"))]
    return Err(Error::Config(format!(
        "URL `{url}` asks for TLS (amqps), but claws-amqp091 is built without a TLS stack; \
         enable its `tls` feature (`amqp091-tls` in the claws crate) or use amqp://"
    )));
    #[cfg(feature = "tls")]
    checked(files)
}

/// Reads the files and checks that they hold what rustls will need.
#[cfg(feature = "tls")]
fn checked(files: &TlsFiles) -> Result<OwnedTLSConfig> {
    let cert_chain = match &files.ca {
        Some(path) => Some(read_certificates(path, "tls_ca_file")?),
        None => None,
    };
    let identity = match &files.client {
        Some((cert, key)) => Some(OwnedIdentity::PKCS8 {
            pem: read_certificates(cert, "tls_cert_file")?.into_bytes(),
            key: read_private_key(key)?.into_bytes(),
        }),
        None => None,
    };
    Ok(OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

#[cfg(feature = "tls")]
fn read(path: &Path, key: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read `{key}` file `{}`: {e}; give the path of a PEM file",
            path.display()
        ))
    })
}

/// A PEM file holding one or more certificates, each one decodable.
#[cfg(feature = "tls")]
fn read_certificates(path: &Path, key: &str) -> Result<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let text = read(path, key)?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(text.as_bytes()) {
        cert.map_err(|e| {
            Error::Config(format!(
                "`{key}` file `{}` holds a broken PEM certificate ({e}); give a PEM file \
                 (`-----BEGIN CERTIFICATE-----`)",
                path.display()
            ))
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(Error::Config(format!(
            "`{key}` file `{}` holds no PEM certificate; give a PEM file \
             (`-----BEGIN CERTIFICATE-----`)",
            path.display()
        )));
    }
    Ok(text)
}

/// A PEM file holding an unencrypted private key (PKCS#8, SEC1 or PKCS#1).
#[cfg(feature = "tls")]
fn read_private_key(path: &Path) -> Result<String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::PrivateKeyDer;
    let text = read(path, "tls_key_file")?;
    PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| {
        Error::Config(format!(
            "`tls_key_file` file `{}` holds no usable private key ({e}); give an unencrypted \
             PEM key (`BEGIN PRIVATE KEY`, `BEGIN EC PRIVATE KEY` or `BEGIN RSA PRIVATE KEY`)",
            path.display()
        ))
    })?;
    Ok(text)
}

/// A hint for a failed TLS connection, from the error text rustls gave.
pub(crate) fn hint(reason: &str) -> Option<&'static str> {
    let r = reason.to_ascii_lowercase();
    if r.contains("native certificates") {
        Some("this machine has no system certificate store; install one (Debian: the ca-certificates package)")
    } else if r.contains("invalid peer certificate") || r.contains("unknownissuer") {
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
        assert!(err.contains("no PEM certificate"), "{err}");

        let broken = TlsFiles {
            ca: Some(write(
                "broken.pem",
                "-----BEGIN CERTIFICATE-----\n!!not base64!!\n-----END CERTIFICATE-----\n",
            )),
            client: None,
        };
        let err = config("amqps://h", true, &broken).unwrap_err().to_string();
        assert!(err.contains("broken PEM certificate"), "{err}");

        let cert = "-----BEGIN CERTIFICATE-----\r\nMIIB\r\n-----END CERTIFICATE-----\r\n";
        let encrypted = write(
            "enc.pem",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        );
        let with_encrypted_key = TlsFiles {
            ca: None,
            client: Some((write("cert.pem", cert), encrypted)),
        };
        let err = config("amqps://h", true, &with_encrypted_key)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no usable private key"), "{err}");

        let key = write(
            "key.pem",
            "-----BEGIN EC PRIVATE KEY-----\nMHc=\n-----END EC PRIVATE KEY-----\n",
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
