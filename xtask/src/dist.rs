//! `cargo xtask dist`: size-optimised `nebula-agent` release artifacts.
//!
//! For every target in `targets/*.toml` (or those named with `--target`): build with the
//! `agent-release` profile through cargo-zigbuild, pack
//! `dist/nebula-agent-<version>-<target>.tar.gz` (binary, LICENSE, README excerpt, systemd
//! unit), write `dist/SHA256SUMS`, print a size table and check each target's size budget.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

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
    let mut iterator = arguments.iter();
    while let Some(argument) = iterator.next() {
        match argument.as_str() {
            "--target" => wanted.push(iterator.next().ok_or("--target needs a triple")?.clone()),
            "--no-budget" => check_budget = false,
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

    let root = super::workspace_root();
    let dist = root.join("dist");
    fs::create_dir_all(&dist).map_err(|error| error.to_string())?;
    let version = env!("CARGO_PKG_VERSION");
    let mut rows = Vec::new();
    for target in selected {
        let binary = build(target)?;
        let archive = package(&root, &dist, version, target, &binary)?;
        let binary_size = fs::metadata(&binary)
            .map_err(|error| error.to_string())?
            .len();
        let archive_size = fs::metadata(&archive)
            .map_err(|error| error.to_string())?
            .len();
        rows.push((target.clone(), binary_size, archive_size));
    }
    write_checksums(&dist)?;

    println!(
        "\n{:<34} {:>12} {:>12} {:>14}",
        "target", "binary", "tar.gz", "budget"
    );
    let mut over_budget = Vec::new();
    for (target, binary_size, archive_size) in &rows {
        let budget = target.size_budget();
        println!(
            "{:<34} {:>12} {:>12} {:>14}",
            target.triple,
            format_size(*binary_size),
            format_size(*archive_size),
            budget.map_or_else(|| "-".to_string(), format_size)
        );
        if let Some(budget) = budget.filter(|budget| binary_size > budget) {
            over_budget.push(format!(
                "{} is {} bytes, over its budget of {budget}",
                target.triple, binary_size
            ));
        }
    }
    println!("artifacts and SHA256SUMS in {}", dist.display());
    if check_budget && !over_budget.is_empty() {
        return Err(over_budget.join("\n"));
    }
    Ok(())
}

/// Builds the agent for one target and returns the binary's path.
fn build(target: &Target) -> Result<PathBuf, String> {
    let root = super::workspace_root();
    let zig_target = match target.field("zig_target") {
        "" => target.triple.as_str(),
        zig_target => zig_target,
    };
    println!("building nebula-agent for {zig_target}");
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
            "nebula-agent",
            "--profile",
            "agent-release",
            "--target",
            zig_target,
        ])
        .env(flags_variable, target.field("rustflags"))
        .current_dir(&root)
        .status()
        .map_err(|error| format!("cannot run cargo zigbuild (run scripts/setup.sh): {error}"))?;
    if !status.success() {
        return Err(format!("build for {} failed", target.triple));
    }
    let binary = root
        .join("target")
        .join(&target.triple)
        .join("agent-release")
        .join("nebula-agent");
    if !binary.exists() {
        return Err(format!(
            "build succeeded but {} is missing",
            binary.display()
        ));
    }
    Ok(binary)
}

/// Packs the binary with its licence, README excerpt and systemd unit.
fn package(
    root: &Path,
    dist: &Path,
    version: &str,
    target: &Target,
    binary: &Path,
) -> Result<PathBuf, String> {
    let name = format!("nebula-agent-{version}-{}", target.triple);
    let staging = dist.join(&name);
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|error| error.to_string())?;
    }
    fs::create_dir_all(&staging).map_err(|error| error.to_string())?;
    let copy = |from: PathBuf, to: &str| {
        fs::copy(&from, staging.join(to)).map_err(|error| format!("{}: {error}", from.display()))
    };
    copy(binary.to_path_buf(), "nebula-agent")?;
    copy(root.join("LICENSE"), "LICENSE")?;
    copy(
        root.join("deploy/systemd/nebula-agent.service"),
        "nebula-agent.service",
    )?;
    copy(
        root.join("deploy/systemd/nebula-agent.env"),
        "nebula-agent.env",
    )?;
    let readme = format!(
        "# nebula-agent {version} for {}\n\nBoards: {}\n\n{}",
        target.triple,
        target.field("boards"),
        fs::read_to_string(root.join("agent/README.md")).map_err(|error| error.to_string())?
    );
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
