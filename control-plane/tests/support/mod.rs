//! Helpers for the tests against real services: a RabbitMQ virtual host per test (so that
//! `nebula.sync` and every exchange are private to the test and vanish with it), the real
//! `nebula-control-plane` binary as a child process, and AMQP helpers.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the helpers"
)]

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use nebula_protocol::{Message, decode, encode, names};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const USER: &str = "nebula";
pub const PASSWORD: &str = "nebula";
/// Longest wait for anything a test awaits; generous for a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The environment of a control plane on `vhost` with an embedded store in `data_dir`.
pub fn embedded(vhost: &TestVhost, data_dir: &std::path::Path) -> HashMap<&'static str, String> {
    HashMap::from([
        ("NEBULA_AMQP_URL", vhost.url.clone()),
        ("NEBULA_DATA_DIR", data_dir.display().to_string()),
    ])
}

pub fn name(value: &str) -> nebula_protocol::Name {
    nebula_protocol::Name::new(value).expect("name")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:012x}", fastrand::u64(..) & 0xffff_ffff_ffff)
}

pub fn amqp_base_url() -> String {
    std::env::var("NEBULA_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

pub fn mongo_url() -> String {
    std::env::var("NEBULA_TEST_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

fn rabbitmqctl(arguments: &[&str]) {
    let output = std::process::Command::new("rabbitmqctl")
        .args(arguments)
        .output()
        .expect("run rabbitmqctl (is RabbitMQ installed? scripts/services.sh start rabbitmq)");
    assert!(
        output.status.success(),
        "rabbitmqctl {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A RabbitMQ virtual host of its own, deleted (with everything in it) on drop.
pub struct TestVhost {
    pub name: String,
    pub url: String,
}

impl TestVhost {
    pub fn create() -> Self {
        let name = unique("nebula-test");
        rabbitmqctl(&["add_vhost", &name]);
        let base = amqp_base_url();
        let user = base
            .strip_prefix("amqp://")
            .and_then(|rest| rest.split_once(':'))
            .map(|(user, _)| user.to_string())
            .unwrap_or_else(|| "guest".into());
        rabbitmqctl(&["set_permissions", "-p", &name, &user, ".*", ".*", ".*"]);
        let root = base.rsplit_once('/').map(|(root, _)| root).unwrap_or(&base);
        let url = format!("{root}/{name}");
        Self { name, url }
    }

    /// Closes every client connection of this vhost, as a broker restart would.
    pub fn close_connections(&self) {
        rabbitmqctl(&[
            "close_all_connections",
            "-p",
            &self.name,
            "test closes connections",
        ]);
    }
}

impl Drop for TestVhost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.name])
            .output();
    }
}

/// The real binary, with its stderr (JSON logs) captured.
pub struct ControlPlane {
    child: Child,
    pub address: String,
    pub logs: Arc<Mutex<Vec<String>>>,
}

impl ControlPlane {
    /// Starts the binary with `environment` on top of test defaults and waits for its
    /// "listening" log line.
    pub async fn start(environment: HashMap<&str, String>) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_nebula-control-plane"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("NEBULA_LISTEN", "127.0.0.1:0")
            .env("NEBULA_LOG_FORMAT", "json")
            .env("RUST_LOG", "info,nebula_control_plane::sync=debug")
            .env("NEBULA_ADMIN_USER", USER)
            .env("NEBULA_ADMIN_PASSWORD", PASSWORD)
            .env("NEBULA_SHUTDOWN_GRACE_SECS", "5")
            .envs(environment)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().expect("spawn nebula-control-plane");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (address_sender, address_receiver) = tokio::sync::oneshot::channel();
        {
            let logs = Arc::clone(&logs);
            tokio::spawn(async move {
                let mut lines = BufReader::new(stderr).lines();
                let mut address_sender = Some(address_sender);
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
                        && value["fields"]["message"] == "listening"
                        && let Some(address) = value["fields"]["address"].as_str()
                        && let Some(sender) = address_sender.take()
                    {
                        let _ = sender.send(address.to_string());
                    }
                    logs.lock().expect("logs").push(line);
                }
            });
        }
        let address = match tokio::time::timeout(DEADLINE, address_receiver).await {
            Ok(Ok(address)) => address,
            _ => {
                let status = child.try_wait();
                panic!(
                    "control plane did not start listening ({status:?}); logs:\n{}",
                    logs.lock().expect("logs").join("\n")
                );
            }
        };
        Self {
            child,
            address,
            logs,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/api/v2{path}", self.address)
    }

    pub fn log_count(&self, message: &str) -> usize {
        self.logs
            .lock()
            .expect("logs")
            .iter()
            .filter(|line| line.contains(&format!("\"message\":\"{message}\"")))
            .count()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// SIGTERM, then the exit status.
    pub async fn terminate(mut self) -> std::process::ExitStatus {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        self.wait().await
    }

    /// Waits for the process to exit on its own.
    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    pub async fn wait(&mut self) -> std::process::ExitStatus {
        match tokio::time::timeout(DEADLINE, self.child.wait()).await {
            Ok(status) => status.expect("wait"),
            Err(_) => panic!("control plane did not exit; logs:\n{}", self.logs()),
        }
    }
}

/// Polls `probe` every 100 ms until it gives a value, at most [`DEADLINE`].
pub async fn wait_until<T, F, Fut>(what: &str, probe: F) -> T
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = std::time::Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .expect("http client")
}

/// An authenticated request; returns status and JSON body.
pub async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut request = client.request(method, url).basic_auth(USER, Some(PASSWORD));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let json = response.json().await.expect("json body");
    (status, json)
}

