//! The agent against real RabbitMQ, without the control plane: the test plays the control
//! plane (declares exchanges, answers sync requests from `nebula.sync`, publishes changes)
//! and checks that an agent with the simulated runtime converges.
//!
//! Each test runs in its own RabbitMQ virtual host (made with `rabbitmqctl`), so a control
//! plane consuming `nebula.sync` on `/` at the same time cannot answer this test's requests.
//! The tests named after issue 12's defects failed on the code before the fix.

mod common;

use common::{config, env_or, unique, wait_for};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use nebula_agent::runtime::simulated::SimulatedRuntime;
use nebula_protocol::names::{self, REPORTS_EXCHANGE, SYNC_QUEUE};
use nebula_protocol::{
    AppConfig, DeviceGroup, GroupState, Message, Name, StoreId, SyncReply, SyncRequest, SyncResult,
    SyncTarget, decode, encode,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(30);

/// Runs `rabbitmqctl` and returns its standard output; panics when it fails.
fn rabbitmqctl(arguments: &[&str]) -> String {
    let output = std::process::Command::new("rabbitmqctl")
        .args(arguments)
        .output()
        .expect("rabbitmqctl (the tests need the local RabbitMQ of scripts/services.sh)");
    assert!(
        output.status.success(),
        "rabbitmqctl {arguments:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A throwaway virtual host, deleted on drop (with the users made for it).
struct VirtualHost {
    name: String,
    url: String,
    users: Vec<String>,
}

impl VirtualHost {
    fn create() -> Self {
        let name = unique("nebula-agent-test");
        rabbitmqctl(&["-q", "add_vhost", &name]);
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &name,
            "guest",
            ".*",
            ".*",
            ".*",
        ]);
        let url = format!("amqp://guest:guest@{}/{name}", broker_address());
        Self {
            name,
            url,
            users: Vec::new(),
        }
    }

    /// The URL of this virtual host (as guest) through another address, such as a
    /// [`StandInNode`]'s.
    fn url_via(&self, address: &str) -> String {
        format!("amqp://guest:guest@{address}/{}", self.name)
    }

    /// A user of this virtual host with the rights a locked-down device has: configure only
    /// its own queues (`nebula.device.*`), read and write everything. Returns its URL.
    fn device_user(&mut self) -> String {
        let user = unique("nebula-device");
        let password = format!("{:016x}", fastrand::u64(..));
        rabbitmqctl(&["-q", "add_user", &user, &password]);
        self.users.push(user.clone());
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &self.name,
            &user,
            "^nebula\\.device\\.",
            ".*",
            ".*",
        ]);
        format!(
            "amqp://{user}:{password}@{}/{}",
            broker_address(),
            self.name
        )
    }

    /// Closes the broker connection of `device`'s agent, as a broker failover or a network
    /// drop would. Returns how many connections were closed.
    fn close_agent_connections(&self, device: &Name) -> usize {
        let connections = rabbitmqctl(&[
            "--silent",
            "list_connections",
            "-p",
            &self.name,
            "pid",
            "client_properties",
        ]);
        let marker = format!("nebula-agent {device}");
        let mut closed = 0;
        for line in connections.lines().filter(|line| line.contains(&marker)) {
            let pid = line.split_whitespace().next().expect("pid column");
            rabbitmqctl(&["-q", "close_connection", pid, "test: connection dropped"]);
            closed += 1;
        }
        closed
    }

    /// Messages in `queue`, ready or unacknowledged. Asked of `rabbitmqctl`: a passive
    /// declare from another connection is refused on an exclusive queue.
    fn queue_messages(&self, queue: &str) -> Option<u32> {
        self.queue_count(queue, "messages")
    }

    /// Consumers of `queue`, as the broker lists them.
    fn queue_consumers(&self, queue: &str) -> Option<u32> {
        self.queue_count(queue, "consumers")
    }

    /// One numeric `list_queues` column of `queue`.
    fn queue_count(&self, queue: &str, column: &str) -> Option<u32> {
        let queues = rabbitmqctl(&["--silent", "list_queues", "-p", &self.name, "name", column]);
        queues.lines().find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next() == Some(queue)).then(|| columns.next()?.parse().ok())?
        })
    }

    /// Waits until the agent consumes `queue`: a sync reply can be applied by a boot pass
    /// that found the exchange missing and will bind on its next pass, so a change published
    /// before then reaches no queue (the real control plane writes the store first, so the
    /// next sync would carry it; this test's scripted answers do not).
    async fn consumed(&self, queue: &str) {
        wait_for(&format!("{queue} consumed"), CONVERGE, || async {
            self.queue_consumers(queue) == Some(1)
        })
        .await;
    }

    /// `durable` and `exclusive` of `queue`, as the broker lists them.
    fn queue_properties(&self, queue: &str) -> Option<(bool, bool)> {
        let queues = rabbitmqctl(&[
            "--silent",
            "list_queues",
            "-p",
            &self.name,
            "name",
            "durable",
            "exclusive",
        ]);
        queues.lines().find_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.first() == Some(&queue)).then(|| {
                (
                    columns.get(1) == Some(&"true"),
                    columns.get(2) == Some(&"true"),
                )
            })
        })
    }
}

impl Drop for VirtualHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
        for user in &self.users {
            let _ = std::process::Command::new("rabbitmqctl")
                .args(["-q", "delete_user", user])
                .output();
        }
    }
}

fn broker_address() -> String {
    env_or("NEBULA_TEST_AMQP_HOST", "127.0.0.1:5672")
}

/// A broker node of a test's broker list: a TCP address the test controls, which counts the
/// connections the agent opens to it, so a test knows which node the agent tried.
struct StandInNode {
    address: String,
    accepted: Arc<AtomicUsize>,
    listener: tokio::task::JoinHandle<()>,
}

impl StandInNode {
    /// A node that is down: it accepts the TCP connection and closes it at once, so the
    /// AMQP handshake fails (like a RabbitMQ that is stopping, or a load balancer in front of
    /// a dead node).
    async fn dead() -> Self {
        Self::start(None).await
    }

