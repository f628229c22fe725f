//! Configuration from the environment (DESIGN §6), parsed and validated into [`Config`]
//! before any I/O. Parsing goes through [`Environment`] so tests feed a map.

use crate::auth::AdminCredentials;
use crate::broker::amqp::QueueType;
use crate::error::ConfigError;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where variables come from.
pub trait Environment {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Environment for HashMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|value| value.to_string())
    }
}

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_DATA_DIR: &str = "./nebula-data";
pub const DEFAULT_MONGO_DB: &str = "nebula";

#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Embedded { data_dir: PathBuf },
    Mongo { url: String, database: String },
}

impl std::fmt::Debug for StoreConfig {
    // A `?config` field must never put the database password in a log line.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Embedded { data_dir } => formatter
                .debug_struct("Embedded")
                .field("data_dir", data_dir)
                .finish(),
            Self::Mongo { url, database } => formatter
                .debug_struct("Mongo")
                .field("url", &redact_password(url))
                .field("database", database)
                .finish(),
        }
    }
}

/// `url` with the password of its user info (`scheme://user:password@host…`) replaced by
/// `<redacted>`; a URL without one is returned as it is.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The user info ends at the last `@` before the path: a password may contain `@` only
    // percent-encoded, but `/`, `?` and `#` end the authority either way.
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:<redacted>@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// What to say at start when authentication is off on an address other machines can reach:
/// anyone who reaches the API could then reconfigure every device (`privileged` containers,
/// host volumes). `None` when auth is on or the API listens on loopback only.
pub fn insecure_listen_warning(config: &Config) -> Option<String> {
    (!config.auth_enabled && !config.listen.ip().is_loopback()).then(|| {
        format!(
            "authentication is disabled (NEBULA_AUTH_ENABLED=false) and the API listens on {}: anyone who can reach it can change what every device runs; keep NEBULA_AUTH_ENABLED=false to 127.0.0.1 (NEBULA_LISTEN) for development",
            config.listen
        )
    })
}

/// The warning an instance logs at start when it cannot give devices their own broker
/// credentials: every device then logs in with a shared one, which may publish changes for
/// any device (the development shortcut).
pub fn shared_login_warning(config: &Config) -> Option<String> {
    config.device_credentials.is_none().then(|| {
        "device credentials are off (NEBULA_RABBITMQ_MANAGEMENT_URL is not set): devices share one broker login, and whoever holds it can publish changes to every device; for a fleet, give each device its own (README, \"Securing a fleet\")".to_string()
    })
}

