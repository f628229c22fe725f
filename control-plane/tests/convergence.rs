//! The store is the only truth (DESIGN §2): tests of the service over the in-memory store
//! and the recording fake broker, with gates that force the interleavings of concurrent
//! instances which made the broker contradict the store before: two group updates racing,
//! an app deleted while a group adds it, a write whose exchange another instance deletes,
//! an outbox that never unbound, corrupt records, incarnations.

use nebula_control_plane::broker::Publisher;
use nebula_control_plane::broker::fake::FakeBroker;
use nebula_control_plane::error::StoreError;
use nebula_control_plane::service::{Service, ServiceError};
use nebula_control_plane::shutdown::Shutdown;
use nebula_control_plane::store::memory::MemoryStore;
use nebula_control_plane::store::{Kind, Record, Store};
use nebula_protocol::{
    AppConfig, DeviceGroup, Message, Name, ObjectVersion, SyncRequest, SyncTarget,
};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

fn name(value: &str) -> Name {
    Name::new(value).expect("name")
}

/// Two control-plane instances sharing one store and one broker.
struct TwoInstances {
    store: Arc<MemoryStore>,
    broker: Arc<FakeBroker>,
    first: Service,
    second: Service,
    shutdowns: [Shutdown; 2],
}

fn two_instances() -> TwoInstances {
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(FakeBroker::new());
    let shutdowns = [Shutdown::new(), Shutdown::new()];
    let service = |shutdown: &Shutdown| {
        Service::new(
            Arc::clone(&store) as Arc<dyn Store>,
            Arc::clone(&broker) as Arc<dyn Publisher>,
            shutdown.clone(),
        )
    };
    TwoInstances {
        first: service(&shutdowns[0]),
        second: service(&shutdowns[1]),
        store,
        broker,
        shutdowns,
    }
}

impl TwoInstances {
    /// The app exchanges bound to `group`'s exchange.
    fn bound_to(&self, group: &str) -> BTreeSet<String> {
        let destination = format!("nebula.group.{group}");
        self.broker
            .snapshot()
            .bindings
            .into_iter()
            .filter(|(to, _)| *to == destination)
            .map(|(_, from)| from)
            .collect()
    }

    fn assert_alive(&self) {
        for shutdown in &self.shutdowns {
            assert_eq!(shutdown.fatal_reason(), None, "an instance failed");
        }
    }
}

fn set_members(
    members: &[&str],
) -> impl Fn(&DeviceGroup) -> Result<DeviceGroup, ServiceError> + Send + Sync + 'static {
    let members: Vec<Name> = members.iter().map(|member| name(member)).collect();
    move |current: &DeviceGroup| {
        let mut next = current.clone();
        next.apps = members.clone();
        Ok(next)
    }
}

/// Waits up to ten seconds for `condition`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish"))
}

