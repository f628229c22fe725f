//! The MongoDB store, for many control-plane instances sharing one database.
//!
//! One collection per kind, one document per object: `{_id: name, name, version,
//! pending_publish, tombstone, body}`. Every write is a single-document operation (insert,
//! whole-document replace or delete) filtered on `{_id, version}`, which MongoDB applies
//! atomically: that is the compare-and-swap. Whole-document replaces, not `$set` updates,
//! keep field types exactly as written on every MongoDB-wire server (a `$set` of a boolean
//! stores an integer on some). The body is the typed document's JSON text, so the stored
//! layout is the same as in the embedded store.
//!
//! Made for a replica set or a sharded cluster behind `mongos` (DESIGN §7): every write is
//! acknowledged by a majority and journaled, every read is majority-committed (so a write a
//! client saw acknowledged is never rolled back by a failover, and no instance acts on one
//! that could be), writes and reads are retried once by the driver across a primary change
//! (retryable writes and reads), and every query is by `_id`, the natural shard key. A
//! standalone server accepts the same concerns (the driver retries no write there: retryable
//! writes need a replica set or `mongos`). The URL names the servers as MongoDB documents it:
//! `mongodb://a:27017,b:27017,c:27017/?replicaSet=rs0` for a replica set (any members; the
//! driver discovers the rest and follows the primary), `mongodb://s1:27017,s2:27017/` for
//! `mongos` routers (the driver spreads operations over them and skips one that is down).
//!
//! Store-wide values live in the `nebula_meta` collection: the store's identity
//! (`{_id: "store", store_id}`) and the last incarnation handed out (`{_id: "incarnation"}`).

use super::history::key_floor;
use super::{
    AuditEntry, DeviceQuery, DeviceRecord, Kind, Record, ReportQuery, ReportRecord, Store,
};
use super::{new_store_id, now_micros};
use crate::error::StoreError;
use async_trait::async_trait;
use futures_util::TryStreamExt;
use mongodb::bson::{Bson, Document, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::{
    Acknowledgment, ClientOptions, IndexOptions, ReadConcern, ReturnDocument, WriteConcern,
};
use mongodb::{Client, Collection, Database, IndexModel};
use nebula_protocol::{Incarnation, StoreId};
use std::time::Duration;

/// MongoDB's duplicate key error code.
const DUPLICATE_KEY: i32 = 11000;
/// The collection of store-wide values.
const META: &str = "nebula_meta";
/// The device registry: `{_id: device id, version, last_seen_ms, device_group, apps, body}`,
/// indexed on the group (listings filter on it) and on `last_seen_ms` (expiry).
const DEVICES: &str = "devices";
const DEVICE: &str = "device";
/// The report history: `{_id: slot id, key, device_id, slot, version, received_ms, hostname,
/// device_group, report_creation_time, updated, body}`, one document per device slot (a
/// report replaces its slot's document), indexed on `key` (order, paging and expiry).
/// `updated` is stored as 0/1: filtering on an integer means the same on every
/// MongoDB-wire server.
const REPORTS: &str = "reports";
const REPORT: &str = "report";
/// The audit trail: `{_id: entry id, body}` (ids sort as entries were recorded).
const AUDIT: &str = "audit";

#[derive(Debug, Clone)]
pub struct MongoStore {
    database: Database,
    identity: StoreId,
}

fn version_to_bson(kind: Kind, name: &str, version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| {
        StoreError::corrupt(
            kind,
            name,
            format!("version {version} does not fit in an int64"),
        )
    })
}

fn to_document(kind: Kind, record: &Record, version: u64) -> Result<Document, StoreError> {
    Ok(doc! {
        "_id": &record.name,
        "name": &record.name,
        "version": version_to_bson(kind, &record.name, version)?,
        "pending_publish": record.pending_publish,
        "tombstone": record.tombstone,
        "body": &record.body,
    })
}

