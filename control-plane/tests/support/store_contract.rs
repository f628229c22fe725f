//! The contract every `Store` implementation must keep, run against each of them
//! (`store_contract.rs` for the in-memory and embedded stores, `mongo_store.rs` for MongoDB).
//! Each function takes a fresh, empty store.

use nebula_control_plane::error::StoreError;
use nebula_control_plane::store::history::{
    Comparison, ReportQuery, ReportRecord, key_floor, report_key,
};
use nebula_control_plane::store::{DeviceQuery, DeviceRecord, Kind, Record, Store};
use std::collections::BTreeSet;
use std::sync::Arc;

fn record(name: &str, body: &str, pending: bool) -> Record {
    Record {
        name: name.to_string(),
        version: 0,
        pending_publish: pending,
        tombstone: false,
        body: body.to_string(),
    }
}

pub async fn insert_get_list(store: Arc<dyn Store>) {
    store.ping().await.expect("ping");
    assert_eq!(store.get(Kind::App, "web").await.expect("get"), None);
    store
        .insert(Kind::App, &record("web", r#"{"a":1}"#, true))
        .await
        .expect("insert");
    store
        .insert(Kind::App, &record("api", r#"{"b":true}"#, false))
        .await
        .expect("insert");
    let web = store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(web.version, 1, "insert writes version 1");
    assert_eq!(web.body, r#"{"a":1}"#);
    assert!(web.pending_publish && !web.tombstone);
    let names: Vec<String> = store
        .list(Kind::App)
        .await
        .expect("list")
        .into_iter()
        .map(|record| record.name)
        .collect();
    assert_eq!(names, vec!["api", "web"], "sorted by name");
    // Kinds are separate namespaces.
    assert!(
        store
            .list(Kind::DeviceGroup)
            .await
            .expect("list")
            .is_empty()
    );
    store
        .insert(Kind::DeviceGroup, &record("web", "{}", false))
        .await
        .expect("same name, other kind");
}

pub async fn names_are_unique(store: Arc<dyn Store>) {
    store
        .insert(Kind::App, &record("web", "{}", false))
        .await
        .expect("insert");
    let again = store
        .insert(Kind::App, &record("web", r#"{"x":2}"#, true))
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );
    let kept = store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!((kept.body.as_str(), kept.version), ("{}", 1));
}

pub async fn replace_is_compare_and_swap(store: Arc<dyn Store>) {
    store
        .insert(Kind::App, &record("web", "v1", false))
        .await
        .expect("insert");
    let version = store
        .replace(Kind::App, 1, &record("web", "v2", true))
        .await
        .expect("replace");
    assert_eq!(version, 2);
    let stale = store
        .replace(Kind::App, 1, &record("web", "stale", false))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let current = store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (
            current.body.as_str(),
            current.version,
            current.pending_publish
        ),
        ("v2", 2, true)
    );
    let missing = store
        .replace(Kind::App, 1, &record("nope", "x", false))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    // Tombstones are written like any change.
    let mut tombstone = record("web", "v2", true);
    tombstone.tombstone = true;
    store
        .replace(Kind::App, 2, &tombstone)
        .await
        .expect("tombstone");
    let current = store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("kept");
    assert!(current.tombstone);
    assert_eq!(current.version, 3);
}

pub async fn outbox_flag(store: Arc<dyn Store>) {
    store
        .insert(Kind::App, &record("a", "1", true))
        .await
        .expect("insert");
    store
        .insert(Kind::App, &record("b", "1", false))
        .await
        .expect("insert");
    store
        .insert(Kind::DeviceGroup, &record("g", "1", true))
        .await
        .expect("insert");
    let pending: Vec<String> = store
        .pending(Kind::App)
        .await
        .expect("pending")
        .into_iter()
        .map(|record| record.name)
        .collect();
    assert_eq!(pending, vec!["a"]);
    // A newer version exists: the flag stays for its writer to clear.
    store
        .replace(Kind::App, 1, &record("a", "2", true))
        .await
        .expect("replace");
    let at = |version: u64, body: &str| Record {
        version,
        ..record("a", body, true)
    };
    assert!(
        !store
            .clear_pending(Kind::App, &at(1, "1"))
            .await
            .expect("clear")
    );
    assert_eq!(store.pending(Kind::App).await.expect("pending").len(), 1);
    assert!(
        store
            .clear_pending(Kind::App, &at(2, "2"))
            .await
            .expect("clear")
    );
    let a = store
        .get(Kind::App, "a")
        .await
        .expect("get")
        .expect("exists");
    assert!(!a.pending_publish);
    assert_eq!(
        (a.version, a.body.as_str()),
        (2, "2"),
        "clearing keeps version and body"
    );
    assert!(store.pending(Kind::App).await.expect("pending").is_empty());
    assert!(
        !store
            .clear_pending(Kind::App, &record("missing", "1", true))
            .await
            .expect("clear")
    );
    // The body written with the cleared flag is the one given (a hint dropped from it).
    store
        .replace(Kind::App, 2, &record("a", "3 with hint", true))
        .await
        .expect("replace");
    assert!(
        store
            .clear_pending(Kind::App, &at(3, "3"))
            .await
            .expect("clear")
    );
    let a = store
        .get(Kind::App, "a")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (a.version, a.body.as_str(), a.pending_publish),
        (3, "3", false)
    );
    assert_eq!(
        store
            .pending(Kind::DeviceGroup)
            .await
            .expect("pending")
            .len(),
        1
    );
}

/// A deleted object's record stays as a tombstone and a re-create replaces it: the record's
/// versions keep going up across incarnations, so a compare-and-swap based on a read of the
/// old object fails against the new one.
pub async fn tombstones_keep_versions_going_up(store: Arc<dyn Store>) {
    store
        .insert(Kind::App, &record("web", "old", false))
        .await
        .expect("insert");
    let mut tombstone = record("web", "old", true);
    tombstone.tombstone = true;
    store
        .replace(Kind::App, 1, &tombstone)
        .await
        .expect("tombstone");
    tombstone.version = 2;
    assert!(
        store
            .clear_pending(Kind::App, &tombstone)
            .await
            .expect("clear")
    );
    let again = store.insert(Kind::App, &record("web", "new", true)).await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        store
            .replace(Kind::App, 2, &record("web", "new", true))
            .await
            .expect("re-create over the tombstone"),
        3
    );
    let stale = store
        .replace(Kind::App, 1, &record("web", "stale", false))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let current = store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        (current.version, current.body.as_str(), current.tombstone),
        (3, "new", false)
    );
}

/// N writers doing read-modify-write loops on one object: every increment lands exactly
/// once, and no two writers ever got the same new version.
pub async fn concurrent_writers_lose_nothing(store: Arc<dyn Store>) {
    const WRITERS: u64 = 16;
    store
        .insert(Kind::App, &record("counter", "0", false))
        .await
        .expect("insert");
    let mut tasks = Vec::new();
    for _ in 0..WRITERS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            loop {
                let current = store
                    .get(Kind::App, "counter")
                    .await
                    .expect("get")
                    .expect("exists");
                let count: u64 = current.body.parse().expect("number");
                let next = record("counter", &(count + 1).to_string(), true);
                match store.replace(Kind::App, current.version, &next).await {
                    Ok(version) => return version,
                    Err(StoreError::Conflict { .. }) => continue,
                    Err(error) => panic!("replace failed: {error}"),
                }
            }
        }));
    }
    let mut versions = BTreeSet::new();
    for task in tasks {
        let version = task.await.expect("writer");
        assert!(versions.insert(version), "version {version} produced twice");
    }
    let last = store
        .get(Kind::App, "counter")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(last.version, 1 + WRITERS);
    assert_eq!(last.body, WRITERS.to_string(), "no lost update");
    assert_eq!(versions, (2..=1 + WRITERS).collect::<BTreeSet<_>>());
}

