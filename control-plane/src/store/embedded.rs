//! The embedded store: a redb database file in `NEBULA_DATA_DIR`.
//!
//! redb commits are durable (fsync'd) and crash-safe, and it runs one write transaction at a
//! time, so a compare-and-swap inside one write transaction is atomic. One control-plane
//! instance per data directory (redb locks the file).
//!
//! Group commit: every write goes to one writer thread, which takes all the writes waiting
//! at that moment and runs them in ONE transaction, each with its own compare-and-swap, and
//! answers each only after that transaction committed. Twenty concurrent writers then cost one
//! fsync, not twenty; a lone writer waits for nobody. Reads use their own read transactions
//! on tokio's blocking pool and never wait for the writer.

use super::history::key_floor;
use super::{
    AuditEntry, DeviceQuery, DeviceRecord, Kind, Record, ReportQuery, ReportRecord, Store,
    new_store_id, now_micros,
};
use crate::error::StoreError;
use async_trait::async_trait;
use nebula_protocol::{Incarnation, StoreId};
use redb::{Database, ReadableTable, TableDefinition, WriteTransaction};
use std::path::Path;
use std::sync::{Arc, mpsc};
use tokio::sync::oneshot;

const FILE_NAME: &str = "nebula.redb";
/// Store-wide values: the identity and the last incarnation handed out.
const META: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("meta");
const META_STORE_ID: &str = "store_id";
const META_INCARNATION: &str = "last_incarnation";
/// The device registry: device id → JSON of a [`DeviceRecord`].
const DEVICES: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("devices");
const DEVICE: &str = "device";
/// The report history: key → JSON of a [`ReportRecord`] ...
const REPORTS: TableDefinition<'static, &'static str, &'static [u8]> =
    TableDefinition::new("reports");
/// ... and which key each device slot holds (`history`'s ring).
const REPORT_SLOTS: TableDefinition<'static, &'static str, &'static str> =
    TableDefinition::new("report_slots");
const REPORT: &str = "report";
/// The audit trail: entry id → JSON of an [`AuditEntry`].
const AUDIT: TableDefinition<'static, &'static str, &'static [u8]> = TableDefinition::new("audit");
/// Most writes one transaction takes: bounds the latency a write adds to the others.
const MAX_BATCH: usize = 256;

fn table(kind: Kind) -> TableDefinition<'static, &'static str, &'static [u8]> {
    TableDefinition::new(kind.collection())
}

/// One write, run inside the shared transaction (or told that none could be begun). It
/// returns what to tell its caller once the transaction's fate is known.
type Job = Box<dyn FnOnce(Result<&WriteTransaction, &StoreError>) -> Completion + Send>;
type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

#[derive(Debug, Clone)]
pub struct EmbeddedStore {
    database: Arc<Database>,
    writer: Arc<Writer>,
    identity: StoreId,
}

