//! Where an app's containers go on a device: how many, what they are called, which host
//! ports they get and how they are labelled. The control plane uses these to validate a
//! config before storing it; the agent to realise it.

use crate::model::{
    AppConfig, ContainersPer, DEFAULT_STOP_TIMEOUT_SECS, PortMapping, PortProtocol, PullPolicy,
    ValidationError,
};
use crate::names::Name;

/// Label every container Nebula manages carries, with value [`ORCHESTRATOR_VALUE`].
pub const LABEL_ORCHESTRATOR: &str = "orchestrator";
pub const ORCHESTRATOR_VALUE: &str = "nebula";
/// Label holding the app name.
pub const LABEL_APP_NAME: &str = "app_name";
/// Label holding the app revision the container was created for.
pub const LABEL_APP_ID: &str = "app_id";
/// Label holding the id of the device whose agent created the container.
pub const LABEL_DEVICE_ID: &str = "device_id";
/// Label holding a cron job's name on its containers.
pub const LABEL_CRON_JOB_NAME: &str = "cron_job_name";
/// Label holding the app's incarnation the container was created for (absent on containers
/// of protocol version 1, read as 0).
pub const LABEL_INCARNATION: &str = "incarnation";
/// Label holding [`config_hash`] of the config the container was created from.
pub const LABEL_CONFIG_HASH: &str = "config_hash";

/// What the agent knows about the device when sizing an app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceCapacity {
    pub cpu_cores: u32,
    pub memory_mb: u64,
}

/// How many containers `containers_per` asks for on a device.
///
/// `memory` gives one container per N MB, rounded down, but never fewer than one: an app
/// assigned to a device group is meant to run on every device of it, and silently running
/// nothing on a small board would be worse than running one container. The count is capped
/// at [`crate::model::MAX_CONTAINERS_PER_DEVICE`] so a typo cannot fork-bomb a device.
pub fn container_count(containers_per: ContainersPer, device: DeviceCapacity) -> u32 {
    let cap = u64::from(crate::model::MAX_CONTAINERS_PER_DEVICE);
    let wanted: u64 = match containers_per {
        ContainersPer::Server(count) | ContainersPer::Instance(count) => u64::from(count),
        ContainersPer::Cpu(per_core) => u64::from(per_core) * u64::from(device.cpu_cores.max(1)),
        ContainersPer::Memory(megabytes) | ContainersPer::Mem(megabytes) => {
            (device.memory_mb / u64::from(megabytes.max(1))).max(1)
        }
    };
    // The cap fits in u32, so the conversion cannot fail.
    u32::try_from(wanted.clamp(1, cap)).unwrap_or(crate::model::MAX_CONTAINERS_PER_DEVICE)
}

/// `<app>-<n>`, with n counted from 1 for the container at 0-based `index`.
pub fn container_name(app: &Name, index: u32) -> String {
    format!("{app}-{}", u64::from(index) + 1)
}

/// The 0-based index of a container called `<app>-<n>`, if the name is one of `app`'s.
pub fn container_index(app: &Name, container_name: &str) -> Option<u32> {
    let number = container_name
        .strip_prefix(app.as_str())?
        .strip_prefix('-')?;
    if number.starts_with('0') || number.starts_with('+') {
        return None;
    }
    number.parse::<u32>().ok()?.checked_sub(1)
}

/// One published port of one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedPort {
    pub host: u16,
    pub container: u16,
    pub protocol: PortProtocol,
}

/// The ports container `index` publishes: host port = starting port + index.
pub fn published_ports(
    ports: &[PortMapping],
    index: u32,
) -> Result<Vec<PublishedPort>, ValidationError> {
    ports
        .iter()
        .map(|mapping| {
            let host = u32::from(mapping.host_base()) + index;
            let host = u16::try_from(host).map_err(|_| ValidationError::PortRange {
                port: mapping.host_base(),
                count: index + 1,
            })?;
            Ok(PublishedPort {
                host,
                container: mapping.container_port(),
                protocol: mapping.protocol(),
            })
        })
        .collect()
}