fn from_document(kind: Kind, document: &Document) -> Result<Record, StoreError> {
    let name = document.get_str("_id").unwrap_or_default().to_string();
    let corrupt = |reason: String| StoreError::corrupt(kind, &name, reason);
    // Some servers hand back small integers as int32; accept both widths.
    let version = integer(document.get("version"))
        .ok_or_else(|| corrupt("missing or invalid version".into()))?;
    Ok(Record {
        name: name.clone(),
        version,
        pending_publish: document
            .get_bool("pending_publish")
            .map_err(|error| corrupt(error.to_string()))?,
        tombstone: document
            .get_bool("tombstone")
            .map_err(|error| corrupt(error.to_string()))?,
        body: document
            .get_str("body")
            .map_err(|error| corrupt(error.to_string()))?
            .to_string(),
    })
}

/// A non-negative integer field, whichever width the server chose (some hand back small
/// values as int32).
fn integer(value: Option<&Bson>) -> Option<u64> {
    match value {
        Some(Bson::Int64(value)) => u64::try_from(*value).ok(),
        Some(Bson::Int32(value)) => u64::try_from(*value).ok(),
        _ => None,
    }
}

impl MongoStore {
    /// Connects, checks the server answers, creates the indexes and reads (or makes) the
    /// store's identity.
    pub async fn connect(url: &str, database: &str) -> Result<Self, StoreError> {
        let options = client_options(url).await?;
        let client = Client::with_options(options).map_err(StoreError::unavailable)?;
        let database = client.database(database);
        let mut store = Self {
            database,
            identity: StoreId(0),
        };
        store.ping().await?;
        store.create_indexes().await?;
        store.identity = store.read_or_make_identity().await?;
        Ok(store)
    }

    fn meta(&self) -> Collection<Document> {
        self.database.collection(META)
    }

    /// The identity in `nebula_meta`, made by whichever instance initialises the store first
    /// (a second one racing it gets a duplicate key and reads the winner's).
    async fn read_or_make_identity(&self) -> Result<StoreId, StoreError> {
        let read = || async {
            let found = self
                .meta()
                .find_one(doc! {"_id": "store"})
                .await
                .map_err(StoreError::unavailable)?;
            found
                .map(|document| {
                    document
                        .get_str("store_id")
                        .ok()
                        .and_then(StoreId::parse_hex)
                        .ok_or_else(|| {
                            StoreError::Unavailable(format!(
                                "{META} holds an invalid store id: {document}"
                            ))
                        })
                })
                .transpose()
        };
        if let Some(identity) = read().await? {
            return Ok(identity);
        }
        let identity = new_store_id();
        match self
            .meta()
            .insert_one(doc! {"_id": "store", "store_id": identity.to_string()})
            .await
        {
            Ok(_) => Ok(identity),
            Err(error) if is_duplicate_key(&error) => read().await?.ok_or_else(|| {
                StoreError::Unavailable("the store id vanished while being read".into())
            }),
            Err(error) => Err(StoreError::unavailable(error)),
        }
    }

    fn collection(&self, kind: Kind) -> Collection<Document> {
        self.database.collection(kind.collection())
    }

    /// The outbox's query has an index; lookups by name use `_id`, unique by nature.
    async fn create_indexes(&self) -> Result<(), StoreError> {
        for kind in Kind::ALL {
            let pending = IndexModel::builder()
                .keys(doc! {"pending_publish": 1})
                .options(
                    IndexOptions::builder()
                        .name("pending_publish".to_string())
                        .build(),
                )
                .build();
            self.collection(kind)
                .create_index(pending)
                .await
                .map_err(StoreError::unavailable)?;
        }
        let index = |field: &str| {
            IndexModel::builder()
                .keys(doc! {field: 1})
                .options(IndexOptions::builder().name(field.to_string()).build())
                .build()
        };
        self.devices()
            .create_indexes([index("device_group"), index("last_seen_ms")])
            .await
            .map_err(StoreError::unavailable)?;
        self.reports()
            .create_index(index("key"))
            .await
            .map_err(StoreError::unavailable)?;
        Ok(())
    }

    fn devices(&self) -> Collection<Document> {
        self.database.collection(DEVICES)
    }

    fn reports(&self) -> Collection<Document> {
        self.database.collection(REPORTS)
    }

