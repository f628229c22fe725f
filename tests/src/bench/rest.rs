//! `rest`: what a REST client waits for, per store: reads of many apps at a given
//! concurrency, then `PUT /apps/<a>/update` of ONE app by 1 and by 20 concurrent writers
//! (the contended case: upstream Nebula's manager was measured the same way), each write a
//! durable store write plus a broker confirm, with an agent-like queue bound to the app's
//! exchange and drained, so the confirm is for a message routed to a consumer.
//!
//! `--upstream <address>` runs the same reads and writes, with the same client, against a
//! running upstream Nebula v2 manager (`scripts/bench-upstream.sh` starts one next to the
//! MongoDB wire server): the side-by-side figure. Upstream publishes nothing, so its writes
//! are a MongoDB update only.
//!
//! Not counted: TLS, authentication by token (basic auth is used), and the time an agent
//! takes to apply a change (that is `fanout`).

use super::Options;
use super::stats::Percentiles;
use crate::rest::Rest;
use crate::system::{ADMIN_PASSWORD, ADMIN_USER, ControlPlane, StoreKind, scratch_dir};
use crate::unique_name;
use crate::vhost::Vhost;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The app every writer updates.
const HOT_APP: &str = "bench-hot";

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    let seconds = options.number("seconds", 8)?;
    let readers = options.number("concurrency", 16)? as usize;
    let apps = options.number("apps", 100)? as usize;
    let writers: Vec<usize> = options
        .text("writers", "1,20")
        .split(',')
        .map(|count| count.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|_| anyhow::anyhow!("--writers takes a comma-separated list of counts"))?;
    let stores = match options.text("store", "both").as_str() {
        "both" => vec!["embedded", "mongodb"],
        "embedded" => vec!["embedded"],
        "mongodb" => vec!["mongodb"],
        "none" => vec![],
        other => anyhow::bail!("--store must be embedded, mongodb, both or none, got {other:?}"),
    };
    let mut results = Vec::new();
    let upstream = options.text("upstream", "");
    if !upstream.is_empty() {
        results.push(measure_upstream(&upstream, seconds, readers, apps, &writers).await?);
    }
    for store in stores {
        results.push(measure_store(store, seconds, readers, apps, &writers).await?);
    }
    Ok(json!({
        "scenario": "rest",
        "parameters": {"seconds": seconds, "readers": readers, "apps": apps, "writers": writers},
        "stores": results,
    }))
}

async fn measure_store(
    store: &str,
    seconds: u64,
    readers: usize,
    apps: usize,
    writers: &[usize],
) -> anyhow::Result<serde_json::Value> {
    let vhost = Vhost::create(&unique_name("bench-rest"))?;
    let directory = scratch_dir("bench-rest");
    let kind = match store {
        "embedded" => StoreKind::Embedded(directory.join("store")),
        _ => StoreKind::Mongo(unique_name("bench_rest").replace('-', "_")),
    };
    let control_plane = ControlPlane::start("cp", &kind, &vhost.amqp_url(), &directory).await?;
    let rest = control_plane.rest();
    let names = create_apps(&rest, apps).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let _agent_queue = drain_app_queue(&vhost.amqp_url(), HOT_APP, Arc::clone(&delivered)).await?;

    eprintln!("rest[{store}]: {readers} readers for {seconds} s");
    let base = format!("http://{}/api/v2", control_plane.address);
    let reads = load(&base, Load::Reads(Arc::new(names)), seconds, readers).await?;
    let mut write_results = Vec::new();
    for &count in writers {
        eprintln!("rest[{store}]: {count} writers on {HOT_APP} for {seconds} s");
        let before = metrics(&control_plane).await?;
        let (rate, latency, errors) = load(&base, Load::Writes, seconds, count).await?;
        let after = metrics(&control_plane).await?;
        let batches = after.1.saturating_sub(before.1);
        let combined = after.0.saturating_sub(before.0);
        write_results.push(json!({
            "writers": count,
            "writes_per_sec": rate,
            "latency": latency,
            "errors": errors,
            "store_writes": batches,
            "updates_per_store_write": if batches == 0 { 0.0 } else { combined as f64 / batches as f64 },
        }));
    }
    control_plane.process.stop(Duration::from_secs(10)).await;
    Ok(json!({
        "store": store,
        "reads_per_sec": reads.0,
        "read_latency": reads.1,
        "read_errors": reads.2,
        "writes": write_results,
        "messages_to_the_agent_queue": delivered.load(Ordering::Relaxed),
    }))
}

