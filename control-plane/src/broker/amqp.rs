//! The lapin implementation of [`Publisher`] over one connection, which every broker task
//! of that connection shares ([`super::link`] replaces it when it fails).
//!
//! One connection at a time per instance, and a pool of channels in confirm mode: each operation
//! borrows a channel of its own, so concurrent requests publish in parallel, and a channel
//! error — RabbitMQ closes the channel on a 404, when another instance has just deleted the
//! exchange — ends only that one operation, as that object's race ([`AmqpError::NotFound`]),
//! never the other requests in flight. Each publish waits for its own confirm, at most the
//! configured time, so a 2xx is only sent for a change the broker has taken; a missing
//! confirm is an error that ends the connection. [`AmqpBroker::watch`] reports the
//! connection's own failure; the link then drops it and connects again, to another node of
//! the cluster when there are several.
//!
//! Change messages are transient (DESIGN §3): the store is the truth, every agent syncs on
//! every connect, so broker durability buys nothing but fsyncs.

use super::Publisher;
use super::exposed::Exposed;
use crate::error::AmqpError;
use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use nebula_protocol::{Incarnation, Message, encode, names};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// AMQP delivery mode of messages that do not survive a broker restart.
pub const TRANSIENT: u8 = 1;
/// Idle channels kept for reuse; more are opened when more operations run at once.
const MAX_IDLE_CHANNELS: usize = 64;
/// How long one connection attempt (TCP, AMQP handshake) may take: a paused or partitioned
/// node must not hold the instance off the other nodes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a stopping instance waits for the broker to confirm its connection close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the reports queue (see `declare_reports_queue`): ten minutes of a
/// 10,000-device fleet's minutely reports, about 50 MB of broker memory.
const REPORTS_MAX_LENGTH: i64 = 100_000;
const REPORTS_TTL_MS: i64 = 3_600_000;

/// Maps a lapin error of one operation to [`AmqpError::Operation`].
pub(crate) fn operation(operation: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |error| AmqpError::Operation {
        operation,
        reason: error.to_string(),
    }
}

/// AMQP reply code of a missing exchange or queue.
const NOT_FOUND: u16 = 404;
/// AMQP reply code of a declaration whose arguments differ from the existing object's.
const PRECONDITION_FAILED: u16 = 406;

/// The kind of the control plane's own durable queues (`nebula.sync`, `nebula.reports`):
/// classic on a single broker, quorum (replicated over a majority of the nodes) on a cluster
/// (`NEBULA_AMQP_QUEUE_TYPE`). The agents' queues are exclusive, hence always classic, on
/// the node each agent is connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    /// The declaration arguments that ask for this kind.
    fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if self == Self::Quorum {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        arguments
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// Maps a lapin error of one operation: 404 is [`AmqpError::NotFound`], anything else a
/// failed operation.
fn classify(operation: &'static str, target: &str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |error| {
        if reply_code(&error) == Some(NOT_FOUND) {
            AmqpError::NotFound {
                operation,
                target: target.to_string(),
            }
        } else {
            AmqpError::Operation {
                operation,
                reason: error.to_string(),
            }
        }
    }
}