/// The warning an instance logs at start when it serves plain HTTP beyond loopback with
/// authentication on: passwords and tokens would cross the network in clear.
pub fn plain_http_warning(config: &Config) -> Option<String> {
    (config.auth_enabled && config.https.is_none() && !config.listen.ip().is_loopback()).then(|| {
        format!(
            "the API is served over plain HTTP on {}: passwords and tokens cross the network in clear; set NEBULA_TLS_CERT and NEBULA_TLS_KEY, or keep it behind a TLS-terminating proxy",
            config.listen
        )
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// HTTPS on `listen` (`NEBULA_TLS_CERT`, `NEBULA_TLS_KEY`); plain HTTP when `None`.
    pub https: Option<crate::https::Https>,
    /// The broker, or the nodes of a RabbitMQ cluster (`NEBULA_AMQP_URL`, comma-separated):
    /// the instance connects to one at random and fails over to the next on loss.
    pub amqp_urls: Vec<String>,
    /// Kind of `nebula.sync` and `nebula.reports` (`NEBULA_AMQP_QUEUE_TYPE`): quorum by
    /// default when several nodes are listed, classic otherwise.
    pub queue_type: QueueType,
    pub store: StoreConfig,
    pub auth_enabled: bool,
    pub admin: AdminCredentials,
    pub log_format: LogFormat,
    /// How often the outbox looks for unconfirmed changes (`NEBULA_OUTBOX_INTERVAL_SECS`).
    pub outbox_interval: Duration,
    /// Unacknowledged sync requests one instance holds (`NEBULA_SYNC_PREFETCH`).
    pub sync_prefetch: u16,
    /// How long in-flight requests may take to finish at shutdown (`NEBULA_SHUTDOWN_GRACE_SECS`).
    pub shutdown_grace: Duration,
    /// How long each broker operation of a write (declare, bind, the publish's confirm) may
    /// take before the request fails and the connection is replaced
    /// (`NEBULA_PUBLISH_TIMEOUT_SECS`): a broker alarm blocks publishers indefinitely.
    pub publish_timeout: Duration,
    /// Time limits and the connection cap of the HTTP server.
    pub http: HttpLimits,
    /// A device whose last report is older than this is removed from the registry
    /// (`NEBULA_DEVICE_EXPIRY_SECS`, default 30 days); it comes back with its next report.
    pub device_expiry: Duration,
    /// Past reports kept for `GET /api/v2/reports`: per device (`NEBULA_REPORTS_PER_DEVICE`,
    /// default 60, 0 keeps none) and for how long (`NEBULA_REPORTS_TTL_SECS`, default a day).
    pub report_retention: crate::service::reports::Retention,
    /// How long audit entries are kept (`NEBULA_AUDIT_TTL_SECS`, default 90 days).
    pub audit_ttl: Duration,
    /// Devices' own broker credentials (`POST /api/v2/devices/<id>/credentials`), when
    /// `NEBULA_RABBITMQ_MANAGEMENT_URL` is set.
    pub device_credentials: Option<DeviceCredentialsConfig>,
    /// The key every change and sync reply is signed with (`NEBULA_SIGNING_KEY_FILE`); unsigned
    /// without it.
    pub signing: Option<std::sync::Arc<crate::signing::Signer>>,
}

/// Where devices' own broker users are made, and the URL handed to devices.
#[derive(Clone, PartialEq, Eq)]
pub struct DeviceCredentialsConfig {
    /// RabbitMQ's management API, with an administrator's credentials
    /// (`NEBULA_RABBITMQ_MANAGEMENT_URL`, e.g. `http://admin:secret@broker:15672`).
    pub management_url: String,
    /// The broker URLs devices connect to, without credentials (`NEBULA_DEVICE_AMQP_URL`,
    /// comma-separated like `NEBULA_AMQP_URL`, which is the default; user info dropped): a
    /// device's minted URL is this list with the device's user and password in each. The
    /// first one's virtual host is the one the device's permissions are set on.
    pub device_amqp_urls: Vec<String>,
}

impl std::fmt::Debug for DeviceCredentialsConfig {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DeviceCredentialsConfig")
            .field("management_url", &redact_password(&self.management_url))
            .field("device_amqp_urls", &self.device_amqp_urls)
            .finish()
    }
}

/// `NEBULA_RABBITMQ_MANAGEMENT_URL` and `NEBULA_DEVICE_AMQP_URL`, checked.
fn device_credentials(
    environment: &impl Environment,
    amqp_urls: &[String],
) -> Result<Option<DeviceCredentialsConfig>, ConfigError> {
    let Some(management_url) = value(environment, "NEBULA_RABBITMQ_MANAGEMENT_URL") else {
        if value(environment, "NEBULA_DEVICE_AMQP_URL").is_some() {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_DEVICE_AMQP_URL",
                reason: "is only used with NEBULA_RABBITMQ_MANAGEMENT_URL, which is not set".into(),
            });
        }
        return Ok(None);
    };
    let management_url = management_url.trim().to_string();
    crate::broker::users::BrokerUsers::new(&management_url, "/").map_err(|reason| {
        ConfigError::Invalid {
            variable: "NEBULA_RABBITMQ_MANAGEMENT_URL",
            reason,
        }
    })?;
    let invalid = |reason| ConfigError::Invalid {
        variable: "NEBULA_DEVICE_AMQP_URL",
        reason,
    };
    let given = match value(environment, "NEBULA_DEVICE_AMQP_URL") {
        Some(urls) => broker_urls(urls.trim()).map_err(|error| match error {
            ConfigError::Invalid { reason, .. } => invalid(reason),
            other => other,
        })?,
        None => amqp_urls.to_vec(),
    };
    // Without the control plane's own login, which must never reach a device.
    let device_amqp_urls = given
        .iter()
        .map(|url| crate::device_credentials::device_url(url, "", ""))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    Ok(Some(DeviceCredentialsConfig {
        management_url,
        device_amqp_urls,
    }))
}

