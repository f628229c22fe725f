//! REST DTOs: parsing v2 JSON bodies into domain types and rendering domain types as v2
//! JSON. Parsing is by hand over `serde_json::Value` so that every kind of bad input gets
//! its documented answer (which field is unknown, which has the wrong type, v2's port
//! errors) instead of serde's first error.

use super::errors::ApiError;
use nebula_protocol::placement::validate_port_range;
use nebula_protocol::{
    AppConfig, ContainersPer, CronJob, DeviceGroup, EnvVarsForm, Name, PortMapping, PortProtocol,
    PullPolicy, ValidationError,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The app fields a client may write.
pub const APP_FIELDS: [&str; 13] = [
    "docker_image",
    "starting_ports",
    "containers_per",
    "env_vars",
    "running",
    "networks",
    "volumes",
    "devices",
    "privileged",
    "rolling_restart",
    // Beyond v2 (additive): a client that never sends them gets the defaults, which behave
    // as v2 did.
    "stop_timeout_secs",
    "pull_policy",
    // Accepted for v2 compatibility only as the same value as the path: see `parse_app`.
    "app_name",
];

/// The cron job fields a client may write.
pub const CRON_JOB_FIELDS: [&str; 9] = [
    "schedule",
    "docker_image",
    "env_vars",
    "running",
    "networks",
    "volumes",
    "devices",
    "privileged",
    // Accepted for v2 compatibility only as the same value as the path, as for apps.
    "cron_job_name",
];

/// The device group fields a client may write.
pub const GROUP_FIELDS: [&str; 2] = ["apps", "cron_jobs"];

/// Parses a body into a JSON object; anything else is v2's "missing parameters".
pub fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(ApiError::malformed()),
    }
}

pub fn unknown_fields(object: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    let unknown: Vec<String> = object
        .keys()
        .filter(|key| !known.contains(&key.as_str()))
        .cloned()
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(ApiError::unknown(unknown))
    }
}

/// The fields present in an app body, typed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AppPatch {
    pub docker_image: Option<String>,
    pub starting_ports: Option<Vec<PortMapping>>,
    pub containers_per: Option<ContainersPer>,
    /// With the form the client wrote them in.
    pub env_vars: Option<(BTreeMap<String, String>, EnvVarsForm)>,
    pub running: Option<bool>,
    pub networks: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub devices: Option<Vec<String>>,
    pub privileged: Option<bool>,
    pub rolling_restart: Option<bool>,
    pub stop_timeout_secs: Option<u32>,
    pub pull_policy: Option<PullPolicy>,
}

impl AppPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Writes the present fields over `config`.
    pub fn apply(self, config: &mut AppConfig) {
        if let Some(value) = self.docker_image {
            config.docker_image = value;
        }
        if let Some(value) = self.starting_ports {
            config.starting_ports = value;
        }
        if let Some(value) = self.containers_per {
            config.containers_per = value;
        }
        if let Some((vars, form)) = self.env_vars {
            config.env_vars = vars;
            config.env_vars_form = form;
        }
        if let Some(value) = self.running {
            config.running = value;
        }
        if let Some(value) = self.networks {
            config.networks = value;
        }
        if let Some(value) = self.volumes {
            config.volumes = value;
        }
        if let Some(value) = self.devices {
            config.devices = value;
        }
        if let Some(value) = self.privileged {
            config.privileged = value;
        }
        if let Some(value) = self.rolling_restart {
            config.rolling_restart = value;
        }
        if let Some(value) = self.stop_timeout_secs {
            config.stop_timeout_secs = value;
        }
        if let Some(value) = self.pull_policy {
            config.pull_policy = value;
        }
    }
}

fn string_list(value: &Value) -> Option<Vec<String>> {
    value
        .as_array()?
        .iter()
        .map(|item| item.as_str().map(str::to_string))
        .collect()
}

/// `env_vars` as a dict of strings or, as upstream also takes, a list of `K=V` strings (a
/// later entry of the same key wins, as in Docker); `None` for anything else, `K` without `=`
/// included.
fn env_vars(value: &Value) -> Option<(BTreeMap<String, String>, EnvVarsForm)> {
    if let Some(items) = value.as_array() {
        let vars = items
            .iter()
            .map(|item| {
                let (key, value) = item.as_str()?.split_once('=')?;
                Some((key.to_string(), value.to_string()))
            })
            .collect::<Option<BTreeMap<_, _>>>()?;
        return Some((vars, EnvVarsForm::List));
    }
    string_map(value).map(|vars| (vars, EnvVarsForm::Dict))
}

