//! In-process tests of the REST API: the real router and service over the in-memory store
//! (which passes the store contract suite) and the recording fake broker.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use nebula_control_plane::api::{AppState, router};
use nebula_control_plane::auth::{AdminCredentials, Authenticator};
use nebula_control_plane::broker::Publisher;
use nebula_control_plane::broker::fake::{FakeBroker, FakeState};
use nebula_control_plane::service::Service;
use nebula_control_plane::shutdown::Shutdown;
use nebula_control_plane::store::memory::MemoryStore;
use nebula_control_plane::store::{Kind, Record, Store};
use nebula_protocol::Message;
use serde_json::{Value, json};
use std::sync::Arc;
use tower::ServiceExt;

struct Harness {
    router: axum::Router,
    store: Arc<MemoryStore>,
    broker: Arc<FakeBroker>,
    shutdown: Shutdown,
}

const USER: &str = "nebula";
const PASSWORD: &str = "secret";
const TOKEN: &str = "token-1";

fn harness() -> Harness {
    let store = Arc::new(MemoryStore::new());
    let broker = Arc::new(FakeBroker::new());
    let shutdown = Shutdown::new();
    let service = Service::new(
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::clone(&broker) as Arc<dyn Publisher>,
        shutdown.clone(),
    );
    let authenticator = Authenticator::new(
        true,
        &AdminCredentials {
            user: Some(USER.into()),
            password: Some(PASSWORD.into()),
            token: Some(TOKEN.into()),
        },
    );
    Harness {
        router: router(AppState {
            service,
            authenticator,
            credentials: None,
        }),
        store,
        broker,
        shutdown,
    }
}

fn basic() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"))
    )
}

struct Answer {
    status: StatusCode,
    json: Value,
}

impl Harness {
    /// Sends one request; answers status, content type and body bytes.
    async fn fetch(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        authorization: Option<&str>,
    ) -> (StatusCode, String, axum::body::Bytes) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let request = request.body(Body::from(body)).expect("request");
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        (status, content_type, bytes)
    }

    /// Sends one request to a JSON endpoint.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Vec<u8>,
        authorization: Option<&str>,
    ) -> Answer {
        let (status, content_type, bytes) = self.fetch(method, path, body, authorization).await;
        assert_eq!(
            content_type, "application/json",
            "{method} {path} -> {status}"
        );
        let json = serde_json::from_slice(&bytes).unwrap_or_else(|error| {
            panic!("{method} {path}: body is not JSON ({error}): {bytes:?}")
        });
        Answer { status, json }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        let body = body
            .map(|value| value.to_string().into_bytes())
            .unwrap_or_default();
        self.raw(method, path, body, Some(&basic())).await
    }

    fn published(&self) -> Vec<(String, Message)> {
        self.broker.snapshot().published
    }

    async fn records(&self) -> Vec<Record> {
        let mut records = self.store.list(Kind::App).await.expect("list");
        records.extend(self.store.list(Kind::DeviceGroup).await.expect("list"));
        records
    }
}

/// Waits up to five seconds for `condition`.
async fn eventually<F: std::future::Future<Output = bool>>(what: &str, condition: impl Fn() -> F) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !condition().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 5 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

fn app_changed(message: &Message) -> Option<(String, u64)> {
    match message {
        Message::AppChanged(config) => Some((config.app_name.to_string(), config.app_id)),
        _ => None,
    }
}

#[tokio::test]
async fn status_and_authentication() {
    let harness = harness();
    let answer = harness.call("GET", "/api/v2/status", None).await;
    assert_eq!(
        (answer.status, answer.json),
        (StatusCode::OK, json!({"api_available": true}))
    );
    let bearer = harness
        .raw(
            "GET",
            "/api/v2/status",
            Vec::new(),
            Some(&format!("Bearer {TOKEN}")),
        )
        .await;
    assert_eq!(bearer.status, StatusCode::OK);
    for authorization in [None, Some("Bearer wrong"), Some("Basic bmVidWxhOndyb25n")] {
        let answer = harness
            .raw("GET", "/api/v2/status", Vec::new(), authorization)
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
    }
    // Writes need authentication too, and nothing happens without it.
    let answer = harness
        .raw(
            "POST",
            "/api/v2/apps/web",
            br#"{"docker_image":"nginx"}"#.to_vec(),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(harness.records().await.is_empty());
    // Health endpoints are open.
    let health = harness.raw("GET", "/healthz", Vec::new(), None).await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = harness.raw("GET", "/readyz", Vec::new(), None).await;
    assert_eq!(
        (ready.status, ready.json["ready"].clone()),
        (StatusCode::OK, json!(true))
    );
    harness.broker.set_connected(false);
    let ready = harness.raw("GET", "/readyz", Vec::new(), None).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
}

/// While the broker link reconnects, a write is refused before anything is stored: a 503
/// then means nothing changed.
#[tokio::test]
async fn a_write_without_a_broker_connection_stores_nothing() {
    let harness = stopped_web_in_group_edge().await;
    let before = harness.records().await;
    harness.broker.set_connected(false);
    for (method, path, body) in [
        ("POST", "/api/v2/apps/web/start", None),
        (
            "POST",
            "/api/v2/apps/other",
            Some(json!({"docker_image": "nginx"})),
        ),
        ("DELETE", "/api/v2/device_groups/edge", None),
    ] {
        let answer = harness.call(method, path, body).await;
        assert_eq!(
            (answer.status, answer.json.clone()),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "broker unavailable"})
            ),
            "{method} {path}"
        );
    }
    assert_eq!(harness.records().await, before);
    let read = harness.call("GET", "/api/v2/apps/web", None).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(harness.shutdown.fatal_reason(), None);
}

/// App `web` (revision 2, stopped) in group `edge`: three confirmed publishes.
async fn stopped_web_in_group_edge() -> Harness {
    let harness = harness();
    harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    harness.call("POST", "/api/v2/apps/web/stop", None).await;
    harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"apps": ["web"]})),
        )
        .await;
    harness
}

#[tokio::test]
async fn metrics_count_confirmed_publishes_and_need_no_credentials() {
    let harness = stopped_web_in_group_edge().await;
    // A write the broker refuses is not counted.
    harness.broker.set_broken(true);
    harness.call("POST", "/api/v2/apps/web/start", None).await;
    harness.broker.set_broken(false);

    let (status, content_type, bytes) = harness.fetch("GET", "/metrics", Vec::new(), None).await;
    assert_eq!(
        (status, content_type.as_str()),
        (StatusCode::OK, "text/plain; version=0.0.4")
    );
    let body = String::from_utf8(bytes.to_vec()).expect("utf-8");
    let published = harness.published().len() as u64;
    assert_eq!(published, 3, "{:?}", harness.published());
    assert_eq!(
        nebula_control_plane::metrics::sample::<u64>(&body, "nebula_changes_published_total"),
        Some(published),
        "{body}"
    );
    assert_eq!(
        nebula_control_plane::metrics::sample::<u64>(
            &body,
            "nebula_sync_requests_answered_total{result=\"found\"}"
        ),
        Some(0)
    );
}

