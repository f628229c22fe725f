//! The boot flow of one target over one connection (DESIGN §3): declare the agent's
//! exclusive queue, bind it, sync, apply the reply as authoritative, and only then consume —
//! so a change made during the sync is already queued, and its version decides whether it
//! still matters. The flow starts over on a new channel when the target is deleted, not
//! found, or its queue cannot be had (another agent with this device id), or the broker
//! lost the queue under it ([`super::watch`]), with backoff; it ends when its connection
//! does.

use super::queue::{self, Declared, Refusal};
use super::signature;
use super::sync::request_sync;
use super::watch::{CheckChannel, QueueWatch};
use super::{FlowEnd, agent_queue, exchange, operation, reply_code};
use crate::backoff::Backoff;
use crate::error::{AmqpError, StateError};
use crate::runtime::ContainerRuntime;
use crate::state::SyncOutcome;
use crate::supervisor::Shared;
use crate::transport::Target;
use crate::transport::dispatch::{apply_change, apply_sync_reply};
use crate::transport::sync_attempts::SyncAttempts;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions, QueueBindOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use nebula_protocol::decode;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Unacknowledged deliveries per agent queue: changes are applied one by one anyway.
const PREFETCH: u16 = 16;
/// How long closing a channel may take before it is left to its connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a boot flow waits and starts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The agent queue cannot be had.
    Refused(Refusal),
    /// The sync reply did not find the target (or answered another one).
    NotFound(SyncOutcome),
    /// The target exists but its exchange does not yet (the control plane declares it).
    ExchangeMissing,
    /// Something on the channel failed; the connection is still up.
    ChannelFailed,
}

/// How one pass of the boot flow ended.
#[derive(Debug)]
enum Step {
    Stopped,
    /// The target was deleted: start over at once.
    StartOver,
    RetryLater(Retry),
}

