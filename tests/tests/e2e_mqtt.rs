//! The control plane's side of MQTT agents (issue 17), against RabbitMQ's MQTT plugin
//! (`scripts/services.sh`: 127.0.0.1:1883), with an MQTT 3.1.1 client standing in for the
//! agent: every change reaches the subscribers of its object's topic — once, through the
//! exchanges bound into `amq.topic`, not a second publish — also for names with dots (escaped
//! in topics); a sync request published on `nebula/sync` is answered on the requesting
//! device's reply topic, and on no other device's; a report published on the device's report
//! topic is the device's latest report. And the broker's MQTT TLS listener (8883) takes a
//! client with a certificate of the development CA and refuses one without.
//!
//! Then the agent itself over MQTT (`NEBULA_TRANSPORT=mqtt`) against the real broker and
//! Docker engine: create, update, stop, start, a member app added to its group, a change made
//! while the device was down (SIGKILL), the session cut by the broker, delete; and in app
//! mode, an app created after the agent started, deleted, and created again. Over
//! `mqtts://` (8883) with the fleet's CA and a client certificate it converges and follows a
//! change; without a client certificate the broker refuses it, and trusting only the system's
//! authorities it refuses the broker.

mod support;

use nebula_protocol::{
    DeviceMode, DeviceReport, Message, Name, ResourceUsage, SyncReply, SyncRequest, SyncResult,
    SyncTarget, decode, encode, names,
};
use nebula_tests::services::{test_image, tls_file};
use nebula_tests::system::{Agent, AgentMode};
use nebula_tests::{unique_name, wait_for};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;
use support::{Scenario, borrowed};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

/// How long a message that should arrive may take.
const DELIVERY: Duration = Duration::from_secs(10);
/// How long to watch for a message that must not arrive.
const QUIET: Duration = Duration::from_secs(2);

/// An MQTT session on the scenario's vhost: what it receives, as (topic, message).
struct MqttTap {
    client: AsyncClient,
    received: mpsc::UnboundedReceiver<(String, Message)>,
    subscribed: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl MqttTap {
    /// Connects as `client_id` (an agent's is its device id) and subscribes to `topics`.
    async fn subscribe(vhost: &str, client_id: &str, topics: &[String]) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", 1883);
        // RabbitMQ's MQTT plugin takes the vhost in the user name.
        options.set_credentials(format!("{vhost}:guest"), "guest");
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut event_loop) = AsyncClient::new(options, 16);
        let (received_sender, received) = mpsc::unbounded_channel();
        let (subscribed_sender, subscribed) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match event_loop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(publish))) => {
                        let message = decode(&publish.payload).expect("a Nebula message");
                        let _ = received_sender.send((publish.topic.clone(), message));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = subscribed_sender.send(());
                    }
                    Ok(_) => {}
                    Err(error) => panic!("MQTT session of the test ended: {error}"),
                }
            }
        });
        let mut tap = Self {
            client,
            received,
            subscribed,
            task,
        };
        for topic in topics {
            tap.client
                .subscribe(topic.as_str(), QoS::AtLeastOnce)
                .await
                .expect("subscribe");
            tokio::time::timeout(DELIVERY, tap.subscribed.recv())
                .await
                .expect("SUBACK in time")
                .expect("session up");
        }
        tap
    }

    async fn publish(&self, topic: &str, message: &Message) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, encode(message))
            .await
            .expect("publish");
    }

    /// The next message received, within [`DELIVERY`].
    async fn next(&mut self, what: &str) -> (String, Message) {
        tokio::time::timeout(DELIVERY, self.received.recv())
            .await
            .unwrap_or_else(|_| panic!("no {what} within {DELIVERY:?}"))
            .expect("session up")
    }

    /// Asserts nothing arrives for [`QUIET`].
    async fn nothing(&mut self, why: &str) {
        if let Ok(Some((topic, message))) = tokio::time::timeout(QUIET, self.received.recv()).await
        {
            panic!("{why}: got {} on {topic}", message.kind());
        }
    }
}

