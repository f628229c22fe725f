//! The broker side of an app's lifecycle: its exchange `nebula.app.<app>`, every change
//! published there as the app's full config, and the delete (tell the devices, leave every
//! group, drop the exchange).

use super::groups::groups_where;
use super::resource::Lifecycle;
use super::write::{Writes, clear_pending, delete_exchange_unless_revived};
use super::{Service, ServiceError, Stored};
use async_trait::async_trait;
use nebula_protocol::{AppConfig, DeviceGroup, Message, Name, names};

#[async_trait]
impl Lifecycle for AppConfig {
    fn writes(service: &Service) -> &Writes<Self> {
        &service.apps
    }

    fn exchange(name: &Name) -> Option<String> {
        Some(names::app_exchange(name))
    }

    async fn publish(service: &Service, stored: &Stored<Self>) -> Result<(), ServiceError> {
        let exchange = names::app_exchange(&stored.document.app_name);
        service
            .declare_object_exchange(&exchange, stored.document.incarnation)
            .await?;
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
        service
            .publish_delete(&exchange, config.incarnation, &message)
            .await?;
        // Every group that lists the app leaves it. Read after the tombstone was written: a
        // group write that checked the app before then is caught by that write's repair.
        let name = &config.app_name;
        for group in groups_where(service, |group| group.apps.contains(name)).await? {
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
        delete_exchange_unless_revived(service, &tombstone).await?;
        clear_pending(service, &tombstone).await?;
        tracing::info!(app = %config.app_name, version = %config.version(), "app deleted");
        Ok(())
    }
}