/// Defect 4: instance A adds `x`; its bind reaches the broker only after instance B replaced
/// the membership by `y` and finished. The broker must end up as the store says: only `y`.
/// Marks app `app`'s stored change as never confirmed, as if its instance died before the
/// broker's confirm: the outbox must publish it.
async fn flag_unconfirmed(system: &TwoInstances, app: &str) {
    let current = system
        .store
        .get(Kind::App, app)
        .await
        .expect("get")
        .expect("record");
    system
        .store
        .replace(
            Kind::App,
            current.version,
            &Record {
                pending_publish: true,
                ..current
            },
        )
        .await
        .expect("flag");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_group_updates_leave_the_broker_as_the_store_says() {
    let system = two_instances();
    for app in ["x", "y"] {
        system
            .first
            .create_app(AppConfig::new(name(app), "nginx"))
            .await
            .expect("app");
    }
    system
        .first
        .create_group(DeviceGroup::new(name("g")))
        .await
        .expect("group");

    let late_bind = system.broker.hold("exchange.bind", "nebula.app.x");
    let first = system.first.clone();
    let adding =
        tokio::spawn(async move { first.update_group(&name("g"), set_members(&["x"])).await });
    within("A's bind", late_bind.reached()).await;
    // B writes after A's store write and does all its broker work first.
    let replaced = within(
        "B's update",
        system.second.update_group(&name("g"), set_members(&["y"])),
    )
    .await
    .expect("B's update");
    assert_eq!(replaced.device_group_id, 3);
    late_bind.open();
    let added = within("A's update", adding)
        .await
        .expect("join")
        .expect("A's update");
    assert_eq!(added.device_group_id, 2);

    let stored = system
        .first
        .get_group(&name("g"))
        .await
        .expect("read")
        .expect("group");
    assert_eq!(stored.apps, vec![name("y")]);
    assert_eq!(
        system.bound_to("g"),
        BTreeSet::from(["nebula.app.y".to_string()]),
        "the broker's bindings contradict the store"
    );
    system.assert_alive();
}

/// Defect 4: a group update checks that `x` exists, then `x` is deleted (its delete finds no
/// group listing it yet), then the group write lands. The group must not keep listing `x`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_deleted_while_a_group_adds_it_leaves_the_group() {
    let system = two_instances();
    system
        .first
        .create_app(AppConfig::new(name("x"), "nginx"))
        .await
        .expect("app");
    system
        .first
        .create_group(DeviceGroup::new(name("g")))
        .await
        .expect("group");

    let late_write = system.store.hold_replace("g");
    let first = system.first.clone();
    let adding =
        tokio::spawn(async move { first.update_group(&name("g"), set_members(&["x"])).await });
    within("A's group write", late_write.reached()).await;
    within("B's delete", system.second.delete_app(&name("x")))
        .await
        .expect("delete");
    late_write.open();
    let written = within("A's update", adding)
        .await
        .expect("join")
        .expect("A's update");
    assert_eq!(
        written.apps,
        vec![name("x")],
        "A's answer is its own revision"
    );

    // The repair follows the answer (it is a write of its own).
    eventually("the group repaired", || async {
        system
            .first
            .get_group(&name("g"))
            .await
            .expect("read")
            .is_some_and(|group| group.apps.is_empty())
    })
    .await;
    let stored = system
        .first
        .get_group(&name("g"))
        .await
        .expect("read")
        .expect("group");
    assert!(
        stored.apps.is_empty(),
        "the group still lists a deleted app: {stored:?}"
    );
    assert_eq!(
        stored.device_group_id, 3,
        "repaired with a revision of its own"
    );
    assert!(system.bound_to("g").is_empty());
    // No device was ever told to run the deleted app through this group.
    for (_, message) in system.broker.snapshot().published {
        if let Message::DeviceGroupChanged(state) = message {
            assert!(
                state.apps.iter().all(|app| app.app_name != "x"),
                "{state:?}"
            );
        }
    }
    system.assert_alive();
}

/// Defect 8: A's publish of an update reaches the broker after B deleted the app and its
/// exchange. That is the app's race: A's caller hears the app is gone, and A keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_from_the_broker_is_the_objects_race_not_a_broker_failure() {
    let system = two_instances();
    system
        .first
        .create_app(AppConfig::new(name("x"), "nginx"))
        .await
        .expect("app");
    let late_publish = system.broker.hold("basic.publish", "nebula.app.x");
    let first = system.first.clone();
    let updating = tokio::spawn(async move {
        first
            .update_app(&name("x"), |current: &AppConfig| {
                let mut next = current.clone();
                next.running = false;
                Ok::<_, ServiceError>(next)
            })
            .await
    });
    within("A's publish", late_publish.reached()).await;
    within("B's delete", system.second.delete_app(&name("x")))
        .await
        .expect("delete");
    late_publish.open();
    let answer = within("A's update", updating).await.expect("join");
    assert!(
        matches!(answer, Err(ServiceError::AppNotFound(_))),
        "{answer:?}"
    );
    system.assert_alive();
    assert!(
        system
            .first
            .get_app(&name("x"))
            .await
            .expect("read")
            .is_none()
    );
}

/// Defect 4: the outbox finishes a group write whose instance died before the broker work:
/// it binds the new members and unbinds the removed ones, from the store alone.
#[tokio::test]
async fn the_outbox_unbinds_what_a_group_write_removed() {
    let system = two_instances();
    for app in ["old", "new"] {
        system
            .first
            .create_app(AppConfig::new(name(app), "nginx"))
            .await
            .expect("app");
    }
    system
        .first
        .create_group(DeviceGroup::new(name("g")))
        .await
        .expect("group");
    let mut group = system
        .first
        .update_group(&name("g"), set_members(&["old"]))
        .await
        .expect("update");
    assert_eq!(
        system.bound_to("g"),
        BTreeSet::from(["nebula.app.old".into()])
    );

    // An instance stored "old out, new in" and died before touching the broker.
    group.apps = vec![name("new")];
    group.device_group_id += 1;
    let mut body: serde_json::Value =
        serde_json::to_value(nebula_control_plane::store::GroupDocument::from(&group))
            .expect("json");
    body["unbind"] = serde_json::json!(["old"]);
    let current = system
        .store
        .get(Kind::DeviceGroup, "g")
        .await
        .expect("get")
        .expect("record");
    system
        .store
        .replace(
            Kind::DeviceGroup,
            current.version,
            &Record {
                name: "g".into(),
                version: 0,
                pending_publish: true,
                tombstone: false,
                body: body.to_string(),
            },
        )
        .await
        .expect("replace");

    let (handled, _) = system.second.republish_pending(None).await.expect("outbox");
    assert_eq!(handled, 1);
    assert_eq!(
        system.bound_to("g"),
        BTreeSet::from(["nebula.app.new".into()])
    );
    let record = system
        .store
        .get(Kind::DeviceGroup, "g")
        .await
        .expect("get")
        .expect("record");
    assert!(!record.pending_publish);
    assert!(!record.body.contains("unbind"), "{}", record.body);
    system.assert_alive();
}