#[tokio::test]
async fn app_lifecycle_publishes_every_revision_once() {
    let harness = harness();
    let created = harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx", "starting_ports": [80, {"8080": "80"}]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(
        created.json,
        json!({
            "app_name": "web", "app_id": 1, "docker_image": "nginx",
            "starting_ports": [80, {"8080": "80"}], "containers_per": {"server": 1},
            "env_vars": {}, "running": true, "networks": ["nebula", "bridge"],
            "volumes": [], "devices": [], "privileged": false, "rolling_restart": false,
            // Beyond v2, additive: what a v2 client that never sends them gets.
            "stop_timeout_secs": 10, "pull_policy": "always"
        })
    );
    assert_eq!(
        harness
            .broker
            .snapshot()
            .exchanges
            .iter()
            .collect::<Vec<_>>(),
        vec!["nebula.app.web"]
    );
    let again = harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    assert_eq!(
        (again.status, again.json),
        (StatusCode::FORBIDDEN, json!({"app_exists": true}))
    );

    let read = harness.call("GET", "/api/v2/apps/web", None).await;
    assert_eq!(
        (read.status, read.json.clone()),
        (StatusCode::OK, created.json.clone())
    );
    let list = harness.call("GET", "/api/v2/apps", None).await;
    assert_eq!(list.json, json!({"apps": ["web"]}));

    let stopped = harness.call("POST", "/api/v2/apps/web/stop", None).await;
    assert_eq!(stopped.status, StatusCode::ACCEPTED);
    assert_eq!(
        (
            stopped.json["running"].clone(),
            stopped.json["app_id"].clone()
        ),
        (json!(false), json!(2))
    );
    let restart = harness.call("POST", "/api/v2/apps/web/restart", None).await;
    assert_eq!(
        (restart.status, restart.json),
        (
            StatusCode::FORBIDDEN,
            json!({"running_before_restart": false})
        )
    );
    let started = harness.call("POST", "/api/v2/apps/web/start", None).await;
    assert_eq!(
        (
            started.json["running"].clone(),
            started.json["app_id"].clone()
        ),
        (json!(true), json!(3))
    );
    let restarted = harness.call("POST", "/api/v2/apps/web/restart", None).await;
    assert_eq!(
        (restarted.status, restarted.json["app_id"].clone()),
        (StatusCode::ACCEPTED, json!(4))
    );

    let patched = harness
        .call(
            "PATCH",
            "/api/v2/apps/web/update",
            Some(json!({"env_vars": {"A": "1"}, "containers_per": {"cpu": 2}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::ACCEPTED);
    assert_eq!(patched.json["app_id"], json!(5));
    assert_eq!(patched.json["env_vars"], json!({"A": "1"}));
    assert_eq!(
        patched.json["starting_ports"],
        json!([80, {"8080": "80"}]),
        "partial keeps the rest"
    );
    let put = harness
        .call(
            "PUT",
            "/api/v2/apps/web/update",
            Some(json!({"privileged": true})),
        )
        .await;
    assert_eq!(
        (
            put.status,
            put.json["app_id"].clone(),
            put.json["privileged"].clone()
        ),
        (StatusCode::ACCEPTED, json!(6), json!(true))
    );

    let full = harness
        .call(
            "POST",
            "/api/v2/apps/web/update",
            Some(json!({"docker_image": "nginx:2", "running": false})),
        )
        .await;
    assert_eq!(full.status, StatusCode::ACCEPTED);
    assert_eq!(full.json["app_id"], json!(7));
    assert_eq!(
        full.json["starting_ports"],
        json!([]),
        "full update resets omitted fields"
    );
    // Upstream's answer for env_vars a full update omits (API.md).
    assert_eq!(full.json["env_vars"], json!([]));
    assert_eq!(full.json["running"], json!(false));

    let revisions: Vec<(String, u64)> = harness
        .published()
        .iter()
        .map(|(exchange, message)| {
            assert_eq!(exchange, "nebula.app.web");
            app_changed(message).expect("AppChanged")
        })
        .collect();
    assert_eq!(
        revisions,
        (1..=7)
            .map(|revision| ("web".to_string(), revision))
            .collect::<Vec<_>>()
    );
    // Every flag is cleared after its confirm (just after the answer, beside the next
    // write: see `service::write`).
    eventually("every outbox flag cleared", || async {
        harness
            .store
            .pending(Kind::App)
            .await
            .expect("pending")
            .is_empty()
    })
    .await;

    let deleted = harness.call("DELETE", "/api/v2/apps/web", None).await;
    assert_eq!((deleted.status, deleted.json), (StatusCode::OK, json!({})));
    let (exchange, last) = harness.published().pop().expect("published");
    assert_eq!(exchange, "nebula.app.web");
    assert!(
        matches!(last, Message::AppDeleted { ref app_name, app_id: 7, .. } if app_name == "web"),
        "{last:?}"
    );
    assert!(
        harness.broker.snapshot().exchanges.is_empty(),
        "app exchange deleted"
    );
    let gone = harness.call("GET", "/api/v2/apps/web", None).await;
    assert_eq!(
        (gone.status, gone.json),
        (StatusCode::FORBIDDEN, json!({"app_exists": false}))
    );
    let list = harness.call("GET", "/api/v2/apps", None).await;
    assert_eq!(list.json, json!({"apps": []}));
    // The name can be used again, from revision 1.
    let recreated = harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    assert_eq!(
        (recreated.status, recreated.json["app_id"].clone()),
        (StatusCode::OK, json!(1))
    );
    assert!(harness.shutdown.fatal_reason().is_none());
}

/// Issue 18's app fields: `stop_timeout_secs`, `pull_policy` and UDP ports are accepted,
/// validated, stored, echoed and published; partial updates keep them, a full update resets
/// them to their defaults like every other omitted field.
#[tokio::test]
async fn stop_timeout_pull_policy_and_udp_ports_are_accepted_and_echoed() {
    use nebula_protocol::{PortMapping, PortProtocol, PullPolicy};
    let harness = harness();
    let created = harness
        .call(
            "POST",
            "/api/v2/apps/dns",
            Some(json!({
                "docker_image": "coredns",
                "starting_ports": [{"5353": "53/udp"}, {"5353": "53/tcp"}, 9153],
                "stop_timeout_secs": 30,
                "pull_policy": "if_not_present"
            })),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.json);
    assert_eq!(
        created.json["starting_ports"],
        json!([{"5353": "53/udp"}, {"5353": "53/tcp"}, 9153])
    );
    assert_eq!(created.json["stop_timeout_secs"], json!(30));
    assert_eq!(created.json["pull_policy"], json!("if_not_present"));
    let read = harness.call("GET", "/api/v2/apps/dns", None).await;
    assert_eq!(read.json, created.json);

    let published = harness.published();
    let Some((_, Message::AppChanged(config))) = published.last() else {
        panic!("no AppChanged published: {published:?}");
    };
    assert_eq!(config.stop_timeout_secs, 30);
    assert_eq!(config.pull_policy, PullPolicy::IfNotPresent);
    assert_eq!(
        config.starting_ports[0],
        PortMapping::MappedWithProtocol {
            host: 5353,
            container: 53,
            protocol: PortProtocol::Udp
        }
    );

    for (body, key, value) in [
        (
            json!({"stop_timeout_secs": 0}),
            "stop_timeout_secs",
            json!(0),
        ),
        (
            json!({"stop_timeout_secs": 3600}),
            "stop_timeout_secs",
            json!(3600),
        ),
        (
            json!({"pull_policy": "always"}),
            "pull_policy",
            json!("always"),
        ),
    ] {
        let patched = harness
            .call("PATCH", "/api/v2/apps/dns/update", Some(body))
            .await;
        assert_eq!(patched.status, StatusCode::ACCEPTED);
        assert_eq!(patched.json[key], value);
        assert_eq!(
            patched.json["starting_ports"][0],
            json!({"5353": "53/udp"}),
            "a partial update keeps the rest"
        );
    }
    let full = harness
        .call(
            "POST",
            "/api/v2/apps/dns/update",
            Some(json!({"docker_image": "coredns"})),
        )
        .await;
    assert_eq!(full.status, StatusCode::ACCEPTED);
    assert_eq!(
        (
            full.json["stop_timeout_secs"].clone(),
            full.json["pull_policy"].clone()
        ),
        (json!(10), json!("always")),
        "a full update resets omitted fields to their defaults"
    );
}

/// `env_vars` as upstream also takes them: a list of `K=V` strings, echoed as a list; the
/// devices get the same variables either way. A full update without them answers `[]`.
#[tokio::test]
async fn env_vars_keep_the_form_given() {
    let harness = harness();
    let created = harness
        .call(
            "POST",
            "/api/v2/apps/envs",
            Some(json!({"docker_image": "nginx", "env_vars": ["B=2", "A=x=y", "EMPTY=", "B=3"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{}", created.json);
    // Sorted, a later entry of a key winning (as Docker takes a list).
    assert_eq!(created.json["env_vars"], json!(["A=x=y", "B=3", "EMPTY="]));
    let read = harness.call("GET", "/api/v2/apps/envs", None).await;
    assert_eq!(read.json["env_vars"], created.json["env_vars"]);
    let published = harness.published();
    let Some((_, Message::AppChanged(config))) = published.last() else {
        panic!("no AppChanged published: {published:?}");
    };
    let expected: std::collections::BTreeMap<String, String> =
        [("A", "x=y"), ("B", "3"), ("EMPTY", "")]
            .into_iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect();
    assert_eq!(config.env_vars, expected, "the device gets the variables");

    // A partial update without env_vars keeps them and their form; with a dict, a dict.
    let kept = harness
        .call(
            "PUT",
            "/api/v2/apps/envs/update",
            Some(json!({"running": false})),
        )
        .await;
    assert_eq!(kept.json["env_vars"], created.json["env_vars"]);
    let dict = harness
        .call(
            "PATCH",
            "/api/v2/apps/envs/update",
            Some(json!({"env_vars": {"C": "1"}})),
        )
        .await;
    assert_eq!(dict.json["env_vars"], json!({"C": "1"}));
    // A full update without them: upstream's `[]`; a create without them: `{}`.
    let full = harness
        .call(
            "POST",
            "/api/v2/apps/envs/update",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    assert_eq!(full.status, StatusCode::ACCEPTED);
    assert_eq!(full.json["env_vars"], json!([]));
    let fresh = harness
        .call(
            "POST",
            "/api/v2/apps/plain",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    assert_eq!(fresh.json["env_vars"], json!({}));

    // A list entry without `=`, or not a string, is refused and changes nothing.
    for bad in [json!(["NOVALUE"]), json!([1]), json!("A=1")] {
        let refused = harness
            .call(
                "PUT",
                "/api/v2/apps/envs/update",
                Some(json!({"env_vars": bad})),
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(
            refused.json,
            json!({"invalid_parameters": ["env_vars"]}),
            "{bad}"
        );
    }
    let after = harness.call("GET", "/api/v2/apps/envs", None).await;
    assert_eq!(after.json["env_vars"], json!([]));
}

#[tokio::test]
async fn device_groups_bind_apps_and_carry_full_configs() {
    let harness = harness();
    for app in ["web", "api"] {
        let created = harness
            .call(
                "POST",
                &format!("/api/v2/apps/{app}"),
                Some(json!({"docker_image": "nginx"})),
            )
            .await;
        assert_eq!(created.status, StatusCode::OK);
    }
    let unknown = harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"apps": ["nope"]})),
        )
        .await;
    assert_eq!(
        (unknown.status, unknown.json),
        (StatusCode::FORBIDDEN, json!({"app_exists": false}))
    );
    let cron = harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"cron_jobs": ["backup"]})),
        )
        .await;
    assert_eq!(
        (cron.status, cron.json),
        (StatusCode::FORBIDDEN, json!({"cron_job_exists": false})),
        "a group may only list cron jobs that exist"
    );

    let created = harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"apps": ["web"]})),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    assert_eq!(
        created.json,
        json!({"device_group": "edge", "device_group_id": 1, "prune_id": 1, "apps": ["web"], "cron_jobs": []})
    );
    let state = harness.broker.snapshot();
    assert!(
        state
            .bindings
            .contains(&("nebula.group.edge".into(), "nebula.app.web".into()))
    );
    let (exchange, message) = state.published.last().expect("published").clone();
    assert_eq!(exchange, "nebula.group.edge");
    let Message::DeviceGroupChanged(group_state) = message else {
        panic!("{message:?}")
    };
    assert_eq!(group_state.group.device_group_id, 1);
    assert_eq!(group_state.apps.len(), 1);
    assert_eq!(group_state.apps[0].app_name, "web");

    let exists = harness
        .call("POST", "/api/v2/device_groups/edge", Some(json!({})))
        .await;
    assert_eq!(
        (exists.status, exists.json),
        (StatusCode::FORBIDDEN, json!({"device_group_exists": true}))
    );

    let patched = harness
        .call(
            "PATCH",
            "/api/v2/device_groups/edge/update",
            Some(json!({"apps": ["api"]})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::ACCEPTED);
    assert_eq!(
        (
            patched.json["device_group_id"].clone(),
            patched.json["apps"].clone()
        ),
        (json!(2), json!(["api"]))
    );
    let bindings = harness.broker.snapshot().bindings;
    assert!(bindings.contains(&("nebula.group.edge".into(), "nebula.app.api".into())));
    assert!(
        !bindings.contains(&("nebula.group.edge".into(), "nebula.app.web".into())),
        "removed app unbound"
    );

    let full = harness
        .call(
            "POST",
            "/api/v2/device_groups/edge/update",
            Some(json!({"apps": ["web", "api"]})),
        )
        .await;
    assert_eq!(
        (
            full.json["device_group_id"].clone(),
            full.json["apps"].clone()
        ),
        (json!(3), json!(["web", "api"]))
    );

    let info = harness
        .call("GET", "/api/v2/device_groups/edge/info", None)
        .await;
    assert_eq!(info.status, StatusCode::OK);
    assert_eq!(info.json["apps_list"], json!(["web", "api"]));
    assert_eq!(info.json["apps"][1]["app_name"], json!("api"));
    assert_eq!(info.json["apps"][1]["docker_image"], json!("nginx"));
    assert_eq!(
        (
            info.json["device_group_id"].clone(),
            info.json["prune_id"].clone()
        ),
        (json!(3), json!(1))
    );
    assert_eq!(info.json["cron_jobs_list"], json!([]));

    let pruned = harness
        .call("POST", "/api/v2/device_groups/edge/prune", None)
        .await;
    assert_eq!(
        (
            pruned.status,
            pruned.json["prune_id"].clone(),
            pruned.json["device_group_id"].clone()
        ),
        (StatusCode::ACCEPTED, json!(2), json!(3))
    );
    harness
        .call("POST", "/api/v2/device_groups/other", Some(json!({})))
        .await;
    let all = harness.call("POST", "/api/v2/prune", None).await;
    assert_eq!(
        (all.status, all.json),
        (
            StatusCode::ACCEPTED,
            json!({"prune_ids": {"edge": 3, "other": 2}})
        )
    );
    let list = harness.call("GET", "/api/v2/device_groups", None).await;
    assert_eq!(list.json, json!({"device_groups": ["edge", "other"]}));

    // Deleting an app removes it from its groups and tells the devices.
    let before = harness.published().len();
    let deleted = harness.call("DELETE", "/api/v2/apps/web", None).await;
    assert_eq!(deleted.status, StatusCode::OK);
    let after = harness.published();
    let new: Vec<&(String, Message)> = after[before..].iter().collect();
    assert_eq!(new.len(), 2, "{new:?}");
    assert!(
        matches!(&new[0], (exchange, Message::AppDeleted { app_id: 1, .. }) if exchange == "nebula.app.web")
    );
    match &new[1] {
        (exchange, Message::DeviceGroupChanged(state)) => {
            assert_eq!(exchange, "nebula.group.edge");
            assert_eq!(state.group.device_group_id, 4);
            assert_eq!(state.group.apps, vec!["api"]);
            assert_eq!(
                state
                    .apps
                    .iter()
                    .map(|app| app.app_name.to_string())
                    .collect::<Vec<_>>(),
                vec!["api"]
            );
        }
        other => panic!("{other:?}"),
    }
    let group = harness
        .call("GET", "/api/v2/device_groups/edge", None)
        .await;
    assert_eq!(
        (
            group.json["apps"].clone(),
            group.json["device_group_id"].clone()
        ),
        (json!(["api"]), json!(4))
    );

    let deleted = harness
        .call("DELETE", "/api/v2/device_groups/edge", None)
        .await;
    assert_eq!((deleted.status, deleted.json), (StatusCode::OK, json!({})));
    let (exchange, message) = harness.published().pop().expect("published");
    assert_eq!(exchange, "nebula.group.edge");
    assert!(matches!(
        message,
        Message::DeviceGroupDeleted {
            device_group_id: 4,
            ..
        }
    ));
    assert!(
        !harness
            .broker
            .snapshot()
            .exchanges
            .contains("nebula.group.edge")
    );
    for (method, path) in [
        ("GET", "/api/v2/device_groups/edge"),
        ("DELETE", "/api/v2/device_groups/edge"),
        ("POST", "/api/v2/device_groups/edge/prune"),
        ("PATCH", "/api/v2/device_groups/edge/update"),
    ] {
        let answer = harness.call(method, path, Some(json!({"apps": []}))).await;
        assert_eq!(
            (answer.status, answer.json),
            (StatusCode::FORBIDDEN, json!({"device_group_exists": false})),
            "{method} {path}"
        );
    }
}