impl Drop for MqttTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn name(value: &str) -> Name {
    Name::new(value).expect("name")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_mqtt_subscribers_once_and_syncs_are_answered_on_the_device_topic() {
    let scenario = Scenario::new("mqtt-cp");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    // Dots in every name: one topic level each, escaped.
    let app = name(&scenario.app_name("mqtt.app"));
    let group = name(&unique_name("mqtt.group"));
    let device = name(&unique_name("pi.mqtt"));
    let vhost = scenario.vhost.name.as_str();
    let mut agent = MqttTap::subscribe(
        vhost,
        device.as_str(),
        &[
            names::app_topic(&app),
            names::group_topic(&group),
            names::reply_topic(&device),
        ],
    )
    .await;
    // Every device's reply topic: a reply is for the device that asked, on its topic alone.
    let mut replies = MqttTap::subscribe(
        vhost,
        &unique_name("reply-watcher"),
        &["nebula/device/+/reply".to_string()],
    )
    .await;

    // Create, then a group: each on its object's topic.
    rest.create_app(
        app.as_str(),
        json!({"docker_image": nebula_tests::services::test_image(1)}),
    )
    .await
    .expect("create app");
    let (topic, message) = agent.next("app created").await;
    assert_eq!(topic, names::app_topic(&app));
    let Message::AppChanged(created) = message else {
        panic!("not an app change: {}", message.kind());
    };
    assert_eq!(
        (created.app_name.as_str(), created.app_id),
        (app.as_str(), 1)
    );
    rest.create_group(group.as_str(), &[app.as_str()])
        .await
        .expect("create group");
    let (topic, message) = agent.next("group created").await;
    assert_eq!(topic, names::group_topic(&group));
    assert!(
        matches!(&message, Message::DeviceGroupChanged(state) if state.group.device_group == group),
        "{message:?}"
    );

    // An update of a member app: reaches amq.topic through the app's exchange and through
    // the group's; the subscriber gets it once.
    rest.update_app(
        app.as_str(),
        json!({"docker_image": nebula_tests::services::test_image(2)}),
    )
    .await
    .expect("update app");
    let (topic, message) = agent.next("app updated").await;
    assert_eq!(topic, names::app_topic(&app));
    assert!(
        matches!(&message, Message::AppChanged(config) if config.app_id == 2),
        "{message:?}"
    );
    agent.nothing("one change, one delivery").await;

    // A sync over MQTT: the answer on this device's reply topic, none on another's.
    let correlation_id = unique_name("sync");
    agent
        .publish(
            names::SYNC_TOPIC,
            &Message::SyncRequest(SyncRequest {
                device_id: device.clone(),
                target: SyncTarget::App(app.clone()),
                correlation_id: correlation_id.clone(),
                agent_version: "e2e_mqtt".into(),
                known_store: None,
            }),
        )
        .await;
    let (topic, message) = agent.next("sync reply").await;
    assert_eq!(topic, names::reply_topic(&device));
    let Message::SyncReply(SyncReply {
        correlation_id: answered,
        result: SyncResult::App(config),
        ..
    }) = message
    else {
        panic!("not an app sync reply: {message:?}");
    };
    assert_eq!((answered, config.app_id), (correlation_id, 2));
    let (topic, _) = replies.next("the reply, seen on the wildcard").await;
    assert_eq!(topic, names::reply_topic(&device));
    replies.nothing("one request, one reply").await;

    // A report on the device's report topic: the device's latest report.
    agent
        .publish(
            &names::report_topic(&device),
            &Message::DeviceReport(report(&device, &group)),
        )
        .await;
    let path = format!("/devices/{device}");
    let shown = wait_for("the MQTT report stored", DELIVERY, || {
        let rest = rest.clone();
        let path = path.clone();
        async move {
            let reply = rest.get(&path).await.ok()?;
            (reply.status == 200).then_some(reply.body)
        }
    })
    .await
    .expect("device shown");
    assert_eq!(shown["hostname"], "mqtt-test-host", "{shown}");

    // Delete: on the app's topic.
    rest.delete_app(app.as_str()).await.expect("delete app");
    let (topic, message) = agent.next("app deleted").await;
    assert_eq!(topic, names::app_topic(&app));
    assert!(
        matches!(&message, Message::AppDeleted { app_name, .. } if *app_name == app),
        "{message:?}"
    );
}

/// A report with no apps, as an agent of `group` would send it.
fn report(device: &Name, group: &Name) -> DeviceReport {
    DeviceReport {
        device_id: device.clone(),
        hostname: "mqtt-test-host".into(),
        device_group: Some(group.clone()),
        device_group_id: Some(1),
        prune_id: Some(1),
        report_creation_time: 1,
        updated: true,
        agent_version: "e2e_mqtt".into(),
        apps: Vec::new(),
        resources: ResourceUsage {
            cpu_cores: 2,
            cpu_percent: 0.5,
            memory_total_bytes: 1 << 30,
            memory_used_bytes: 1 << 28,
            root_disk_total_bytes: 1 << 34,
            root_disk_used_bytes: 1 << 32,
        },
        target: "x86_64-unknown-linux-musl".into(),
        os: "Debian".into(),
        kernel: "Linux 6.1".into(),
        docker_version: None,
        uptime_secs: 10,
        agent_uptime_secs: 5,
        report_interval_secs: 60,
        mode: DeviceMode::Group(group.clone()),
        session: 1,
        sequence: 1,
        device_group_incarnation: None,
        stopping: false,
        cron_jobs: Vec::new(),
    }
}

/// MQTT's CONNECT for `client_id` as `user` (password guest; MQTT 3.1.1, clean session).
fn connect_packet(client_id: &str, user: &str) -> Vec<u8> {
    let field = |bytes: &[u8]| {
        let mut out = u16::try_from(bytes.len())
            .expect("short")
            .to_be_bytes()
            .to_vec();
        out.extend_from_slice(bytes);
        out
    };
    let mut body = field(b"MQTT");
    // Level 4 (3.1.1); flags: user name, password, clean session; keep-alive 30 s.
    body.extend_from_slice(&[4, 0xC2, 0, 30]);
    for part in [client_id.as_bytes(), user.as_bytes(), b"guest"] {
        body.extend(field(part));
    }
    let mut packet = vec![0x10, u8::try_from(body.len()).expect("short packet")];
    packet.extend(body);
    packet
}

/// What the broker's MQTT TLS listener answers a CONNECT over TLS with `client`'s
/// certificate (or none): the CONNACK's bytes, or why there was none.
async fn mqtts_connect(client: Option<(&str, &str)>) -> Result<Vec<u8>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(tls_file("ca.pem")).expect("CA file") {
        roots.add(certificate.expect("CA")).expect("CA added");
    }
    // The provider named: the tests link more than one rustls backend.
    let builder = ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(tls_file(cert))
                    .expect("certificate file")
                    .collect::<Result<Vec<_>, _>>()
                    .expect("certificate"),
                PrivateKeyDer::from_pem_file(tls_file(key)).expect("key"),
            )
            .expect("client certificate"),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect("127.0.0.1:8883")
        .await
        .map_err(|error| format!("connect: {error}"))?;
    let exchange = async {
        let mut stream = TlsConnector::from(Arc::new(config))
            .connect(ServerName::try_from("localhost").expect("name"), tcp)
            .await
            .map_err(|error| format!("handshake: {error}"))?;
        stream
            .write_all(&connect_packet(&unique_name("mqtts-check"), "guest"))
            .await
            .map_err(|error| format!("write: {error}"))?;
        let mut connack = [0u8; 4];
        stream
            .read_exact(&mut connack)
            .await
            .map_err(|error| format!("read: {error}"))?;
        Ok(connack.to_vec())
    };
    tokio::time::timeout(DELIVERY, exchange)
        .await
        .map_err(|_| "no answer".to_string())?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mqtt_tls_listener_takes_clients_of_the_fleet_ca_only() {
    // CONNACK, length 2, no session present, return code 0 (accepted).
    assert_eq!(
        mqtts_connect(Some(("client.pem", "client.key"))).await,
        Ok(vec![0x20, 2, 0, 0])
    );
    // Without a certificate the broker ends the handshake (TLS 1.3: seen at the first read).
    let refused = mqtts_connect(None).await;
    assert!(
        refused.is_err(),
        "accepted without a client certificate: {refused:?}"
    );
}

