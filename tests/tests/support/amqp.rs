//! Broker-side tools for the scenarios: a tap on device reports, queue depths, raw publishes
//! into an agent's queue, and playing a (stale) control plane for a sync request.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use nebula_protocol::{DeviceReport, Message, decode, names};
use std::time::Duration;

pub async fn connect(url: &str) -> (Connection, Channel) {
    let connection = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect to broker");
    let channel = connection.create_channel().await.expect("channel");
    (connection, channel)
}

/// Messages in `queue` (ready and unacknowledged) of `vhost`, or `None` when there is no
/// such queue. Asked of `rabbitmqctl`, because agent queues are exclusive: a passive declare
/// from the test's connection is refused (405 RESOURCE_LOCKED).
pub fn queue_messages(vhost: &nebula_tests::vhost::Vhost, queue: &str) -> Option<u32> {
    let output = std::process::Command::new("rabbitmqctl")
        .args([
            "--silent",
            "list_queues",
            "-p",
            &vhost.name,
            "name",
            "messages",
        ])
        .output()
        .ok()?;
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .find_map(|line| {
            let mut columns = line.split_whitespace();
            (columns.next() == Some(queue)).then(|| columns.next()?.parse().ok())?
        })
}

/// Messages ready in `queue` (declared passively: the queue must exist and not be exclusive
/// to another connection).
pub async fn queue_depth(channel: &Channel, queue: &str) -> Option<u32> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .ok()
        .map(|queue| queue.message_count())
}

/// Publishes raw bytes straight into a queue through the default exchange.
pub async fn publish_raw(channel: &Channel, queue: &str, bytes: &[u8]) {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            bytes,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

/// A private queue receiving every report of `device`.
pub struct ReportTap {
    consumer: lapin::Consumer,
    _connection: Connection,
}

impl ReportTap {
    pub async fn new(url: &str, device: &str) -> Self {
        let (connection, channel) = connect(url).await;
        // The agent or the control plane may not have declared the exchange yet.
        channel
            .exchange_declare(
                names::REPORTS_EXCHANGE.into(),
                lapin::ExchangeKind::Topic,
                lapin::options::ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare reports exchange");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare tap queue");
        let device = nebula_protocol::Name::new(device).expect("device name");
        channel
            .queue_bind(
                queue.name().as_str().into(),
                names::REPORTS_EXCHANGE.into(),
                names::report_routing_key(&device).as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap");
        let consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume tap");
        Self {
            consumer,
            _connection: connection,
        }
    }

    /// The next report for which `accept` holds.
    pub async fn wait(
        &mut self,
        deadline: Duration,
        accept: impl Fn(&DeviceReport) -> bool,
    ) -> DeviceReport {
        let result = tokio::time::timeout(deadline, async {
            while let Some(Ok(delivery)) = self.consumer.next().await {
                if let Ok(Message::DeviceReport(report)) = decode(&delivery.data)
                    && accept(&report)
                {
                    return Some(report);
                }
            }
            None
        })
        .await;
        result
            .ok()
            .flatten()
            .expect("a matching device report before the deadline")
    }
}

/// Every app in the report applied at its desired revision, and `app` at `revision`.
pub fn applied(report: &DeviceReport, app: &str, revision: u64) -> bool {
    report.updated
        && report
            .apps
            .iter()
            .any(|entry| entry.app_name == app && entry.applied_revision == Some(revision))
}

/// A sync request the test took off `nebula.sync` in place of a control plane.
pub struct HeldSync {
    pub request: nebula_protocol::SyncRequest,
    reply_to: String,
    correlation_id: String,
}

/// Takes the next sync request off `nebula.sync`, acknowledges it (so no control plane sees
/// it) and stops consuming.
pub async fn hold_next_sync_request(channel: &Channel) -> HeldSync {
    let mut consumer = channel
        .basic_consume(
            names::SYNC_QUEUE.into(),
            "held-sync".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume nebula.sync");
    let delivery = tokio::time::timeout(Duration::from_secs(60), consumer.next())
        .await
        .expect("a sync request within 60 s")
        .expect("consumer open")
        .expect("delivery");
    delivery.ack(BasicAckOptions::default()).await.expect("ack");
    channel
        .basic_cancel(
            "held-sync".into(),
            lapin::options::BasicCancelOptions::default(),
        )
        .await
        .expect("cancel");
    let Ok(Message::SyncRequest(request)) = decode(&delivery.data) else {
        panic!("not a sync request: {:?}", decode(&delivery.data));
    };
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .expect("reply_to")
        .to_string();
    let correlation_id = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map_or_else(|| request.correlation_id.clone(), ToString::to_string);
    HeldSync {
        request,
        reply_to,
        correlation_id,
    }
}

impl HeldSync {
    /// Answers the held request with `result`, as a control plane would.
    pub async fn reply(
        self,
        channel: &Channel,
        result: nebula_protocol::SyncResult,
        store_id: nebula_protocol::StoreId,
    ) {
        let message = Message::SyncReply(nebula_protocol::SyncReply {
            correlation_id: self.correlation_id.clone(),
            result,
            store_id,
        });
        channel
            .basic_publish(
                "".into(),
                self.reply_to.as_str().into(),
                BasicPublishOptions::default(),
                &nebula_protocol::encode(&message),
                BasicProperties::default().with_correlation_id(self.correlation_id.as_str().into()),
            )
            .await
            .expect("publish reply");
    }
}

/// Every `AppChanged` published on some apps' exchanges, recorded from before the first
/// write: what the broker confirmed (a control plane answers 2xx only after the confirm), so
/// a scenario can compare each acknowledged write with what went out.
pub struct ChangeTap {
    seen: std::sync::Arc<std::sync::Mutex<Vec<nebula_protocol::AppConfig>>>,
    _connection: Connection,
}

impl ChangeTap {
    pub async fn new(url: &str, apps: &[String]) -> Self {
        let (connection, channel) = connect(url).await;
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("declare tap queue");
        for app in apps {
            let exchange =
                names::app_exchange(&nebula_protocol::Name::new(app.as_str()).expect("name"));
            channel
                .exchange_declare(
                    exchange.as_str().into(),
                    lapin::ExchangeKind::Fanout,
                    lapin::options::ExchangeDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("declare app exchange");
            channel
                .queue_bind(
                    queue.name().as_str().into(),
                    exchange.as_str().into(),
                    "".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("bind tap");
        }
        let mut consumer = channel
            .basic_consume(
                queue.name().as_str().into(),
                "change-tap".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume tap");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = std::sync::Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Ok(Message::AppChanged(config)) = decode(&delivery.data) {
                    sink.lock().expect("tap lock").push(config);
                }
            }
        });
        Self {
            seen,
            _connection: connection,
        }
    }

    /// The configs of `app` published so far, in order.
    pub fn published(&self, app: &str) -> Vec<nebula_protocol::AppConfig> {
        self.seen
            .lock()
            .expect("tap lock")
            .iter()
            .filter(|config| config.app_name == app)
            .cloned()
            .collect()
    }
}