pub fn management_url() -> String {
    std::env::var("NEBULA_TEST_RABBITMQ_MANAGEMENT_URL")
        .unwrap_or_else(|_| "http://guest:guest@127.0.0.1:15672".into())
}

/// Removes a test device's broker user whatever happens to the test (a vhost's deletion
/// leaves users).
pub struct DeviceUser(pub String);

impl Drop for DeviceUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

pub async fn try_connect(url: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(url, ConnectionProperties::default()).await
}

pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to RabbitMQ")
}

/// A server-named exclusive queue bound to a fanout `exchange` (declared if missing, with
/// the same arguments the control plane uses).
pub async fn bound_queue(channel: &Channel, exchange: &str) -> String {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("queue.declare");
    let name = queue.name().to_string();
    channel
        .queue_bind(
            name.as_str().into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue.bind");
    name
}

/// Every message now in `queue` (the control plane answers only after the broker confirmed,
/// so what a 2xx promised is already there).
pub async fn drain(channel: &Channel, queue: &str) -> Vec<(Message, Option<u8>)> {
    let mut messages = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        let delivery = message.delivery;
        messages.push((
            decode(&delivery.data).expect("a valid Nebula message"),
            *delivery.properties.delivery_mode(),
        ));
    }
    messages
}

/// Waits for messages in `queue` until `done` says enough arrived, or the deadline.
pub async fn await_messages(
    channel: &Channel,
    queue: &str,
    done: impl Fn(&[(Message, Option<u8>)]) -> bool,
) -> Vec<(Message, Option<u8>)> {
    let start = tokio::time::Instant::now();
    let mut messages = Vec::new();
    loop {
        messages.extend(drain(channel, queue).await);
        if done(&messages) {
            return messages;
        }
        assert!(start.elapsed() < DEADLINE, "timed out; got {messages:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sends a sync request the way an agent does (direct reply-to, correlation id) and waits
/// for the reply.
pub async fn sync(
    connection: &Connection,
    target: nebula_protocol::SyncTarget,
) -> nebula_protocol::SyncReply {
    sync_within(connection, target, None, DEADLINE)
        .await
        .expect("sync reply in time")
}

/// Like [`sync`], as an agent that last synced with `known_store`; `None` when no reply
/// came within `wait`.
pub async fn sync_within(
    connection: &Connection,
    target: nebula_protocol::SyncTarget,
    known_store: Option<nebula_protocol::StoreId>,
    wait: Duration,
) -> Option<nebula_protocol::SyncReply> {
    let device = nebula_protocol::Name::new("test-device").expect("name");
    sync_as(
        connection,
        Sent::SHARED_LOGIN,
        &device,
        target,
        known_store,
        wait,
    )
    .await
}

/// How a sync request is sent: exchange, routing key and `user_id`.
#[derive(Debug, Clone, Copy)]
pub struct Sent<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub user_id: Option<&'a str>,
}

impl Sent<'_> {
    /// As an agent with a shared login (and agents of earlier releases) sends it.
    pub const SHARED_LOGIN: Sent<'static> = Sent {
        exchange: "",
        routing_key: names::SYNC_QUEUE,
        user_id: None,
    };
}

/// A sync request claiming `device`, sent as `sent`; the reply, or `None` when none came
/// within `wait`.
pub async fn sync_as(
    connection: &Connection,
    sent: Sent<'_>,
    device: &nebula_protocol::Name,
    target: nebula_protocol::SyncTarget,
    known_store: Option<nebula_protocol::StoreId>,
    wait: Duration,
) -> Option<nebula_protocol::SyncReply> {
    let channel = connection.create_channel().await.expect("channel");
    let mut replies = channel
        .basic_consume(
            names::DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("consume reply-to");
    let correlation_id = unique("sync");
    let request = Message::SyncRequest(nebula_protocol::SyncRequest {
        device_id: device.clone(),
        target,
        correlation_id: correlation_id.clone(),
        agent_version: "test".into(),
        known_store,
    });
    let mut properties = BasicProperties::default()
        .with_reply_to(names::DIRECT_REPLY_TO.into())
        .with_correlation_id(correlation_id.as_str().into());
    if let Some(user_id) = sent.user_id {
        properties = properties.with_user_id(user_id.into());
    }
    channel
        .basic_publish(
            sent.exchange.into(),
            sent.routing_key.into(),
            BasicPublishOptions::default(),
            &encode(&request),
            properties,
        )
        .await
        .expect("publish sync request");
    let delivery = tokio::time::timeout(wait, replies.next())
        .await
        .ok()?
        .expect("reply stream open")
        .expect("delivery");
    assert_eq!(
        delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(correlation_id.clone()),
        "AMQP correlation id copied"
    );
    let _ = channel.close(200, "done".into()).await;
    match decode(&delivery.data).expect("decode reply") {
        Message::SyncReply(reply) => {
            assert_eq!(reply.correlation_id, correlation_id);
            Some(reply)
        }
        other => panic!("not a sync reply: {other:?}"),
    }
}

/// `GET` of an unauthenticated endpoint (`/readyz`, `/metrics`) as text.
pub async fn get_text(address: &str, path: &str) -> (u16, String) {
    let response = http()
        .get(format!("http://{address}{path}"))
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("body"))
}