/// At start every instance makes the broker's bindings what the store says.
#[tokio::test]
async fn start_reconciles_every_groups_bindings() {
    let system = two_instances();
    system
        .first
        .create_app(AppConfig::new(name("x"), "nginx"))
        .await
        .expect("app");
    let mut group = DeviceGroup::new(name("g"));
    group.apps = vec![name("x")];
    system.first.create_group(group).await.expect("group");
    assert_eq!(system.bound_to("g").len(), 1);
    // The broker lost its bindings (a new broker, definitions not restored).
    system
        .broker
        .unbind_exchange("nebula.group.g", "nebula.app.x")
        .await
        .expect("unbind");
    assert!(system.bound_to("g").is_empty());
    assert_eq!(
        system.second.reconcile_topology().await.expect("reconcile"),
        1
    );
    assert_eq!(
        system.bound_to("g"),
        BTreeSet::from(["nebula.app.x".into()])
    );
}

/// Defect 2: a deleted and re-created app is a new incarnation, so devices can tell it from
/// the old one although its revision starts at 1 again.
#[tokio::test]
async fn re_created_objects_get_a_new_incarnation() {
    let system = two_instances();
    let service = &system.first;
    let first = service
        .create_app(AppConfig::new(name("web"), "nginx"))
        .await
        .expect("create");
    for _ in 0..3 {
        service
            .update_app(&name("web"), |current: &AppConfig| {
                Ok::<_, ServiceError>(current.clone())
            })
            .await
            .expect("update");
    }
    service.delete_app(&name("web")).await.expect("delete");
    let again = system
        .second
        .create_app(AppConfig::new(name("web"), "nginx"))
        .await
        .expect("re-create");
    assert_eq!(again.app_id, 1);
    assert!(again.version() > ObjectVersion::new(first.incarnation, 4));
    let deleted = system
        .broker
        .snapshot()
        .published
        .into_iter()
        .find_map(|(_, message)| message.deleted_version())
        .expect("an AppDeleted was published");
    assert_eq!(deleted, ObjectVersion::new(first.incarnation, 4));
    let group = service
        .create_group(DeviceGroup::new(name("g")))
        .await
        .expect("group");
    assert!(group.incarnation > again.incarnation);
}

/// Defect 5: one corrupt record is an error of that object only: reads of it fail, other
/// objects and the instance are fine, the outbox skips it (counted), sync refuses it.
#[tokio::test]
async fn a_corrupt_record_is_an_error_of_that_object_only() {
    let system = two_instances();
    let service = &system.first;
    service
        .create_app(AppConfig::new(name("good"), "nginx"))
        .await
        .expect("create");
    for (object, body) in [
        ("bad", "{\"app_name\": 12"),
        ("bad2", "{\"app_name\":\"bad2\"}"),
    ] {
        system.store.put_raw(
            Kind::App,
            Record {
                name: object.into(),
                version: 3,
                pending_publish: true,
                tombstone: false,
                body: body.into(),
            },
        );
    }
    let read = service.get_app(&name("bad")).await;
    assert!(
        matches!(read, Err(ServiceError::Store(StoreError::Corrupt { .. }))),
        "{read:?}"
    );
    assert!(
        service
            .get_app(&name("good"))
            .await
            .expect("read")
            .is_some()
    );
    assert_eq!(
        service.list_apps().await.expect("list"),
        vec!["bad", "bad2", "good"],
        "still listed"
    );
    let update = service
        .update_app(&name("bad"), |current: &AppConfig| {
            Ok::<_, ServiceError>(current.clone())
        })
        .await;
    assert!(matches!(
        update,
        Err(ServiceError::Store(StoreError::Corrupt { .. }))
    ));

    // The outbox goes past both and still republishes the good one's unconfirmed change.
    flag_unconfirmed(&system, "good").await;
    let (handled, seen) = service.republish_pending(None).await.expect("outbox pass");
    assert_eq!((handled, seen.len()), (1, 3));
    let metrics = service.metrics().render(&Default::default());
    assert!(
        metrics.contains("nebula_outbox_skipped_corrupt_total 2"),
        "{metrics}"
    );

    let request = SyncRequest {
        device_id: name("pi"),
        target: SyncTarget::App(name("bad")),
        correlation_id: "c".into(),
        agent_version: "test".into(),
        known_store: None,
    };
    let answer = nebula_control_plane::sync::answer(service, &request).await;
    assert!(matches!(
        answer,
        Err(ServiceError::Store(StoreError::Corrupt { .. }))
    ));

    // A group that lists it still reaches its devices, with the corrupt member marked
    // unavailable (devices keep what they hold for it) rather than left out (they would
    // remove it).
    let mut group = DeviceGroup::new(name("g"));
    group.apps = vec![name("good"), name("bad")];
    service.create_group(group).await.expect("group");
    let group_sync = SyncRequest {
        target: SyncTarget::DeviceGroup(name("g")),
        ..request
    };
    match nebula_control_plane::sync::answer(service, &group_sync).await {
        Ok(nebula_protocol::SyncResult::Group(state)) => {
            assert_eq!(state.unavailable, vec![name("bad")]);
            let apps: Vec<&str> = state.apps.iter().map(|app| app.app_name.as_str()).collect();
            assert_eq!(apps, vec!["good"]);
            state.validate().expect("a valid state");
        }
        other => panic!("{other:?}"),
    }
    let published = system.broker.snapshot().published;
    assert!(
        published.iter().any(|(_, message)| matches!(
            message,
            Message::DeviceGroupChanged(state) if state.unavailable == vec![name("bad")]
        )),
        "{published:?}"
    );
    system.assert_alive();
}

