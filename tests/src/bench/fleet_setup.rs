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
        Self::prepare_with(
            label,
            json!({"docker_image": crate::services::test_image(1)}),
        )
        .await
    }

    /// As [`FleetBench::prepare`], with the app created from `app_body` (REST JSON).
    pub async fn prepare_with(label: &str, app_body: serde_json::Value) -> anyhow::Result<Self> {
        raise_open_files_limit();
        raise_map_count();
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