/// Incarnations only go up, never repeat (concurrent callers included), and are at least
/// the current time in microseconds; the identity is fixed for the store's life.
pub async fn identity_and_incarnations(store: Arc<dyn Store>) {
    let identity = store.identity();
    assert_ne!(identity.0, 0, "an identity was made");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_micros() as u64;
    let first = store.next_incarnation().await.expect("incarnation");
    assert!(first >= now, "{first} is below the clock {now}");
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            for _ in 0..8 {
                mine.push(store.next_incarnation().await.expect("incarnation"));
            }
            mine
        }));
    }
    let mut all = BTreeSet::new();
    for task in tasks {
        let mine = task.await.expect("task");
        assert!(mine.windows(2).all(|pair| pair[1] > pair[0]), "{mine:?}");
        for incarnation in mine {
            assert!(incarnation > first);
            assert!(all.insert(incarnation), "{incarnation} handed out twice");
        }
    }
    assert_eq!(store.identity(), identity);
}

/// Writes to many objects at once (the embedded store commits them together): each gets
/// its own outcome, a conflict in one fails only that one.
pub async fn concurrent_writes_of_many_objects(store: Arc<dyn Store>) {
    const OBJECTS: usize = 32;
    let mut tasks = Vec::new();
    for index in 0..OBJECTS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let name = format!("o{index}");
            store
                .insert(Kind::App, &record(&name, "1", true))
                .await
                .expect("insert");
            // Every other object also gets a stale write that must fail on its own.
            if index % 2 == 0 {
                let stale = store.replace(Kind::App, 7, &record(&name, "x", true)).await;
                assert!(
                    matches!(stale, Err(StoreError::Conflict { .. })),
                    "{stale:?}"
                );
            }
            store
                .replace(Kind::App, 1, &record(&name, "2", false))
                .await
                .expect("replace")
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), 2);
    }
    let records = store.list(Kind::App).await.expect("list");
    assert_eq!(records.len(), OBJECTS);
    assert!(
        records
            .iter()
            .all(|record| record.version == 2 && record.body == "2")
    );
}