/// `env_vars` in the form the client wrote them: a dict, or a list of `K=V` strings.
fn env_vars_json(config: &AppConfig) -> Value {
    match config.env_vars_form {
        EnvVarsForm::Dict => json!(config.env_vars),
        EnvVarsForm::List => json!(
            config
                .env_vars
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect::<Vec<_>>()
        ),
    }
}

fn string_map(value: &Value) -> Option<BTreeMap<String, String>> {
    value
        .as_object()?
        .iter()
        .map(|(key, item)| item.as_str().map(|item| (key.clone(), item.to_string())))
        .collect()
}

fn containers_per(value: &Value) -> Option<ContainersPer> {
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    let (key, count) = object.iter().next()?;
    let count = u32::try_from(count.as_u64()?).ok()?;
    ContainersPer::from_key(key, count)
}

/// One port number from an int or an int-like string: `Err(shape)` when it is neither,
/// `Err(range)` when it is outside 1-65535.
fn port_number(value: &Value) -> Result<u16, ApiError> {
    let number: i128 = match value {
        Value::Number(number) => match number.as_i64() {
            Some(number) => i128::from(number),
            None => match number.as_u64() {
                Some(number) => i128::from(number),
                None => return Err(ApiError::port_shape()),
            },
        },
        Value::String(text) => text.trim().parse().map_err(|_| ApiError::port_shape())?,
        _ => return Err(ApiError::port_shape()),
    };
    u16::try_from(number)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(ApiError::invalid_port)
}

/// The container side of a `starting_ports` dict entry: a port, or (beyond v2) a port with
/// Docker's protocol suffix, `"53/udp"` or `"80/tcp"`.
fn container_port(value: &Value) -> Result<(u16, Option<PortProtocol>), ApiError> {
    if let Value::String(text) = value
        && let Some((port, protocol)) = text.trim().split_once('/')
    {
        let protocol = PortProtocol::from_name(protocol).ok_or_else(ApiError::port_shape)?;
        let port = port_number(&Value::String(port.to_string()))?;
        return Ok((port, Some(protocol)));
    }
    port_number(value).map(|port| (port, None))
}

/// v2's `starting_ports`: ints, or one-entry dicts `{"<host>": "<container>"}`, where the
/// container side may name its protocol (`"53/udp"`).
pub fn starting_ports(value: &Value) -> Result<Vec<PortMapping>, ApiError> {
    let items = value.as_array().ok_or_else(ApiError::port_shape)?;
    items
        .iter()
        .map(|item| match item {
            Value::Number(_) => {
                // A plain port must be an int, not an int-like string.
                port_number(item).map(PortMapping::Same)
            }
            Value::Object(entry) if entry.len() == 1 => {
                let (host, container) = entry.iter().next().ok_or_else(ApiError::port_shape)?;
                let host = port_number(&Value::String(host.clone()))?;
                Ok(match container_port(container)? {
                    (container, None) => PortMapping::Mapped { host, container },
                    (container, Some(protocol)) => PortMapping::MappedWithProtocol {
                        host,
                        container,
                        protocol,
                    },
                })
            }
            _ => Err(ApiError::port_shape()),
        })
        .collect()
}

