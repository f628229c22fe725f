//! `auth-backends` (issue 16, "measure and choose"): devices' own broker logins with the users
//! held by the broker (RabbitMQ's internal backend: what the control plane makes through the
//! management API, and what Nebula uses) against `rabbitmq_auth_backend_http` answered by an
//! HTTP service, bare and with `rabbitmq_auth_backend_cache` in front.
//!
//! Each backend gets a RabbitMQ node of its own, started from empty data on its own port and
//! node name (the quick start's and the tests' brokers are not touched), with the same
//! definitions: `--devices` devices (and a few more for the sequential and outage parts),
//! each with exactly the permissions `device_credentials::grants` gives a device of one
//! group. The HTTP service is in this process and answers from the same grants (an in-memory
//! table: no store read, no network hop beyond loopback; a control plane answering it would
//! add its store's read to every request). A device here does what an agent does at start:
//! log in, declare its exclusive group queue, bind it to the group's exchange, consume from
//! it, publish a sync request (`user_id` set) and a report, both confirmed.
//!
//! Figures per backend: a start's time (log in → all of the above confirmed) one device
//! after another, first and again right away (the cache's case); `--devices` devices starting
//! at once (a broker restart's reconnect storm, the cache empty): time until every one is
//! ready, and the broker's CPU seconds and peak memory; reports one device publishes per
//! second; HTTP requests the broker made per start and per report; and what still works while
//! the HTTP service is down (the control plane's outage): a connected device reporting on its
//! open channel and on a new one, a device that logged in a moment ago logging in again, a
//! device never seen logging in — and, with the cache, the same once its TTL has passed. The
//! run fails (`failed_checks`) when a node did not use the backend it was given, or an
//! outage result the README states no longer holds.

use super::Options;
use super::broker::BrokerSampler;
use super::fleet_setup::raise_open_files_limit;
use super::stats::Percentiles;
use crate::cluster::listener_pid;
use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use nebula_control_plane::device_credentials::{self, Grants, Scope};
use nebula_protocol::{Name, names};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The node's name and Erlang distribution port: its own, beside the single node (5672) and
/// the test cluster (5681-5683, 25681-25683).
const NODE: &str = "nebula-authbench@localhost";
const DIST_PORT: u16 = 25695;
/// The cache's time to live (its default, 15 s, stated so that the outage part knows it).
const CACHE_TTL: Duration = Duration::from_secs(15);
/// How long one device's start may take before it counts as failed.
const START_DEADLINE: Duration = Duration::from_secs(60);
/// How long one attempt of it may take in the storm before it is given up and made again
/// (a connection whose SYN or handshake the overflowing listen backlog dropped can sit in
/// TCP's retransmission backoff for a minute; an agent's connect gives up sooner too).
const ATTEMPT_DEADLINE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Internal,
    Http,
    CachedHttp,
}

impl Backend {
    const ALL: [Self; 3] = [Self::Internal, Self::Http, Self::CachedHttp];

    /// `--backends internal,http,cache+http` (the default, in that order).
    fn parse_list(list: &str) -> anyhow::Result<Vec<Self>> {
        list.split(',')
            .map(|label| {
                Self::ALL
                    .into_iter()
                    .find(|backend| backend.label() == label.trim())
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--backends: unknown backend {label:?} (internal, http, cache+http)"
                        )
                    })
            })
            .collect()
    }

    fn label(self) -> &'static str {
        match self {
            Self::Internal => "internal",
            Self::Http => "http",
            Self::CachedHttp => "cache+http",
        }
    }

    /// The `rabbitmq.conf` lines choosing it (`service` is the HTTP service's address).
    fn config(self, service: std::net::SocketAddr) -> String {
        let http = [
            "auth_http.http_method = get".to_string(),
            format!("auth_http.user_path = http://{service}/auth/user"),
            format!("auth_http.vhost_path = http://{service}/auth/vhost"),
            format!("auth_http.resource_path = http://{service}/auth/resource"),
            format!("auth_http.topic_path = http://{service}/auth/topic"),
        ]
        .join("\n");
        match self {
            Self::Internal => "auth_backends.1 = internal".into(),
            Self::Http => format!("auth_backends.1 = http\n{http}"),
            Self::CachedHttp => format!(
                "auth_backends.1 = cache\nauth_cache.cached_backend = http\nauth_cache.cache_ttl = {}\n{http}",
                CACHE_TTL.as_millis()
            ),
        }
    }
}

/// One device of the benchmark: its broker user, password and permissions.
#[derive(Debug)]
struct Device {
    id: Name,
    user: String,
    password: String,
    grants: Grants,
}