/// A short, stable fingerprint of everything an app's config says: 16 hex digits of FNV-1a
/// (64 bit) over a canonical byte stream of its fields. Containers are labelled with it, so
/// that a container whose (incarnation, revision) labels match the desired ones but which
/// was created from another config (a store that reused the numbers) is still replaced.
///
/// Stable across releases by construction: the stream is written field by field here, not
/// by a serialiser, and a field added to [`AppConfig`] later must join it only when its
/// value differs from its default, so that upgrading an agent never makes every container
/// look outdated. (`stop_timeout_secs` and `pull_policy` joined that way; so did the
/// `MappedWithProtocol` port form, which only configs that use it contain.)
pub fn config_hash(app: &AppConfig) -> String {
    let mut hasher = Fnv1a::default();
    hasher.text(app.app_name.as_str());
    hasher.number(app.incarnation);
    hasher.number(app.app_id);
    hasher.text(&app.docker_image);
    hasher.number(app.starting_ports.len() as u64);
    for mapping in &app.starting_ports {
        let (tag, host, container) = match *mapping {
            PortMapping::Same(port) => (0, port, port),
            PortMapping::Mapped { host, container } => (1, host, container),
            PortMapping::MappedWithProtocol {
                host, container, ..
            } => (2, host, container),
        };
        hasher.number(tag);
        hasher.number(u64::from(host));
        hasher.number(u64::from(container));
        if let PortMapping::MappedWithProtocol { protocol, .. } = mapping {
            hasher.text(protocol.as_str());
        }
    }
    hasher.text(app.containers_per.key());
    hasher.number(u64::from(app.containers_per.value()));
    hasher.number(app.env_vars.len() as u64);
    for (key, value) in &app.env_vars {
        hasher.text(key);
        hasher.text(value);
    }
    hasher.number(u64::from(app.running));
    for list in [&app.networks, &app.volumes, &app.devices] {
        hasher.number(list.len() as u64);
        for item in list {
            hasher.text(item);
        }
    }
    hasher.number(u64::from(app.privileged));
    hasher.number(u64::from(app.rolling_restart));
    // Fields appended after the hash was first released: each joins the stream, tagged with
    // its name, only when it differs from its default.
    if app.stop_timeout_secs != DEFAULT_STOP_TIMEOUT_SECS {
        hasher.text("stop_timeout_secs");
        hasher.number(u64::from(app.stop_timeout_secs));
    }
    if app.pull_policy != PullPolicy::default() {
        hasher.text("pull_policy");
        hasher.text(app.pull_policy.as_str());
    }
    format!("{:016x}", hasher.0)
}

/// FNV-1a, 64 bit: no dependency, and plenty for telling configs apart (not a security
/// boundary: whoever can label containers can also start them).
struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn number(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    /// Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
    fn text(&mut self, value: &str) {
        self.number(value.len() as u64);
        self.bytes(value.as_bytes());
    }
}