/// Parses an app body. Unknown fields, then port errors, then wrong types are reported.
pub fn parse_app(object: &Map<String, Value>, app: &Name) -> Result<AppPatch, ApiError> {
    unknown_fields(object, &APP_FIELDS)?;
    let mut patch = AppPatch::default();
    if let Some(value) = object.get("starting_ports") {
        patch.starting_ports = Some(starting_ports(value)?);
    }
    let mut invalid = Vec::new();
    for (key, value) in object {
        let ok = match key.as_str() {
            "docker_image" => value
                .as_str()
                .map(|image| patch.docker_image = Some(image.to_string()))
                .is_some(),
            "starting_ports" => true,
            "containers_per" => containers_per(value)
                .map(|per| patch.containers_per = Some(per))
                .is_some(),
            "env_vars" => env_vars(value)
                .map(|vars| patch.env_vars = Some(vars))
                .is_some(),
            "running" => value
                .as_bool()
                .map(|flag| patch.running = Some(flag))
                .is_some(),
            "privileged" => value
                .as_bool()
                .map(|flag| patch.privileged = Some(flag))
                .is_some(),
            "rolling_restart" => value
                .as_bool()
                .map(|flag| patch.rolling_restart = Some(flag))
                .is_some(),
            // Its range is checked with the whole config (`validate_app`).
            "stop_timeout_secs" => value
                .as_u64()
                .and_then(|seconds| u32::try_from(seconds).ok())
                .map(|seconds| patch.stop_timeout_secs = Some(seconds))
                .is_some(),
            "pull_policy" => value
                .as_str()
                .and_then(PullPolicy::from_name)
                .map(|policy| patch.pull_policy = Some(policy))
                .is_some(),
            "networks" => string_list(value)
                .map(|list| patch.networks = Some(list))
                .is_some(),
            "volumes" => string_list(value)
                .map(|list| patch.volumes = Some(list))
                .is_some(),
            "devices" => string_list(value)
                .map(|list| patch.devices = Some(list))
                .is_some(),
            // Old clients send the name in the body too; it must match the path.
            "app_name" => value.as_str() == Some(app.as_str()),
            _ => false,
        };
        if !ok {
            invalid.push(key.clone());
        }
    }
    if invalid.is_empty() {
        Ok(patch)
    } else {
        Err(ApiError::invalid(invalid))
    }
}

/// Maps a domain validation failure to the v2 answer naming the field.
pub fn validation_error(error: &ValidationError) -> ApiError {
    let field = match error {
        ValidationError::Port(_) | ValidationError::PortRange { .. } => {
            return ApiError::invalid_port();
        }
        ValidationError::Image(_) => "docker_image",
        ValidationError::ContainersPer { .. } => "containers_per",
        ValidationError::EnvName(_) => "env_vars",
        ValidationError::Mount { field, .. } => field,
        ValidationError::Name { .. } | ValidationError::Duplicate(_) => "networks",
        ValidationError::Schedule(_) => "schedule",
        // Only group states carry an unavailable list; no REST body does.
        ValidationError::Unavailable(_) => "apps",
        ValidationError::StopTimeout { .. } => "stop_timeout_secs",
    };
    ApiError::invalid(vec![field.to_string()])
}

/// Validates a complete app config before it is stored.
pub fn validate_app(config: &AppConfig) -> Result<(), ApiError> {
    config
        .validate()
        .map_err(|error| validation_error(&error))?;
    // With a fixed count per device, every container's host port must fit; per-CPU and
    // per-memory counts depend on the device and are checked by the agent.
    if let ContainersPer::Server(count) | ContainersPer::Instance(count) = config.containers_per {
        validate_port_range(config, count).map_err(|error| validation_error(&error))?;
    }
    Ok(())
}

/// The v2 JSON of an app.
pub fn app_json(config: &AppConfig) -> Value {
    let ports: Vec<Value> = config
        .starting_ports
        .iter()
        .map(|mapping| match mapping {
            PortMapping::Same(port) => json!(port),
            PortMapping::Mapped { host, container } => {
                json!({ host.to_string(): container.to_string() })
            }
            PortMapping::MappedWithProtocol {
                host,
                container,
                protocol,
            } => json!({ host.to_string(): format!("{container}/{}", protocol.as_str()) }),
        })
        .collect();
    json!({
        "app_name": config.app_name.as_str(),
        "app_id": config.app_id,
        "docker_image": config.docker_image,
        "starting_ports": ports,
        "containers_per": { config.containers_per.key(): config.containers_per.value() },
        "env_vars": env_vars_json(config),
        "running": config.running,
        "networks": config.networks,
        "volumes": config.volumes,
        "devices": config.devices,
        "privileged": config.privileged,
        "rolling_restart": config.rolling_restart,
        "stop_timeout_secs": config.stop_timeout_secs,
        "pull_policy": config.pull_policy.as_str(),
    })
}

/// The fields present in a cron job body, typed.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct CronJobPatch {
    pub schedule: Option<String>,
    pub docker_image: Option<String>,
    pub env_vars: Option<BTreeMap<String, String>>,
    pub running: Option<bool>,
    pub networks: Option<Vec<String>>,
    pub volumes: Option<Vec<String>>,
    pub devices: Option<Vec<String>>,
    pub privileged: Option<bool>,
}

