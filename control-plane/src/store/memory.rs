//! An in-memory [`Store`] for in-process tests. It passes the same contract suite as the
//! real backends, so router tests that use it exercise the real store semantics.

use super::history::key_floor;
use super::{
    AuditEntry, DeviceQuery, DeviceRecord, Kind, Record, ReportQuery, ReportRecord, Store,
    new_store_id, now_micros,
};
use crate::error::StoreError;
use crate::gate::{Gate, Gates};
use async_trait::async_trait;
use nebula_protocol::{Incarnation, StoreId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The label of devices in errors.
const DEVICE: &str = "device";

#[derive(Debug, Default)]
struct Reports {
    by_key: BTreeMap<String, ReportRecord>,
    /// Slot id → the key of the report in it.
    slots: HashMap<String, String>,
}

#[derive(Debug)]
pub struct MemoryStore {
    tables: Mutex<HashMap<Kind, BTreeMap<String, Record>>>,
    devices: Mutex<BTreeMap<String, DeviceRecord>>,
    /// Past reports by key, and which key each device slot holds.
    reports: Mutex<Reports>,
    audit: Mutex<BTreeMap<String, AuditEntry>>,
    /// When set, every call fails as if the database had gone away.
    unavailable: AtomicBool,
    identity: StoreId,
    last_incarnation: AtomicU64,
    gates: Gates,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self {
            tables: Mutex::default(),
            devices: Mutex::default(),
            reports: Mutex::default(),
            audit: Mutex::default(),
            unavailable: AtomicBool::default(),
            identity: new_store_id(),
            last_incarnation: AtomicU64::default(),
            gates: Gates::default(),
        }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Holds the next replace of `name` (of any kind) until the returned gate opens.
    pub fn hold_replace(&self, name: &str) -> Gate {
        self.gates.hold("replace", name)
    }

    /// Overwrites a record's body as it is, bypassing every check: for tests that need a
    /// corrupt record.
    pub fn put_raw(&self, kind: Kind, record: Record) {
        if let Ok(mut tables) = self.tables.lock() {
            tables
                .entry(kind)
                .or_default()
                .insert(record.name.clone(), record);
        }
    }

    /// Makes every later call fail with `StoreError::Unavailable` (or work again).
    pub fn set_unavailable(&self, unavailable: bool) {
        self.unavailable.store(unavailable, Ordering::SeqCst);
    }

    fn with_table<R>(
        &self,
        kind: Kind,
        action: impl FnOnce(&mut BTreeMap<String, Record>) -> R,
    ) -> Result<R, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        let mut tables = self
            .tables
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        Ok(action(tables.entry(kind).or_default()))
    }

    fn with_devices<R>(
        &self,
        action: impl FnOnce(&mut BTreeMap<String, DeviceRecord>) -> R,
    ) -> Result<R, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        let mut devices = self
            .devices
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        Ok(action(&mut devices))
    }

    fn with_audit<R>(
        &self,
        action: impl FnOnce(&mut BTreeMap<String, AuditEntry>) -> R,
    ) -> Result<R, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        let mut audit = self
            .audit
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        Ok(action(&mut audit))
    }

    fn with_reports<R>(&self, action: impl FnOnce(&mut Reports) -> R) -> Result<R, StoreError> {
        if self.unavailable.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("memory store switched off".into()));
        }
        let mut reports = self
            .reports
            .lock()
            .map_err(|_| StoreError::Unavailable("memory store lock poisoned".into()))?;
        Ok(action(&mut reports))
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }

    fn identity(&self) -> StoreId {
        self.identity
    }

    async fn next_incarnation(&self) -> Result<Incarnation, StoreError> {
        self.with_table(Kind::App, |_| ())?;
        let floor = now_micros();
        let previous = self
            .last_incarnation
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(last.saturating_add(1).max(floor))
            })
            .unwrap_or_default();
        Ok(previous.saturating_add(1).max(floor))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.with_table(Kind::App, |_| ())
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError> {
        self.with_table(kind, |table| table.get(name).cloned())
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.with_table(kind, |table| table.values().cloned().collect())
    }

    async fn insert(&self, kind: Kind, record: &Record) -> Result<(), StoreError> {
        self.with_table(kind, |table| {
            if table.contains_key(&record.name) {
                return Err(StoreError::AlreadyExists {
                    kind: kind.label(),
                    name: record.name.clone(),
                });
            }
            let mut record = record.clone();
            record.version = 1;
            table.insert(record.name.clone(), record);
            Ok(())
        })?
    }

    async fn replace(
        &self,
        kind: Kind,
        expected_version: u64,
        record: &Record,
    ) -> Result<u64, StoreError> {
        if let Some(gate) = self.gates.take("replace", &record.name) {
            gate.pass().await;
        }
        self.with_table(kind, |table| {
            let current = table
                .get_mut(&record.name)
                .ok_or_else(|| StoreError::NotFound {
                    kind: kind.label(),
                    name: record.name.clone(),
                })?;
            if current.version != expected_version {
                return Err(StoreError::Conflict {
                    kind: kind.label(),
                    name: record.name.clone(),
                    expected: expected_version,
                });
            }
            *current = Record {
                version: expected_version + 1,
                ..record.clone()
            };
            Ok(expected_version + 1)
        })?
    }

    async fn clear_pending(&self, kind: Kind, record: &Record) -> Result<bool, StoreError> {
        self.with_table(kind, |table| match table.get_mut(&record.name) {
            Some(current) if current.version == record.version => {
                *current = Record {
                    pending_publish: false,
                    ..record.clone()
                };
                true
            }
            _ => false,
        })
    }

    async fn pending(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.with_table(kind, |table| {
            table
                .values()
                .filter(|record| record.pending_publish)
                .cloned()
                .collect()
        })
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.with_devices(|devices| devices.get(device_id).cloned())
    }

    async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>, StoreError> {
        self.with_devices(|devices| {
            devices
                .values()
                .filter(|record| query.matches(record))
                .take(query.limit)
                .cloned()
                .collect()
        })
    }

    async fn put_device(
        &self,
        record: &DeviceRecord,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        self.with_devices(|devices| {
            let current = devices
                .get(&record.device_id)
                .map(|current| current.version);
            let version = match (current, expected_version) {
                (None, None) => 1,
                (Some(_), None) => {
                    return Err(StoreError::AlreadyExists {
                        kind: DEVICE,
                        name: record.device_id.clone(),
                    });
                }
                (None, Some(_)) => {
                    return Err(StoreError::NotFound {
                        kind: DEVICE,
                        name: record.device_id.clone(),
                    });
                }
                (Some(current), Some(expected)) if current != expected => {
                    return Err(StoreError::Conflict {
                        kind: DEVICE,
                        name: record.device_id.clone(),
                        expected,
                    });
                }
                (Some(current), Some(_)) => current + 1,
            };
            devices.insert(
                record.device_id.clone(),
                DeviceRecord {
                    version,
                    ..record.clone()
                },
            );
            Ok(version)
        })?
    }

    async fn expire_devices(&self, seen_before_ms: u64) -> Result<u64, StoreError> {
        self.with_devices(|devices| {
            let before = devices.len();
            devices.retain(|_, record| record.last_seen_ms >= seen_before_ms);
            (before - devices.len()) as u64
        })
    }

    async fn put_report(&self, record: &ReportRecord) -> Result<(), StoreError> {
        self.with_reports(|reports| {
            let slot = record.slot_id();
            if let Some(current) = reports.slots.get(&slot).cloned() {
                if reports
                    .by_key
                    .get(&current)
                    .is_some_and(|held| held.supersedes(record))
                {
                    return;
                }
                reports.by_key.remove(&current);
            }
            reports.slots.insert(slot, record.key.clone());
            reports.by_key.insert(record.key.clone(), record.clone());
        })
    }

    async fn list_reports(&self, query: &ReportQuery) -> Result<Vec<ReportRecord>, StoreError> {
        self.with_reports(|reports| {
            reports
                .by_key
                .values()
                .filter(|record| query.matches(record))
                .take(query.limit)
                .cloned()
                .collect()
        })
    }

    async fn expire_reports(&self, received_before_ms: u64) -> Result<u64, StoreError> {
        let floor = key_floor(received_before_ms);
        self.with_reports(|reports| {
            let kept = reports.by_key.split_off(&floor);
            let expired = std::mem::replace(&mut reports.by_key, kept);
            for record in expired.values() {
                reports.slots.remove(&record.slot_id());
            }
            expired.len() as u64
        })
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        self.with_audit(|audit| {
            audit.insert(entry.id.clone(), entry.clone());
        })
    }

    async fn list_audit(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_audit(|audit| {
            let older = match before {
                Some(before) => audit.range::<str, _>((
                    std::ops::Bound::Unbounded,
                    std::ops::Bound::Excluded(before),
                )),
                None => audit.range::<str, _>(..),
            };
            older
                .rev()
                .take(limit)
                .map(|(_, entry)| entry.clone())
                .collect()
        })
    }

    async fn expire_audit(&self, before_ms: u64) -> Result<u64, StoreError> {
        let floor = AuditEntry::make_id(before_ms, 0);
        self.with_audit(|audit| {
            let kept = audit.split_off(&floor);
            let expired = std::mem::replace(audit, kept);
            expired.len() as u64
        })
    }
}
