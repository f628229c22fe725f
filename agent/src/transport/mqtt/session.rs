//! One MQTT session (DESIGN §3's boot order, over topics):
//!
//! 1. subscribe to the device's reply topic and every target's topics — app mode: each app's;
//!    group mode: the group's and its member apps' (changes of a member stay on its app's
//!    topic) as the held group document lists them;
//! 2. sync every target: a request on `nebula/sync` carrying the device id and a correlation
//!    id (MQTT 3.1.1 has neither reply-to nor correlation properties), answered on the reply
//!    topic; the answer is applied as authoritative. Changes that arrive meanwhile wait and
//!    are applied after it, where their versions decide. A group whose sync (or, later, a
//!    change) brings members not yet subscribed to is synced again once they are: a change
//!    of theirs published before the subscription took was not delivered;
//! 3. apply changes as they come, each acknowledged once the desired state is persisted.
//!
//! Unlike over AMQP, a subscription needs no exchange: a target that does not exist yet is
//! simply waited for on its topic. A "not found" from a store other than the one the agent
//! knows (or an answer about something else) is asked again after a backoff, while changes
//! keep being applied.

use super::Inbound;
use crate::backoff::Backoff;
use crate::error::StateError;
use crate::mqtt_url::MqttUrl;
use crate::report::AGENT_VERSION;
use crate::runtime::ContainerRuntime;
use crate::state::SyncOutcome;
use crate::supervisor::Shared;
use crate::transport::FlowEnd;
use crate::transport::Target;
use crate::transport::dispatch::{apply_change, apply_sync_reply};
use crate::transport::reports::{ReportPublisher, report_loop};
use crate::transport::sync_attempts::SyncAttempts;
use nebula_protocol::{Message, SyncReply, SyncRequest, decode, encode, names};
use rumqttc::{AsyncClient, Publish, QoS, SubscribeFilter, SubscribeReasonCode};
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

/// How long the broker may take to accept the session (beyond the event loop's own network
/// timeout, which then says why).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the broker may take to acknowledge a subscription.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping agent gives its goodbye report and disconnect to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// How a session ended.
#[derive(Debug)]
pub(crate) enum End {
    Shutdown,
    /// The broker did not accept the session.
    Unreachable(String),
    /// An accepted session was lost.
    Lost(String),
}

/// Why a session's flow stopped.
#[derive(Debug)]
enum Stop {
    Shutdown,
    Lost(String),
    /// A failed state write: the agent ends (never acknowledge what was not persisted).
    State(StateError),
}

impl From<StateError> for Stop {
    fn from(error: StateError) -> Self {
        Self::State(error)
    }
}

/// A request the client could not queue: its event loop is gone with the session.
fn lost(error: rumqttc::ClientError) -> Stop {
    Stop::Lost(format!("the MQTT client stopped: {error}"))
}

/// Runs one session on `client` (whose event loop feeds `inbound`) until shutdown, its loss,
/// or a failed state write.
pub(crate) async fn run<R: ContainerRuntime>(
    shared: &Arc<Shared<R>>,
    url: &MqttUrl,
    client: AsyncClient,
    mut inbound: mpsc::UnboundedReceiver<Inbound>,
) -> Result<End, StateError> {
    let accepted = tokio::select! {
        () = shared.shutdown.cancelled() => return Ok(End::Shutdown),
        accepted = tokio::time::timeout(CONNECT_TIMEOUT, connack(&mut inbound)) => accepted,
    };
    match accepted {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Ok(End::Unreachable(reason)),
        Err(_) => {
            return Ok(End::Unreachable(format!(
                "no CONNACK within {} s",
                CONNECT_TIMEOUT.as_secs()
            )));
        }
    }
    tracing::info!(device = %shared.config.device_id, broker = %url, "connected to the MQTT broker");
    let alive = Arc::new(AtomicBool::new(true));
    let stop = shared.shutdown.child_token();
    let reporter = tokio::spawn({
        let publisher = MqttReports {
            client: client.clone(),
            topic: names::report_topic(&shared.config.device_id),
            alive: alive.clone(),
        };
        let reports = report_loop(shared.clone(), publisher, stop.clone());
        async move {
            // The session notices a lost connection by itself; this only says why the
            // reporter stopped.
            if let FlowEnd::ConnectionLost(reason) = reports.await {
                tracing::debug!(reason, "the reporter stopped: the MQTT session is gone");
            }
        }
        .in_current_span()
    });
    let mut session = Session {
        shared: shared.clone(),
        client: client.clone(),
        inbound,
        alive,
        reply_topic: names::reply_topic(&shared.config.device_id),
        subscribed: BTreeSet::new(),
        pending: VecDeque::new(),
        resync: Vec::new(),
    };
    let stopped = session.flow().await;
    // The reporter sends its goodbye on a shutdown (queued before the disconnect below); one
    // stuck (a hung engine call in a report) does not outlive its session.
    stop.cancel();
    let mut reporter = reporter;
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut reporter)
        .await
        .is_err()
    {
        reporter.abort();
    }
    match stopped {
        Stop::Shutdown => {
            // Best effort, time-limited: the goodbye report and a clean DISCONNECT, so the
            // broker drops the session at once.
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if client.disconnect().await.is_ok() {
                    while let Some(event) = session.inbound.recv().await {
                        if matches!(event, Inbound::Lost(_)) {
                            break;
                        }
                    }
                }
            })
            .await;
            Ok(End::Shutdown)
        }
        Stop::Lost(reason) => Ok(End::Lost(reason)),
        Stop::State(error) => Err(error),
    }
}

