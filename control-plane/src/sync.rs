//! The sync responder: answers agents' `SyncRequest`s from `nebula.sync` (DESIGN §3).
//!
//! Every instance consumes the queue (competing consumers) with a bounded prefetch and
//! answers up to that many requests at once. Replies go to the request's `reply_to` through
//! the default exchange (RabbitMQ's direct reply-to) — or, for a request made over MQTT
//! (published on `amq.topic`, which is bound to the queue), to the device's reply topic —
//! with the request's correlation id and
//! this store's identity (DESIGN §2: an agent acts on "not found" only from the store it
//! knows). A message that is not a valid sync request is rejected without requeue and
//! logged, never retried forever; so is a request for an object whose record is corrupt (the
//! agent keeps what it has and asks again later). The consumer ending for any reason ends
//! the broker connection (`broker::link` makes a new one): an instance that no longer
//! answers syncs must not go on as if all were well.
//!
//! A device is answered only for what it is entitled to: a device with its own broker
//! credential only within that credential's scope, and never for another device
//! (`device_credentials::check_sync`, from the routing key and `user_id` the broker vouches
//! for). A refused request is rejected without requeue; the agent keeps what it runs.

use crate::broker::amqp::{AmqpBroker, operation};
use crate::broker::consume::asker;
use crate::broker::consume::consume;
use crate::device_credentials::check_sync;
use crate::error::{AmqpError, StoreError};
use crate::service::{Service, ServiceError};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::{BasicProperties, Channel};
use nebula_protocol::{
    Message, SyncReply, SyncRequest, SyncResult, SyncTarget, decode, encode, names,
};
use tokio_util::sync::CancellationToken;

/// The answer to one sync request: the current state, or an explicit not-found.
pub async fn answer(service: &Service, request: &SyncRequest) -> Result<SyncResult, ServiceError> {
    Ok(match &request.target {
        SyncTarget::App(app) => match service.get_app(app).await? {
            Some(config) => SyncResult::App(config),
            None => SyncResult::NotFound,
        },
        SyncTarget::DeviceGroup(group) => match service.group_state(group).await? {
            Some(state) => SyncResult::Group(state),
            None => SyncResult::NotFound,
        },
    })
}

/// Consumes `nebula.sync` on `broker`'s connection until `stop`, or a broker error.
pub async fn run(
    broker: AmqpBroker,
    service: Service,
    prefetch: u16,
    stop: CancellationToken,
) -> Result<(), AmqpError> {
    let service = &service;
    let signer = broker.signer_arc();
    let signer = signer.as_deref();
    consume(
        &broker,
        names::SYNC_QUEUE,
        prefetch,
        "sync responder",
        &stop,
        move |channel, delivery| async move { handle(&channel, service, signer, delivery).await },
    )
    .await
}

