//! Configuration from the environment (DESIGN §5), parsed into a validated [`Config`] before
//! any other I/O. Parsing goes through [`Environment`] so tests feed a map instead of mutating
//! the process environment, and the host facts it needs (the machine id, the host name) come
//! in as a [`HostIdentity`] read by the caller.

#[cfg(feature = "amqp")]
use crate::brokers::BrokerList;
use crate::error::ConfigError;
#[cfg(feature = "mqtt")]
use crate::mqtt_url::MqttUrl;
use crate::tls::{self, TlsSettings};
use nebula_protocol::Name;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where configuration values come from.
pub trait Environment {
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnvironment;

impl Environment for ProcessEnvironment {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).cloned()
    }
}

impl Environment for HashMap<&str, &str> {
    fn get(&self, key: &str) -> Option<String> {
        HashMap::get(self, key).map(|value| value.to_string())
    }
}

pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const DEFAULT_MQTT_URL: &str = "mqtt://guest:guest@127.0.0.1:1883";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/nebula-agent";
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";
/// Six hours: reports also go out after every applied change, and the control plane tells a
/// connected device by its exclusive queue, so the periodic report only refreshes resource
/// usage. Each costs 1.4 KB on the wire with ten containers, its confirm included (issue
/// 19: at the old 60 s default, 61 MB a month).
pub const DEFAULT_REPORT_INTERVAL_SECS: u64 = 6 * 60 * 60;
pub const DEFAULT_MAX_BACKOFF_SECS: u64 = 30;
/// Fifteen minutes: the AMQP heartbeat timeout the agent asks the broker for. Each side then
/// sends a heartbeat frame after half of it without sending anything else (lapin and
/// RabbitMQ alike), each with its TCP ACK: 224 bytes on the wire every 7.5 minutes, about
/// 1.3 MB a month, against 19 MB at RabbitMQ's 60 s (2 MB at 600 s, over issue 19's budget
/// once reports are added). A dead link is noticed within half of it plus
/// [`MAX_UNACKNOWLEDGED`] (see [`Config::heartbeat`]): 9.5 minutes.
pub const DEFAULT_HEARTBEAT_SECS: u64 = 900;
/// The longest the agent's broker socket keeps data the broker has not acknowledged
/// (`TCP_USER_TIMEOUT`, when half the heartbeat is longer): two minutes of retransmissions is
/// a dead link, not a slow one, and a cellular outage shorter than that costs no reconnect.
pub const MAX_UNACKNOWLEDGED: Duration = Duration::from_secs(120);

/// Facts about the host the configuration depends on, read once by `main`
/// ([`crate::device::host_identity`]) so that parsing stays free of I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostIdentity {
    /// Reported to the control plane; never the device id (every stock Raspberry Pi OS
    /// card is called `raspberrypi`).
    pub hostname: String,
    /// The first of `/etc/machine-id` and `/var/lib/dbus/machine-id` that exists and is not
    /// empty: the default device id.
    pub machine_id: Option<MachineId>,
}

/// The contents of a machine-id file, with where they came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineId {
    pub path: PathBuf,
    pub contents: String,
}

/// What the agent follows: one device group, or a fixed list of apps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Group(Name),
    Apps(Vec<Name>),
}

/// Which container runtime realises the desired state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    Docker,
    Simulated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Credentials for the private registry apps pull from.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub host: String,
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    // The password must never reach a log line through a `?config` field.
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RegistryAuth")
            .field("host", &self.host)
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Docker's `max-size` of a created container's log file, and how many rotated files are
/// kept: 3 × 10 MB at most per container, so a chatty container cannot fill an SD card.
pub const DEFAULT_CONTAINER_LOG_MAX_SIZE: &str = "10m";
pub const DEFAULT_CONTAINER_LOG_MAX_FILES: u32 = 3;

/// How Docker keeps the logs of the containers this agent creates: the `json-file` driver
/// (what `docker logs` reads on any engine) rotated by size. Applies to containers created
/// after a change of the settings; running ones keep theirs until their app changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerLogs {
    /// `NEBULA_CONTAINER_LOG_MAX_SIZE`, Docker's `max-size`: a number with an optional `k`,
    /// `m` or `g`.
    pub max_size: String,
    /// `NEBULA_CONTAINER_LOG_MAX_FILES`, Docker's `max-file`: at least 1.
    pub max_files: u32,
}

impl Default for ContainerLogs {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_CONTAINER_LOG_MAX_SIZE.to_string(),
            max_files: DEFAULT_CONTAINER_LOG_MAX_FILES,
        }
    }
}

/// How the agent reaches the broker: `NEBULA_TRANSPORT`.
/// Only the transports this agent was built with exist (the configuration says what is
/// missing): AMQP with the `amqp` feature (the default), MQTT with `mqtt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// AMQP 0-9-1 (the default): `NEBULA_AMQP_URL`.
    #[cfg(feature = "amqp")]
    Amqp,
    /// MQTT 3.1.1 through RabbitMQ's MQTT plugin: `NEBULA_MQTT_URL`.
    #[cfg(feature = "mqtt")]
    Mqtt(MqttUrl),
}