fn device(id: &str, group: Option<&str>, apps: &[&str], last_seen_ms: u64) -> DeviceRecord {
    DeviceRecord {
        device_id: id.to_string(),
        version: 0,
        last_seen_ms,
        device_group: group.map(str::to_string),
        apps: apps.iter().map(ToString::to_string).collect(),
        body: format!(r#"{{"seen":{last_seen_ms}}}"#),
    }
}

/// Devices: insert, compare-and-swap, a table of their own (not an object kind, never in
/// the outbox, never counted as apps or groups).
pub async fn devices_are_compared_and_swapped(store: Arc<dyn Store>) {
    assert_eq!(store.get_device("pi-1").await.expect("get"), None);
    assert_eq!(
        store
            .put_device(&device("pi-1", Some("edge"), &["web"], 10), None)
            .await
            .expect("insert"),
        1
    );
    let again = store
        .put_device(&device("pi-1", Some("edge"), &[], 11), None)
        .await;
    assert!(
        matches!(again, Err(StoreError::AlreadyExists { .. })),
        "{again:?}"
    );
    assert_eq!(
        store
            .put_device(&device("pi-1", Some("edge"), &["web", "api"], 20), Some(1))
            .await
            .expect("replace"),
        2
    );
    let stale = store
        .put_device(&device("pi-1", None, &[], 15), Some(1))
        .await;
    assert!(
        matches!(stale, Err(StoreError::Conflict { .. })),
        "{stale:?}"
    );
    let missing = store
        .put_device(&device("pi-9", None, &[], 1), Some(1))
        .await;
    assert!(
        matches!(missing, Err(StoreError::NotFound { .. })),
        "{missing:?}"
    );
    let stored = store
        .get_device("pi-1")
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        stored,
        DeviceRecord {
            version: 2,
            ..device("pi-1", Some("edge"), &["web", "api"], 20)
        }
    );
    // Apart from the objects: no app, group or outbox flag came of it.
    for kind in Kind::ALL {
        assert!(store.list(kind).await.expect("list").is_empty());
        assert!(store.pending(kind).await.expect("pending").is_empty());
    }
    assert!(store.get(Kind::App, "pi-1").await.expect("get").is_none());
}

/// Listing: sorted by id, filtered by group and by app, paged by the last id seen.
pub async fn devices_are_filtered_and_paged(store: Arc<dyn Store>) {
    for (id, group, apps) in [
        ("d", Some("edge"), &["web"][..]),
        ("a", Some("edge"), &["web", "api"][..]),
        ("c", None, &["api"][..]),
        ("b", Some("lab"), &[][..]),
        ("e", Some("edge"), &[][..]),
    ] {
        store
            .put_device(&device(id, group, apps, 1), None)
            .await
            .expect("insert");
    }
    let ids = |records: Vec<DeviceRecord>| -> Vec<String> {
        records.into_iter().map(|record| record.device_id).collect()
    };
    let list = |query: DeviceQuery| {
        let store = Arc::clone(&store);
        async move { ids(store.list_devices(&query).await.expect("list")) }
    };
    assert_eq!(
        list(DeviceQuery::default()).await,
        ["a", "b", "c", "d", "e"]
    );
    let group = |group: &str| DeviceQuery {
        device_group: Some(group.to_string()),
        ..DeviceQuery::default()
    };
    assert_eq!(list(group("edge")).await, ["a", "d", "e"]);
    assert_eq!(list(group("none")).await, Vec::<String>::new());
    let app = DeviceQuery {
        app: Some("api".into()),
        ..DeviceQuery::default()
    };
    assert_eq!(list(app.clone()).await, ["a", "c"]);
    assert_eq!(
        list(DeviceQuery {
            device_group: Some("edge".into()),
            ..app
        })
        .await,
        ["a"]
    );
    // Pages of two, each after the last id of the one before.
    let page = |after: Option<&str>| DeviceQuery {
        after: after.map(str::to_string),
        limit: 2,
        ..DeviceQuery::default()
    };
    assert_eq!(list(page(None)).await, ["a", "b"]);
    assert_eq!(list(page(Some("b"))).await, ["c", "d"]);
    assert_eq!(list(page(Some("d"))).await, ["e"]);
    assert_eq!(list(page(Some("e"))).await, Vec::<String>::new());
    assert_eq!(
        list(DeviceQuery {
            after: Some("a".into()),
            limit: 2,
            ..group("edge")
        })
        .await,
        ["d", "e"]
    );
}

