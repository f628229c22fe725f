//! TLS of the broker connection (`amqps://`): which certificate authorities the agent trusts
//! and the client certificate it may present.
//!
//! The broker's certificate is always verified, for the host name of the URL; there is
//! deliberately no switch to turn verification off. It is verified against the authorities of
//! `NEBULA_AMQP_CA_FILE` when set (a fleet's private CA: then only those, as `curl --cacert`
//! does), else against the system's store (the `ca-certificates` of the device's OS).
//! `NEBULA_AMQP_CERT_FILE` and `NEBULA_AMQP_KEY_FILE` (PEM) give a client certificate, for
//! brokers that ask for one. Everything is read, checked and assembled with the rest of the
//! configuration, so a wrong path, a truncated certificate, a key that does not belong to its
//! certificate or a system without CA certificates stops the agent at start (exit 64)
//! instead of failing every connection attempt.

use crate::error::ConfigError;

pub const CA_FILE: &str = "NEBULA_AMQP_CA_FILE";
pub const CERT_FILE: &str = "NEBULA_AMQP_CERT_FILE";
pub const KEY_FILE: &str = "NEBULA_AMQP_KEY_FILE";

/// How `amqps://` connections are made: empty when no broker URL is `amqps://`.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// What the connector trusts and presents, for logs.
    pub summary: Option<String>,
    #[cfg(feature = "tls")]
    pub connector: Option<lapin::tcp::RustlsConnector>,
}

impl std::fmt::Debug for TlsSettings {
    // The connector holds the private key: only the summary is shown.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsSettings")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads the files the environment names. `lookup` gives a variable's non-empty value;
    /// `tls_nodes` of the `nodes` broker URLs are `amqps://`. TLS files with a plain
    /// `amqp://` node are refused: the operator believes every link is encrypted, and the
    /// one to that node would not be.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        tls_nodes: usize,
        nodes: usize,
    ) -> Result<Self, ConfigError> {
        let ca = lookup(CA_FILE);
        let cert = lookup(CERT_FILE);
        let key = lookup(KEY_FILE);
        let set = [(CA_FILE, &ca), (CERT_FILE, &cert), (KEY_FILE, &key)]
            .into_iter()
            .find_map(|(variable, value)| value.as_ref().map(|_| variable));
        if !cfg!(feature = "tls") {
            return match set {
                Some(variable) => Err(invalid(
                    variable,
                    "this agent was built without TLS (the `tls` feature); the release builds have it",
                )),
                None => Ok(Self::default()),
            };
        }
        match set {
            Some(variable) if tls_nodes < nodes => {
                return Err(invalid(
                    variable,
                    &format!(
                        "{} of the {nodes} URLs of NEBULA_AMQP_URL are plain amqp://, so those connections would not be encrypted; use amqps:// (port 5671 on RabbitMQ) for every node, or unset it",
                        nodes - tls_nodes
                    ),
                ));
            }
            None if tls_nodes == 0 => return Ok(Self::default()),
            _ => {}
        }
        let client = match (cert, key) {
            (None, None) => None,
            (Some(_), None) => {
                return Err(invalid(
                    KEY_FILE,
                    "not set, but NEBULA_AMQP_CERT_FILE is: a client certificate needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    CERT_FILE,
                    "not set, but NEBULA_AMQP_KEY_FILE is: a key needs its client certificate",
                ));
            }
            (Some(cert), Some(key)) => Some((cert, key)),
        };
        build(ca.as_deref(), client)
    }
}

fn invalid(variable: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        variable,
        reason: reason.to_string(),
    }
}

#[cfg(not(feature = "tls"))]
fn build(_ca: Option<&str>, _client: Option<(String, String)>) -> Result<TlsSettings, ConfigError> {
    // `from_env` never gets here without TLS (`amqps://` is refused with the URL).
    Ok(TlsSettings::default())
}

