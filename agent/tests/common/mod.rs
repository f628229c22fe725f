//! Helpers shared by the agent's integration tests.
#![allow(dead_code)] // Each test binary uses a different subset.

use nebula_agent::Config;
use nebula_agent::config::HostIdentity;
use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

pub mod engine;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Polls `condition` until it holds or `deadline` passes: no blind sleeps.
pub async fn wait_for<F, Fut>(what: &str, deadline: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An agent config from a map, with fast retries for tests. Also starts logging
/// (`RUST_LOG=debug cargo test ...` shows the agent's logs of a failing test).
pub fn config(pairs: &[(&str, &str)]) -> Config {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let environment: HashMap<&str, &str> = pairs.iter().copied().collect();
    let host = HostIdentity {
        hostname: "test-host".into(),
        machine_id: None,
    };
    let mut config = Config::from_env(&environment, &host).expect("valid config");
    config.max_backoff = Duration::from_millis(500);
    config.sync_timeout = Duration::from_secs(2);
    config.max_sync_timeout = Duration::from_secs(8);
    config.resync_interval = Duration::from_millis(500);
    config
}