/// The devices, and the group they all belong to.
#[derive(Debug)]
struct Fleet {
    group: Name,
    devices: Vec<Device>,
}

impl Fleet {
    fn new(count: usize) -> Self {
        let group = Name::new("authbench").expect("a valid name");
        let scope = Scope::DeviceGroup(group.clone());
        let devices = (0..count)
            .map(|index| {
                let id = Name::new(format!("authbench-{index}")).expect("a valid name");
                Device {
                    user: names::device_user(&id),
                    password: format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
                    grants: device_credentials::grants(&id, &scope),
                    id,
                }
            })
            .collect();
        Self { group, devices }
    }

    /// RabbitMQ definitions: every device's user (password hashed as the internal backend
    /// does), permissions and topic permissions, and the exchanges the devices use.
    fn definitions(&self) -> serde_json::Value {
        let users: Vec<_> = self
            .devices
            .iter()
            .map(|device| {
                json!({
                    "name": device.user,
                    "password_hash": internal_password_hash(&device.password),
                    "hashing_algorithm": "rabbit_password_hashing_sha256",
                    "tags": "",
                })
            })
            .collect();
        let permissions: Vec<_> = self
            .devices
            .iter()
            .map(|device| {
                json!({
                    "user": device.user, "vhost": "/",
                    "configure": device.grants.configure,
                    "write": device.grants.write,
                    "read": device.grants.read,
                })
            })
            .collect();
        let topic_permissions: Vec<_> = self
            .devices
            .iter()
            .flat_map(|device| {
                device.grants.topics.iter().map(|topic| {
                    json!({
                        "user": device.user, "vhost": "/", "exchange": topic.exchange,
                        "write": topic.write, "read": topic.read,
                    })
                })
            })
            .collect();
        let exchange = |name: &str, kind: &str| {
            json!({
                "name": name, "vhost": "/", "type": kind, "durable": true,
                "auto_delete": false, "internal": false, "arguments": {},
            })
        };
        json!({
            "users": users,
            "vhosts": [{"name": "/"}],
            "permissions": permissions,
            "topic_permissions": topic_permissions,
            "exchanges": [
                exchange(&names::group_exchange(&self.group), "fanout"),
                exchange(names::SYNC_EXCHANGE, "topic"),
                exchange(names::REPORTS_EXCHANGE, "topic"),
            ],
        })
    }
}

/// `rabbit_password_hashing_sha256`: base64 of a 4-byte salt followed by
/// SHA-256(salt ‖ password).
fn internal_password_hash(password: &str) -> String {
    let salt: [u8; 4] = fastrand::u32(..).to_be_bytes();
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    let mut salted = salt.to_vec();
    salted.extend_from_slice(&hasher.finalize());
    base64::engine::general_purpose::STANDARD.encode(salted)
}

/// Whether `name` matches one of `device_credentials`' permission patterns: `^(a|b)$` with
/// `.` escaped, or `a^` (nothing). `None` for any other pattern (the service then denies).
fn pattern_matches(pattern: &str, name: &str) -> Option<bool> {
    if pattern == "a^" {
        return Some(false);
    }
    let alternatives = pattern.strip_prefix("^(")?.strip_suffix(")$")?;
    Some(
        alternatives
            .split('|')
            .any(|alternative| alternative.replace("\\.", ".") == name),
    )
}

/// The HTTP service `rabbitmq_auth_backend_http` asks, answering as the internal backend
/// would from the same users and grants; counts the requests of each kind.
#[derive(Debug)]
struct AuthService {
    address: std::net::SocketAddr,
    requests: Arc<Requests>,
    down: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Requests {
    user: AtomicU64,
    vhost: AtomicU64,
    resource: AtomicU64,
    topic: AtomicU64,
    /// Patterns the service could not read (denied): must stay 0 for the figures to count.
    unreadable_patterns: AtomicU64,
}

impl Requests {
    fn total(&self) -> u64 {
        [&self.user, &self.vhost, &self.resource, &self.topic]
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum()
    }
}

type Query = axum::extract::Query<HashMap<String, String>>;

/// What the service's handlers share.
#[derive(Clone)]
struct Shared {
    devices: Arc<HashMap<String, ([u8; 32], Grants)>>,
    requests: Arc<Requests>,
    down: Arc<AtomicBool>,
}

fn answer(allowed: bool) -> Response {
    (if allowed { "allow" } else { "deny" }).into_response()
}

/// While down, what still reaches the service on a connection opened before.
fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONNECTION, "close")],
        "down",
    )
        .into_response()
}