/// Waits for the broker to accept the session.
async fn connack(inbound: &mut mpsc::UnboundedReceiver<Inbound>) -> Result<(), String> {
    match inbound.recv().await {
        Some(Inbound::Connected) => Ok(()),
        Some(Inbound::Lost(reason)) => Err(reason),
        Some(other) => Err(format!("expected CONNACK, got {other:?}")),
        None => Err("the MQTT event loop ended".into()),
    }
}

/// Reports on `report/<device>`, QoS 1. Taken once queued: MQTT acknowledges them
/// asynchronously, and a report lost with the session is replaced by the next one.
struct MqttReports {
    client: AsyncClient,
    topic: String,
    alive: Arc<AtomicBool>,
}

impl ReportPublisher for MqttReports {
    async fn publish(&mut self, payload: &[u8]) -> Result<(), String> {
        self.client
            .publish(
                self.topic.as_str(),
                QoS::AtLeastOnce,
                false,
                payload.to_vec(),
            )
            .await
            .map_err(|error| error.to_string())
    }

    fn connected(&self) -> bool {
        self.alive.load(Ordering::Relaxed)
    }
}

struct Session<R> {
    shared: Arc<Shared<R>>,
    client: AsyncClient,
    inbound: mpsc::UnboundedReceiver<Inbound>,
    /// False once the session is known lost (for the reporter).
    alive: Arc<AtomicBool>,
    reply_topic: String,
    /// Topics subscribed to in this session.
    subscribed: BTreeSet<String>,
    /// Changes received during a sync or a subscription, applied after it.
    pending: VecDeque<Publish>,
    /// Targets to sync again, and when (a "not found" from an unknown store, say).
    resync: Vec<(Target, Instant, Backoff)>,
}

impl<R: ContainerRuntime> Session<R> {
    fn targets(&self) -> Vec<Target> {
        match &self.shared.config.mode {
            crate::config::Mode::Group(group) => vec![Target::Group(group.clone())],
            crate::config::Mode::Apps(apps) => apps.iter().cloned().map(Target::App).collect(),
        }
    }

    /// The whole session: subscribe, sync, then apply changes until it ends.
    async fn flow(&mut self) -> Stop {
        match self.boot_and_follow().await {
            Ok(never) => match never {},
            Err(stop) => stop,
        }
    }

    async fn boot_and_follow(&mut self) -> Result<std::convert::Infallible, Stop> {
        let targets = self.targets();
        let mut topics = vec![self.reply_topic.clone()];
        for target in &targets {
            topics.extend(self.wanted_topics(target).await);
        }
        self.subscribe(topics).await?;
        for target in &targets {
            self.sync(target).await?;
        }
        tracing::info!(
            targets = targets.len(),
            topics = self.subscribed.len(),
            "synced; following changes"
        );
        loop {
            if let Some(publish) = self.pending.pop_front() {
                // Acknowledged when it was held.
                self.handle(publish, false).await?;
                continue;
            }
            let due = self.resync.iter().map(|(_, at, _)| *at).min();
            let inbound = tokio::select! {
                () = sleep_until(due) => {
                    self.sync_due().await?;
                    continue;
                }
                inbound = self.recv() => inbound?,
            };
            if let Inbound::Message(publish) = inbound {
                self.handle(publish, true).await?;
            }
        }
    }

    /// The next event of the session; its loss and the agent's shutdown are errors.
    async fn recv(&mut self) -> Result<Inbound, Stop> {
        let inbound = tokio::select! {
            () = self.shared.shutdown.cancelled() => return Err(Stop::Shutdown),
            inbound = self.inbound.recv() => inbound,
        };
        match inbound {
            Some(Inbound::Lost(reason)) => {
                self.alive.store(false, Ordering::Relaxed);
                Err(Stop::Lost(reason))
            }
            None => {
                self.alive.store(false, Ordering::Relaxed);
                Err(Stop::Lost("the MQTT event loop ended".into()))
            }
            Some(inbound) => Ok(inbound),
        }
    }

