//! What the fleet scenarios share: a vhost, a control plane, one app in one group, and a
//! fleet of simulated agents following that group.

use crate::system::{ControlPlane, StoreKind, scratch_dir};
use crate::unique_name;
use crate::vhost::Vhost;
use serde_json::json;

/// Which RabbitMQ a fleet benchmark runs on (`--broker single|cluster|both`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    /// The single node of `scripts/services.sh start` (`NEBULA_TEST_AMQP_URL`).
    Single,
    /// The three-node cluster of `scripts/services.sh start rabbitmq-cluster`: the control
    /// plane and every agent get the list of its nodes (so they spread over them), and the
    /// control plane's queues are quorum queues.
    Cluster,
}

impl Broker {
    /// The brokers `--broker` asks for, in the order they run.
    pub fn from_options(options: &super::Options) -> anyhow::Result<Vec<Self>> {
        match options.text("broker", "single").as_str() {
            "single" => Ok(vec![Self::Single]),
            "cluster" => Ok(vec![Self::Cluster]),
            "both" => Ok(vec![Self::Single, Self::Cluster]),
            other => anyhow::bail!("--broker must be single, cluster or both, got {other:?}"),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Single => "single",
            Self::Cluster => "cluster",
        }
    }

    /// The AMQP ports of its node(s), to sample their Erlang VMs.
    pub fn ports(self) -> Vec<u16> {
        match self {
            Self::Single => {
                let url = crate::services::amqp_url();
                let port = url
                    .rsplit_once(':')
                    .and_then(|(_, rest)| rest.split('/').next())
                    .and_then(|port| port.parse().ok())
                    .unwrap_or(5672);
                vec![port]
            }
            Self::Cluster => {
                let cluster = crate::cluster::Cluster::from_env();
                (0..cluster.len())
                    .map(|index| cluster.port(index))
                    .collect()
            }
        }
    }
}

/// Runs `scenario` on every broker `--broker` names: one broker's figures as they are, or
/// both side by side under `single` and `cluster`.
pub async fn on_brokers<F, Fut>(
    options: &super::Options,
    name: &str,
    scenario: F,
) -> anyhow::Result<serde_json::Value>
where
    F: Fn(Broker) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<serde_json::Value>>,
{
    let brokers = Broker::from_options(options)?;
    if let [broker] = brokers[..] {
        return scenario(broker).await;
    }
    let mut figures = serde_json::Map::new();
    figures.insert("scenario".into(), json!(name));
    for broker in brokers {
        eprintln!("{name}: on the {} broker", broker.label());
        figures.insert(broker.label().into(), scenario(broker).await?);
    }
    Ok(serde_json::Value::Object(figures))
}

#[derive(Debug)]
pub struct FleetBench {
    pub vhost: Vhost,
    /// What the control plane and the agents get as `NEBULA_AMQP_URL`.
    pub amqp_url: String,
    pub broker: Broker,
    pub control_plane: ControlPlane,
    pub app: String,
    pub group: String,
    pub state_root: std::path::PathBuf,
}

impl FleetBench {
    pub async fn prepare(label: &str, broker: Broker) -> anyhow::Result<Self> {
        Self::prepare_on(
            label,
            json!({"docker_image": crate::services::test_image(1)}),
            broker,
        )
        .await
    }

    /// As [`FleetBench::prepare`], with the app created from `app_body` (REST JSON).
    pub async fn prepare_with(label: &str, app_body: serde_json::Value) -> anyhow::Result<Self> {
        Self::prepare_on(label, app_body, Broker::Single).await
    }

    async fn prepare_on(
        label: &str,
        app_body: serde_json::Value,
        broker: Broker,
    ) -> anyhow::Result<Self> {
        raise_open_files_limit();
        raise_map_count();
        let vhost_name = unique_name(&format!("bench-{label}"));
        let (vhost, amqp_url) = match broker {
            Broker::Single => {
                let vhost = Vhost::create(&vhost_name)?;
                let url = vhost.amqp_url();
                (vhost, url)
            }
            Broker::Cluster => {
                let cluster = crate::cluster::Cluster::from_env();
                // A test may have left a node still rejoining.
                cluster
                    .wait_complete(std::time::Duration::from_secs(240))
                    .await?;
                let vhost = cluster.create_vhost(&vhost_name)?;
                let urls = cluster.url_list(&vhost.name);
                (vhost, urls)
            }
        };
        let directory = scratch_dir(&format!("bench-{label}"));
        let control_plane = ControlPlane::start(
            "cp",
            &StoreKind::Embedded(directory.join("store")),
            &amqp_url,
            &directory,
        )
        .await?;
        let rest = control_plane.rest();
        let app = unique_name("bench-app");
        let group = unique_name("bench-group");
        rest.create_app(&app, app_body).await?;
        rest.create_group(&group, &[&app]).await?;
        // Agent state on tmpfs where there is one: see `Fleet::start`.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            directory.clone()
        };
        let state_root = base.join(unique_name("nebula-fleet"));
        Ok(Self {
            vhost,
            amqp_url,
            broker,
            control_plane,
            app,
            group,
            state_root,
        })
    }

    pub fn app_name(&self) -> nebula_protocol::Name {
        nebula_protocol::Name::new(self.app.as_str()).expect("unique_name yields valid names")
    }
}

/// Ten thousand agents hold ten thousand sockets and state files: raise the soft limit on
/// open files to the hard limit (the default soft limit is often 1024).
pub fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if let Err(error) = setrlimit(Resource::Nofile, limit) {
            eprintln!("nebula-bench: could not raise the open files limit: {error}");
        }
    }
}

/// lapin runs each connection's I/O loop on its own thread, and every thread costs a few
/// memory mappings (stack, guard pages, signal stack): ten thousand agents in one process
/// exceed Linux's default of 65,530 mappings per process, and thread creation fails with
/// ENOMEM. Raised (system-wide; needs root) to 262,144 when lower, with a line saying so.
pub fn raise_map_count() {
    const PATH: &str = "/proc/sys/vm/max_map_count";
    const WANTED: u64 = 262_144;
    let current: u64 = std::fs::read_to_string(PATH)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(WANTED);
    if current >= WANTED {
        return;
    }
    match std::fs::write(PATH, WANTED.to_string()) {
        Ok(()) => eprintln!("nebula-bench: raised vm.max_map_count from {current} to {WANTED}"),
        Err(error) => eprintln!(
            "nebula-bench: vm.max_map_count is {current} and cannot be raised ({error}): \
             more than about 8,000 agents will fail to start threads"
        ),
    }
}