/// `apps` apps plus [`HOT_APP`]; returns their names.
async fn create_apps(rest: &Rest, apps: usize) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = (0..apps)
        .map(|index| format!("bench-app-{index}"))
        .collect();
    names.push(HOT_APP.to_string());
    for name in &names {
        rest.create_app(
            name,
            json!({"docker_image": "127.0.0.1:5000/nebula/test:1"}),
        )
        .await?;
    }
    Ok(names)
}

/// The same loads against upstream Nebula's manager at `address` (basic auth with the
/// bench's admin credentials; `scripts/bench-upstream.sh` configures it so, on an empty
/// database).
async fn measure_upstream(
    address: &str,
    seconds: u64,
    readers: usize,
    apps: usize,
    writers: &[usize],
) -> anyhow::Result<serde_json::Value> {
    let rest = Rest::new(address, ADMIN_USER, ADMIN_PASSWORD);
    let names = create_apps(&rest, apps).await.map_err(|error| {
        anyhow::anyhow!(
            "creating the apps on upstream at {address} (it needs an empty database): {error}"
        )
    })?;
    let base = format!("http://{address}/api/v2");
    eprintln!("rest[upstream]: {readers} readers for {seconds} s");
    let reads = load(&base, Load::Reads(Arc::new(names)), seconds, readers).await?;
    let mut write_results = Vec::new();
    for &count in writers {
        eprintln!("rest[upstream]: {count} writers on {HOT_APP} for {seconds} s");
        let (rate, latency, errors) = load(&base, Load::Writes, seconds, count).await?;
        write_results.push(json!({
            "writers": count,
            "writes_per_sec": rate,
            "latency": latency,
            "errors": errors,
        }));
    }
    Ok(json!({
        "store": "upstream (Nebula v2 manager, MongoDB)",
        "reads_per_sec": reads.0,
        "read_latency": reads.1,
        "read_errors": reads.2,
        "writes": write_results,
    }))
}

/// An exclusive queue bound to the app's exchange and consumed, as an agent's would be.
async fn drain_app_queue(
    url: &str,
    app: &str,
    delivered: Arc<AtomicU64>,
) -> anyhow::Result<lapin::Connection> {
    let connection =
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().as_str().into(),
            format!("nebula.app.{app}").as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tokio::spawn(async move {
        while let Some(Ok(_)) = consumer.next().await {
            delivered.fetch_add(1, Ordering::Relaxed);
        }
    });
    Ok(connection)
}

/// (`nebula_writes_total`, `nebula_write_batches_total`) of the control plane.
async fn metrics(control_plane: &ControlPlane) -> anyhow::Result<(u64, u64)> {
    let body = reqwest::get(format!("http://{}/metrics", control_plane.address))
        .await?
        .text()
        .await?;
    let read = |name: &str| -> u64 {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0)
    };
    Ok((
        read("nebula_writes_total"),
        read("nebula_write_batches_total"),
    ))
}

#[derive(Clone)]
enum Load {
    /// GETs spread over these apps.
    Reads(Arc<Vec<String>>),
    /// PUT updates of [`HOT_APP`].
    Writes,
}

/// Runs `clients` clients for `seconds`; returns (successful requests/s, their latencies,
/// failed requests).
async fn load(
    base: &str,
    work: Load,
    seconds: u64,
    clients: usize,
) -> anyhow::Result<(f64, Percentiles, usize)> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let base = base.to_string();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..clients {
        let (client, base, work) = (client.clone(), base.clone(), work.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut counter = worker;
            while Instant::now() < deadline {
                counter += clients;
                let request = match &work {
                    Load::Reads(names) => {
                        client.get(format!("{base}/apps/{}", names[counter % names.len()]))
                    }
                    Load::Writes => client
                        .put(format!("{base}/apps/{HOT_APP}/update"))
                        .json(&json!({"env_vars": {"COUNTER": counter.to_string()}})),
                };
                let sent = Instant::now();
                match request
                    .basic_auth(ADMIN_USER, Some(ADMIN_PASSWORD))
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