/// The agent's validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub transport: Transport,
    /// `NEBULA_AMQP_URL`: one broker, or the nodes of a cluster.
    #[cfg(feature = "amqp")]
    pub brokers: BrokerList,
    /// TLS of the transport's broker connection: `NEBULA_AMQP_CA_FILE`, `_CERT_FILE`,
    /// `_KEY_FILE` for `amqps://`, `NEBULA_MQTT_CA_FILE`, `_CERT_FILE`, `_KEY_FILE` for
    /// `mqtts://`.
    pub tls: TlsSettings,
    /// The control plane's public key (`NEBULA_SIGNING_KEY`, or the one pinned at enrolment):
    /// with it, every change and sync reply must carry its signature
    /// (`nebula_protocol::signing`), or it is dropped.
    pub signing_key: Option<[u8; nebula_protocol::signing::PUBLIC_KEY_LEN]>,
    pub device_id: Name,
    pub hostname: String,
    pub mode: Mode,
    pub state_dir: PathBuf,
    pub runtime: RuntimeKind,
    /// `DOCKER_HOST`: a `unix://` socket path (the only transport this agent is built with).
    pub docker_host: String,
    pub container_logs: ContainerLogs,
    pub registry: Option<RegistryAuth>,
    pub max_restart_wait: Duration,
    pub report_interval: Duration,
    /// The AMQP heartbeat timeout the agent asks for (`NEBULA_HEARTBEAT_SECS`, or the
    /// `heartbeat` parameter of the URL). The agent sends a heartbeat after half of it
    /// without writing, and the broker connection's socket gives up on data unacknowledged
    /// for [`Config::unacknowledged_limit`] (`TCP_USER_TIMEOUT`), so a link that dies is
    /// noticed within half a timeout plus that limit; a stock RabbitMQ drops the connection
    /// after two to three timeouts without hearing from the agent (sooner with its own
    /// `TCP_USER_TIMEOUT`, as `scripts/services.sh` sets it).
    pub heartbeat: Duration,
    pub log_format: LogFormat,
    /// How long to wait for the first sync reply before asking again; each further attempt
    /// of one boot flow waits twice as long, up to `max_sync_timeout`.
    pub sync_timeout: Duration,
    pub max_sync_timeout: Duration,
    /// Ceiling of every retry backoff (reconnect, unknown app, locked queue, Docker errors):
    /// `NEBULA_MAX_BACKOFF_SECS`.
    pub max_backoff: Duration,
    /// How often the reconciler re-checks containers without a change (unhealthy ones).
    pub resync_interval: Duration,
}

impl Config {
    /// How long the broker socket keeps unacknowledged data before the connection ends
    /// (`TCP_USER_TIMEOUT`): half the heartbeat, at most [`MAX_UNACKNOWLEDGED`]. A dead link is
    /// noticed within half a heartbeat (when the agent next writes) plus this.
    pub fn unacknowledged_limit(&self) -> Duration {
        (self.heartbeat / 2).min(MAX_UNACKNOWLEDGED)
    }

