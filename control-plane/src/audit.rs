//! The audit trail (API.md "Beyond v2": `GET /api/v2/audit`): one entry per write that
//! succeeded — who, when, from where, which route on which object, and the object's revision
//! before and after. No I/O; `api::audit` records, `service::audit` stores.

use serde::{Deserialize, Serialize};

/// How long entries are kept by default (`NEBULA_AUDIT_TTL_SECS`): 90 days.
pub const DEFAULT_TTL: std::time::Duration = std::time::Duration::from_secs(90 * 24 * 3600);

/// One recorded write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Unique, and sorts as the entries were recorded: the time in milliseconds, then
    /// randomness (two instances recording in the same millisecond keep both). The paging
    /// cursor.
    pub id: String,
    /// When the write was answered, milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// `admin`, `anonymous` or `user:<name>`.
    pub who: String,
    /// The client's address, when known.
    pub source: Option<String>,
    pub method: String,
    /// The route's template, e.g. `/api/v2/apps/{app}/stop`.
    pub route: String,
    /// The kind of object (`app`, `device_group`, `cron_job`, `user`, `user_group`, `device`,
    /// `provisioning_token`; none for `POST /prune`, which touches every group).
    pub kind: Option<String>,
    pub name: Option<String>,
    /// The object's revision (`app_id`, `device_group_id`, `cron_job_id`; `prune_id` for a
    /// group's prune) just before the write, and as the write answered it. `None` where the
    /// object has none, did not exist before (a create), or is gone after (a delete).
    pub old_revision: Option<u64>,
    pub new_revision: Option<u64>,
    pub status: u16,
}

impl AuditEntry {
    /// The id of an entry recorded at `at_ms` with `random` bits.
    pub fn make_id(at_ms: u64, random: u64) -> String {
        format!("{at_ms:016x}{random:016x}")
    }

    /// The id of the next entry this process records, at `now_ms`: a process's entries sort
    /// in the order it recorded them, even within one millisecond or when the clock steps
    /// back (the time never goes below the last one used); then randomness, so that two
    /// instances recording in the same millisecond keep both. Answers the id and its time.
    pub fn next_id(now_ms: u64) -> (String, u64) {
        use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
        static LAST_MS: AtomicU64 = AtomicU64::new(0);
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let at_ms = LAST_MS.fetch_max(now_ms, Ordering::SeqCst).max(now_ms);
        let sequence = SEQUENCE.fetch_add(1, Ordering::SeqCst);
        let random = (u64::from(sequence) << 32) | u64::from(fastrand::u32(..));
        (Self::make_id(at_ms, random), at_ms)
    }

    /// Whether `value` is shaped like an id (a client's paging cursor).
    pub fn is_id(value: &str) -> bool {
        value.len() == 32 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
    }
}

/// What a route writes, from its template: the kind of object its path names, and the
/// answer's field that holds that object's revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub kind: Option<&'static str>,
    pub revision_field: Option<&'static str>,
}

impl Target {
    pub fn of(route: &str) -> Self {
        let rest = route.strip_prefix("/api/v2/").unwrap_or(route);
        let collection = rest.split('/').next().unwrap_or_default();
        let (kind, revision_field) = match collection {
            "apps" => (Some("app"), Some("app_id")),
            "device_groups" if rest.ends_with("/prune") => (Some("device_group"), Some("prune_id")),
            "device_groups" => (Some("device_group"), Some("device_group_id")),
            "cron_jobs" => (Some("cron_job"), Some("cron_job_id")),
            "users" => (Some("user"), None),
            "user_groups" => (Some("user_group"), None),
            "devices" => (Some("device"), None),
            "provisioning_tokens" => (Some("provisioning_token"), None),
            _ => (None, None),
        };
        Self {
            kind,
            revision_field,
        }
    }
}

/// A revision field of a JSON answer, if it has one.
pub fn revision(answer: &serde_json::Value, field: &str) -> Option<u64> {
    answer.get(field)?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_sort_as_recorded_and_are_recognised() {
        let earlier = AuditEntry::make_id(1_700_000_000_000, u64::MAX);
        let later = AuditEntry::make_id(1_700_000_000_001, 0);
        assert!(earlier < later);
        assert!(AuditEntry::is_id(&earlier));
        assert!(!AuditEntry::is_id("zz"));
        assert!(!AuditEntry::is_id(&format!("{earlier}0")));
        // Within one millisecond, and with the clock stepping back, in recording order.
        let (first, first_ms) = AuditEntry::next_id(4_000_000_000_000);
        let (second, second_ms) = AuditEntry::next_id(4_000_000_000_000);
        let (third, third_ms) = AuditEntry::next_id(3_999_999_999_000);
        assert!(first < second && second < third, "{first} {second} {third}");
        assert_eq!(
            (first_ms, second_ms, third_ms),
            (4_000_000_000_000, 4_000_000_000_000, 4_000_000_000_000)
        );
    }

    #[test]
    fn routes_name_their_object_and_its_revision() {
        assert_eq!(
            Target::of("/api/v2/apps/{app}/stop"),
            Target {
                kind: Some("app"),
                revision_field: Some("app_id")
            }
        );
        assert_eq!(
            Target::of("/api/v2/device_groups/{group}/prune").revision_field,
            Some("prune_id")
        );
        assert_eq!(
            Target::of("/api/v2/device_groups/{group}/update").revision_field,
            Some("device_group_id")
        );
        assert_eq!(
            Target::of("/api/v2/users/{user}/refresh").kind,
            Some("user")
        );
        assert_eq!(Target::of("/api/v2/prune").kind, None);
        assert_eq!(revision(&json!({"app_id": 4}), "app_id"), Some(4));
        assert_eq!(revision(&json!({}), "app_id"), None);
    }
}
