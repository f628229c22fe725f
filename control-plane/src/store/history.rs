//! The report history: past device reports, kept for `GET /api/v2/reports` (API.md "Reports").
//!
//! Bounded two ways, so that reports never fill the store. Every device has a fixed number
//! of slots, a ring: the report stored as the device record's version `v` goes to slot
//! `v % slots`, replacing what the slot held, so a device that reports in a storm only
//! overwrites its own oldest entries. And a report received longer ago than the history's
//! time limit is removed by [`super::Store::expire_reports`]. At most devices × slots
//! records, each about the size of the device's record (`service::devices` caps that).
//! Two ingesters writing one slot (two instances, a late redelivery) keep the later report by
//! key, that is by reception time ([`ReportRecord::supersedes`]): a slow writer never puts an
//! older report over a newer one, and a device whose record started again at version 1 (it
//! expired and came back, or a corrupt record was overwritten) still gets its new reports
//! kept, which comparing versions would refuse.
//!
//! Order: a record's `key` sorts by reception time (Unix ms, zero-padded) first, and is
//! unique (device id and version follow); it is the keyset cursor clients page with
//! (`last_id`). Reports are written a little after their reception time, and instances'
//! clocks differ, so listings stop short of the last few seconds (`service::reports`): a
//! client paging with a cursor never skips a report written late.

use serde::{Deserialize, Serialize};

/// One past report as the backends see it: the fields filtered on and an opaque body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRecord {
    /// The order and page cursor ([`report_key`]).
    pub key: String,
    pub device_id: String,
    /// The device's ring slot this report occupies.
    pub slot: u32,
    /// The device record's version it was stored as (its slot is this modulo the slots).
    pub version: u64,
    /// When a control plane ingested it (its clock, Unix ms).
    pub received_ms: u64,
    pub hostname: String,
    pub device_group: Option<String>,
    /// The device's clock when it made the report (Unix seconds).
    pub report_creation_time: u64,
    pub updated: bool,
    /// The report as the API shows it, serialised as JSON text.
    pub body: String,
}

impl ReportRecord {
    /// Whether this record, held in a slot, stays there when `incoming` is written to it: it
    /// was received later (same device: its key sorts after). The same record again replaces
    /// itself.
    pub fn supersedes(&self, incoming: &ReportRecord) -> bool {
        self.key > incoming.key
    }

    /// The identity of the record's slot: writing another report there replaces this one.
    pub fn slot_id(&self) -> String {
        slot_id(&self.device_id, self.slot)
    }
}

/// The identity of slot `slot` of `device_id`.
pub fn slot_id(device_id: &str, slot: u32) -> String {
    format!("{device_id}/{slot}")
}

/// The key of the report of `device_id` stored at device-record version `version`, received
/// at `received_ms`. Fixed-width numbers, so that the text order is the reception order; the
/// version's fixed width after the device id keeps keys unique whatever the device ids.
pub fn report_key(received_ms: u64, device_id: &str, version: u64) -> String {
    format!("{received_ms:013}.{device_id}.{version:020}")
}

/// Every key of a report received before `received_ms` sorts before this, every later or
/// equal one after it.
pub fn key_floor(received_ms: u64) -> String {
    format!("{received_ms:013}")
}

/// Whether `text` has the shape of a key ([`report_key`]): what a page cursor must be.
pub fn is_key(text: &str) -> bool {
    let digits = |part: &str, width: usize| {
        part.len() == width && part.bytes().all(|byte| byte.is_ascii_digit())
    };
    match (text.get(..13), text.get(13..14), text.len().checked_sub(21)) {
        // A device id of 1 to 64 characters between the dots.
        (Some(time), Some("."), Some(end)) if end > 14 && end - 14 <= 64 => {
            digits(time, 13) && text.get(end..=end) == Some(".") && digits(&text[end + 1..], 20)
        }
        _ => false,
    }
}

/// How `report_creation_time` is compared with the value asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Eq,
    Gt,
    Lt,
    Gte,
    Lte,
    Ne,
}