impl std::fmt::Debug for Config {
    // Every field, with the passwords of the broker and database URLs redacted.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let amqp_urls: Vec<String> = self
            .amqp_urls
            .iter()
            .map(|url| redact_password(url))
            .collect();
        formatter
            .debug_struct("Config")
            .field("listen", &self.listen)
            .field("https", &self.https)
            .field("amqp_urls", &amqp_urls)
            .field("queue_type", &self.queue_type)
            .field("store", &self.store)
            .field("auth_enabled", &self.auth_enabled)
            .field("admin", &self.admin)
            .field("log_format", &self.log_format)
            .field("outbox_interval", &self.outbox_interval)
            .field("sync_prefetch", &self.sync_prefetch)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("publish_timeout", &self.publish_timeout)
            .field("http", &self.http)
            .field("device_expiry", &self.device_expiry)
            .field("report_retention", &self.report_retention)
            .field("audit_ttl", &self.audit_ttl)
            .field("device_credentials", &self.device_credentials)
            .field("signing", &self.signing)
            .finish()
    }
}

/// Default of `NEBULA_DEVICE_EXPIRY_SECS`: thirty days.
pub const DEFAULT_DEVICE_EXPIRY_SECS: u64 = 30 * 24 * 3600;

/// What the HTTP server allows each client, so that slow or many clients cannot hold an
/// instance's memory and file descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Until the request headers are in (`NEBULA_HTTP_HEADER_TIMEOUT_SECS`).
    pub header_read_timeout: Duration,
    /// From the headers to the whole answer (`NEBULA_REQUEST_TIMEOUT_SECS`). Longer than the
    /// publish timeout: a write waits for the store and the confirm.
    pub request_timeout: Duration,
    /// Connections served at once (`NEBULA_MAX_CONNECTIONS`); more wait in the listen backlog.
    pub max_connections: usize,
}

/// The broker URLs of `NEBULA_AMQP_URL`: one, or several separated by commas (the nodes of a
/// cluster; spaces around the commas are allowed). Each must be an AMQP URL lapin can use.
fn broker_urls(text: &str) -> Result<Vec<String>, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        variable: "NEBULA_AMQP_URL",
        reason,
    };
    let urls: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    if urls.is_empty() {
        return Err(invalid("no broker URL".into()));
    }
    for (index, url) in urls.iter().enumerate() {
        let position = index + 1;
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(invalid(format!(
                "URL {position} must start with amqp:// or amqps://"
            )));
        }
        // The reason names the part lapin refused, never the password.
        if let Err(reason) = url.parse::<lapin::uri::AMQPUri>() {
            return Err(invalid(format!("URL {position}: {reason}")));
        }
        // lapin turns a bracketed IPv6 host into "localhost": refused rather than connecting
        // to this machine by surprise (the agent refuses them too).
        let authority = url
            .split_once("://")
            .map_or(url.as_str(), |(_, rest)| rest)
            .split(['/', '?', '#'])
            .next()
            .unwrap_or_default();
        if authority
            .rsplit('@')
            .next()
            .is_some_and(|host| host.starts_with('['))
        {
            return Err(invalid(format!(
                "URL {position}: IPv6 addresses are not supported; use a host name"
            )));
        }
    }
    Ok(urls)
}

/// A variable's value, with empty treated as unset (a common way to "unset" in compose files).
fn value(environment: &impl Environment, name: &str) -> Option<String> {
    environment
        .var(name)
        .filter(|value| !value.trim().is_empty())
}

/// `NEBULA_REPORTS_PER_DEVICE` and `NEBULA_REPORTS_TTL_SECS`.
fn report_retention(
    environment: &impl Environment,
) -> Result<crate::service::reports::Retention, ConfigError> {
    use crate::service::reports::{DEFAULT_PER_DEVICE, DEFAULT_SETTLE, DEFAULT_TTL, Retention};
    let per_device: u32 = parsed(environment, "NEBULA_REPORTS_PER_DEVICE", DEFAULT_PER_DEVICE)?;
    if per_device > MAX_REPORTS_PER_DEVICE {
        return Err(ConfigError::Invalid {
            variable: "NEBULA_REPORTS_PER_DEVICE",
            reason: format!("{per_device} is more than {MAX_REPORTS_PER_DEVICE}"),
        });
    }
    let ttl_secs: u64 = parsed(
        environment,
        "NEBULA_REPORTS_TTL_SECS",
        DEFAULT_TTL.as_secs(),
    )?;
    if ttl_secs < 60 {
        return Err(ConfigError::Invalid {
            variable: "NEBULA_REPORTS_TTL_SECS",
            reason: format!("{ttl_secs} s is shorter than a minute"),
        });
    }
    Ok(Retention {
        per_device,
        ttl: Duration::from_secs(ttl_secs),
        settle: DEFAULT_SETTLE,
    })
}

