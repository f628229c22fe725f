//! The change logic shared by REST, the outbox and the sync responder.
//!
//! Codemap: [`resource`] (what a kind of object is: naming, versions, stored body, broker
//! hooks), [`write`] (the one write path of every kind, with per-object combining), [`apps`]
//! and [`groups`] (each kind's broker side; groups derive their exchange bindings from the
//! store), [`outbox`] (republishing what was never confirmed, and topology at start),
//! [`devices`] (the device registry fed by reports, and rollout status), [`credentials`]
//! (devices' own broker credentials: the record and the broker user), [`reports`] (the
//! report history).
//!
//! Failure policy: a store that is unreachable, or a broker that fails, ends the instance
//! (the caller gets an error, the outbox of the next instance finishes the change). A
//! corrupt record is an error of that object only (REST 500, skipped by the outbox, rejected
//! in sync), and a broker 404 is that object's race with another instance.

pub mod apps;
pub mod audit;
pub mod credentials;
pub mod cron_jobs;
pub mod devices;
pub mod groups;
pub mod outbox;
pub mod provisioning;
pub mod reports;
pub(crate) mod resource;
pub mod users;
pub(crate) mod write;

use crate::broker::Publisher;
use crate::error::{AmqpError, StoreError};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{Kind, Store};
use nebula_protocol::{AppConfig, CronJob, DeviceGroup, GroupState, Name, StoreId};
use resource::{Lifecycle, Resource};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use write::{Change, ChangeFn, Rejected, Writes};

pub use outbox::PendingSet;

/// Why a service operation did not happen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServiceError {
    #[error("app {0} does not exist")]
    AppNotFound(Name),
    #[error("app {0} already exists")]
    AppExists(Name),
    #[error("device group {0} does not exist")]
    GroupNotFound(Name),
    #[error("device group {0} already exists")]
    GroupExists(Name),
    #[error("cron job {0} does not exist")]
    CronJobNotFound(Name),
    #[error("cron job {0} already exists")]
    CronJobExists(Name),
    #[error("user {0} does not exist")]
    UserNotFound(Name),
    #[error("user {0} already exists")]
    UserExists(Name),
    #[error("user group {0} does not exist")]
    UserGroupNotFound(Name),
    #[error("user group {0} already exists")]
    UserGroupExists(Name),
    /// A token given for a user is another user's.
    #[error("the token is taken")]
    TokenTaken,
    /// A secret could not be made or hashed (no randomness, a failed hashing task).
    #[error("secret: {0}")]
    Secret(String),
    #[error("app {0} is not running")]
    NotRunning(Name),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Amqp(AmqpError),
    /// The caller's own change function refused the change (its caller holds the reason).
    #[error("change rejected")]
    Rejected,
    /// The write was cut short by shutdown before its outcome was known.
    #[error("the write was interrupted by shutdown")]
    Interrupted,
}

/// A compare-and-swap write of `name` that kept losing to other writes of it.
fn conflict(kind: Kind, name: &str) -> ServiceError {
    ServiceError::Store(StoreError::Conflict {
        kind: kind.label(),
        name: name.to_string(),
        expected: 0,
    })
}

/// A typed document with the record bookkeeping around it.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    pub version: u64,
    pub pending_publish: bool,
    pub tombstone: bool,
    pub document: T,
    /// Links the broker may still hold though the document no longer lists them.
    pub detach: Vec<Name>,
}

/// A device group with the full config of each member app.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    pub group: DeviceGroup,
    pub apps: Vec<AppConfig>,
    pub cron_jobs: Vec<CronJob>,
}

