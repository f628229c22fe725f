//! Shared harness for Nebula's integration and end-to-end tests.
//!
//! The services these tests talk to (RabbitMQ, the Docker engine, a registry with htpasswd
//! auth and a MongoDB-wire server) are started by `scripts/services.sh`; the test images by
//! `scripts/test-image.sh`. Both are run by the README's test command. Every address can be
//! overridden through the environment, and every default is on 127.0.0.1.

pub mod bench;
pub mod binaries;
pub mod cluster;
pub mod docker;
pub mod fleet;
pub mod openapi;
pub mod process;
pub mod proxy;
pub mod rest;
pub mod services;
pub mod system;
pub mod vhost;
pub mod wire;

/// A name no other test run uses: tests share one broker, one engine and one database server.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{:08x}", std::process::id(), fastrand::u32(..))
}

/// Polls `condition` until it returns `Some` or `deadline` passes: no blind sleeps.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    deadline: std::time::Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if start.elapsed() > deadline {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
