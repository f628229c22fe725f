//! TLS of the broker connection (`amqps://`, `mqtts://`): which certificate authorities the
//! agent trusts and the client certificate it may present.
//!
//! The broker's certificate is always verified, for the host name of the URL; there is
//! deliberately no switch to turn verification off. It is verified against the authorities of
//! the CA file when one is set (`NEBULA_AMQP_CA_FILE`, or `NEBULA_MQTT_CA_FILE` over MQTT: a
//! fleet's private CA, then only those, as `curl --cacert` does), else against the system's
//! store (the `ca-certificates` of the device's OS). The cert and key files (PEM) give a
//! client certificate, for brokers that ask for one. Everything is read, checked and
//! assembled with the rest of the configuration, so a wrong path, a truncated certificate, a
//! key that does not belong to its certificate or a system without CA certificates stops the
//! agent at start (exit 64) instead of failing every connection attempt. Both transports get
//! the same rustls configuration (ring, TLS 1.2 and 1.3).

use crate::error::ConfigError;

/// The variables of one transport's TLS files, and how its URLs are spelled, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsVariables {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
    url: &'static str,
    plain: &'static str,
    secure: &'static str,
    /// Where the encrypted listener usually is, for the error's advice.
    port_hint: &'static str,
}

pub const AMQP: TlsVariables = TlsVariables {
    ca: "NEBULA_AMQP_CA_FILE",
    cert: "NEBULA_AMQP_CERT_FILE",
    key: "NEBULA_AMQP_KEY_FILE",
    url: "NEBULA_AMQP_URL",
    plain: "amqp://",
    secure: "amqps://",
    port_hint: " (port 5671 on RabbitMQ)",
};

pub const MQTT: TlsVariables = TlsVariables {
    ca: "NEBULA_MQTT_CA_FILE",
    cert: "NEBULA_MQTT_CERT_FILE",
    key: "NEBULA_MQTT_KEY_FILE",
    url: "NEBULA_MQTT_URL",
    plain: "mqtt://",
    secure: "mqtts://",
    port_hint: " (port 8883 on RabbitMQ)",
};

/// The control plane's `https://`, for the enrolment at first boot (`crate::enrol`).
pub const CONTROL_PLANE: TlsVariables = TlsVariables {
    ca: "NEBULA_CONTROL_PLANE_CA_FILE",
    cert: "NEBULA_CONTROL_PLANE_CERT_FILE",
    key: "NEBULA_CONTROL_PLANE_KEY_FILE",
    url: "NEBULA_CONTROL_PLANE_URL",
    plain: "http://",
    secure: "https://",
    port_hint: "",
};

impl TlsVariables {
    /// The first of this transport's TLS variables that is set.
    pub fn first_set(&self, lookup: impl Fn(&str) -> Option<String>) -> Option<&'static str> {
        [self.ca, self.cert, self.key]
            .into_iter()
            .find(|variable| lookup(variable).is_some())
    }
}

/// How TLS connections are made: empty when no broker URL asks for TLS.
#[derive(Clone, Default)]
pub struct TlsSettings {
    /// What the connector trusts and presents, for logs.
    pub summary: Option<String>,
    #[cfg(feature = "tls")]
    pub config: Option<std::sync::Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for TlsSettings {
    // The configuration holds the private key: only the summary is shown.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TlsSettings")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl TlsSettings {
    /// Reads the files the environment names. `lookup` gives a variable's non-empty value;
    /// `tls_nodes` of the `nodes` broker URLs ask for TLS. TLS files with a plain URL are
    /// refused: the operator believes every link is encrypted, and the one to that node
    /// would not be.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        variables: &TlsVariables,
        tls_nodes: usize,
        nodes: usize,
    ) -> Result<Self, ConfigError> {
        let ca = lookup(variables.ca);
        let cert = lookup(variables.cert);
        let key = lookup(variables.key);
        let set = variables.first_set(&lookup);
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
                let TlsVariables {
                    url,
                    plain,
                    secure,
                    port_hint,
                    ..
                } = variables;
                let which = if nodes == 1 {
                    format!("{url} is a plain {plain} URL")
                } else {
                    format!(
                        "{} of the {nodes} URLs of {url} are plain {plain}",
                        nodes - tls_nodes
                    )
                };
                return Err(invalid(
                    variable,
                    &format!(
                        "{which}, so those connections would not be encrypted; use {secure}{port_hint} for every node, or unset it"
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
                    variables.key,
                    &format!(
                        "not set, but {} is: a client certificate needs its key",
                        variables.cert
                    ),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    variables.cert,
                    &format!(
                        "not set, but {} is: a key needs its client certificate",
                        variables.key
                    ),
                ));
            }
            (Some(cert), Some(key)) => Some((cert, key)),
        };
        build(variables, ca.as_deref(), client)
    }
}