/// Whether `pattern` allows `name` (an unreadable pattern denies, and is counted).
fn allowed_by(shared: &Shared, pattern: &str, name: &str) -> bool {
    pattern_matches(pattern, name).unwrap_or_else(|| {
        shared
            .requests
            .unreadable_patterns
            .fetch_add(1, Ordering::Relaxed);
        false
    })
}

/// Counts a request on `counter`; while the service is down, the answer to give instead.
fn arrived(shared: &Shared, counter: &AtomicU64) -> Option<Response> {
    counter.fetch_add(1, Ordering::Relaxed);
    shared.down.load(Ordering::Relaxed).then(unavailable)
}

/// `user_path`: a login (user name and password).
async fn check_user(State(shared): State<Shared>, query: Query) -> Response {
    if let Some(down) = arrived(&shared, &shared.requests.user) {
        return down;
    }
    let known = query
        .get("username")
        .and_then(|user| shared.devices.get(user))
        .zip(query.get("password"));
    answer(known.is_some_and(|((hash, _), password)| {
        Sha256::digest(password.as_bytes()).as_slice() == hash
    }))
}

/// `vhost_path`: access to a virtual host.
async fn check_vhost(State(shared): State<Shared>, query: Query) -> Response {
    if let Some(down) = arrived(&shared, &shared.requests.vhost) {
        return down;
    }
    let known = query
        .get("username")
        .is_some_and(|user| shared.devices.contains_key(user));
    answer(known && query.get("vhost").is_some_and(|vhost| vhost == "/"))
}

/// `resource_path`: configure, write or read on a queue or exchange.
async fn check_resource(State(shared): State<Shared>, query: Query) -> Response {
    if let Some(down) = arrived(&shared, &shared.requests.resource) {
        return down;
    }
    let Some((_, grants)) = query.get("username").and_then(|u| shared.devices.get(u)) else {
        return answer(false);
    };
    let pattern = match query.get("permission").map(String::as_str) {
        Some("configure") => &grants.configure,
        Some("write") => &grants.write,
        Some("read") => &grants.read,
        _ => return answer(false),
    };
    let name = query.get("name").map_or("", String::as_str);
    answer(
        query.get("vhost").is_some_and(|vhost| vhost == "/") && allowed_by(&shared, pattern, name),
    )
}

/// `topic_path`: a routing key on a topic exchange.
async fn check_topic(State(shared): State<Shared>, query: Query) -> Response {
    if let Some(down) = arrived(&shared, &shared.requests.topic) {
        return down;
    }
    let Some((_, grants)) = query.get("username").and_then(|u| shared.devices.get(u)) else {
        return answer(false);
    };
    let exchange = query.get("name").map_or("", String::as_str);
    // As the internal backend: an exchange without topic permissions is open.
    let Some(topic) = grants
        .topics
        .iter()
        .find(|topic| topic.exchange == exchange)
    else {
        return answer(true);
    };
    let pattern = match query.get("permission").map(String::as_str) {
        Some("write") => &topic.write,
        Some("read") => &topic.read,
        _ => return answer(false),
    };
    let key = query.get("routing_key").map_or("", String::as_str);
    answer(allowed_by(&shared, pattern, key))
}