/// The writer thread's queue. Dropping the last store handle closes it and waits for the
/// thread, so the database file is closed (and its lock released) when the store is gone:
/// reopening the same directory right after works.
#[derive(Debug)]
struct Writer {
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Writer {
    fn send(&self, job: Job) -> Result<(), StoreError> {
        let jobs = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        jobs.as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| StoreError::Unavailable("the store's writer thread stopped".into()))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let jobs = self
            .jobs
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        drop(jobs.take());
        let thread = self
            .thread
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(thread) = thread.take() {
            let _ = thread.join();
        }
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the database in `directory`: the tables, the identity of a new
    /// store, and the writer thread.
    pub fn open(directory: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(directory).map_err(StoreError::unavailable)?;
        let database =
            Database::create(directory.join(FILE_NAME)).map_err(StoreError::unavailable)?;
        let transaction = database.begin_write().map_err(StoreError::unavailable)?;
        let identity = {
            for kind in Kind::ALL {
                transaction
                    .open_table(table(kind))
                    .map_err(StoreError::unavailable)?;
            }
            transaction
                .open_table(DEVICES)
                .map_err(StoreError::unavailable)?;
            transaction
                .open_table(REPORTS)
                .map_err(StoreError::unavailable)?;
            transaction
                .open_table(REPORT_SLOTS)
                .map_err(StoreError::unavailable)?;
            transaction
                .open_table(AUDIT)
                .map_err(StoreError::unavailable)?;
            let mut meta = transaction
                .open_table(META)
                .map_err(StoreError::unavailable)?;
            let existing = meta
                .get(META_STORE_ID)
                .map_err(StoreError::unavailable)?
                .map(|value| value.value().to_vec());
            match existing {
                Some(bytes) => {
                    let bytes: [u8; 16] = bytes.as_slice().try_into().map_err(|_| {
                        StoreError::Unavailable(format!(
                            "{} holds a store id of {} bytes, not 16",
                            directory.join(FILE_NAME).display(),
                            bytes.len()
                        ))
                    })?;
                    StoreId(u128::from_be_bytes(bytes))
                }
                None => {
                    let identity = new_store_id();
                    meta.insert(META_STORE_ID, identity.0.to_be_bytes().as_slice())
                        .map_err(StoreError::unavailable)?;
                    identity
                }
            }
        };
        transaction.commit().map_err(StoreError::unavailable)?;
        let database = Arc::new(database);
        let (sender, jobs) = mpsc::channel();
        let thread_database = Arc::clone(&database);
        let thread = std::thread::Builder::new()
            .name("nebula-store-writer".into())
            .spawn(move || write_loop(&thread_database, &jobs))
            .map_err(StoreError::unavailable)?;
        Ok(Self {
            database,
            writer: Arc::new(Writer {
                jobs: std::sync::Mutex::new(Some(sender)),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
            identity,
        })
    }

    async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let database = Arc::clone(&self.database);
        tokio::task::spawn_blocking(move || work(&database))
            .await
            .map_err(StoreError::unavailable)?
    }

    /// Runs `work` in the next group-committed transaction and answers once it committed.
    async fn write<R: Send + 'static>(
        &self,
        work: impl FnOnce(&WriteTransaction) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |transaction| match transaction {
            Ok(transaction) => {
                let result = work(transaction);
                Box::new(move |committed: Result<(), StoreError>| {
                    let _ = answer.send(committed.and(result));
                })
            }
            Err(error) => {
                let _ = answer.send(Err(error.clone()));
                Box::new(|_| {})
            }
        });
        self.writer.send(job)?;
        answered
            .await
            .map_err(|_| StoreError::Unavailable("the store's writer thread stopped".into()))?
    }
}

/// The writer thread: waits for a write, takes every other one already waiting, runs them in
/// one transaction and commits once. Ends when the store is dropped.
fn write_loop(database: &Database, jobs: &mpsc::Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let transaction = match database.begin_write() {
            Ok(transaction) => transaction,
            Err(error) => {
                // Nothing runs: each write is told why.
                let error = StoreError::unavailable(error);
                for job in batch {
                    // The job answered already; its completion has nothing left to say.
                    drop(job(Err(&error)));
                }
                continue;
            }
        };
        // A job whose own check failed (a conflict, say) changed nothing before failing, so
        // the others commit unaffected.
        let completions: Vec<Completion> =
            batch.into_iter().map(|job| job(Ok(&transaction))).collect();
        let committed = transaction.commit().map_err(StoreError::unavailable);
        for completion in completions {
            completion(committed.clone());
        }
    }
}

fn decode(kind: Kind, name: &str, bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::corrupt(kind, name, error))
}

fn encode(record: &Record) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(record).map_err(StoreError::unavailable)
}

/// Runs `change` on the current record inside `transaction` and writes what it returns
/// (`None`: leave it). The closure's error aborts this change only; it changed nothing.
fn modify<R>(
    transaction: &WriteTransaction,
    kind: Kind,
    name: &str,
    change: impl FnOnce(Option<Record>) -> Result<(Option<Record>, R), StoreError>,
) -> Result<R, StoreError> {
    let mut opened = transaction
        .open_table(table(kind))
        .map_err(StoreError::unavailable)?;
    let current = match opened.get(name).map_err(StoreError::unavailable)? {
        Some(guard) => Some(decode(kind, name, guard.value())?),
        None => None,
    };
    let (write, result) = change(current)?;
    if let Some(record) = write {
        opened
            .insert(name, encode(&record)?.as_slice())
            .map_err(StoreError::unavailable)?;
    }
    Ok(result)
}

fn read_all(
    database: &Database,
    kind: Kind,
    only_pending: bool,
) -> Result<Vec<Record>, StoreError> {
    let transaction = database.begin_read().map_err(StoreError::unavailable)?;
    let opened = transaction
        .open_table(table(kind))
        .map_err(StoreError::unavailable)?;
    let mut records = Vec::new();
    for entry in opened.iter().map_err(StoreError::unavailable)? {
        let (key, value) = entry.map_err(StoreError::unavailable)?;
        // A record whose bookkeeping does not parse is still listed by name (as a corrupt
        // object) rather than failing the whole listing: corruption is that object's error.
        let record = decode(kind, key.value(), value.value()).unwrap_or_else(|_| Record {
            name: key.value().to_string(),
            version: 0,
            pending_publish: false,
            tombstone: false,
            body: String::new(),
        });
        if !only_pending || record.pending_publish {
            records.push(record);
        }
    }
    Ok(records)
}

