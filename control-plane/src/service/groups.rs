//! The broker side of a device group's lifecycle, and its topology: the exchange
//! `nebula.group.<group>`, with the exchange of every member app bound to it, so that one
//! publish per app change reaches every group that lists the app.
//!
//! Topology is derived from the store and reconciled idempotently (DESIGN §2): a group's
//! record lists its members and the apps it may still have to unbind (`detach`, written with
//! the change that removed them); after every group write the broker is brought in step with
//! that record, and then the record is read again — if another instance wrote the group
//! meanwhile, its bindings may have reached the broker before ours, so the latest record is
//! applied again. The outbox does the same for unconfirmed writes, and every instance for
//! every group at start. The order in which concurrent requests reach the broker never
//! decides what is bound.

use super::resource::{Lifecycle, Resource};
use super::write::{Writes, clear_pending, delete_exchange_unless_revived};
use super::{Service, ServiceError, Stored};
use crate::store::Kind;
use async_trait::async_trait;
use nebula_protocol::{DeviceGroup, Message, Name, names};

/// How many times a group write re-reads its record to repair bindings that raced another
/// instance's write of the same group. Each round needs another instance to write the group
/// again within one round trip, so a few are plenty.
const TOPOLOGY_ROUNDS: usize = 5;

#[async_trait]
impl Lifecycle for DeviceGroup {
    fn writes(service: &Service) -> &Writes<Self> {
        &service.groups
    }

    fn exchange(name: &Name) -> Option<String> {
        Some(names::group_exchange(name))
    }

    /// Only apps and cron jobs new to the group must exist (removing a deleted one must
    /// work).
    async fn check(
        service: &Service,
        previous: Option<&Self>,
        next: &Self,
    ) -> Result<(), ServiceError> {
        for app in &next.apps {
            let known = previous.is_some_and(|previous| previous.apps.contains(app));
            if !known && !app_is_live(service, app).await? {
                return Err(ServiceError::AppNotFound(app.clone()));
            }
        }
        for job in &next.cron_jobs {
            let known = previous.is_some_and(|previous| previous.cron_jobs.contains(job));
            if !known && !is_live(service, Kind::CronJob, job).await? {
                return Err(ServiceError::CronJobNotFound(job.clone()));
            }
        }
        Ok(())
    }

    async fn publish(service: &Service, stored: &Stored<Self>) -> Result<(), ServiceError> {
        reconcile_topology(service, &stored.document, &stored.detach).await?;
        let state = group_state(service, &stored.document).await?;
        service
            .publish(
                &names::group_exchange(&stored.document.device_group),
                &Message::DeviceGroupChanged(state),
            )
            .await?;
        settle_topology(service, stored).await
    }

    /// A group that lists an app or cron job which no longer exists (deleted while this
    /// write checked its members) leaves it.
    async fn repair(
        service: &Service,
        stored: &Stored<Self>,
    ) -> Result<Option<Self>, ServiceError> {
        let mut gone = Vec::new();
        for app in &stored.document.apps {
            if !app_is_live(service, app).await? {
                gone.push(app.clone());
            }
        }
        let mut gone_jobs = Vec::new();
        for job in &stored.document.cron_jobs {
            if !is_live(service, Kind::CronJob, job).await? {
                gone_jobs.push(job.clone());
            }
        }
        if gone.is_empty() && gone_jobs.is_empty() {
            return Ok(None);
        }
        tracing::warn!(device_group = %stored.document.device_group, apps = ?gone, cron_jobs = ?gone_jobs, "the group lists deleted apps or cron jobs; removing them");
        let mut next = stored.document.clone();
        next.apps.retain(|app| !gone.contains(app));
        next.cron_jobs.retain(|job| !gone_jobs.contains(job));
        Ok(Some(next))
    }