    /// Another address of the real broker: relays every connection to it.
    async fn relay_to_broker() -> Self {
        Self::start(Some(broker_address())).await
    }

    async fn start(forward_to: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a stand-in node");
        let address = listener.local_addr().expect("address").to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let listener = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let Some(broker) = forward_to.clone() else {
                    continue; // dropped: closed at once
                };
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&broker).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self {
            address,
            accepted,
            listener,
        }
    }

    /// Connections accepted so far.
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for StandInNode {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// A sync request as the control plane received it.
#[derive(Debug, Clone)]
struct ReceivedRequest {
    request: SyncRequest,
    /// The AMQP `expiration` property.
    expiration: Option<String>,
}

/// The test's stand-in for the control plane.
struct ControlPlane {
    channel: Channel,
    _connection: Connection,
    /// The sync reply per target; absent targets answer `NotFound`.
    replies: Arc<Mutex<HashMap<String, SyncResult>>>,
    /// The store the replies come from.
    store: Arc<Mutex<StoreId>>,
    requests: Arc<Mutex<Vec<ReceivedRequest>>>,
}

fn target_key(target: &SyncTarget) -> String {
    match target {
        SyncTarget::App(app) => format!("app/{app}"),
        SyncTarget::DeviceGroup(group) => format!("group/{group}"),
    }
}

/// `nebula.sync` as a control plane declares it: the queue, and the exchange agents logged in
/// as a device user (`nebula-device-*`, as `TestVhost::device_user` makes) publish their
/// requests to, bound to it.
async fn declare_sync_queue(channel: &Channel) {
    channel
        .queue_declare(
            SYNC_QUEUE.into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .expect("declare sync queue");
    channel
        .exchange_declare(
            names::SYNC_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare sync exchange");
    channel
        .queue_bind(
            SYNC_QUEUE.into(),
            names::SYNC_EXCHANGE.into(),
            names::SYNC_BINDING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind sync queue");
}

impl ControlPlane {
    async fn start(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let responder = connection.create_channel().await.expect("channel");
        declare_sync_queue(&responder).await;
        let mut requests = responder
            .basic_consume(
                SYNC_QUEUE.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume sync queue");
        let replies: Arc<Mutex<HashMap<String, SyncResult>>> = Arc::default();
        let store = Arc::new(Mutex::new(StoreId(1)));
        let received: Arc<Mutex<Vec<ReceivedRequest>>> = Arc::default();
        let (answers, answering_store, log) = (replies.clone(), store.clone(), received.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let Ok(Message::SyncRequest(request)) = decode(&delivery.data) else {
                    continue;
                };
                log.lock().expect("lock").push(ReceivedRequest {
                    request: request.clone(),
                    expiration: delivery
                        .properties
                        .expiration()
                        .as_ref()
                        .map(|expiration| expiration.to_string()),
                });
                let result = answers
                    .lock()
                    .expect("lock")
                    .get(&target_key(&request.target))
                    .cloned()
                    .unwrap_or(SyncResult::NotFound);
                let reply = Message::SyncReply(SyncReply {
                    correlation_id: request.correlation_id.clone(),
                    result,
                    store_id: *answering_store.lock().expect("lock"),
                });
                let reply_to = delivery.properties.reply_to().clone().expect("reply_to");
                let correlation_id = delivery
                    .properties
                    .correlation_id()
                    .clone()
                    .expect("correlation id");
                assert_eq!(correlation_id.as_str(), request.correlation_id);
                responder
                    .basic_publish(
                        "".into(),
                        reply_to,
                        BasicPublishOptions::default(),
                        &encode(&reply),
                        BasicProperties::default().with_correlation_id(correlation_id),
                    )
                    .await
                    .expect("reply");
                delivery.ack(BasicAckOptions::default()).await.expect("ack");
            }
        });
        Self {
            channel,
            _connection: connection,
            replies,
            store,
            requests: received,
        }
    }

    /// Answers from `store` from now on.
    fn set_store(&self, store: StoreId) {
        *self.store.lock().expect("lock") = store;
    }

    fn received(&self) -> Vec<ReceivedRequest> {
        self.requests.lock().expect("lock").clone()
    }

    /// Waits until at least `count` sync requests arrived in total.
    async fn requests_reach(&self, count: usize) {
        let requests = self.requests.clone();
        wait_for(&format!("{count} sync requests"), CONVERGE, move || {
            let requests = requests.clone();
            async move { requests.lock().expect("lock").len() >= count }
        })
        .await;
    }

    fn answer(&self, target: SyncTarget, result: Option<SyncResult>) {
        let mut replies = self.replies.lock().expect("lock");
        match result {
            Some(result) => replies.insert(target_key(&target), result),
            None => replies.remove(&target_key(&target)),
        };
    }

    async fn declare_exchange(&self, exchange: &str) {
        self.channel
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
            .expect("declare exchange");
    }

    async fn delete_exchange(&self, exchange: &str) {
        self.channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .expect("delete exchange");
    }

    async fn publish_bytes(&self, exchange: &str, payload: &[u8]) {
        self.channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish");
    }

    async fn publish(&self, exchange: &str, message: &Message) {
        self.publish_bytes(exchange, &encode(message)).await;
    }

    /// A queue receiving `device`'s reports.
    async fn report_queue(&self, device: &Name) -> lapin::Consumer {
        self.channel
            .exchange_declare(
                REPORTS_EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare reports exchange");
        let queue = self
            .channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare report queue");
        self.channel
            .queue_bind(
                queue.name().clone(),
                REPORTS_EXCHANGE.into(),
                names::report_routing_key(device).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind report queue");
        self.channel
            .basic_consume(
                queue.name().clone(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume reports")
    }
}

fn app_config(app: &Name, revision: u64, image: &str) -> AppConfig {
    let mut config = AppConfig::new(app.clone(), image);
    config.app_id = revision;
    config
}

async fn applied(runtime: &SimulatedRuntime, app: &Name, revision: u64) {
    let (runtime, app) = (runtime.clone(), app.clone());
    wait_for(
        &format!("{app} applied at {revision}"),
        CONVERGE,
        move || {
            let (runtime, app) = (runtime.clone(), app.clone());
            async move { runtime.applied_revision(&app) == Some(revision) }
        },
    )
    .await;
}

async fn removed(runtime: &SimulatedRuntime, app: &Name) {
    let (runtime, app) = (runtime.clone(), app.clone());
    wait_for(&format!("{app} removed"), CONVERGE, move || {
        let (runtime, app) = (runtime.clone(), app.clone());
        async move { runtime.container_names(&app).is_empty() }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_mode_boot_flow_changes_poison_delete_and_recreate() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("app")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    let image = "127.0.0.1:5000/nebula/test:1";

    // The app does not exist yet: the agent must wait and retry.
    let state_dir = tempfile::tempdir().expect("tempdir");
    let state_path = state_dir.path().to_str().expect("utf-8").to_string();
    let agent_config = config(&[
        ("NEBULA_APPS", app.as_str()),
        ("NEBULA_DEVICE_ID", device.as_str()),
        ("NEBULA_AMQP_URL", &vhost.url),
        ("NEBULA_STATE_DIR", &state_path),
        ("NEBULA_RUNTIME", "simulated"),
        ("NEBULA_REPORT_INTERVAL_SECS", "1"),
    ]);
    let mut reports = control_plane.report_queue(&device).await;
    let runtime = SimulatedRuntime::new();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config,
        runtime.clone(),
        shutdown.clone(),
    ));

    control_plane.requests_reach(1).await;
    assert!(runtime.container_names(&app).is_empty());

    // Created: the exchange appears and sync answers with revision 1.
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(&app, 1, image))),
    );
    applied(&runtime, &app, 1).await;

    // The agent's queue exists, is bound, and follows changes.
    let queue = names::app_queue(&device, &app);
    vhost.consumed(&queue).await;
    let mut change = app_config(&app, 2, image);
    change.env_vars.insert("REVISION".into(), "2".into());
    control_plane
        .publish(&exchange, &Message::AppChanged(change))
        .await;
    applied(&runtime, &app, 2).await;
    let spec = runtime.spec(&format!("{app}-1")).expect("container");
    assert_eq!(spec.env, vec!["REVISION=2"]);

    // A poison message is rejected without requeue, and the agent keeps working.
    control_plane
        .publish_bytes(&exchange, b"definitely not a nebula message")
        .await;
    let mut invalid = app_config(&app, 9, image);
    invalid.docker_image = "NOT A VALID IMAGE".into();
    control_plane
        .publish(&exchange, &Message::AppChanged(invalid))
        .await;
    // A stale revision is acknowledged and ignored.
    control_plane
        .publish(
            &exchange,
            &Message::AppChanged(app_config(&app, 1, "busybox:stale")),
        )
        .await;
    control_plane
        .publish(&exchange, &Message::AppChanged(app_config(&app, 3, image)))
        .await;
    applied(&runtime, &app, 3).await;
    assert!(
        !runtime
            .operations()
            .iter()
            .any(|operation| operation.contains("stale"))
    );
    assert!(!agent.is_finished());
    let (vhost_ref, queue_name) = (&vhost, queue.clone());
    wait_for("the queue drained (nothing requeued)", CONVERGE, || async {
        vhost_ref.queue_messages(&queue_name) == Some(0)
    })
    .await;

    // Reports carry the applied revision.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let delivery = tokio::time::timeout_at(deadline, reports.next())
            .await
            .expect("a report in time")
            .expect("report stream")
            .expect("report delivery");
        let Ok(Message::DeviceReport(report)) = decode(&delivery.data) else {
            panic!("not a report");
        };
        assert_eq!(report.device_id, device);
        assert_eq!(report.hostname, "test-host");
        let entry = report
            .apps
            .iter()
            .find(|entry| entry.app_name == app)
            .expect("app in report");
        if entry.applied_revision == Some(3) && report.updated {
            assert_eq!(entry.desired_revision, Some(3));
            assert_eq!(entry.containers.len(), 1);
            assert_eq!(entry.containers[0].state, "running");
            assert!(report.resources.cpu_cores >= 1);
            break;
        }
    }

    // Deleted: containers go, the agent goes back to waiting for the app.
    control_plane.answer(SyncTarget::App(app.clone()), None);
    control_plane
        .publish(
            &exchange,
            &Message::AppDeleted {
                app_name: app.clone(),
                app_id: 3,
                incarnation: 0,
            },
        )
        .await;
    control_plane.delete_exchange(&exchange).await;
    removed(&runtime, &app).await;

    // Re-created: a new incarnation, at revision 1 again.
    control_plane.declare_exchange(&exchange).await;
    let mut recreated = app_config(&app, 1, "127.0.0.1:5000/nebula/test:2");
    recreated.incarnation = 1;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(recreated.clone())),
    );
    applied(&runtime, &app, 1).await;
    assert_eq!(
        runtime.spec(&format!("{app}-1")).expect("container").image,
        "127.0.0.1:5000/nebula/test:2"
    );
    // A late change of the deleted incarnation is ignored; the new one's changes apply on
    // the re-bound queue.
    vhost.consumed(&queue).await;
    control_plane
        .publish(
            &exchange,
            &Message::AppChanged(app_config(&app, 3, "busybox:deleted")),
        )
        .await;
    let mut recreated_2 = recreated.clone();
    recreated_2.app_id = 2;
    recreated_2.docker_image = image.into();
    control_plane
        .publish(&exchange, &Message::AppChanged(recreated_2))
        .await;
    applied(&runtime, &app, 2).await;
    assert!(
        !runtime
            .operations()
            .iter()
            .any(|operation| operation.contains("busybox:deleted"))
    );

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    // Shutdown leaves containers running.
    assert_eq!(runtime.applied_revision(&app), Some(2));
    // The last report says goodbye (the control plane shows the device offline at once);
    // none before it did.
    let mut last = None;
    while let Ok(Some(delivery)) =
        tokio::time::timeout(Duration::from_secs(2), reports.next()).await
    {
        let Ok(Message::DeviceReport(report)) = decode(&delivery.expect("delivery").data) else {
            panic!("not a report");
        };
        if let Some(earlier) = last.replace(report.stopping) {
            assert!(!earlier, "a stopping report before the last one");
        }
    }
    assert_eq!(last, Some(true), "the last report is the stopping one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_mode_follows_membership_member_changes_prune_and_delete() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let group = Name::new(unique("group")).expect("name");
    let (app_a, app_b, app_c) = (
        Name::new(unique("a")).expect("name"),
        Name::new(unique("b")).expect("name"),
        Name::new(unique("c")).expect("name"),
    );
    let device = Name::new(unique("device")).expect("name");
    let image = "127.0.0.1:5000/nebula/test:1";
    let group_exchange = names::group_exchange(&group);
    control_plane.declare_exchange(&group_exchange).await;
    for app in [&app_a, &app_b, &app_c] {
        let exchange = names::app_exchange(app);
        control_plane.declare_exchange(&exchange).await;
        control_plane
            .channel
            .exchange_bind(
                group_exchange.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind app exchange to group exchange");
    }
    let group_state = |revision: u64, prune_id: u64, apps: Vec<AppConfig>| {
        let mut document = DeviceGroup::new(group.clone());
        document.device_group_id = revision;
        document.prune_id = prune_id;
        document.apps = apps.iter().map(|app| app.app_name.clone()).collect();
        GroupState {
            group: document,
            apps,
            cron_jobs: Vec::new(),
            unavailable: Vec::new(),
        }
    };
    let mut a1 = app_config(&app_a, 1, image);
    a1.containers_per = nebula_protocol::ContainersPer::Server(2);
    control_plane.answer(
        SyncTarget::DeviceGroup(group.clone()),
        Some(SyncResult::Group(group_state(
            1,
            1,
            vec![a1.clone(), app_config(&app_b, 1, image)],
        ))),
    );

    let state_dir = tempfile::tempdir().expect("tempdir");
    let state_path = state_dir.path().to_str().expect("utf-8").to_string();
    let agent_config = config(&[
        ("NEBULA_DEVICE_GROUP", group.as_str()),
        ("NEBULA_DEVICE_ID", device.as_str()),
        ("NEBULA_AMQP_URL", &vhost.url),
        ("NEBULA_STATE_DIR", &state_path),
        ("NEBULA_RUNTIME", "simulated"),
    ]);
    let runtime = SimulatedRuntime::new();
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config,
        runtime.clone(),
        shutdown.clone(),
    ));
    applied(&runtime, &app_a, 1).await;
    applied(&runtime, &app_b, 1).await;
    assert_eq!(runtime.container_names(&app_a).len(), 2);

    // A member app's change reaches the group queue through the exchange-to-exchange binding.
    let mut a2 = a1.clone();
    a2.app_id = 2;
    a2.rolling_restart = true;
    control_plane
        .publish(
            &names::app_exchange(&app_a),
            &Message::AppChanged(a2.clone()),
        )
        .await;
    applied(&runtime, &app_a, 2).await;

    // b leaves, c joins.
    let members = vec![a2.clone(), app_config(&app_c, 1, image)];
    control_plane
        .publish(
            &group_exchange,
            &Message::DeviceGroupChanged(group_state(2, 1, members.clone())),
        )
        .await;
    removed(&runtime, &app_b).await;
    applied(&runtime, &app_c, 1).await;
    assert!(
        !runtime
            .operations()
            .iter()
            .any(|operation| operation == "prune")
    );
    // A prune request bumps only prune_id, not the group's revision.
    control_plane
        .publish(
            &group_exchange,
            &Message::DeviceGroupChanged(group_state(2, 2, members)),
        )
        .await;
    let watched = runtime.clone();
    wait_for("prune", CONVERGE, move || {
        let runtime = watched.clone();
        async move {
            runtime
                .operations()
                .iter()
                .any(|operation| operation == "prune")
        }
    })
    .await;
    assert_eq!(runtime.applied_revision(&app_a), Some(2));

    // Stop (running: false) converges to no containers.
    let mut a3 = a2.clone();
    a3.app_id = 3;
    a3.running = false;
    control_plane
        .publish(&names::app_exchange(&app_a), &Message::AppChanged(a3))
        .await;
    removed(&runtime, &app_a).await;

    // The group is deleted: everything goes.
    control_plane.answer(SyncTarget::DeviceGroup(group.clone()), None);
    control_plane
        .publish(
            &group_exchange,
            &Message::DeviceGroupDeleted {
                device_group: group.clone(),
                device_group_id: 2,
                incarnation: 0,
            },
        )
        .await;
    removed(&runtime, &app_c).await;

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}

/// An agent's configuration for these tests: simulated runtime, its own state directory.
fn agent_config(
    mode: (&str, &str),
    device: &Name,
    url: &str,
    state_dir: &std::path::Path,
) -> nebula_agent::Config {
    config(&[
        mode,
        ("NEBULA_DEVICE_ID", device.as_str()),
        ("NEBULA_AMQP_URL", url),
        ("NEBULA_STATE_DIR", state_dir.to_str().expect("utf-8 path")),
        ("NEBULA_RUNTIME", "simulated"),
        ("NEBULA_REPORT_INTERVAL_SECS", "1"),
    ])
}

/// Stops an in-process agent and checks that it stopped cleanly.
async fn stop(
    shutdown: CancellationToken,
    agent: tokio::task::JoinHandle<Result<(), nebula_agent::AgentError>>,
) {
    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(15), agent)
        .await
        .expect("the agent stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
}

fn start(
    config: nebula_agent::Config,
    runtime: &SimulatedRuntime,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<(), nebula_agent::AgentError>>,
) {
    let shutdown = CancellationToken::new();
    let agent = tokio::spawn(nebula_agent::run(config, runtime.clone(), shutdown.clone()));
    (shutdown, agent)
}

/// Issue 12, defect 1: a device is down while a member app changes and the group does not;
/// its queue is gone (exclusive: it died with the connection), so only the boot sync can
/// tell it. The sync reply carries the group at the same revision.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_app_changed_while_the_device_was_down_converges_at_an_unchanged_group_revision() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let group = Name::new(unique("group")).expect("name");
    let app = Name::new(unique("member")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    control_plane
        .declare_exchange(&names::group_exchange(&group))
        .await;
    let group_state = |member: AppConfig| {
        let mut document = DeviceGroup::new(group.clone());
        document.device_group_id = 4;
        document.apps = vec![member.app_name.clone()];
        GroupState {
            group: document,
            apps: vec![member],
            cron_jobs: Vec::new(),
            unavailable: Vec::new(),
        }
    };
    let before = app_config(&app, 1, "127.0.0.1:5000/nebula/test:1");
    control_plane.answer(
        SyncTarget::DeviceGroup(group.clone()),
        Some(SyncResult::Group(group_state(before))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let agent_config = agent_config(
        ("NEBULA_DEVICE_GROUP", group.as_str()),
        &device,
        &vhost.url,
        state_dir.path(),
    );
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(agent_config.clone(), &runtime);
    applied(&runtime, &app, 1).await;
    stop(shutdown, agent).await;

    // While the device is down: the app changes, the group document does not.
    let mut after = app_config(&app, 2, "127.0.0.1:5000/nebula/test:2");
    after.env_vars.insert("WHILE".into(), "down".into());
    control_plane.answer(
        SyncTarget::DeviceGroup(group.clone()),
        Some(SyncResult::Group(group_state(after))),
    );
    let (shutdown, agent) = start(agent_config, &runtime);
    applied(&runtime, &app, 2).await;
    let spec = runtime.spec(&format!("{app}-1")).expect("container");
    assert_eq!(spec.image, "127.0.0.1:5000/nebula/test:2");
    assert_eq!(spec.env, vec!["WHILE=down"]);
    stop(shutdown, agent).await;
}

/// Issue 12, defect 3: "not found" removes apps only when it comes from the store the agent
/// synced with; from any other store (a second control plane on an empty store) the agent
/// keeps its apps and asks again, telling the store it knows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_found_from_an_unknown_store_keeps_the_apps_and_from_the_known_store_removes_them() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("kept")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let known = StoreId(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
    control_plane
        .declare_exchange(&names::app_exchange(&app))
        .await;
    control_plane.set_store(known);
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            3,
            "127.0.0.1:5000/nebula/test:1",
        ))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let agent_config = agent_config(
        ("NEBULA_APPS", app.as_str()),
        &device,
        &vhost.url,
        state_dir.path(),
    );
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(agent_config.clone(), &runtime);
    applied(&runtime, &app, 3).await;
    stop(shutdown, agent).await;

    // A control plane on an empty store answers while the device restarts.
    control_plane.set_store(StoreId(0xe));
    control_plane.answer(SyncTarget::App(app.clone()), None);
    let seen = control_plane.received().len();
    let (shutdown, agent) = start(agent_config, &runtime);
    // Two more requests: the agent got the first "not found", kept going, and asked again.
    control_plane.requests_reach(seen + 2).await;
    assert_eq!(runtime.applied_revision(&app), Some(3), "apps must be kept");
    let operations = runtime.operations();
    assert!(
        !operations
            .iter()
            .any(|operation| operation.starts_with("remove")),
        "{operations:?}"
    );
    for received in &control_plane.received()[seen..] {
        assert_eq!(received.request.known_store, Some(known));
        assert!(received.expiration.is_some(), "sync requests expire");
    }

    // The known store says the app is gone: now it goes.
    control_plane.set_store(known);
    removed(&runtime, &app).await;
    assert!(!agent.is_finished());
    stop(shutdown, agent).await;
}