/// What can end a pass early: a failed state write ends the agent (fail hard: never
/// acknowledge what was not persisted); a broker error ends the pass.
#[derive(Debug, thiserror::Error)]
enum FlowError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Follows `target` on `connection` until `stop` is cancelled (`Stopped`) or the
/// connection is lost. Only a failed state write is an error. `device_login`: the broker user
/// of the connection when it is a device credential's (see `request_sync`).
pub async fn follow<R: ContainerRuntime>(
    shared: Arc<Shared<R>>,
    connection: Arc<Connection>,
    device_login: Option<Arc<str>>,
    target: Target,
    stop: CancellationToken,
) -> Result<FlowEnd, StateError> {
    let mut backoff = Backoff::new(Duration::from_secs(1), shared.config.max_backoff);
    let mut attempts = sync_attempts(&shared);
    loop {
        if stop.is_cancelled() {
            return Ok(FlowEnd::Stopped);
        }
        let retry = match boot(
            &shared,
            &connection,
            device_login.as_deref(),
            &target,
            &mut attempts,
            &stop,
        )
        .await
        {
            Ok(Step::Stopped) => return Ok(FlowEnd::Stopped),
            Ok(Step::StartOver) => {
                tracing::info!(target = %target, "starting the boot flow over");
                backoff.reset();
                continue;
            }
            Ok(Step::RetryLater(retry)) => retry,
            Err(FlowError::State(error)) => return Err(error),
            Err(FlowError::Amqp(error)) => {
                if !connection.status().connected() {
                    return Ok(FlowEnd::ConnectionLost(error.to_string()));
                }
                tracing::warn!(target = %target, error = %error, "boot flow failed on its channel");
                Retry::ChannelFailed
            }
        };
        let delay = backoff.next_delay();
        log_retry(&shared.config.device_id, &target, retry, delay);
        tokio::select! {
            () = stop.cancelled() => return Ok(FlowEnd::Stopped),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

fn log_retry(device: &nebula_protocol::Name, target: &Target, retry: Retry, delay: Duration) {
    let retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    match retry {
        Retry::Refused(Refusal::HeldByAnotherConnection) => tracing::error!(
            device = %device,
            target = %target,
            retry_in_ms,
            "the broker refused this agent's queue (RESOURCE_LOCKED): another connection holds it. \
             Either another agent runs with this device id (for example a cloned SD card: give each \
             device its own NEBULA_DEVICE_ID, or regenerate /etc/machine-id with \
             `rm /etc/machine-id && systemd-machine-id-setup`), or the broker has not yet dropped \
             this agent's previous connection (then this clears within a heartbeat). Not consuming \
             changes until the queue is free; retrying"
        ),
        Retry::Refused(Refusal::EarlierReleaseQueueInUse) => tracing::error!(
            device = %device,
            target = %target,
            retry_in_ms,
            "an agent of an earlier release with this device id still consumes its durable queue, \
             so it cannot be replaced: stop that agent (or give this device its own \
             NEBULA_DEVICE_ID); retrying"
        ),
        Retry::NotFound(_) | Retry::ExchangeMissing => {
            tracing::info!(target = %target, retry_in_ms, "waiting for it to be created; asking again");
        }
        Retry::ChannelFailed => {
            tracing::warn!(target = %target, retry_in_ms, "retrying the boot flow on a new channel");
        }
    }
}

/// The sync attempts of a boot flow, from the first (shortest) timeout.
fn sync_attempts<R: ContainerRuntime>(shared: &Shared<R>) -> SyncAttempts {
    SyncAttempts::new(
        &shared.config.device_id,
        shared.config.sync_timeout,
        shared.config.max_sync_timeout,
    )
}

/// One pass: declare, bind, sync, apply, consume.
async fn boot<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    connection: &Connection,
    device_login: Option<&str>,
    target: &Target,
    attempts: &mut SyncAttempts,
    stop: &CancellationToken,
) -> Result<Step, FlowError> {
    let queue = agent_queue(target, &shared.config.device_id);
    // Every broker operation of the pass races `stop`: after a lost connection lapin can
    // leave an operation's promise pending, and the session would wait out its wind-down
    // (10 s) for this task before reconnecting. Only the state writes are never cut short.
    let Some(declared) = until_stopped(stop, declare_and_bind(connection, &queue, target)).await
    else {
        return Ok(Step::Stopped);
    };
    let (channel, bound) = match declared? {
        Bound::Ready { channel, bound } => (channel, bound),
        Bound::Refused(refusal) => return Ok(Step::RetryLater(Retry::Refused(refusal))),
    };

    let requested = until_stopped(
        stop,
        request_sync(shared, &channel, device_login, target, attempts, stop),
    )
    .await
    .unwrap_or(Ok(None));
    let reply = match requested {
        Ok(Some(reply)) => reply,
        Ok(None) => {
            close(&channel, "stopping").await;
            return Ok(Step::Stopped);
        }
        Err(error) => {
            close(&channel, "sync request failed").await;
            return Err(error.into());
        }
    };
    // The next boot pass (after a deletion or a dropped queue) starts with short timeouts.
    *attempts = sync_attempts(shared);
    let outcome = apply_sync_reply(shared, target, reply).await?;
    if !outcome.found() {
        close(&channel, "target not found").await;
        return Ok(Step::RetryLater(Retry::NotFound(outcome)));
    }
    if !bound {
        close(&channel, "exchange missing").await;
        return Ok(Step::RetryLater(Retry::ExchangeMissing));
    }

    let consuming = until_stopped(stop, async {
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(operation("basic.qos"))?;
        channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("basic.consume"))
    })
    .await;
    let mut consumer = match consuming {
        Some(consumer) => consumer?,
        None => {
            close(&channel, "stopping").await;
            return Ok(Step::Stopped);
        }
    };
    tracing::info!(target = %target, queue, "synced; consuming changes");
    let mut watch = QueueWatch::starting_at(tokio::time::Instant::now());
    let mut checks = CheckChannel::default();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => {
                close(&channel, "stopping").await;
                return Ok(Step::Stopped);
            }
            () = watch.due() => {
                watch.checked();
                let Some(exists) = until_stopped(stop, checks.queue_exists(connection, &queue)).await
                else {
                    close(&channel, "stopping").await;
                    return Ok(Step::Stopped);
                };
                if !exists? {
                    tracing::warn!(target = %target, queue, "the broker dropped this agent's queue while it was consuming (a dead cluster node's cleanup took its name); declaring, binding and syncing again");
                    close(&channel, "queue dropped by the broker").await;
                    return Ok(Step::RetryLater(Retry::ChannelFailed));
                }
                if watch.next_due().is_none() {
                    // The checks are over: their channel closes.
                    checks = CheckChannel::default();
                }
                continue;
            }
            delivery = consumer.next() => delivery,
        };
        let delivery = match delivery {
            None => return Err(AmqpError::ConsumerCancelled { queue }.into()),
            Some(Err(error)) => return Err(AmqpError::ConnectionLost(error.to_string()).into()),
            Some(Ok(delivery)) => delivery,
        };
        if handle(shared, target, delivery, stop).await? {
            close(&channel, "target deleted").await;
            return Ok(Step::StartOver);
        }
    }
}

