//! A device's own broker credential, against the real broker and the real binary (issue 16):
//! minted through the API, it lets the device do what an agent does for its scope and
//! nothing else — the broker refuses the rest — and the sync responder answers it only for
//! its scope; revoked, it cannot log in any more and its open connection is closed.

mod support;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ExchangeKind};
use nebula_control_plane::metrics::sample;
use nebula_protocol::{Message, Name, SyncReply, SyncResult, SyncTarget, encode, names};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{
    ControlPlane, DEADLINE, DeviceUser, Sent, TestVhost, call, embedded, get_text, http,
    management_url, name, try_connect, unique,
};

fn assert_refused<T>(what: &str, result: Result<T, lapin::Error>) {
    match result {
        Ok(_) => panic!("{what}: allowed, expected ACCESS_REFUSED"),
        Err(error) => assert!(
            format!("{error:?}").contains("ACCESS_REFUSED"),
            "{what}: expected ACCESS_REFUSED, got {error:?}"
        ),
    }
}

/// A `queue.bind` on a fresh channel, which the broker must refuse.
async fn bind_refused(connection: &Connection, what: &str, queue: &str, exchange: &str) {
    let channel = connection.create_channel().await.expect("channel");
    assert_refused(
        what,
        channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
}

/// Publishes on a fresh confirm-mode channel and waits for the confirm: an error when the
/// broker closes the channel instead.
async fn publish(
    connection: &Connection,
    exchange: &str,
    routing_key: &str,
    properties: BasicProperties,
    payload: &[u8],
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            properties,
        )
        .await?;
    confirm.await?;
    // A refused publish closes the channel asynchronously: one more round trip surfaces it.
    channel.basic_qos(1, Default::default()).await?;
    Ok(())
}

/// A sync request claiming `device`, sent as `sent`; the reply, or `None` when none came
/// within `wait`.
async fn device_sync(
    connection: &Connection,
    sent: Sent<'_>,
    device: &Name,
    target: SyncTarget,
    wait: Duration,
) -> Option<SyncReply> {
    support::sync_as(connection, sent, device, target, None, wait).await
}

