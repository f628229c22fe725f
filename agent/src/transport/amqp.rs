//! The AMQP transport: the seed's boot flow per app (or per group), sync over direct
//! reply-to, consuming the agent queue, and publishing reports (DESIGN §3).
//!
//! Per target (one app in app mode, the group in group mode), on its own channel:
//! declare the durable agent queue, bind it to the target's exchange, send a sync request
//! and apply the reply, and only then consume the queue — so a change made during the sync
//! is already queued and its revision decides whether it still matters. A missing exchange
//! (404, the app or group does not exist yet) or a `NotFound` reply backs off and starts
//! over on a new channel. Anything else that goes wrong after the connection is up ends the
//! agent with an error: the supervisor restarts it and this boot flow re-converges.

use crate::backoff::Backoff;
use crate::config::Mode;
use crate::device::CpuSampler;
use crate::error::{AgentError, AmqpError, is_not_found};
use crate::report::{self, AGENT_VERSION};
use crate::runtime::ContainerRuntime;
use crate::state::{Authority, Changes};
use crate::supervisor::Shared;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind};
use nebula_protocol::names::{
    self, AGENT_QUEUE_EXPIRES_MS, DIRECT_REPLY_TO, QUEUE_EXPIRES_ARGUMENT, REPORTS_EXCHANGE,
    SYNC_QUEUE,
};
use nebula_protocol::{Message, Name, SyncRequest, SyncResult, SyncTarget, decode, encode};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// How long one connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Unacknowledged deliveries per agent queue: changes are applied one by one anyway.
const PREFETCH: u16 = 16;
/// AMQP delivery mode of persistent messages.
const PERSISTENT: u8 = 2;
/// Frame size asked for unless the URL sets `frame_max`. lapin keeps 32 frames of buffer
/// each way, so RabbitMQ's default of 128 KiB costs 8 MiB of RSS; 16 KiB costs 1 MiB, and
/// larger messages (a big group state) are simply split across frames.
const DEFAULT_FRAME_MAX: u32 = 16 * 1024;

/// What one boot flow follows.
#[derive(Debug, Clone)]
enum Target {
    App(Name),
    Group(Name),
}

impl Target {
    fn queue(&self, device: &Name) -> String {
        match self {
            Self::App(app) => names::app_queue(device, app),
            Self::Group(group) => names::group_queue(device, group),
        }
    }

    fn exchange(&self) -> String {
        match self {
            Self::App(app) => names::app_exchange(app),
            Self::Group(group) => names::group_exchange(group),
        }
    }

    fn sync_target(&self) -> SyncTarget {
        match self {
            Self::App(app) => SyncTarget::App(app.clone()),
            Self::Group(group) => SyncTarget::DeviceGroup(group.clone()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::App(app) => write!(formatter, "app {app}"),
            Self::Group(group) => write!(formatter, "group {group}"),
        }
    }
}

fn operation(operation: &'static str) -> impl FnOnce(lapin::Error) -> AmqpError {
    move |source| AmqpError::Operation { operation, source }
}

/// Runs the transport until shutdown (`Ok`) or a broker failure (`Err`).
pub async fn run<R: ContainerRuntime>(shared: Arc<Shared<R>>) -> Result<(), AgentError> {
    let Some(connection) = connect(&shared).await? else {
        return Ok(());
    };
    let connection = Arc::new(connection);
    let mut events = connection.events_listener();
    let mut tasks: JoinSet<Result<(), AgentError>> = JoinSet::new();
    tasks.spawn(reporter(shared.clone(), connection.clone()));
    match &shared.config.mode {
        Mode::Group(group) => {
            tasks.spawn(follow(
                shared.clone(),
                connection.clone(),
                Target::Group(group.clone()),
            ));
        }
        Mode::Apps(apps) => {
            for app in apps {
                tasks.spawn(follow(
                    shared.clone(),
                    connection.clone(),
                    Target::App(app.clone()),
                ));
            }
        }
    }
    let result = loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => break Ok(()),
            event = events.next() => match event {
                // Channel-level (soft) errors, such as the expected 404 of binding to an
                // exchange that does not exist yet, are handled by the operation that caused
                // them; only connection-level errors end the agent here.
                Some(lapin::Event::Error(error)) if error.is_amqp_soft_error() => {
                    tracing::debug!(error = %error, "channel error");
                }
                Some(lapin::Event::Error(error)) => {
                    break Err(AmqpError::ConnectionLost(error.to_string()).into());
                }
                Some(lapin::Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(reason, "the broker blocked this connection");
                }
                Some(_) => {}
                None => break Err(AmqpError::ConnectionLost("event stream ended".into()).into()),
            },
            joined = tasks.join_next() => match joined {
                Some(Ok(Ok(()))) => {}
                Some(Ok(Err(error))) => break Err(error),
                Some(Err(error)) => break Err(AgentError::Task(error.to_string())),
                // Every follower ended cleanly, which only happens on shutdown.
                None => break Ok(()),
            },
        }
    };
    tasks.abort_all();
    if result.is_ok() {
        // A clean close tells the broker to requeue unacknowledged deliveries at once.
        let _ = connection.close(200, "agent shutting down".into()).await;
    }
    result
}

