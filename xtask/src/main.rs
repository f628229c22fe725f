//! Developer tasks: `cargo xtask <task>`.
//!
//! * `check-deps` — the dependency invariants of ARCHITECTURE.md: the protocol crate links
//!   no I/O stack, the agent links no mongodb, axum or OpenSSL, the CLI no broker, store or
//!   Docker client.
//! * `dist [--target <triple>]... [--only agent|cli]` — release artifacts in `dist/`: the
//!   size-optimised agent for every target (size budget checked) and the static `nebula` CLI
//!   for x86_64 and aarch64 musl, with `SHA256SUMS` and a size table.
//!
#![allow(
    clippy::print_stdout,
    reason = "a developer tool: its reports go to stdout"
)]

//! Plain `std` and the tools the set-up script installs (cargo-zigbuild, tar, sha256sum):
//! xtask must build in seconds on a fresh machine.

mod check_deps;
mod dist;

use std::process::ExitCode;

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let result = match arguments.first().map(String::as_str) {
        Some("check-deps") => check_deps::run(),
        Some("dist") => dist::run(&arguments[1..]),
        _ => Err(format!(
            "usage: cargo xtask check-deps | dist [--target <triple>]... [--only agent|cli] [--no-budget]\n\
             agent targets: {}\n\
             CLI targets: {}",
            dist::targets()
                .unwrap_or_default()
                .iter()
                .map(|target| target.triple.clone())
                .collect::<Vec<_>>()
                .join(", "),
            dist::CLI_TARGETS.join(", ")
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
fn workspace_root() -> std::path::PathBuf {
    let manifest_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// Runs a command in the workspace root and returns its stdout, failing on a non-zero exit.
fn output(program: &str, arguments: &[&str]) -> Result<String, String> {
    let result = std::process::Command::new(program)
        .args(arguments)
        .current_dir(workspace_root())
        .output()
        .map_err(|error| format!("cannot run {program}: {error}"))?;
    if !result.status.success() {
        return Err(format!(
            "{program} {} failed: {}",
            arguments.join(" "),
            String::from_utf8_lossy(&result.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&result.stdout).into_owned())
}