/// How long a sync request from an agent that knows another store is remembered for
/// `/readyz`.
const FOREIGN_STORE_MEMORY: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    broker: Arc<dyn Publisher>,
    shutdown: Shutdown,
    publishing: outbox::InFlight,
    metrics: Arc<Metrics>,
    apps: Arc<Writes<AppConfig>>,
    groups: Arc<Writes<DeviceGroup>>,
    cron_jobs: Arc<Writes<CronJob>>,
    /// Store ids agents asking this instance last synced with, other than ours, and when.
    foreign_stores: Arc<Mutex<BTreeMap<StoreId, Instant>>>,
    /// Set once the store was seen holding something, so that `/readyz` (polled by load
    /// balancers) lists a store only while it is empty, which is cheap.
    seen_non_empty: Arc<std::sync::atomic::AtomicBool>,
    /// The write batches and their settling, so that shutdown waits for them before it
    /// closes the broker connection.
    tasks: tokio_util::task::TaskTracker,
    /// The last online/offline count of the registry for `/metrics`, and when it was made
    /// (`devices::DEVICE_COUNTS_TTL`).
    device_counts: Arc<tokio::sync::Mutex<Option<devices::CountedDevices>>>,
    /// Whether each device's agent queue existed when last asked, and when
    /// (`devices::PRESENCE_TTL`).
    presence: Arc<std::sync::Mutex<std::collections::HashMap<String, devices::Probed>>>,
    /// How much report history is kept (`reports`).
    report_retention: reports::Retention,
    /// How long audit entries are kept (`audit`).
    audit_ttl: Duration,
}