/// Issue 12, defect 9: a second agent with the same device id (a cloned SD card) is refused
/// the queue, says what to do, and never shares the first agent's changes; it takes over
/// once the first one is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_device_id_is_refused_and_the_first_agent_keeps_every_change() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("dup")).expect("name");
    let device = Name::new(unique("cloned")).expect("name");
    let exchange = names::app_exchange(&app);
    let image = "127.0.0.1:5000/nebula/test:1";
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(&app, 1, image))),
    );
    let first_state = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let (shutdown, first) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &vhost.url,
            first_state.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 1).await;

    // The clone: the real binary, so that what it logs is what an operator reads.
    let second_state = tempfile::tempdir().expect("tempdir");
    let log_path = second_state.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut second = std::process::Command::new(env!("CARGO_BIN_EXE_nebula-agent"))
        .env_clear()
        .env("NEBULA_APPS", app.as_str())
        .env("NEBULA_DEVICE_ID", device.as_str())
        .env("NEBULA_AMQP_URL", &vhost.url)
        .env("NEBULA_STATE_DIR", second_state.path().join("state"))
        .env("NEBULA_RUNTIME", "simulated")
        .env("NEBULA_MAX_BACKOFF_SECS", "1")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start the second agent");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    wait_for("the second agent reports the duplicate", CONVERGE, || {
        let text = read_log();
        async move { text.contains("RESOURCE_LOCKED") }
    })
    .await;
    let text = read_log();
    for advice in [
        "another agent runs with this device id",
        "NEBULA_DEVICE_ID",
        "/etc/machine-id",
        "has not yet dropped",
    ] {
        assert!(text.contains(advice), "missing {advice:?} in:\n{text}");
    }

    // Every change reaches the first agent: each one is awaited before the next is sent,
    // so a queue shared round-robin would strand one of them with the clone.
    for revision in 2..=7 {
        control_plane
            .publish(
                &exchange,
                &Message::AppChanged(app_config(&app, revision, image)),
            )
            .await;
        applied(&runtime, &app, revision).await;
    }
    let text = read_log();
    assert!(
        !text.contains("app changed"),
        "the clone got a change:\n{text}"
    );
    assert!(
        !second_state.path().join("state").exists(),
        "the clone must not have synced or persisted anything"
    );
    assert_eq!(second.try_wait().expect("wait"), None, "no crash loop");

    // The first agent goes away: the clone is no longer refused and follows the app.
    stop(shutdown, first).await;
    wait_for("the second agent takes over", CONVERGE, || {
        let text = read_log();
        async move { text.contains("synced; consuming changes") }
    })
    .await;
    let _ = second.kill();
    let _ = second.wait();
}

