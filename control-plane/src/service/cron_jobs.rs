//! The broker side of a cron job's lifecycle. A cron job has no exchange of its own: devices
//! only run the jobs of their group, so a job's change is published as the state of every
//! group that lists it (same group version, the job's newer version inside; agents take a
//! member's newer version whatever the group's), and its delete takes it out of every group
//! (their `device_group_id` goes up, and their devices stop running it).

use super::groups::{group_state, groups_where};
use super::resource::Lifecycle;
use super::write::{Writes, clear_pending, delete_exchange_unless_revived};
use super::{Service, ServiceError, Stored};
use async_trait::async_trait;
use nebula_protocol::{CronJob, DeviceGroup, Message, Name, names};

#[async_trait]
impl Lifecycle for CronJob {
    fn writes(service: &Service) -> &Writes<Self> {
        &service.cron_jobs
    }

    fn exchange(_name: &Name) -> Option<String> {
        None
    }

    /// The state of every group listing the job, each to its group's exchange. A group
    /// that lists the job only after this read publishes its own state, with the job as
    /// stored then, so no group misses the change.
    async fn publish(service: &Service, stored: &Stored<Self>) -> Result<(), ServiceError> {
        let job = &stored.document.cron_job_name;
        for name in groups_where(service, |group| group.cron_jobs.contains(job)).await? {
            let Some(group) = service.get_group(&name).await? else {
                // Deleted since the listing: its devices stop everything anyway.
                continue;
            };
            let exchange = names::group_exchange(&group.device_group);
            service
                .declare_object_exchange(&exchange, group.incarnation)
                .await?;
            let state = group_state(service, &group).await?;
            match service
                .publish(&exchange, &Message::DeviceGroupChanged(state))
                .await
            {
                // Deleted by another instance between the declare and the publish.
                Err(ServiceError::Amqp(error)) if error.is_not_found() => {}
                result => result?,
            }
            // Deleted meanwhile: its delete may have dropped the exchange before the declare
            // above made it again; drop it again unless the group was re-created since (as a
            // group write's own settling does).
            if let Some(stored) = service.read::<DeviceGroup>(&name).await?
                && stored.tombstone
            {
                delete_exchange_unless_revived(service, &stored).await?;
            }
        }
        Ok(())
    }

    async fn finish_delete(service: &Service, tombstone: Stored<Self>) -> Result<(), ServiceError> {
        let job = tombstone.document.cron_job_name.clone();
        // Read after the tombstone was written: a group write that checked the job before
        // then is caught by that write's repair.
        for group in groups_where(service, |group| group.cron_jobs.contains(&job)).await? {
            let job = job.clone();
            let removed = service
                .update_group(&group, move |current: &DeviceGroup| {
                    let mut next = current.clone();
                    next.cron_jobs.retain(|member| member != &job);
                    Ok::<_, ServiceError>(next)
                })
                .await;
            match removed {
                Ok(_) | Err(ServiceError::GroupNotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        clear_pending(service, &tombstone).await?;
        tracing::info!(cron_job = %job, version = %tombstone.document.version(), "cron job deleted");
        Ok(())
    }
}