/// Devices not seen since the cutoff are removed; the others stay.
pub async fn devices_expire(store: Arc<dyn Store>) {
    for (id, seen) in [("old", 100), ("edge", 200), ("new", 300)] {
        store
            .put_device(&device(id, None, &[], seen), None)
            .await
            .expect("insert");
    }
    assert_eq!(store.expire_devices(200).await.expect("expire"), 1);
    assert_eq!(store.get_device("old").await.expect("get"), None);
    assert!(store.get_device("edge").await.expect("get").is_some());
    assert_eq!(store.expire_devices(200).await.expect("expire"), 0);
    assert_eq!(store.expire_devices(u64::MAX).await.expect("expire"), 2);
    assert!(
        store
            .list_devices(&DeviceQuery::default())
            .await
            .expect("list")
            .is_empty()
    );
    // An expired device that reports again is simply new.
    assert_eq!(
        store
            .put_device(&device("old", None, &[], 400), None)
            .await
            .expect("insert"),
        1
    );
}

fn report(device: &str, version: u64, slots: u64, received_ms: u64) -> ReportRecord {
    ReportRecord {
        key: report_key(received_ms, device, version),
        device_id: device.to_string(),
        slot: u32::try_from(version % slots).expect("slot"),
        version,
        received_ms,
        hostname: format!("host-{device}"),
        device_group: (device != "solo").then(|| "edge".to_string()),
        report_creation_time: received_ms / 1000,
        updated: version.is_multiple_of(2),
        body: format!("{{\"device\":\"{device}\",\"version\":{version}}}"),
    }
}