/// Connects with capped exponential backoff and full jitter; `None` on shutdown.
async fn connect<R: ContainerRuntime>(shared: &Shared<R>) -> Result<Option<Connection>, AmqpError> {
    let mut backoff = Backoff::new(Duration::from_millis(500), shared.config.max_backoff);
    let properties = ConnectionProperties::default()
        .with_connection_name(format!("nebula-agent {}", shared.config.device_id).into());
    // The URL was validated with the configuration.
    let mut uri: lapin::uri::AMQPUri = shared
        .config
        .amqp_url
        .parse()
        .map_err(|reason: String| AmqpError::InvalidUrl(reason))?;
    uri.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    loop {
        let attempt = tokio::time::timeout(
            CONNECT_TIMEOUT,
            Connection::connect_uri(uri.clone(), properties.clone()),
        );
        let failure = tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(None),
            result = attempt => match result {
                Ok(Ok(connection)) => {
                    tracing::info!(device = %shared.config.device_id, "connected to the broker");
                    return Ok(Some(connection));
                }
                Ok(Err(error)) => error.to_string(),
                Err(_) => format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            },
        };
        let delay = backoff.next_delay();
        tracing::warn!(error = %failure, retry_in_ms = delay.as_millis() as u64, "broker unreachable; retrying");
        tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(None),
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Sleeps for the next backoff delay; `false` on shutdown.
async fn pause<R: ContainerRuntime>(shared: &Shared<R>, backoff: &mut Backoff) -> bool {
    tokio::select! {
        () = shared.shutdown.cancelled() => false,
        () = backoff.wait() => true,
    }
}

/// The boot flow of one target, repeated whenever the target is deleted or unknown.
async fn follow<R: ContainerRuntime>(
    shared: Arc<Shared<R>>,
    connection: Arc<Connection>,
    target: Target,
) -> Result<(), AgentError> {
    let device = shared.config.device_id.clone();
    let queue = target.queue(&device);
    let exchange = target.exchange();
    let mut backoff = Backoff::new(Duration::from_secs(1), shared.config.max_backoff);
    loop {
        if shared.shutdown.is_cancelled() {
            return Ok(());
        }
        let channel = connection
            .create_channel()
            .await
            .map_err(operation("channel.open"))?;
        let mut arguments = FieldTable::default();
        let expires = i32::try_from(AGENT_QUEUE_EXPIRES_MS).unwrap_or(i32::MAX);
        arguments.insert(QUEUE_EXPIRES_ARGUMENT.into(), AMQPValue::LongInt(expires));
        channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions::durable(),
                arguments,
            )
            .await
            .map_err(operation("queue.declare"))?;
        let bound = match channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        {
            Ok(()) => true,
            Err(error) if is_not_found(&error) => {
                tracing::info!(target = %target, exchange, "exchange does not exist (yet); asking the control plane");
                false
            }
            Err(error) => return Err(operation("queue.bind")(error).into()),
        };
        // A 404 closed the channel; the sync needs an open one.
        let channel = if bound {
            channel
        } else {
            connection
                .create_channel()
                .await
                .map_err(operation("channel.open"))?
        };

        let Some(result) = sync(&shared, &channel, &target).await? else {
            return Ok(());
        };
        let found = apply_sync(&shared, &target, result).await?;
        if !found || !bound {
            let _ = channel.close(200, "retrying".into()).await;
            if !found {
                tracing::info!(target = %target, "unknown to the control plane; waiting for it to be created");
            }
            if !pause(&shared, &mut backoff).await {
                return Ok(());
            }
            continue;
        }
        backoff.reset();

        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .map_err(operation("basic.qos"))?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(operation("basic.consume"))?;
        tracing::info!(target = %target, queue, "synced; consuming changes");
        let restart = consume(&shared, &target, &queue, consumer).await?;
        let _ = channel.close(200, "boot flow restarts".into()).await;
        if !restart {
            return Ok(());
        }
        tracing::info!(target = %target, "deleted; starting the boot flow over");
    }
}

