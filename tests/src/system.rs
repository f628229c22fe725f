//! The whole system on one machine: control-plane and agent processes under the supervisor,
//! pointed at the real services, each test in its own names and directories.

use crate::binaries::binary;
use crate::process::Supervised;
use crate::rest::Rest;
use crate::{services, unique_name, wait_for};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub const ADMIN_USER: &str = "nebula";
pub const ADMIN_PASSWORD: &str = "nebula-test";

/// A scratch directory for one test's state, stores and logs. Kept after the run (under
/// the system temp dir) so that a failure can be read afterwards.
pub fn scratch_dir(test: &str) -> PathBuf {
    let directory = std::env::temp_dir()
        .join("nebula-tests")
        .join(unique_name(test));
    std::fs::create_dir_all(&directory).expect("create scratch dir");
    directory
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("bind a free port")
}

/// Which store a control plane uses.
#[derive(Debug, Clone)]
pub enum StoreKind {
    /// The embedded store in this directory.
    Embedded(PathBuf),
    /// MongoDB(-wire) with this database name.
    Mongo(String),
}

/// One control-plane process.
#[derive(Debug, Clone)]
pub struct ControlPlane {
    pub process: Supervised,
    pub address: String,
    /// Serving HTTPS (`NEBULA_TLS_CERT` given) with a certificate of the development CA.
    pub https: bool,
}

impl ControlPlane {
    pub async fn start(
        name: &str,
        store: &StoreKind,
        amqp_url: &str,
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Self> {
        Self::start_with(name, store, amqp_url, log_dir, &[]).await
    }

    /// Like `start`, with more environment (time limits, `NEBULA_ADMIN_TOKEN`, ...).
    pub async fn start_with(
        name: &str,
        store: &StoreKind,
        amqp_url: &str,
        log_dir: &std::path::Path,
        extra_env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let address = format!("127.0.0.1:{}", free_port());
        let mut env = BTreeMap::from([
            ("NEBULA_LISTEN".to_string(), address.clone()),
            ("NEBULA_AMQP_URL".to_string(), amqp_url.to_string()),
            ("NEBULA_ADMIN_USER".to_string(), ADMIN_USER.to_string()),
            (
                "NEBULA_ADMIN_PASSWORD".to_string(),
                ADMIN_PASSWORD.to_string(),
            ),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        match store {
            StoreKind::Embedded(directory) => {
                env.insert("NEBULA_STORE".into(), "embedded".into());
                env.insert(
                    "NEBULA_DATA_DIR".into(),
                    directory.to_string_lossy().into_owned(),
                );
            }
            StoreKind::Mongo(database) => {
                env.insert("NEBULA_STORE".into(), "mongodb".into());
                env.insert("NEBULA_MONGO_URL".into(), services::mongo_url());
                env.insert("NEBULA_MONGO_DB".into(), database.clone());
            }
        }
        for (key, value) in extra_env {
            env.insert((*key).to_string(), (*value).to_string());
        }
        let https = env.contains_key("NEBULA_TLS_CERT");
        let process = Supervised::start(name, binary("nebula-control-plane"), env, log_dir).await;
        let control_plane = Self {
            process,
            address,
            https,
        };
        control_plane.wait_ready().await?;
        Ok(control_plane)
    }

    /// Waits (up to a minute) until `/readyz` answers 200 (store and broker reachable).
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        self.wait_ready_within(Duration::from_secs(60)).await
    }

    /// Like [`ControlPlane::wait_ready`], up to `deadline`.
    pub async fn wait_ready_within(&self, deadline: Duration) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.url());
        let client = if self.https {
            let ca = std::fs::read(services::tls_file("ca.pem"))?;
            reqwest::Client::builder()
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
                .build()?
        } else {
            reqwest::Client::new()
        };
        wait_for(&format!("{} ready", self.process), deadline, || {
            let request = client.get(&url).timeout(Duration::from_secs(2)).send();
            async move {
                request
                    .await
                    .ok()
                    .filter(|response| response.status() == 200)
                    .map(|_| ())
            }
        })
        .await
    }

