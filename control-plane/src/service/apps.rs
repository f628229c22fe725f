//! The broker side of an app's lifecycle: its exchange `nebula.app.<app>`, every change
//! published there as the app's full config, and the delete (tell the devices, leave every
//! group, drop the exchange).

use super::resource::Lifecycle;
use super::write::{Writes, finish_tombstone};
use super::{Service, ServiceError, Stored};
use crate::error::StoreError;
use crate::store::Kind;
use async_trait::async_trait;
use nebula_protocol::{AppConfig, DeviceGroup, Message, Name, names};

#[async_trait]
impl Lifecycle for AppConfig {
    fn writes(service: &Service) -> &Writes<Self> {
        &service.apps
    }

    async fn publish(service: &Service, stored: &Stored<Self>) -> Result<(), ServiceError> {
        let exchange = names::app_exchange(&stored.document.app_name);
        service
            .broker
            .declare_exchange(&exchange)
            .await
            .map_err(|error| service.broker_error(error))?;
        service
            .publish(&exchange, &Message::AppChanged(stored.document.clone()))
            .await
    }

    async fn finish_delete(service: &Service, tombstone: Stored<Self>) -> Result<(), ServiceError> {
        let config = &tombstone.document;
        let exchange = names::app_exchange(&config.app_name);
        let message = Message::AppDeleted {
            app_name: config.app_name.clone(),
            app_id: config.app_id,
            incarnation: config.incarnation,
        };
        service.publish_delete(&exchange, &message).await?;
        // Every group that lists the app leaves it. Read after the tombstone was written: a
        // group write that checked the app before then is caught by that write's repair.
        for group in groups_containing(service, &config.app_name).await? {
            let app = config.app_name.clone();
            let removed = service
                .update_group(&group, move |current: &DeviceGroup| {
                    let mut next = current.clone();
                    next.apps.retain(|member| member != &app);
                    Ok::<_, ServiceError>(next)
                })
                .await;
            match removed {
                Ok(_) | Err(ServiceError::GroupNotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        service.delete_exchange(&exchange).await?;
        finish_tombstone(service, &tombstone).await?;
        tracing::info!(app = %config.app_name, version = %config.version(), "app deleted");
        Ok(())
    }
}

/// The live groups that list `app`. A corrupt group is skipped with an error in the log:
/// its membership cannot be known, and one broken record must not block deleting an app.
async fn groups_containing(service: &Service, app: &Name) -> Result<Vec<Name>, ServiceError> {
    let records = service
        .store
        .list(Kind::DeviceGroup)
        .await
        .map_err(|error| service.store_error(error))?;
    let mut groups = Vec::new();
    for record in records.into_iter().filter(|record| !record.tombstone) {
        match <DeviceGroup as super::resource::Resource>::from_body(&record.name, &record.body) {
            Ok((group, _)) if group.apps.contains(app) => groups.push(group.device_group),
            Ok(_) => {}
            Err(error @ StoreError::Corrupt { .. }) => {
                service.metrics.corrupt_record();
                tracing::error!(device_group = %record.name, error = %error, "corrupt group skipped while removing a deleted app from groups");
            }
            Err(error) => return Err(service.store_error(error)),
        }
    }
    Ok(groups)
}