/// Past reports: a slot holds one report (the newest write), listings are by key with every
/// filter applied, pages follow the cursor, and expiry removes by reception time.
pub async fn reports_are_slotted_filtered_paged_and_expired(store: Arc<dyn Store>) {
    let keys = |records: Vec<ReportRecord>| -> Vec<String> {
        records.into_iter().map(|record| record.key).collect()
    };
    // Every listing is checked whole and walked one report per page: with a page of one, a
    // backend that did not filter on the server would hand back a page without a match.
    let list = |query: ReportQuery| {
        let store = Arc::clone(&store);
        async move {
            let whole = keys(store.list_reports(&query).await.expect("list"));
            let mut walked: Vec<String> = Vec::new();
            loop {
                let page = keys(
                    store
                        .list_reports(&ReportQuery {
                            after: walked.last().cloned().or(query.after.clone()),
                            limit: 1,
                            ..query.clone()
                        })
                        .await
                        .expect("page"),
                );
                if page.is_empty() {
                    break;
                }
                walked.extend(page);
            }
            walked.truncate(query.limit);
            assert_eq!(walked, whole, "pages of one of {query:?}");
            whole
        }
    };
    // Three slots per device; pi-1 writes versions 1..=5 (keeping 3, 4, 5), pi-2 and solo one.
    let mut written = Vec::new();
    for version in 1..=5 {
        let record = report("pi-1", version, 3, 10_000 + version * 1000);
        store.put_report(&record).await.expect("put");
        written.push(record);
    }
    for (device, at) in [("pi-2", 12_500), ("solo", 16_000)] {
        let record = report(device, 1, 3, at);
        store.put_report(&record).await.expect("put");
        written.push(record);
    }
    let key = |device: &str, version: u64| {
        written
            .iter()
            .find(|record| {
                record.device_id == device && record.key.ends_with(&format!("{version:020}"))
            })
            .expect("written")
            .key
            .clone()
    };
    let all = vec![
        key("pi-2", 1),
        key("pi-1", 3),
        key("pi-1", 4),
        key("pi-1", 5),
        key("solo", 1),
    ];
    assert_eq!(list(ReportQuery::default()).await, all);
    // The newest write of a slot is what it holds, body and all.
    let stored = store
        .list_reports(&ReportQuery::default())
        .await
        .expect("list");
    assert_eq!(stored[3], written[4]);

    // Filters, alone and together.
    let only = |records: &[&String]| records.iter().map(|key| (*key).clone()).collect::<Vec<_>>();
    assert_eq!(
        list(ReportQuery {
            hostname: Some("host-pi-1".into()),
            ..ReportQuery::default()
        })
        .await,
        only(&[&all[1], &all[2], &all[3]])
    );
    assert_eq!(
        list(ReportQuery {
            device_group: Some("edge".into()),
            updated: Some(true),
            ..ReportQuery::default()
        })
        .await,
        only(&[&all[2]])
    );
    for (comparison, time, expected) in [
        (Comparison::Eq, 14, vec![&all[2]]),
        (Comparison::Ne, 14, vec![&all[0], &all[1], &all[3], &all[4]]),
        (Comparison::Gt, 14, vec![&all[3], &all[4]]),
        (Comparison::Gte, 14, vec![&all[2], &all[3], &all[4]]),
        (Comparison::Lt, 13, vec![&all[0]]),
        (Comparison::Lte, 13, vec![&all[0], &all[1]]),
    ] {
        assert_eq!(
            list(ReportQuery {
                created: Some((comparison, time)),
                ..ReportQuery::default()
            })
            .await,
            only(&expected),
            "{comparison:?} {time}"
        );
    }
    // The settling horizon: only keys before it.
    assert_eq!(
        list(ReportQuery {
            before: Some(key_floor(15_000)),
            ..ReportQuery::default()
        })
        .await,
        only(&[&all[0], &all[1], &all[2]])
    );
    // Keyset pages, with a filter.
    let first = list(ReportQuery {
        device_group: Some("edge".into()),
        limit: 2,
        ..ReportQuery::default()
    })
    .await;
    assert_eq!(first, only(&[&all[0], &all[1]]));
    let second = list(ReportQuery {
        device_group: Some("edge".into()),
        after: first.last().cloned(),
        limit: 2,
        ..ReportQuery::default()
    })
    .await;
    assert_eq!(second, only(&[&all[2], &all[3]]));
    let third = list(ReportQuery {
        device_group: Some("edge".into()),
        after: second.last().cloned(),
        limit: 2,
        ..ReportQuery::default()
    })
    .await;
    assert!(third.is_empty(), "{third:?}");

    // Expiry by reception time: before 14,000 ms goes (pi-2's and pi-1's version 3).
    assert_eq!(store.expire_reports(14_000).await.expect("expire"), 2);
    assert_eq!(list(ReportQuery::default()).await, all[2..].to_vec());
    assert_eq!(store.expire_reports(14_000).await.expect("expire"), 0);
    // An expired slot takes a new report (v6: slot 0, whose v3 expired); a live one is
    // replaced by a newer version (v7: slot 1, v4's), never by an older one (v4 again, late).
    for record in [
        report("pi-1", 6, 3, 19_000),
        report("pi-1", 7, 3, 20_000),
        report("pi-1", 4, 3, 14_000),
    ] {
        store.put_report(&record).await.expect("put");
    }
    let now = list(ReportQuery::default()).await;
    let v6 = report_key(19_000, "pi-1", 6);
    let v7 = report_key(20_000, "pi-1", 7);
    assert_eq!(now, vec![all[3].clone(), all[4].clone(), v6, v7]);
    // A device whose record started again at version 1 (it expired and came back): its new
    // reports are kept although the slot holds a higher version, received earlier.
    store
        .put_report(&report("pi-1", 1, 3, 21_000))
        .await
        .expect("put");
    let v1 = report_key(21_000, "pi-1", 1);
    assert_eq!(
        list(ReportQuery::default()).await,
        vec![
            all[3].clone(),
            all[4].clone(),
            report_key(19_000, "pi-1", 6),
            v1.clone()
        ]
    );
    store
        .put_report(&report("pi-1", 7, 3, 20_000))
        .await
        .expect("put");
    assert_eq!(
        list(ReportQuery::default()).await.last(),
        Some(&v1),
        "nor does the old record come back over it"
    );
    // The same version again (a redelivery) is the same record.
    store
        .put_report(&report("pi-1", 1, 3, 21_000))
        .await
        .expect("put");
    assert_eq!(list(ReportQuery::default()).await.len(), 4);
    assert_eq!(store.expire_reports(u64::MAX).await.expect("expire"), 4);
    assert!(list(ReportQuery::default()).await.is_empty());
}

