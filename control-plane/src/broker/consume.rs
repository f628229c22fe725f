//! Competing consumers of a control-plane queue (`nebula.sync`, `nebula.reports`, DESIGN
//! §3): every instance consumes the queue with a bounded prefetch and handles that many
//! deliveries at once. A handler's error (a broker error: the handler settles its delivery
//! itself) or the delivery stream failing ends the consumer with that error, and so does the
//! consumer ending for any reason but `stop` — the broker cancelled it (the queue was
//! deleted, a cluster node holding it went away) or its channel closed. The broker link then
//! drops the connection and makes a new one (`broker::link`): without that the instance
//! would stay ready while serving nothing.

use super::amqp::{AmqpBroker, operation};
use crate::error::AmqpError;
use futures_util::StreamExt;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use std::future::Future;
use tokio_util::sync::CancellationToken;

/// What the broker vouches for about a delivery's sender (`device_credentials`).
pub fn asker(delivery: &Delivery) -> crate::device_credentials::Asker<'_> {
    let properties = &delivery.properties;
    crate::device_credentials::Asker {
        exchange: delivery.exchange.as_str(),
        routing_key: delivery.routing_key.as_str(),
        user_id: properties.user_id().as_ref().map(|user| user.as_str()),
        dead_lettered: properties
            .headers()
            .as_ref()
            .is_some_and(|headers| headers.inner().contains_key("x-death")),
    }
}

/// Consumes `queue` until `stop` (or the first error), with `prefetch` deliveries in flight, each handed to
/// `handle` with the consumer's channel. `role` names the consumer in logs.
pub async fn consume<F, Fut>(
    broker: &AmqpBroker,
    queue: &'static str,
    prefetch: u16,
    role: &'static str,
    stop: &CancellationToken,
    handle: F,
) -> Result<(), AmqpError>
where
    F: Fn(Channel, Delivery) -> Fut,
    Fut: Future<Output = Result<(), AmqpError>>,
{
    let channel = broker.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .map_err(operation("basic.qos"))?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(operation("basic.consume"))?;
    tracing::info!(queue, prefetch, "{role} consuming");
    // A failed delivery ends the consumer too: the stream stops taking deliveries once
    // `failed` is cancelled, and the unacknowledged ones return to the queue with the
    // connection.
    let failed = stop.child_token();
    let outcome = std::sync::Mutex::new(Ok(()));
    let mut cancelled = false;
    consumer
        .take_until(async {
            failed.cancelled().await;
            cancelled = stop.is_cancelled();
        })
        .for_each_concurrent(usize::from(prefetch), |delivery| {
            let channel = channel.clone();
            let (handle, outcome, failed) = (&handle, &outcome, &failed);
            async move {
                let result = match delivery {
                    Ok(delivery) => handle(channel, delivery).await,
                    Err(error) => Err(AmqpError::ConnectionLost(error.to_string())),
                };
                if let Err(error) = result {
                    if let Ok(mut slot) = outcome.lock()
                        && slot.is_ok()
                    {
                        *slot = Err(error);
                    }
                    failed.cancel();
                }
            }
        })
        .await;
    let outcome = outcome
        .into_inner()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if outcome.is_ok() && !cancelled {
        return Err(AmqpError::ConnectionLost(format!(
            "the consumer of {queue} ended"
        )));
    }
    outcome
}