impl Comparison {
    /// Upstream's names (`report_creation_time_filter`).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "eq" => Self::Eq,
            "gt" => Self::Gt,
            "lt" => Self::Lt,
            "gte" => Self::Gte,
            "lte" => Self::Lte,
            "ne" => Self::Ne,
            _ => return None,
        })
    }

    /// MongoDB's operator for it.
    pub fn operator(self) -> &'static str {
        match self {
            Self::Eq => "$eq",
            Self::Gt => "$gt",
            Self::Lt => "$lt",
            Self::Gte => "$gte",
            Self::Lte => "$lte",
            Self::Ne => "$ne",
        }
    }

    /// Whether `stored` compares so with `wanted`.
    pub fn holds(self, stored: u64, wanted: u64) -> bool {
        match self {
            Self::Eq => stored == wanted,
            Self::Gt => stored > wanted,
            Self::Lt => stored < wanted,
            Self::Gte => stored >= wanted,
            Self::Lte => stored <= wanted,
            Self::Ne => stored != wanted,
        }
    }
}

/// Which reports [`super::Store::list_reports`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportQuery {
    pub hostname: Option<String>,
    pub device_group: Option<String>,
    pub created: Option<(Comparison, u64)>,
    pub updated: Option<bool>,
    /// Keyset paging: only keys greater than this.
    pub after: Option<String>,
    /// Only keys less than this: the listing's settling horizon.
    pub before: Option<String>,
    pub limit: usize,
}

impl Default for ReportQuery {
    fn default() -> Self {
        Self {
            hostname: None,
            device_group: None,
            created: None,
            updated: None,
            after: None,
            before: None,
            limit: usize::MAX,
        }
    }
}

impl ReportQuery {
    /// Whether `record` is selected (ignoring the limit): how the embedded and memory stores
    /// filter, and what MongoDB's query says.
    pub fn matches(&self, record: &ReportRecord) -> bool {
        self.hostname
            .as_ref()
            .is_none_or(|hostname| &record.hostname == hostname)
            && self
                .device_group
                .as_ref()
                .is_none_or(|group| record.device_group.as_ref() == Some(group))
            && self.created.is_none_or(|(comparison, wanted)| {
                comparison.holds(record.report_creation_time, wanted)
            })
            && self.updated.is_none_or(|updated| record.updated == updated)
            && self
                .after
                .as_ref()
                .is_none_or(|after| record.key.as_str() > after.as_str())
            && self
                .before
                .as_ref()
                .is_none_or(|before| record.key.as_str() < before.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_reception_then_device_and_are_unique() {
        let mut keys = vec![
            report_key(2_000, "a", 1),
            report_key(1_000, "zz", 9),
            report_key(1_000, "a.b", 1),
            report_key(1_000, "a", 10),
            report_key(1_000, "a", 2),
        ];
        keys.sort();
        assert!(keys[0].starts_with("0000000001000.a."), "{keys:?}");
        assert_eq!(keys[0], report_key(1_000, "a", 2));
        assert_eq!(keys[1], report_key(1_000, "a", 10));
        assert_eq!(keys[4], report_key(2_000, "a", 1));
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len());
        // The floor splits at the reception time.
        assert!(report_key(1_999, "zzzz", u64::MAX) < key_floor(2_000));
        assert!(report_key(2_000, "", 0) > key_floor(2_000));
    }

    #[test]
    fn only_keys_are_cursors() {
        assert!(is_key(&report_key(1_700_000_000_000, "pi-1", 7)));
        assert!(is_key(&report_key(0, "a.b", u64::MAX)));
        for text in [
            "",
            "5c75489a209bde00015570e5",
            "1700000000000.pi-1.7",
            "1700000000000..00000000000000000007",
            &report_key(1, &"d".repeat(65), 1),
            "170000000000x.pi-1.00000000000000000007",
            "1700000000000.pi-1.0000000000000000000x",
        ] {
            assert!(!is_key(text), "{text:?}");
        }
    }

    #[test]
    fn comparisons_are_upstream_s() {
        for (name, stored, wanted, holds) in [
            ("eq", 5, 5, true),
            ("eq", 5, 6, false),
            ("gt", 6, 5, true),
            ("gt", 5, 5, false),
            ("lt", 4, 5, true),
            ("gte", 5, 5, true),
            ("lte", 6, 5, false),
            ("ne", 5, 5, false),
            ("ne", 4, 5, true),
        ] {
            let comparison = Comparison::from_name(name).expect(name);
            assert_eq!(comparison.holds(stored, wanted), holds, "{name}");
        }
        assert_eq!(Comparison::from_name("between"), None);
    }
}