    /// Reads and validates the configuration. The device id defaults to the host's machine id.
    pub fn from_env(
        environment: &impl Environment,
        host: &HostIdentity,
    ) -> Result<Self, ConfigError> {
        let non_empty = |key: &str| {
            environment
                .get(key)
                .filter(|value| !value.trim().is_empty())
        };

        let group = non_empty("NEBULA_DEVICE_GROUP").or_else(|| non_empty("DEVICE_GROUP"));
        let apps = non_empty("NEBULA_APPS").or_else(|| non_empty("APP_NAME"));
        let mode = match (group, apps) {
            (Some(_), Some(_)) => return Err(ConfigError::BothModes),
            (None, None) => return Err(ConfigError::NoMode),
            (Some(group), None) => Mode::Group(parse_name("NEBULA_DEVICE_GROUP", group.trim())?),
            (None, Some(apps)) => {
                let mut names: Vec<Name> = Vec::new();
                for app in apps.split(',').map(str::trim).filter(|app| !app.is_empty()) {
                    let name = parse_name("NEBULA_APPS", app)?;
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                if names.is_empty() {
                    return Err(ConfigError::Invalid {
                        variable: "NEBULA_APPS",
                        reason: "no app names".into(),
                    });
                }
                Mode::Apps(names)
            }
        };

        let device_id = device_id(environment, host)?;

        #[cfg(feature = "amqp")]
        let brokers = BrokerList::parse(
            &non_empty("NEBULA_AMQP_URL").unwrap_or_else(|| DEFAULT_AMQP_URL.into()),
        )
        .map_err(|reason| ConfigError::Invalid {
            variable: "NEBULA_AMQP_URL",
            reason,
        })?;
        let transport = parse_transport(
            non_empty("NEBULA_TRANSPORT").as_deref(),
            non_empty("NEBULA_MQTT_URL").as_deref(),
        )?;
        // Each transport has TLS files of its own; the other's set is a mistake to point out,
        // not to ignore (the operator believes the link uses them).
        // Which of the transport's broker URLs ask for TLS, of how many.
        let (used, unused, transport_name, tls_nodes, nodes) = match &transport {
            #[cfg(feature = "amqp")]
            Transport::Amqp => (
                &tls::AMQP,
                &tls::MQTT,
                "amqp",
                brokers.tls_nodes(),
                brokers.brokers().len(),
            ),
            #[cfg(feature = "mqtt")]
            Transport::Mqtt(url) => (&tls::MQTT, &tls::AMQP, "mqtt", usize::from(url.tls), 1),
        };
        if let Some(variable) = unused.first_set(non_empty) {
            return Err(ConfigError::Invalid {
                variable,
                reason: format!(
                    "is set, but NEBULA_TRANSPORT is {transport_name}: this transport's TLS files are {}, {} and {}",
                    used.ca, used.cert, used.key
                ),
            });
        }
        let tls = TlsSettings::from_env(non_empty, used, tls_nodes, nodes)?;
        let signing_key = signing_key(non_empty("NEBULA_SIGNING_KEY").as_deref(), &transport)?;

        let runtime = match non_empty("NEBULA_RUNTIME").as_deref().map(str::trim) {
            None | Some("docker") => RuntimeKind::Docker,
            Some("simulated") => RuntimeKind::Simulated,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    variable: "NEBULA_RUNTIME",
                    reason: format!("{other:?}: expected docker or simulated"),
                });
            }
        };

        let log_format = log_format(environment)?;

        let registry = match (
            non_empty("NEBULA_REGISTRY_HOST"),
            non_empty("NEBULA_REGISTRY_USER"),
            non_empty("NEBULA_REGISTRY_PASSWORD"),
        ) {
            (None, None, None) => None,
            (Some(host), Some(user), Some(password)) => Some(RegistryAuth {
                host,
                user,
                password,
            }),
            _ => {
                return Err(ConfigError::Invalid {
                    variable: "NEBULA_REGISTRY_HOST",
                    reason: "set NEBULA_REGISTRY_HOST, NEBULA_REGISTRY_USER and NEBULA_REGISTRY_PASSWORD together".into(),
                });
            }
        };

        let report_interval = parse_seconds(
            environment,
            "NEBULA_REPORT_INTERVAL_SECS",
            DEFAULT_REPORT_INTERVAL_SECS,
        )?;
        if report_interval.is_zero() {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_REPORT_INTERVAL_SECS",
                reason: "must be at least 1".into(),
            });
        }

        #[cfg(feature = "amqp")]
        let from_url = amqp_url_heartbeat(&brokers)?;
        // Only AMQP URLs carry a heartbeat.
        #[cfg(not(feature = "amqp"))]
        let from_url = None;
        let heartbeat = parse_heartbeat(environment, from_url)?;

        let docker_host = non_empty("DOCKER_HOST").unwrap_or_else(|| DEFAULT_DOCKER_HOST.into());
        if runtime == RuntimeKind::Docker {
            validate_docker_host(&docker_host)?;
        }

        let container_logs = ContainerLogs {
            max_size: match non_empty("NEBULA_CONTAINER_LOG_MAX_SIZE") {
                Some(size) => parse_log_size(size.trim())?,
                None => DEFAULT_CONTAINER_LOG_MAX_SIZE.to_string(),
            },
            max_files: match non_empty("NEBULA_CONTAINER_LOG_MAX_FILES") {
                Some(files) => match files.trim().parse::<u32>() {
                    Ok(count)
                        if (1..=100).contains(&count)
                            && files.trim().bytes().all(|byte| byte.is_ascii_digit()) =>
                    {
                        count
                    }
                    _ => {
                        return Err(ConfigError::Invalid {
                            variable: "NEBULA_CONTAINER_LOG_MAX_FILES",
                            reason: format!("{files:?}: expected a number of files from 1 to 100"),
                        });
                    }
                },
                None => DEFAULT_CONTAINER_LOG_MAX_FILES,
            },
        };

        let max_backoff = parse_seconds(
            environment,
            "NEBULA_MAX_BACKOFF_SECS",
            DEFAULT_MAX_BACKOFF_SECS,
        )?;
        if max_backoff.is_zero() {
            return Err(ConfigError::Invalid {
                variable: "NEBULA_MAX_BACKOFF_SECS",
                reason: "must be at least 1".into(),
            });
        }

        Ok(Self {
            transport,
            #[cfg(feature = "amqp")]
            brokers,
            tls,
            signing_key,
            device_id,
            hostname: host.hostname.clone(),
            mode,
            state_dir: state_dir(environment),
            runtime,
            docker_host,
            container_logs,
            registry,
            max_restart_wait: parse_seconds(environment, "NEBULA_MAX_RESTART_WAIT_SECS", 0)?,
            report_interval,
            heartbeat,
            log_format,
            sync_timeout: Duration::from_secs(10),
            max_sync_timeout: Duration::from_secs(160),
            max_backoff,
            resync_interval: Duration::from_secs(15),
        })
    }

    /// A short label for logs: the group, or the comma-joined apps.
    pub fn mode_label(&self) -> String {
        match &self.mode {
            Mode::Group(group) => format!("group {group}"),
            Mode::Apps(apps) => format!(
                "apps {}",
                apps.iter().map(Name::as_str).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

/// `NEBULA_SIGNING_KEY`: the control plane's ed25519 public key, 64 hex digits. Signatures
/// travel in AMQP headers, which MQTT 3.1.1 does not have: an MQTT agent cannot check them.
fn signing_key(
    value: Option<&str>,
    transport: &Transport,
) -> Result<Option<[u8; nebula_protocol::signing::PUBLIC_KEY_LEN]>, ConfigError> {
    let Some(value) = value else {
        return Ok(None);
    };
    #[cfg(feature = "mqtt")]
    if matches!(transport, Transport::Mqtt(_)) {
        return Err(ConfigError::Invalid {
            variable: "NEBULA_SIGNING_KEY",
            reason: "signed changes need NEBULA_TRANSPORT=amqp (MQTT 3.1.1 has no headers to carry the signature)".into(),
        });
    }
    let _ = transport;
    nebula_protocol::signing::parse_public_key(value)
        .map(Some)
        .map_err(|reason| ConfigError::Invalid {
            variable: "NEBULA_SIGNING_KEY",
            reason,
        })
}

/// The device id: `NEBULA_DEVICE_ID`, else the host's machine id.
pub fn device_id(environment: &impl Environment, host: &HostIdentity) -> Result<Name, ConfigError> {
    match environment
        .get("NEBULA_DEVICE_ID")
        .filter(|value| !value.trim().is_empty())
    {
        Some(id) => parse_name("NEBULA_DEVICE_ID", id.trim()),
        None => device_id_from_machine_id(host.machine_id.as_ref()),
    }
}

/// `NEBULA_LOG_FORMAT`: read before the rest too, so that enrolment (`crate::enrol`) logs in it.
pub fn log_format(environment: &impl Environment) -> Result<LogFormat, ConfigError> {
    match environment
        .get("NEBULA_LOG_FORMAT")
        .as_deref()
        .map(str::trim)
        .filter(|value| !value.is_empty())
    {
        None | Some("text") => Ok(LogFormat::Text),
        Some("json") => Ok(LogFormat::Json),
        Some(other) => Err(ConfigError::Invalid {
            variable: "NEBULA_LOG_FORMAT",
            reason: format!("{other:?}: expected text or json"),
        }),
    }
}

/// Where the agent keeps its state: `NEBULA_STATE_DIR`, else [`DEFAULT_STATE_DIR`].
pub fn state_dir(environment: &impl Environment) -> PathBuf {
    environment
        .get("NEBULA_STATE_DIR")
        .filter(|value| !value.trim().is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), PathBuf::from)
}

/// The default device id: the machine id, 32 hex digits (`machine-id(5)`).
/// Anything else — no file, or the `uninitialized` placeholder of an image that never
/// booted with systemd — would give many devices one id, so it is a configuration error.
fn device_id_from_machine_id(machine_id: Option<&MachineId>) -> Result<Name, ConfigError> {
    let Some(machine_id) = machine_id else {
        return Err(ConfigError::Invalid {
            variable: "NEBULA_DEVICE_ID",
            reason: "unset, and neither /etc/machine-id nor /var/lib/dbus/machine-id exists; \
                     set NEBULA_DEVICE_ID to a unique id for this device (1-64 of A-Z a-z 0-9 _ . -)"
                .into(),
        });
    };
    let contents = machine_id.contents.trim();
    let valid = contents.len() == 32 && contents.bytes().all(|byte| byte.is_ascii_hexdigit());
    match Name::new(contents) {
        Ok(name) if valid => Ok(name),
        _ => Err(ConfigError::Invalid {
            variable: "NEBULA_DEVICE_ID",
            reason: format!(
                "unset, and {} holds {contents:?}, not a machine id (32 hex digits); \
                 set NEBULA_DEVICE_ID to a unique id for this device, or regenerate the machine id \
                 (systemd-machine-id-setup)",
                machine_id.path.display()
            ),
        }),
    }
}

/// The `heartbeat` parameter of the broker URLs, when they give one (all the same one).
#[cfg(feature = "amqp")]
fn amqp_url_heartbeat(brokers: &BrokerList) -> Result<Option<u16>, ConfigError> {
    let mut in_urls: Vec<u16> = brokers
        .brokers()
        .iter()
        .filter_map(|broker| broker.uri().query.heartbeat)
        .collect();
    in_urls.sort_unstable();
    in_urls.dedup();
    if in_urls.len() > 1 {
        return Err(ConfigError::Invalid {
            variable: "NEBULA_AMQP_URL",
            reason: "the broker URLs ask for different heartbeats".into(),
        });
    }
    Ok(in_urls.first().copied())
}

/// The heartbeat timeout: `NEBULA_HEARTBEAT_SECS`, or the URL's `heartbeat` parameter (the
/// one lapin and other AMQP clients read), or the default. Setting both is ambiguous, so it
/// is an error even when they agree; so is 0 (no heartbeat: a dead link would never be
/// noticed, and RabbitMQ would keep the device's queue forever).
fn parse_heartbeat(
    environment: &impl Environment,
    from_url: Option<u16>,
) -> Result<Duration, ConfigError> {
    const VARIABLE: &str = "NEBULA_HEARTBEAT_SECS";
    let explicit = environment
        .get(VARIABLE)
        .filter(|value| !value.trim().is_empty());
    let (variable, seconds) = match (explicit, from_url) {
        (Some(_), Some(_)) => {
            return Err(ConfigError::Invalid {
                variable: VARIABLE,
                reason: "set either NEBULA_HEARTBEAT_SECS or the heartbeat parameter of NEBULA_AMQP_URL, not both".into(),
            });
        }
        (Some(_), None) => (
            VARIABLE,
            parse_seconds(environment, VARIABLE, DEFAULT_HEARTBEAT_SECS)?.as_secs(),
        ),
        (None, Some(seconds)) => ("NEBULA_AMQP_URL", u64::from(seconds)),
        (None, None) => (VARIABLE, DEFAULT_HEARTBEAT_SECS),
    };
    // The AMQP field is 16 bits wide.
    if seconds == 0 || seconds > u64::from(u16::MAX) {
        return Err(ConfigError::Invalid {
            variable,
            reason: format!("heartbeat {seconds} s: must be 1 to {} seconds", u16::MAX),
        });
    }
    Ok(Duration::from_secs(seconds))
}

/// `NEBULA_TRANSPORT` (`amqp`, the default, or `mqtt`) with `NEBULA_MQTT_URL`.
fn parse_transport(
    transport: Option<&str>,
    mqtt_url: Option<&str>,
) -> Result<Transport, ConfigError> {
    let invalid = |variable, reason: String| ConfigError::Invalid { variable, reason };
    // An agent built with MQTT only takes MQTT without being told.
    let asked = transport
        .map(str::trim)
        .unwrap_or(if cfg!(feature = "amqp") {
            "amqp"
        } else {
            "mqtt"
        });
    match asked {
        #[cfg(feature = "amqp")]
        "amqp" if mqtt_url.is_some() => Err(invalid(
            // Most likely NEBULA_TRANSPORT was forgotten: say so rather than go on over AMQP.
            "NEBULA_MQTT_URL",
            "is set, but NEBULA_TRANSPORT is not mqtt (the agent would use NEBULA_AMQP_URL)".into(),
        )),
        #[cfg(feature = "amqp")]
        "amqp" => Ok(Transport::Amqp),
        #[cfg(not(feature = "amqp"))]
        "amqp" => Err(invalid(
            "NEBULA_TRANSPORT",
            "this agent was built without AMQP (an MQTT-only build): use mqtt".into(),
        )),
        #[cfg(feature = "mqtt")]
        "mqtt" => MqttUrl::parse(mqtt_url.unwrap_or(DEFAULT_MQTT_URL))
            .map(Transport::Mqtt)
            .map_err(|reason| invalid("NEBULA_MQTT_URL", reason)),
        #[cfg(not(feature = "mqtt"))]
        "mqtt" => Err(invalid(
            "NEBULA_TRANSPORT",
            "this agent was built without MQTT (the `mqtt` feature); the release builds have it"
                .into(),
        )),
        other => Err(invalid(
            "NEBULA_TRANSPORT",
            format!("{other:?} is not a transport: amqp (the default) or mqtt"),
        )),
    }
}

/// `DOCKER_HOST` must name a unix socket by absolute path: the agent is built with that
/// transport only, and a value it cannot use must stop it with the other configuration
/// errors (exit 64) rather than fail every engine call in a restart loop.
fn validate_docker_host(value: &str) -> Result<(), ConfigError> {
    match value.strip_prefix("unix://") {
        Some(path) if path.starts_with('/') && path.len() > 1 => Ok(()),
        _ => Err(ConfigError::Invalid {
            variable: "DOCKER_HOST",
            reason: format!(
                "{value:?}: expected unix:///path/to/docker.sock (this agent talks to the engine over its unix socket only)"
            ),
        }),
    }
}

/// A Docker log `max-size`: digits, then optionally `k`, `m` or `g`; at least 1 KiB's worth
/// so the engine does not rotate on every line.
fn parse_log_size(value: &str) -> Result<String, ConfigError> {
    let invalid = || ConfigError::Invalid {
        variable: "NEBULA_CONTAINER_LOG_MAX_SIZE",
        reason: format!("{value:?}: expected a size such as 10m, 512k or 1g"),
    };
    let lower = value.to_ascii_lowercase();
    let (digits, multiplier) = match lower.char_indices().last() {
        Some((at, 'k')) => (&lower[..at], 1u64 << 10),
        Some((at, 'm')) => (&lower[..at], 1 << 20),
        Some((at, 'g')) => (&lower[..at], 1 << 30),
        _ => (lower.as_str(), 1),
    };
    // Digits only (`u64::from_str` takes a leading `+`, which Docker refuses), and a byte
    // count the engine can hold (an i64).
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid());
    }
    let bytes = digits
        .parse::<u64>()
        .ok()
        .and_then(|number| number.checked_mul(multiplier))
        .filter(|bytes| *bytes <= i64::MAX as u64)
        .ok_or_else(invalid)?;
    if bytes < 1024 {
        return Err(invalid());
    }
    Ok(lower)
}