fn invalid(variable: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        variable,
        reason: reason.to_string(),
    }
}

#[cfg(not(feature = "tls"))]
fn build(
    _variables: &TlsVariables,
    _ca: Option<&str>,
    _client: Option<(String, String)>,
) -> Result<TlsSettings, ConfigError> {
    // `from_env` never gets here without TLS (a TLS URL is refused with the URL).
    Ok(TlsSettings::default())
}

#[cfg(feature = "tls")]
fn build(
    variables: &TlsVariables,
    ca: Option<&str>,
    client: Option<(String, String)>,
) -> Result<TlsSettings, ConfigError> {
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

    let mut roots = rustls::RootCertStore::empty();
    let trusted = match ca {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(certificates(variables.ca, path)?);
            format!("{added} authorities of {path}")
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                let secure = variables.secure;
                let ca = variables.ca;
                let reason = native
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_string(), ToString::to_string);
                return Err(invalid(
                    variables.ca,
                    &format!(
                        "{secure} needs certificate authorities to verify the broker, and none could be loaded from this system ({reason}): install the OS's CA certificates (ca-certificates), or set {ca} to the broker's CA"
                    ),
                ));
            }
            "the system's certificate authorities".to_string()
        }
    };
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|error| invalid(variables.ca, &format!("cannot set up TLS: {error}")))?
    .with_root_certificates(roots);
    let (config, summary) = match client {
        None => (builder.with_no_client_auth(), format!("trusting {trusted}")),
        Some((cert, key)) => {
            let chain = certificates(variables.cert, &cert)?;
            let key_pem = read(variables.key, &key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|error| {
                invalid(
                    variables.key,
                    &format!("{key}: no usable PEM private key (PKCS#8, PKCS#1 or SEC1): {error}"),
                )
            })?;
            // The certificates parsed: what is left is the key not fitting them.
            let config = builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|error| invalid(variables.key, &format!("cannot set up TLS: {error}")))?;
            (
                config,
                format!("trusting {trusted}, client certificate {cert}"),
            )
        }
    };
    Ok(TlsSettings {
        summary: Some(summary),
        config: Some(std::sync::Arc::new(config)),
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
        TlsSettings::from_env(|key| environment.get(key).cloned(), &AMQP, amqps, 2)
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
        let error = from(&[(AMQP.ca, "/etc/nebula/ca.pem")], 0).expect_err("refused");
        assert_eq!(variable(error), AMQP.ca);
        // One plain node of a cluster's list is one unencrypted link.
        let error = from(&[(AMQP.ca, "/etc/nebula/ca.pem")], 1).expect_err("refused");
        assert!(error.to_string().contains("1 of the 2"), "{error}");
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn a_build_without_tls_says_so() {
        let error = from(&[(AMQP.ca, "/etc/nebula/ca.pem")], 2).expect_err("refused");
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
            let error = from(&[(AMQP.ca, path)], 2).expect_err(path);
            assert_eq!(variable(error), AMQP.ca, "{path}");
        }
        // A certificate without its key, and the reverse.
        assert_eq!(
            variable(from(&[(AMQP.cert, &empty)], 2).expect_err("no key")),
            AMQP.key
        );
        assert_eq!(
            variable(from(&[(AMQP.key, &empty)], 2).expect_err("no cert")),
            AMQP.cert
        );
    }
}