/// Sends sync requests until a reply arrives; `None` on shutdown.
async fn sync<R: ContainerRuntime>(
    shared: &Shared<R>,
    channel: &Channel,
    target: &Target,
) -> Result<Option<SyncResult>, AmqpError> {
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
    let mut backoff = Backoff::new(Duration::from_secs(1), shared.config.max_backoff);
    loop {
        let correlation_id = format!("{}-{:016x}", shared.config.device_id, fastrand::u64(..));
        let request = Message::SyncRequest(SyncRequest {
            device_id: shared.config.device_id.clone(),
            target: target.sync_target(),
            correlation_id: correlation_id.clone(),
            agent_version: AGENT_VERSION.to_string(),
            known_store: None,
        });
        channel
            .basic_publish(
                "".into(),
                SYNC_QUEUE.into(),
                BasicPublishOptions::default(),
                &encode(&request),
                BasicProperties::default()
                    .with_reply_to(DIRECT_REPLY_TO.into())
                    .with_correlation_id(correlation_id.as_str().into()),
            )
            .await
            .map_err(operation("basic.publish sync request"))?;
        tracing::debug!(target = %target, correlation_id, "sent sync request");
        let deadline = tokio::time::sleep(shared.config.sync_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = shared.shutdown.cancelled() => return Ok(None),
                () = &mut deadline => {
                    tracing::warn!(target = %target, timeout_s = shared.config.sync_timeout.as_secs(), "no sync reply; asking again");
                    break;
                }
                delivery = replies.next() => match delivery {
                    None => return Err(AmqpError::ConsumerCancelled { queue: DIRECT_REPLY_TO.into() }),
                    Some(Err(error)) => return Err(AmqpError::ConnectionLost(error.to_string())),
                    Some(Ok(delivery)) => match decode(&delivery.data) {
                        Ok(Message::SyncReply(reply)) if reply.correlation_id == correlation_id => {
                            return Ok(Some(reply.result));
                        }
                        // A late reply to an earlier attempt.
                        Ok(_) => {}
                        Err(error) => tracing::warn!(target = %target, error = %error, "ignoring a sync reply that does not decode"),
                    },
                },
            }
        }
        tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(None),
            () = backoff.wait() => {}
        }
    }
}

/// Applies a sync reply. Returns `false` when the target is unknown; the sync reply is
/// authoritative, so what the device held for it is dropped (and its containers removed).
async fn apply_sync<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    target: &Target,
    result: SyncResult,
) -> Result<bool, AgentError> {
    match (target, result) {
        (Target::App(app), SyncResult::App(config)) if &config.app_name == app => {
            shared
                .update(|state| state.apply_app(config, Authority::Sync))
                .await?;
            Ok(true)
        }
        (Target::Group(group), SyncResult::Group(state)) if &state.group.device_group == group => {
            shared
                .update(|desired| desired.apply_group(state, Authority::Sync))
                .await?;
            shared.adopt_orphans().await;
            Ok(true)
        }
        (Target::App(app), SyncResult::NotFound) => {
            shared.update(|state| state.remove_app(app, None)).await?;
            Ok(false)
        }
        (Target::Group(_), SyncResult::NotFound) => {
            shared.update(|state| state.clear_group()).await?;
            shared.adopt_orphans().await;
            Ok(false)
        }
        (target, result) => {
            // A control plane answering about something else is a bug there; asking again
            // later is all the agent can do.
            tracing::warn!(target = %target, reply = ?result, "sync reply does not match the request");
            Ok(false)
        }
    }
}

/// Consumes the agent queue. Returns `true` when the target was deleted (the boot flow
/// starts over), `false` on shutdown.
async fn consume<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    target: &Target,
    queue: &str,
    mut consumer: Consumer,
) -> Result<bool, AgentError> {
    loop {
        let delivery = tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(false),
            delivery = consumer.next() => delivery,
        };
        let delivery = match delivery {
            None => {
                return Err(AmqpError::ConsumerCancelled {
                    queue: queue.to_string(),
                }
                .into());
            }
            Some(Err(error)) => return Err(AmqpError::ConnectionLost(error.to_string()).into()),
            Some(Ok(delivery)) => delivery,
        };
        if handle(shared, target, delivery).await? {
            return Ok(true);
        }
    }
}