/// Waits for the broker to close `connection` (after a revocation or a new mint).
async fn closes_within_a_minute(connection: &Connection, what: &str) {
    let since = Instant::now();
    while connection.status().connected() {
        assert!(
            since.elapsed() < Duration::from_secs(60),
            "the {what} device's connection is still open after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "{what} device's connection closed {:.2} s after the API answered",
        since.elapsed().as_secs_f64()
    );
}

async fn refused_syncs(address: &str) -> u64 {
    sample(
        &get_text(address, "/metrics").await.1,
        "nebula_sync_requests_refused_total",
    )
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_credential_allows_its_own_scope_only_and_dies_with_its_revocation() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let mut environment = embedded(&vhost, data.path());
    environment.insert("NEBULA_RABBITMQ_MANAGEMENT_URL", management_url());
    let control_plane = ControlPlane::start(environment).await;
    let client = http();
    let device = name(&unique("pi"));
    let _cleanup = DeviceUser(names::device_user(&device));
    let credentials = control_plane.url(&format!("/devices/{device}/credentials"));

    // Two groups with an app each: the device is entitled to "edge" only.
    for (app, group) in [("edge-app", "edge"), ("lab-app", "lab")] {
        let (status, body) = call(
            &client,
            Method::POST,
            &control_plane.url(&format!("/apps/{app}")),
            Some(json!({"docker_image": "registry.example/app:1", "running": true})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let (status, body) = call(
            &client,
            Method::POST,
            &control_plane.url(&format!("/device_groups/{group}")),
            Some(json!({"apps": [app]})),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // Bad bodies are refused with a reason, and mint nothing.
    for bad in [
        json!({}),
        json!({"device_group": "edge", "apps": ["edge-app"]}),
        json!({"apps": []}),
        json!({"device_group": "bad name"}),
        json!({"device_group": "edge", "password": "mine"}),
        json!({"device_group": "b.group.c"}),
        json!({"apps": ["web", "x.app"]}),
    ] {
        let (status, body) = call(&client, Method::POST, &credentials, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad} answered {body}");
    }

    let (status, minted) = call(
        &client,
        Method::POST,
        &credentials,
        Some(json!({"device_group": "edge"})),
    )
    .await;
    assert_eq!(status, 200, "{minted}");
    assert_eq!(minted["device_id"], device.as_str());
    let url = minted["amqp_url"].as_str().expect("amqp_url").to_string();
    assert!(
        url.starts_with(&format!("amqp://{}:", names::device_user(&device))),
        "{url}"
    );
    assert!(url.ends_with(&format!("/{}", vhost.name)), "{url}");
    let connection = try_connect(&url).await.expect("the device logs in");
    let victim = name(&unique("victim"));
    let admin = support::connect(&vhost.url).await;
    around_the_permissions(&control_plane, &connection, &admin, &device, &victim).await;

    // What an agent of the group does: its queue, bound to its group's exchange.
    let own_queue = names::group_queue(&device, &name("edge"));
    let agent = connection.create_channel().await.expect("channel");
    agent
        .queue_declare(
            own_queue.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare its own queue");
    agent
        .queue_bind(
            own_queue.as_str().into(),
            names::group_exchange(&name("edge")).as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind its queue to its group");
    // (What it publishes here is no report: the control plane rejects it, which is not what
    // this test is about.)
    let payload = b"not a report".as_slice();
    publish(
        &connection,
        names::REPORTS_EXCHANGE,
        &names::report_routing_key(&device),
        BasicProperties::default(),
        payload,
    )
    .await
    .expect("publish its own report");
    let (own_key, own_user) = (
        names::sync_routing_key(&device),
        names::device_user(&device),
    );
    let as_itself = Sent {
        exchange: names::SYNC_EXCHANGE,
        routing_key: &own_key,
        user_id: Some(&own_user),
    };
    let reply = device_sync(
        &connection,
        as_itself,
        &device,
        SyncTarget::DeviceGroup(name("edge")),
        DEADLINE,
    )
    .await
    .expect("its group's state");
    assert!(
        matches!(&reply.result, SyncResult::Group(state) if state.group.device_group == "edge"),
        "{reply:?}"
    );

    // Never a change of its own making: not on an app's, a group's or the default exchange.
    for (exchange, routing_key) in [
        (names::app_exchange(&name("edge-app")), String::new()),
        (names::group_exchange(&name("edge")), String::new()),
        (String::new(), own_queue.clone()),
        (String::new(), names::SYNC_QUEUE.to_string()),
    ] {
        assert_refused(
            &format!("publish to {exchange:?} with {routing_key:?}"),
            publish(
                &connection,
                &exchange,
                &routing_key,
                BasicProperties::default(),
                payload,
            )
            .await,
        );
    }
    // Nor as another device: its routing keys are its own.
    let other = name(&unique("other"));
    assert_refused(
        "a report as another device",
        publish(
            &connection,
            names::REPORTS_EXCHANGE,
            &names::report_routing_key(&other),
            BasicProperties::default(),
            payload,
        )
        .await,
    );
    assert_refused(
        "a sync request with another device's routing key",
        publish(
            &connection,
            names::SYNC_EXCHANGE,
            &names::sync_routing_key(&other),
            BasicProperties::default(),
            payload,
        )
        .await,
    );

    // Another device's queue: not declared, consumed or bound by this one.
    let admin_channel = admin.create_channel().await.expect("channel");
    let other_queue = names::group_queue(&other, &name("edge"));
    admin_channel
        .queue_declare(
            other_queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("admin declares another device's queue");
    let attempt = connection.create_channel().await.expect("channel");
    assert_refused(
        "declare another device's queue",
        attempt
            .queue_declare(
                names::group_queue(&other, &name("lab")).as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await,
    );
    let attempt = connection.create_channel().await.expect("channel");
    assert_refused(
        "consume another device's queue",
        attempt
            .basic_consume(
                other_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await,
    );
    bind_refused(
        &connection,
        "bind another device's queue",
        other_queue.as_str(),
        names::group_exchange(&name("edge")).as_str(),
    )
    .await;
    // Nor its own queue to another group's exchange (that group's changes).
    bind_refused(
        &connection,
        "bind its queue to another group",
        own_queue.as_str(),
        names::group_exchange(&name("lab")).as_str(),
    )
    .await;
    let attempt = connection.create_channel().await.expect("channel");
    assert_refused(
        "declare an exchange",
        attempt
            .exchange_declare(
                "nebula.app.mine".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await,
    );

    // Sync answers only within its scope: another group, an app, or a request claiming
    // another device are refused (no reply, counted), and so is a request for this device's
    // out-of-scope target whoever sends it (here the shared admin login, through the default
    // exchange and without a user_id, as agents of earlier releases do).
    let refused_before = refused_syncs(&control_plane.address).await;
    let shared_login = Sent::SHARED_LOGIN;
    let attempts = [
        (
            &connection,
            as_itself,
            device.clone(),
            SyncTarget::DeviceGroup(name("lab")),
        ),
        (
            &connection,
            as_itself,
            device.clone(),
            SyncTarget::App(name("lab-app")),
        ),
        (
            &connection,
            as_itself,
            other.clone(),
            SyncTarget::DeviceGroup(name("edge")),
        ),
        (
            &admin,
            shared_login,
            device.clone(),
            SyncTarget::DeviceGroup(name("lab")),
        ),
    ];
    let refusals = attempts.len() as u64;
    for (through, sent, claimed, target) in attempts {
        let reply = device_sync(
            through,
            sent,
            &claimed,
            target.clone(),
            Duration::from_secs(3),
        )
        .await;
        assert!(
            reply.is_none(),
            "{sent:?} {claimed} {target:?} answered: {reply:?}"
        );
    }
    assert_eq!(
        refused_syncs(&control_plane.address).await,
        refused_before + refusals
    );
    // A device without a credential of its own is answered as before.
    let unenrolled = device_sync(
        &admin,
        shared_login,
        &other,
        SyncTarget::DeviceGroup(name("lab")),
        DEADLINE,
    )
    .await;
    assert!(
        unenrolled.is_some(),
        "a device without a credential is answered"
    );

    // Minted again, for another scope: the old password stops working, the connection made
    // with it is closed, and what it made under the old scope is gone (bindings must not
    // outlive the scope they were made for).
    let (status, again) = call(
        &client,
        Method::POST,
        &credentials,
        Some(json!({"apps": ["edge-app"]})),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    closes_within_a_minute(&connection, "re-minted").await;
    assert!(
        try_connect(&url).await.is_err(),
        "the replaced password still works"
    );
    assert!(
        !exchange_exists(&admin, &own_queue).await,
        "the exchange it made under its old scope is still there: {}",
        control_plane.logs()
    );
    let url = again["amqp_url"].as_str().expect("amqp_url").to_string();
    let connection = try_connect(&url).await.expect("the new login works");
    let new_queue = names::app_queue(&device, &name("edge-app"));
    connection
        .create_channel()
        .await
        .expect("channel")
        .exchange_declare(
            new_queue.as_str().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("an exchange named like its new queue");

    // Revoked: the open connection is closed, and the device cannot log in again.
    let (status, body) = call(&client, Method::DELETE, &credentials, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({"device_id": device.as_str(), "had_credential": true})
    );
    closes_within_a_minute(&connection, "revoked").await;
    assert!(
        try_connect(&url).await.is_err(),
        "a revoked device logged in"
    );
    let (status, body) = call(&client, Method::DELETE, &credentials, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["had_credential"], false, "{body}");
    assert!(
        control_plane.log_count("device credential revoked") >= 1,
        "{}",
        control_plane.logs()
    );
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(login, _)| login.split_once(':'))
        .map(|(_, password)| password)
        .expect("a password in the URL");
    assert!(
        !control_plane.logs().contains(password),
        "the minted password reached the log"
    );
    // What it made on the broker went with it.
    assert!(
        !exchange_exists(&admin, &new_queue).await,
        "the exchange the revoked device made is still there: {}",
        control_plane.logs()
    );
}

async fn exchange_exists(admin: &Connection, exchange: &str) -> bool {
    let channel = admin.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                passive: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .is_ok()
}

/// Around the permissions (found by a review): RabbitMQ matches a permission against every
/// kind of resource by name, so a device may declare an exchange named like its own queue and
/// bind to it what it may write to, and it may dead-letter its own queue into the sync
/// exchange. None of it reaches another device's config or passes for another device's report.
async fn around_the_permissions(
    control_plane: &ControlPlane,
    connection: &Connection,
    admin: &Connection,
    device: &Name,
    victim: &Name,
) {
    let own_queue = names::group_queue(device, &name("edge"));
    let channel = connection.create_channel().await.expect("channel");
    channel
        .exchange_declare(
            own_queue.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("a device may declare an exchange named like its queue");
    bind_refused(
        connection,
        "bind the sync queue to its exchange",
        names::SYNC_QUEUE,
        &own_queue,
    )
    .await;
    // Allowed by the broker, refused by the control plane: the sync exchange and the
    // `nebula.reports` queue bound to its own exchange, and its own queue dead-lettering at
    // once into the sync exchange with another device's routing key.
    let bind = connection.create_channel().await.expect("channel");
    bind.exchange_bind(
        names::SYNC_EXCHANGE.into(),
        own_queue.as_str().into(),
        "sync.#".into(),
        lapin::options::ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind the sync exchange to its own");
    bind.queue_bind(
        names::REPORTS_QUEUE.into(),
        own_queue.as_str().into(),
        "report.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind the reports queue to its own exchange");
    let mut dead_letter = FieldTable::default();
    dead_letter.insert(
        "x-dead-letter-exchange".into(),
        lapin::types::AMQPValue::LongString(names::SYNC_EXCHANGE.into()),
    );
    dead_letter.insert(
        "x-dead-letter-routing-key".into(),
        lapin::types::AMQPValue::LongString(names::sync_routing_key(victim).as_str().into()),
    );
    dead_letter.insert("x-message-ttl".into(), lapin::types::AMQPValue::LongInt(0));
    bind.queue_declare(
        own_queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: true,
            ..QueueDeclareOptions::default()
        },
        dead_letter,
    )
    .await
    .expect("its own queue, dead-lettering into the sync exchange");
    bind.queue_bind(
        own_queue.as_str().into(),
        own_queue.as_str().into(),
        "dead".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind its queue to its exchange");

    assert!(exchange_exists(admin, &own_queue).await);
    let refused_before = refused_syncs(&control_plane.address).await;
    let reports_before = rejected_reports(&control_plane.address).await;
    let target = SyncTarget::DeviceGroup(name("lab"));
    for routing_key in [names::sync_routing_key(victim), "dead".to_string()] {
        let through_its_exchange = Sent {
            exchange: &own_queue,
            routing_key: &routing_key,
            user_id: None,
        };
        let reply = device_sync(
            connection,
            through_its_exchange,
            victim,
            target.clone(),
            Duration::from_secs(3),
        )
        .await;
        assert!(reply.is_none(), "answered through {routing_key}: {reply:?}");
    }
    publish(
        connection,
        &own_queue,
        &names::report_routing_key(victim),
        BasicProperties::default(),
        &encode(&Message::DeviceReport(report_of(victim))),
    )
    .await
    .expect("publish to its own exchange");
    let address = control_plane.address.clone();
    support::wait_until("the control plane refuses them", || {
        let address = address.clone();
        async move {
            (refused_syncs(&address).await >= refused_before + 2
                && rejected_reports(&address).await > reports_before)
                .then_some(())
        }
    })
    .await;
    let (status, _) = get_text(&control_plane.address, &format!("/api/v2/devices/{victim}")).await;
    assert_ne!(status, 200, "a forged report made {victim} a device");
    // Its queue as an agent declares it, for what follows.
    let cleanup = admin.create_channel().await.expect("channel");
    cleanup
        .queue_delete(own_queue.as_str().into(), Default::default())
        .await
        .expect("delete the dead-lettering queue");
}

async fn rejected_reports(address: &str) -> u64 {
    sample(
        &get_text(address, "/metrics").await.1,
        "nebula_reports_rejected_total",
    )
    .unwrap_or(0)
}

/// A decodable report of `device`.
fn report_of(device: &Name) -> nebula_protocol::DeviceReport {
    nebula_protocol::DeviceReport {
        device_id: device.clone(),
        hostname: "forged".into(),
        device_group: Some(name("lab")),
        device_group_id: None,
        prune_id: None,
        report_creation_time: 0,
        updated: true,
        agent_version: "forged".into(),
        apps: Vec::new(),
        resources: nebula_protocol::ResourceUsage {
            cpu_cores: 1,
            cpu_percent: 0.0,
            memory_total_bytes: 0,
            memory_used_bytes: 0,
            root_disk_total_bytes: 0,
            root_disk_used_bytes: 0,
        },
        target: String::new(),
        os: String::new(),
        kernel: String::new(),
        docker_version: None,
        uptime_secs: 0,
        agent_uptime_secs: 0,
        report_interval_secs: 60,
        mode: nebula_protocol::DeviceMode::Group(name("lab")),
        session: 1,
        sequence: 1,
        device_group_incarnation: None,
        stopping: false,
        cron_jobs: Vec::new(),
    }
}

/// Without `NEBULA_RABBITMQ_MANAGEMENT_URL` the endpoints say what is missing, and the
/// instance says at start that devices share a login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_management_api_minting_says_what_is_missing() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let url = control_plane.url("/devices/pi/credentials");
    let (status, body) = call(
        &http(),
        Method::POST,
        &url,
        Some(json!({"device_group": "edge"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|error| error.contains("NEBULA_RABBITMQ_MANAGEMENT_URL")),
        "{body}"
    );
    assert!(
        control_plane.logs().contains("device credentials are off"),
        "{}",
        control_plane.logs()
    );
}