/// Upgrade: the previous release left a durable queue (with `x-expires`) of the same name;
/// the agent replaces it with its exclusive, non-durable queue and follows changes on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_queue_of_the_previous_release_is_replaced() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("upgraded")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    let queue = names::app_queue(&device, &app);
    let image = "127.0.0.1:5000/nebula/test:1";
    control_plane.declare_exchange(&exchange).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        names::QUEUE_EXPIRES_ARGUMENT.into(),
        lapin::types::AMQPValue::LongInt(
            i32::try_from(names::AGENT_QUEUE_EXPIRES_MS).expect("fits"),
        ),
    );
    control_plane
        .channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            arguments,
        )
        .await
        .expect("declare the previous release's queue");
    control_plane
        .channel
        .queue_bind(
            queue.as_str().into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind it");
    control_plane
        .publish(&exchange, &Message::AppChanged(app_config(&app, 1, image)))
        .await;
    assert_eq!(vhost.queue_properties(&queue), Some((true, false)));

    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(&app, 2, image))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &vhost.url,
            state_dir.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 2).await;
    // Now exclusive and not durable.
    assert_eq!(vhost.queue_properties(&queue), Some((false, true)));
    control_plane
        .publish(&exchange, &Message::AppChanged(app_config(&app, 3, image)))
        .await;
    applied(&runtime, &app, 3).await;
    stop(shutdown, agent).await;
    // Exclusive: gone with the agent's connection.
    let vhost_ref = &vhost;
    let queue_ref = &queue;
    wait_for(
        "the queue gone with the connection",
        CONVERGE,
        || async move { vhost_ref.queue_properties(queue_ref).is_none() },
    )
    .await;
}

