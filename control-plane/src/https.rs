//! HTTPS for the REST API: `NEBULA_TLS_CERT` (the certificate chain, PEM) and
//! `NEBULA_TLS_KEY` (its private key, PEM), both or neither. Read and checked with the rest
//! of the configuration, so a wrong path or a key that does not belong to the certificate
//! stops the instance at start (exit 64) instead of failing every handshake.
//!
//! rustls with the ring backend, as the agent. The files are read once: replacing a
//! certificate takes a restart (instances are stateless; restart them one at a time).

use crate::error::ConfigError;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

pub const CERT: &str = "NEBULA_TLS_CERT";
pub const KEY: &str = "NEBULA_TLS_KEY";

/// The TLS side of the listener.
#[derive(Clone)]
pub struct Https {
    /// `NEBULA_TLS_CERT`, for logs.
    pub cert_path: String,
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for Https {
    // The acceptor holds the private key.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Https")
            .field("cert_path", &self.cert_path)
            .finish_non_exhaustive()
    }
}

impl Https {
    /// `None` when neither variable is set (plain HTTP).
    pub fn from_paths(
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let (cert_path, key_path) = match (cert, key) {
            (None, None) => return Ok(None),
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    variable: KEY,
                    when: "when NEBULA_TLS_CERT is set",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    variable: CERT,
                    when: "when NEBULA_TLS_KEY is set",
                });
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        let invalid =
            |variable: &'static str, reason: String| ConfigError::Invalid { variable, reason };
        let read = |variable: &'static str, path: &str| {
            std::fs::read(path).map_err(|error| invalid(variable, format!("{path}: {error}")))
        };
        let cert_pem = read(CERT, &cert_path)?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                invalid(
                    CERT,
                    format!("{cert_path}: not a PEM certificate file: {error}"),
                )
            })?;
        if chain.is_empty() {
            return Err(invalid(
                CERT,
                format!("{cert_path}: no certificate (-----BEGIN CERTIFICATE-----) in it"),
            ));
        }
        let key_pem = read(KEY, &key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
            invalid(
                KEY,
                format!("{key_path}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {error}"),
            )
        })?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| invalid(CERT, format!("cannot set up TLS: {error}")))?
            .with_no_client_auth()
            // Also checks that the key belongs to the certificate.
            .with_single_cert(chain, key)
            .map_err(|error| {
                invalid(
                    KEY,
                    format!("{key_path} does not fit the certificate of {cert_path}: {error}"),
                )
            })?;
        Ok(Some(Self {
            cert_path,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neither_is_plain_http() {
        assert!(Https::from_paths(None, None).expect("valid").is_none());
    }

    #[test]
    fn one_without_the_other_is_refused() {
        assert!(matches!(
            Https::from_paths(Some("/c.pem".into()), None),
            Err(ConfigError::Missing { variable: KEY, .. })
        ));
        assert!(matches!(
            Https::from_paths(None, Some("/k.pem".into())),
            Err(ConfigError::Missing { variable: CERT, .. })
        ));
    }

    #[test]
    fn unreadable_or_empty_files_are_refused() {
        let directory = tempfile::tempdir().expect("tempdir");
        let empty = directory.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let empty = empty.to_string_lossy().into_owned();
        let missing = directory
            .path()
            .join("missing.pem")
            .to_string_lossy()
            .into_owned();
        for (cert, variable) in [(&missing, CERT), (&empty, CERT)] {
            let error = Https::from_paths(Some(cert.clone()), Some(empty.clone())).expect_err(cert);
            assert!(
                matches!(error, ConfigError::Invalid { variable: named, .. } if named == variable),
                "{cert}: {error}"
            );
        }
    }
}
