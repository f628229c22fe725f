//! The change logic shared by REST, the outbox and the sync responder.
//!
//! Every change follows the write path of DESIGN §3: a compare-and-swap store write that
//! bumps the revision and sets the outbox flag atomically, then the broker work (topology and
//! a confirmed publish of the full state), then clearing the flag for that version. A broker
//! or store failure is fatal: the caller gets an error, the instance exits, and the outbox of
//! the next instance to start republishes the change.
//!
//! Deletes leave a tombstone (flagged like any change) until the broker knows, so a crash in
//! the middle of a delete is finished by the outbox too.

use crate::broker::Publisher;
use crate::error::{AmqpError, StoreError};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::store::{
    AppDocument, GroupDocument, Kind, Record, Store, Stored, from_record, to_record,
};
use nebula_protocol::{AppConfig, DeviceGroup, GroupState, Message, Name, Revision, names};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a service operation did not happen.
#[derive(Debug, thiserror::Error)]
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
    #[error("app {0} is not running")]
    NotRunning(Name),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Amqp(AmqpError),
}

/// A device group with the full config of each member app.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInfo {
    pub group: DeviceGroup,
    pub apps: Vec<AppConfig>,
}

#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    broker: Arc<dyn Publisher>,
    shutdown: Shutdown,
    publishing: InFlight,
    metrics: Arc<Metrics>,
}

type StoredApp = Stored<AppConfig>;
type StoredGroup = Stored<DeviceGroup>;