/// Concurrent writers on two instances: every change lands exactly once with its own
/// revision, whatever the combining and compare-and-swap retries did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_on_two_instances_lose_nothing() {
    const PER_INSTANCE: usize = 20;
    let system = two_instances();
    system
        .first
        .create_app(AppConfig::new(name("web"), "nginx"))
        .await
        .expect("create");
    let mut tasks = Vec::new();
    for (instance, service) in [system.first.clone(), system.second.clone()]
        .into_iter()
        .enumerate()
    {
        for index in 0..PER_INSTANCE {
            let service = service.clone();
            tasks.push(tokio::spawn(async move {
                let key = format!("K{instance}_{index}");
                let written = service
                    .update_app(&name("web"), move |current: &AppConfig| {
                        let mut next = current.clone();
                        next.env_vars.insert(key.clone(), "1".into());
                        Ok::<_, ServiceError>(next)
                    })
                    .await
                    .expect("update");
                written.app_id
            }));
        }
    }
    let mut revisions = BTreeSet::new();
    for task in tasks {
        assert!(
            revisions.insert(task.await.expect("task")),
            "a revision twice"
        );
    }
    assert_eq!(revisions, (2..=1 + 2 * PER_INSTANCE as u64).collect());
    let stored = system
        .first
        .get_app(&name("web"))
        .await
        .expect("read")
        .expect("app");
    assert_eq!(stored.app_id, 1 + 2 * PER_INSTANCE as u64);
    assert_eq!(stored.env_vars.len(), 2 * PER_INSTANCE, "no change lost");
    system.assert_alive();
}

/// What an instance remembers of an object it wrote (or read) before another instance
/// deleted and re-created it never lands on the new incarnation: record versions keep going
/// up across incarnations, so the compare-and-swap fails and the write re-reads.
#[tokio::test]
async fn a_stale_view_of_a_deleted_incarnation_is_never_written_back() {
    let system = two_instances();
    let update = |service: &Service, key: &'static str| {
        let service = service.clone();
        async move {
            service
                .update_app(&name("web"), move |current: &AppConfig| {
                    let mut next = current.clone();
                    next.env_vars.insert(key.into(), "1".into());
                    Ok::<_, ServiceError>(next)
                })
                .await
                .expect("update")
        }
    };
    let old = system
        .first
        .create_app(AppConfig::new(name("web"), "nginx"))
        .await
        .expect("create");
    for key in ["A", "B", "C"] {
        update(&system.first, key).await;
    }
    system
        .second
        .delete_app(&name("web"))
        .await
        .expect("delete");
    let new = system
        .second
        .create_app(AppConfig::new(name("web"), "nginx:2"))
        .await
        .expect("re-create");
    for key in ["X", "Y", "Z"] {
        update(&system.second, key).await;
    }
    let written = update(&system.first, "LATE").await;
    assert_eq!(written.incarnation, new.incarnation);
    assert_ne!(written.incarnation, old.incarnation);
    assert_eq!(written.app_id, 5);
    assert_eq!(written.docker_image, "nginx:2");
    let keys: Vec<&str> = written.env_vars.keys().map(String::as_str).collect();
    assert_eq!(keys, vec!["LATE", "X", "Y", "Z"]);
}