/// What declaring and binding the agent queue gave.
enum Bound {
    /// The queue is this connection's; `bound` is false when the exchange does not exist
    /// (yet). The channel is open either way.
    Ready {
        channel: Channel,
        bound: bool,
    },
    Refused(Refusal),
}

/// Declares the agent queue and binds it to the target's exchange.
async fn declare_and_bind(
    connection: &Connection,
    queue: &str,
    target: &Target,
) -> Result<Bound, AmqpError> {
    let exchange = exchange(target);
    let channel = match queue::declare_agent_queue(connection, queue).await? {
        Declared::Ready(channel) => channel,
        Declared::Refused(refusal) => return Ok(Bound::Refused(refusal)),
    };
    match channel
        .queue_bind(
            queue.into(),
            exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
    {
        Ok(()) => Ok(Bound::Ready {
            channel,
            bound: true,
        }),
        Err(error) if reply_code(&error) == Some(404) => {
            tracing::info!(target = %target, exchange, "exchange does not exist (yet); asking the control plane");
            // The 404 closed the channel; the sync needs an open one.
            let channel = connection
                .create_channel()
                .await
                .map_err(operation("channel.open"))?;
            Ok(Bound::Ready {
                channel,
                bound: false,
            })
        }
        Err(error) => Err(operation("queue.bind")(error)),
    }
}

/// `operation`'s output, or `None` when `stop` comes first.
async fn until_stopped<T>(
    stop: &CancellationToken,
    operation: impl std::future::Future<Output = T>,
) -> Option<T> {
    tokio::select! {
        () = stop.cancelled() => None,
        output = operation => Some(output),
    }
}

/// Handles one delivery: decode, update and persist the desired state, then ack. Returns
/// `true` when the target was deleted.
async fn handle<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    target: &Target,
    delivery: Delivery,
    stop: &CancellationToken,
) -> Result<bool, FlowError> {
    let message = match decode(&delivery.data) {
        Ok(message) => message,
        Err(error) => {
            // A poison message: rejecting without requeue (dead-lettered where configured)
            // keeps it from coming back and crash-looping the agent.
            tracing::warn!(target = %target, error = %error, bytes = delivery.data.len(), "rejecting a message that does not decode or validate");
            if let Some(rejected) =
                until_stopped(stop, delivery.reject(BasicRejectOptions { requeue: false })).await
            {
                rejected.map_err(operation("basic.reject"))?;
            }
            return Ok(false);
        }
    };
    if let Err(unsigned) = signature::check(
        shared.config.signing_key.as_ref(),
        &delivery.data,
        &delivery.properties,
    ) {
        // Whoever published it holds a broker login, not the control plane's key: dropped
        // for good (never requeued), and the state stays as the control plane last said.
        tracing::warn!(target = %target, kind = message.kind(), problem = %unsigned, "rejecting a change that is not signed by the control plane");
        if let Some(rejected) =
            until_stopped(stop, delivery.reject(BasicRejectOptions { requeue: false })).await
        {
            rejected.map_err(operation("basic.reject"))?;
        }
        return Ok(false);
    }
    let dispatched = apply_change(shared, target, message).await?;
    // Acknowledged only now that the desired state is on disk. Stopped before the ack went
    // out, the session is ending: its queue goes with the connection, and the next boot
    // flow's sync brings the change again.
    if let Some(acked) = until_stopped(stop, delivery.ack(BasicAckOptions::default())).await {
        acked.map_err(operation("basic.ack"))?;
    }
    if !dispatched.changes.is_empty() {
        shared.report_now.notify_one();
    }
    Ok(dispatched.target_deleted)
}

async fn close(channel: &Channel, reason: &str) {
    // Best effort: the channel may already be closed by the broker, or its connection gone
    // (then lapin may never answer).
    if channel.status().connected() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, channel.close(200, reason.into())).await;
    }
}