impl AuthService {
    async fn start(fleet: &Fleet) -> anyhow::Result<Self> {
        let shared = Shared {
            devices: Arc::new(
                fleet
                    .devices
                    .iter()
                    .map(|device| {
                        let hash: [u8; 32] = Sha256::digest(device.password.as_bytes()).into();
                        (device.user.clone(), (hash, device.grants.clone()))
                    })
                    .collect(),
            ),
            requests: Arc::new(Requests::default()),
            down: Arc::new(AtomicBool::new(false)),
        };
        let requests = Arc::clone(&shared.requests);
        let down = Arc::clone(&shared.down);
        let router = axum::Router::new()
            .route("/auth/user", axum::routing::get(check_user))
            .route("/auth/vhost", axum::routing::get(check_vhost))
            .route("/auth/resource", axum::routing::get(check_resource))
            .route("/auth/topic", axum::routing::get(check_topic))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                eprintln!("auth-backends: the HTTP service stopped: {error}");
            }
        });
        Ok(Self {
            address,
            requests,
            down,
            task,
        })
    }

    /// Stops answering, as a control plane that is down: the listener is closed (new
    /// connections refused), and what comes on a connection the broker kept open is answered
    /// 503 and the connection closed (axum serves each connection in a task of its own,
    /// which aborting the accept loop leaves running).
    fn stop(&self) {
        self.down.store(true, Ordering::Relaxed);
        self.task.abort();
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A RabbitMQ node of this benchmark, from empty data, with `backend`.
#[derive(Debug)]
struct Node {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Node {
    fn start(
        backend: Backend,
        port: u16,
        service: std::net::SocketAddr,
        fleet: &Fleet,
    ) -> anyhow::Result<Self> {
        let services = std::env::var("NEBULA_SERVICES_DIR")
            .unwrap_or_else(|_| "/var/lib/nebula-dev".to_string());
        let dir = Path::new(&services).join("auth-bench");
        if listener_pid(port).is_some() {
            // A node an interrupted run left behind (only a node of this name answers).
            stop_node();
        }
        anyhow::ensure!(
            listener_pid(port).is_none(),
            "something other than a node of this benchmark listens on port {port} (--port)"
        );
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("log"))?;
        let definitions = dir.join("definitions.json");
        std::fs::write(&definitions, serde_json::to_vec(&fleet.definitions())?)?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "# Written by nebula-bench auth-backends ({}).\nlisteners.tcp.default = 127.0.0.1:{port}\nload_definitions = {}\nvm_memory_high_watermark.relative = 0.15\n{}\n",
                backend.label(),
                definitions.display(),
                backend.config(service)
            ),
        )?;
        std::fs::write(
            dir.join("enabled_plugins"),
            "[rabbitmq_auth_backend_http,rabbitmq_auth_backend_cache].",
        )?;
        let status = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status()?;
        anyhow::ensure!(status.success(), "chown of {} failed", dir.display());
        let d = dir.display();
        // As scripts/services.sh starts the cluster's nodes: as the rabbitmq user (its Erlang
        // cookie, so that rabbitmqctl reaches the node), with the open files limit raised for
        // a thousand connections.
        let script = format!(
            "cd /var/lib/rabbitmq && ulimit -n \"$(ulimit -Hn)\" && \
             RABBITMQ_NODENAME={NODE} RABBITMQ_DIST_PORT={DIST_PORT} \
             RABBITMQ_CONF_ENV_FILE={d}/rabbitmq-env.conf RABBITMQ_CONFIG_FILE={d}/rabbitmq.conf \
             RABBITMQ_ENABLED_PLUGINS_FILE={d}/enabled_plugins RABBITMQ_MNESIA_BASE={d}/mnesia \
             RABBITMQ_LOG_BASE={d}/log RABBITMQ_PID_FILE={d}/pid \
             exec /usr/lib/rabbitmq/bin/rabbitmq-server"
        );
        let log = std::fs::File::create(dir.join("console.log"))?;
        let child = Command::new("su")
            .args(["rabbitmq", "-s", "/bin/sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting RabbitMQ (su rabbitmq)")?;
        Ok(Self {
            dir,
            port,
            child: Some(child),
        })
    }

    fn url(&self, device: &Device) -> String {
        format!(
            "amqp://{}:{}@127.0.0.1:{}/%2f",
            device.user, device.password, self.port
        )
    }

    /// The last lines the node wrote to its console (its boot errors).
    fn console_tail(&self) -> String {
        let console = std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Stops the node: cleanly, then whatever is left of it killed (by its pid file too, for
    /// a node stopped while still booting, before it listens).
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        stop_node();
        let pid_file = std::fs::read_to_string(self.dir.join("pid")).ok();
        let pids = [
            listener_pid(self.port),
            // Only while it is still this node's VM (a pid is reused once it has exited).
            pid_file
                .and_then(|pid| pid.trim().parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read(format!("/proc/{pid}/cmdline"))
                        .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(NODE))
                }),
        ];
        for pid in pids.into_iter().flatten() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `rabbitmqctl stop` of this benchmark's node, if it runs (bounded: a node that does not
/// answer is killed by the caller).
fn stop_node() {
    let _ = Command::new("timeout")
        .args(["60", "rabbitmqctl", "-n", NODE, "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// What an agent does at start, as `device`: log in, declare its exclusive group queue, bind
/// it to the group's exchange, consume, and publish a sync request and a report (confirmed).
/// Returns the open connection (a device stays connected).
async fn agent_start(url: &str, device: &Device, group: &Name) -> anyhow::Result<Connection> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let queue = names::group_queue(&device.id, group);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            names::group_exchange(group).as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    // Nothing is published to the group here; the consumer only has to exist.
    tokio::spawn(async move { while consumer.next().await.is_some() {} });
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    publish(
        &channel,
        names::SYNC_EXCHANGE,
        &names::sync_routing_key(&device.id),
        BasicProperties::default().with_user_id(device.user.as_str().into()),
    )
    .await?;
    publish(
        &channel,
        names::REPORTS_EXCHANGE,
        &names::report_routing_key(&device.id),
        BasicProperties::default(),
    )
    .await?;
    Ok(connection)
}

/// One confirmed publish; a refused one closes the channel, which the next round trip shows.
async fn publish(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    properties: BasicProperties,
) -> anyhow::Result<()> {
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            b"{}",
            properties,
        )
        .await?
        .await?;
    anyhow::ensure!(!confirmation.is_nack(), "nacked");
    channel.basic_qos(1, Default::default()).await?;
    Ok(())
}

/// [`agent_start`] within [`START_DEADLINE`], timed.
async fn timed_start(
    url: &str,
    device: &Device,
    group: &Name,
) -> anyhow::Result<(Duration, Connection)> {
    let started = Instant::now();
    let connection = tokio::time::timeout(START_DEADLINE, agent_start(url, device, group))
        .await
        .map_err(|_| anyhow::anyhow!("{} not started within {START_DEADLINE:?}", device.user))??;
    Ok((started.elapsed(), connection))
}

/// [`agent_start`] tried again after a failure or after [`ATTEMPT_DEADLINE`] (with a
/// jittered 0.2-1 s pause, as agents back off) until it succeeds or [`START_DEADLINE`] has
/// passed: in a storm the broker's listen backlog overflows and some connections are reset
/// or stall, which agents simply retry.
/// The time counts from the first attempt; also returns the number of attempts.
async fn start_retrying(
    url: &str,
    device: &Device,
    group: &Name,
) -> anyhow::Result<(Duration, Connection, u32)> {
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = START_DEADLINE.saturating_sub(started.elapsed());
        let limit = left.min(ATTEMPT_DEADLINE);
        let error = match tokio::time::timeout(limit, agent_start(url, device, group)).await {
            Ok(Ok(connection)) => return Ok((started.elapsed(), connection, attempts)),
            Ok(Err(error)) => error,
            Err(_) => anyhow::anyhow!("an attempt took over {limit:?}"),
        };
        if started.elapsed() >= START_DEADLINE {
            return Err(error.context(format!(
                "{} not started within {START_DEADLINE:?} ({attempts} attempts)",
                device.user
            )));
        }
        tokio::time::sleep(Duration::from_millis(200 + fastrand::u64(..800))).await;
    }
}

async fn close(connection: Connection) {
    let _ = connection.close(200, "done".into()).await;
}

/// HTTP requests the broker made during `work`, per kind, and the work's result.
async fn counting<T>(
    requests: &Requests,
    work: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, BTreeMap<&'static str, u64>)> {
    let load = |requests: &Requests| {
        BTreeMap::from([
            ("user", requests.user.load(Ordering::Relaxed)),
            ("vhost", requests.vhost.load(Ordering::Relaxed)),
            ("resource", requests.resource.load(Ordering::Relaxed)),
            ("topic", requests.topic.load(Ordering::Relaxed)),
            ("total", requests.total()),
        ])
    };
    let before = load(requests);
    let result = work.await?;
    let after = load(requests);
    Ok((
        result,
        after
            .into_iter()
            .map(|(kind, count)| (kind, count - before[kind]))
            .collect(),
    ))
}

fn per(counts: &BTreeMap<&'static str, u64>, of: usize) -> f64 {
    counts["total"] as f64 / of.max(1) as f64
}

pub async fn run(options: &Options) -> anyhow::Result<serde_json::Value> {
    let storm = options.number("devices", 1000)? as usize;
    let sequential = options.number("sequential", 200)? as usize;
    let reports = options.number("reports", 2000)? as usize;
    let port = u16::try_from(options.number("port", 5695)?)?;
    let backends = Backend::parse_list(&options.text("backends", "internal,http,cache+http"))?;
    anyhow::ensure!(storm > 0, "--devices must be at least 1");
    raise_open_files_limit();
    // Devices [0, sequential) log in one after another, then the storm's start at once, then
    // two spare ones: one never seen before the outage, one kept connected across it.
    let fleet = Fleet::new(sequential + storm + 2);
    let mut figures = serde_json::Map::new();
    let mut failed_checks = Vec::new();
    for backend in backends {
        eprintln!("auth-backends: {} backend", backend.label());
        let bench = Bench::start(backend, port, &fleet, sequential, storm).await?;
        let measured = bench
            .measure(reports)
            .await
            .with_context(|| format!("the {} backend", backend.label()))?;
        failed_checks.extend(checks(backend, &measured));
        eprintln!("auth-backends: {}: {measured}", backend.label());
        figures.insert(backend.label().to_string(), measured);
    }
    Ok(json!({
        "scenario": "auth-backends",
        "devices": storm,
        "sequential": sequential,
        "reports": reports,
        "cache_ttl_secs": CACHE_TTL.as_secs(),
        "backends": figures,
        "failed_checks": failed_checks,
        "not_counted": "the HTTP service answers from memory in this process (no store read, \
                        loopback only), and its own CPU is not counted: a control plane \
                        answering it adds its store's read and its CPU to every request; TLS \
                        is off; start times include the benchmark's own connects (one \
                        process); the management API calls that make the internal backend's \
                        users are not counted (once per device, at mint)",
    }))
}

/// What must hold for the figures to mean what the README says they do.
fn checks(backend: Backend, measured: &serde_json::Value) -> Vec<String> {
    let label = backend.label();
    let mut failed = Vec::new();
    // Each node used the backend it was given (a configuration line RabbitMQ ignored would
    // compare the internal one with itself).
    let asked = measured["storm"]["http_requests_per_start"]
        .as_f64()
        .unwrap_or_default();
    if (asked > 0.0) != (backend != Backend::Internal) {
        failed.push(format!(
            "the {label} backend's node asked the HTTP service {asked} times per start"
        ));
    }
    let down = &measured["control_plane_down"];
    let expected: &[(&str, bool)] = match backend {
        Backend::Internal => &[
            ("recent_device_logs_in", true),
            ("new_device_logs_in", true),
            ("connected_device_reports_on_its_channel", true),
        ],
        Backend::Http => &[
            ("recent_device_logs_in", false),
            ("new_device_logs_in", false),
        ],
        Backend::CachedHttp => &[
            ("recent_device_logs_in", true),
            ("new_device_logs_in", false),
            ("after_ttl_recent_device_logs_in", false),
        ],
    };
    for (what, wanted) in expected {
        if down[what].as_bool() != Some(*wanted) {
            failed.push(format!(
                "{label}, control plane down: {what} is {}, expected {wanted}",
                down[what]
            ));
        }
    }
    // The cache's second round is its warm case only if it came within the TTL.
    if backend == Backend::CachedHttp
        && measured["one_by_one"]["again"]["http_requests_per_start"].as_f64() != Some(0.0)
    {
        failed.push("cache+http: the second round asked the HTTP service (past the TTL?)".into());
    }
    failed
}

/// One backend's node and HTTP service, and the devices' parts.
struct Bench<'a> {
    backend: Backend,
    service: AuthService,
    node: Node,
    fleet: &'a Fleet,
    sequential: usize,
    storm: usize,
}

