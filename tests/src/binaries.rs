//! Finds the `nebula-agent` and `nebula-control-plane` binaries the tests run as real
//! processes (so that they can be killed with SIGKILL and restarted like on a device).

use std::path::PathBuf;
use std::sync::OnceLock;

/// Path of a workspace binary in the profile the tests were built with; builds it first when
/// missing (`cargo test -p nebula-tests` alone does not build other packages' binaries).
pub fn binary(name: &'static str) -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    static CONTROL_PLANE: OnceLock<PathBuf> = OnceLock::new();
    let (cell, package) = match name {
        "nebula-agent" => (&AGENT, "nebula-agent"),
        "nebula-control-plane" => (&CONTROL_PLANE, "nebula-control-plane"),
        other => panic!("unknown binary {other}"),
    };
    cell.get_or_init(|| {
        // Test executables live in target/<profile>/deps, binaries (nebula-bench) in
        // target/<profile>: the workspace's binaries are in target/<profile> either way.
        let executable = std::env::current_exe().expect("current_exe");
        let mut profile_dir = executable
            .parent()
            .expect("executable in a directory")
            .to_path_buf();
        if profile_dir.ends_with("deps") {
            profile_dir.pop();
        }
        let path = profile_dir.join(name);
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--package", package, "--bin", name])
            .args(if profile_dir.ends_with("release") {
                vec!["--release"]
            } else {
                vec![]
            })
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
        assert!(path.exists(), "{} missing after build", path.display());
        path
    })
    .clone()
}