/// One bad-input case: label, method, path, body, expected status and JSON.
type Case = (String, &'static str, String, Vec<u8>, StatusCode, Value);

/// The last `DeviceGroupChanged` published to `group`'s exchange.
fn last_group_state(harness: &Harness, group: &str) -> nebula_protocol::GroupState {
    harness
        .published()
        .into_iter()
        .rev()
        .find_map(|(exchange, message)| match message {
            Message::DeviceGroupChanged(state) if exchange == format!("nebula.group.{group}") => {
                Some(state)
            }
            _ => None,
        })
        .expect("a group state published")
}

#[tokio::test]
async fn cron_jobs_reach_devices_through_their_groups() {
    let harness = harness();
    let missing = harness
        .call("POST", "/api/v2/cron_jobs/backup", Some(json!({})))
        .await;
    assert_eq!(
        (missing.status, missing.json),
        (
            StatusCode::BAD_REQUEST,
            json!({"missing_parameters": ["schedule", "docker_image"]})
        )
    );
    for schedule in ["* * * *", "61 * * * *", "not a schedule"] {
        let bad = harness
            .call(
                "POST",
                "/api/v2/cron_jobs/backup",
                Some(json!({"schedule": schedule, "docker_image": "busybox"})),
            )
            .await;
        assert_eq!(
            (bad.status, bad.json),
            (StatusCode::BAD_REQUEST, json!({"schedule_valid": false})),
            "{schedule}"
        );
    }
    let created = harness
        .call(
            "POST",
            "/api/v2/cron_jobs/backup",
            Some(json!({"schedule": "*/5 * * * *", "docker_image": "busybox", "env_vars": {"A": "1"}})),
        )
        .await;
    assert_eq!(
        (created.status, created.json),
        (
            StatusCode::OK,
            json!({"cron_job_name": "backup", "cron_job_id": 1, "schedule": "*/5 * * * *",
                   "docker_image": "busybox", "env_vars": {"A": "1"}, "running": true,
                   "networks": ["nebula", "bridge"], "volumes": [], "devices": [], "privileged": false})
        )
    );
    let exists = harness
        .call(
            "POST",
            "/api/v2/cron_jobs/backup",
            Some(json!({"schedule": "* * * * *", "docker_image": "busybox"})),
        )
        .await;
    assert_eq!(
        (exists.status, exists.json),
        (StatusCode::FORBIDDEN, json!({"cron_job_exists": true}))
    );
    let listed = harness.call("GET", "/api/v2/cron_jobs", None).await;
    assert_eq!(listed.json, json!({"cron_jobs": ["backup"]}));

    let group = harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"cron_jobs": ["backup"]})),
        )
        .await;
    assert_eq!(group.status, StatusCode::OK);
    let state = last_group_state(&harness, "edge");
    assert_eq!(state.group.cron_jobs, vec!["backup"]);
    let first_incarnation = state.cron_jobs[0].incarnation;
    assert_eq!(
        state
            .cron_jobs
            .iter()
            .map(|job| (job.cron_job_name.as_str(), job.cron_job_id))
            .collect::<Vec<_>>(),
        vec![("backup", 1)]
    );

    // A change of the job reaches the group's devices at the same group version.
    let patched = harness
        .call(
            "PATCH",
            "/api/v2/cron_jobs/backup/update",
            Some(json!({"schedule": "* * * * *"})),
        )
        .await;
    assert_eq!(
        (
            patched.status,
            patched.json["cron_job_id"].clone(),
            patched.json["schedule"].clone(),
            patched.json["env_vars"].clone()
        ),
        (
            StatusCode::ACCEPTED,
            json!(2),
            json!("* * * * *"),
            json!({"A": "1"})
        )
    );
    let state = last_group_state(&harness, "edge");
    assert_eq!(state.group.device_group_id, 1);
    assert_eq!(
        (
            state.cron_jobs[0].cron_job_id,
            state.cron_jobs[0].schedule.as_str()
        ),
        (2, "* * * * *")
    );
    for (method, body, status, answer) in [
        (
            "PUT",
            json!({}),
            StatusCode::BAD_REQUEST,
            json!({"missing_parameters": true}),
        ),
        (
            "PUT",
            json!({"every": 1}),
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": ["every"]}),
        ),
        (
            "PUT",
            json!({"running": "yes"}),
            StatusCode::BAD_REQUEST,
            json!({"invalid_parameters": ["running"]}),
        ),
        (
            "PUT",
            json!({"env_vars": ["A=1"]}),
            StatusCode::BAD_REQUEST,
            json!({"invalid_parameters": ["env_vars"]}),
        ),
        (
            "PUT",
            json!({"cron_job_name": "other"}),
            StatusCode::BAD_REQUEST,
            json!({"invalid_parameters": ["cron_job_name"]}),
        ),
        (
            "PATCH",
            json!({"schedule": "* * 31 2"}),
            StatusCode::BAD_REQUEST,
            json!({"schedule_valid": false}),
        ),
        (
            "POST",
            json!({"docker_image": "busybox"}),
            StatusCode::BAD_REQUEST,
            json!({"missing_parameters": ["schedule"]}),
        ),
        (
            "POST",
            json!({"schedule": "* * * * *", "docker_image": "NOT VALID"}),
            StatusCode::BAD_REQUEST,
            json!({"invalid_parameters": ["docker_image"]}),
        ),
    ] {
        let refused = harness
            .call(
                method,
                "/api/v2/cron_jobs/backup/update",
                Some(body.clone()),
            )
            .await;
        assert_eq!(
            (refused.status, refused.json),
            (status, answer),
            "{method} {body}"
        );
    }
    let unchanged = harness.call("GET", "/api/v2/cron_jobs/backup", None).await;
    assert_eq!(unchanged.json["cron_job_id"], json!(2));
    let missing = harness
        .call(
            "PATCH",
            "/api/v2/cron_jobs/ghost/update",
            Some(json!({"running": false})),
        )
        .await;
    assert_eq!(
        (missing.status, missing.json),
        (StatusCode::FORBIDDEN, json!({"cron_job_exists": false}))
    );

    // A full update resets what it omits.
    let full = harness
        .call(
            "POST",
            "/api/v2/cron_jobs/backup/update",
            Some(json!({"schedule": "0 3 * * *", "docker_image": "busybox:1", "privileged": true})),
        )
        .await;
    assert_eq!(full.status, StatusCode::ACCEPTED);
    assert_eq!(
        (
            full.json["cron_job_id"].clone(),
            full.json["env_vars"].clone(),
            full.json["privileged"].clone()
        ),
        (json!(3), json!({}), json!(true))
    );
    let info = harness
        .call("GET", "/api/v2/device_groups/edge/info", None)
        .await;
    assert_eq!(info.json["cron_jobs_list"], json!(["backup"]));
    assert_eq!(info.json["cron_jobs"], json!([full.json]));

    // Deleting the job takes it out of the group, whose devices then stop running it.
    let deleted = harness
        .call("DELETE", "/api/v2/cron_jobs/backup", None)
        .await;
    assert_eq!((deleted.status, deleted.json), (StatusCode::OK, json!({})));
    let gone = harness.call("GET", "/api/v2/cron_jobs/backup", None).await;
    assert_eq!(
        (gone.status, gone.json),
        (StatusCode::FORBIDDEN, json!({"cron_job_exists": false}))
    );
    let group = harness
        .call("GET", "/api/v2/device_groups/edge", None)
        .await;
    assert_eq!(
        (
            group.json["device_group_id"].clone(),
            group.json["cron_jobs"].clone()
        ),
        (json!(2), json!([]))
    );
    let state = last_group_state(&harness, "edge");
    assert!(state.group.cron_jobs.is_empty() && state.cron_jobs.is_empty());
    let again = harness
        .call("DELETE", "/api/v2/cron_jobs/backup", None)
        .await;
    assert_eq!(again.status, StatusCode::FORBIDDEN);

    // Re-created: revision 1 of a newer incarnation.
    let recreated = harness
        .call(
            "POST",
            "/api/v2/cron_jobs/backup",
            Some(json!({"schedule": "* * * * *", "docker_image": "busybox"})),
        )
        .await;
    assert_eq!(recreated.json["cron_job_id"], json!(1));
    harness
        .call(
            "PUT",
            "/api/v2/device_groups/edge/update",
            Some(json!({"cron_jobs": ["backup"]})),
        )
        .await;
    let state = last_group_state(&harness, "edge");
    assert!(state.cron_jobs[0].incarnation > first_incarnation);
    assert_eq!(state.cron_jobs[0].cron_job_id, 1);
}

