//! `cargo xtask dist`: release artifacts of `nebula-agent` and of the `nebula` CLI.
//!
//! For every target in `targets/*.toml` (or those named with `--target`): build the agent with
//! the `agent-release` profile and its `tls` (`amqps://`) and `mqtt` features through
//! cargo-zigbuild, pack
//! `dist/nebula-agent-<version>-<target>.tar.gz` (binary, LICENSE, README excerpt, systemd
//! unit) and check the target's size budget. For the targets in [`CLI_TARGETS`] among them,
//! build the CLI with the `cli-release` profile and pack `dist/nebula-cli-<version>-<target>.tar.gz`
//! (binary `nebula`, LICENSE, `cli/README.md`). Then write `dist/SHA256SUMS` and print a size
//! table. `--only agent` or `--only cli` builds one of the two. `--transport amqp` or
//! `--transport mqtt` builds only an agent with that one transport (and TLS), packed as
//! `nebula-agent-amqp-only-…` / `nebula-agent-mqtt-only-…`, for a fleet that wants the
//! smaller binary; its binary takes the release agent's place in `target/`.
//!
//! cargo-zigbuild needs `zig`, which `scripts/setup.sh` installs into the project's venv
//! (`$NEBULA_VENV/nebula-bin`, default `/opt/nebula-venv/nebula-bin`) and puts on PATH only
//! inside the scripts; xtask puts that folder on the PATH of the build itself, so
//! `cargo xtask dist` works in any shell.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};

/// The targets the `nebula` CLI is released for: static musl, so one file runs on any Linux.
pub const CLI_TARGETS: &[&str] = &["aarch64-unknown-linux-musl", "x86_64-unknown-linux-musl"];

/// Which binaries `dist` builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Only {
    Both,
    Agent,
    Cli,
}

/// One binary to build and pack: the package, its binary and profile, and what goes beside it.
#[derive(Debug, Clone, Copy)]
struct Artifact {
    /// Archive name prefix: `nebula-agent`, `nebula-cli`.
    name: &'static str,
    package: &'static str,
    binary: &'static str,
    profile: &'static str,
    /// Whether the target's size budget applies (the agent's; the CLI runs on operators'
    /// machines and has none).
    budgeted: bool,
    /// Cargo features the release is built with.
    features: &'static str,
    /// Whether the package's default features are on too.
    default_features: bool,
}

const AGENT: Artifact = Artifact {
    name: "nebula-agent",
    package: "nebula-agent",
    binary: "nebula-agent",
    profile: "agent-release",
    budgeted: true,
    // amqps:// (rustls with ring): a fleet on untrusted networks needs it; MQTT (rumqttc):
    // where only MQTT gets through. Both fit the budget. AMQP is the default feature.
    features: "tls,mqtt",
    default_features: true,
};

/// The agent with one transport (`--transport`).
const AGENT_AMQP_ONLY: Artifact = Artifact {
    name: "nebula-agent-amqp-only",
    features: "amqp,tls",
    default_features: false,
    ..AGENT
};

const AGENT_MQTT_ONLY: Artifact = Artifact {
    name: "nebula-agent-mqtt-only",
    features: "mqtt,tls",
    default_features: false,
    ..AGENT
};

const CLI: Artifact = Artifact {
    name: "nebula-cli",
    package: "nebula-cli",
    binary: "nebula",
    profile: "cli-release",
    budgeted: false,
    features: "",
    default_features: true,
};

/// One file of `targets/`.
#[derive(Debug, Clone)]
pub struct Target {
    pub triple: String,
    fields: BTreeMap<String, String>,
}

impl Target {
    fn field(&self, key: &str) -> &str {
        self.fields.get(key).map_or("", String::as_str)
    }

    fn size_budget(&self) -> Option<u64> {
        self.fields
            .get("size_budget_bytes")
            .and_then(|value| value.parse().ok())
    }
}

/// Reads every `targets/*.toml`. They hold flat `key = "value"` lines only, so a few lines
/// of parsing keep xtask free of dependencies.
pub fn targets() -> Result<Vec<Target>, String> {
    let directory = super::workspace_root().join("targets");
    let mut targets = Vec::new();
    let entries =
        fs::read_dir(&directory).map_err(|error| format!("{}: {error}", directory.display()))?;
    for entry in entries {
        let path = entry.map_err(|error| error.to_string())?.path();
        if path.extension().is_none_or(|extension| extension != "toml") {
            continue;
        }
        let text =
            fs::read_to_string(&path).map_err(|error| format!("{}: {error}", path.display()))?;
        let fields: BTreeMap<String, String> = text
            .lines()
            .filter(|line| !line.trim_start().starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| {
                (
                    key.trim().to_string(),
                    value.trim().trim_matches('"').to_string(),
                )
            })
            .collect();
        let triple = fields
            .get("triple")
            .cloned()
            .ok_or_else(|| format!("{}: no triple", path.display()))?;
        targets.push(Target { triple, fields });
    }
    targets.sort_by(|left, right| left.triple.cmp(&right.triple));
    Ok(targets)
}