impl CronJobPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Writes the present fields over `job`.
    pub fn apply(self, job: &mut CronJob) {
        if let Some(value) = self.schedule {
            job.schedule = value;
        }
        if let Some(value) = self.docker_image {
            job.docker_image = value;
        }
        if let Some(value) = self.env_vars {
            job.env_vars = value;
        }
        if let Some(value) = self.running {
            job.running = value;
        }
        if let Some(value) = self.networks {
            job.networks = value;
        }
        if let Some(value) = self.volumes {
            job.volumes = value;
        }
        if let Some(value) = self.devices {
            job.devices = value;
        }
        if let Some(value) = self.privileged {
            job.privileged = value;
        }
    }
}

/// Parses a cron job body: unknown fields, then wrong types are reported. `env_vars` is a
/// dict (the list form is for apps only).
pub fn parse_cron_job(object: &Map<String, Value>, job: &Name) -> Result<CronJobPatch, ApiError> {
    unknown_fields(object, &CRON_JOB_FIELDS)?;
    let mut patch = CronJobPatch::default();
    let mut invalid = Vec::new();
    for (key, value) in object {
        let text = || value.as_str().map(str::to_string);
        let ok = match key.as_str() {
            "schedule" => text().map(|text| patch.schedule = Some(text)).is_some(),
            "docker_image" => text().map(|text| patch.docker_image = Some(text)).is_some(),
            "env_vars" => string_map(value)
                .map(|vars| patch.env_vars = Some(vars))
                .is_some(),
            "running" => value
                .as_bool()
                .map(|flag| patch.running = Some(flag))
                .is_some(),
            "privileged" => value
                .as_bool()
                .map(|flag| patch.privileged = Some(flag))
                .is_some(),
            "networks" => string_list(value)
                .map(|list| patch.networks = Some(list))
                .is_some(),
            "volumes" => string_list(value)
                .map(|list| patch.volumes = Some(list))
                .is_some(),
            "devices" => string_list(value)
                .map(|list| patch.devices = Some(list))
                .is_some(),
            "cron_job_name" => value.as_str() == Some(job.as_str()),
            _ => false,
        };
        if !ok {
            invalid.push(key.clone());
        }
    }
    if invalid.is_empty() {
        Ok(patch)
    } else {
        Err(ApiError::invalid(invalid))
    }
}

/// Validates a complete cron job before it is stored: a schedule that does not parse is
/// upstream's `400 {"schedule_valid": false}`, the rest as for apps.
pub fn validate_cron_job(job: &CronJob) -> Result<(), ApiError> {
    match job.validate() {
        Ok(()) => Ok(()),
        Err(ValidationError::Schedule(_)) => Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            json!({"schedule_valid": false}),
        )),
        Err(error) => Err(validation_error(&error)),
    }
}

/// The v2 JSON of a cron job.
pub fn cron_job_json(job: &CronJob) -> Value {
    json!({
        "cron_job_name": job.cron_job_name.as_str(),
        "cron_job_id": job.cron_job_id,
        "schedule": job.schedule,
        "docker_image": job.docker_image,
        "env_vars": job.env_vars,
        "running": job.running,
        "networks": job.networks,
        "volumes": job.volumes,
        "devices": job.devices,
        "privileged": job.privileged,
    })
}

/// The fields present in a device group body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct GroupPatch {
    pub apps: Option<Vec<Name>>,
    pub cron_jobs: Option<Vec<Name>>,
}

impl GroupPatch {
    pub fn is_empty(&self) -> bool {
        self.apps.is_none() && self.cron_jobs.is_none()
    }

    pub fn apply(self, group: &mut DeviceGroup) {
        if let Some(apps) = self.apps {
            group.apps = apps;
        }
        if let Some(cron_jobs) = self.cron_jobs {
            group.cron_jobs = cron_jobs;
        }
    }
}

fn name_list(object: &Map<String, Value>, key: &str) -> Result<Option<Vec<Name>>, ApiError> {
    let Some(value) = object.get(key) else {
        return Ok(None);
    };
    let not_list = || {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            json!({ format!("{key}_is_list"): false }),
        )
    };
    let items = value.as_array().ok_or_else(not_list)?;
    let mut names: Vec<Name> = Vec::with_capacity(items.len());
    for item in items {
        let text = item.as_str().ok_or_else(not_list)?;
        let name = Name::new(text).map_err(|_| ApiError::invalid_name(text))?;
        // A repeated name would mean nothing more; keep the first.
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(Some(names))
}

