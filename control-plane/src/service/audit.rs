//! The audit trail in the store (`crate::audit` has the entry; `api::audit` records it).

use super::{Service, ServiceError};
use crate::audit::AuditEntry;
use std::time::Duration;

/// Most entries one page answers.
pub const MAX_PAGE: usize = 1000;

impl Service {
    /// Records one entry. A failure is logged and counted, not the caller's: the write it
    /// describes is already done and must be answered as such.
    pub async fn record_audit(&self, entry: &AuditEntry) {
        if let Err(error) = self.store.append_audit(entry).await {
            self.metrics.audit_failed();
            tracing::error!(error = %error, route = %entry.route, who = %entry.who, "audit entry not recorded");
            let _ = self.store_error(error);
        }
    }

    /// Up to `limit` entries older than the entry `before`, newest first.
    pub async fn list_audit(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, ServiceError> {
        self.store
            .list_audit(before, limit.min(MAX_PAGE))
            .await
            .map_err(|error| self.store_error(error))
    }

    /// Removes the entries older than the time limit; returns how many.
    pub async fn expire_audit(&self) -> Result<u64, ServiceError> {
        let ttl_ms = u64::try_from(self.audit_ttl.as_millis()).unwrap_or(u64::MAX);
        self.store
            .expire_audit(super::devices::now_ms().saturating_sub(ttl_ms))
            .await
            .map_err(|error| self.store_error(error))
    }

    pub fn with_audit_ttl(mut self, ttl: Duration) -> Self {
        self.audit_ttl = ttl;
        self
    }

    pub fn audit_ttl(&self) -> Duration {
        self.audit_ttl
    }
}
