//! The lapin implementation of [`Publisher`], and the connection every broker task shares.
//!
//! One connection per instance. Changes go through one channel in confirm mode: each publish
//! waits for its own confirm, so a 2xx is only sent for a change the broker has taken
//! responsibility for. Any error on the connection ends the instance (DESIGN §3 "fail
//! hard"); [`AmqpBroker::watch`] turns a connection error into that.

use super::Publisher;
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
use nebula_protocol::{Message, encode, names};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// AMQP delivery mode of messages that survive a broker restart.
pub const PERSISTENT: u8 = 2;
/// How often connecting is tried at start before giving up (the supervisor restarts us).
const CONNECT_ATTEMPTS: u32 = 6;
const CONNECT_BACKOFF_CAP: Duration = Duration::from_secs(8);
/// How long a stopping instance waits for the broker to confirm its connection close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bounds of the reports queue (see `declare_reports_queue`): ten minutes of a
/// 10,000-device fleet's minutely reports, about 50 MB of broker memory.
const REPORTS_MAX_LENGTH: i64 = 100_000;
const REPORTS_TTL_MS: i64 = 3_600_000;

fn operation(operation: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |error| AmqpError::Operation {
        operation,
        reason: error.to_string(),
    }
}

#[derive(Debug, Clone)]
pub struct AmqpBroker {
    connection: std::sync::Arc<Connection>,
    channel: Channel,
}

impl AmqpBroker {
    /// Connects (retrying with capped exponential backoff and full jitter, so a fleet of
    /// instances coming back after a broker restart does not stampede it), opens the confirm
    /// channel and declares the fixed topology: the sync queue and the reports exchange/queue.
    pub async fn connect(url: &str) -> Result<Self, AmqpError> {
        let mut attempt = 0;
        let connection = loop {
            attempt += 1;
            match Connection::connect(url, ConnectionProperties::default()).await {
                Ok(connection) => break connection,
                Err(error) if attempt < CONNECT_ATTEMPTS => {
                    let ceiling =
                        Duration::from_millis(250 * 2u64.pow(attempt)).min(CONNECT_BACKOFF_CAP);
                    let delay = ceiling.mul_f64(fastrand::f64());
                    tracing::warn!(error = %error, attempt, delay_ms = delay.as_millis() as u64, "broker connection failed, retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(error) => return Err(AmqpError::Connect(error.to_string())),
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
        };
        broker.declare_fixed_topology().await?;
        Ok(broker)
    }

    async fn declare_fixed_topology(&self) -> Result<(), AmqpError> {
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.channel
            .queue_declare(names::SYNC_QUEUE.into(), durable, FieldTable::default())
            .await
            .map_err(operation("queue.declare"))?;
        self.channel
            .exchange_declare(
                names::REPORTS_EXCHANGE.into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(operation("exchange.declare"))?;
        self.declare_reports_queue().await?;
        self.channel
            .queue_bind(
                names::REPORTS_QUEUE.into(),
                names::REPORTS_EXCHANGE.into(),
                names::REPORTS_BINDING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("queue.bind"))?;
        Ok(())
    }

    /// The reports queue, bounded: nothing consumes it yet (report ingestion comes with
    /// users and cron jobs), and ten thousand devices reporting every minute would otherwise
    /// fill the broker until its memory alarm blocks every publisher, changes included. The
    /// newest reports are kept; an hour-old report is worthless anyway.
    ///
    /// A queue declared earlier without these arguments makes the broker refuse the
    /// declaration (and close the channel): then the existing queue is used as it is, with a
    /// warning, rather than refusing to start.
    async fn declare_reports_queue(&self) -> Result<(), AmqpError> {
        let mut arguments = FieldTable::default();
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
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        // Its own channel: a refused declaration closes the channel it was made on.
        let channel = self.create_channel().await?;
        let Err(error) = channel
            .queue_declare(names::REPORTS_QUEUE.into(), durable, arguments)
            .await
        else {
            let _ = channel.close(200, "OK".into()).await;
            return Ok(());
        };
        tracing::warn!(error = %error, queue = names::REPORTS_QUEUE, "the reports queue exists with other arguments; using it unbounded (delete it to let it be re-created bounded)");
        let channel = self.create_channel().await?;
        channel
            .queue_declare(
                names::REPORTS_QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..durable
                },
                FieldTable::default(),
            )
            .await
            .map_err(operation("queue.declare reports (passive)"))?;
        let _ = channel.close(200, "OK".into()).await;
        Ok(())
    }

    /// A new channel on the shared connection (the sync responder uses its own).
    pub async fn create_channel(&self) -> Result<Channel, AmqpError> {
        self.connection
            .create_channel()
            .await
            .map_err(operation("channel.open"))
    }

    /// Waits until the connection fails (returning the error) or `shutdown` is cancelled.
    pub async fn watch(&self, shutdown: CancellationToken) -> Result<(), AmqpError> {
        let mut events = self.connection.events_listener();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = events.next() => match event {
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
            .map_err(operation("exchange.declare"))
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.channel
            .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
            .await
            .map_err(operation("exchange.delete"))
    }

    async fn bind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.channel
            .exchange_bind(
                destination.into(),
                source.into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("exchange.bind"))
    }

    async fn unbind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.channel
            .exchange_unbind(
                destination.into(),
                source.into(),
                "".into(),
                ExchangeUnbindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("exchange.unbind"))
    }

    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), AmqpError> {
        let not_confirmed = |reason: String| AmqpError::NotConfirmed {
            exchange: exchange.to_string(),
            reason,
        };
        let payload = encode(message);
        let confirmation = self
            .channel
            .basic_publish(
                exchange.into(),
                "".into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default()
                    .with_delivery_mode(PERSISTENT)
                    .with_content_type("application/x-nebula".into()),
            )
            .await
            .map_err(|error| not_confirmed(error.to_string()))?
            .await
            .map_err(|error| not_confirmed(error.to_string()))?;
        match confirmation {
            Confirmation::Ack(_) => Ok(()),
            Confirmation::Nack(_) => Err(not_confirmed("broker nacked the message".into())),
            Confirmation::NotRequested => Err(not_confirmed("confirms are not enabled".into())),
        }
    }

    fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }
}