pub fn parse_group(object: &Map<String, Value>) -> Result<GroupPatch, ApiError> {
    unknown_fields(object, &GROUP_FIELDS)?;
    Ok(GroupPatch {
        apps: name_list(object, "apps")?,
        cron_jobs: name_list(object, "cron_jobs")?,
    })
}

/// The v2 JSON of a device group.
pub fn group_json(group: &DeviceGroup) -> Value {
    json!({
        "device_group": group.device_group.as_str(),
        "device_group_id": group.device_group_id,
        "prune_id": group.prune_id,
        "apps": group.apps.iter().map(Name::as_str).collect::<Vec<_>>(),
        "cron_jobs": group.cron_jobs.iter().map(Name::as_str).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_in_both_v2_forms() {
        let ports = starting_ports(&json!([80, {"8080": "80"}, {"9000": 90}])).expect("ports");
        assert_eq!(
            ports,
            vec![
                PortMapping::Same(80),
                PortMapping::Mapped {
                    host: 8080,
                    container: 80
                },
                PortMapping::Mapped {
                    host: 9000,
                    container: 90
                },
            ]
        );
    }

    #[test]
    fn container_ports_may_name_their_protocol() {
        let ports = starting_ports(&json!([{"5353": "53/udp"}, {"8080": "80/tcp"}, {"81": "81"}]))
            .expect("ports");
        assert_eq!(
            ports,
            vec![
                PortMapping::MappedWithProtocol {
                    host: 5353,
                    container: 53,
                    protocol: PortProtocol::Udp
                },
                PortMapping::MappedWithProtocol {
                    host: 8080,
                    container: 80,
                    protocol: PortProtocol::Tcp
                },
                PortMapping::Mapped {
                    host: 81,
                    container: 81
                },
            ]
        );
        for bad in [
            json!([{"53": "53/sctp"}]),
            json!([{"53/udp": "53"}]),
            json!([{"53": "udp/53"}]),
            json!([{"53": "/udp"}]),
        ] {
            assert_eq!(starting_ports(&bad), Err(ApiError::port_shape()), "{bad}");
        }
        assert_eq!(
            starting_ports(&json!([{"53": "0/udp"}])),
            Err(ApiError::invalid_port())
        );
    }

    #[test]
    fn port_errors_are_v2s() {
        for bad in [
            json!([0]),
            json!([70000]),
            json!([-1]),
            json!([{"80": "0"}]),
            json!([{"99999": "80"}]),
        ] {
            assert_eq!(starting_ports(&bad), Err(ApiError::invalid_port()), "{bad}");
        }
        for bad in [
            json!(["80"]),
            json!([1.5]),
            json!([{"a": "80"}]),
            json!([{"1": 2, "3": 4}]),
            json!(80),
            json!([true]),
            json!([[80]]),
        ] {
            assert_eq!(starting_ports(&bad), Err(ApiError::port_shape()), "{bad}");
        }
    }

    #[test]
    fn app_json_round_trips_through_parse() {
        let name = Name::new("web").expect("name");
        let mut config = AppConfig::new(name.clone(), "nginx:1");
        config.starting_ports = vec![
            PortMapping::Same(80),
            PortMapping::Mapped {
                host: 8080,
                container: 80,
            },
        ];
        config.starting_ports.push(PortMapping::MappedWithProtocol {
            host: 5353,
            container: 53,
            protocol: PortProtocol::Udp,
        });
        config.containers_per = ContainersPer::Memory(512);
        config.stop_timeout_secs = 45;
        config.pull_policy = PullPolicy::IfNotPresent;
        let json = app_json(&config);
        assert_eq!(json["starting_ports"][2], json!({"5353": "53/udp"}));
        assert_eq!(json["stop_timeout_secs"], json!(45));
        assert_eq!(json["pull_policy"], json!("if_not_present"));
        let mut object = json.as_object().cloned().expect("object");
        object.remove("app_id");
        let patch = parse_app(&object, &name).expect("parse");
        let mut parsed = AppConfig::new(name, "x");
        patch.apply(&mut parsed);
        assert_eq!(parsed, config);
    }
}
