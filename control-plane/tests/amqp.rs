//! The real binary against real RabbitMQ (a virtual host per test) with the embedded store:
//! REST writes reach the app's and the group's queues exactly once, sync requests get the
//! current state, an interrupted publish is republished at start, and a lost broker
//! connection is replaced in-process (over a list of nodes, a dead one skipped).

mod support;

use nebula_control_plane::store::embedded::EmbeddedStore;
use nebula_control_plane::store::{AppDocument, Kind, Store, to_record};
use nebula_protocol::{AppConfig, Message, SyncResult, SyncTarget, names};
use reqwest::Method;
use serde_json::json;
use support::{
    ControlPlane, TestVhost, bound_queue, call, connect, drain, embedded, get_text, http, name,
    sync,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_writes_reach_app_and_group_queues_exactly_once() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let client = http();

    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/web"),
        Some(json!({"docker_image": "nginx"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/device_groups/edge"),
        Some(json!({"apps": ["web"]})),
    )
    .await;
    assert_eq!(status, 200);

    let connection = connect(&vhost.url).await;
    let channel = connection.create_channel().await.expect("channel");
    let app_queue = bound_queue(&channel, &names::app_exchange(&name("web"))).await;
    let group_queue = bound_queue(&channel, &names::group_exchange(&name("edge"))).await;

    let started = std::time::Instant::now();
    let (status, body) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/web/stop"),
        None,
    )
    .await;
    let write_latency = started.elapsed();
    assert_eq!((status, body["app_id"].clone()), (202, json!(2)));
    // The 2xx came after the confirm: the message is already in both queues.
    for queue in [&app_queue, &group_queue] {
        let messages = drain(&channel, queue).await;
        assert_eq!(
            messages.len(),
            1,
            "exactly one message on {queue}: {messages:?}"
        );
        let (message, delivery_mode) = &messages[0];
        assert_eq!(
            *delivery_mode,
            Some(1),
            "transient: the store is the truth (DESIGN §3)"
        );
        match message {
            Message::AppChanged(config) => {
                assert_eq!(
                    (config.app_name.as_str(), config.app_id, config.running),
                    ("web", 2, false)
                );
            }
            other => panic!("{other:?}"),
        }
    }
    eprintln!("write latency (store + confirmed publish): {write_latency:?}");

    // A group change reaches the group queue with every member's full config.
    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/api"),
        Some(json!({"docker_image": "redis"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = call(
        &client,
        Method::PATCH,
        &control_plane.url("/device_groups/edge/update"),
        Some(json!({"apps": ["web", "api"]})),
    )
    .await;
    assert_eq!(status, 202);
    let messages = drain(&channel, &group_queue).await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    match &messages[0].0 {
        Message::DeviceGroupChanged(state) => {
            assert_eq!(state.group.device_group_id, 2);
            let apps: Vec<(&str, u64)> = state
                .apps
                .iter()
                .map(|app| (app.app_name.as_str(), app.app_id))
                .collect();
            assert_eq!(apps, vec![("web", 2), ("api", 1)]);
        }
        other => panic!("{other:?}"),
    }
    // The new member's changes now reach the group through the exchange binding.
    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/api/restart"),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let messages = drain(&channel, &group_queue).await;
    assert!(
        matches!(&messages[..], [(Message::AppChanged(config), _)] if config.app_name == "api" && config.app_id == 2),
        "{messages:?}"
    );

    // Deleting an app: devices of the app and of the group are told, the group drops it.
    let (status, body) = call(
        &client,
        Method::DELETE,
        &control_plane.url("/apps/web"),
        None,
    )
    .await;
    assert_eq!((status, body), (200, json!({})));
    let app_messages = drain(&channel, &app_queue).await;
    assert!(
        matches!(
            &app_messages[..],
            [(Message::AppDeleted { app_id: 2, .. }, _)]
        ),
        "{app_messages:?}"
    );
    let group_messages = drain(&channel, &group_queue).await;
    assert_eq!(group_messages.len(), 2, "{group_messages:?}");
    assert!(
        matches!(&group_messages[0].0, Message::AppDeleted { app_name, .. } if app_name == "web")
    );
    match &group_messages[1].0 {
        Message::DeviceGroupChanged(state) => {
            assert_eq!(state.group.apps, vec![name("api")]);
            assert_eq!(state.group.device_group_id, 3);
        }
        other => panic!("{other:?}"),
    }
    // The app exchange is gone: declaring it passively fails.
    let probe = connection.create_channel().await.expect("channel");
    let passive = probe
        .exchange_declare(
            names::app_exchange(&name("web")).as_str().into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await;
    assert!(passive.is_err(), "app exchange still exists");

    let status = control_plane.terminate().await;
    assert!(status.success(), "SIGTERM is a clean exit: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_requests_get_the_current_state() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let client = http();
    call(
        &client,
        Method::POST,
        &control_plane.url("/apps/web"),
        Some(json!({"docker_image": "nginx", "env_vars": {"A": "1"}})),
    )
    .await;
    call(
        &client,
        Method::POST,
        &control_plane.url("/apps/web/stop"),
        None,
    )
    .await;
    call(
        &client,
        Method::POST,
        &control_plane.url("/device_groups/edge"),
        Some(json!({"apps": ["web"]})),
    )
    .await;

    let connection = connect(&vhost.url).await;
    let started = std::time::Instant::now();
    let reply = sync(&connection, SyncTarget::App(name("web"))).await;
    eprintln!("sync round trip: {:?}", started.elapsed());
    match reply.result {
        SyncResult::App(config) => {
            assert_eq!((config.app_id, config.running), (2, false));
            assert_eq!(config.env_vars.get("A").map(String::as_str), Some("1"));
        }
        other => panic!("{other:?}"),
    }
    match sync(&connection, SyncTarget::DeviceGroup(name("edge")))
        .await
        .result
    {
        SyncResult::Group(state) => {
            assert_eq!(state.group.device_group_id, 1);
            assert_eq!(state.apps.len(), 1);
            assert_eq!(state.apps[0].app_id, 2);
        }
        other => panic!("{other:?}"),
    }
    for target in [
        SyncTarget::App(name("ghost")),
        SyncTarget::DeviceGroup(name("ghost")),
    ] {
        assert_eq!(sync(&connection, target).await.result, SyncResult::NotFound);
    }
    // A poison message is rejected, not retried, and the responder keeps going.
    // (Published with a confirm and without direct reply-to, which a channel that does not
    // consume it may not use: the broker would close the channel and drop the message.)
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(lapin::options::ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    let confirm = channel
        .basic_publish(
            "".into(),
            names::SYNC_QUEUE.into(),
            lapin::options::BasicPublishOptions::default(),
            b"garbage",
            lapin::BasicProperties::default().with_reply_to("nobody".into()),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack(), "{confirm:?}");
    let reply = sync(&connection, SyncTarget::App(name("web"))).await;
    assert!(matches!(reply.result, SyncResult::App(_)));

    // `/metrics` counts what the responder did: three found, two not found, one rejected.
    // The counters move after the reply is sent, so give the last ones a moment.
    let expected = [
        ("nebula_sync_requests_answered_total{result=\"found\"}", 3),
        (
            "nebula_sync_requests_answered_total{result=\"not_found\"}",
            2,
        ),
        ("nebula_sync_requests_rejected_total", 1),
        ("nebula_changes_published_total", 3),
    ];
    let read = |body: &str| {
        expected.map(|(name, _)| {
            (
                name,
                nebula_control_plane::metrics::sample::<u64>(body, name),
            )
        })
    };
    let mut counters = read("");
    for _ in 0..50 {
        let body = client
            .get(format!("http://{}/metrics", control_plane.address))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        counters = read(&body);
        if counters == expected.map(|(name, value)| (name, Some(value))) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(counters, expected.map(|(name, value)| (name, Some(value))));
    let status = control_plane.terminate().await;
    assert!(status.success(), "{status:?}");
}

/// A change stored with its outbox flag but never confirmed (the instance died between the
/// store write and the confirm) is published when the next instance starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_publish_is_republished_at_start() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(data.path()).expect("open store");
        let mut config = AppConfig::new(name("web"), "nginx");
        config.app_id = 1;
        let record =
            to_record(Kind::App, "web", &AppDocument::from(&config), false, false).expect("record");
        store.insert(Kind::App, &record).await.expect("insert");
        // Revision 2 was written, and then the process died before the broker confirmed.
        config.app_id = 2;
        config.running = false;
        let record =
            to_record(Kind::App, "web", &AppDocument::from(&config), true, false).expect("record");
        store.replace(Kind::App, 1, &record).await.expect("replace");
    }
    let connection = connect(&vhost.url).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = bound_queue(&channel, &names::app_exchange(&name("web"))).await;

    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    // The outbox runs before the instance listens, so the message is already there.
    let messages = drain(&channel, &queue).await;
    assert!(
        matches!(&messages[..], [(Message::AppChanged(config), Some(1))] if config.app_id == 2 && !config.running),
        "{messages:?}"
    );
    let status = control_plane.terminate().await;
    assert!(status.success());
    let store = EmbeddedStore::open(data.path()).expect("reopen");
    assert!(
        store.pending(Kind::App).await.expect("pending").is_empty(),
        "flag cleared"
    );

    // Started again with nothing pending, it publishes nothing.
    drop(store);
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    assert!(drain(&channel, &queue).await.is_empty());
    control_plane.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_broker_connection_is_replaced_in_process() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let mut environment = embedded(&vhost, data.path());
    // A node that is down, listed first: whichever node the instance starts with (at random),
    // it must end up serving on the live one, at start and after the loss.
    let dead = format!("amqp://guest:guest@127.0.0.1:1/{}", vhost.name);
    environment.insert("NEBULA_AMQP_URL", format!("{dead}, {}", vhost.url));
    let mut control_plane = ControlPlane::start(environment).await;
    let client = http();
    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/web"),
        Some(json!({"docker_image": "nginx"})),
    )
    .await;
    assert_eq!(status, 200);

    vhost.close_connections();
    support::wait_until("the instance to serve on a new connection", || {
        let address = control_plane.address.clone();
        async move {
            let (_, metrics) = get_text(&address, "/metrics").await;
            let (ready, _) = get_text(&address, "/readyz").await;
            (ready == 200 && metrics.contains("nebula_broker_connections_total 2\n")).then_some(())
        }
    })
    .await;
    assert!(control_plane.is_running(), "{}", control_plane.logs());

    // Publishing works again, and so does the sync responder.
    let connection = connect(&vhost.url).await;
    let channel = connection.create_channel().await.expect("channel");
    let queue = bound_queue(&channel, &names::app_exchange(&name("web"))).await;
    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/web/stop"),
        None,
    )
    .await;
    assert_eq!(status, 202, "{}", control_plane.logs());
    let messages = drain(&channel, &queue).await;
    assert!(
        matches!(&messages[..], [(Message::AppChanged(config), _)] if !config.running),
        "{messages:?}"
    );
    let reply = sync(&connection, SyncTarget::App(name("web"))).await;
    assert!(
        matches!(&reply.result, SyncResult::App(config) if !config.running),
        "{reply:?}"
    );
    assert_eq!(control_plane.log_count("fatal error"), 0);
    control_plane.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_64_before_any_io() {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_nebula-control-plane"))
        .env_clear()
        .env("NEBULA_STORE", "sqlite")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let status = tokio::time::timeout(support::DEADLINE, child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert_eq!(status.code(), Some(64));
    // No credentials and authentication on: also a configuration error.
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_nebula-control-plane"))
        .env_clear()
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .expect("status");
    assert_eq!(status.code(), Some(64));
}

/// The arguments RabbitMQ holds for `queue` in `vhost`, as rabbitmqctl renders them.
fn queue_arguments(vhost: &TestVhost, queue: &str) -> Option<serde_json::Value> {
    queue_info(vhost, queue, "arguments")
}

/// One column of rabbitmqctl's `list_queues` for `queue` in `vhost`.
fn queue_info(vhost: &TestVhost, queue: &str, column: &str) -> Option<serde_json::Value> {
    let output = std::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-p", &vhost.name, "name", column])
        .args(["--formatter", "json", "-q"])
        .output()
        .expect("rabbitmqctl");
    assert!(output.status.success(), "{output:?}");
    let queues: Vec<serde_json::Value> = serde_json::from_slice(&output.stdout).expect("json");
    queues
        .into_iter()
        .find(|entry| entry["name"] == queue)
        .map(|entry| entry[column].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_queue_is_bounded_and_an_older_unbounded_one_is_kept() {
    // A fresh broker: the queue is declared with a length limit and a TTL.
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let arguments = queue_arguments(&vhost, names::REPORTS_QUEUE).expect("declared");
    let text = arguments.to_string();
    for expected in ["x-max-length", "drop-head", "x-message-ttl"] {
        assert!(text.contains(expected), "{expected} missing in {text}");
    }
    assert_eq!(
        queue_info(&vhost, names::SYNC_QUEUE, "type"),
        Some(json!("classic")),
        "classic on a single broker"
    );
    control_plane.terminate().await;

    // Quorum queues (what a cluster gets), with the same bounds; syncs are answered through
    // them (a quorum queue takes the requests' per-message expiration since 3.10).
    let vhost = TestVhost::create();
    let mut environment = embedded(&vhost, data.path());
    environment.insert("NEBULA_AMQP_QUEUE_TYPE", "quorum".into());
    let control_plane = ControlPlane::start(environment).await;
    for queue in [names::SYNC_QUEUE, names::REPORTS_QUEUE] {
        assert_eq!(
            queue_info(&vhost, queue, "type"),
            Some(json!("quorum")),
            "{queue}"
        );
    }
    let text = queue_arguments(&vhost, names::REPORTS_QUEUE)
        .expect("declared")
        .to_string();
    for expected in ["x-max-length", "drop-head", "x-message-ttl"] {
        assert!(text.contains(expected), "{expected} missing in {text}");
    }
    let connection = connect(&vhost.url).await;
    let reply = sync(&connection, SyncTarget::App(name("nowhere"))).await;
    assert!(matches!(reply.result, SyncResult::NotFound), "{reply:?}");
    control_plane.terminate().await;

    // A broker where an earlier version declared it without limits: start anyway.
    let vhost = TestVhost::create();
    let connection = connect(&vhost.url).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_declare(
            names::REPORTS_QUEUE.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .expect("declare unbounded");
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let (status, _) = call(
        &http(),
        Method::POST,
        &control_plane.url("/apps/after-reports"),
        Some(json!({"docker_image": "nginx"})),
    )
    .await;
    assert_eq!(status, 200, "{}", control_plane.logs());
    assert!(
        control_plane.logs().contains("exists with other arguments"),
        "{}",
        control_plane.logs()
    );
    // Left as it was: redeclaring it would need deleting it, and with it unread reports.
    let arguments = queue_arguments(&vhost, names::REPORTS_QUEUE).expect("still there");
    assert!(
        !arguments.to_string().contains("x-max-length"),
        "{arguments}"
    );
    control_plane.terminate().await;
}