/// Handles one delivery: decode, update and persist the desired state, then ack. Returns
/// `true` when the target was deleted.
async fn handle<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    target: &Target,
    delivery: Delivery,
) -> Result<bool, AgentError> {
    let message = match decode(&delivery.data) {
        Ok(message) => message,
        Err(error) => {
            // A poison message: rejecting without requeue (dead-lettered where configured)
            // keeps it from coming back and crash-looping the agent.
            tracing::warn!(target = %target, error = %error, bytes = delivery.data.len(), "rejecting a message that does not decode or validate");
            delivery
                .reject(BasicRejectOptions { requeue: false })
                .await
                .map_err(operation("basic.reject"))?;
            return Ok(false);
        }
    };
    let kind = message.kind();
    let mut deleted = false;
    let changes: Changes = match (target, message) {
        (Target::App(app), Message::AppChanged(config)) if &config.app_name == app => {
            let revision = config.app_id;
            let changes = shared
                .update(|state| state.apply_app(config, Authority::Incremental))
                .await?;
            tracing::info!(app = %app, revision, applied = !changes.is_empty(), "app changed");
            changes
        }
        (Target::Group(_), Message::AppChanged(config)) => {
            let (app, revision) = (config.app_name.clone(), config.app_id);
            let changes = shared
                .update(|state| state.apply_app(config, Authority::Incremental))
                .await?;
            tracing::info!(app = %app, revision, applied = !changes.is_empty(), "app changed");
            changes
        }
        (
            Target::App(app),
            Message::AppDeleted {
                app_name, app_id, ..
            },
        ) if &app_name == app => {
            deleted = true;
            tracing::info!(app = %app, revision = app_id, "app deleted");
            shared
                .update(|state| state.remove_app(&app_name, Some(app_id)))
                .await?
        }
        (
            Target::Group(_),
            Message::AppDeleted {
                app_name, app_id, ..
            },
        ) => {
            tracing::info!(app = %app_name, revision = app_id, "app deleted");
            shared
                .update(|state| state.remove_app(&app_name, Some(app_id)))
                .await?
        }
        (Target::Group(group), Message::DeviceGroupChanged(state))
            if &state.group.device_group == group =>
        {
            let revision = state.group.device_group_id;
            let changes = shared
                .update(|desired| desired.apply_group(state, Authority::Incremental))
                .await?;
            tracing::info!(group = %group, revision, applied = !changes.is_empty(), "device group changed");
            if !changes.is_empty() {
                shared.adopt_orphans().await;
            }
            changes
        }
        (
            Target::Group(group),
            Message::DeviceGroupDeleted {
                device_group,
                device_group_id,
                ..
            },
        ) if &device_group == group => {
            deleted = true;
            tracing::info!(group = %group, revision = device_group_id, "device group deleted");
            shared.update(|state| state.clear_group()).await?
        }
        (target, _) => {
            tracing::warn!(target = %target, kind, "ignoring a message not meant for this queue");
            Changes::default()
        }
    };
    // Acknowledged only now that the desired state is on disk.
    delivery
        .ack(BasicAckOptions::default())
        .await
        .map_err(operation("basic.ack"))?;
    if !changes.is_empty() {
        shared.report_now.notify_one();
    }
    Ok(deleted)
}

/// Publishes a report at start, on every applied change and every report interval.
async fn reporter<R: ContainerRuntime>(
    shared: Arc<Shared<R>>,
    connection: Arc<Connection>,
) -> Result<(), AgentError> {
    let channel = connection
        .create_channel()
        .await
        .map_err(operation("channel.open"))?;
    channel
        .exchange_declare(
            REPORTS_EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(operation("exchange.declare reports"))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(operation("confirm.select"))?;
    let routing_key = names::report_routing_key(&shared.config.device_id);
    let mut cpu = CpuSampler::default();
    let mut interval = tokio::time::interval(shared.config.report_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return Ok(()),
            _ = interval.tick() => {}
            () = shared.report_now.notified() => {
                // Coalesce a burst of changes (a rolling restart) into one report.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let report = report::build(&shared, &mut cpu).await;
        let updated = report.updated;
        let payload = encode(&Message::DeviceReport(report));
        channel
            .basic_publish(
                REPORTS_EXCHANGE.into(),
                routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &payload,
                BasicProperties::default().with_delivery_mode(PERSISTENT),
            )
            .await
            .map_err(operation("basic.publish report"))?
            .await
            .map_err(operation("report confirm"))?;
        tracing::debug!(updated, "published device report");
    }
}