/// Issue 12, defect 10: on a slow link the reply to the first sync request arrives after
/// the agent asked again. It is accepted; requests expire in the broker after their
/// timeout, which grows from attempt to attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_reply_to_an_earlier_attempt_is_accepted() {
    let vhost = VirtualHost::create();
    let connection = Connection::connect(&vhost.url, ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    let app = Name::new(unique("slow")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare exchange");
    declare_sync_queue(&channel).await;
    let mut requests = channel
        .basic_consume(
            SYNC_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume sync queue");

    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &vhost.url,
            state_dir.path(),
        ),
        &runtime,
    );
    let mut next_request = async || {
        let delivery = tokio::time::timeout(CONVERGE, requests.next())
            .await
            .expect("a sync request in time")
            .expect("stream")
            .expect("delivery");
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
        let Ok(Message::SyncRequest(request)) = decode(&delivery.data) else {
            panic!("not a sync request");
        };
        (request, delivery.properties)
    };
    let (first, first_properties) = next_request().await;
    // The link is slow: the agent times out (2 s in tests) and asks again before the
    // first reply arrives; that second request is never answered.
    let (second, second_properties) = next_request().await;
    assert_ne!(first.correlation_id, second.correlation_id);
    let reply = Message::SyncReply(SyncReply {
        correlation_id: first.correlation_id.clone(),
        result: SyncResult::App(app_config(&app, 1, "127.0.0.1:5000/nebula/test:1")),
        store_id: StoreId(1),
    });
    channel
        .basic_publish(
            "".into(),
            first_properties.reply_to().clone().expect("reply_to"),
            BasicPublishOptions::default(),
            &encode(&reply),
            BasicProperties::default().with_correlation_id(first.correlation_id.as_str().into()),
        )
        .await
        .expect("late reply");
    applied(&runtime, &app, 1).await;

    // Each request expires after its own timeout, and the timeout doubles.
    let expiration = |properties: &BasicProperties| {
        properties
            .expiration()
            .as_ref()
            .map(|expiration| expiration.to_string())
    };
    assert_eq!(expiration(&first_properties).as_deref(), Some("2000"));
    assert_eq!(expiration(&second_properties).as_deref(), Some("4000"));
    // Synced: the agent consumes its queue.
    let mut change = app_config(&app, 2, "127.0.0.1:5000/nebula/test:1");
    change.env_vars.insert("AFTER".into(), "slow sync".into());
    channel
        .basic_publish(
            exchange.as_str().into(),
            "".into(),
            BasicPublishOptions::default(),
            &encode(&Message::AppChanged(change)),
            BasicProperties::default(),
        )
        .await
        .expect("publish change");
    applied(&runtime, &app, 2).await;
    stop(shutdown, agent).await;
}