async fn handle(
    channel: &Channel,
    service: &Service,
    signer: Option<&crate::signing::Signer>,
    delivery: Delivery,
) -> Result<(), AmqpError> {
    let started = std::time::Instant::now();
    let request = match decode(&delivery.data) {
        Ok(Message::SyncRequest(request)) => request,
        Ok(other) => {
            tracing::warn!(
                kind = other.kind(),
                "not a sync request on the sync queue, rejected"
            );
            return reject(service, &delivery).await;
        }
        Err(error) => {
            tracing::warn!(error = %error, bytes = delivery.data.len(), "undecodable sync request, rejected");
            return reject(service, &delivery).await;
        }
    };
    // Where the answer goes: an AMQP agent names its direct reply-to queue; an MQTT agent
    // (its request came through amq.topic) cannot, and gets the answer on its device's reply
    // topic, spelled here from the device id.
    let (reply_exchange, reply_key) = match delivery.properties.reply_to() {
        // Direct reply-to only: a reply to a queue the request names would let anyone who
        // can send a sync request have the control plane put messages into any queue.
        Some(reply_to)
            if reply_to
                .as_str()
                .strip_prefix(names::DIRECT_REPLY_TO)
                .is_some_and(|rest| rest.starts_with('.')) =>
        {
            (String::new(), reply_to.to_string())
        }
        Some(reply_to) => {
            tracing::warn!(device = %request.device_id, reply_to = %reply_to, "sync request with a reply_to other than direct reply-to, rejected");
            return reject(service, &delivery).await;
        }
        None if delivery.exchange.as_str() == names::MQTT_EXCHANGE => (
            names::MQTT_EXCHANGE.to_string(),
            names::mqtt_routing_key(&names::reply_topic(&request.device_id)),
        ),
        None => {
            tracing::warn!(device = %request.device_id, "sync request without reply_to, rejected");
            return reject(service, &delivery).await;
        }
    };
    if !entitled(service, &delivery, &request).await? {
        return Ok(());
    }
    if let Some(known) = request.known_store
        && known != service.store().identity()
    {
        service.foreign_store_seen(known);
    }
    let result = match answer(service, &request).await {
        Ok(result) => result,
        Err(ServiceError::Store(error @ StoreError::Corrupt { .. })) => {
            // Not an answer the agent could act on, and not one another instance could give
            // better: rejected, counted, logged. The agent keeps what it has and asks again.
            tracing::error!(error = %error, device = %request.device_id, "sync request for a corrupt record, rejected");
            service.metrics().sync_corrupt();
            return delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map(|_| ())
                .map_err(operation("basic.reject"));
        }
        Err(error) => {
            // The store failed (the service has started the shutdown): let another
            // instance answer.
            tracing::error!(error = %error, device = %request.device_id, "cannot answer sync request");
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
                .map_err(operation("basic.nack"))?;
            return Ok(());
        }
    };
    let found = !matches!(result, SyncResult::NotFound);
    let correlation_id = delivery
        .properties
        .correlation_id()
        .clone()
        .unwrap_or_else(|| request.correlation_id.as_str().into());
    let reply = Message::SyncReply(SyncReply {
        correlation_id: request.correlation_id.clone(),
        result,
        store_id: service.store().identity(),
    });
    // Direct reply-to does not support confirms (nor, here, the reply topic); the agent
    // times out and asks again.
    let body = encode(&reply);
    channel
        .basic_publish(
            reply_exchange.as_str().into(),
            reply_key.as_str().into(),
            BasicPublishOptions::default(),
            &body,
            crate::signing::signed_reply(
                signer,
                &body,
                &request,
                BasicProperties::default().with_correlation_id(correlation_id),
            ),
        )
        .await
        .map_err(operation("basic.publish"))?;
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(operation("basic.ack"))?;
    service.metrics().sync_answered(found);
    service.metrics().sync_latency(started.elapsed());
    tracing::debug!(device = %request.device_id, target = ?request.target, found, "sync request answered");
    Ok(())
}

/// Whether the asking device may have what it asks for (`device_credentials::check_sync`).
/// A refused request is rejected, counted and logged; one whose check the store cannot make
/// now goes back to the queue for another instance. `Ok(false)`: the delivery is settled.
async fn entitled(
    service: &Service,
    delivery: &Delivery,
    request: &SyncRequest,
) -> Result<bool, AmqpError> {
    let credential = match service.credential(&request.device_id).await {
        Ok(credential) => credential,
        Err(error) => {
            // A corrupt record is rejected (no instance could read it better); a failing
            // store hands the request back for another instance.
            let requeue = !matches!(error, ServiceError::Store(StoreError::Corrupt { .. }));
            tracing::error!(error = %error, device = %request.device_id, requeue, "cannot read the device's credential; sync request not answered");
            delivery
                .nack(BasicNackOptions {
                    requeue,
                    ..BasicNackOptions::default()
                })
                .await
                .map_err(operation("basic.nack"))?;
            return Ok(false);
        }
    };
    let asker = asker(delivery);
    match check_sync(
        &request.device_id,
        &request.target,
        asker,
        credential.as_ref(),
    ) {
        Ok(()) => Ok(true),
        Err(refusal) => {
            tracing::warn!(device = %request.device_id, user_id = asker.user_id.unwrap_or("-"), refusal = %refusal, "sync request refused");
            service.metrics().sync_refused();
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map_err(operation("basic.reject"))?;
            Ok(false)
        }
    }
}

async fn reject(service: &Service, delivery: &Delivery) -> Result<(), AmqpError> {
    service.metrics().sync_rejected();
    delivery
        .reject(BasicRejectOptions { requeue: false })
        .await
        .map(|_| ())
        .map_err(operation("basic.reject"))
}