fn conflict(kind: Kind, name: &str, expected: u64) -> StoreError {
    StoreError::Conflict {
        kind: kind.label(),
        name: name.to_string(),
        expected,
    }
}

fn not_found(kind: Kind, name: &str) -> StoreError {
    StoreError::NotFound {
        kind: kind.label(),
        name: name.to_string(),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    fn identity(&self) -> StoreId {
        self.identity
    }

    async fn next_incarnation(&self) -> Result<Incarnation, StoreError> {
        let floor = now_micros();
        self.write(move |transaction| {
            let mut meta = transaction
                .open_table(META)
                .map_err(StoreError::unavailable)?;
            let last = meta
                .get(META_INCARNATION)
                .map_err(StoreError::unavailable)?
                .and_then(|value| <[u8; 8]>::try_from(value.value()).ok())
                .map_or(0, u64::from_be_bytes);
            let next = last.saturating_add(1).max(floor);
            meta.insert(META_INCARNATION, next.to_be_bytes().as_slice())
                .map_err(StoreError::unavailable)?;
            Ok(next)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|database| {
            database.begin_read().map_err(StoreError::unavailable)?;
            Ok(())
        })
        .await
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError> {
        let name = name.to_string();
        self.blocking(move |database| {
            let transaction = database.begin_read().map_err(StoreError::unavailable)?;
            let opened = transaction
                .open_table(table(kind))
                .map_err(StoreError::unavailable)?;
            match opened.get(name.as_str()).map_err(StoreError::unavailable)? {
                Some(guard) => Ok(Some(decode(kind, &name, guard.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.blocking(move |database| read_all(database, kind, false))
            .await
    }

    async fn insert(&self, kind: Kind, record: &Record) -> Result<(), StoreError> {
        let record = Record {
            version: 1,
            ..record.clone()
        };
        self.write(move |transaction| {
            let name = record.name.clone();
            modify(transaction, kind, &name, |current| match current {
                Some(_) => Err(StoreError::AlreadyExists {
                    kind: kind.label(),
                    name: name.clone(),
                }),
                None => Ok((Some(record), ())),
            })
        })
        .await
    }

    async fn replace(
        &self,
        kind: Kind,
        expected_version: u64,
        record: &Record,
    ) -> Result<u64, StoreError> {
        let record = Record {
            version: expected_version + 1,
            ..record.clone()
        };
        self.write(move |transaction| {
            let name = record.name.clone();
            modify(transaction, kind, &name, |current| match current {
                None => Err(not_found(kind, &name)),
                Some(current) if current.version != expected_version => {
                    Err(conflict(kind, &name, expected_version))
                }
                Some(_) => Ok((Some(record), expected_version + 1)),
            })
        })
        .await
    }

    async fn clear_pending(&self, kind: Kind, record: &Record) -> Result<bool, StoreError> {
        let cleared = Record {
            pending_publish: false,
            ..record.clone()
        };
        self.write(move |transaction| {
            let name = cleared.name.clone();
            modify(transaction, kind, &name, |current| match current {
                Some(current) if current.version == cleared.version => Ok((Some(cleared), true)),
                _ => Ok((None, false)),
            })
        })
        .await
    }

    async fn pending(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.blocking(move |database| read_all(database, kind, true))
            .await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let device_id = device_id.to_string();
        self.blocking(move |database| {
            let transaction = database.begin_read().map_err(StoreError::unavailable)?;
            let opened = transaction
                .open_table(DEVICES)
                .map_err(StoreError::unavailable)?;
            match opened
                .get(device_id.as_str())
                .map_err(StoreError::unavailable)?
            {
                Some(guard) => Ok(Some(decode_device(&device_id, guard.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>, StoreError> {
        let query = query.clone();
        self.blocking(move |database| {
            let transaction = database.begin_read().map_err(StoreError::unavailable)?;
            let opened = transaction
                .open_table(DEVICES)
                .map_err(StoreError::unavailable)?;
            let entries = match &query.after {
                Some(after) => opened.range::<&str>(after.as_str()..),
                None => opened.range::<&str>(..),
            }
            .map_err(StoreError::unavailable)?;
            let mut records = Vec::new();
            for entry in entries {
                if records.len() >= query.limit {
                    break;
                }
                let (key, value) = entry.map_err(StoreError::unavailable)?;
                // A device record that does not parse is skipped, not fatal to the listing:
                // the device's next report overwrites it.
                let Ok(record) = decode_device(key.value(), value.value()) else {
                    continue;
                };
                if query.matches(&record) {
                    records.push(record);
                }
            }
            Ok(records)
        })
        .await
    }

    async fn put_device(
        &self,
        record: &DeviceRecord,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        let record = record.clone();
        self.write(move |transaction| {
            let mut opened = transaction
                .open_table(DEVICES)
                .map_err(StoreError::unavailable)?;
            let name = record.device_id.clone();
            // An unreadable record counts as version 0: the ingester, which got `Corrupt`
            // reading it, overwrites it by expecting 0.
            let current = opened
                .get(name.as_str())
                .map_err(StoreError::unavailable)?
                .map(|guard| {
                    decode_device(&name, guard.value()).map_or(0, |record| record.version)
                });
            let version = match (current, expected_version) {
                (None, None) => 1,
                (Some(_), None) => {
                    return Err(StoreError::AlreadyExists { kind: DEVICE, name });
                }
                (None, Some(_)) => return Err(StoreError::NotFound { kind: DEVICE, name }),
                (Some(current), Some(expected)) if current != expected => {
                    return Err(StoreError::Conflict {
                        kind: DEVICE,
                        name,
                        expected,
                    });
                }
                (Some(current), Some(_)) => current + 1,
            };
            let written = DeviceRecord { version, ..record };
            let bytes = serde_json::to_vec(&written).map_err(StoreError::unavailable)?;
            opened
                .insert(name.as_str(), bytes.as_slice())
                .map_err(StoreError::unavailable)?;
            Ok(version)
        })
        .await
    }

    async fn expire_devices(&self, seen_before_ms: u64) -> Result<u64, StoreError> {
        self.write(move |transaction| {
            let mut opened = transaction
                .open_table(DEVICES)
                .map_err(StoreError::unavailable)?;
            let mut expired = Vec::new();
            for entry in opened.iter().map_err(StoreError::unavailable)? {
                let (key, value) = entry.map_err(StoreError::unavailable)?;
                let seen = decode_device(key.value(), value.value())
                    .map_or(0, |record| record.last_seen_ms);
                if seen < seen_before_ms {
                    expired.push(key.value().to_string());
                }
            }
            for device in &expired {
                opened
                    .remove(device.as_str())
                    .map_err(StoreError::unavailable)?;
            }
            Ok(expired.len() as u64)
        })
        .await
    }

    async fn put_report(&self, record: &ReportRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(record).map_err(StoreError::unavailable)?;
        let record = record.clone();
        self.write(move |transaction| {
            let (key, slot) = (record.key.as_str(), record.slot_id());
            let mut slots = transaction
                .open_table(REPORT_SLOTS)
                .map_err(StoreError::unavailable)?;
            let mut reports = transaction
                .open_table(REPORTS)
                .map_err(StoreError::unavailable)?;
            let current = slots
                .get(slot.as_str())
                .map_err(StoreError::unavailable)?
                .map(|guard| guard.value().to_string());
            if let Some(current) = current {
                let held = reports
                    .get(current.as_str())
                    .map_err(StoreError::unavailable)?
                    .and_then(|guard| decode_report(&current, guard.value()).ok());
                // A newer report holds the slot: this older one is not history any more.
                if held.is_some_and(|held| held.supersedes(&record)) {
                    return Ok(());
                }
                reports
                    .remove(current.as_str())
                    .map_err(StoreError::unavailable)?;
            }
            slots
                .insert(slot.as_str(), key)
                .map_err(StoreError::unavailable)?;
            reports
                .insert(key, bytes.as_slice())
                .map_err(StoreError::unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_reports(&self, query: &ReportQuery) -> Result<Vec<ReportRecord>, StoreError> {
        let query = query.clone();
        self.blocking(move |database| {
            let transaction = database.begin_read().map_err(StoreError::unavailable)?;
            let opened = transaction
                .open_table(REPORTS)
                .map_err(StoreError::unavailable)?;
            let entries = match &query.after {
                Some(after) => opened.range::<&str>(after.as_str()..),
                None => opened.range::<&str>(..),
            }
            .map_err(StoreError::unavailable)?;
            let mut records = Vec::new();
            for entry in entries {
                if records.len() >= query.limit {
                    break;
                }
                let (key, value) = entry.map_err(StoreError::unavailable)?;
                if query
                    .before
                    .as_ref()
                    .is_some_and(|before| key.value() >= before.as_str())
                {
                    break;
                }
                // A record that does not parse is skipped: its slot's next report replaces
                // it, and the time limit removes it.
                let Ok(record) = decode_report(key.value(), value.value()) else {
                    continue;
                };
                if query.matches(&record) {
                    records.push(record);
                }
            }
            Ok(records)
        })
        .await
    }

    async fn expire_reports(&self, received_before_ms: u64) -> Result<u64, StoreError> {
        // In transactions of at most `MAX_BATCH` removals, so that a pass after a long
        // downtime does not hold the shared writer (and the changes waiting on it) for long.
        let mut removed = 0;
        loop {
            let batch = self.expire_reports_batch(received_before_ms).await?;
            removed += batch;
            if batch < MAX_BATCH as u64 {
                return Ok(removed);
            }
        }
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(entry).map_err(StoreError::unavailable)?;
        let id = entry.id.clone();
        self.write(move |transaction| {
            transaction
                .open_table(AUDIT)
                .map_err(StoreError::unavailable)?
                .insert(id.as_str(), bytes.as_slice())
                .map_err(StoreError::unavailable)?;
            Ok(())
        })
        .await
    }

    async fn list_audit(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let before = before.map(str::to_string);
        self.blocking(move |database| {
            let transaction = database.begin_read().map_err(StoreError::unavailable)?;
            let opened = transaction
                .open_table(AUDIT)
                .map_err(StoreError::unavailable)?;
            let entries = match &before {
                Some(before) => opened.range::<&str>(..before.as_str()),
                None => opened.range::<&str>(..),
            }
            .map_err(StoreError::unavailable)?;
            let mut found = Vec::new();
            for entry in entries.rev() {
                if found.len() >= limit {
                    break;
                }
                let (_, value) = entry.map_err(StoreError::unavailable)?;
                // An entry that does not parse is skipped (the time limit removes it).
                if let Ok(entry) = serde_json::from_slice::<AuditEntry>(value.value()) {
                    found.push(entry);
                }
            }
            Ok(found)
        })
        .await
    }

    async fn expire_audit(&self, before_ms: u64) -> Result<u64, StoreError> {
        // In batches, as past reports are.
        let floor = AuditEntry::make_id(before_ms, 0);
        let mut removed = 0;
        loop {
            let floor = floor.clone();
            let batch = self
                .write(move |transaction| {
                    let mut audit = transaction
                        .open_table(AUDIT)
                        .map_err(StoreError::unavailable)?;
                    let mut expired = Vec::new();
                    for entry in audit
                        .range::<&str>(..floor.as_str())
                        .map_err(StoreError::unavailable)?
                        .take(MAX_BATCH)
                    {
                        let (key, _) = entry.map_err(StoreError::unavailable)?;
                        expired.push(key.value().to_string());
                    }
                    for key in &expired {
                        audit
                            .remove(key.as_str())
                            .map_err(StoreError::unavailable)?;
                    }
                    Ok(expired.len() as u64)
                })
                .await?;
            removed += batch;
            if batch < MAX_BATCH as u64 {
                return Ok(removed);
            }
        }
    }
}

impl EmbeddedStore {
    /// Removes up to `MAX_BATCH` past reports received before `received_before_ms`.
    async fn expire_reports_batch(&self, received_before_ms: u64) -> Result<u64, StoreError> {
        let floor = key_floor(received_before_ms);
        self.write(move |transaction| {
            let mut reports = transaction
                .open_table(REPORTS)
                .map_err(StoreError::unavailable)?;
            let mut slots = transaction
                .open_table(REPORT_SLOTS)
                .map_err(StoreError::unavailable)?;
            let mut expired = Vec::new();
            for entry in reports
                .range::<&str>(..floor.as_str())
                .map_err(StoreError::unavailable)?
            {
                if expired.len() >= MAX_BATCH {
                    break;
                }
                let (key, value) = entry.map_err(StoreError::unavailable)?;
                let slot = decode_report(key.value(), value.value())
                    .ok()
                    .map(|record| record.slot_id());
                expired.push((key.value().to_string(), slot));
            }
            for (key, slot) in &expired {
                reports
                    .remove(key.as_str())
                    .map_err(StoreError::unavailable)?;
                if let Some(slot) = slot {
                    slots
                        .remove(slot.as_str())
                        .map_err(StoreError::unavailable)?;
                }
            }
            Ok(expired.len() as u64)
        })
        .await
    }
}

fn decode_device(device_id: &str, bytes: &[u8]) -> Result<DeviceRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        kind: DEVICE,
        name: device_id.to_string(),
        reason: error.to_string(),
    })
}

fn decode_report(key: &str, bytes: &[u8]) -> Result<ReportRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        kind: REPORT,
        name: key.to_string(),
        reason: error.to_string(),
    })
}
