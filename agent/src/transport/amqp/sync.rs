//! The sync request (DESIGN §3, boot step 3): ask `nebula.sync` for the current state of the
//! target over direct reply-to, and wait for the answer.
//!
//! On a slow link a reply can take longer than the timeout. Every attempt of one boot flow
//! therefore shares a nonce, and a reply to any of them that reaches the channel is accepted
//! (issue 12, defect 10: discarding late replies made such a device ask forever). Each
//! request expires in the broker after its own timeout, so an outage of the control plane
//! leaves no backlog of stale requests in `nebula.sync` for it to answer when it comes back;
//! and each attempt waits twice as long as the one before, up to a cap — over the passes of
//! the boot flow, so a link too slow for one pass gets longer timeouts in the next.
//!
//! Requests are published in confirm mode, and only a confirmed request is waited for again
//! on the same channel. One the broker refuses (nack) or does not confirm within the
//! attempt's timeout (at least 10 s: the confirm is a round trip of a small frame, unlike a
//! large reply) fails the channel, and the boot flow starts over on a new one; a late reply
//! to it is then lost, and the next pass asks again. On a cluster `nebula.sync` is a quorum
//! queue, and on RabbitMQ 3.10 a channel opened just as the queue leader's node died can keep
//! sending to the dead leader: untracked, every request was lost (the agent waited out 10 +
//! 20 + 40 s); tracked but on the same channel, 6 agents of 1,000 still waited more than
//! 120 s.

use super::{operation, signature};
use crate::error::AmqpError;
use crate::report::AGENT_VERSION;
use crate::runtime::ContainerRuntime;
use crate::supervisor::Shared;
use crate::transport::Target;
use crate::transport::sync_attempts::SyncAttempts;
use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation};
use nebula_protocol::names::{self, DIRECT_REPLY_TO, SYNC_EXCHANGE, SYNC_QUEUE};
use nebula_protocol::{Message, SyncReply, SyncRequest, decode, encode};
use tokio_util::sync::CancellationToken;

/// Asks for the target's state until a reply to one of this flow's requests arrives;
/// `None` when `stop` is cancelled first. `attempts` belongs to the boot flow (see the
/// module doc); an unconfirmed request is an error, and the channel is not to be reused.
///
/// Logged in with a device credential (`device_login`), requests go to the sync exchange with
/// the device's own routing key and that login as `user_id`; the broker lets the login use
/// no other key and checks the `user_id`, so the control plane knows who asks and answers only
/// for what that device is entitled to. Any other login sends them through the default
/// exchange, as agents of earlier releases do.
pub async fn request_sync<R: ContainerRuntime>(
    shared: &Shared<R>,
    channel: &Channel,
    device_login: Option<&str>,
    target: &Target,
    attempts: &mut SyncAttempts,
    stop: &CancellationToken,
) -> Result<Option<SyncReply>, AmqpError> {
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(operation("confirm.select"))?;
    // RabbitMQ's direct reply-to: consume the pseudo queue, without acks, on the channel that
    // publishes, before publishing.
    let mut replies = channel
        .basic_consume(
            DIRECT_REPLY_TO.into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(operation("basic.consume reply-to"))?;
    let device = &shared.config.device_id;
    let (exchange, routing_key) = match device_login {
        Some(_) => (SYNC_EXCHANGE, names::sync_routing_key(device)),
        None => ("", SYNC_QUEUE.to_string()),
    };
    loop {
        let (correlation_id, timeout) = attempts.next_attempt();
        let known_store = shared.known_store().await;
        let request = Message::SyncRequest(SyncRequest {
            device_id: device.clone(),
            target: target.sync_target(),
            correlation_id: correlation_id.clone(),
            agent_version: AGENT_VERSION.to_string(),
            known_store,
        });
        let expiration = timeout.as_millis().to_string();
        let mut properties = BasicProperties::default()
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(correlation_id.as_str().into())
            .with_expiration(expiration.as_str().into());
        if let Some(login) = device_login {
            properties = properties.with_user_id(login.into());
        }
        let mut confirm = channel
            .basic_publish(
                exchange.into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &encode(&request),
                properties,
            )
            .await
            .map_err(operation("basic.publish sync request"))?;
        tracing::debug!(target = %target, correlation_id, timeout_ms = timeout.as_millis() as u64, known_store = ?known_store, "sent sync request");
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut confirmed = false;
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(None),
                confirmation = &mut confirm, if !confirmed => match confirmation {
                    Ok(Confirmation::Nack(_)) => {
                        attempts.refused();
                        return Err(AmqpError::Nacked { operation: "sync request" });
                    }
                    Ok(_) => confirmed = true,
                    Err(error) => return Err(operation("sync request confirm")(error)),
                },
                () = &mut deadline => {
                    if !confirmed {
                        return Err(AmqpError::Timeout {
                            operation: "sync request confirm",
                            seconds: timeout.as_secs(),
                        });
                    }
                    tracing::warn!(target = %target, timeout_s = timeout.as_secs_f32(), "no sync reply yet; asking again (a reply to any earlier request still counts)");
                    break;
                }
                delivery = replies.next() => match delivery {
                    None => return Err(AmqpError::ConsumerCancelled { queue: DIRECT_REPLY_TO.into() }),
                    Some(Err(error)) => return Err(AmqpError::ConnectionLost(error.to_string())),
                    Some(Ok(delivery)) => match decode(&delivery.data) {
                        Ok(Message::SyncReply(reply)) if attempts.answers(&reply.correlation_id) => {
                            match signature::check_reply(shared.config.signing_key.as_ref(), &delivery.data, &shared.config.device_id, &target.sync_target(), &delivery.properties) {
                                Ok(()) => return Ok(Some(reply)),
                                // Not the control plane's: the request stays unanswered,
                                // and is asked again at its timeout.
                                Err(unsigned) => tracing::warn!(target = %target, problem = %unsigned, "ignoring a sync reply that is not signed by the control plane"),
                            }
                        }
                        Ok(other) => tracing::warn!(target = %target, kind = other.kind(), "ignoring a reply to another request"),
                        Err(error) => tracing::warn!(target = %target, error = %error, "ignoring a sync reply that does not decode"),
                    },
                },
            }
        }
    }
}
