//! Finds the `nebula-agent`, `nebula-control-plane` and `nebula` (CLI) binaries the tests run
//! as real processes (so that they can be killed with SIGKILL and restarted like on a device,
//! and so that the CLI is tested as the program an operator runs).

use std::path::PathBuf;
use std::sync::OnceLock;

/// Path of a workspace binary in the profile the tests were built with; builds it first when
/// missing (`cargo test -p nebula-tests` alone does not build other packages' binaries).
pub fn binary(name: &'static str) -> PathBuf {
    // One build gives all three.
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    assert!(
        ["nebula-agent", "nebula-control-plane", "nebula"].contains(&name),
        "unknown binary {name}"
    );
    let profile_dir = BUILT.get_or_init(|| {
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
        let mut command = std::process::Command::new(env!("CARGO"));
        // `cargo test` gives the test process the variables of the package under test
        // (CARGO_PKG_NAME=nebula-tests, CARGO_MANIFEST_DIR, ...). Build scripts that declare
        // `rerun-if-env-changed` on them (ring's does) would see them change between this
        // build and the next `cargo test`, and ring, rustls, mongodb and everything above
        // them would be compiled again on every run. The build gets the shell's view.
        for (variable, _) in std::env::vars_os() {
            let variable = variable.to_string_lossy();
            if variable.starts_with("CARGO_PKG_")
                || variable.starts_with("CARGO_MANIFEST_")
                || variable.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&variable.as_ref())
            {
                command.env_remove(variable.as_ref());
            }
        }
        // The whole workspace, as `scripts/test.sh` builds it (`cargo test --workspace
        // --all-targets`, `cargo build --release --workspace --bins`): one feature set for
        // every crate, so this finds everything built. A `-p <package>` build would unify
        // features per package and compile the dependency tree again for each binary (on a
        // fresh clone that cost CI ~8 minutes). The agent's `tls` feature (as released) is on
        // through the tests crate's dependency on it.
        let status = command
            .args(["build", "--quiet", "--workspace"])
            .args(if profile_dir.ends_with("release") {
                vec!["--release", "--bins"]
            } else {
                vec!["--all-targets"]
            })
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the workspace failed");
        profile_dir
    });
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} missing after build", path.display());
    path
}