    fn audit(&self) -> Collection<Document> {
        self.database.collection(AUDIT)
    }

    async fn find(&self, kind: Kind, filter: Document) -> Result<Vec<Record>, StoreError> {
        let cursor = self
            .collection(kind)
            .find(filter)
            .sort(doc! {"_id": 1})
            .await
            .map_err(StoreError::unavailable)?;
        let documents: Vec<Document> = cursor
            .try_collect()
            .await
            .map_err(StoreError::unavailable)?;
        // A document whose bookkeeping does not parse (edited by hand) is still listed by
        // name, as a corrupt object, rather than failing the whole listing: corruption is
        // that object's error (reading it answers `Corrupt`).
        let mut records: Vec<Record> = documents
            .iter()
            .map(|document| {
                from_document(kind, document).unwrap_or_else(|_| Record {
                    name: document.get_str("_id").unwrap_or_default().to_string(),
                    version: 0,
                    pending_publish: false,
                    tombstone: false,
                    body: String::new(),
                })
            })
            .collect();
        // Sorted here as well, so the order never depends on the server honouring `sort`.
        records.sort_by(|left, right| left.name.cmp(&right.name));
        Ok(records)
    }

    /// Tells a failed CAS apart: the object is gone, or it changed.
    async fn cas_failure(&self, kind: Kind, name: &str, expected: u64) -> StoreError {
        match self.get(kind, name).await {
            Ok(Some(_)) => StoreError::Conflict {
                kind: kind.label(),
                name: name.to_string(),
                expected,
            },
            Ok(None) => StoreError::NotFound {
                kind: kind.label(),
                name: name.to_string(),
            },
            Err(error) => error,
        }
    }
}

/// The driver's options for `url`: the URL's own, and for each one it leaves unset, what
/// DESIGN §2 needs. So an operator can still choose (`w`, `journal`, `wtimeoutMS`,
/// `readConcernLevel`, `retryWrites`, `retryReads`, `serverSelectionTimeoutMS`, `appName`),
/// one option at a time: `?wtimeoutMS=5000` alone keeps `w: majority, j: true`.
pub(crate) async fn client_options(url: &str) -> Result<ClientOptions, StoreError> {
    let mut options = ClientOptions::parse(url)
        .await
        .map_err(StoreError::unavailable)?;
    apply_defaults(&mut options);
    Ok(options)
}

fn apply_defaults(options: &mut ClientOptions) {
    options
        .app_name
        .get_or_insert_with(|| "nebula-control-plane".into());
    // Fail fast when the server is gone: the instance exits and its supervisor retries. (A
    // replica set elects a new primary within about 12 s by default; to ride that out rather
    // than restart, raise serverSelectionTimeoutMS in the URL.)
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    let write_concern = options
        .write_concern
        .get_or_insert_with(WriteConcern::default);
    let unacknowledged = write_concern.w == Some(Acknowledgment::Nodes(0));
    write_concern.w.get_or_insert(Acknowledgment::Majority);
    // (`w: 0` with `j: true` is refused by the driver: an unacknowledged write cannot be
    // journaled for the client.)
    if !unacknowledged {
        write_concern.journal.get_or_insert(true);
    }
    write_concern
        .w_timeout
        .get_or_insert(Duration::from_secs(10));
    options
        .read_concern
        .get_or_insert_with(ReadConcern::majority);
    // Both are the driver's defaults too; explicit here, since DESIGN §7 counts on them: a
    // write or read that meets a primary change is retried once, on the new primary.
    options.retry_writes.get_or_insert(true);
    options.retry_reads.get_or_insert(true);
}

fn is_duplicate_key(error: &mongodb::error::Error) -> bool {
    matches!(
        &*error.kind,
        ErrorKind::Write(WriteFailure::WriteError(write)) if write.code == DUPLICATE_KEY
    )
}

/// MongoDB's `BSONObjectTooLarge`.
const BSON_OBJECT_TOO_LARGE: i32 = 10334;