/// Checks that `count` containers of `app` all get valid host ports.
pub fn validate_port_range(app: &AppConfig, count: u32) -> Result<(), ValidationError> {
    published_ports(&app.starting_ports, count.saturating_sub(1)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PI: DeviceCapacity = DeviceCapacity {
        cpu_cores: 4,
        memory_mb: 3906,
    };

    #[test]
    fn counts_containers_per_key() {
        assert_eq!(container_count(ContainersPer::Server(3), PI), 3);
        assert_eq!(container_count(ContainersPer::Instance(2), PI), 2);
        assert_eq!(container_count(ContainersPer::Cpu(2), PI), 8);
        assert_eq!(container_count(ContainersPer::Memory(1000), PI), 3);
        assert_eq!(container_count(ContainersPer::Mem(512), PI), 7);
        // Smaller than one unit of memory still runs one container.
        assert_eq!(container_count(ContainersPer::Memory(8192), PI), 1);
        // Degenerate device facts never divide by zero or run nothing.
        let empty = DeviceCapacity {
            cpu_cores: 0,
            memory_mb: 0,
        };
        assert_eq!(container_count(ContainersPer::Cpu(1), empty), 1);
        assert_eq!(container_count(ContainersPer::Memory(0), empty), 1);
        let big = DeviceCapacity {
            cpu_cores: u32::MAX,
            memory_mb: u64::MAX,
        };
        assert_eq!(container_count(ContainersPer::Cpu(u32::MAX), big), 1024);
        assert_eq!(container_count(ContainersPer::Memory(1), big), 1024);
    }

    #[test]
    fn names_containers_from_one() {
        let app = Name::new("web").expect("name");
        assert_eq!(container_name(&app, 0), "web-1");
        assert_eq!(container_name(&app, 9), "web-10");
        assert_eq!(container_index(&app, "web-1"), Some(0));
        assert_eq!(container_index(&app, "web-10"), Some(9));
        for other in [
            "web-0", "web-01", "web-", "web", "webx-1", "web-1a", "web-+1", "api-1",
        ] {
            assert_eq!(container_index(&app, other), None, "{other}");
        }
        // An app whose name continues with a dash is not confused with another's containers.
        assert_eq!(container_index(&app, "web-api-1"), None);
    }

    #[test]
    fn config_hash_is_stable_and_sees_every_field() {
        let app = AppConfig::new(Name::new("web").expect("name"), "nginx");
        // Pinned: a change of this value makes every container of every fleet look
        // outdated after an agent upgrade (see `config_hash`).
        assert_eq!(config_hash(&app), "f08f864e3aadb6c5");
        let variants: Vec<AppConfig> = vec![
            AppConfig {
                incarnation: 1,
                ..app.clone()
            },
            AppConfig {
                app_id: 2,
                ..app.clone()
            },
            AppConfig {
                docker_image: "nginx:2".into(),
                ..app.clone()
            },
            AppConfig {
                starting_ports: vec![PortMapping::Same(80)],
                ..app.clone()
            },
            AppConfig {
                starting_ports: vec![PortMapping::Mapped {
                    host: 80,
                    container: 80,
                }],
                ..app.clone()
            },
            AppConfig {
                containers_per: ContainersPer::Instance(1),
                ..app.clone()
            },
            AppConfig {
                env_vars: [("A".to_string(), "1".to_string())].into(),
                ..app.clone()
            },
            AppConfig {
                running: false,
                ..app.clone()
            },
            AppConfig {
                networks: vec!["nebula".into()],
                ..app.clone()
            },
            AppConfig {
                volumes: vec!["/a:/b".into()],
                ..app.clone()
            },
            AppConfig {
                devices: vec!["/a:/b".into()],
                ..app.clone()
            },
            AppConfig {
                privileged: true,
                ..app.clone()
            },
            AppConfig {
                rolling_restart: true,
                ..app.clone()
            },
            AppConfig {
                stop_timeout_secs: 30,
                ..app.clone()
            },
            AppConfig {
                pull_policy: PullPolicy::IfNotPresent,
                ..app.clone()
            },
            AppConfig {
                starting_ports: vec![PortMapping::MappedWithProtocol {
                    host: 80,
                    container: 80,
                    protocol: PortProtocol::Tcp,
                }],
                ..app.clone()
            },
            AppConfig {
                starting_ports: vec![PortMapping::MappedWithProtocol {
                    host: 80,
                    container: 80,
                    protocol: PortProtocol::Udp,
                }],
                ..app.clone()
            },
        ];
        let mut hashes: Vec<String> = variants.iter().map(config_hash).collect();
        hashes.push(config_hash(&app));
        let count = hashes.len();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), count, "every field changes the hash");
        // Moving bytes between adjacent strings changes it too.
        let mut left = app.clone();
        left.env_vars = [("AB".to_string(), "C".to_string())].into();
        let mut right = app.clone();
        right.env_vars = [("A".to_string(), "BC".to_string())].into();
        assert_ne!(config_hash(&left), config_hash(&right));
        // An appended field at its default leaves the hash as it was before the field
        // existed (the pinned value above has the defaults).
        let explicit_defaults = AppConfig {
            stop_timeout_secs: DEFAULT_STOP_TIMEOUT_SECS,
            pull_policy: PullPolicy::Always,
            ..app.clone()
        };
        assert_eq!(config_hash(&explicit_defaults), "f08f864e3aadb6c5");
    }

    #[test]
    fn assigns_host_ports_by_index() {
        let ports = [
            PortMapping::Same(80),
            PortMapping::Mapped {
                host: 8000,
                container: 80,
            },
        ];
        assert_eq!(
            published_ports(&ports, 2).expect("in range"),
            vec![
                PublishedPort {
                    host: 82,
                    container: 80,
                    protocol: PortProtocol::Tcp,
                },
                PublishedPort {
                    host: 8002,
                    container: 80,
                    protocol: PortProtocol::Tcp,
                },
            ]
        );
        let udp = [PortMapping::MappedWithProtocol {
            host: 5300,
            container: 53,
            protocol: PortProtocol::Udp,
        }];
        assert_eq!(
            published_ports(&udp, 1).expect("in range"),
            vec![PublishedPort {
                host: 5301,
                container: 53,
                protocol: PortProtocol::Udp,
            }]
        );
        assert!(published_ports(&[PortMapping::Same(65535)], 1).is_err());
        assert!(published_ports(&[PortMapping::Same(65535)], 0).is_ok());

        let mut app = AppConfig::new(Name::new("web").expect("name"), "nginx");
        app.starting_ports = vec![PortMapping::Same(65530)];
        assert!(validate_port_range(&app, 6).is_ok());
        assert!(validate_port_range(&app, 7).is_err());
    }
}