    async fn finish_delete(service: &Service, tombstone: Stored<Self>) -> Result<(), ServiceError> {
        let group = &tombstone.document;
        let exchange = names::group_exchange(&group.device_group);
        let message = Message::DeviceGroupDeleted {
            device_group: group.device_group.clone(),
            device_group_id: group.device_group_id,
            incarnation: group.incarnation,
        };
        service
            .publish_delete(&exchange, group.incarnation, &message)
            .await?;
        // Deleting the exchange drops its bindings with it.
        delete_exchange_unless_revived(service, &tombstone).await?;
        clear_pending(service, &tombstone).await?;
        tracing::info!(device_group = %group.device_group, version = %group.version(), "device group deleted");
        Ok(())
    }
}

/// A group's state as its devices get it: the group, the full config of each member app and
/// cron job, and the apps whose record is corrupt (devices keep what they hold for those: one
/// corrupt app must not stop the group's other apps from reaching its devices, nor remove
/// it). A corrupt cron job is left out: a group message leaves a device's held config of it
/// as it is (a member's config goes only with its membership), a sync reply stops it.
pub(crate) async fn group_state(
    service: &Service,
    group: &DeviceGroup,
) -> Result<nebula_protocol::GroupState, ServiceError> {
    let mut apps = Vec::with_capacity(group.apps.len());
    let mut unavailable = Vec::new();
    for app in &group.apps {
        match service.get_app(app).await {
            Ok(Some(config)) => apps.push(config),
            // Deleted a moment ago, its delete is removing it from the group.
            Ok(None) => {}
            Err(ServiceError::Store(crate::error::StoreError::Corrupt { .. })) => {
                unavailable.push(app.clone());
            }
            Err(error) => return Err(error),
        }
    }
    let mut cron_jobs = Vec::with_capacity(group.cron_jobs.len());
    for job in &group.cron_jobs {
        match service.get_cron_job(job).await {
            Ok(Some(config)) => cron_jobs.push(config),
            Ok(None) | Err(ServiceError::Store(crate::error::StoreError::Corrupt { .. })) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(nebula_protocol::GroupState {
        group: group.clone(),
        apps,
        cron_jobs,
        unavailable,
    })
}

/// The live groups for which `wanted` holds. A corrupt group is skipped with an error in the
/// log: its membership cannot be known, and one broken record must not block deleting an
/// app or a cron job.
pub(crate) async fn groups_where(
    service: &Service,
    wanted: impl Fn(&DeviceGroup) -> bool,
) -> Result<Vec<Name>, ServiceError> {
    let records = service
        .store
        .list(Kind::DeviceGroup)
        .await
        .map_err(|error| service.store_error(error))?;
    let mut groups = Vec::new();
    for record in records.into_iter().filter(|record| !record.tombstone) {
        match service.parse::<DeviceGroup>(record) {
            Ok(stored) if wanted(&stored.document) => groups.push(stored.document.device_group),
            Ok(_) => {}
            // Counted and logged by `parse`; the others still go on.
            Err(ServiceError::Store(crate::error::StoreError::Corrupt { .. })) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(groups)
}

/// Whether a live record of the app exists. Its body is not parsed, and a record that cannot
/// be read at all counts as existing: a corrupt app is still a member (its devices keep what
/// they have), it just cannot be published.
async fn app_is_live(service: &Service, app: &Name) -> Result<bool, ServiceError> {
    is_live(service, Kind::App, app).await
}

/// Whether a live record of `kind` called `name` exists (see [`app_is_live`]).
async fn is_live(service: &Service, kind: Kind, name: &Name) -> Result<bool, ServiceError> {
    match service.store.get(kind, name.as_str()).await {
        Ok(record) => Ok(record.is_some_and(|record| !record.tombstone)),
        // Even its bookkeeping unreadable: the record exists, and nothing says it is deleted.
        Err(crate::error::StoreError::Corrupt { .. }) => {
            service.metrics.corrupt_record();
            Ok(true)
        }
        Err(error) => Err(service.store_error(error)),
    }
}

/// Makes the broker's bindings of `group` what its record says: every live member's
/// exchange bound to the group's exchange, every app of `detach` unbound. Idempotent.
pub(crate) async fn reconcile_topology(
    service: &Service,
    group: &DeviceGroup,
    detach: &[Name],
) -> Result<(), ServiceError> {
    let broker = &service.broker;
    let group_exchange = names::group_exchange(&group.device_group);
    service
        .declare_object_exchange(&group_exchange, group.incarnation)
        .await?;
    for app in &group.apps {
        if !app_is_live(service, app).await? {
            continue;
        }
        let app_exchange = names::app_exchange(app);
        // The app's exchange exists unless its create is still in the outbox; declaring is
        // idempotent and keeps the bind from failing.
        broker
            .declare_exchange(&app_exchange)
            .await
            .map_err(|error| service.broker_error(error))?;
        match broker.bind_exchange(&group_exchange, &app_exchange).await {
            Ok(()) => {}
            // Deleted by another instance between the declare and the bind: that delete
            // removes the app from the group, and its exchange took its bindings with it.
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(service.broker_error(error)),
        }
    }
    for app in detach.iter().filter(|app| !group.apps.contains(app)) {
        match broker
            .unbind_exchange(&group_exchange, &names::app_exchange(app))
            .await
        {
            // A deleted app's exchange took its bindings with it.
            Ok(()) => {}
            Err(error) if error.is_not_found() => {}
            Err(error) => return Err(service.broker_error(error)),
        }
    }
    Ok(())
}

/// After this instance reconciled `written`, reads the group again: while another instance
/// has written it since, applies the latest record once more, unbinding whatever this write
/// bound that the latest does not list (see the module docs).
async fn settle_topology(
    service: &Service,
    written: &Stored<DeviceGroup>,
) -> Result<(), ServiceError> {
    let name = &written.document.device_group;
    let mut touched: Vec<Name> = written.document.links();
    touched.extend(written.detach.iter().cloned());
    let mut seen = written.version;
    for _ in 0..TOPOLOGY_ROUNDS {
        let latest = match service.read::<DeviceGroup>(name).await? {
            None => return Ok(()),
            // Deleted meanwhile. Its delete dropped the exchange, but maybe before this write
            // declared it again: drop it again, unless it was re-created since.
            Some(stored) if stored.tombstone => {
                return delete_exchange_unless_revived(service, &stored).await;
            }
            Some(stored) => stored,
        };
        if latest.version == seen {
            return Ok(());
        }
        let mut detach = latest.detach.clone();
        detach.extend(
            touched
                .iter()
                .filter(|app| !latest.document.apps.contains(app))
                .cloned(),
        );
        detach.sort();
        detach.dedup();
        tracing::info!(device_group = %name, ours = written.version, latest = latest.version, "group written concurrently; reconciling its bindings again");
        reconcile_topology(service, &latest.document, &detach).await?;
        touched.extend(latest.document.links());
        touched.extend(latest.detach.iter().cloned());
        seen = latest.version;
    }
    tracing::warn!(device_group = %name, "group kept changing while its bindings were reconciled; each of those writes reconciles after itself, and every instance reconciles every group at start");
    Ok(())
}

/// Every live group's bindings, from the store (at start: whatever happened while no
/// instance was running, the broker ends up as the store says).
pub(crate) async fn reconcile_every_group(service: &Service) -> Result<usize, ServiceError> {
    let mut reconciled = 0;
    for name in service.list_groups().await? {
        let Ok(name) = Name::new(name) else { continue };
        match service.read::<DeviceGroup>(&name).await {
            Ok(Some(stored)) if !stored.tombstone => {
                reconcile_topology(service, &stored.document, &stored.detach).await?;
                reconciled += 1;
            }
            Ok(_) => {}
            // Corrupt: counted and logged by `read`; the rest go on.
            Err(ServiceError::Store(crate::error::StoreError::Corrupt { .. })) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(reconciled)
}