/// The audit trail: newest first, paged by id, expired by time.
pub async fn audit_is_newest_first_paged_and_expired(store: Arc<dyn Store>) {
    use nebula_control_plane::store::AuditEntry;
    let entry = |at_ms: u64, random: u64| AuditEntry {
        id: AuditEntry::make_id(at_ms, random),
        at_ms,
        who: "user:ann".to_string(),
        source: Some("192.0.2.1".to_string()),
        method: "POST".to_string(),
        route: "/api/v2/apps/{app}/stop".to_string(),
        kind: Some("app".to_string()),
        name: Some(format!("app-{at_ms}-{random}")),
        old_revision: Some(at_ms),
        new_revision: Some(at_ms + 1),
        status: 202,
    };
    assert!(store.list_audit(None, 10).await.expect("list").is_empty());
    // Recorded out of order, two in one millisecond.
    let entries = [
        entry(1_000, 5),
        entry(3_000, 1),
        entry(2_000, 9),
        entry(2_000, 2),
    ];
    for recorded in &entries {
        store.append_audit(recorded).await.expect("append");
    }
    let mut newest_first = entries.to_vec();
    newest_first.sort_by(|left, right| right.id.cmp(&left.id));
    assert_eq!(
        store.list_audit(None, 10).await.expect("list"),
        newest_first
    );
    // Page by page, each page's last id the next one's cursor.
    let mut paged = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = store.list_audit(before.as_deref(), 1).await.expect("page");
        let Some(last) = page.last() else { break };
        before = Some(last.id.clone());
        paged.extend(page);
        assert!(paged.len() <= entries.len(), "paging ends");
    }
    assert_eq!(paged, newest_first);
    let page = store
        .list_audit(Some(&newest_first[1].id), 2)
        .await
        .expect("page");
    assert_eq!(page, newest_first[2..4].to_vec());
    // Expiry removes what is older than the time, and only that.
    assert_eq!(store.expire_audit(2_000).await.expect("expire"), 1);
    assert_eq!(
        store.list_audit(None, 10).await.expect("list"),
        newest_first[..3].to_vec()
    );
    assert_eq!(store.expire_audit(2_000).await.expect("expire"), 0);
    assert_eq!(store.expire_audit(u64::MAX >> 12).await.expect("expire"), 3);
    assert!(store.list_audit(None, 10).await.expect("list").is_empty());
}

/// Runs every contract function, each on a fresh store from `make`.
#[macro_export]
macro_rules! store_contract_tests {
    ($make:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn audit_is_newest_first_paged_and_expired() {
            let (store, _guard) = $make.await;
            store_contract::audit_is_newest_first_paged_and_expired(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn insert_get_list() {
            let (store, _guard) = $make.await;
            store_contract::insert_get_list(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn names_are_unique() {
            let (store, _guard) = $make.await;
            store_contract::names_are_unique(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn replace_is_compare_and_swap() {
            let (store, _guard) = $make.await;
            store_contract::replace_is_compare_and_swap(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn outbox_flag() {
            let (store, _guard) = $make.await;
            store_contract::outbox_flag(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn tombstones_keep_versions_going_up() {
            let (store, _guard) = $make.await;
            store_contract::tombstones_keep_versions_going_up(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_writers_lose_nothing() {
            let (store, _guard) = $make.await;
            store_contract::concurrent_writers_lose_nothing(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn identity_and_incarnations() {
            let (store, _guard) = $make.await;
            store_contract::identity_and_incarnations(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn devices_are_compared_and_swapped() {
            let (store, _guard) = $make.await;
            store_contract::devices_are_compared_and_swapped(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn devices_are_filtered_and_paged() {
            let (store, _guard) = $make.await;
            store_contract::devices_are_filtered_and_paged(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn devices_expire() {
            let (store, _guard) = $make.await;
            store_contract::devices_expire(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn reports_are_slotted_filtered_paged_and_expired() {
            let (store, _guard) = $make.await;
            store_contract::reports_are_slotted_filtered_paged_and_expired(store).await;
        }
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn concurrent_writes_of_many_objects() {
            let (store, _guard) = $make.await;
            store_contract::concurrent_writes_of_many_objects(store).await;
        }
    };
}