/// `NEBULA_MQTT_URL` of the scenario's vhost.
fn mqtt_url(vhost: &str) -> String {
    format!("mqtt://guest:guest@127.0.0.1:1883/{vhost}")
}

/// Cuts the MQTT session of `client_id` as a broker restart would: a client connecting with
/// the same client id takes the session over (MQTT 3.1.1, 3.1.4), and the broker closes the
/// old connection; then the newcomer leaves.
async fn take_session_over(vhost: &str, client_id: &str) {
    let mut stream = tokio::net::TcpStream::connect("127.0.0.1:1883")
        .await
        .expect("MQTT listener");
    stream
        .write_all(&connect_packet(client_id, &format!("{vhost}:guest")))
        .await
        .expect("CONNECT");
    let mut connack = [0u8; 4];
    tokio::time::timeout(DELIVERY, stream.read_exact(&mut connack))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "takeover accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_mqtt_follows_its_group_through_every_kind_of_change() {
    let scenario = Scenario::new("mqtt-agent");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("mqtt.web");
    let second = scenario.app_name("mqtt.second");
    let group = unique_name("mqtt.fleet");
    let device = unique_name("pi.mqtt-agent");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");

    let start = Instant::now();
    let url = mqtt_url(&scenario.vhost.name);
    let agent = Agent::start_with(
        &device,
        &AgentMode::Group(group.clone()),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &[("NEBULA_TRANSPORT", "mqtt"), ("NEBULA_MQTT_URL", &url)],
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    scenario.report("mqtt: create", start);

    let start = Instant::now();
    rest.update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    scenario.converged(&app, 1, 2).await;
    scenario.report("mqtt: update", start);

    let start = Instant::now();
    rest.app_action(&app, "stop").await.expect("stop");
    scenario.converged(&app, 0, 3).await;
    scenario.report("mqtt: stop", start);
    let start = Instant::now();
    rest.app_action(&app, "start").await.expect("start");
    scenario.converged(&app, 1, 4).await;
    scenario.report("mqtt: start", start);

    // A member added: its topic is followed from then on.
    let start = Instant::now();
    rest.create_app(&second, json!({"docker_image": test_image(1)}))
        .await
        .expect("create second");
    rest.update_group(&group, &[&app, &second])
        .await
        .expect("add member");
    scenario.converged(&second, 1, 1).await;
    rest.update_app(&second, json!({"env_vars": {"STEP": "after-join"}}))
        .await
        .expect("update second");
    scenario.converged(&second, 1, 2).await;
    scenario.report("mqtt: member added, then changed", start);

    // The device loses power; the app changes meanwhile; it comes back and catches up.
    agent.process.kill_and_stay_down().await;
    rest.update_app(&app, json!({"env_vars": {"STEP": "while-down"}}))
        .await
        .expect("update while down");
    let start = Instant::now();
    agent.process.restart_with(&[]).await;
    scenario.converged(&app, 1, 5).await;
    scenario.report("mqtt: changed while the device was down", start);

    // The broker cuts the session (as a restart would): the agent reconnects, syncs, and
    // follows changes again, in-process.
    let start = Instant::now();
    take_session_over(&scenario.vhost.name, &device).await;
    wait_for("the agent noticing the cut", DELIVERY, || {
        let noticed = agent.process.log().contains("lost the MQTT session");
        async move { noticed.then_some(()) }
    })
    .await
    .expect("cut noticed");
    rest.update_app(&app, json!({"env_vars": {"STEP": "after-cut"}}))
        .await
        .expect("update after cut");
    scenario.converged(&app, 1, 6).await;
    scenario.report("mqtt: session cut, then a change", start);

    // Deleted: its containers go.
    let start = Instant::now();
    rest.update_group(&group, &[&second])
        .await
        .expect("drop member");
    rest.delete_app(&app).await.expect("delete");
    scenario.converged(&app, 0, 0).await;
    scenario.report("mqtt: app left the group and was deleted", start);
    let log = agent.process.log();
    assert!(log.contains("connected to the MQTT broker"), "{log}");
    assert!(
        log.matches("lost the MQTT session").count() >= 1,
        "the cut session was noticed: {log}"
    );
    assert_eq!(agent.process.exits(), 0, "no exit but the SIGKILL: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_mode_agent_over_mqtt_waits_for_its_app_and_follows_it_through_delete() {
    let scenario = Scenario::new("mqtt-app-mode");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("mqtt.single");
    let device = unique_name("pi.mqtt-app-mode");
    let url = mqtt_url(&scenario.vhost.name);
    // Started before its app exists: it subscribes to the app's topic all the same.
    let agent = Agent::start_with(
        &device,
        &AgentMode::Apps(vec![app.clone()]),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &[("NEBULA_TRANSPORT", "mqtt"), ("NEBULA_MQTT_URL", &url)],
    )
    .await;
    wait_for("the agent synced", DELIVERY, || {
        let synced = agent.process.log().contains("synced; following changes");
        async move { synced.then_some(()) }
    })
    .await
    .expect("synced");
    let start = Instant::now();
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    scenario.converged(&app, 1, 1).await;
    scenario.report("mqtt app mode: created after the agent started", start);

    // Deleted while it is the agent's own app: its containers go.
    let start = Instant::now();
    rest.delete_app(&app).await.expect("delete");
    scenario.converged(&app, 0, 0).await;
    scenario.report("mqtt app mode: delete", start);
    // Created again (a new incarnation): it runs again.
    let start = Instant::now();
    rest.create_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("create again");
    scenario.converged(&app, 1, 1).await;
    scenario.report("mqtt app mode: created again", start);
    assert_eq!(agent.process.exits(), 0, "{}", agent.process.log());
}

/// The TLS variables of an agent over `mqtts://` on the development CA's listener; the
/// client certificate only when `client` is set.
fn mqtts_env(vhost: &str, client: bool) -> Vec<(&'static str, String)> {
    let mut env = mqtts_trusting_the_system(vhost, false);
    env.push(("NEBULA_MQTT_CA_FILE", tls_file("ca.pem")));
    if client {
        env.push(("NEBULA_MQTT_CERT_FILE", tls_file("client.pem")));
        env.push(("NEBULA_MQTT_KEY_FILE", tls_file("client.key")));
    }
    env
}

/// `mqtts://` without a CA file (the system's authorities, which do not include the
/// development CA), with the client certificate when `client` is set.
fn mqtts_trusting_the_system(vhost: &str, client: bool) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("NEBULA_TRANSPORT", "mqtt".to_string()),
        (
            "NEBULA_MQTT_URL",
            format!("mqtts://guest:guest@127.0.0.1:8883/{vhost}"),
        ),
    ];
    if client {
        env.push(("NEBULA_MQTT_CERT_FILE", tls_file("client.pem")));
        env.push(("NEBULA_MQTT_KEY_FILE", tls_file("client.key")));
    }
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_over_mqtts_converges_with_a_client_certificate() {
    let scenario = Scenario::new("mqtts-agent");
    let control_plane = scenario.control_plane("cp").await;
    let rest = control_plane.rest();
    let app = scenario.app_name("mqtts.web");
    let group = unique_name("mqtts.fleet");
    rest.create_app(&app, json!({"docker_image": test_image(1)}))
        .await
        .expect("create");
    rest.create_group(&group, &[&app]).await.expect("group");

    let start = Instant::now();
    let env = mqtts_env(&scenario.vhost.name, true);
    let agent = Agent::start_with(
        &unique_name("pi.mqtts"),
        &AgentMode::Group(group),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &borrowed(&env),
    )
    .await;
    scenario.converged(&app, 1, 1).await;
    scenario.report("mqtts: create", start);
    let start = Instant::now();
    rest.update_app(&app, json!({"docker_image": test_image(2)}))
        .await
        .expect("update");
    scenario.converged(&app, 1, 2).await;
    scenario.report("mqtts: update", start);
    let log = agent.process.log();
    assert!(
        log.contains("mqtts://") && log.contains("client certificate"),
        "the agent says where it connects and what it presents: {log}"
    );
    assert_eq!(agent.process.exits(), 0, "{log}");
}

/// Starts an MQTT agent with `env` and waits until its log shows `needle`, having never
/// synced.
async fn refused_over_mqtts(scenario: &Scenario, env: &[(&'static str, String)], needle: &str) {
    let agent = Agent::start_with(
        &unique_name("pi.mqtts-refused"),
        &AgentMode::Group(unique_name("group")),
        &scenario.vhost.amqp_url(),
        &scenario.directory,
        &borrowed(env),
    )
    .await;
    let log = wait_for(needle, DELIVERY * 3, || {
        let log = agent.process.log();
        async move { log.contains(needle).then_some(log) }
    })
    .await
    .unwrap_or_else(|error| panic!("{error}: {}", agent.process.log()));
    assert!(
        log.contains("MQTT broker unreachable") && !log.contains("synced; following changes"),
        "{log}"
    );
    agent.process.stop(Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_an_mqtts_agent_without_a_client_certificate() {
    let scenario = Scenario::new("mqtts-refused");
    let env = mqtts_env(&scenario.vhost.name, false);
    // rustls reports the broker's alert: the handshake needed a certificate.
    refused_over_mqtts(&scenario, &env, "CertificateRequired").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtts_agent_refuses_a_broker_its_trust_store_does_not_vouch_for() {
    let scenario = Scenario::new("mqtts-unknown-ca");
    // The client certificate is there, so the refusal is the agent's own.
    let env = mqtts_trusting_the_system(&scenario.vhost.name, true);
    refused_over_mqtts(&scenario, &env, "UnknownIssuer").await;
}