/// Every kind of bad input, on every endpoint: the documented 4xx with a JSON body, and
/// neither the store nor the broker changes.
#[tokio::test]
async fn bad_input_changes_nothing() {
    let harness = harness();
    harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"apps": ["web"]})),
        )
        .await;
    let store_before = harness.records().await;
    let broker_before: FakeState = harness.broker.snapshot();

    let big = {
        let mut body = br#"{"docker_image": "nginx", "env_vars": {"A": ""#.to_vec();
        body.extend(std::iter::repeat_n(b'x', 1024 * 1024));
        body.extend(br#""}}"#);
        body
    };
    let missing_true = json!({"missing_parameters": true});
    let invalid = |fields: &[&str]| json!({"invalid_parameters": fields});
    let port_range = json!({"starting_ports": "invalid port"});
    let port_shape = json!({"starting_ports": "can only be a list containing integers or dicts"});
    let app_bodies: Vec<(&str, Vec<u8>, StatusCode, Value)> = vec![
        (
            "malformed",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            missing_true.clone(),
        ),
        (
            "not an object",
            b"[1,2]".to_vec(),
            StatusCode::BAD_REQUEST,
            missing_true.clone(),
        ),
        (
            "unknown field",
            br#"{"docker_image":"nginx","colour":"red"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": ["colour"]}),
        ),
        (
            "revision",
            br#"{"docker_image":"nginx","app_id":9}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": ["app_id"]}),
        ),
        (
            "wrong type",
            br#"{"docker_image":"nginx","running":"yes"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["running"]),
        ),
        (
            "wrong types",
            br#"{"docker_image":5,"env_vars":{"A":1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["docker_image", "env_vars"]),
        ),
        (
            "bad containers_per",
            br#"{"docker_image":"nginx","containers_per":{"gpu":1}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["containers_per"]),
        ),
        (
            "zero containers",
            br#"{"docker_image":"nginx","containers_per":{"server":0}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["containers_per"]),
        ),
        (
            "bad image",
            br#"{"docker_image":"UPPER/Case"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["docker_image"]),
        ),
        (
            "bad volume",
            br#"{"docker_image":"nginx","volumes":["/data"]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["volumes"]),
        ),
        (
            "port out of range",
            br#"{"docker_image":"nginx","starting_ports":[70000]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            port_range.clone(),
        ),
        (
            "port range overflow",
            br#"{"docker_image":"nginx","starting_ports":[65535],"containers_per":{"server":2}}"#
                .to_vec(),
            StatusCode::BAD_REQUEST,
            port_range.clone(),
        ),
        (
            "port shape",
            br#"{"docker_image":"nginx","starting_ports":["80"]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            port_shape.clone(),
        ),
        (
            "port dict shape",
            br#"{"docker_image":"nginx","starting_ports":[{"a":"b"}]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            port_shape.clone(),
        ),
        (
            "negative stop timeout",
            br#"{"docker_image":"nginx","stop_timeout_secs":-1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["stop_timeout_secs"]),
        ),
        (
            "stop timeout as a string",
            br#"{"docker_image":"nginx","stop_timeout_secs":"10"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["stop_timeout_secs"]),
        ),
        (
            "fractional stop timeout",
            br#"{"docker_image":"nginx","stop_timeout_secs":1.5}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["stop_timeout_secs"]),
        ),
        (
            "stop timeout over an hour",
            br#"{"docker_image":"nginx","stop_timeout_secs":3601}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["stop_timeout_secs"]),
        ),
        (
            "stop timeout past u32",
            br#"{"docker_image":"nginx","stop_timeout_secs":4294967296}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["stop_timeout_secs"]),
        ),
        (
            "unknown pull policy",
            br#"{"docker_image":"nginx","pull_policy":"never"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["pull_policy"]),
        ),
        (
            "pull policy of the wrong case",
            br#"{"docker_image":"nginx","pull_policy":"Always"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["pull_policy"]),
        ),
        (
            "pull policy not a string",
            br#"{"docker_image":"nginx","pull_policy":true}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            invalid(&["pull_policy"]),
        ),
        (
            "unknown port protocol",
            br#"{"docker_image":"nginx","starting_ports":[{"53":"53/sctp"}]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            port_shape.clone(),
        ),
        (
            "protocol on the host side",
            br#"{"docker_image":"nginx","starting_ports":[{"53/udp":"53"}]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            port_shape.clone(),
        ),
        (
            "udp port out of range",
            br#"{"docker_image":"nginx","starting_ports":[{"53":"70000/udp"}]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            port_range.clone(),
        ),
        (
            "too large",
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"payload_too_large": true, "max_bytes": 1048576}),
        ),
    ];
    let mut cases: Vec<Case> = Vec::new();
    for (label, body, status, expected) in &app_bodies {
        // Create (on a new name), full update and both partial updates of an existing app.
        for (method, path) in [
            ("POST", "/api/v2/apps/new"),
            ("POST", "/api/v2/apps/web/update"),
            ("PUT", "/api/v2/apps/web/update"),
            ("PATCH", "/api/v2/apps/web/update"),
        ] {
            cases.push((
                label.to_string(),
                method,
                path.to_string(),
                body.clone(),
                *status,
                expected.clone(),
            ));
        }
    }
    let required = json!({"missing_parameters": ["docker_image"]});
    for path in ["/api/v2/apps/new", "/api/v2/apps/web/update"] {
        cases.push((
            "no image".into(),
            "POST",
            path.into(),
            br#"{"running":true}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            required.clone(),
        ));
    }
    for method in ["PUT", "PATCH"] {
        cases.push((
            "empty partial".into(),
            method,
            "/api/v2/apps/web/update".into(),
            b"{}".to_vec(),
            StatusCode::BAD_REQUEST,
            missing_true.clone(),
        ));
        cases.push((
            "empty partial".into(),
            method,
            "/api/v2/device_groups/edge/update".into(),
            b"{}".to_vec(),
            StatusCode::BAD_REQUEST,
            missing_true.clone(),
        ));
    }
    let group_bodies: Vec<(&str, Vec<u8>, StatusCode, Value)> = vec![
        (
            "malformed",
            b"nope".to_vec(),
            StatusCode::BAD_REQUEST,
            missing_true.clone(),
        ),
        (
            "apps not a list",
            br#"{"apps":"web"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"apps_is_list": false}),
        ),
        (
            "apps of numbers",
            br#"{"apps":[1]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"apps_is_list": false}),
        ),
        (
            "cron_jobs not a list",
            br#"{"cron_jobs":{}}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"cron_jobs_is_list": false}),
        ),
        (
            "unknown field",
            br#"{"apps":[],"devices":[]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": ["devices"]}),
        ),
        (
            "bad app name",
            br#"{"apps":["no/slash"]}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"invalid_name": "no/slash"}),
        ),
        (
            "unknown app",
            br#"{"apps":["ghost"]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            json!({"app_exists": false}),
        ),
        (
            "unknown cron job",
            br#"{"cron_jobs":["ghost"]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            json!({"cron_job_exists": false}),
        ),
        (
            "too large",
            big.clone(),
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"payload_too_large": true, "max_bytes": 1048576}),
        ),
    ];
    for (label, body, status, expected) in &group_bodies {
        for (method, path) in [
            ("POST", "/api/v2/device_groups/new"),
            ("POST", "/api/v2/device_groups/edge/update"),
            ("PUT", "/api/v2/device_groups/edge/update"),
            ("PATCH", "/api/v2/device_groups/edge/update"),
        ] {
            cases.push((
                label.to_string(),
                method,
                path.to_string(),
                body.clone(),
                *status,
                expected.clone(),
            ));
        }
    }
    // Invalid names in the path, on every endpoint that takes one.
    let bad_name = "-bad";
    for (method, path) in [
        ("GET", "/api/v2/apps/{}"),
        ("POST", "/api/v2/apps/{}"),
        ("DELETE", "/api/v2/apps/{}"),
        ("POST", "/api/v2/apps/{}/start"),
        ("POST", "/api/v2/apps/{}/stop"),
        ("POST", "/api/v2/apps/{}/restart"),
        ("POST", "/api/v2/apps/{}/update"),
        ("PUT", "/api/v2/apps/{}/update"),
        ("PATCH", "/api/v2/apps/{}/update"),
        ("GET", "/api/v2/device_groups/{}"),
        ("POST", "/api/v2/device_groups/{}"),
        ("DELETE", "/api/v2/device_groups/{}"),
        ("GET", "/api/v2/device_groups/{}/info"),
        ("POST", "/api/v2/device_groups/{}/update"),
        ("PUT", "/api/v2/device_groups/{}/update"),
        ("PATCH", "/api/v2/device_groups/{}/update"),
        ("POST", "/api/v2/device_groups/{}/prune"),
    ] {
        cases.push((
            "invalid name".into(),
            method,
            path.replace("{}", bad_name),
            br#"{"docker_image":"nginx"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            json!({"invalid_name": bad_name}),
        ));
    }
    let too_long = "a".repeat(65);
    cases.push((
        "name too long".into(),
        "POST",
        format!("/api/v2/apps/{too_long}"),
        br#"{"docker_image":"nginx"}"#.to_vec(),
        StatusCode::BAD_REQUEST,
        json!({"invalid_name": too_long}),
    ));
    // Objects that do not exist.
    let no_app = json!({"app_exists": false});
    for (method, path) in [
        ("GET", "/api/v2/apps/ghost"),
        ("DELETE", "/api/v2/apps/ghost"),
        ("POST", "/api/v2/apps/ghost/start"),
        ("POST", "/api/v2/apps/ghost/stop"),
        ("POST", "/api/v2/apps/ghost/restart"),
        ("PATCH", "/api/v2/apps/ghost/update"),
        ("POST", "/api/v2/apps/ghost/update"),
    ] {
        cases.push((
            "missing app".into(),
            method,
            path.into(),
            br#"{"docker_image":"nginx"}"#.to_vec(),
            StatusCode::FORBIDDEN,
            no_app.clone(),
        ));
    }
    cases.push((
        "existing app".into(),
        "POST",
        "/api/v2/apps/web".into(),
        br#"{"docker_image":"nginx"}"#.to_vec(),
        StatusCode::FORBIDDEN,
        json!({"app_exists": true}),
    ));
    cases.push((
        "existing group".into(),
        "POST",
        "/api/v2/device_groups/edge".into(),
        b"{}".to_vec(),
        StatusCode::FORBIDDEN,
        json!({"device_group_exists": true}),
    ));
    let no_group = json!({"device_group_exists": false});
    for (method, path) in [
        ("GET", "/api/v2/device_groups/ghost"),
        ("GET", "/api/v2/device_groups/ghost/info"),
        ("DELETE", "/api/v2/device_groups/ghost"),
        ("POST", "/api/v2/device_groups/ghost/prune"),
        ("POST", "/api/v2/device_groups/ghost/update"),
        ("PUT", "/api/v2/device_groups/ghost/update"),
    ] {
        cases.push((
            "missing group".into(),
            method,
            path.into(),
            br#"{"apps":[]}"#.to_vec(),
            StatusCode::FORBIDDEN,
            no_group.clone(),
        ));
    }
    // Unknown paths and methods.
    let not_found = json!({"not_found": true});
    for path in [
        "/",
        "/api/v2",
        "/api/v2/nothing",
        "/api/v2/apps/web/explode",
        "/api/v3/apps",
        "/api/v2/apps/web/update/more",
    ] {
        cases.push((
            "unknown path".into(),
            "GET",
            path.into(),
            Vec::new(),
            StatusCode::NOT_FOUND,
            not_found.clone(),
        ));
    }
    let not_allowed = json!({"method_not_allowed": true});
    for (method, path) in [
        ("DELETE", "/api/v2/apps"),
        ("POST", "/api/v2/status"),
        ("PUT", "/api/v2/apps/web"),
        ("GET", "/api/v2/apps/web/stop"),
        ("GET", "/api/v2/apps/web/update"),
        ("DELETE", "/api/v2/device_groups/edge/update"),
        ("GET", "/api/v2/prune"),
        ("PATCH", "/api/v2/device_groups/edge"),
        ("POST", "/healthz"),
    ] {
        cases.push((
            "wrong method".into(),
            method,
            path.into(),
            Vec::new(),
            StatusCode::METHOD_NOT_ALLOWED,
            not_allowed.clone(),
        ));
    }

    assert!(cases.len() >= 150, "{} cases", cases.len());
    for (label, method, path, body, status, expected) in cases {
        let answer = harness.raw(method, &path, body, Some(&basic())).await;
        assert_eq!(
            (answer.status, &answer.json),
            (status, &expected),
            "{label}: {method} {path}"
        );
        assert!(!answer.status.is_server_error());
        assert_eq!(
            harness.records().await,
            store_before,
            "{label}: {method} {path} changed the store"
        );
        assert_eq!(
            harness.broker.snapshot(),
            broker_before,
            "{label}: {method} {path} touched the broker"
        );
    }
    assert!(harness.shutdown.fatal_reason().is_none());
}