    /// The topics `target` needs: its own, and for a group its member apps' as the held
    /// group document lists them.
    async fn wanted_topics(&self, target: &Target) -> Vec<String> {
        match target {
            Target::App(app) => vec![names::app_topic(app)],
            Target::Group(group) => {
                let mut topics = vec![names::group_topic(group)];
                if let Some(held) = self.shared.desired().await.group
                    && &held.device_group == group
                {
                    topics.extend(held.apps.iter().map(names::app_topic));
                }
                topics
            }
        }
    }

    /// Subscribes to `topics` (QoS 1) and waits for the broker to take them. Changes that
    /// arrive meanwhile wait in `pending`.
    async fn subscribe(&mut self, topics: Vec<String>) -> Result<(), Stop> {
        let topics: Vec<String> = topics
            .into_iter()
            .filter(|topic| !self.subscribed.contains(topic))
            .collect();
        if topics.is_empty() {
            return Ok(());
        }
        self.client
            .subscribe_many(
                topics
                    .iter()
                    .map(|topic| SubscribeFilter::new(topic.clone(), QoS::AtLeastOnce)),
            )
            .await
            .map_err(lost)?;
        let deadline = tokio::time::sleep(SUBSCRIBE_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            let inbound = tokio::select! {
                () = &mut deadline => {
                    return Err(Stop::Lost(format!(
                        "no SUBACK within {} s",
                        SUBSCRIBE_TIMEOUT.as_secs()
                    )));
                }
                inbound = self.recv() => inbound?,
            };
            match inbound {
                Inbound::Subscribed(ack) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|code| matches!(code, SubscribeReasonCode::Failure))
                    {
                        // A broker account without read rights on these topics: nothing
                        // this session can do; the next one asks again after the backoff.
                        return Err(Stop::Lost(format!(
                            "the broker refused a subscription to {topics:?}"
                        )));
                    }
                    tracing::debug!(?topics, "subscribed");
                    self.subscribed.extend(topics);
                    return Ok(());
                }
                Inbound::Message(publish) => self.hold(publish).await?,
                Inbound::Connected | Inbound::Lost(_) => {}
            }
        }
    }

    /// Keeps a change for after the sync or subscription in progress, acknowledged now (the
    /// one exception to "acknowledged once persisted"): the broker sends a session only so
    /// many unacknowledged messages (10 by default), and the reply being waited for must not
    /// queue behind them. Lost before it is applied (a crash, a lost session), it is made up
    /// for by the sync every session starts with.
    async fn hold(&mut self, publish: Publish) -> Result<(), Stop> {
        self.client.ack(&publish).await.map_err(lost)?;
        if publish.topic != self.reply_topic {
            self.pending.push_back(publish);
        }
        Ok(())
    }

    /// Syncs `target` until its subscriptions cover every member the answer names.
    async fn sync(&mut self, target: &Target) -> Result<(), Stop> {
        loop {
            // Attempts of their own for each pass: a late reply to a request of the pass
            // before was computed before the new subscriptions took, and must not count.
            let mut attempts = SyncAttempts::new(
                &self.shared.config.device_id,
                self.shared.config.sync_timeout,
                self.shared.config.max_sync_timeout,
            );
            let reply = self.request_sync(target, &mut attempts).await?;
            let outcome = apply_sync_reply(&self.shared, target, reply).await?;
            self.resync.retain(|(pending, _, _)| pending != target);
            if matches!(
                outcome,
                SyncOutcome::Mismatched
                    | SyncOutcome::NotFoundElsewhere {
                        held_anything: true,
                        ..
                    }
                    | SyncOutcome::NotFoundElsewhere { known: Some(_), .. }
            ) {
                // Perhaps another control plane answers right: ask again later.
                let mut backoff =
                    Backoff::new(Duration::from_secs(1), self.shared.config.max_backoff);
                let at = Instant::now() + backoff.next_delay();
                self.resync.push((target.clone(), at, backoff));
            }
            if !self.follow_members(target).await? {
                return Ok(());
            }
        }
    }

    /// Syncs the targets whose retry is due.
    async fn sync_due(&mut self) -> Result<(), Stop> {
        let now = Instant::now();
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.resync)
            .into_iter()
            .partition(|(_, at, _)| *at <= now);
        self.resync = waiting;
        for (target, _, mut backoff) in due {
            self.sync(&target).await?;
            // Still to be asked again: later than before.
            if let Some(entry) = self
                .resync
                .iter_mut()
                .find(|(pending, _, _)| *pending == target)
            {
                entry.1 = Instant::now() + backoff.next_delay();
                entry.2 = backoff;
            }
        }
        Ok(())
    }

    /// Asks for `target`'s state until a reply to one of `attempts` arrives.
    async fn request_sync(
        &mut self,
        target: &Target,
        attempts: &mut SyncAttempts,
    ) -> Result<SyncReply, Stop> {
        loop {
            let (correlation_id, timeout) = attempts.next_attempt();
            let request = Message::SyncRequest(SyncRequest {
                device_id: self.shared.config.device_id.clone(),
                target: target.sync_target(),
                correlation_id: correlation_id.clone(),
                agent_version: AGENT_VERSION.to_string(),
                known_store: self.shared.known_store().await,
            });
            self.client
                .publish(names::SYNC_TOPIC, QoS::AtLeastOnce, false, encode(&request))
                .await
                .map_err(lost)?;
            tracing::debug!(target = %target, correlation_id, timeout_ms = timeout.as_millis() as u64, "sent sync request");
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                let inbound = tokio::select! {
                    () = &mut deadline => {
                        tracing::warn!(target = %target, timeout_s = timeout.as_secs_f32(), "no sync reply yet; asking again (a reply to any earlier request still counts)");
                        break;
                    }
                    inbound = self.recv() => inbound?,
                };
                let Inbound::Message(publish) = inbound else {
                    continue;
                };
                if publish.topic != self.reply_topic {
                    self.hold(publish).await?;
                    continue;
                }
                self.client.ack(&publish).await.map_err(lost)?;
                match decode(&publish.payload) {
                    Ok(Message::SyncReply(reply)) if attempts.answers(&reply.correlation_id) => {
                        return Ok(reply);
                    }
                    Ok(other) => {
                        tracing::debug!(target = %target, kind = other.kind(), "ignoring a reply to another request");
                    }
                    Err(error) => {
                        tracing::warn!(target = %target, error = %error, "ignoring a sync reply that does not decode");
                    }
                }
            }
        }
    }

    /// Group mode: subscribes to the member apps' topics the held group document names and
    /// drops those of apps that left. `true` when it subscribed to a new one (the group is
    /// then synced again).
    async fn follow_members(&mut self, target: &Target) -> Result<bool, Stop> {
        let Target::Group(group) = target else {
            return Ok(false);
        };
        let wanted: BTreeSet<String> = self.wanted_topics(target).await.into_iter().collect();
        let group_topic = names::group_topic(group);
        let dropped: Vec<String> = self
            .subscribed
            .iter()
            .filter(|topic| {
                **topic != self.reply_topic && **topic != group_topic && !wanted.contains(*topic)
            })
            .cloned()
            .collect();
        for topic in dropped {
            // No need to wait: a change that still arrives is not about the group any more,
            // and the desired state ignores it.
            self.client
                .unsubscribe(topic.as_str())
                .await
                .map_err(lost)?;
            self.subscribed.remove(&topic);
        }
        let new: Vec<String> = wanted
            .into_iter()
            .filter(|topic| !self.subscribed.contains(topic))
            .collect();
        if new.is_empty() {
            return Ok(false);
        }
        tracing::info!(group = %group, topics = ?new, "following the group's new member apps");
        self.subscribe(new).await?;
        Ok(true)
    }

    /// The target a change on `topic` is for (none for the reply topic: a late sync reply).
    fn target_of(&self, topic: &str) -> Option<Target> {
        if topic == self.reply_topic {
            return None;
        }
        self.targets().into_iter().find(|target| match target {
            Target::App(app) => topic == names::app_topic(app),
            Target::Group(group) => {
                topic == names::group_topic(group) || self.subscribed.contains(topic)
            }
        })
    }

    /// Applies one change, then acknowledges it when `ack` (not yet done: it was not held),
    /// so that it is acknowledged only once persisted.
    async fn handle(&mut self, publish: Publish, ack: bool) -> Result<(), Stop> {
        let Some(target) = self.target_of(&publish.topic) else {
            // A late sync reply, or a topic just left.
            return self.ack(&publish, ack).await;
        };
        let message = match decode(&publish.payload) {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(target = %target, topic = publish.topic, error = %error, bytes = publish.payload.len(), "dropping a message that does not decode or validate");
                return self.ack(&publish, ack).await;
            }
        };
        let dispatched = apply_change(&self.shared, &target, message).await?;
        self.ack(&publish, ack).await?;
        if !dispatched.changes.is_empty() {
            self.shared.report_now.notify_one();
        }
        if dispatched.changes.group && self.follow_members(&target).await? {
            // Changes of the new members published before their subscription took.
            self.sync(&target).await?;
        }
        Ok(())
    }
}

impl<R> Session<R> {
    /// Acknowledges `publish` when `ack` (each delivery once: a broker may reuse a packet id
    /// once it is acknowledged).
    async fn ack(&self, publish: &Publish, ack: bool) -> Result<(), Stop> {
        if ack {
            self.client.ack(publish).await.map_err(lost)?;
        }
        Ok(())
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