fn parse_name(variable: &'static str, value: &str) -> Result<Name, ConfigError> {
    Name::new(value).map_err(|error| ConfigError::Invalid {
        variable,
        reason: format!("{value:?}: {error}"),
    })
}

fn parse_seconds(
    environment: &impl Environment,
    variable: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    match environment
        .get(variable)
        .filter(|value| !value.trim().is_empty())
    {
        None => Ok(Duration::from_secs(default)),
        Some(value) => value
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| ConfigError::Invalid {
                variable,
                reason: format!("{value:?} is not a whole number of seconds"),
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MACHINE_ID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";

    fn host(machine_id: Option<&str>) -> HostIdentity {
        HostIdentity {
            hostname: "raspberrypi".into(),
            machine_id: machine_id.map(|contents| MachineId {
                path: PathBuf::from("/etc/machine-id"),
                contents: contents.into(),
            }),
        }
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let environment: HashMap<&str, &str> = pairs.iter().copied().collect();
        Config::from_env(&environment, &host(Some(&format!("{MACHINE_ID}\n"))))
    }

    #[test]
    fn a_signing_key_is_64_hex_digits_and_needs_amqp() {
        let key = "ab".repeat(32);
        let config =
            parse(&[("NEBULA_DEVICE_GROUP", "g"), ("NEBULA_SIGNING_KEY", &key)]).expect("valid");
        assert_eq!(config.signing_key, Some([0xab; 32]));
        assert_eq!(
            parse(&[("NEBULA_DEVICE_GROUP", "g")])
                .expect("valid")
                .signing_key,
            None
        );
        for bad in ["ab", "zz".repeat(32).as_str()] {
            match parse(&[("NEBULA_DEVICE_GROUP", "g"), ("NEBULA_SIGNING_KEY", bad)]) {
                Err(ConfigError::Invalid { variable, .. }) => {
                    assert_eq!(variable, "NEBULA_SIGNING_KEY");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        #[cfg(feature = "mqtt")]
        match parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_TRANSPORT", "mqtt"),
            ("NEBULA_SIGNING_KEY", &key),
        ]) {
            Err(ConfigError::Invalid { variable, reason }) => {
                assert_eq!(variable, "NEBULA_SIGNING_KEY");
                assert!(reason.contains("amqp"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn group_mode_with_defaults() {
        let config = parse(&[("NEBULA_DEVICE_GROUP", "edge")]).expect("valid");
        assert_eq!(config.mode, Mode::Group(Name::new("edge").expect("name")));
        // The machine id, not the host name: every stock Raspberry Pi OS card is
        // `raspberrypi` (issue 12, defect 9).
        assert_eq!(config.device_id, MACHINE_ID);
        assert_eq!(config.hostname, "raspberrypi");
        assert_eq!(config.max_backoff, Duration::from_secs(30));
        #[cfg(feature = "amqp")]
        assert_eq!(
            config.brokers,
            BrokerList::parse(DEFAULT_AMQP_URL).expect("valid")
        );
        assert_eq!(config.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(config.runtime, RuntimeKind::Docker);
        assert_eq!(config.docker_host, DEFAULT_DOCKER_HOST);
        assert_eq!(config.report_interval, Duration::from_secs(6 * 60 * 60));
        assert_eq!(config.heartbeat, Duration::from_secs(900));
        assert_eq!(config.unacknowledged_limit(), Duration::from_secs(120));
        assert_eq!(config.max_restart_wait, Duration::ZERO);
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(config.registry.is_none());
    }

    #[test]
    fn app_mode_from_either_variable() {
        let config = parse(&[("NEBULA_APPS", "web, api,web")]).expect("valid");
        assert_eq!(
            config.mode,
            Mode::Apps(vec![
                Name::new("web").expect("name"),
                Name::new("api").expect("name")
            ])
        );
        let seed = parse(&[("APP_NAME", "legacy")]).expect("valid");
        assert_eq!(
            seed.mode,
            Mode::Apps(vec![Name::new("legacy").expect("name")])
        );
        let alias = parse(&[("DEVICE_GROUP", "g")]).expect("valid");
        assert_eq!(alias.mode, Mode::Group(Name::new("g").expect("name")));
    }

    #[test]
    fn exactly_one_mode() {
        assert!(matches!(parse(&[]), Err(ConfigError::NoMode)));
        assert!(matches!(
            parse(&[("NEBULA_DEVICE_GROUP", "  ")]),
            Err(ConfigError::NoMode)
        ));
        assert!(matches!(
            parse(&[("NEBULA_DEVICE_GROUP", "g"), ("APP_NAME", "a")]),
            Err(ConfigError::BothModes)
        ));
        assert!(matches!(
            parse(&[("NEBULA_APPS", ",,")]),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn every_variable_is_read_and_validated() {
        let config = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_AMQP_URL", "amqp://u:p@broker:5672/vh"),
            ("NEBULA_DEVICE_ID", "pi-7"),
            ("NEBULA_STATE_DIR", "/tmp/state"),
            ("NEBULA_RUNTIME", "simulated"),
            ("DOCKER_HOST", "unix:///run/docker.sock"),
            ("NEBULA_REGISTRY_HOST", "127.0.0.1:5000"),
            ("NEBULA_REGISTRY_USER", "nebula"),
            ("NEBULA_REGISTRY_PASSWORD", "secret"),
            ("NEBULA_MAX_RESTART_WAIT_SECS", "5"),
            ("NEBULA_REPORT_INTERVAL_SECS", "7"),
            ("NEBULA_LOG_FORMAT", "json"),
            ("NEBULA_MAX_BACKOFF_SECS", "300"),
            ("NEBULA_HEARTBEAT_SECS", "45"),
        ])
        .expect("valid");
        assert_eq!(config.heartbeat, Duration::from_secs(45));
        assert_eq!(config.max_backoff, Duration::from_secs(300));
        assert_eq!(config.device_id, "pi-7");
        assert_eq!(config.state_dir, PathBuf::from("/tmp/state"));
        assert_eq!(config.runtime, RuntimeKind::Simulated);
        assert_eq!(config.docker_host, "unix:///run/docker.sock");
        assert_eq!(config.max_restart_wait, Duration::from_secs(5));
        assert_eq!(config.report_interval, Duration::from_secs(7));
        assert_eq!(config.log_format, LogFormat::Json);
        let registry = config.registry.expect("registry");
        assert_eq!(registry.user, "nebula");
        assert!(!format!("{registry:?}").contains("secret"));

        for bad in [
            ("NEBULA_RUNTIME", "podman"),
            ("NEBULA_LOG_FORMAT", "xml"),
            ("NEBULA_REPORT_INTERVAL_SECS", "0"),
            ("NEBULA_REPORT_INTERVAL_SECS", "soon"),
            ("NEBULA_MAX_RESTART_WAIT_SECS", "-1"),
            ("NEBULA_DEVICE_ID", "bad id"),
            ("NEBULA_REGISTRY_USER", "only-user"),
            ("NEBULA_MAX_BACKOFF_SECS", "0"),
            ("NEBULA_MAX_BACKOFF_SECS", "a while"),
            ("NEBULA_HEARTBEAT_SECS", "0"),
            ("NEBULA_HEARTBEAT_SECS", "65536"),
            ("NEBULA_HEARTBEAT_SECS", "often"),
            ("DOCKER_HOST", "tcp://127.0.0.1:2375"),
            ("DOCKER_HOST", "/var/run/docker.sock"),
            ("DOCKER_HOST", "unix://var/run/docker.sock"),
            ("DOCKER_HOST", "unix://"),
            ("NEBULA_CONTAINER_LOG_MAX_SIZE", "big"),
            ("NEBULA_CONTAINER_LOG_MAX_SIZE", "10t"),
            ("NEBULA_CONTAINER_LOG_MAX_SIZE", "100"),
            ("NEBULA_CONTAINER_LOG_MAX_SIZE", "m"),
            ("NEBULA_CONTAINER_LOG_MAX_SIZE", "+10m"),
            ("NEBULA_CONTAINER_LOG_MAX_SIZE", "99999999999g"),
            ("NEBULA_CONTAINER_LOG_MAX_FILES", "+3"),
            ("NEBULA_CONTAINER_LOG_MAX_FILES", "0"),
            ("NEBULA_CONTAINER_LOG_MAX_FILES", "101"),
            ("NEBULA_CONTAINER_LOG_MAX_FILES", "three"),
        ] {
            assert!(
                matches!(
                    parse(&[("NEBULA_DEVICE_GROUP", "g"), bad]),
                    Err(ConfigError::Invalid { .. })
                ),
                "{bad:?} should be rejected"
            );
        }
        // Read by agents built with AMQP only (an MQTT-only build has no use for it).
        #[cfg(feature = "amqp")]
        for bad in [
            "http://broker",
            "amqp://broker:notaport/",
            " , ",
            "amqp://a/%2f,http://b",
        ] {
            assert!(
                matches!(
                    parse(&[("NEBULA_DEVICE_GROUP", "g"), ("NEBULA_AMQP_URL", bad)]),
                    Err(ConfigError::Invalid {
                        variable: "NEBULA_AMQP_URL",
                        ..
                    })
                ),
                "{bad:?} should be rejected"
            );
        }
    }

    #[cfg(not(feature = "amqp"))]
    #[test]
    fn an_mqtt_only_agent_takes_mqtt_unasked_and_refuses_amqp() {
        let config = parse(&[("NEBULA_DEVICE_GROUP", "g")]).expect("config");
        assert!(matches!(config.transport, Transport::Mqtt(_)));
        let error = parse(&[("NEBULA_DEVICE_GROUP", "g"), ("NEBULA_TRANSPORT", "amqp")])
            .expect_err("no AMQP in this build");
        assert!(error.to_string().contains("without AMQP"), "{error}");
        // Even with an MQTT URL set: the build, not a forgotten variable, is the reason.
        let error = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_TRANSPORT", "amqp"),
            ("NEBULA_MQTT_URL", "mqtt://broker"),
        ])
        .expect_err("no AMQP in this build");
        assert!(error.to_string().contains("without AMQP"), "{error}");
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn amqp_unless_mqtt_is_asked_for() {
        let base = [("NEBULA_DEVICE_GROUP", "g")];
        assert_eq!(parse(&base).expect("config").transport, Transport::Amqp);
        let mqtt = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_TRANSPORT", "mqtt"),
            ("NEBULA_MQTT_URL", "mqtt://pi:pw@broker:1883/fleet"),
        ]);
        #[cfg(feature = "mqtt")]
        {
            let Transport::Mqtt(url) = mqtt.expect("config").transport else {
                panic!("not mqtt");
            };
            assert_eq!(
                (url.host.as_str(), url.username.as_str()),
                ("broker", "fleet:pi")
            );
        }
        #[cfg(not(feature = "mqtt"))]
        {
            assert!(
                matches!(
                    mqtt,
                    Err(ConfigError::Invalid {
                        variable: "NEBULA_TRANSPORT",
                        ..
                    })
                ),
                "{mqtt:?}"
            );
        }
        for (transport, url, variable) in [
            (Some("carrier-pigeon"), None, "NEBULA_TRANSPORT"),
            (None, Some("mqtt://broker"), "NEBULA_MQTT_URL"),
            (Some("amqp"), Some("mqtt://broker"), "NEBULA_MQTT_URL"),
        ] {
            let mut pairs = vec![("NEBULA_DEVICE_GROUP", "g")];
            pairs.extend(transport.map(|value| ("NEBULA_TRANSPORT", value)));
            pairs.extend(url.map(|value| ("NEBULA_MQTT_URL", value)));
            let error = parse(&pairs).expect_err("refused");
            assert!(
                matches!(error, ConfigError::Invalid { variable: got, .. } if got == variable),
                "{pairs:?}: {error}"
            );
        }
        if cfg!(feature = "mqtt") {
            let error = parse(&[
                ("NEBULA_DEVICE_GROUP", "g"),
                ("NEBULA_TRANSPORT", "mqtt"),
                ("NEBULA_MQTT_URL", "amqp://broker"),
            ])
            .expect_err("not an mqtt URL");
            assert!(error.to_string().starts_with("NEBULA_MQTT_URL"), "{error}");
        }
    }

    #[test]
    fn each_transport_takes_its_own_tls_files_only() {
        // MQTT's files with the AMQP transport: named, not ignored.
        #[cfg(feature = "amqp")]
        {
            let error = parse(&[
                ("NEBULA_DEVICE_GROUP", "g"),
                ("NEBULA_MQTT_CA_FILE", "/etc/nebula/ca.pem"),
            ])
            .expect_err("refused");
            assert!(
                matches!(
                    error,
                    ConfigError::Invalid {
                        variable: "NEBULA_MQTT_CA_FILE",
                        ..
                    }
                ),
                "{error}"
            );
            assert!(
                error.to_string().contains("NEBULA_TRANSPORT is amqp"),
                "{error}"
            );
        }
        if cfg!(feature = "mqtt") {
            let error = parse(&[
                ("NEBULA_DEVICE_GROUP", "g"),
                ("NEBULA_TRANSPORT", "mqtt"),
                ("NEBULA_AMQP_KEY_FILE", "/etc/nebula/device.key"),
            ])
            .expect_err("refused");
            assert!(
                matches!(
                    error,
                    ConfigError::Invalid {
                        variable: "NEBULA_AMQP_KEY_FILE",
                        ..
                    }
                ),
                "{error}"
            );
            assert!(
                error.to_string().contains("NEBULA_MQTT_KEY_FILE"),
                "{error}"
            );
        }
        if cfg!(all(feature = "mqtt", feature = "tls")) {
            // A CA file with a plain mqtt:// URL would encrypt nothing.
            let error = parse(&[
                ("NEBULA_DEVICE_GROUP", "g"),
                ("NEBULA_TRANSPORT", "mqtt"),
                ("NEBULA_MQTT_URL", "mqtt://broker"),
                ("NEBULA_MQTT_CA_FILE", "/etc/nebula/ca.pem"),
            ])
            .expect_err("refused");
            assert!(
                error
                    .to_string()
                    .contains("NEBULA_MQTT_URL is a plain mqtt:// URL"),
                "{error}"
            );
        }
    }

    #[test]
    fn container_logs_rotate_by_default_and_take_docker_sizes() {
        let config = parse(&[("NEBULA_DEVICE_GROUP", "g")]).expect("valid");
        assert_eq!(config.container_logs, ContainerLogs::default());
        assert_eq!(
            (
                config.container_logs.max_size.as_str(),
                config.container_logs.max_files
            ),
            ("10m", 3)
        );
        for (size, read) in [
            ("512k", "512k"),
            ("2M", "2m"),
            ("1g", "1g"),
            ("4096", "4096"),
        ] {
            let config = parse(&[
                ("NEBULA_DEVICE_GROUP", "g"),
                ("NEBULA_CONTAINER_LOG_MAX_SIZE", size),
                ("NEBULA_CONTAINER_LOG_MAX_FILES", "5"),
            ])
            .expect("valid");
            assert_eq!(config.container_logs.max_size, read);
            assert_eq!(config.container_logs.max_files, 5);
        }
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn the_amqp_url_may_list_the_nodes_of_a_cluster() {
        let config = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            (
                "NEBULA_AMQP_URL",
                "amqp://u:p@rabbit-1:5672/vh, amqp://u:p@rabbit-2:5672/vh,",
            ),
        ])
        .expect("valid");
        let nodes: Vec<String> = config
            .brokers
            .brokers()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            nodes,
            ["rabbit-1:5672 (vhost vh)", "rabbit-2:5672 (vhost vh)"]
        );

        let error = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            (
                "NEBULA_AMQP_URL",
                "amqp://u:secret@rabbit-1/vh,amqp://u:secret@rabbit-2:notaport/vh",
            ),
        ])
        .expect_err("bad second entry")
        .to_string();
        assert!(
            error.starts_with(
                "NEBULA_AMQP_URL is invalid: entry 2 of 2 (amqp://u:***@rabbit-2:notaport/vh): "
            ),
            "{error}"
        );
        assert!(!error.contains("secret"), "{error}");
    }

    #[cfg(feature = "amqp")]
    #[test]
    fn the_heartbeat_comes_from_the_variable_or_the_url_but_not_both() {
        let from_url = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_AMQP_URL", "amqp://u:p@broker:5672/vh?heartbeat=120"),
        ])
        .expect("valid");
        assert_eq!(from_url.heartbeat, Duration::from_secs(120));
        let both = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_AMQP_URL", "amqp://u:p@broker:5672/vh?heartbeat=120"),
            ("NEBULA_HEARTBEAT_SECS", "120"),
        ]);
        assert!(
            matches!(
                both,
                Err(ConfigError::Invalid {
                    variable: "NEBULA_HEARTBEAT_SECS",
                    ..
                })
            ),
            "{both:?}"
        );
        let none = parse(&[
            ("NEBULA_DEVICE_GROUP", "g"),
            ("NEBULA_AMQP_URL", "amqp://u:p@broker:5672/vh?heartbeat=0"),
        ]);
        assert!(
            matches!(
                none,
                Err(ConfigError::Invalid {
                    variable: "NEBULA_AMQP_URL",
                    ..
                })
            ),
            "{none:?}"
        );
    }

    #[test]
    fn without_a_usable_machine_id_the_device_id_must_be_set() {
        let environment: HashMap<&str, &str> = [("NEBULA_DEVICE_GROUP", "g")].into_iter().collect();
        for machine_id in [
            None,
            Some("uninitialized"),
            Some("not hex at all"),
            Some("3d1219c7c4c5404aaa1f6d2a48adfda"),
        ] {
            let error = Config::from_env(&environment, &host(machine_id))
                .expect_err("no usable machine id");
            assert!(
                error.to_string().contains("set NEBULA_DEVICE_ID"),
                "{machine_id:?}: {error}"
            );
        }
        // An explicit id needs no machine id.
        let explicit: HashMap<&str, &str> =
            [("NEBULA_DEVICE_GROUP", "g"), ("NEBULA_DEVICE_ID", "pi-7")]
                .into_iter()
                .collect();
        let config = Config::from_env(&explicit, &host(None)).expect("valid");
        assert_eq!(config.device_id, "pi-7");
    }
}