#[tokio::test]
async fn concurrent_changes_get_distinct_revisions() {
    let harness = Arc::new(harness());
    harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    let mut tasks = Vec::new();
    for index in 0..20 {
        let harness = Arc::clone(&harness);
        tasks.push(tokio::spawn(async move {
            let answer = harness
                .call(
                    "PATCH",
                    "/api/v2/apps/web/update",
                    Some(json!({"env_vars": {"N": index.to_string()}})),
                )
                .await;
            assert_eq!(answer.status, StatusCode::ACCEPTED);
            answer.json["app_id"].as_u64().expect("app_id")
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.expect("task"));
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (2..=21).collect::<Vec<_>>());
    let published: Vec<u64> = harness
        .published()
        .iter()
        .filter_map(|(_, message)| app_changed(message))
        .map(|(_, revision)| revision)
        .collect();
    // Concurrent changes of one object are combined: a batch is written and published once,
    // at its last revision. Never a revision twice, never out of order, always the last one.
    assert!(
        published.windows(2).all(|pair| pair[1] > pair[0]),
        "published in order, each once: {published:?}"
    );
    assert_eq!(published.first(), Some(&1));
    assert_eq!(published.last(), Some(&21), "the final state is published");
    assert!(published.len() <= 21);
}

#[tokio::test]
async fn broker_failure_fails_the_request_not_the_instance() {
    let harness = harness();
    harness.broker.set_broken(true);
    let answer = harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json, json!({"error": "broker unavailable"}));
    // The broker link replaces the connection (tested against RabbitMQ); the instance goes
    // on answering reads.
    assert_eq!(harness.shutdown.fatal_reason(), None);
    assert!(!harness.shutdown.token().is_cancelled());
    let read = harness.call("GET", "/api/v2/apps/web", None).await;
    assert_eq!(read.status, StatusCode::OK);
    // The change is stored with its outbox flag, for the outbox to publish.
    let pending = harness.store.pending(Kind::App).await.expect("pending");
    assert_eq!(pending.len(), 1);

    // Once the broker is back, the pass the link runs before serving again republishes it.
    harness.broker.set_broken(false);
    let service = Service::new(
        Arc::clone(&harness.store) as Arc<dyn Store>,
        Arc::clone(&harness.broker) as Arc<dyn Publisher>,
        Shutdown::new(),
    );
    let handled = nebula_control_plane::outbox::run_once(&service)
        .await
        .expect("outbox");
    assert_eq!(handled, 1);
    let published = harness.published();
    assert_eq!(published.len(), 1);
    assert_eq!(app_changed(&published[0].1), Some(("web".into(), 1)));
    assert!(
        harness
            .store
            .pending(Kind::App)
            .await
            .expect("pending")
            .is_empty()
    );
    assert_eq!(
        nebula_control_plane::outbox::run_once(&service)
            .await
            .expect("outbox"),
        0
    );
}

#[tokio::test]
async fn sync_answers_from_the_store() {
    use nebula_control_plane::sync::answer;
    use nebula_protocol::{Name, SyncRequest, SyncResult, SyncTarget};
    let harness = stopped_web_in_group_edge().await;
    let service = Service::new(
        Arc::clone(&harness.store) as Arc<dyn Store>,
        Arc::clone(&harness.broker) as Arc<dyn Publisher>,
        Shutdown::new(),
    );
    let request = |target| SyncRequest {
        device_id: Name::new("pi-1").expect("name"),
        target,
        correlation_id: "c1".into(),
        agent_version: "test".into(),
        known_store: None,
    };
    let name = |value: &str| Name::new(value).expect("name");
    match answer(&service, &request(SyncTarget::App(name("web"))))
        .await
        .expect("answer")
    {
        SyncResult::App(config) => assert_eq!((config.app_id, config.running), (2, false)),
        other => panic!("{other:?}"),
    }
    match answer(&service, &request(SyncTarget::DeviceGroup(name("edge"))))
        .await
        .expect("answer")
    {
        SyncResult::Group(state) => {
            assert_eq!(state.group.device_group_id, 1);
            assert_eq!(state.apps.len(), 1);
            assert_eq!(state.apps[0].app_id, 2);
        }
        other => panic!("{other:?}"),
    }
    for target in [
        SyncTarget::App(name("ghost")),
        SyncTarget::DeviceGroup(name("ghost")),
    ] {
        assert_eq!(
            answer(&service, &request(target)).await.expect("answer"),
            SyncResult::NotFound
        );
    }
}

/// The periodic outbox pass leaves a flag alone the first time it sees it (its request may
/// still be in flight) and republishes it when it is still there, unchanged, a pass later.
#[tokio::test(start_paused = true)]
async fn periodic_outbox_republishes_flags_left_for_a_whole_interval() {
    let harness = harness();
    harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    // Simulate a write whose publish never happened: flag set at a new version.
    let current = harness
        .store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("exists");
    let flagged = Record {
        pending_publish: true,
        ..current.clone()
    };
    harness
        .store
        .replace(Kind::App, current.version, &flagged)
        .await
        .expect("replace");
    let published_before = harness.published().len();

    let service = Service::new(
        Arc::clone(&harness.store) as Arc<dyn Store>,
        Arc::clone(&harness.broker) as Arc<dyn Publisher>,
        Shutdown::new(),
    );
    let shutdown = Shutdown::new();
    let interval = std::time::Duration::from_secs(5);
    let outbox = tokio::spawn(nebula_control_plane::outbox::run(
        service,
        interval,
        shutdown.clone(),
    ));
    // First pass (t = 5 s): seen, not republished.
    tokio::time::sleep(interval + std::time::Duration::from_millis(100)).await;
    assert_eq!(harness.published().len(), published_before);
    // Second pass (t = 10 s): still flagged at the same version, republished and cleared.
    tokio::time::sleep(interval).await;
    let published = harness.published();
    assert_eq!(published.len(), published_before + 1);
    assert_eq!(
        app_changed(&published[published_before].1),
        Some(("web".into(), 1))
    );
    assert!(
        harness
            .store
            .pending(Kind::App)
            .await
            .expect("pending")
            .is_empty()
    );
    shutdown.stop();
    outbox.await.expect("outbox task");
}

#[tokio::test]
async fn store_failure_fails_the_request_and_the_instance() {
    let harness = harness();
    harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    let published = harness.published().len();
    harness.store.set_unavailable(true);
    for (method, path) in [
        ("GET", "/api/v2/apps/web"),
        ("POST", "/api/v2/apps/web/stop"),
        ("GET", "/api/v2/apps"),
    ] {
        let answer = harness.call(method, path, None).await;
        assert_eq!(
            answer.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {path}"
        );
        assert_eq!(answer.json, json!({"error": "store unavailable"}));
    }
    let ready = harness.raw("GET", "/readyz", Vec::new(), None).await;
    assert_eq!(
        (ready.status, ready.json["store"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(false))
    );
    assert!(
        harness
            .shutdown
            .fatal_reason()
            .is_some_and(|reason| reason.contains("store unavailable"))
    );
    assert_eq!(
        harness.published().len(),
        published,
        "nothing published without a store write"
    );
}

/// A delete interrupted by a broker failure leaves a flagged tombstone: the app is gone for
/// readers at once, and the next instance's outbox finishes the delete on the broker.
#[tokio::test]
async fn interrupted_delete_is_finished_by_the_outbox() {
    let harness = harness();
    harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "nginx"})),
        )
        .await;
    harness
        .call(
            "POST",
            "/api/v2/device_groups/edge",
            Some(json!({"apps": ["web"]})),
        )
        .await;
    harness.broker.set_broken(true);
    let answer = harness.call("DELETE", "/api/v2/apps/web", None).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(harness.shutdown.fatal_reason(), None);
    let tombstone = harness
        .store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("kept");
    assert!(tombstone.tombstone && tombstone.pending_publish);
    harness.broker.set_broken(false);
    let gone = harness.call("GET", "/api/v2/apps/web", None).await;
    assert_eq!(gone.json, json!({"app_exists": false}));

    let published_before = harness.published().len();
    let service = Service::new(
        Arc::clone(&harness.store) as Arc<dyn Store>,
        Arc::clone(&harness.broker) as Arc<dyn Publisher>,
        Shutdown::new(),
    );
    nebula_control_plane::outbox::run_once(&service)
        .await
        .expect("outbox");
    let published = harness.published();
    let new: Vec<_> = published[published_before..]
        .iter()
        .map(|(exchange, message)| (exchange.as_str(), message.kind()))
        .collect();
    assert_eq!(
        new,
        vec![
            ("nebula.app.web", "app_deleted"),
            ("nebula.group.edge", "device_group_changed")
        ]
    );
    // The tombstone stays, finished (see `Record::tombstone`).
    let tombstone = harness
        .store
        .get(Kind::App, "web")
        .await
        .expect("get")
        .expect("tombstone kept");
    assert!(tombstone.tombstone && !tombstone.pending_publish);
    let group = harness
        .call("GET", "/api/v2/device_groups/edge", None)
        .await;
    assert_eq!(
        (
            group.json["apps"].clone(),
            group.json["device_group_id"].clone()
        ),
        (json!([]), json!(2))
    );
    assert!(
        !harness
            .broker
            .snapshot()
            .exchanges
            .contains("nebula.app.web")
    );
    assert!(
        harness
            .store
            .pending(Kind::App)
            .await
            .expect("pending")
            .is_empty()
    );
    assert!(
        harness
            .store
            .pending(Kind::DeviceGroup)
            .await
            .expect("pending")
            .is_empty()
    );
}