/// The most past reports kept per device, against a slip of the keyboard: the history's
/// size is this × devices × a report's size (a few KiB, at most the device record's cap).
pub const MAX_REPORTS_PER_DEVICE: u32 = 10_000;

fn parsed<T: std::str::FromStr>(
    environment: &impl Environment,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match value(environment, name) {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|error: T::Err| ConfigError::Invalid {
                variable: name,
                reason: format!("{text:?}: {error}"),
            }),
    }
}

fn boolean(
    environment: &impl Environment,
    name: &'static str,
    default: bool,
) -> Result<bool, ConfigError> {
    match value(environment, name).map(|text| text.trim().to_ascii_lowercase()) {
        None => Ok(default),
        Some(text) => match text.as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err(ConfigError::Invalid {
                variable: name,
                reason: format!("{text:?} is not true or false"),
            }),
        },
    }
}

impl Config {
    pub fn from_environment(environment: &impl Environment) -> Result<Self, ConfigError> {
        let listen_text =
            value(environment, "NEBULA_LISTEN").unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen = listen_text
            .trim()
            .parse()
            .map_err(|error| ConfigError::Invalid {
                variable: "NEBULA_LISTEN",
                reason: format!("{listen_text:?}: {error}"),
            })?;
        let amqp_urls = broker_urls(
            &value(environment, "NEBULA_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.into()),
        )?;
        let queue_type = match value(environment, "NEBULA_AMQP_QUEUE_TYPE")
            .as_deref()
            .map(str::trim)
        {
            None if amqp_urls.len() > 1 => QueueType::Quorum,
            None | Some("classic") => QueueType::Classic,
            Some("quorum") => QueueType::Quorum,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "NEBULA_AMQP_QUEUE_TYPE",
                    reason: format!("{other:?}: expected classic or quorum"),
                });
            }
        };
        let store = match value(environment, "NEBULA_STORE").as_deref().map(str::trim) {
            None | Some("embedded") => StoreConfig::Embedded {
                data_dir: PathBuf::from(
                    value(environment, "NEBULA_DATA_DIR")
                        .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
                ),
            },
            Some("mongodb") => {
                let url = value(environment, "NEBULA_MONGO_URL").ok_or(ConfigError::Missing {
                    variable: "NEBULA_MONGO_URL",
                    when: "when NEBULA_STORE=mongodb",
                })?;
                if !(url.starts_with("mongodb://") || url.starts_with("mongodb+srv://")) {
                    return Err(ConfigError::Invalid {
                        variable: "NEBULA_MONGO_URL",
                        reason: "must start with mongodb:// or mongodb+srv://".into(),
                    });
                }
                let database = value(environment, "NEBULA_MONGO_DB")
                    .unwrap_or_else(|| DEFAULT_MONGO_DB.into());
                StoreConfig::Mongo { url, database }
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "NEBULA_STORE",
                    reason: format!("{other:?} is not embedded or mongodb"),
                });
            }
        };
        let auth_enabled = boolean(environment, "NEBULA_AUTH_ENABLED", true)?;
        let admin = AdminCredentials {
            user: value(environment, "NEBULA_ADMIN_USER"),
            password: value(environment, "NEBULA_ADMIN_PASSWORD"),
            token: value(environment, "NEBULA_ADMIN_TOKEN"),
        };
        match (&admin.user, &admin.password) {
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    variable: "NEBULA_ADMIN_PASSWORD",
                    when: "when NEBULA_ADMIN_USER is set",
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    variable: "NEBULA_ADMIN_USER",
                    when: "when NEBULA_ADMIN_PASSWORD is set",
                });
            }
            _ => {}
        }
        if auth_enabled && admin.user.is_none() && admin.token.is_none() {
            return Err(ConfigError::Missing {
                variable: "NEBULA_ADMIN_USER",
                when: "(with NEBULA_ADMIN_PASSWORD, or NEBULA_ADMIN_TOKEN) unless NEBULA_AUTH_ENABLED=false",
            });
        }
        let log_format = match value(environment, "NEBULA_LOG_FORMAT")
            .as_deref()
            .map(str::trim)
        {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "NEBULA_LOG_FORMAT",
                    reason: format!("{other:?} is not text or json"),
                });
            }
        };
        let outbox_secs: f64 = parsed(environment, "NEBULA_OUTBOX_INTERVAL_SECS", 5.0)?;
        let grace_secs: f64 = parsed(environment, "NEBULA_SHUTDOWN_GRACE_SECS", 20.0)?;
        let seconds = |variable: &'static str, secs: f64| {
            if secs.is_finite() && secs > 0.0 && secs < 86_400.0 {
                Ok(Duration::from_secs_f64(secs))
            } else {
                Err(ConfigError::Invalid {
                    variable,
                    reason: format!("{secs} is not between 0 and 86400 seconds"),
                })
            }
        };
        let publish_secs: f64 = parsed(environment, "NEBULA_PUBLISH_TIMEOUT_SECS", 30.0)?;
        let header_secs: f64 = parsed(environment, "NEBULA_HTTP_HEADER_TIMEOUT_SECS", 10.0)?;
        let request_secs: f64 = parsed(environment, "NEBULA_REQUEST_TIMEOUT_SECS", 60.0)?;
        let publish_timeout = seconds("NEBULA_PUBLISH_TIMEOUT_SECS", publish_secs)?;
        let request_timeout = seconds("NEBULA_REQUEST_TIMEOUT_SECS", request_secs)?;
        if request_timeout <= publish_timeout {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_REQUEST_TIMEOUT_SECS",
                reason: format!(
                    "{request_secs} s must be longer than NEBULA_PUBLISH_TIMEOUT_SECS ({publish_secs} s): a write waits for the confirm"
                ),
            });
        }
        let max_connections: usize = parsed(environment, "NEBULA_MAX_CONNECTIONS", 1024)?;
        if max_connections == 0 {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_MAX_CONNECTIONS",
                reason: "must be at least 1".into(),
            });
        }
        let sync_prefetch: u16 = parsed(environment, "NEBULA_SYNC_PREFETCH", 32)?;
        if sync_prefetch == 0 {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_SYNC_PREFETCH",
                reason: "must be at least 1 (0 would mean unbounded)".into(),
            });
        }
        let device_expiry_secs: u64 = parsed(
            environment,
            "NEBULA_DEVICE_EXPIRY_SECS",
            DEFAULT_DEVICE_EXPIRY_SECS,
        )?;
        if device_expiry_secs < 60 {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_DEVICE_EXPIRY_SECS",
                reason: format!("{device_expiry_secs} s is shorter than a minute"),
            });
        }
        let report_retention = report_retention(environment)?;
        let audit_ttl_secs: u64 = parsed(
            environment,
            "NEBULA_AUDIT_TTL_SECS",
            crate::audit::DEFAULT_TTL.as_secs(),
        )?;
        if audit_ttl_secs < 60 {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_AUDIT_TTL_SECS",
                reason: format!("{audit_ttl_secs} s is shorter than a minute"),
            });
        }
        let https = crate::https::Https::from_paths(
            value(environment, crate::https::CERT),
            value(environment, crate::https::KEY),
        )?;
        let device_credentials = device_credentials(environment, &amqp_urls)?;
        let signing = value(environment, "NEBULA_SIGNING_KEY_FILE")
            .map(|path| {
                crate::signing::Signer::from_file(path.trim())
                    .map(std::sync::Arc::new)
                    .map_err(|reason| ConfigError::Invalid {
                        variable: "NEBULA_SIGNING_KEY_FILE",
                        reason,
                    })
            })
            .transpose()?;
        Ok(Self {
            device_credentials,
            signing,
            device_expiry: Duration::from_secs(device_expiry_secs),
            report_retention,
            audit_ttl: Duration::from_secs(audit_ttl_secs),
            listen,
            https,
            amqp_urls,
            queue_type,
            store,
            auth_enabled,
            admin,
            log_format,
            outbox_interval: seconds("NEBULA_OUTBOX_INTERVAL_SECS", outbox_secs)?,
            sync_prefetch,
            shutdown_grace: seconds("NEBULA_SHUTDOWN_GRACE_SECS", grace_secs)?,
            publish_timeout,
            http: HttpLimits {
                header_read_timeout: seconds("NEBULA_HTTP_HEADER_TIMEOUT_SECS", header_secs)?,
                request_timeout,
                max_connections,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<&str, &str> = pairs.iter().copied().collect();
        Config::from_environment(&map)
    }

    #[test]
    fn defaults_with_an_admin() {
        let config = config(&[
            ("NEBULA_ADMIN_USER", "nebula"),
            ("NEBULA_ADMIN_PASSWORD", "nebula"),
        ])
        .expect("valid");
        assert_eq!(config.listen, "0.0.0.0:8080".parse().expect("addr"));
        assert_eq!(config.amqp_urls, [DEFAULT_AMQP_URL]);
        assert_eq!(config.queue_type, QueueType::Classic);
        assert_eq!(
            config.store,
            StoreConfig::Embedded {
                data_dir: PathBuf::from("./nebula-data")
            }
        );
        assert!(config.auth_enabled);
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.outbox_interval, Duration::from_secs(5));
        assert_eq!(config.sync_prefetch, 32);
        assert_eq!(config.publish_timeout, Duration::from_secs(30));
        assert_eq!(
            config.http,
            HttpLimits {
                header_read_timeout: Duration::from_secs(10),
                request_timeout: Duration::from_secs(60),
                max_connections: 1024,
            }
        );
    }

    #[test]
    fn mongodb_needs_a_url() {
        assert_eq!(
            config(&[
                ("NEBULA_STORE", "mongodb"),
                ("NEBULA_AUTH_ENABLED", "false")
            ])
            .err(),
            Some(ConfigError::Missing {
                variable: "NEBULA_MONGO_URL",
                when: "when NEBULA_STORE=mongodb"
            })
        );
        let config = config(&[
            ("NEBULA_STORE", "mongodb"),
            ("NEBULA_MONGO_URL", "mongodb://db:27017"),
            ("NEBULA_ADMIN_TOKEN", "t"),
        ])
        .expect("valid");
        assert_eq!(
            config.store,
            StoreConfig::Mongo {
                url: "mongodb://db:27017".into(),
                database: "nebula".into()
            }
        );
    }

    #[test]
    fn auth_needs_credentials_unless_disabled() {
        assert!(matches!(config(&[]), Err(ConfigError::Missing { .. })));
        assert!(config(&[("NEBULA_AUTH_ENABLED", "false")]).is_ok());
        assert!(config(&[("NEBULA_ADMIN_TOKEN", "t")]).is_ok());
        assert!(matches!(
            config(&[("NEBULA_ADMIN_USER", "u")]),
            Err(ConfigError::Missing {
                variable: "NEBULA_ADMIN_PASSWORD",
                ..
            })
        ));
    }

    #[test]
    fn a_list_of_broker_urls_is_a_cluster() {
        let base = [("NEBULA_AUTH_ENABLED", "false")];
        let with = |extra: &[(&'static str, &'static str)]| {
            let mut pairs = base.to_vec();
            pairs.extend_from_slice(extra);
            config(&pairs).expect("valid")
        };
        let cluster = with(&[(
            "NEBULA_AMQP_URL",
            "amqp://u:p@a:5681/%2f, amqp://u:p@b:5682/%2f,amqp://u:p@c:5683/%2f,",
        )]);
        assert_eq!(
            cluster.amqp_urls,
            [
                "amqp://u:p@a:5681/%2f",
                "amqp://u:p@b:5682/%2f",
                "amqp://u:p@c:5683/%2f"
            ]
        );
        assert_eq!(cluster.queue_type, QueueType::Quorum);
        let classic = with(&[
            ("NEBULA_AMQP_URL", "amqp://a:5681/,amqp://b:5682/"),
            ("NEBULA_AMQP_QUEUE_TYPE", "classic"),
        ]);
        assert_eq!(classic.queue_type, QueueType::Classic);
        // One URL to a cluster behind a load balancer: quorum when asked.
        let behind = with(&[
            ("NEBULA_AMQP_URL", "amqp://lb:5672/"),
            ("NEBULA_AMQP_QUEUE_TYPE", "quorum"),
        ]);
        assert_eq!(behind.queue_type, QueueType::Quorum);
    }

    #[test]
    fn debug_output_never_holds_a_password() {
        let printed = format!(
            "{:?}",
            config(&[
                ("NEBULA_AUTH_ENABLED", "false"),
                (
                    "NEBULA_AMQP_URL",
                    "amqp://nebula:amqp-secret@a:5672/%2f,amqps://nebula:amqp-secret@b:5671/prod",
                ),
                ("NEBULA_STORE", "mongodb"),
                (
                    "NEBULA_MONGO_URL",
                    "mongodb://admin:mongo-secret@db1:27017,db2:27017/?replicaSet=rs0",
                ),
            ])
            .expect("valid")
        );
        for secret in ["amqp-secret", "mongo-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert!(
            printed.contains("amqp://nebula:<redacted>@a:5672/%2f"),
            "{printed}"
        );
        assert!(
            printed.contains("mongodb://admin:<redacted>@db1:27017,db2:27017/?replicaSet=rs0"),
            "{printed}"
        );
        for (url, redacted) in [
            (
                "amqp://guest:guest@127.0.0.1:5672/%2f",
                "amqp://guest:<redacted>@127.0.0.1:5672/%2f",
            ),
            ("amqp://user@host/", "amqp://user@host/"),
            ("amqp://host", "amqp://host"),
            (
                "mongodb://u:p%40ss@h/db?x=a@b",
                "mongodb://u:<redacted>@h/db?x=a@b",
            ),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_password(url), redacted);
        }
    }

    #[test]
    fn a_signing_key_file_is_read_at_start_and_a_bad_one_names_the_variable() {
        let admin = [
            ("NEBULA_ADMIN_USER", "nebula"),
            ("NEBULA_ADMIN_PASSWORD", "nebula"),
        ];
        assert!(config(&admin).expect("valid").signing.is_none());
        let directory = tempfile::tempdir().expect("tempdir");
        let made = std::process::Command::new("openssl")
            .args(["genpkey", "-algorithm", "ed25519", "-out"])
            .arg(directory.path().join("key.pem"))
            .status()
            .expect("openssl");
        assert!(made.success());
        let good = directory.path().join("key.pem").display().to_string();
        let mut pairs: Vec<(&str, &str)> = admin.to_vec();
        pairs.push(("NEBULA_SIGNING_KEY_FILE", &good));
        let signed = config(&pairs).expect("valid");
        let signer = signed.signing.as_ref().expect("a signer");
        assert_eq!(signer.public_key().len(), 64);
        assert!(format!("{signed:?}").contains(signer.public_key()));
        let missing = directory.path().join("missing.pem").display().to_string();
        std::fs::write(
            directory.path().join("cert.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let not_a_key = directory.path().join("cert.pem").display().to_string();
        for bad in [missing, not_a_key] {
            let mut pairs: Vec<(&str, &str)> = admin.to_vec();
            pairs.push(("NEBULA_SIGNING_KEY_FILE", &bad));
            match config(&pairs) {
                Err(ConfigError::Invalid { variable, .. }) => {
                    assert_eq!(variable, "NEBULA_SIGNING_KEY_FILE");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn device_credentials_need_the_management_api_and_default_to_the_first_broker() {
        let admin = [
            ("NEBULA_ADMIN_USER", "nebula"),
            ("NEBULA_ADMIN_PASSWORD", "nebula"),
        ];
        let off = config(&admin).expect("valid");
        assert_eq!(off.device_credentials, None);
        assert!(shared_login_warning(&off).is_some());
        let mut on = admin.to_vec();
        on.extend([
            (
                "NEBULA_AMQP_URL",
                "amqp://cp:cp-secret@a:5672/fleet,amqp://cp:cp-secret@b:5672/fleet",
            ),
            (
                "NEBULA_RABBITMQ_MANAGEMENT_URL",
                "http://admin:mgmt-secret@a:15672",
            ),
        ]);
        let config_on = config(&on).expect("valid");
        let credentials = config_on.device_credentials.clone().expect("on");
        assert_eq!(
            credentials.device_amqp_urls,
            ["amqp://a:5672/fleet", "amqp://b:5672/fleet"]
        );
        assert_eq!(shared_login_warning(&config_on), None);
        let printed = format!("{config_on:?}");
        for secret in ["cp-secret", "mgmt-secret"] {
            assert!(!printed.contains(secret), "{printed}");
        }
        on.push((
            "NEBULA_DEVICE_AMQP_URL",
            "amqps://broker.example:5671/fleet",
        ));
        let public = config(&on).expect("valid").device_credentials.expect("on");
        assert_eq!(
            public.device_amqp_urls,
            ["amqps://broker.example:5671/fleet"]
        );
        for (variable, bad) in [
            ("NEBULA_RABBITMQ_MANAGEMENT_URL", "amqp://admin:x@a:5672"),
            ("NEBULA_DEVICE_AMQP_URL", "http://broker.example"),
        ] {
            let mut wrong = on.clone();
            wrong.retain(|(name, _)| *name != variable);
            wrong.push((variable, bad));
            assert!(
                matches!(config(&wrong), Err(ConfigError::Invalid { variable: named, .. }) if named == variable),
                "{variable}={bad}"
            );
        }
        let mut orphan = admin.to_vec();
        orphan.push(("NEBULA_DEVICE_AMQP_URL", "amqp://broker.example:5672/%2f"));
        assert!(matches!(
            config(&orphan),
            Err(ConfigError::Invalid {
                variable: "NEBULA_DEVICE_AMQP_URL",
                ..
            })
        ));
    }

    #[test]
    fn disabled_auth_beyond_loopback_is_warned_about() {
        let open = config(&[
            ("NEBULA_AUTH_ENABLED", "false"),
            ("NEBULA_LISTEN", "0.0.0.0:8180"),
        ])
        .expect("valid");
        let warning = insecure_listen_warning(&open).expect("a warning");
        assert!(warning.contains("0.0.0.0:8180"), "{warning}");
        let local = config(&[
            ("NEBULA_AUTH_ENABLED", "false"),
            ("NEBULA_LISTEN", "127.0.0.1:8180"),
        ])
        .expect("valid");
        assert_eq!(insecure_listen_warning(&local), None);
        let authenticated = config(&[
            ("NEBULA_ADMIN_TOKEN", "a-token"),
            ("NEBULA_LISTEN", "0.0.0.0:8180"),
        ])
        .expect("valid");
        assert_eq!(insecure_listen_warning(&authenticated), None);
    }

    #[test]
    fn plain_http_with_credentials_beyond_loopback_is_warned_about() {
        let open = config(&[
            ("NEBULA_ADMIN_TOKEN", "a-token"),
            ("NEBULA_LISTEN", "0.0.0.0:8180"),
        ])
        .expect("valid");
        let warning = plain_http_warning(&open).expect("a warning");
        assert!(warning.contains("NEBULA_TLS_CERT"), "{warning}");
        let local = config(&[
            ("NEBULA_ADMIN_TOKEN", "a-token"),
            ("NEBULA_LISTEN", "127.0.0.1:8180"),
        ])
        .expect("valid");
        assert_eq!(plain_http_warning(&local), None);
        // Without authentication there is no secret to leak (the other warning covers it).
        let no_auth = config(&[
            ("NEBULA_AUTH_ENABLED", "false"),
            ("NEBULA_LISTEN", "0.0.0.0:8180"),
        ])
        .expect("valid");
        assert_eq!(plain_http_warning(&no_auth), None);
    }

    #[test]
    fn a_bad_broker_url_is_named_without_its_password() {
        let pairs = [
            ("NEBULA_AUTH_ENABLED", "false"),
            (
                "NEBULA_AMQP_URL",
                "amqp://u:secret@a:5681/,amqp://u:secret@b:nope/",
            ),
        ];
        let error = config(&pairs).expect_err("invalid").to_string();
        assert!(error.contains("URL 2"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn rejects_bad_values() {
        let base = [("NEBULA_AUTH_ENABLED", "false")];
        for (name, bad) in [
            ("NEBULA_LISTEN", "nowhere"),
            ("NEBULA_AMQP_URL", "http://x"),
            ("NEBULA_AMQP_URL", "amqp://a:5672/,http://b"),
            ("NEBULA_AMQP_URL", "amqp://a:notaport/"),
            ("NEBULA_AMQP_URL", "amqp://u:p@[fd00::1]:5672/%2f"),
            ("NEBULA_AMQP_URL", " , "),
            ("NEBULA_AMQP_QUEUE_TYPE", "stream"),
            ("NEBULA_STORE", "sqlite"),
            ("NEBULA_LOG_FORMAT", "xml"),
            ("NEBULA_AUTH_ENABLED", "maybe"),
            ("NEBULA_OUTBOX_INTERVAL_SECS", "0"),
            ("NEBULA_OUTBOX_INTERVAL_SECS", "soon"),
            ("NEBULA_SYNC_PREFETCH", "0"),
            ("NEBULA_SYNC_PREFETCH", "70000"),
            ("NEBULA_PUBLISH_TIMEOUT_SECS", "0"),
            ("NEBULA_HTTP_HEADER_TIMEOUT_SECS", "-1"),
            ("NEBULA_REQUEST_TIMEOUT_SECS", "5"),
            ("NEBULA_MAX_CONNECTIONS", "0"),
        ] {
            let mut pairs = base.to_vec();
            pairs.retain(|(key, _)| *key != name);
            pairs.push((name, bad));
            if name == "NEBULA_AUTH_ENABLED" {
                pairs.push(("NEBULA_ADMIN_TOKEN", "t"));
            }
            assert!(
                matches!(config(&pairs), Err(ConfigError::Invalid { variable, .. }) if variable == name),
                "{name}={bad}"
            );
        }
    }
}