impl<'a> Bench<'a> {
    async fn start(
        backend: Backend,
        port: u16,
        fleet: &'a Fleet,
        sequential: usize,
        storm: usize,
    ) -> anyhow::Result<Self> {
        let service = AuthService::start(fleet).await?;
        let node = Node::start(backend, port, service.address, fleet)?;
        Ok(Self {
            backend,
            service,
            node,
            fleet,
            sequential,
            storm,
        })
    }

    fn device(&self, index: usize) -> &'a Device {
        &self.fleet.devices[index]
    }

    async fn start_device(&self, device: &Device) -> anyhow::Result<(Duration, Connection)> {
        timed_start(&self.node.url(device), device, &self.fleet.group).await
    }

    async fn measure(mut self, reports: usize) -> anyhow::Result<serde_json::Value> {
        let kept = self.device(self.sequential + self.storm + 1);
        let booted = Instant::now();
        let kept_connection = self.wait_ready(kept).await?;
        let boot_secs = booted.elapsed().as_secs_f64();
        let one_by_one = self.one_by_one().await?;
        let storm = self.storm().await?;
        // The kept device's reports channel stays open, as an agent's does.
        let reports_channel = kept_connection.create_channel().await?;
        reports_channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let reports = self.reports(&reports_channel, kept, reports).await?;
        let outage = self
            .outage(&kept_connection, &reports_channel, kept)
            .await?;
        close(kept_connection).await;
        self.node.stop();
        anyhow::ensure!(
            self.service
                .requests
                .unreadable_patterns
                .load(Ordering::Relaxed)
                == 0,
            "the HTTP service met permission patterns it cannot read: its answers do not count"
        );
        Ok(json!({
            "node_ready_secs": boot_secs,
            "one_by_one": one_by_one,
            "storm": storm,
            "reports": reports,
            "control_plane_down": outage,
        }))
    }

    /// Ready once `kept` can start (its connection then stays open across the outage).
    async fn wait_ready(&self, kept: &Device) -> anyhow::Result<Connection> {
        let booted = Instant::now();
        loop {
            match self.start_device(kept).await {
                Ok((_, connection)) => return Ok(connection),
                Err(error) if booted.elapsed() < Duration::from_secs(120) => {
                    if booted.elapsed() > Duration::from_secs(30) {
                        eprintln!("auth-backends: node not ready yet ({error:#})");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => anyhow::bail!(
                    "the node did not let a device in within 120 s: {error:#}; the end of its console log:\n{}",
                    self.node.console_tail()
                ),
            }
        }
    }

    /// One device after another: each one's first start, then the same devices again at
    /// once (within the cache's TTL).
    async fn one_by_one(&self) -> anyhow::Result<serde_json::Value> {
        let mut rounds = serde_json::Map::new();
        for round in ["first", "again"] {
            let started = Instant::now();
            let (mut latencies, requests) = counting(&self.service.requests, async {
                let mut latencies = Vec::with_capacity(self.sequential);
                for index in 0..self.sequential {
                    let (took, connection) = self.start_device(self.device(index)).await?;
                    latencies.push(took);
                    close(connection).await;
                }
                Ok(latencies)
            })
            .await?;
            rounds.insert(
                round.to_string(),
                json!({
                    "start": Percentiles::of(&mut latencies),
                    "round_secs": started.elapsed().as_secs_f64(),
                    "http_requests_per_start": per(&requests, self.sequential),
                    "http_requests": requests,
                }),
            );
        }
        Ok(rounds.into())
    }

    /// Every storm device at once, as after a broker restart (the cache, in the node's
    /// memory, is empty then as here).
    async fn storm(&self) -> anyhow::Result<serde_json::Value> {
        eprintln!("auth-backends: {} devices starting at once", self.storm);
        let sampler = BrokerSampler::start(vec![self.node.port]);
        let started = Instant::now();
        let ((mut latencies, connections, retried), requests) =
            counting(&self.service.requests, async {
                // One task polls them all. A task each (tried) let about a thousand
                // handshakes run at once on this machine's two cores, and half of them
                // stalled past any deadline and then thrashed retrying; polled from one
                // task, part of each connect runs one after another, which the storm's time
                // includes (the same for every backend).
                let devices = &self.fleet.devices[self.sequential..self.sequential + self.storm];
                let starts = devices.iter().map(|device| {
                    let url = self.node.url(device);
                    async move { start_retrying(&url, device, &self.fleet.group).await }
                });
                let results = futures_util::future::join_all(starts).await;
                let mut latencies = Vec::with_capacity(self.storm);
                let mut connections = Vec::with_capacity(self.storm);
                let mut retried = 0;
                let mut failures = Vec::new();
                for result in results {
                    match result {
                        Ok((took, connection, attempts)) => {
                            latencies.push(took);
                            connections.push(connection);
                            retried += u64::from(attempts > 1);
                        }
                        Err(error) => failures.push(format!("{error:#}")),
                    }
                }
                anyhow::ensure!(
                    failures.is_empty(),
                    "{} of {} devices did not start, e.g. {}",
                    failures.len(),
                    self.storm,
                    failures[0]
                );
                Ok((latencies, connections, retried))
            })
            .await?;
        let all_started_secs = started.elapsed().as_secs_f64();
        let broker = sampler.stop().await;
        futures_util::future::join_all(connections.into_iter().map(close)).await;
        Ok(json!({
            "devices": self.storm,
            "all_started_secs": all_started_secs,
            "start": Percentiles::of(&mut latencies),
            "devices_that_retried": retried,
            "http_requests_per_start": per(&requests, self.storm),
            // Its CPU time (`cpu_secs`) is what compares: the storm's length, over which
            // `cpu_percent` is a share, varies from run to run.
            "broker": broker,
        }))
    }

    /// `count` reports from the kept device on its open channel, pipelined, every one
    /// confirmed.
    async fn reports(
        &self,
        channel: &lapin::Channel,
        device: &Device,
        count: usize,
    ) -> anyhow::Result<serde_json::Value> {
        let key = names::report_routing_key(&device.id);
        let (per_sec, requests) = counting(&self.service.requests, async {
            let started = Instant::now();
            let publishing = async {
                let mut confirms = Vec::with_capacity(count);
                for _ in 0..count {
                    confirms.push(
                        channel
                            .basic_publish(
                                names::REPORTS_EXCHANGE.into(),
                                key.as_str().into(),
                                BasicPublishOptions::default(),
                                b"{}",
                                BasicProperties::default(),
                            )
                            .await?,
                    );
                }
                for confirm in confirms {
                    anyhow::ensure!(!confirm.await?.is_nack(), "a report was nacked");
                }
                Ok(())
            };
            // A broker blocking publishers (a memory alarm) must not hang the run.
            tokio::time::timeout(Duration::from_secs(120), publishing)
                .await
                .map_err(|_| anyhow::anyhow!("{count} reports not confirmed within 120 s"))??;
            Ok(count as f64 / started.elapsed().as_secs_f64())
        })
        .await?;
        Ok(json!({
            "per_sec": per_sec,
            "http_requests_per_report": per(&requests, count),
        }))
    }

    /// The HTTP service (the control plane) goes down right after a device's login: the
    /// cache (if any) holds that device's answers, not the never-seen one's. Checked first
    /// the recent device's login (the one that depends on the TTL), then the connected
    /// device on its open channel and on a new one, then the never-seen device.
    async fn outage(
        &self,
        kept_connection: &Connection,
        reports_channel: &lapin::Channel,
        kept: &Device,
    ) -> anyhow::Result<serde_json::Value> {
        let recent = self.device(0);
        let never_seen = self.device(self.sequential + self.storm);
        let (_, connection) = self.start_device(recent).await?;
        close(connection).await;
        let logged_in = Instant::now();
        self.service.stop();
        let mut outage = json!({
            "recent_device_logs_in": self.can_start(recent).await,
            "recent_device_checked_after_secs": logged_in.elapsed().as_secs_f64(),
            "connected_device_reports_on_its_channel": report(reports_channel, kept).await.is_ok(),
            "connected_device_reports_on_a_new_channel": report_on_new_channel(kept_connection, kept).await.is_ok(),
            "new_device_logs_in": self.can_start(never_seen).await,
        });
        if self.backend == Backend::CachedHttp {
            tokio::time::sleep(CACHE_TTL + Duration::from_secs(1)).await;
            outage["after_ttl_recent_device_logs_in"] = json!(self.can_start(recent).await);
            outage["after_ttl_connected_device_reports_on_a_new_channel"] =
                json!(report_on_new_channel(kept_connection, kept).await.is_ok());
        }
        Ok(outage)
    }

    /// Whether `device` can start now (a login while the HTTP service is down).
    async fn can_start(&self, device: &Device) -> bool {
        match self.start_device(device).await {
            Ok((_, connection)) => {
                close(connection).await;
                true
            }
            Err(_) => false,
        }
    }
}

/// One confirmed report from `device` on `channel` (confirm mode), within 30 s.
async fn report(channel: &lapin::Channel, device: &Device) -> anyhow::Result<()> {
    tokio::time::timeout(
        Duration::from_secs(30),
        publish(
            channel,
            names::REPORTS_EXCHANGE,
            &names::report_routing_key(&device.id),
            BasicProperties::default(),
        ),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no confirm within 30 s"))?
}

/// [`report`] on a fresh channel of `device`'s open connection.
async fn report_on_new_channel(connection: &Connection, device: &Device) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    report(&channel, device).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_permission_patterns_device_credentials_makes() {
        let fleet = Fleet::new(1);
        let device = &fleet.devices[0];
        let queue = names::group_queue(&device.id, &fleet.group);
        assert_eq!(
            pattern_matches(&device.grants.configure, &queue),
            Some(true)
        );
        assert_eq!(
            pattern_matches(&device.grants.configure, &format!("{queue}x")),
            Some(false)
        );
        // `.` is literal: another character in its place does not match.
        assert_eq!(
            pattern_matches(&device.grants.configure, &queue.replace('.', "x")),
            Some(false)
        );
        assert_eq!(
            pattern_matches(&device.grants.write, names::SYNC_EXCHANGE),
            Some(true)
        );
        assert_eq!(
            pattern_matches(&device.grants.write, &names::group_exchange(&fleet.group)),
            Some(false)
        );
        assert_eq!(pattern_matches("a^", ""), Some(false));
        assert_eq!(pattern_matches(".*", "anything"), None);
    }

    #[test]
    fn hashes_passwords_as_rabbitmq_does() {
        let encoded = internal_password_hash("secret");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(bytes.len(), 4 + 32);
        let (salt, hash) = bytes.split_at(4);
        let mut hasher = Sha256::new();
        hasher.update(salt);
        hasher.update(b"secret");
        assert_eq!(hash, hasher.finalize().as_slice());
    }
}
