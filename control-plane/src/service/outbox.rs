//! The outbox's work on the service: republish the current state of every object whose
//! last publish was never confirmed, finish unfinished deletes, and reconcile topology.

use super::groups::reconcile_every_group;
use super::resource::Lifecycle;
use super::write::{lock, settle};
use super::{Service, ServiceError};
use crate::error::StoreError;
use crate::store::{Kind, Record};
use nebula_protocol::{AppConfig, CronJob, DeviceGroup, Name};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Outbox flags seen in one pass: kind, name and version.
pub type PendingSet = std::collections::HashSet<(Kind, String, u64)>;

impl Service {
    /// Republishes the current state of every object whose last publish was not confirmed,
    /// and finishes unfinished deletes.
    ///
    /// With `only_seen = Some(previous)`, only flags that were already set at the same
    /// version in the previous pass are handled: a flag set a moment ago most likely belongs
    /// to a request still in flight (here or on another instance), and republishing it would
    /// only send a duplicate. Returns how many objects were handled and the flags seen now.
    /// A corrupt record is skipped (and counted): it cannot be published, and failing the
    /// pass over it would stop every other object's republish.
    pub async fn republish_pending(
        &self,
        only_seen: Option<&PendingSet>,
    ) -> Result<(usize, PendingSet), ServiceError> {
        let mut handled = 0;
        let mut seen = PendingSet::new();
        for kind in Kind::PUBLISHED {
            let records = self
                .store
                .pending(kind)
                .await
                .map_err(|error| self.store_error(error))?;
            for record in records {
                let key = (kind, record.name.clone(), record.version);
                let stale = only_seen.is_none_or(|previous| previous.contains(&key));
                seen.insert(key);
                // A publish of ours still waiting for its confirm (a busy broker takes
                // seconds) is not lost: republishing it would only add to the broker's load
                // when it is already the bottleneck.
                if !stale || self.publishing.contains(kind, &record.name) {
                    continue;
                }
                let name = record.name.clone();
                let outcome = match kind {
                    Kind::App => self.republish::<AppConfig>(record).await,
                    Kind::DeviceGroup => self.republish::<DeviceGroup>(record).await,
                    Kind::CronJob => self.republish::<CronJob>(record).await,
                    // Not a published kind: never flagged, nothing to send.
                    Kind::DeviceCredential
                    | Kind::ProvisioningToken
                    | Kind::User
                    | Kind::UserGroup
                    | Kind::UserToken => Ok(false),
                };
                match outcome {
                    Ok(true) => handled += 1,
                    Ok(false) => {}
                    Err(ServiceError::Store(StoreError::Corrupt { .. })) => {
                        self.metrics.outbox_skipped_corrupt();
                    }
                    // Another instance deleted the object between this pass's read and its
                    // publish: the object's race, and that delete supersedes the change.
                    Err(ServiceError::Amqp(error)) if error.is_not_found() => {
                        tracing::info!(kind = kind.label(), name = %name, error = %error, "outbox: deleted while being republished");
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        Ok((handled, seen))
    }

    /// Finishes one flagged write: whether there was still something to do.
    async fn republish<R: Lifecycle>(&self, record: Record) -> Result<bool, ServiceError> {
        let name = Name::new(record.name.as_str()).map_err(|error| {
            ServiceError::Store(StoreError::corrupt(R::KIND, &record.name, error))
        })?;
        // Read again through the typed path: the record may have moved on since the listing.
        let Some(stored) = self.read::<R>(&name).await? else {
            return Ok(false);
        };
        if !stored.pending_publish {
            return Ok(false);
        }
        if stored.tombstone {
            R::finish_delete(self, stored).await?;
        } else {
            // The same as after a write: publish, then the follow-up repair and the flag.
            R::publish(self, &stored).await?;
            settle(self, stored).await?;
        }
        tracing::info!(kind = R::KIND.label(), name = %name, "outbox: republished");
        self.metrics.outbox_republished();
        Ok(true)
    }

    /// Reconciles the broker bindings of every live group with the store (at start).
    pub async fn reconcile_topology(&self) -> Result<usize, ServiceError> {
        reconcile_every_group(self).await
    }
}

/// The objects this instance is writing and publishing right now (a batch, or the settling
/// after it), so that its own outbox pass leaves their flags to the task that set them.
/// Counted: a batch of an object and the settling of its previous batch can overlap.
#[derive(Debug, Clone, Default)]
pub(crate) struct InFlight(Arc<Mutex<HashMap<(Kind, String), usize>>>);

impl InFlight {
    pub(crate) fn enter(&self, kind: Kind, name: &str) -> InFlightGuard {
        let key = (kind, name.to_string());
        *lock(&self.0).entry(key.clone()).or_default() += 1;
        InFlightGuard {
            registry: self.clone(),
            key,
        }
    }

    fn contains(&self, kind: Kind, name: &str) -> bool {
        lock(&self.0).contains_key(&(kind, name.to_string()))
    }
}

/// Leaves the [`InFlight`] registry when the batch ends, however it ends.
pub(crate) struct InFlightGuard {
    registry: InFlight,
    key: (Kind, String),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = lock(&self.registry.0);
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}