/// Issue 12, defect 11 and the delivery design: a lost connection does not end the agent.
/// It reconnects in-process (apps keep running), declares, binds and syncs again, and so
/// converges to a change made while it was disconnected — which no queue held for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_re_established_and_a_change_made_meanwhile_converges() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("lost")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            1,
            "127.0.0.1:5000/nebula/test:1",
        ))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &vhost.url,
            state_dir.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 1).await;
    let created = runtime.operations().len();

    // The change happens in the store only; then the connection drops.
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            2,
            "127.0.0.1:5000/nebula/test:2",
        ))),
    );
    let seen = control_plane.received().len();
    assert_eq!(vhost.close_agent_connections(&device), 1);
    applied(&runtime, &app, 2).await;
    assert!(!agent.is_finished(), "the agent must not exit");
    assert!(control_plane.received().len() > seen, "it synced again");
    // The reconnected agent follows changes again.
    control_plane
        .publish(
            &exchange,
            &Message::AppChanged(app_config(&app, 3, "127.0.0.1:5000/nebula/test:2")),
        )
        .await;
    applied(&runtime, &app, 3).await;
    // Nothing but the two updates touched the containers (no restart of the app).
    let operations = runtime.operations()[created..].to_vec();
    assert_eq!(
        operations
            .iter()
            .filter(|operation| operation.starts_with("create"))
            .count(),
        2,
        "{operations:?}"
    );
    stop(shutdown, agent).await;
}