#[cfg(feature = "tls")]
fn build(ca: Option<&str>, client: Option<(String, String)>) -> Result<TlsSettings, ConfigError> {
    use lapin::tcp::RustlsConnectorConfig;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    let read = |variable: &'static str, path: &str| {
        std::fs::read(path).map_err(|error| invalid(variable, &format!("{path}: {error}")))
    };
    // Every certificate of a file must be usable: rustls would silently skip one it cannot
    // parse, and the broker's certificate would then fail verification on every attempt.
    let certificates = |variable: &'static str, path: &str| {
        let pem = read(variable, path)?;
        let certificates = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| {
                invalid(
                    variable,
                    &format!("{path}: not a PEM certificate file: {error}"),
                )
            })?;
        if certificates.is_empty() {
            return Err(invalid(
                variable,
                &format!("{path}: no certificate (-----BEGIN CERTIFICATE-----) in it"),
            ));
        }
        for (index, certificate) in certificates.iter().enumerate() {
            webpki::anchor_from_trusted_cert(certificate).map_err(|error| {
                invalid(
                    variable,
                    &format!(
                        "{path}: certificate {} of {}: {error}",
                        index + 1,
                        certificates.len()
                    ),
                )
            })?;
        }
        Ok(certificates)
    };

    let (config, trusted) = match ca {
        Some(path) => {
            let roots = certificates(CA_FILE, path)?;
            let trusted = format!("{} authorities of {path}", roots.len());
            (
                RustlsConnectorConfig::default().with_parsable_certificates(roots),
                trusted,
            )
        }
        None => (
            RustlsConnectorConfig::new_with_native_certs().map_err(|error| {
                invalid(
                    CA_FILE,
                    &format!(
                        "amqps:// needs certificate authorities to verify the broker, and none could be loaded from this system ({error}): install the OS's CA certificates (ca-certificates), or set NEBULA_AMQP_CA_FILE to the broker's CA"
                    ),
                )
            })?,
            "the system's certificate authorities".to_string(),
        ),
    };
    // Which variable a failure to assemble the connector is about.
    let (connector, summary, blamed) = match client {
        None => (
            config.connector_with_no_client_auth(),
            format!("trusting {trusted}"),
            CA_FILE,
        ),
        Some((cert, key)) => {
            let chain = certificates(CERT_FILE, &cert)?;
            let key_pem = read(KEY_FILE, &key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
                invalid(
                    KEY_FILE,
                    &format!("{key}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {error}"),
                )
            })?;
            (
                config.connector_with_single_cert(chain, key_der),
                format!("trusting {trusted}, client certificate {cert}"),
                // The certificates parsed: what is left is the key not fitting them.
                KEY_FILE,
            )
        }
    };
    let connector =
        connector.map_err(|error| invalid(blamed, &format!("cannot set up TLS: {error}")))?;
    Ok(TlsSettings {
        summary: Some(summary),
        connector: Some(connector),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// `amqps` of the two broker URLs are `amqps://`.
    fn from(pairs: &[(&str, &str)], amqps: usize) -> Result<TlsSettings, ConfigError> {
        let environment: HashMap<String, String> = pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
        TlsSettings::from_env(|key| environment.get(key).cloned(), amqps, 2)
    }

    #[cfg(feature = "tls")]
    fn variable(error: ConfigError) -> &'static str {
        match error {
            ConfigError::Invalid { variable, .. } => variable,
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn nothing_set_for_a_plain_connection_is_no_tls() {
        let settings = from(&[], 0).expect("valid");
        assert!(settings.summary.is_none());
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_files_for_a_plain_connection_are_refused() {
        let error = from(&[(CA_FILE, "/etc/nebula/ca.pem")], 0).expect_err("refused");
        assert_eq!(variable(error), CA_FILE);
        // One plain node of a cluster's list is one unencrypted link.
        let error = from(&[(CA_FILE, "/etc/nebula/ca.pem")], 1).expect_err("refused");
        assert!(error.to_string().contains("1 of the 2"), "{error}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn a_build_without_tls_says_so() {
        let error = from(&[(CA_FILE, "/etc/nebula/ca.pem")], 2).expect_err("refused");
        assert!(error.to_string().contains("without TLS"), "{error}");
    }

    #[cfg(feature = "tls")]
    #[test]
    fn bad_files_stop_the_agent_at_start() {
        let directory = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, contents: &str| {
            let path = directory.path().join(name);
            std::fs::write(&path, contents).expect("write");
            path.to_string_lossy().into_owned()
        };
        let missing = directory.path().join("missing.pem");
        let missing = missing.to_string_lossy();
        let empty = write("empty.pem", "");
        let not_a_certificate = write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        for path in [&*missing, &empty, &not_a_certificate] {
            let error = from(&[(CA_FILE, path)], 2).expect_err(path);
            assert_eq!(variable(error), CA_FILE, "{path}");
        }
        // A certificate without its key, and the reverse.
        assert_eq!(
            variable(from(&[(CERT_FILE, &empty)], 2).expect_err("no key")),
            KEY_FILE
        );
        assert_eq!(
            variable(from(&[(KEY_FILE, &empty)], 2).expect_err("no cert")),
            CERT_FILE
        );
    }
}