pub fn run(arguments: &[String]) -> Result<(), String> {
    let all = targets()?;
    let mut wanted: Vec<String> = Vec::new();
    let mut check_budget = true;
    let mut only = Only::Both;
    let mut agent = AGENT;
    let mut iterator = arguments.iter();
    while let Some(argument) = iterator.next() {
        match argument.as_str() {
            "--target" => wanted.push(iterator.next().ok_or("--target needs a triple")?.clone()),
            "--no-budget" => check_budget = false,
            "--only" => {
                only = match iterator.next().map(String::as_str) {
                    Some("agent") => Only::Agent,
                    Some("cli") => Only::Cli,
                    other => return Err(format!("--only takes agent or cli, not {other:?}")),
                }
            }
            "--transport" => {
                agent = match iterator.next().map(String::as_str) {
                    Some("amqp") => AGENT_AMQP_ONLY,
                    Some("mqtt") => AGENT_MQTT_ONLY,
                    other => return Err(format!("--transport takes amqp or mqtt, not {other:?}")),
                };
                only = Only::Agent;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let selected: Vec<&Target> = if wanted.is_empty() {
        all.iter().collect()
    } else {
        wanted
            .iter()
            .map(|triple| {
                all.iter()
                    .find(|target| &target.triple == triple)
                    .ok_or_else(|| {
                        format!(
                            "unknown target {triple}; known: {}",
                            all.iter()
                                .map(|t| t.triple.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })
            })
            .collect::<Result<_, _>>()?
    };
    let mut jobs: Vec<(Artifact, &Target)> = Vec::new();
    if only != Only::Cli {
        jobs.extend(selected.iter().map(|target| (agent, *target)));
    }
    if only != Only::Agent {
        jobs.extend(
            selected
                .iter()
                .filter(|target| CLI_TARGETS.contains(&target.triple.as_str()))
                .map(|target| (CLI, *target)),
        );
    }
    if jobs.is_empty() {
        return Err(format!(
            "nothing to build: the CLI is released for {} only",
            CLI_TARGETS.join(", ")
        ));
    }

    let path = toolchain_path()?;
    let root = super::workspace_root();
    let dist = root.join("dist");
    fs::create_dir_all(&dist).map_err(|error| error.to_string())?;
    let version = env!("CARGO_PKG_VERSION");
    let mut rows = Vec::new();
    for (artifact, target) in jobs {
        let binary = build(artifact, target, &path)?;
        let archive = package(&root, &dist, version, artifact, target, &binary)?;
        let binary_size = fs::metadata(&binary)
            .map_err(|error| error.to_string())?
            .len();
        let archive_size = fs::metadata(&archive)
            .map_err(|error| error.to_string())?
            .len();
        rows.push((artifact, target.clone(), binary_size, archive_size));
    }
    write_checksums(&dist)?;

    println!(
        "\n{:<14} {:<34} {:>12} {:>12} {:>14}",
        "binary", "target", "size", "tar.gz", "budget"
    );
    let mut over_budget = Vec::new();
    for (artifact, target, binary_size, archive_size) in &rows {
        let budget = target.size_budget().filter(|_| artifact.budgeted);
        println!(
            "{:<14} {:<34} {:>12} {:>12} {:>14}",
            artifact.binary,
            target.triple,
            format_size(*binary_size),
            format_size(*archive_size),
            budget.map_or_else(|| "-".to_string(), format_size)
        );
        if let Some(budget) = budget.filter(|budget| binary_size > budget) {
            over_budget.push(format!(
                "{} for {} is {} bytes, over its budget of {budget}",
                artifact.binary, target.triple, binary_size
            ));
        }
    }
    println!("artifacts and SHA256SUMS in {}", dist.display());
    if check_budget && !over_budget.is_empty() {
        return Err(over_budget.join("\n"));
    }
    Ok(())
}

/// PATH for cargo-zigbuild: the venv folder where `scripts/setup.sh` puts `zig` first, so a
/// new shell (which has only the user's PATH) finds it. Fails, saying what to run, when
/// neither `zig` nor `cargo-zigbuild` can be found.
fn toolchain_path() -> Result<OsString, String> {
    let venv = std::env::var_os("NEBULA_VENV")
        .filter(|venv| !venv.is_empty())
        .map_or_else(|| PathBuf::from("/opt/nebula-venv"), PathBuf::from);
    let tools = venv.join("nebula-bin");
    let mut directories = vec![tools.clone()];
    directories.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    if let Some(home) = std::env::var_os("HOME") {
        // Where rustup and `cargo install` put cargo-zigbuild.
        directories.push(PathBuf::from(home).join(".cargo/bin"));
    }
    let found = |program: &str| {
        directories
            .iter()
            .any(|directory| directory.join(program).is_file())
    };
    if !found("zig") {
        return Err(format!(
            "zig not found in {} or on PATH: run `bash scripts/setup.sh` (it installs zig into \
             $NEBULA_VENV/nebula-bin; set NEBULA_VENV if the venv is elsewhere)",
            tools.display()
        ));
    }
    if !found("cargo-zigbuild") {
        return Err(
            "cargo-zigbuild not found: run `bash scripts/setup.sh` (or `cargo install --locked cargo-zigbuild`)"
                .to_string(),
        );
    }
    std::env::join_paths(directories).map_err(|error| format!("cannot build PATH: {error}"))
}

/// Builds one binary for one target and returns its path.
fn build(artifact: Artifact, target: &Target, path: &OsString) -> Result<PathBuf, String> {
    let root = super::workspace_root();
    let zig_target = match target.field("zig_target") {
        "" => target.triple.as_str(),
        zig_target => zig_target,
    };
    println!("building {} for {zig_target}", artifact.binary);
    // Per-target RUSTFLAGS through cargo's per-target variable, so the host build of build
    // scripts and proc macros keeps its own flags (and its cache).
    let flags_variable = format!(
        "CARGO_TARGET_{}_RUSTFLAGS",
        target.triple.to_uppercase().replace(['-', '.'], "_")
    );
    let status = std::process::Command::new("cargo")
        .args([
            "zigbuild",
            "--locked",
            "--package",
            artifact.package,
            "--bin",
            artifact.binary,
            "--profile",
            artifact.profile,
            "--target",
            zig_target,
        ])
        .args(if artifact.features.is_empty() {
            vec![]
        } else {
            vec!["--features", artifact.features]
        })
        .args(if artifact.default_features {
            vec![]
        } else {
            vec!["--no-default-features"]
        })
        .env(flags_variable, target.field("rustflags"))
        .env("PATH", path)
        .current_dir(&root)
        .status()
        .map_err(|error| format!("cannot run cargo zigbuild (run scripts/setup.sh): {error}"))?;
    if !status.success() {
        return Err(format!(
            "build of {} for {} failed",
            artifact.binary, target.triple
        ));
    }
    let binary = root
        .join("target")
        .join(&target.triple)
        .join(artifact.profile)
        .join(artifact.binary);
    if !binary.exists() {
        return Err(format!(
            "build succeeded but {} is missing",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Packs the binary with its licence and README (the agent also with its systemd unit).
fn package(
    root: &Path,
    dist: &Path,
    version: &str,
    artifact: Artifact,
    target: &Target,
    binary: &Path,
) -> Result<PathBuf, String> {
    let name = format!("{}-{version}-{}", artifact.name, target.triple);
    let staging = dist.join(&name);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|error| error.to_string())?;
    }
    fs::create_dir_all(&staging).map_err(|error| error.to_string())?;
    let copy = |from: PathBuf, to: &str| {
        fs::copy(&from, staging.join(to)).map_err(|error| format!("{}: {error}", from.display()))
    };
    copy(binary.to_path_buf(), artifact.binary)?;
    copy(root.join("LICENSE"), "LICENSE")?;
    let readme = if artifact.package == AGENT.package {
        copy(
            root.join("deploy/systemd/nebula-agent.service"),
            "nebula-agent.service",
        )?;
        copy(
            root.join("deploy/systemd/nebula-agent.env"),
            "nebula-agent.env",
        )?;
        format!(
            "# nebula-agent {version} for {}\n\nBoards: {}\n\n{}",
            target.triple,
            target.field("boards"),
            fs::read_to_string(root.join("agent/README.md")).map_err(|error| error.to_string())?
        )
    } else {
        fs::read_to_string(root.join("cli/README.md")).map_err(|error| error.to_string())?
    };
    fs::write(staging.join("README.md"), readme).map_err(|error| error.to_string())?;
    let archive = dist.join(format!("{name}.tar.gz"));
    super::output(
        "tar",
        &[
            "-czf",
            &archive.to_string_lossy(),
            "-C",
            &dist.to_string_lossy(),
            &name,
        ],
    )?;
    fs::remove_dir_all(&staging).map_err(|error| error.to_string())?;
    Ok(archive)
}

/// `SHA256SUMS` over every archive in `dist/`, in the format `sha256sum -c` reads.
fn write_checksums(dist: &Path) -> Result<(), String> {
    let mut archives: Vec<String> = fs::read_dir(dist)
        .map_err(|error| error.to_string())?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".tar.gz"))
        .collect();
    archives.sort();
    let mut arguments = vec!["-c", "cd dist && sha256sum \"$@\"", "sh"];
    arguments.extend(archives.iter().map(String::as_str));
    let sums = super::output("sh", &arguments)?;
    fs::write(dist.join("SHA256SUMS"), sums).map_err(|error| error.to_string())
}

fn format_size(bytes: u64) -> String {
    format!("{:.2} MiB", bytes as f64 / (1024.0 * 1024.0))
}