/// The AMQP reply code a broker answered an operation with, if that is what failed it.
fn reply_code(error: &lapin::Error) -> Option<u16> {
    match error.kind() {
        lapin::ErrorKind::ProtocolError(amqp) => Some(amqp.get_id()),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct AmqpBroker {
    connection: std::sync::Arc<Connection>,
    /// Used for the fixed topology at start.
    channel: Channel,
    idle: std::sync::Arc<std::sync::Mutex<Vec<Channel>>>,
    publish_timeout: Duration,
    /// The object exchanges this connection has bound into amq.topic (see
    /// [`Publisher::expose_to_mqtt`]); a new connection starts empty.
    exposed: std::sync::Arc<Exposed>,
    /// Signs what this connection publishes (`crate::signing`); `None`: unsigned.
    signer: Option<std::sync::Arc<crate::signing::Signer>>,
}

impl AmqpBroker {
    /// Signs every change this connection publishes, and the sync replies of its responder.
    #[must_use]
    pub fn signing_with(mut self, signer: Option<std::sync::Arc<crate::signing::Signer>>) -> Self {
        self.signer = signer;
        self
    }

    pub fn signer(&self) -> Option<&crate::signing::Signer> {
        self.signer.as_deref()
    }

    pub fn signer_arc(&self) -> Option<std::sync::Arc<crate::signing::Signer>> {
        self.signer.clone()
    }

    /// Connects to `url` once (at most [`CONNECT_TIMEOUT`]), opens the confirm channel and
    /// declares the fixed topology: the sync queue and the reports exchange/queue, of
    /// `queue_type`. Retrying, and choosing among a cluster's nodes, is the link's job.
    pub async fn connect(
        url: &str,
        publish_timeout: Duration,
        queue_type: QueueType,
    ) -> Result<Self, AmqpError> {
        let properties =
            ConnectionProperties::default().with_connection_name("nebula-control-plane".into());
        let connection =
            match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await
            {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(AmqpError::Connect(error.to_string())),
                Err(_) => {
                    return Err(AmqpError::Connect(format!(
                        "no answer within {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )));
                }
            };
        let channel = connection
            .create_channel()
            .await
            .map_err(operation("channel.open"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(operation("confirm.select"))?;
        let broker = Self {
            connection: std::sync::Arc::new(connection),
            channel,
            idle: std::sync::Arc::default(),
            publish_timeout,
            exposed: std::sync::Arc::default(),
            signer: None,
        };
        // A broker that takes the connection but not the declarations (a node pausing) must
        // not hold the link either.
        let declared =
            tokio::time::timeout(CONNECT_TIMEOUT, broker.declare_fixed_topology(queue_type)).await;
        match declared {
            Ok(Ok(())) => Ok(broker),
            Ok(Err(error)) => {
                broker.abandon().await;
                Err(error)
            }
            Err(_) => {
                broker.abandon().await;
                Err(AmqpError::Connect(format!(
                    "the fixed topology was not declared within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        }
    }

    async fn declare_fixed_topology(&self, queue_type: QueueType) -> Result<(), AmqpError> {
        self.declare_own_queue(names::SYNC_QUEUE, queue_type.arguments())
            .await?;
        // Agents logged in with their own device credential publish sync requests here,
        // each with its own device id as routing key (others through the default exchange).
        self.declare_durable_topic(names::SYNC_EXCHANGE).await?;
        self.bind_queue(
            names::SYNC_QUEUE,
            names::SYNC_EXCHANGE,
            names::SYNC_BINDING_KEY,
        )
        .await?;
        self.declare_durable_topic(names::REPORTS_EXCHANGE).await?;
        self.declare_reports_queue(queue_type).await?;
        self.bind_queue(
            names::REPORTS_QUEUE,
            names::REPORTS_EXCHANGE,
            names::REPORTS_BINDING_KEY,
        )
        .await?;
        // MQTT agents (RabbitMQ's MQTT plugin publishes on amq.topic): their sync requests
        // reach the same queue, their reports the same exchange.
        self.bind_queue(
            names::SYNC_QUEUE,
            names::MQTT_EXCHANGE,
            &names::mqtt_routing_key(names::SYNC_TOPIC),
        )
        .await?;
        self.channel
            .exchange_bind(
                names::REPORTS_EXCHANGE.into(),
                names::MQTT_EXCHANGE.into(),
                names::REPORTS_BINDING_KEY.into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("exchange.bind"))?;
        Ok(())
    }

    async fn declare_durable_topic(&self, exchange: &str) -> Result<(), AmqpError> {
        self.channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(operation("exchange.declare"))
    }

    async fn bind_queue(&self, queue: &str, exchange: &str, key: &str) -> Result<(), AmqpError> {
        self.channel
            .queue_bind(
                queue.into(),
                exchange.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("queue.bind"))
    }

    /// The reports queue, bounded: every instance consumes it (`reports`), but with every
    /// control plane down (or ingesting slower than the fleet reports), ten thousand devices
    /// reporting every minute would otherwise fill the broker until its memory alarm blocks
    /// every publisher, changes included. The newest reports are kept; an hour-old report
    /// is worthless anyway.
    ///
    /// Quorum queues (on a cluster) take the same bounds, since RabbitMQ 3.10.
    async fn declare_reports_queue(&self, queue_type: QueueType) -> Result<(), AmqpError> {
        let mut arguments = queue_type.arguments();
        arguments.insert(
            "x-max-length".into(),
            AMQPValue::LongLongInt(REPORTS_MAX_LENGTH),
        );
        arguments.insert(
            "x-overflow".into(),
            AMQPValue::LongString("drop-head".into()),
        );
        arguments.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(REPORTS_TTL_MS),
        );
        self.declare_own_queue(names::REPORTS_QUEUE, arguments)
            .await
    }

    /// Declares one of the control plane's durable queues with `arguments`. A queue declared
    /// earlier with other arguments (unbounded, or classic where quorum is asked for) makes
    /// the broker refuse the declaration and close the channel: then the existing queue is
    /// used as it is, with a warning, rather than refusing to start.
    async fn declare_own_queue(
        &self,
        queue: &'static str,
        arguments: FieldTable,
    ) -> Result<(), AmqpError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        // Its own channel: a refused declaration closes the channel it was made on.
        let channel = self.create_channel().await?;
        let Err(error) = channel
            .queue_declare(queue.into(), durable, arguments)
            .await
        else {
            let _ = channel.close(200, "OK".into()).await;
            return Ok(());
        };
        if reply_code(&error) != Some(PRECONDITION_FAILED) {
            return Err(operation("queue.declare")(error));
        }
        tracing::warn!(error = %error, queue, "the queue exists with other arguments; using it as it is (delete it to let it be re-created as configured)");
        let channel = self.create_channel().await?;
        channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..durable
                },
                FieldTable::default(),
            )
            .await
            .map_err(operation("queue.declare (passive)"))?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// Drops a connection that is not going to be used (set-up failed half-way).
    async fn abandon(&self) {
        let _ = tokio::time::timeout(
            CLOSE_TIMEOUT,
            self.connection.close(200, "set-up failed".into()),
        )
        .await;
    }

    /// A new channel on the shared connection (the sync responder uses its own).
    pub async fn create_channel(&self) -> Result<Channel, AmqpError> {
        self.connection
            .create_channel()
            .await
            .map_err(operation("channel.open"))
    }

    /// Runs one broker operation of a write within the publish timeout: a broker that
    /// stops answering (an alarm, a partition the heartbeat has not noticed yet) fails the
    /// write and the instance instead of holding the request forever.
    async fn limited<T>(
        &self,
        operation: &'static str,
        work: impl std::future::Future<Output = Result<T, AmqpError>>,
    ) -> Result<T, AmqpError> {
        tokio::time::timeout(self.publish_timeout, work)
            .await
            .unwrap_or_else(|_| {
                Err(AmqpError::Operation {
                    operation,
                    reason: format!(
                        "no answer within {} s (a broker alarm or a partition?)",
                        self.publish_timeout.as_secs_f64()
                    ),
                })
            })
    }

    /// A confirm-mode channel for one operation: an idle one, or a new one.
    async fn borrow(&self) -> Result<Channel, AmqpError> {
        loop {
            let idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .pop();
            match idle {
                Some(channel) if channel.status().connected() => return Ok(channel),
                Some(_) => continue,
                None => break,
            }
        }
        self.limited("channel.open", async {
            let channel = self.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(operation("confirm.select"))?;
            Ok(channel)
        })
        .await
    }

    /// One exchange operation on a borrowed channel, time-limited, its error classified
    /// (404 as the object's race); the channel goes back to the pool afterwards.
    async fn on_channel<F>(
        &self,
        operation: &'static str,
        target: &str,
        run: impl FnOnce(Channel) -> F,
    ) -> Result<(), AmqpError>
    where
        F: std::future::Future<Output = Result<(), lapin::Error>>,
    {
        let channel = self.borrow().await?;
        let done = run(channel.clone());
        let result = self
            .limited(operation, async {
                done.await.map_err(classify(operation, target))
            })
            .await;
        self.give_back(channel);
        result
    }

    /// Returns a channel after its operation; one the broker closed is dropped.
    fn give_back(&self, channel: Channel) {
        if !channel.status().connected() {
            return;
        }
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE_CHANNELS {
            idle.push(channel);
        }
    }

    /// Waits until the connection fails (returning the error) or `shutdown` is cancelled.
    pub async fn watch(&self, shutdown: CancellationToken) -> Result<(), AmqpError> {
        let mut events = self.connection.events_listener();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = events.next() => match event {
                    // lapin reports a channel the broker closed (a 404 when another instance
                    // just deleted an exchange: that object's race, answered where it
                    // happened) on the connection's events too; only the connection's own
                    // failure ends the instance.
                    Some(lapin::Event::Error(error))
                        if error.is_amqp_soft_error() && self.connection.status().connected() =>
                    {
                        tracing::debug!(error = %error, "a channel was closed by the broker");
                    }
                    Some(lapin::Event::Error(error)) => {
                        return Err(AmqpError::ConnectionLost(error.to_string()));
                    }
                    Some(_) => {}
                    None => return Err(AmqpError::ConnectionLost("event stream ended".into())),
                },
            }
        }
    }

    /// Closes the connection politely, waiting at most [`CLOSE_TIMEOUT`] for the broker's
    /// close-ok: a broker too busy to answer must not keep a stopping instance alive (the
    /// socket closes with the process anyway).
    pub async fn close(&self) {
        match tokio::time::timeout(CLOSE_TIMEOUT, self.connection.close(200, "shutdown".into()))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                tracing::debug!(error = %error, "closing the broker connection failed");
            }
            Err(_) => tracing::warn!(
                timeout_secs = CLOSE_TIMEOUT.as_secs(),
                "the broker did not confirm the connection close; exiting anyway"
            ),
        }
    }
}

#[async_trait]
impl Publisher for AmqpBroker {
    async fn declare_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.on_channel("exchange.declare", exchange, |channel| async move {
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
        })
        .await?;
        Ok(())
    }

    async fn expose_to_mqtt(
        &self,
        exchange: &str,
        incarnation: Incarnation,
    ) -> Result<(), AmqpError> {
        if self.exposed.contains(exchange, incarnation) {
            return Ok(());
        }
        match self.bind_exchange(names::MQTT_EXCHANGE, exchange).await {
            Ok(()) => {
                self.exposed.insert(exchange, incarnation);
                Ok(())
            }
            // Deleted by another instance since the declare: the publish that follows meets
            // the same 404 and answers it as that object's race, as before.
            Err(error) if error.is_not_found() => Ok(()),
            Err(error) => Err(error),
        }
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        let deleted = self
            .on_channel("exchange.delete", exchange, |channel| async move {
                channel
                    .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                    .await
            })
            .await;
        // Forgotten once the exchange is gone: a bind recorded meanwhile went with it.
        self.exposed.forget(exchange);
        match deleted {
            // Already gone (another instance finished the same delete): what was asked.
            Err(error) if error.is_not_found() => Ok(()),
            other => other,
        }
    }

    async fn bind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        let target = format!("{source} -> {destination}");
        self.on_channel("exchange.bind", &target, |channel| async move {
            channel
                .exchange_bind(
                    destination.into(),
                    source.into(),
                    "".into(),
                    ExchangeBindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    async fn unbind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        let target = format!("{source} -> {destination}");
        self.on_channel("exchange.unbind", &target, |channel| async move {
            channel
                .exchange_unbind(
                    destination.into(),
                    source.into(),
                    "".into(),
                    ExchangeUnbindOptions::default(),
                    FieldTable::default(),
                )
                .await
        })
        .await
    }

    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), AmqpError> {
        let not_confirmed = |reason: String| AmqpError::NotConfirmed {
            exchange: exchange.to_string(),
            reason,
        };
        let payload = encode(message);
        // Fanout exchanges ignore it; amq.topic, bound to them, routes on it to MQTT agents.
        let routing_key = message
            .topic()
            .map(|topic| names::mqtt_routing_key(&topic))
            .unwrap_or_default();
        let channel = self.borrow().await?;
        let confirmed = async {
            let confirm = channel
                .basic_publish(
                    exchange.into(),
                    routing_key.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    crate::signing::signed(
                        self.signer(),
                        &payload,
                        BasicProperties::default()
                            .with_delivery_mode(TRANSIENT)
                            .with_content_type("application/x-nebula".into()),
                    ),
                )
                .await
                .map_err(classify("basic.publish", exchange))?;
            // A publish to a missing exchange closes the channel with 404; the pending
            // confirm then fails with that error.
            confirm.await.map_err(classify("basic.publish", exchange))
        };
        let result = match tokio::time::timeout(self.publish_timeout, confirmed).await {
            Err(_) => Err(not_confirmed(format!(
                "no confirm within {} s (a broker alarm blocks publishers?)",
                self.publish_timeout.as_secs_f64()
            ))),
            Ok(Err(error)) => Err(error),
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(not_confirmed("broker nacked the message".into())),
            Ok(Ok(Confirmation::NotRequested)) => {
                Err(not_confirmed("confirms are not enabled".into()))
            }
        };
        self.give_back(channel);
        result
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool, AmqpError> {
        const RESOURCE_LOCKED: u16 = 405;
        // A plain channel of its own, not one of the write path's confirm channels: the
        // broker closes it on either "no" (404) or "someone else's" (405), and it is never
        // pooled. A probe that fails otherwise (no answer in time, no channel) must not
        // condemn the connection the writes use: it is reported as `Unavailable`, and
        // presence falls back to the reports.
        let unavailable =
            |reason: String| AmqpError::Unavailable(format!("presence probe of {queue}: {reason}"));
        let answer = tokio::time::timeout(self.publish_timeout, async {
            let channel = self
                .connection
                .create_channel()
                .await
                .map_err(|error| unavailable(error.to_string()))?;
            let declared = channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                // A queue open to every connection is not an agent's exclusive queue: the
                // previous release's durable one, which outlives its agent's connection (and
                // RabbitMQ's declare-ok counts no consumer of it, even while one consumes).
                // It says nothing: presence falls back to the reports.
                Ok(_) => {
                    let _ = channel.close(200, "".into()).await;
                    Err(unavailable(
                        "not an exclusive queue (an agent of the previous release)".into(),
                    ))
                }
                // An exclusive queue of another connection (the agent's own) is locked to
                // everybody else, even to a passive declare: it exists.
                Err(error) if reply_code(&error) == Some(RESOURCE_LOCKED) => Ok(true),
                Err(error) if reply_code(&error) == Some(NOT_FOUND) => Ok(false),
                Err(error) => Err(unavailable(error.to_string())),
            }
        })
        .await;
        answer.unwrap_or_else(|_| Err(unavailable("no answer in time".into())))
    }

    fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}
