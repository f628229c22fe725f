//! What the fleet scenarios share: a vhost, a control plane, one app in one group, and a
//! fleet of simulated agents following that group.

use crate::system::{ControlPlane, StoreKind, scratch_dir};
use crate::unique_name;
use crate::vhost::Vhost;
use serde_json::json;

#[derive(Debug)]
pub struct FleetBench {
    pub vhost: Vhost,
    pub control_plane: ControlPlane,
    pub app: String,
    pub group: String,
    pub state_root: std::path::PathBuf,
}

impl FleetBench {
    pub async fn prepare(label: &str) -> anyhow::Result<Self> {
        raise_open_files_limit();
        let vhost = Vhost::create(&unique_name(&format!("bench-{label}")))?;
        let directory = scratch_dir(&format!("bench-{label}"));
        let control_plane = ControlPlane::start(
            "cp",
            &StoreKind::Embedded(directory.join("store")),
            &vhost.amqp_url(),
            &directory,
        )
        .await?;
        let rest = control_plane.rest();
        let app = unique_name("bench-app");
        let group = unique_name("bench-group");
        rest.create_app(
            &app,
            json!({"docker_image": "127.0.0.1:5000/nebula/test:1"}),
        )
        .await?;
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
