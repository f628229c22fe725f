//! `rest`: read and write throughput and latency of the REST API under concurrent load, for
//! the embedded and the MongoDB store.

use super::Options;
use super::stats::Percentiles;
use crate::system::{ControlPlane, StoreKind, scratch_dir};
use crate::unique_name;
use crate::vhost::Vhost;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    let seconds = options.number("seconds", 10)?;
    let concurrency = options.number("concurrency", 64)? as usize;
    let apps = options.number("apps", 100)? as usize;
    let stores = match options.text("store", "both").as_str() {
        "both" => vec!["embedded", "mongodb"],
        "embedded" => vec!["embedded"],
        "mongodb" => vec!["mongodb"],
        other => anyhow::bail!("--store must be embedded, mongodb or both, got {other:?}"),
    };
    let mut results = Vec::new();
    for store in stores {
        results.push(measure_store(store, seconds, concurrency, apps).await?);
    }
    Ok(json!({
        "scenario": "rest",
        "parameters": {"seconds": seconds, "concurrency": concurrency, "apps": apps},
        "stores": results,
    }))
}

async fn measure_store(
    store: &str,
    seconds: u64,
    concurrency: usize,
    apps: usize,
) -> anyhow::Result<serde_json::Value> {
    let vhost = Vhost::create(&unique_name("bench-rest"))?;
    let directory = scratch_dir("bench-rest");
    let kind = match store {
        "embedded" => StoreKind::Embedded(directory.join("store")),
        _ => StoreKind::Mongo(unique_name("bench_rest").replace('-', "_")),
    };
    let control_plane = ControlPlane::start("cp", &kind, &vhost.amqp_url(), &directory).await?;
    let rest = control_plane.rest();
    let names: Arc<Vec<String>> = Arc::new(
        (0..apps)
            .map(|index| format!("bench-app-{index}"))
            .collect(),
    );
    for name in names.iter() {
        rest.create_app(
            name,
            json!({"docker_image": "127.0.0.1:5000/nebula/test:1"}),
        )
        .await?;
    }

    let reads = load(&control_plane, &names, seconds, concurrency, false).await?;
    let writes = load(&control_plane, &names, seconds, concurrency, true).await?;
    control_plane.process.stop(Duration::from_secs(10)).await;
    Ok(json!({
        "store": store,
        "reads_per_sec": reads.0,
        "read_latency": reads.1,
        "read_errors": reads.2,
        "writes_per_sec": writes.0,
        "write_latency": writes.1,
        "write_errors": writes.2,
    }))
}

/// Runs `concurrency` clients for `seconds`; returns (requests/s, latencies, errors).
async fn load(
    control_plane: &ControlPlane,
    names: &Arc<Vec<String>>,
    seconds: u64,
    concurrency: usize,
    write: bool,
) -> anyhow::Result<(f64, Percentiles, usize)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()?;
    let base = format!("http://{}/api/v2", control_plane.address);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..concurrency {
        let (client, base, names) = (client.clone(), base.clone(), Arc::clone(names));
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut counter = worker;
            while Instant::now() < deadline {
                counter += concurrency;
                let app = &names[counter % names.len()];
                let request = if write {
                    client
                        .put(format!("{base}/apps/{app}/update"))
                        .json(&json!({"env_vars": {"COUNTER": counter.to_string()}}))
                } else {
                    client.get(format!("{base}/apps/{app}"))
                };
                let sent = Instant::now();
                match request
                    .basic_auth(
                        crate::system::ADMIN_USER,
                        Some(crate::system::ADMIN_PASSWORD),
                    )
                    .send()
                    .await
                {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                        latencies.push(sent.elapsed());
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (task_latencies, task_errors) = task.await?;
        latencies.extend(task_latencies);
        errors += task_errors;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let rate = latencies.len() as f64 / elapsed;
    Ok((rate, Percentiles::of(&mut latencies), errors))
}