/// RabbitMQ 3.10/3.11 race (see `transport::amqp::watch`): after a cluster node dies, the
/// late cleanup of an agent's old queue deletes, by name, the record and binding of the
/// queue the agent has meanwhile declared again on another node, and the agent consumes on
/// from a queue nothing is routed to. The test does to the queue what that cleanup does
/// (the same Mnesia deletes, through `rabbitmqctl eval`): the agent must notice, declare,
/// bind and sync again, and so get both the change made meanwhile and the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_the_broker_dropped_under_the_consumer_is_declared_bound_and_synced_again() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("dropped")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            1,
            "127.0.0.1:5000/nebula/test:1",
        ))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &vhost.url,
            state_dir.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 1).await;

    let queue = names::app_queue(&device, &app);
    let drop_record_and_bindings = format!(
        "Q = rabbit_misc:r(<<\"{vhost}\">>, queue, <<\"{queue}\">>), \
         rabbit_misc:execute_mnesia_transaction(fun () -> \
             ok = mnesia:delete({{rabbit_queue, Q}}), \
             rabbit_binding:remove_transient_for_destination(Q) end), dropped.",
        vhost = vhost.name
    );
    let output = rabbitmqctl(&["eval", &drop_record_and_bindings]);
    // What the cleanup leaves: the agent still consumes, but its queue is unknown to the
    // broker, and unbound.
    assert!(output.contains("dropped"), "{output}");

    // A change made in the store meanwhile: only a sync brings it.
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            2,
            "127.0.0.1:5000/nebula/test:2",
        ))),
    );
    applied(&runtime, &app, 2).await;
    // Bound again: the next change is routed to the new queue.
    control_plane
        .publish(
            &exchange,
            &Message::AppChanged(app_config(&app, 3, "127.0.0.1:5000/nebula/test:2")),
        )
        .await;
    applied(&runtime, &app, 3).await;
    assert!(!agent.is_finished(), "the agent must not exit");
    stop(shutdown, agent).await;
}

/// A sync request the broker refuses (nack) fails its channel, and the boot flow asks again
/// on a new one after its backoff, not after the attempt's timeout (on a RabbitMQ 3.10
/// cluster a channel can keep sending to a dead quorum-queue leader). Here `nebula.sync`
/// refuses every publish (a policy: no room, reject-publish) for the first seconds, and the
/// attempt's timeout is 60 s: only a new channel syncs within the test's 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_sync_request_is_sent_again_on_a_new_channel() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    rabbitmqctl(&[
        "-q",
        "set_policy",
        "-p",
        &vhost.name,
        "--apply-to",
        "queues",
        "sync-full",
        "^nebula\\.sync$",
        r#"{"max-length":0,"overflow":"reject-publish"}"#,
    ]);
    let app = Name::new(unique("refused")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    control_plane
        .declare_exchange(&names::app_exchange(&app))
        .await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            1,
            "127.0.0.1:5000/nebula/test:1",
        ))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let mut config = agent_config(
        ("NEBULA_APPS", app.as_str()),
        &device,
        &vhost.url,
        state_dir.path(),
    );
    config.sync_timeout = Duration::from_secs(60);
    let (shutdown, agent) = start(config, &runtime);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        control_plane.received().is_empty(),
        "the policy refuses every sync request"
    );
    assert_eq!(runtime.applied_revision(&app), None);
    rabbitmqctl(&["-q", "clear_policy", "-p", &vhost.name, "sync-full"]);
    applied(&runtime, &app, 1).await;
    assert!(!agent.is_finished(), "the agent must not exit");
    stop(shutdown, agent).await;
}

/// Reports are best effort, and a device account needs no configure rights beyond its own
/// queues: with the reports exchange missing the agent runs on, and once the control plane
/// declares it the reports arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_down_device_runs_without_the_reports_exchange_and_reports_once_it_exists() {
    let mut vhost = VirtualHost::create();
    let device_url = vhost.device_user();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("reporting")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    let image = "127.0.0.1:5000/nebula/test:1";
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(&app, 1, image))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &device_url,
            state_dir.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 1).await;
    // Reports go out every second, into a missing exchange: the agent keeps working.
    control_plane
        .publish(&exchange, &Message::AppChanged(app_config(&app, 2, image)))
        .await;
    applied(&runtime, &app, 2).await;
    assert!(!agent.is_finished());

    let mut reports = control_plane.report_queue(&device).await;
    let delivery = tokio::time::timeout(CONVERGE, reports.next())
        .await
        .expect("a report once the exchange exists")
        .expect("stream")
        .expect("delivery");
    let Ok(Message::DeviceReport(report)) = decode(&delivery.data) else {
        panic!("not a report");
    };
    assert_eq!(report.device_id, device);
    assert_eq!(
        delivery.properties.delivery_mode(),
        &Some(1),
        "reports are transient"
    );
    stop(shutdown, agent).await;
}

/// Issue 13 (RabbitMQ cluster): `NEBULA_AMQP_URL` lists a node that is down and a live one.
/// The agent starts at a random node, and whichever comes first it ends up on the live one
/// and converges; after a lost connection it moves on to the next node — here the dead one,
/// which the test sees it try — and from there back to the live one, syncing again. (Both
/// starting points take this test through "dead node, then live node": at start or after the
/// loss.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_in_the_broker_list_is_skipped_whichever_node_comes_first() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let dead = StandInNode::dead().await;
    let app = Name::new(unique("cluster")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let exchange = names::app_exchange(&app);
    let image = "127.0.0.1:5000/nebula/test:1";
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(&app, 1, image))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let brokers = format!("{},{}", vhost.url_via(&dead.address), vhost.url);
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_APPS", app.as_str()),
            &device,
            &brokers,
            state_dir.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 1).await;
    vhost.consumed(&names::app_queue(&device, &app)).await;
    // 1 if the agent started at the dead node, 0 if at the live one.
    let tried_at_start = dead.accepted();
    assert!(
        tried_at_start <= 1,
        "{tried_at_start} attempts at the dead node"
    );

    // The change happens in the store only; then the live node drops the connection.
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(&app, 2, image))),
    );
    assert_eq!(vhost.close_agent_connections(&device), 1);
    applied(&runtime, &app, 2).await;
    assert_eq!(
        dead.accepted(),
        tried_at_start + 1,
        "the attempt after the loss goes to the next node (the dead one), then on to the live one"
    );
    vhost.consumed(&names::app_queue(&device, &app)).await;
    control_plane
        .publish(&exchange, &Message::AppChanged(app_config(&app, 3, image)))
        .await;
    applied(&runtime, &app, 3).await;
    assert!(!agent.is_finished());
    stop(shutdown, agent).await;
}