/// The outbox republishing a change while another instance deletes the object: the 404 is
/// that object's race; the pass goes on and the instance keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_meets_a_deleted_exchange_without_failing() {
    let system = two_instances();
    // Written through the second instance: the first one's outbox pass would skip `x` while
    // the create's settling (which may outlast the answer) is still in flight there.
    system
        .second
        .create_app(AppConfig::new(name("x"), "nginx"))
        .await
        .expect("app");
    eventually("the create settled", || async {
        let record = system.store.get(Kind::App, "x").await.expect("get");
        record.is_some_and(|record| !record.pending_publish)
    })
    .await;
    // A change stored and never confirmed (its instance died).
    flag_unconfirmed(&system, "x").await;
    let late_publish = system.broker.hold("basic.publish", "nebula.app.x");
    let first = system.first.clone();
    let pass = tokio::spawn(async move { first.republish_pending(None).await });
    within("the outbox's publish", late_publish.reached()).await;
    within("B's delete", system.second.delete_app(&name("x")))
        .await
        .expect("delete");
    late_publish.open();
    let (handled, _) = within("the outbox pass", pass)
        .await
        .expect("join")
        .expect("the pass does not fail");
    assert_eq!(handled, 0);
    system.assert_alive();
}

/// A delete finishing late (here: its announcement held) after the name was re-created by
/// another instance must not drop the new incarnation's exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_delete_never_drops_a_re_created_objects_exchange() {
    let system = two_instances();
    system
        .first
        .create_app(AppConfig::new(name("x"), "nginx"))
        .await
        .expect("app");
    let late_announcement = system.broker.hold("basic.publish", "nebula.app.x");
    let first = system.first.clone();
    let deleting = tokio::spawn(async move { first.delete_app(&name("x")).await });
    within("A's AppDeleted", late_announcement.reached()).await;
    // B re-creates x meanwhile: it finishes the flagged delete itself and revives the name.
    let recreated = within(
        "B's create",
        system
            .second
            .create_app(AppConfig::new(name("x"), "nginx:2")),
    )
    .await
    .expect("re-create");
    late_announcement.open();
    within("A's delete", deleting)
        .await
        .expect("join")
        .expect("delete");
    assert!(
        system.broker.snapshot().exchanges.contains("nebula.app.x"),
        "the late delete dropped the re-created app's exchange"
    );
    let live = system
        .first
        .get_app(&name("x"))
        .await
        .expect("read")
        .expect("x is live");
    assert_eq!(live.version(), recreated.version());
    system.assert_alive();
}

/// A group write that listed an app being deleted, left flagged by an instance that died
/// before its repair: the outbox finishes it with the repair.
#[tokio::test]
async fn the_outbox_repairs_a_group_listing_a_deleted_app() {
    let system = two_instances();
    for app in ["x", "y"] {
        system
            .first
            .create_app(AppConfig::new(name(app), "nginx"))
            .await
            .expect("app");
    }
    let mut created = DeviceGroup::new(name("g"));
    created.apps = vec![name("x"), name("y")];
    let created = system.first.create_group(created).await.expect("group");
    // x is deleted, but (as if the group write had raced it) the group still lists it,
    // flagged, with no instance left to repair it.
    system.first.delete_app(&name("x")).await.expect("delete");
    let current = system
        .store
        .get(Kind::DeviceGroup, "g")
        .await
        .expect("get")
        .expect("record");
    let mut stale = created.clone();
    stale.device_group_id = 9;
    system
        .store
        .replace(
            Kind::DeviceGroup,
            current.version,
            &Record {
                name: "g".into(),
                version: 0,
                pending_publish: true,
                tombstone: false,
                body: serde_json::to_string(&nebula_control_plane::store::GroupDocument::from(
                    &stale,
                ))
                .expect("json"),
            },
        )
        .await
        .expect("replace");
    let (handled, _) = system.second.republish_pending(None).await.expect("outbox");
    assert_eq!(handled, 1);
    let repaired = system
        .first
        .get_group(&name("g"))
        .await
        .expect("read")
        .expect("group");
    assert_eq!(repaired.apps, vec![name("y")]);
    assert_eq!(repaired.device_group_id, 10);
    assert!(
        system
            .store
            .pending(Kind::DeviceGroup)
            .await
            .expect("pending")
            .is_empty(),
        "flag cleared once repaired"
    );
}