impl Service {
    pub fn new(store: Arc<dyn Store>, broker: Arc<dyn Publisher>, shutdown: Shutdown) -> Self {
        Self {
            store,
            broker,
            shutdown,
            publishing: InFlight::default(),
            metrics: Arc::default(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Publishes one message with a confirm and counts it.
    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), ServiceError> {
        self.broker
            .publish(exchange, message)
            .await
            .map_err(|error| self.broker_error(error))?;
        self.metrics.change_published();
        Ok(())
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    pub fn broker(&self) -> &Arc<dyn Publisher> {
        &self.broker
    }

    /// Wraps a store error; an unavailable or corrupt store ends the instance.
    fn store_error(&self, error: StoreError) -> ServiceError {
        if error.is_fatal() {
            self.shutdown.fail(&error);
        }
        ServiceError::Store(error)
    }

    /// Wraps a broker error; every one ends the instance (the outbox finishes the change).
    fn broker_error(&self, error: AmqpError) -> ServiceError {
        self.shutdown.fail(&error);
        ServiceError::Amqp(error)
    }

    // ----- reads -------------------------------------------------------------------------

    async fn read_app(&self, name: &Name) -> Result<Option<StoredApp>, ServiceError> {
        let record = self
            .store
            .get(Kind::App, name.as_str())
            .await
            .map_err(|error| self.store_error(error))?;
        record
            .map(|record| self.app_from_record(record))
            .transpose()
    }

    fn app_from_record(&self, record: Record) -> Result<StoredApp, ServiceError> {
        let stored: Stored<AppDocument> =
            from_record(Kind::App, record).map_err(|error| self.store_error(error))?;
        let config = stored
            .document
            .to_config()
            .map_err(|error| self.store_error(error))?;
        Ok(Stored {
            version: stored.version,
            pending_publish: stored.pending_publish,
            tombstone: stored.tombstone,
            document: config,
        })
    }

    async fn read_group(&self, name: &Name) -> Result<Option<StoredGroup>, ServiceError> {
        let record = self
            .store
            .get(Kind::DeviceGroup, name.as_str())
            .await
            .map_err(|error| self.store_error(error))?;
        record
            .map(|record| self.group_from_record(record))
            .transpose()
    }

    fn group_from_record(&self, record: Record) -> Result<StoredGroup, ServiceError> {
        let stored: Stored<GroupDocument> =
            from_record(Kind::DeviceGroup, record).map_err(|error| self.store_error(error))?;
        let group = stored
            .document
            .to_group()
            .map_err(|error| self.store_error(error))?;
        Ok(Stored {
            version: stored.version,
            pending_publish: stored.pending_publish,
            tombstone: stored.tombstone,
            document: group,
        })
    }

    /// The live (not tombstoned) app, if any.
    pub async fn get_app(&self, name: &Name) -> Result<Option<AppConfig>, ServiceError> {
        Ok(self
            .read_app(name)
            .await?
            .filter(|stored| !stored.tombstone)
            .map(|stored| stored.document))
    }

    pub async fn get_group(&self, name: &Name) -> Result<Option<DeviceGroup>, ServiceError> {
        Ok(self
            .read_group(name)
            .await?
            .filter(|stored| !stored.tombstone)
            .map(|stored| stored.document))
    }

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

    /// A group with the current config of every member app (for `/info` and sync).
    pub async fn group_info(&self, name: &Name) -> Result<Option<GroupInfo>, ServiceError> {
        let Some(group) = self.get_group(name).await? else {
            return Ok(None);
        };
        let mut apps = Vec::with_capacity(group.apps.len());
        for app in &group.apps {
            // An app deleted a moment ago may still be listed until its delete finishes
            // removing it from the group; leaving it out is what the group will say next.
            if let Some(config) = self.get_app(app).await? {
                apps.push(config);
            }
        }
        Ok(Some(GroupInfo { group, apps }))
    }

    pub async fn group_state(&self, name: &Name) -> Result<Option<GroupState>, ServiceError> {
        Ok(self.group_info(name).await?.map(|info| GroupState {
            group: info.group,
            apps: info.apps,
            cron_jobs: Vec::new(),
        }))
    }

    // ----- writes: apps -----------------------------------------------------------------

    fn app_record(&self, config: &AppConfig, tombstone: bool) -> Result<Record, ServiceError> {
        to_record(
            Kind::App,
            config.app_name.as_str(),
            &AppDocument::from(config),
            true,
            tombstone,
        )
        .map_err(|error| self.store_error(error))
    }

    fn group_record(&self, group: &DeviceGroup, tombstone: bool) -> Result<Record, ServiceError> {
        to_record(
            Kind::DeviceGroup,
            group.device_group.as_str(),
            &GroupDocument::from(group),
            true,
            tombstone,
        )
        .map_err(|error| self.store_error(error))
    }

    /// Creates an app at revision 1 (`config.app_id` is overwritten).
    pub async fn create_app(&self, mut config: AppConfig) -> Result<AppConfig, ServiceError> {
        let _publishing = self.publishing.enter(Kind::App, config.app_name.as_str());
        config.app_id = 1;
        let record = self.app_record(&config, false)?;
        loop {
            match self.store.insert(Kind::App, &record).await {
                Ok(()) => break,
                Err(StoreError::AlreadyExists { .. }) => {
                    // A tombstone of an unfinished delete holds the name: finish it, then retry.
                    match self.read_app(&config.app_name).await? {
                        Some(stored) if stored.tombstone => self.finish_app_delete(stored).await?,
                        Some(_) => return Err(ServiceError::AppExists(config.app_name)),
                        None => {}
                    }
                }
                Err(error) => return Err(self.store_error(error)),
            }
        }
        tracing::info!(app = %config.app_name, app_id = config.app_id, "app created");
        self.publish_app(&config).await?;
        self.clear_pending(Kind::App, config.app_name.as_str(), 1)
            .await?;
        Ok(config)
    }

    /// Read-modify-write of an app: `change` gets the current config and returns the new
    /// one (or an error that aborts). The revision goes up by exactly one.
    /// Generic over the error so that callers can abort with their own (a REST handler's
    /// validation answer); store and broker errors convert into it.
    pub async fn update_app<E: From<ServiceError>>(
        &self,
        name: &Name,
        change: impl Fn(&AppConfig) -> Result<AppConfig, E>,
    ) -> Result<AppConfig, E> {
        let _publishing = self.publishing.enter(Kind::App, name.as_str());
        let (config, version) = loop {
            let current = match self.read_app(name).await? {
                Some(stored) if !stored.tombstone => stored,
                _ => return Err(ServiceError::AppNotFound(name.clone()).into()),
            };
            let mut config = change(&current.document)?;
            config.app_name = name.clone();
            config.app_id = current.document.app_id + 1;
            let record = self.app_record(&config, false)?;
            match self
                .store
                .replace(Kind::App, current.version, &record)
                .await
            {
                Ok(version) => break (config, version),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ServiceError::AppNotFound(name.clone()).into());
                }
                Err(error) => return Err(self.store_error(error).into()),
            }
        };
        tracing::info!(app = %name, app_id = config.app_id, "app changed");
        self.publish_app(&config).await?;
        self.clear_pending(Kind::App, name.as_str(), version)
            .await?;
        Ok(config)
    }

    /// Deletes an app: tombstone, then `AppDeleted`, removal from every group, and the
    /// exchange (see [`Service::finish_app_delete`]).
    pub async fn delete_app(&self, name: &Name) -> Result<(), ServiceError> {
        let _publishing = self.publishing.enter(Kind::App, name.as_str());
        let tombstone = loop {
            let current = match self.read_app(name).await? {
                Some(stored) if !stored.tombstone => stored,
                _ => return Err(ServiceError::AppNotFound(name.clone())),
            };
            let record = self.app_record(&current.document, true)?;
            match self
                .store
                .replace(Kind::App, current.version, &record)
                .await
            {
                Ok(version) => {
                    break Stored {
                        version,
                        pending_publish: true,
                        tombstone: true,
                        document: current.document,
                    };
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ServiceError::AppNotFound(name.clone()));
                }
                Err(error) => return Err(self.store_error(error)),
            }
        };
        self.finish_app_delete(tombstone).await
    }