/// Issue 13: two addresses of one broker make a list of two nodes (the broker directly, and
/// through a relay that counts connections). Wherever the agent started, the reconnect after
/// a lost connection goes to the *other* node: exactly one of the two sessions ran through
/// the relay. It binds, syncs (a change made while it was disconnected converges) and
/// consumes again. The list is written with spaces and a trailing comma.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_moves_to_the_other_node_of_the_list() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let relay = StandInNode::relay_to_broker().await;
    let group = Name::new(unique("cluster")).expect("name");
    let app = Name::new(unique("member")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    let group_exchange = names::group_exchange(&group);
    let queue = names::group_queue(&device, &group);
    control_plane.declare_exchange(&group_exchange).await;
    let group_state = |revision: u64, member: AppConfig| {
        let mut document = DeviceGroup::new(group.clone());
        document.device_group_id = revision;
        document.apps = vec![member.app_name.clone()];
        GroupState {
            group: document,
            apps: vec![member],
            cron_jobs: Vec::new(),
            unavailable: Vec::new(),
        }
    };
    control_plane.answer(
        SyncTarget::DeviceGroup(group.clone()),
        Some(SyncResult::Group(group_state(
            1,
            app_config(&app, 1, "127.0.0.1:5000/nebula/test:1"),
        ))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let runtime = SimulatedRuntime::new();
    let brokers = format!(" {} , {} ,", vhost.url, vhost.url_via(&relay.address));
    let (shutdown, agent) = start(
        agent_config(
            ("NEBULA_DEVICE_GROUP", group.as_str()),
            &device,
            &brokers,
            state_dir.path(),
        ),
        &runtime,
    );
    applied(&runtime, &app, 1).await;
    vhost.consumed(&queue).await;
    let first_session_relayed = match relay.accepted() {
        0 => false,
        1 => true,
        more => panic!("{more} connections through the relay for one session"),
    };

    control_plane.answer(
        SyncTarget::DeviceGroup(group.clone()),
        Some(SyncResult::Group(group_state(
            2,
            app_config(&app, 2, "127.0.0.1:5000/nebula/test:2"),
        ))),
    );
    let seen = control_plane.received().len();
    assert_eq!(vhost.close_agent_connections(&device), 1);
    applied(&runtime, &app, 2).await;
    assert!(control_plane.received().len() > seen, "it synced again");
    vhost.consumed(&queue).await;
    // Started direct: the reconnect went through the relay (now 1). Started through the
    // relay: the reconnect went direct (still 1). Reconnecting to the same node would leave
    // 0 or make 2.
    assert_eq!(
        relay.accepted(),
        1,
        "the reconnect must go to the other node (first session relayed: {first_session_relayed})"
    );
    // The new session follows changes.
    control_plane
        .publish(
            &group_exchange,
            &Message::AppChanged(app_config(&app, 3, "127.0.0.1:5000/nebula/test:2")),
        )
        .await;
    applied(&runtime, &app, 3).await;
    stop(shutdown, agent).await;
}

/// Issue 13, what an operator reads: the real binary, with a broker list whose first node
/// is a closed port. Every "connected" line names the node (host:port) and the virtual host;
/// the closed port is named when it is tried (forced here by dropping the connection: the
/// next attempt goes to it); the password is in no line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_each_node_it_tries_and_never_the_password() {
    let mut vhost = VirtualHost::create();
    let device_url = vhost.device_user();
    let password = device_url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password.to_string())
        .expect("a password in the device URL");
    let closed_port = device_url.replacen(&broker_address(), "127.0.0.1:1", 1);
    assert_ne!(closed_port, device_url);
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("logged")).expect("name");
    let device = Name::new(unique("device")).expect("name");
    control_plane
        .declare_exchange(&names::app_exchange(&app))
        .await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            1,
            "127.0.0.1:5000/nebula/test:1",
        ))),
    );
    let state_dir = tempfile::tempdir().expect("tempdir");
    let log_path = state_dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut agent = std::process::Command::new(env!("CARGO_BIN_EXE_nebula-agent"))
        .env_clear()
        .env("NEBULA_APPS", app.as_str())
        .env("NEBULA_DEVICE_ID", device.as_str())
        .env("NEBULA_AMQP_URL", format!("{closed_port},{device_url}"))
        .env("NEBULA_STATE_DIR", state_dir.path().join("state"))
        .env("NEBULA_RUNTIME", "simulated")
        .env("NEBULA_MAX_BACKOFF_SECS", "1")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("start the agent");
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let lines_with = |text: &str, needle: &str| -> Vec<String> {
        text.lines()
            .filter(|line| line.contains(needle))
            .map(str::to_string)
            .collect()
    };
    wait_for("the agent syncs", CONVERGE, || {
        let text = read_log();
        async move { text.contains("synced; consuming changes") }
    })
    .await;
    assert_eq!(vhost.close_agent_connections(&device), 1);
    wait_for("the agent reconnects", CONVERGE, || {
        let text = read_log();
        async move { lines_with(&text, "synced; consuming changes").len() >= 2 }
    })
    .await;
    let _ = agent.kill();
    let _ = agent.wait();

    let text = read_log();
    let connected = lines_with(&text, "connected to the broker");
    assert_eq!(connected.len(), 2, "{text}");
    for line in &connected {
        assert!(
            line.contains(&broker_address()) && line.contains(&vhost.name),
            "no node or vhost in {line:?}"
        );
    }
    let unreachable = lines_with(&text, "broker unreachable");
    assert!(
        !unreachable.is_empty(),
        "the closed port was never tried:\n{text}"
    );
    for line in &unreachable {
        assert!(line.contains("127.0.0.1:1"), "{line:?}");
    }
    assert!(
        !text.contains(&password),
        "the password is in the log:\n{text}"
    );
}