impl Service {
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Publisher>, shutdown: Shutdown) -> Self {
        Self {
            store,
            broker,
            shutdown,
            publishing: outbox::InFlight::default(),
            metrics: Arc::default(),
            apps: Arc::default(),
            groups: Arc::default(),
            cron_jobs: Arc::default(),
            foreign_stores: Arc::default(),
            seen_non_empty: Arc::default(),
            tasks: tokio_util::task::TaskTracker::new(),
            device_counts: Arc::default(),
            presence: Arc::default(),
            report_retention: reports::Retention::default(),
            audit_ttl: crate::audit::DEFAULT_TTL,
        }
    }

    /// The same service writing through another broker: the broker link prepares a new
    /// connection with it (topology, outbox) before the instance's writes go through it.
    pub fn with_broker(&self, broker: Arc<dyn Publisher>) -> Self {
        Self {
            broker,
            ..self.clone()
        }
    }

    /// Waits up to `grace` for the writes still running (at shutdown, after the HTTP server
    /// stopped taking requests). Returns whether they all finished.
    pub async fn finish_writes(&self, grace: std::time::Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn broker(&self) -> &Arc<dyn Publisher> {
        &self.broker
    }

    /// Wraps a store error; an unavailable store ends the instance.
    fn store_error(&self, error: StoreError) -> ServiceError {
        if error.is_fatal() {
            self.shutdown.fail(&error);
        }
        ServiceError::Store(error)
    }

    /// Wraps a broker error. The instance goes on: the broker link drops a failed connection
    /// and makes a new one by itself (`broker::link`), and the outbox then finishes the
    /// change, whose flag stays set in the store.
    fn broker_error(&self, error: AmqpError) -> ServiceError {
        ServiceError::Amqp(error)
    }

    /// Publishes one message with a confirm and counts it.
    async fn publish(
        &self,
        exchange: &str,
        message: &nebula_protocol::Message,
    ) -> Result<(), ServiceError> {
        let started = Instant::now();
        self.broker
            .publish(exchange, message)
            .await
            .map_err(|error| self.broker_error(error))?;
        self.metrics.confirm_latency(started.elapsed());
        self.metrics.change_published();
        Ok(())
    }

    /// Declares the exchange of an object's `incarnation` and binds it into `amq.topic` for
    /// MQTT agents (once per incarnation, see `broker::exposed`).
    async fn declare_object_exchange(
        &self,
        exchange: &str,
        incarnation: nebula_protocol::Incarnation,
    ) -> Result<(), ServiceError> {
        self.broker
            .declare_exchange(exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        self.broker
            .expose_to_mqtt(exchange, incarnation)
            .await
            .map_err(|error| self.broker_error(error))
    }

    /// Tells the devices an object is gone: declares its exchange (a publish to a missing
    /// one fails) and publishes the delete. Another instance finishing the same delete first,
    /// and dropping the exchange in between, is not an error.
    async fn publish_delete(
        &self,
        exchange: &str,
        incarnation: nebula_protocol::Incarnation,
        message: &nebula_protocol::Message,
    ) -> Result<(), ServiceError> {
        self.declare_object_exchange(exchange, incarnation).await?;
        match self.publish(exchange, message).await {
            Err(ServiceError::Amqp(error)) if error.is_not_found() => Ok(()),
            result => result,
        }
    }

    /// Drops an object's exchange, and with it every binding to or from it.
    async fn delete_exchange(&self, exchange: &str) -> Result<(), ServiceError> {
        self.broker
            .delete_exchange(exchange)
            .await
            .map_err(|error| self.broker_error(error))
    }

    // ----- foreign stores ----------------------------------------------------------------

    /// Remembers that an agent asked this instance while holding state from another store:
    /// this instance may be running on the wrong (perhaps empty) store.
    pub fn foreign_store_seen(&self, store: StoreId) {
        let first = write::lock(&self.foreign_stores)
            .insert(store, Instant::now())
            .is_none();
        self.metrics.sync_foreign_store();
        if first {
            tracing::error!(
                ours = %self.store.identity(),
                theirs = %store,
                "an agent synced before with another store than this instance's: is this control plane on the wrong data directory or database?"
            );
        }
    }

    /// Other stores agents synced with, seen within the last hour.
    pub fn foreign_stores(&self) -> Vec<StoreId> {
        let mut seen = write::lock(&self.foreign_stores);
        seen.retain(|_, at| at.elapsed() < FOREIGN_STORE_MEMORY);
        seen.keys().copied().collect()
    }

    // ----- reads -------------------------------------------------------------------------

    /// The stored object, tombstones included. A corrupt body is that object's error.
    async fn read<R: Resource>(&self, name: &Name) -> Result<Option<Stored<R>>, ServiceError> {
        let Some(record) = self
            .store
            .get(R::KIND, name.as_str())
            .await
            .map_err(|error| self.store_error(error))?
        else {
            return Ok(None);
        };
        self.parse(record).map(Some)
    }

    /// A record as its typed document. A body that does not parse is counted, logged, and
    /// that object's error.
    fn parse<R: Resource>(&self, record: crate::store::Record) -> Result<Stored<R>, ServiceError> {
        let (document, detach) = R::from_body(&record.name, &record.body).map_err(|error| {
            self.metrics.corrupt_record();
            tracing::error!(kind = R::KIND.label(), name = %record.name, error = %error, "corrupt record");
            self.store_error(error)
        })?;
        Ok(Stored {
            version: record.version,
            pending_publish: record.pending_publish,
            tombstone: record.tombstone,
            document,
            detach,
        })
    }

    /// The live (not tombstoned) object, if any.
    async fn get<R: Resource>(&self, name: &Name) -> Result<Option<R>, ServiceError> {
        Ok(self
            .read::<R>(name)
            .await?
            .filter(|stored| !stored.tombstone)
            .map(|stored| stored.document))
    }

    pub async fn get_app(&self, name: &Name) -> Result<Option<AppConfig>, ServiceError> {
        self.get(name).await
    }

    pub async fn get_group(&self, name: &Name) -> Result<Option<DeviceGroup>, ServiceError> {
        self.get(name).await
    }

    pub async fn get_cron_job(&self, name: &Name) -> Result<Option<CronJob>, ServiceError> {
        self.get(name).await
    }

    /// Names of the live objects of a kind, sorted. Bodies are not parsed: a corrupt object
    /// is still listed (and answers 500 when read).
    async fn live_names(&self, kind: Kind) -> Result<Vec<String>, ServiceError> {
        let records = self
            .store
            .list(kind)
            .await
            .map_err(|error| self.store_error(error))?;
        Ok(records
            .into_iter()
            .filter(|record| !record.tombstone)
            .map(|record| record.name)
            .collect())
    }

    pub async fn list_apps(&self) -> Result<Vec<String>, ServiceError> {
        self.live_names(Kind::App).await
    }

    pub async fn list_groups(&self) -> Result<Vec<String>, ServiceError> {
        self.live_names(Kind::DeviceGroup).await
    }

    pub async fn list_cron_jobs(&self) -> Result<Vec<String>, ServiceError> {
        self.live_names(Kind::CronJob).await
    }

    /// Objects whose last change the broker has not confirmed yet (for `/metrics`).
    pub async fn outbox_backlog(&self) -> Result<u64, ServiceError> {
        let mut backlog = 0;
        for kind in Kind::PUBLISHED {
            backlog += self
                .store
                .pending(kind)
                .await
                .map_err(|error| self.store_error(error))?
                .len() as u64;
        }
        Ok(backlog)
    }

    /// Whether the store holds no object at all (a new store, or one on the wrong path).
    /// Once it held something it is taken as not empty from then on.
    pub async fn store_is_empty(&self) -> Result<bool, ServiceError> {
        use std::sync::atomic::Ordering;
        if self.seen_non_empty.load(Ordering::Relaxed) {
            return Ok(false);
        }
        for kind in Kind::ALL {
            if !self
                .store
                .list(kind)
                .await
                .map_err(|error| self.store_error(error))?
                .is_empty()
            {
                self.seen_non_empty.store(true, Ordering::Relaxed);
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A group with the current config of every member app and cron job it can read (for
    /// `/info`).
    pub async fn group_info(&self, name: &Name) -> Result<Option<GroupInfo>, ServiceError> {
        Ok(self.group_state(name).await?.map(|state| GroupInfo {
            group: state.group,
            apps: state.apps,
            cron_jobs: state.cron_jobs,
        }))
    }

    /// A group as its devices get it (sync, and every publish of the group), see
    /// [`groups::group_state`].
    pub async fn group_state(&self, name: &Name) -> Result<Option<GroupState>, ServiceError> {
        match self.get_group(name).await? {
            Some(group) => Ok(Some(groups::group_state(self, &group).await?)),
            None => Ok(None),
        }
    }

    // ----- writes ------------------------------------------------------------------------

    async fn create<R: Lifecycle>(&self, document: R) -> Result<R, ServiceError> {
        let name = document.name().clone();
        R::writes(self)
            .submit(self, &name, Change::Create(document))
            .await?
            .ok_or(ServiceError::Interrupted)
    }

    /// Read-modify-write of an object: `change` gets the current document and returns the
    /// new one (or an error that aborts this change alone). With `revise`, the revision goes
    /// up by exactly one. Generic over the error so that callers can abort with their own (a
    /// REST handler's validation answer); service errors convert into it.
    async fn update<R, E>(
        &self,
        name: &Name,
        revise: bool,
        change: impl Fn(&R) -> Result<R, E> + Send + Sync + 'static,
    ) -> Result<R, E>
    where
        R: Lifecycle,
        E: From<ServiceError> + Send + 'static,
    {
        let rejection: Arc<Mutex<Option<E>>> = Arc::default();
        let keep = Arc::clone(&rejection);
        let change: ChangeFn<R> = Box::new(move |current| {
            change(current).map_err(|error| {
                *write::lock(&keep) = Some(error);
                Rejected
            })
        });
        match R::writes(self)
            .submit(self, name, Change::Update { change, revise })
            .await
        {
            Ok(Some(document)) => Ok(document),
            Ok(None) => Err(ServiceError::Interrupted.into()),
            Err(ServiceError::Rejected) => Err(write::lock(&rejection)
                .take()
                .unwrap_or_else(|| ServiceError::Interrupted.into())),
            Err(error) => Err(error.into()),
        }
    }

    async fn delete<R: Lifecycle>(&self, name: &Name) -> Result<(), ServiceError> {
        R::writes(self)
            .submit(self, name, Change::Delete)
            .await
            .map(|_| ())
    }

    /// Creates an app at revision 1 with a new incarnation.
    pub async fn create_app(&self, config: AppConfig) -> Result<AppConfig, ServiceError> {
        self.create(config).await
    }

    /// Changes an app (see [`Service::update`]); `app_id` goes up by one.
    pub async fn update_app<E: From<ServiceError> + Send + 'static>(
        &self,
        name: &Name,
        change: impl Fn(&AppConfig) -> Result<AppConfig, E> + Send + Sync + 'static,
    ) -> Result<AppConfig, E> {
        self.update(name, true, change).await
    }

    /// Deletes an app: tombstone, then `AppDeleted`, removal from every group, the exchange.
    pub async fn delete_app(&self, name: &Name) -> Result<(), ServiceError> {
        self.delete::<AppConfig>(name).await
    }

    /// Creates a device group at revision 1 (and `prune_id` 1) with a new incarnation.
    pub async fn create_group(&self, group: DeviceGroup) -> Result<DeviceGroup, ServiceError> {
        self.create(group).await
    }

    /// Changes a group's membership; `device_group_id` goes up by one.
    pub async fn update_group<E: From<ServiceError> + Send + 'static>(
        &self,
        name: &Name,
        change: impl Fn(&DeviceGroup) -> Result<DeviceGroup, E> + Send + Sync + 'static,
    ) -> Result<DeviceGroup, E> {
        self.update(name, true, move |current: &DeviceGroup| {
            let mut group = change(current)?;
            group.prune_id = current.prune_id;
            Ok(group)
        })
        .await
    }

    /// Bumps a group's `prune_id` (not its revision): its devices remove unused images.
    pub async fn prune_group(&self, name: &Name) -> Result<DeviceGroup, ServiceError> {
        self.update(name, false, |current: &DeviceGroup| {
            let mut group = current.clone();
            group.prune_id = current.prune_id + 1;
            Ok::<_, ServiceError>(group)
        })
        .await
    }

    /// Prunes every group; returns each group's new `prune_id`.
    pub async fn prune_all(&self) -> Result<BTreeMap<String, u64>, ServiceError> {
        let mut prune_ids = BTreeMap::new();
        for name in self.list_groups().await? {
            let Ok(name) = Name::new(name) else { continue };
            match self.prune_group(&name).await {
                Ok(group) => {
                    prune_ids.insert(name.to_string(), group.prune_id);
                }
                // Deleted since it was listed.
                Err(ServiceError::GroupNotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        Ok(prune_ids)
    }

    pub async fn delete_group(&self, name: &Name) -> Result<(), ServiceError> {
        self.delete::<DeviceGroup>(name).await
    }

    /// Creates a cron job at revision 1 with a new incarnation.
    pub async fn create_cron_job(&self, job: CronJob) -> Result<CronJob, ServiceError> {
        self.create(job).await
    }

    /// Changes a cron job (see [`Service::update`]); `cron_job_id` goes up by one.
    pub async fn update_cron_job<E: From<ServiceError> + Send + 'static>(
        &self,
        name: &Name,
        change: impl Fn(&CronJob) -> Result<CronJob, E> + Send + Sync + 'static,
    ) -> Result<CronJob, E> {
        self.update(name, true, change).await
    }

    /// Deletes a cron job: tombstone, then removal from every group (whose devices then stop
    /// running it).
    pub async fn delete_cron_job(&self, name: &Name) -> Result<(), ServiceError> {
        self.delete::<CronJob>(name).await
    }
}