    /// `http://address` or `https://address`.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.address)
    }

    pub fn rest(&self) -> Rest {
        if self.https {
            let ca = services::tls_file("ca.pem");
            Rest::https(&self.address, ADMIN_USER, ADMIN_PASSWORD, ca.as_ref())
        } else {
            Rest::new(&self.address, ADMIN_USER, ADMIN_PASSWORD)
        }
    }
}

/// What an agent runs.
#[derive(Debug, Clone)]
pub enum AgentMode {
    Group(String),
    Apps(Vec<String>),
    /// Neither: an enrolled agent's credential says what it follows (and which broker: pass
    /// an empty broker URL).
    Enrolled,
}

/// One agent process, with the Docker runtime unless said otherwise.
#[derive(Debug, Clone)]
pub struct Agent {
    pub process: Supervised,
    pub device_id: String,
    pub state_dir: PathBuf,
}

impl Agent {
    pub async fn start(
        device_id: &str,
        mode: &AgentMode,
        amqp_url: &str,
        directory: &std::path::Path,
    ) -> Self {
        Self::start_with(device_id, mode, amqp_url, directory, &[]).await
    }

    pub async fn start_with(
        device_id: &str,
        mode: &AgentMode,
        amqp_url: &str,
        directory: &std::path::Path,
        extra_env: &[(&str, &str)],
    ) -> Self {
        Self::start_command(
            device_id,
            mode,
            amqp_url,
            directory,
            extra_env,
            &[binary("nebula-agent").to_string_lossy().into_owned()],
        )
        .await
    }

    /// Runs the agent through `command` (program and arguments; the agent binary last), e.g.
    /// `["qemu-aarch64", "target/aarch64-unknown-linux-musl/agent-release/nebula-agent"]`.
    pub async fn start_command(
        device_id: &str,
        mode: &AgentMode,
        amqp_url: &str,
        directory: &std::path::Path,
        extra_env: &[(&str, &str)],
        command: &[String],
    ) -> Self {
        let state_dir = directory.join(format!("state-{device_id}"));
        let mut env = BTreeMap::from([
            ("NEBULA_AMQP_URL".to_string(), amqp_url.to_string()),
            ("NEBULA_DEVICE_ID".to_string(), device_id.to_string()),
            (
                "NEBULA_STATE_DIR".to_string(),
                state_dir.to_string_lossy().into_owned(),
            ),
            ("NEBULA_REGISTRY_HOST".to_string(), services::registry()),
            (
                "NEBULA_REGISTRY_USER".to_string(),
                services::registry_user(),
            ),
            (
                "NEBULA_REGISTRY_PASSWORD".to_string(),
                services::registry_password(),
            ),
            ("NEBULA_REPORT_INTERVAL_SECS".to_string(), "5".to_string()),
            ("RUST_LOG".to_string(), "info".to_string()),
        ]);
        if let Ok(docker_host) = std::env::var("DOCKER_HOST") {
            env.insert("DOCKER_HOST".into(), docker_host);
        }
        match mode {
            AgentMode::Group(group) => env.insert("NEBULA_DEVICE_GROUP".into(), group.clone()),
            AgentMode::Apps(apps) => env.insert("NEBULA_APPS".into(), apps.join(",")),
            AgentMode::Enrolled => None,
        };
        if amqp_url.is_empty() {
            env.remove("NEBULA_AMQP_URL");
        }
        for (key, value) in extra_env {
            env.insert((*key).to_string(), (*value).to_string());
        }
        let (program, arguments) = command.split_first().expect("a command");
        let process = Supervised::start_with_arguments(
            &format!("agent-{device_id}"),
            PathBuf::from(program),
            arguments.to_vec(),
            env,
            directory,
        )
        .await;
        Self {
            process,
            device_id: device_id.to_string(),
            state_dir,
        }
    }
}
