//! The agent against real RabbitMQ, without the control plane: the test plays the control
//! plane (declares exchanges, answers sync requests from `nebula.sync`, publishes changes)
//! and checks that an agent with the simulated runtime converges.
//!
//! Each test runs in its own RabbitMQ virtual host (made with `rabbitmqctl`), so a control
//! plane consuming `nebula.sync` on `/` at the same time cannot answer this test's requests.

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
    AppConfig, DeviceGroup, GroupState, Message, Name, SyncReply, SyncResult, SyncTarget, decode,
    encode,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CONVERGE: Duration = Duration::from_secs(30);

/// A throwaway virtual host, deleted on drop.
struct VirtualHost {
    name: String,
    url: String,
}

impl VirtualHost {
    fn create() -> Self {
        let name = unique("nebula-agent-test");
        let rabbitmqctl = |arguments: &[&str]| {
            let output = std::process::Command::new("rabbitmqctl")
                .args(arguments)
                .output()
                .expect("rabbitmqctl (the tests need the local RabbitMQ of scripts/services.sh)");
            assert!(
                output.status.success(),
                "rabbitmqctl {arguments:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        };
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
        let base = env_or("NEBULA_TEST_AMQP_HOST", "127.0.0.1:5672");
        let url = format!("amqp://guest:guest@{base}/{name}");
        Self { name, url }
    }
}

impl Drop for VirtualHost {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_vhost", &self.name])
            .output();
    }
}

/// The test's stand-in for the control plane.
struct ControlPlane {
    channel: Channel,
    _connection: Connection,
    /// The sync reply per target; absent targets answer `NotFound`.
    replies: Arc<Mutex<HashMap<String, SyncResult>>>,
    sync_requests: Arc<Mutex<u32>>,
}

fn target_key(target: &SyncTarget) -> String {
    match target {
        SyncTarget::App(app) => format!("app/{app}"),
        SyncTarget::DeviceGroup(group) => format!("group/{group}"),
    }
}

impl ControlPlane {
    async fn start(url: &str) -> Self {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .expect("connect");
        let channel = connection.create_channel().await.expect("channel");
        let responder = connection.create_channel().await.expect("channel");
        responder
            .queue_declare(
                SYNC_QUEUE.into(),
                QueueDeclareOptions::durable(),
                FieldTable::default(),
            )
            .await
            .expect("declare sync queue");
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
        let sync_requests: Arc<Mutex<u32>> = Arc::default();
        let (answers, counter) = (replies.clone(), sync_requests.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = requests.next().await {
                let Ok(Message::SyncRequest(request)) = decode(&delivery.data) else {
                    continue;
                };
                *counter.lock().expect("lock") += 1;
                let result = answers
                    .lock()
                    .expect("lock")
                    .get(&target_key(&request.target))
                    .cloned()
                    .unwrap_or(SyncResult::NotFound);
                let reply = Message::SyncReply(SyncReply {
                    correlation_id: request.correlation_id.clone(),
                    result,
                    store_id: nebula_protocol::StoreId(1),
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
            sync_requests,
        }
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

    /// Messages waiting in a queue.
    async fn queue_depth(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("passive declare")
            .message_count()
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

    let requests = control_plane.sync_requests.clone();
    wait_for("a sync request for the unknown app", CONVERGE, move || {
        let requests = requests.clone();
        async move { *requests.lock().expect("lock") >= 1 }
    })
    .await;
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
    let cp = &control_plane;
    let queue_name = queue.clone();
    wait_for("the queue drained (nothing requeued)", CONVERGE, || async {
        cp.queue_depth(&queue_name).await == 0
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

    // Re-created at revision 1: accepted although lower than the revision held before.
    control_plane.declare_exchange(&exchange).await;
    control_plane.answer(
        SyncTarget::App(app.clone()),
        Some(SyncResult::App(app_config(
            &app,
            1,
            "127.0.0.1:5000/nebula/test:2",
        ))),
    );
    applied(&runtime, &app, 1).await;
    assert_eq!(
        runtime.spec(&format!("{app}-1")).expect("container").image,
        "127.0.0.1:5000/nebula/test:2"
    );
    // And follows changes again on its re-bound queue.
    control_plane
        .publish(&exchange, &Message::AppChanged(app_config(&app, 2, image)))
        .await;
    applied(&runtime, &app, 2).await;

    shutdown.cancel();
    let result = tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("stops")
        .expect("task");
    assert!(result.is_ok(), "{result:?}");
    // Shutdown leaves containers running.
    assert_eq!(runtime.applied_revision(&app), Some(2));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_ends_the_agent_with_an_error() {
    let vhost = VirtualHost::create();
    let control_plane = ControlPlane::start(&vhost.url).await;
    let app = Name::new(unique("lost")).expect("name");
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
    let state_path = state_dir.path().to_str().expect("utf-8").to_string();
    let agent_config = config(&[
        ("NEBULA_APPS", app.as_str()),
        ("NEBULA_DEVICE_ID", device.as_str()),
        ("NEBULA_AMQP_URL", &vhost.url),
        ("NEBULA_STATE_DIR", &state_path),
        ("NEBULA_RUNTIME", "simulated"),
    ]);
    let runtime = SimulatedRuntime::new();
    let agent = tokio::spawn(nebula_agent::run(
        agent_config,
        runtime.clone(),
        CancellationToken::new(),
    ));
    applied(&runtime, &app, 1).await;
    // Deleting the virtual host closes every connection to it, as a broker failure would.
    drop(control_plane);
    drop(vhost);
    let result = tokio::time::timeout(Duration::from_secs(20), agent)
        .await
        .expect("the agent fails hard")
        .expect("task");
    assert!(result.is_err());
    // Its containers keep running for the supervisor's restart.
    assert_eq!(runtime.applied_revision(&app), Some(1));
}