/// An error of the one document written rather than of the database: the driver refusing a
/// document beyond the server's `maxBsonObjectSize` (16 MB), or the server refusing it.
/// Taken for the database failing, it would end the instance, and the same write would end
/// the next one.
fn is_refused_document(error: &mongodb::error::Error) -> bool {
    match &*error.kind {
        ErrorKind::InvalidArgument { .. } | ErrorKind::BsonSerialization(_) => true,
        ErrorKind::Command(command) => command.code == BSON_OBJECT_TOO_LARGE,
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == BSON_OBJECT_TOO_LARGE,
        _ => false,
    }
}

/// A failed write of device `name`: [`StoreError::Refused`] for an error of the document.
fn device_write_error(name: &str, error: mongodb::error::Error) -> StoreError {
    if is_refused_document(&error) {
        StoreError::Refused {
            kind: DEVICE,
            name: name.to_string(),
            reason: error.to_string(),
        }
    } else {
        StoreError::unavailable(error)
    }
}

#[async_trait]
impl Store for MongoStore {
    fn backend(&self) -> &'static str {
        "mongodb"
    }

    fn identity(&self) -> StoreId {
        self.identity
    }

    async fn next_incarnation(&self) -> Result<Incarnation, StoreError> {
        // Two single-document operations, each atomic: raise the counter to the clock (a
        // no-op once it is ahead), then take the next value. Concurrent callers on any
        // number of instances each get their own value from `$inc`.
        let floor = i64::try_from(now_micros()).unwrap_or(i64::MAX);
        self.meta()
            .update_one(doc! {"_id": "incarnation"}, doc! {"$max": {"value": floor}})
            .upsert(true)
            .await
            .map_err(StoreError::unavailable)?;
        let updated = self
            .meta()
            .find_one_and_update(doc! {"_id": "incarnation"}, doc! {"$inc": {"value": 1i64}})
            .return_document(ReturnDocument::After)
            .await
            .map_err(StoreError::unavailable)?;
        updated
            .as_ref()
            .and_then(|document| integer(document.get("value")))
            .ok_or_else(|| StoreError::Unavailable("the incarnation counter vanished".into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.database
            .run_command(doc! {"ping": 1})
            .await
            .map_err(StoreError::unavailable)?;
        Ok(())
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<Record>, StoreError> {
        let found = self
            .collection(kind)
            .find_one(doc! {"_id": name})
            .await
            .map_err(StoreError::unavailable)?;
        found
            .as_ref()
            .map(|document| from_document(kind, document))
            .transpose()
    }

    async fn list(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.find(kind, doc! {}).await
    }

    async fn insert(&self, kind: Kind, record: &Record) -> Result<(), StoreError> {
        let document = to_document(kind, record, 1)?;
        match self.collection(kind).insert_one(document).await {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => Err(StoreError::AlreadyExists {
                kind: kind.label(),
                name: record.name.clone(),
            }),
            Err(error) => Err(StoreError::unavailable(error)),
        }
    }

    async fn replace(
        &self,
        kind: Kind,
        expected_version: u64,
        record: &Record,
    ) -> Result<u64, StoreError> {
        let new_version = expected_version + 1;
        let filter = doc! {
            "_id": &record.name,
            "version": version_to_bson(kind, &record.name, expected_version)?,
        };
        let result = self
            .collection(kind)
            .replace_one(filter, to_document(kind, record, new_version)?)
            .await
            .map_err(StoreError::unavailable)?;
        if result.matched_count == 1 {
            Ok(new_version)
        } else {
            Err(self.cas_failure(kind, &record.name, expected_version).await)
        }
    }

    async fn clear_pending(&self, kind: Kind, record: &Record) -> Result<bool, StoreError> {
        // One whole-document replace filtered on the version: no read first, and the flag
        // stays a boolean on every server.
        let cleared = Record {
            pending_publish: false,
            ..record.clone()
        };
        let filter = doc! {
            "_id": &record.name,
            "version": version_to_bson(kind, &record.name, record.version)?,
        };
        let result = self
            .collection(kind)
            .replace_one(filter, to_document(kind, &cleared, record.version)?)
            .await
            .map_err(StoreError::unavailable)?;
        Ok(result.matched_count == 1)
    }

    async fn pending(&self, kind: Kind) -> Result<Vec<Record>, StoreError> {
        self.find(kind, doc! {"pending_publish": true}).await
    }

    async fn get_device(&self, device_id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        let found = self
            .devices()
            .find_one(doc! {"_id": device_id})
            .await
            .map_err(StoreError::unavailable)?;
        found.as_ref().map(device_from_document).transpose()
    }

    async fn list_devices(&self, query: &DeviceQuery) -> Result<Vec<DeviceRecord>, StoreError> {
        let mut filter = doc! {};
        if let Some(group) = &query.device_group {
            filter.insert("device_group", group);
        }
        // The app filter runs here, not in the query: not every MongoDB-wire server matches
        // an array field by one of its elements. Without it the limit can go to the server.
        let server_limit = if query.app.is_none() {
            i64::try_from(query.limit).ok()
        } else {
            None
        };
        if let Some(after) = &query.after {
            filter.insert("_id", doc! {"$gt": after});
        }
        let devices = self.devices();
        let mut find = devices.find(filter).sort(doc! {"_id": 1});
        if let Some(limit) = server_limit {
            find = find.limit(limit);
        }
        let documents: Vec<Document> = find
            .await
            .map_err(StoreError::unavailable)?
            .try_collect()
            .await
            .map_err(StoreError::unavailable)?;
        // A document that does not parse is skipped: the device's next report replaces it.
        let mut records: Vec<DeviceRecord> = documents
            .iter()
            .filter_map(|document| device_from_document(document).ok())
            .filter(|record| query.matches(record))
            .collect();
        // Sorted and cut here as well, so the answer never depends on the server honouring
        // `sort` and `limit`.
        records.sort_by(|left, right| left.device_id.cmp(&right.device_id));
        records.truncate(query.limit);
        Ok(records)
    }

    async fn put_device(
        &self,
        record: &DeviceRecord,
        expected_version: Option<u64>,
    ) -> Result<u64, StoreError> {
        let name = &record.device_id;
        let Some(expected) = expected_version else {
            let document = device_to_document(record, 1)?;
            return match self.devices().insert_one(document).await {
                Ok(_) => Ok(1),
                Err(error) if is_duplicate_key(&error) => Err(StoreError::AlreadyExists {
                    kind: DEVICE,
                    name: name.clone(),
                }),
                Err(error) => Err(device_write_error(name, error)),
            };
        };
        let version = expected + 1;
        // A record at "version 0" is one that does not parse (see `device_from_document`):
        // the ingester overwrites it whatever its stored version field says.
        let filter = if expected == 0 {
            doc! {"_id": name}
        } else {
            doc! {"_id": name, "version": device_version(name, expected)?}
        };
        let result = self
            .devices()
            .replace_one(filter, device_to_document(record, version)?)
            .await
            .map_err(|error| device_write_error(name, error))?;
        if result.matched_count == 1 {
            return Ok(version);
        }
        match self.get_device(name).await {
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => Err(StoreError::Conflict {
                kind: DEVICE,
                name: name.clone(),
                expected,
            }),
            Ok(None) => Err(StoreError::NotFound {
                kind: DEVICE,
                name: name.clone(),
            }),
            Err(error) => Err(error),
        }
    }

    async fn expire_devices(&self, seen_before_ms: u64) -> Result<u64, StoreError> {
        let cutoff = i64::try_from(seen_before_ms).unwrap_or(i64::MAX);
        let result = self
            .devices()
            .delete_many(doc! {"last_seen_ms": {"$lt": cutoff}})
            .await
            .map_err(StoreError::unavailable)?;
        Ok(result.deleted_count)
    }

    async fn put_report(&self, record: &ReportRecord) -> Result<(), StoreError> {
        let slot = record.slot_id();
        // Replaces the slot's report unless a later one holds it (`ReportRecord::supersedes`;
        // a document without a key, hand-edited, is replaced too). Then the filter matches
        // nothing and the upsert's insert collides with that document's `_id`: the duplicate
        // key error says "a later report is there", the outcome wanted (nx-27017 leaves the
        // document as it is without an error: the same outcome). `$or`, `$lte` and a boolean
        // `$exists` are operators every MongoDB-wire server the tests run on implements.
        let filter = doc! {
            "_id": &slot,
            "$or": [
                {"key": {"$lte": &record.key}},
                {"key": {"$exists": false}},
            ],
        };
        match self
            .reports()
            .replace_one(filter, report_to_document(record))
            .upsert(true)
            .await
        {
            Ok(_) => Ok(()),
            Err(error) if is_duplicate_key(&error) => Ok(()),
            Err(error) if is_refused_document(&error) => Err(StoreError::Refused {
                kind: REPORT,
                name: slot,
                reason: error.to_string(),
            }),
            Err(error) => Err(StoreError::unavailable(error)),
        }
    }

    async fn list_reports(&self, query: &ReportQuery) -> Result<Vec<ReportRecord>, StoreError> {
        let mut filter = doc! {};
        if let Some(hostname) = &query.hostname {
            filter.insert("hostname", hostname);
        }
        if let Some(group) = &query.device_group {
            filter.insert("device_group", group);
        }
        if let Some((comparison, wanted)) = query.created {
            filter.insert(
                "report_creation_time",
                doc! {comparison.operator(): clamp(wanted)},
            );
        }
        if let Some(updated) = query.updated {
            filter.insert("updated", i32::from(updated));
        }
        let mut key = doc! {};
        if let Some(after) = &query.after {
            key.insert("$gt", after);
        }
        if let Some(before) = &query.before {
            key.insert("$lt", before);
        }
        if !key.is_empty() {
            filter.insert("key", key);
        }
        let reports = self.reports();
        let mut find = reports.find(filter).sort(doc! {"key": 1});
        if let Ok(limit) = i64::try_from(query.limit) {
            find = find.limit(limit);
        }
        let documents: Vec<Document> = find
            .await
            .map_err(StoreError::unavailable)?
            .try_collect()
            .await
            .map_err(StoreError::unavailable)?;
        // The server filters, sorts and cuts the page (the contract suite pages every filter
        // one report at a time, so a server that did not would fail it). Checked here as
        // well, so that a report that does not match is never shown: a document that does
        // not parse, or a server that filtered wrongly, makes a page short, never wrong.
        let mut records: Vec<ReportRecord> = documents
            .iter()
            .filter_map(|document| report_from_document(document).ok())
            .filter(|record| query.matches(record))
            .collect();
        records.sort_by(|left, right| left.key.cmp(&right.key));
        records.truncate(query.limit);
        Ok(records)
    }

    async fn expire_reports(&self, received_before_ms: u64) -> Result<u64, StoreError> {
        let result = self
            .reports()
            .delete_many(doc! {"key": {"$lt": key_floor(received_before_ms)}})
            .await
            .map_err(StoreError::unavailable)?;
        Ok(result.deleted_count)
    }

    async fn append_audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let body = serde_json::to_string(entry).map_err(StoreError::unavailable)?;
        self.audit()
            .insert_one(doc! {"_id": &entry.id, "body": body})
            .await
            .map_err(StoreError::unavailable)?;
        Ok(())
    }

    async fn list_audit(
        &self,
        before: Option<&str>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>, StoreError> {
        let filter = match before {
            Some(before) => doc! {"_id": {"$lt": before}},
            None => doc! {},
        };
        let audit = self.audit();
        let mut find = audit.find(filter).sort(doc! {"_id": -1});
        if let Ok(limit) = i64::try_from(limit) {
            find = find.limit(limit);
        }
        let documents: Vec<Document> = find
            .await
            .map_err(StoreError::unavailable)?
            .try_collect()
            .await
            .map_err(StoreError::unavailable)?;
        // The server sorts and cuts the page (the contract suite pages through it); checked
        // here as well, so a page is short, never wrong. An entry that does not parse is
        // skipped (the time limit removes it).
        let mut entries: Vec<AuditEntry> = documents
            .iter()
            .filter_map(|document| document.get_str("body").ok())
            .filter_map(|body| serde_json::from_str::<AuditEntry>(body).ok())
            .filter(|entry| before.is_none_or(|before| entry.id.as_str() < before))
            .collect();
        entries.sort_by(|left, right| right.id.cmp(&left.id));
        entries.truncate(limit);
        Ok(entries)
    }

    async fn expire_audit(&self, before_ms: u64) -> Result<u64, StoreError> {
        let result = self
            .audit()
            .delete_many(doc! {"_id": {"$lt": AuditEntry::make_id(before_ms, 0)}})
            .await
            .map_err(StoreError::unavailable)?;
        Ok(result.deleted_count)
    }
}

fn device_version(device_id: &str, version: u64) -> Result<i64, StoreError> {
    i64::try_from(version).map_err(|_| StoreError::Corrupt {
        kind: DEVICE,
        name: device_id.to_string(),
        reason: format!("version {version} does not fit in an int64"),
    })
}

/// A stored number: an int64 (values beyond it, which no clock gives, are cut to its top).
fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn report_to_document(record: &ReportRecord) -> Document {
    doc! {
        "_id": record.slot_id(),
        "key": &record.key,
        "device_id": &record.device_id,
        "slot": i64::from(record.slot),
        "version": clamp(record.version),
        "received_ms": clamp(record.received_ms),
        "hostname": &record.hostname,
        "device_group": record.device_group.clone().map_or(Bson::Null, Bson::String),
        "report_creation_time": clamp(record.report_creation_time),
        "updated": i32::from(record.updated),
        "body": &record.body,
    }
}

fn report_from_document(document: &Document) -> Result<ReportRecord, StoreError> {
    let slot_id = document.get_str("_id").unwrap_or_default().to_string();
    let corrupt = |reason: &str| StoreError::Corrupt {
        kind: REPORT,
        name: slot_id.clone(),
        reason: reason.to_string(),
    };
    let text = |field: &str| {
        document
            .get_str(field)
            .map(str::to_string)
            .map_err(|_| corrupt(&format!("invalid {field}")))
    };
    let number = |field: &str| {
        integer(document.get(field)).ok_or_else(|| corrupt(&format!("invalid {field}")))
    };
    Ok(ReportRecord {
        key: text("key")?,
        device_id: text("device_id")?,
        slot: u32::try_from(number("slot")?).map_err(|_| corrupt("invalid slot"))?,
        version: number("version")?,
        received_ms: number("received_ms")?,
        hostname: text("hostname")?,
        device_group: document.get_str("device_group").ok().map(str::to_string),
        report_creation_time: number("report_creation_time")?,
        updated: number("updated")? != 0,
        body: text("body")?,
    })
}

fn device_to_document(record: &DeviceRecord, version: u64) -> Result<Document, StoreError> {
    let last_seen = i64::try_from(record.last_seen_ms).unwrap_or(i64::MAX);
    Ok(doc! {
        "_id": &record.device_id,
        "version": device_version(&record.device_id, version)?,
        "last_seen_ms": last_seen,
        "device_group": record.device_group.clone().map_or(Bson::Null, Bson::String),
        "apps": &record.apps,
        "body": &record.body,
    })
}

fn device_from_document(document: &Document) -> Result<DeviceRecord, StoreError> {
    let device_id = document.get_str("_id").unwrap_or_default().to_string();
    let corrupt = |reason: &str| StoreError::Corrupt {
        kind: DEVICE,
        name: device_id.clone(),
        reason: reason.to_string(),
    };
    Ok(DeviceRecord {
        device_id: device_id.clone(),
        version: integer(document.get("version")).ok_or_else(|| corrupt("invalid version"))?,
        last_seen_ms: integer(document.get("last_seen_ms"))
            .ok_or_else(|| corrupt("invalid last_seen_ms"))?,
        device_group: document.get_str("device_group").ok().map(str::to_string),
        apps: document
            .get_array("apps")
            .map_err(|_| corrupt("invalid apps"))?
            .iter()
            .filter_map(|app| app.as_str().map(str::to_string))
            .collect(),
        body: document
            .get_str("body")
            .map_err(|_| corrupt("invalid body"))?
            .to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::client_options;
    use mongodb::options::{Acknowledgment, ClientOptions, ReadConcern, ReadConcernLevel};
    use std::time::Duration;

    async fn options(url: &str) -> ClientOptions {
        client_options(url).await.expect("a valid URL")
    }

    fn hosts(options: &ClientOptions) -> Vec<String> {
        options.hosts.iter().map(ToString::to_string).collect()
    }

    /// What DESIGN §2 and §7 need when the URL says nothing.
    fn assert_defaults(options: &ClientOptions) {
        let write = options.write_concern.as_ref().expect("a write concern");
        assert_eq!(write.w, Some(Acknowledgment::Majority));
        assert_eq!(write.journal, Some(true));
        assert_eq!(write.w_timeout, Some(Duration::from_secs(10)));
        assert_eq!(options.read_concern, Some(ReadConcern::majority()));
        assert_eq!(options.retry_writes, Some(true));
        assert_eq!(options.retry_reads, Some(true));
        assert_eq!(
            options.server_selection_timeout,
            Some(Duration::from_secs(10))
        );
        assert_eq!(options.app_name.as_deref(), Some("nebula-control-plane"));
    }

    #[tokio::test]
    async fn a_single_server_gets_majority_journaled_writes_majority_reads_and_retries() {
        let options = options("mongodb://127.0.0.1:27017").await;
        assert_eq!(hosts(&options), ["127.0.0.1:27017"]);
        assert_defaults(&options);
    }

    #[tokio::test]
    async fn a_replica_set_url_is_taken_as_given() {
        let options = options("mongodb://a:27017,b:27017,c:27017/?replicaSet=rs0").await;
        assert_eq!(hosts(&options), ["a:27017", "b:27017", "c:27017"]);
        assert_eq!(options.repl_set_name.as_deref(), Some("rs0"));
        // The driver discovers the members and follows the primary: no direct connection.
        assert_ne!(options.direct_connection, Some(true));
        assert_defaults(&options);
    }

    #[tokio::test]
    async fn a_mongos_list_is_taken_as_given() {
        let options = options("mongodb://mongos-1:27017,mongos-2:27018/").await;
        assert_eq!(hosts(&options), ["mongos-1:27017", "mongos-2:27018"]);
        assert_eq!(options.repl_set_name, None);
        assert_defaults(&options);
    }

    #[tokio::test]
    async fn the_url_s_own_options_win_one_at_a_time() {
        let options = options(
            "mongodb://a:27017,b:27017/?replicaSet=rs0&retryWrites=false&retryReads=false\
             &wtimeoutMS=2500&readConcernLevel=local&serverSelectionTimeoutMS=30000",
        )
        .await;
        assert_eq!(options.retry_writes, Some(false));
        assert_eq!(options.retry_reads, Some(false));
        assert_eq!(
            options.read_concern.map(|concern| concern.level),
            Some(ReadConcernLevel::Local)
        );
        assert_eq!(
            options.server_selection_timeout,
            Some(Duration::from_secs(30))
        );
        // Only the time-out was set: the rest of the write concern stays ours.
        let write = options.write_concern.expect("a write concern");
        assert_eq!(write.w_timeout, Some(Duration::from_millis(2500)));
        assert_eq!(write.w, Some(Acknowledgment::Majority));
        assert_eq!(write.journal, Some(true));

        let write = self::options("mongodb://h:27017/?w=2&journal=false")
            .await
            .write_concern
            .expect("a write concern");
        assert_eq!(write.w, Some(Acknowledgment::Nodes(2)));
        assert_eq!(write.journal, Some(false));
        // Unacknowledged writes cannot be journaled: no `j` is added to `w: 0`.
        let write = self::options("mongodb://h:27017/?w=0")
            .await
            .write_concern
            .expect("a write concern");
        assert_eq!(write.w, Some(Acknowledgment::Nodes(0)));
        assert_eq!(write.journal, None);
    }
}
