//! The control plane's side of MQTT agents (issue 17), against RabbitMQ's MQTT plugin
//! (`scripts/services.sh`: 127.0.0.1:1883), with an MQTT 3.1.1 client standing in for the
//! agent: every change reaches the subscribers of its object's topic — once, through the
//! exchanges bound into `amq.topic`, not a second publish — also for names with dots (escaped
//! in topics); a sync request published on `nebula/sync` is answered on the requesting
//! device's reply topic, and on no other device's.

mod support;

use nebula_protocol::{
    Message, Name, SyncReply, SyncRequest, SyncResult, SyncTarget, decode, encode, names,
};
use nebula_tests::unique_name;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::json;
use std::time::Duration;
use support::Scenario;
use tokio::sync::mpsc;

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
    let other_device = name(&unique_name("pi.mqtt-other"));
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
    let mut other = MqttTap::subscribe(
        vhost,
        other_device.as_str(),
        &[names::reply_topic(&other_device)],
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
    other.nothing("another device's sync reply").await;

    // Delete: on the app's topic.
    rest.delete_app(app.as_str()).await.expect("delete app");
    let (topic, message) = agent.next("app deleted").await;
    assert_eq!(topic, names::app_topic(&app));
    assert!(
        matches!(&message, Message::AppDeleted { app_name, .. } if *app_name == app),
        "{message:?}"
    );
}