    /// The broker half of an app delete, idempotent so the outbox can redo it.
    async fn finish_app_delete(&self, tombstone: StoredApp) -> Result<(), ServiceError> {
        let config = &tombstone.document;
        let exchange = names::app_exchange(&config.app_name);
        // Declared first: publishing to a missing exchange would close the channel.
        self.broker
            .declare_exchange(&exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        let message = Message::AppDeleted {
            app_name: config.app_name.clone(),
            app_id: config.app_id,
            incarnation: config.incarnation,
        };
        self.publish(&exchange, &message).await?;
        for group_name in self.groups_containing(&config.app_name).await? {
            let removed = self
                .update_group(&group_name, |group| {
                    let mut group = group.clone();
                    group.apps.retain(|app| app != &config.app_name);
                    Ok::<_, ServiceError>(group)
                })
                .await;
            match removed {
                Ok(_) | Err(ServiceError::GroupNotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        self.broker
            .delete_exchange(&exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        match self
            .store
            .delete(Kind::App, config.app_name.as_str(), tombstone.version)
            .await
        {
            // Another instance finished the same delete first; nothing is left to do.
            Ok(()) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(error) => return Err(self.store_error(error)),
        }
        tracing::info!(app = %config.app_name, app_id = config.app_id, "app deleted");
        Ok(())
    }

    async fn groups_containing(&self, app: &Name) -> Result<Vec<Name>, ServiceError> {
        let records = self
            .store
            .list(Kind::DeviceGroup)
            .await
            .map_err(|error| self.store_error(error))?;
        let mut groups = Vec::new();
        for record in records {
            let stored = self.group_from_record(record)?;
            if !stored.tombstone && stored.document.apps.contains(app) {
                groups.push(stored.document.device_group);
            }
        }
        Ok(groups)
    }

    /// Declares the app's exchange and publishes its full config.
    async fn publish_app(&self, config: &AppConfig) -> Result<(), ServiceError> {
        let exchange = names::app_exchange(&config.app_name);
        self.broker
            .declare_exchange(&exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        self.publish(&exchange, &Message::AppChanged(config.clone()))
            .await
    }

    async fn clear_pending(
        &self,
        kind: Kind,
        name: &str,
        version: u64,
    ) -> Result<(), ServiceError> {
        // `false` means a newer version exists; its writer clears its own flag.
        self.store
            .clear_pending(kind, name, version)
            .await
            .map(|_| ())
            .map_err(|error| self.store_error(error))
    }

    // ----- writes: device groups --------------------------------------------------------

    /// Checks that every listed app exists and that no cron job is listed (cron jobs come
    /// with a later issue, so none exists yet).
    async fn check_members(&self, group: &DeviceGroup) -> Result<(), ServiceError> {
        for app in &group.apps {
            if self.get_app(app).await?.is_none() {
                return Err(ServiceError::AppNotFound(app.clone()));
            }
        }
        if let Some(job) = group.cron_jobs.first() {
            return Err(ServiceError::CronJobNotFound(job.clone()));
        }
        Ok(())
    }

    pub async fn create_group(&self, mut group: DeviceGroup) -> Result<DeviceGroup, ServiceError> {
        let _publishing = self
            .publishing
            .enter(Kind::DeviceGroup, group.device_group.as_str());
        group.device_group_id = 1;
        group.prune_id = 1;
        self.check_members(&group).await?;
        let record = self.group_record(&group, false)?;
        loop {
            match self.store.insert(Kind::DeviceGroup, &record).await {
                Ok(()) => break,
                Err(StoreError::AlreadyExists { .. }) => {
                    match self.read_group(&group.device_group).await? {
                        Some(stored) if stored.tombstone => {
                            self.finish_group_delete(stored).await?
                        }
                        Some(_) => return Err(ServiceError::GroupExists(group.device_group)),
                        None => {}
                    }
                }
                Err(error) => return Err(self.store_error(error)),
            }
        }
        tracing::info!(device_group = %group.device_group, "device group created");
        self.publish_group(&group, &[]).await?;
        self.clear_pending(Kind::DeviceGroup, group.device_group.as_str(), 1)
            .await?;
        Ok(group)
    }

    /// Read-modify-write of a group's membership: `device_group_id` goes up by one.
    pub async fn update_group<E: From<ServiceError>>(
        &self,
        name: &Name,
        change: impl Fn(&DeviceGroup) -> Result<DeviceGroup, E>,
    ) -> Result<DeviceGroup, E> {
        self.write_group(
            name,
            |current| {
                let mut group = change(current)?;
                group.device_group_id = current.device_group_id + 1;
                group.prune_id = current.prune_id;
                Ok(group)
            },
            true,
        )
        .await
    }

    /// Bumps a group's `prune_id`: its devices remove unused images.
    pub async fn prune_group(&self, name: &Name) -> Result<DeviceGroup, ServiceError> {
        self.write_group(
            name,
            |current| {
                let mut group = current.clone();
                group.prune_id = current.prune_id + 1;
                Ok::<_, ServiceError>(group)
            },
            false,
        )
        .await
    }

    /// Prunes every group; returns each group's new `prune_id`.
    pub async fn prune_all(&self) -> Result<BTreeMap<String, Revision>, ServiceError> {
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

    async fn write_group<E: From<ServiceError>>(
        &self,
        name: &Name,
        change: impl Fn(&DeviceGroup) -> Result<DeviceGroup, E>,
        check_members: bool,
    ) -> Result<DeviceGroup, E> {
        let _publishing = self.publishing.enter(Kind::DeviceGroup, name.as_str());
        let (group, previous_apps, version) = loop {
            let current = match self.read_group(name).await? {
                Some(stored) if !stored.tombstone => stored,
                _ => return Err(ServiceError::GroupNotFound(name.clone()).into()),
            };
            let mut group = change(&current.document)?;
            group.device_group = name.clone();
            if check_members {
                // Only apps new to the group must exist: removing a deleted app must work.
                let added = DeviceGroup {
                    apps: group
                        .apps
                        .iter()
                        .filter(|app| !current.document.apps.contains(app))
                        .cloned()
                        .collect(),
                    ..group.clone()
                };
                self.check_members(&added).await?;
            }
            let record = self.group_record(&group, false)?;
            match self
                .store
                .replace(Kind::DeviceGroup, current.version, &record)
                .await
            {
                Ok(version) => break (group, current.document.apps, version),
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ServiceError::GroupNotFound(name.clone()).into());
                }
                Err(error) => return Err(self.store_error(error).into()),
            }
        };
        tracing::info!(
            device_group = %name,
            device_group_id = group.device_group_id,
            prune_id = group.prune_id,
            "device group changed"
        );
        self.publish_group(&group, &previous_apps).await?;
        self.clear_pending(Kind::DeviceGroup, name.as_str(), version)
            .await?;
        Ok(group)
    }

    /// Brings the group's exchange and bindings in step with its members, then publishes its
    /// full state. `previous_apps` are unbound when no longer members.
    async fn publish_group(
        &self,
        group: &DeviceGroup,
        previous_apps: &[Name],
    ) -> Result<(), ServiceError> {
        let group_exchange = names::group_exchange(&group.device_group);
        self.broker
            .declare_exchange(&group_exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        let mut apps = Vec::with_capacity(group.apps.len());
        for app in &group.apps {
            let Some(config) = self.get_app(app).await? else {
                continue;
            };
            let app_exchange = names::app_exchange(app);
            // The app's exchange exists unless its create is still in the outbox; declaring
            // is idempotent and keeps the bind from failing.
            self.broker
                .declare_exchange(&app_exchange)
                .await
                .map_err(|error| self.broker_error(error))?;
            self.broker
                .bind_exchange(&group_exchange, &app_exchange)
                .await
                .map_err(|error| self.broker_error(error))?;
            apps.push(config);
        }
        for app in previous_apps.iter().filter(|app| !group.apps.contains(app)) {
            let app_exchange = names::app_exchange(app);
            self.broker
                .declare_exchange(&app_exchange)
                .await
                .map_err(|error| self.broker_error(error))?;
            self.broker
                .unbind_exchange(&group_exchange, &app_exchange)
                .await
                .map_err(|error| self.broker_error(error))?;
        }
        let state = GroupState {
            group: group.clone(),
            apps,
            cron_jobs: Vec::new(),
        };
        self.publish(&group_exchange, &Message::DeviceGroupChanged(state))
            .await
    }

    pub async fn delete_group(&self, name: &Name) -> Result<(), ServiceError> {
        let _publishing = self.publishing.enter(Kind::DeviceGroup, name.as_str());
        let tombstone = loop {
            let current = match self.read_group(name).await? {
                Some(stored) if !stored.tombstone => stored,
                _ => return Err(ServiceError::GroupNotFound(name.clone())),
            };
            let record = self.group_record(&current.document, true)?;
            match self
                .store
                .replace(Kind::DeviceGroup, current.version, &record)
                .await
            {
                Ok(version) => {
                    break Stored {
                        version,
                        pending_publish: true,
                        tombstone: true,
                        document: current.document,
                    };
                }
                Err(StoreError::Conflict { .. }) => continue,
                Err(StoreError::NotFound { .. }) => {
                    return Err(ServiceError::GroupNotFound(name.clone()));
                }
                Err(error) => return Err(self.store_error(error)),
            }
        };
        self.finish_group_delete(tombstone).await
    }

    async fn finish_group_delete(&self, tombstone: StoredGroup) -> Result<(), ServiceError> {
        let group = &tombstone.document;
        let exchange = names::group_exchange(&group.device_group);
        self.broker
            .declare_exchange(&exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        let message = Message::DeviceGroupDeleted {
            device_group: group.device_group.clone(),
            device_group_id: group.device_group_id,
            incarnation: group.incarnation,
        };
        self.publish(&exchange, &message).await?;
        // Deleting the exchange drops its bindings with it.
        self.broker
            .delete_exchange(&exchange)
            .await
            .map_err(|error| self.broker_error(error))?;
        match self
            .store
            .delete(
                Kind::DeviceGroup,
                group.device_group.as_str(),
                tombstone.version,
            )
            .await
        {
            Ok(()) | Err(StoreError::NotFound { .. } | StoreError::Conflict { .. }) => {}
            Err(error) => return Err(self.store_error(error)),
        }
        tracing::info!(device_group = %group.device_group, "device group deleted");
        Ok(())
    }

    // ----- outbox -----------------------------------------------------------------------

    /// Republishes the current state of every object whose last publish was not confirmed,
    /// and finishes unfinished deletes.
    ///
    /// With `only_seen = Some(previous)`, only flags that were already set at the same
    /// version in the previous pass are handled: a flag set a moment ago most likely belongs
    /// to a request still in flight (here or on another instance), and republishing it would
    /// only send a duplicate. Returns how many objects were handled and the flags seen now.
    pub async fn republish_pending(
        &self,
        only_seen: Option<&PendingSet>,
    ) -> Result<(usize, PendingSet), ServiceError> {
        let mut handled = 0;
        let mut seen = PendingSet::new();
        for kind in Kind::ALL {
            let records = self
                .store
                .pending(kind)
                .await
                .map_err(|error| self.store_error(error))?;
            for record in records {
                let key = (kind, record.name.clone(), record.version);
                let stale = only_seen.is_none_or(|previous| previous.contains(&key));
                seen.insert(key);
                // A publish of ours still waiting for its confirm (a broker routing one message
                // to ten thousand durable queues takes seconds) is not lost: republishing it
                // would only double the broker's load when it is already the bottleneck.
                if !stale || self.publishing.contains(kind, &record.name) {
                    continue;
                }
                self.republish(kind, record).await?;
                handled += 1;
            }
        }
        Ok((handled, seen))
    }

    async fn republish(&self, kind: Kind, record: Record) -> Result<(), ServiceError> {
        match kind {
            Kind::App => {
                let stored = self.app_from_record(record)?;
                let name = stored.document.app_name.clone();
                if stored.tombstone {
                    self.finish_app_delete(stored).await?;
                } else {
                    self.publish_app(&stored.document).await?;
                    self.clear_pending(kind, name.as_str(), stored.version)
                        .await?;
                }
                tracing::info!(app = %name, "outbox: republished");
            }
            Kind::DeviceGroup => {
                let stored = self.group_from_record(record)?;
                let name = stored.document.device_group.clone();
                if stored.tombstone {
                    self.finish_group_delete(stored).await?;
                } else {
                    self.publish_group(&stored.document, &[]).await?;
                    self.clear_pending(kind, name.as_str(), stored.version)
                        .await?;
                }
                tracing::info!(device_group = %name, "outbox: republished");
            }
        }
        self.metrics.outbox_republished();
        Ok(())
    }
}

/// The objects this instance is writing and publishing right now, so that its own outbox
/// pass leaves their flags to the request that set them. Counted: two requests may write the
/// same object at once.
#[derive(Debug, Clone, Default)]
struct InFlight(Arc<std::sync::Mutex<std::collections::HashMap<(Kind, String), usize>>>);

impl InFlight {
    fn enter(&self, kind: Kind, name: &str) -> InFlightGuard {
        let key = (kind, name.to_string());
        *self.lock().entry(key.clone()).or_default() += 1;
        InFlightGuard {
            registry: self.clone(),
            key,
        }
    }

    fn contains(&self, kind: Kind, name: &str) -> bool {
        self.lock().contains_key(&(kind, name.to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<(Kind, String), usize>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Leaves the [`InFlight`] registry when the request ends, however it ends.
struct InFlightGuard {
    registry: InFlight,
    key: (Kind, String),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.registry.lock();
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Outbox flags seen in one pass: kind, name and version.
pub type PendingSet = std::collections::HashSet<(Kind, String, u64)>;
