//! The OpenAPI document against the router that serves it (in process: memory store, fake
//! broker): every documented operation is served and every served route is documented;
//! real requests and answers of every kind, the device inventory and rollout status
//! included, fit the document's schemas.

#[path = "../../tests/src/openapi.rs"]
#[allow(
    dead_code,
    reason = "shared with the nebula-tests crate; not every helper is used here"
)]
mod openapi;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use nebula_control_plane::api::{AppState, router};
use nebula_control_plane::auth::{AdminCredentials, Authenticator};
use nebula_control_plane::broker::Publisher;
use nebula_control_plane::broker::fake::FakeBroker;
use nebula_control_plane::service::Service;
use nebula_control_plane::service::devices::{Ingested, now_ms};
use nebula_control_plane::service::reports::Retention;
use nebula_control_plane::shutdown::Shutdown;
use nebula_control_plane::store::Store;
use nebula_control_plane::store::memory::MemoryStore;
use nebula_protocol::{
    AppReport, ContainerReport, DeviceMode, DeviceReport, Name, ResourceUsage, names,
};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const AUTH: &str = "Basic bmVidWxhOnNlY3JldA=="; // nebula:secret
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

struct Harness {
    router: axum::Router,
    service: Service,
    broker: Arc<FakeBroker>,
}

fn harness() -> Harness {
    let broker = Arc::new(FakeBroker::new());
    let service = Service::new(
        Arc::new(MemoryStore::new()) as Arc<dyn Store>,
        Arc::clone(&broker) as Arc<dyn Publisher>,
        Shutdown::new(),
    )
    // Past reports are listed at once here: the reports are ingested a moment before.
    .with_report_retention(Retention {
        settle: Duration::ZERO,
        ..Retention::default()
    });
    let authenticator = Authenticator::new(
        true,
        &AdminCredentials {
            user: Some("nebula".into()),
            password: Some("secret".into()),
            token: None,
        },
    );
    Harness {
        router: router(AppState {
            service: service.clone(),
            authenticator,
            credentials: None,
        }),
        service,
        broker,
    }
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        auth: bool,
    ) -> (u16, Value) {
        let mut request = Request::builder()
            .method(method.to_ascii_uppercase().as_str())
            .uri(path);
        if auth {
            request = request.header("authorization", AUTH);
        }
        let body = body.map_or_else(Body::empty, |body| Body::from(body.to_string()));
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).expect("request"))
            .await
            .expect("answer");
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, json)
    }

    async fn document(&self) -> Value {
        let (status, document) = self.call("get", "/api/v2/openapi.json", None, true).await;
        assert_eq!(status, 200, "{document}");
        document
    }
}

fn report(
    device: &str,
    group: &str,
    app: &str,
    incarnation: u64,
    revision: u64,
    sequence: u64,
) -> DeviceReport {
    let name = |text: &str| Name::new(text).expect("name");
    DeviceReport {
        device_id: name(device),
        hostname: "host".into(),
        device_group: Some(name(group)),
        device_group_id: Some(1),
        prune_id: Some(1),
        report_creation_time: 1,
        updated: true,
        agent_version: "0.1.0".into(),
        apps: vec![AppReport {
            app_name: name(app),
            desired_revision: Some(revision),
            applied_revision: Some(revision),
            containers: vec![ContainerReport {
                name: format!("{app}-1"),
                image: "img".into(),
                state: "running".into(),
                health: None,
                app_id: Some(revision),
                restart_count: Some(0),
                incarnation: Some(incarnation),
            }],
            error: None,
            desired_incarnation: Some(incarnation),
            converged: true,
        }],
        resources: ResourceUsage {
            cpu_cores: 2,
            cpu_percent: 1.5,
            memory_total_bytes: 1 << 30,
            memory_used_bytes: 1 << 29,
            root_disk_total_bytes: 1 << 34,
            root_disk_used_bytes: 1 << 33,
        },
        target: "x86_64-unknown-linux-musl".into(),
        os: "Debian".into(),
        kernel: "Linux 6.1".into(),
        docker_version: Some("28.2.2".into()),
        uptime_secs: 100,
        agent_uptime_secs: 10,
        report_interval_secs: 60,
        mode: DeviceMode::Group(name(group)),
        session: 42,
        sequence,
        device_group_incarnation: None,
        stopping: false,
        cron_jobs: Vec::new(),
    }
}

#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let harness = harness();
    let document = harness.document().await;
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().expect("paths");
    for required in [
        "/api/v2/devices",
        "/api/v2/devices/{device}",
        "/api/v2/reports",
        "/api/v2/apps/{app}/status",
        "/api/v2/device_groups/{group}/status",
        "/api/v2/openapi.json",
        "/metrics",
    ] {
        assert!(paths.contains_key(required), "{required} missing");
    }
    let mut operations = 0;
    for (template, item) in paths {
        let concrete = template
            .split('/')
            .map(|part| if part.starts_with('{') { "x1" } else { part })
            .collect::<Vec<_>>()
            .join("/");
        for method in METHODS {
            let (status, body) = harness
                .call(method, &concrete, Some(&json!({})), true)
                .await;
            let fallback = (status == 404 && body == json!({"not_found": true}))
                || (status == 405 && body == json!({"method_not_allowed": true}));
            if item.get(method).is_some() {
                operations += 1;
                assert!(
                    !fallback,
                    "{method} {template} is documented but not served: {status} {body}"
                );
                // Every operation documents its errors, authentication and the store's.
                let responses = &item[method]["responses"];
                if template.starts_with("/api/v2/") {
                    for status in ["200", "401", "403", "500", "503"] {
                        assert!(
                            responses.get(status).is_some()
                                || status == "200" && responses.get("202").is_some(),
                            "{method} {template}: no {status}"
                        );
                    }
                }
            } else {
                assert!(
                    fallback,
                    "{method} {template} is served ({status} {body}) but not documented"
                );
            }
        }
    }
    assert!(operations >= 27, "{operations} operations");
    // A path that is no route answers the JSON 404.
    let (status, body) = harness
        .call("get", "/api/v2/nothing/here", None, true)
        .await;
    assert_eq!((status, body), (404, json!({"not_found": true})));
    // The document needs credentials like the rest of /api/v2.
    assert_eq!(
        harness
            .call("get", "/api/v2/openapi.json", None, false)
            .await
            .0,
        401
    );
}

#[tokio::test]
async fn real_requests_and_answers_fit_the_document() {
    let harness = harness();
    let document = harness.document().await;
    let mut checked = 0;
    let mut expect =
        |method: &str, path: &str, status: u16, answer: (u16, Value), request: Option<&Value>| {
            assert_eq!(answer.0, status, "{method} {path}: {}", answer.1);
            if let Some(request) = request {
                let template = openapi::template_of(&document, path).expect("template");
                let operation =
                    openapi::operation(&document, &template, method).expect("operation");
                let schema = openapi::request_schema(operation).expect("request schema");
                let errors = openapi::validate(&document, schema, request);
                assert!(errors.is_empty(), "request of {method} {path}: {errors:?}");
            }
            if path != "/metrics" {
                let errors = openapi::check_answer(&document, method, path, answer.0, &answer.1);
                assert!(errors.is_empty(), "{errors:#?}");
            }
            checked += 1;
        };

    let app = json!({"docker_image": "127.0.0.1:5000/nebula/test:1", "starting_ports": [8000, {"8081": "8000"}],
                     "containers_per": {"server": 1}, "env_vars": {"A": "1"}, "rolling_restart": true});
    expect(
        "post",
        "/api/v2/apps/web",
        200,
        harness
            .call("post", "/api/v2/apps/web", Some(&app), true)
            .await,
        Some(&app),
    );
    expect(
        "post",
        "/api/v2/apps/web",
        403,
        harness
            .call("post", "/api/v2/apps/web", Some(&app), true)
            .await,
        None,
    );
    let patch = json!({"env_vars": {"B": "2"}});
    expect(
        "patch",
        "/api/v2/apps/web/update",
        202,
        harness
            .call("patch", "/api/v2/apps/web/update", Some(&patch), true)
            .await,
        Some(&patch),
    );
    let unknown = json!({"colour": "red"});
    expect(
        "put",
        "/api/v2/apps/web/update",
        400,
        harness
            .call("put", "/api/v2/apps/web/update", Some(&unknown), true)
            .await,
        None,
    );
    let bad_port = json!({"starting_ports": [70000]});
    expect(
        "put",
        "/api/v2/apps/web/update",
        400,
        harness
            .call("put", "/api/v2/apps/web/update", Some(&bad_port), true)
            .await,
        None,
    );
    let bad_shape = json!({"starting_ports": ["80"]});
    expect(
        "put",
        "/api/v2/apps/web/update",
        403,
        harness
            .call("put", "/api/v2/apps/web/update", Some(&bad_shape), true)
            .await,
        None,
    );
    expect(
        "post",
        "/api/v2/apps/web/update",
        400,
        harness
            .call("post", "/api/v2/apps/web/update", Some(&json!([1])), true)
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/apps",
        200,
        harness.call("get", "/api/v2/apps", None, true).await,
        None,
    );
    expect(
        "get",
        "/api/v2/apps/web",
        200,
        harness.call("get", "/api/v2/apps/web", None, true).await,
        None,
    );
    expect(
        "get",
        "/api/v2/apps/nope",
        403,
        harness.call("get", "/api/v2/apps/nope", None, true).await,
        None,
    );
    expect(
        "get",
        "/api/v2/apps/-bad",
        400,
        harness.call("get", "/api/v2/apps/-bad", None, true).await,
        None,
    );
    expect(
        "get",
        "/api/v2/apps",
        401,
        harness.call("get", "/api/v2/apps", None, false).await,
        None,
    );
    let job = json!({"schedule": "*/5 * * * *", "docker_image": "127.0.0.1:5000/nebula/test:1",
                     "env_vars": {"A": "1"}, "volumes": ["/tmp:/data:ro"]});
    expect(
        "post",
        "/api/v2/cron_jobs/nightly",
        200,
        harness
            .call("post", "/api/v2/cron_jobs/nightly", Some(&job), true)
            .await,
        Some(&job),
    );
    for (method, path, body, status) in [
        ("post", "/api/v2/cron_jobs/nightly", job.clone(), 403),
        (
            "post",
            "/api/v2/cron_jobs/other",
            json!({"schedule": "* *", "docker_image": "busybox"}),
            400,
        ),
        ("post", "/api/v2/cron_jobs/other", json!({}), 400),
        (
            "patch",
            "/api/v2/cron_jobs/nightly/update",
            json!({"schedule": "0 * * * *"}),
            202,
        ),
    ] {
        expect(
            method,
            path,
            status,
            harness.call(method, path, Some(&body), true).await,
            None,
        );
    }
    for path in ["/api/v2/cron_jobs", "/api/v2/cron_jobs/nightly"] {
        expect(
            "get",
            path,
            200,
            harness.call("get", path, None, true).await,
            None,
        );
    }
    let group = json!({"apps": ["web"], "cron_jobs": ["nightly"]});
    expect(
        "post",
        "/api/v2/device_groups/edge",
        200,
        harness
            .call("post", "/api/v2/device_groups/edge", Some(&group), true)
            .await,
        Some(&group),
    );
    expect(
        "post",
        "/api/v2/device_groups/edge2",
        400,
        harness
            .call(
                "post",
                "/api/v2/device_groups/edge2",
                Some(&json!({"apps": "web"})),
                true,
            )
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/device_groups/edge/info",
        200,
        harness
            .call("get", "/api/v2/device_groups/edge/info", None, true)
            .await,
        None,
    );
    expect(
        "post",
        "/api/v2/prune",
        202,
        harness.call("post", "/api/v2/prune", None, true).await,
        None,
    );
    expect(
        "post",
        "/api/v2/apps/web/stop",
        202,
        harness
            .call("post", "/api/v2/apps/web/stop", None, true)
            .await,
        None,
    );
    expect(
        "post",
        "/api/v2/apps/web/restart",
        403,
        harness
            .call("post", "/api/v2/apps/web/restart", None, true)
            .await,
        None,
    );
    expect(
        "post",
        "/api/v2/apps/web/start",
        202,
        harness
            .call("post", "/api/v2/apps/web/start", None, true)
            .await,
        None,
    );

    // The inventory: one device at the current version of web (revision 4 after the patch,
    // stop and start), one behind, one failed, one offline.
    let web = harness
        .service
        .get_app(&Name::new("web").expect("name"))
        .await
        .expect("read")
        .expect("web");
    assert_eq!(web.app_id, 4);
    let ingest_at = |report: DeviceReport, received_ms: u64| {
        let service = harness.service.clone();
        async move {
            let key = names::report_routing_key(&report.device_id);
            service
                .ingest_report(&report, &key, received_ms)
                .await
                .expect("ingest")
        }
    };
    let ingest = |report: DeviceReport| ingest_at(report, now_ms());
    assert_eq!(
        ingest(report("pi-1", "edge", "web", web.incarnation, 4, 1)).await,
        Ingested::Stored
    );
    // Online is "the agent queue exists" (its connection is up): pi-1's and pi-3's do.
    for device in ["pi-1", "pi-3"] {
        harness
            .broker
            .set_queue(&format!("nebula.device.{device}.group.edge"), true);
    }
    // pi-2's has gone (its last report is old, too): offline.
    assert_eq!(
        ingest_at(
            report("pi-2", "edge", "web", web.incarnation, 3, 1),
            now_ms() - 180_000
        )
        .await,
        Ingested::Stored
    );
    let mut failed = report("pi-3", "edge", "web", web.incarnation, 3, 1);
    failed.apps[0].desired_revision = Some(4);
    failed.apps[0].error = Some("pull failed: no such image".into());
    assert_eq!(ingest(failed).await, Ingested::Stored);
    // An older report of the same agent session arriving late changes nothing.
    assert_eq!(
        ingest(report("pi-1", "edge", "web", web.incarnation, 3, 0)).await,
        Ingested::Stale
    );
    // A report under another device's routing key is refused.
    let spoofed = report("pi-4", "edge", "web", 1, 1, 1);
    assert!(
        harness
            .service
            .ingest_report(&spoofed, "report.pi-1", now_ms())
            .await
            .is_err()
    );

    let (status, list) = harness.call("get", "/api/v2/devices", None, true).await;
    expect("get", "/api/v2/devices", 200, (status, list.clone()), None);
    let ids: Vec<&str> = list["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|device| device["device_id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, ["pi-1", "pi-2", "pi-3"]);
    assert_eq!(list["devices"][0]["online"], true);
    assert_eq!(list["devices"][0]["apps"][0]["rollout"], "current");
    assert_eq!(list["devices"][1]["online"], false);
    assert_eq!(list["devices"][1]["apps"][0]["rollout"], "behind");
    assert_eq!(list["devices"][2]["apps"][0]["rollout"], "failed");
    let (_, offline) = harness
        .call("get", "/api/v2/devices?online=false", None, true)
        .await;
    assert_eq!(offline["devices"].as_array().map(Vec::len), Some(1));
    let (_, page) = harness
        .call("get", "/api/v2/devices?limit=2", None, true)
        .await;
    assert_eq!(page["next"], "pi-2");
    let (_, rest) = harness
        .call("get", "/api/v2/devices?limit=2&after=pi-2", None, true)
        .await;
    assert_eq!(
        (
            rest["devices"][0]["device_id"].clone(),
            rest["next"].clone()
        ),
        (json!("pi-3"), Value::Null)
    );
    expect(
        "get",
        "/api/v2/devices?colour=red",
        400,
        harness
            .call("get", "/api/v2/devices?colour=red", None, true)
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/devices?limit=0",
        400,
        harness
            .call("get", "/api/v2/devices?limit=0", None, true)
            .await,
        None,
    );
    // The report history: every stored report (not the stale one), by reception time, in
    // upstream's page shape.
    let (status, reports) = harness.call("get", "/api/v2/reports", None, true).await;
    expect(
        "get",
        "/api/v2/reports",
        200,
        (status, reports.clone()),
        None,
    );
    let devices: Vec<&str> = reports["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|report| report["device_id"].as_str().expect("id"))
        .collect();
    assert_eq!(devices, ["pi-2", "pi-1", "pi-3"]);
    assert_eq!(reports["data"][0]["hostname"], "host");
    assert_eq!(
        reports["data"][2]["current_device_group_config"]["apps"][0]["error"],
        "pull failed: no such image"
    );
    let (_, first) = harness
        .call(
            "get",
            "/api/v2/reports?page_size=2&device_group=edge",
            None,
            true,
        )
        .await;
    let cursor = first["last_id"]["$oid"]
        .as_str()
        .expect("cursor")
        .to_string();
    let next = format!("/api/v2/reports?page_size=2&device_group=edge&last_id={cursor}");
    let (status, second) = harness.call("get", &next, None, true).await;
    expect("get", &next, 200, (status, second.clone()), None);
    assert_eq!(second["data"][0]["device_id"], "pi-3");
    assert_eq!(second["data"].as_array().map(Vec::len), Some(1));
    let last = second["last_id"]["$oid"].as_str().expect("cursor");
    let past_end = format!("/api/v2/reports?last_id={last}");
    let (status, end) = harness.call("get", &past_end, None, true).await;
    expect("get", &past_end, 200, (status, end.clone()), None);
    assert_eq!(end, json!({"data": null, "last_id": null}));
    let nobody =
        "/api/v2/reports?hostname=nobody&report_creation_time=123&report_creation_time_filter=eq";
    assert_eq!(
        harness.call("get", nobody, None, true).await,
        (200, json!({"data": null, "last_id": null}))
    );
    for bad in ["/api/v2/reports?page_size=0", "/api/v2/reports?colour=red"] {
        expect(
            "get",
            bad,
            400,
            harness.call("get", bad, None, true).await,
            None,
        );
    }
    assert_eq!(
        harness.call("get", "/api/v2/reports", None, false).await.0,
        401
    );

    expect(
        "get",
        "/api/v2/devices/pi-1",
        200,
        harness
            .call("get", "/api/v2/devices/pi-1", None, true)
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/devices/pi-9",
        403,
        harness
            .call("get", "/api/v2/devices/pi-9", None, true)
            .await,
        None,
    );

    let (status, rollout) = harness
        .call("get", "/api/v2/apps/web/status", None, true)
        .await;
    expect(
        "get",
        "/api/v2/apps/web/status",
        200,
        (status, rollout.clone()),
        None,
    );
    assert_eq!(
        (
            rollout["total"].clone(),
            rollout["current"].clone(),
            rollout["behind"].clone(),
            rollout["failed"].clone(),
            rollout["offline"].clone(),
            rollout["done"].clone()
        ),
        (
            json!(3),
            json!(1),
            json!(1),
            json!(1),
            json!(1),
            json!(false)
        )
    );
    assert_eq!(
        rollout["devices"][2]["errors"]["web"],
        "pull failed: no such image"
    );
    let (status, group_rollout) = harness
        .call("get", "/api/v2/device_groups/edge/status", None, true)
        .await;
    expect(
        "get",
        "/api/v2/device_groups/edge/status",
        200,
        (status, group_rollout.clone()),
        None,
    );
    // Group revision 1, incarnation unknown in these reports: nobody is at the group's
    // current version yet.
    assert_eq!(group_rollout["current"], 0);
    expect(
        "get",
        "/api/v2/apps/nope/status",
        403,
        harness
            .call("get", "/api/v2/apps/nope/status", None, true)
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/device_groups/nope/status",
        403,
        harness
            .call("get", "/api/v2/device_groups/nope/status", None, true)
            .await,
        None,
    );

    // Unauthenticated operations.
    expect(
        "get",
        "/healthz",
        200,
        harness.call("get", "/healthz", None, false).await,
        None,
    );
    expect(
        "get",
        "/readyz",
        200,
        harness.call("get", "/readyz", None, false).await,
        None,
    );
    let (status, metrics) = harness.call("get", "/metrics", None, false).await;
    let metrics = metrics.as_str().expect("text").to_string();
    expect("get", "/metrics", 200, (status, Value::Null), None);
    assert!(
        metrics.contains("nebula_devices{state=\"online\"} 2\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nebula_devices{state=\"offline\"} 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("nebula_outbox_backlog 0\n"), "{metrics}");
    assert!(
        metrics.contains("nebula_http_requests_total{route=\"/api/v2/devices/{device}\",method=\"GET\",status=\"200\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("nebula_publish_confirm_duration_seconds_count "),
        "{metrics}"
    );
    // No names on the unauthenticated endpoint: no device, app or group appears.
    for name in ["pi-1", "web", "edge"] {
        assert!(
            !metrics
                .lines()
                .filter(|line| !line.starts_with('#'))
                .any(|line| line.contains(name)),
            "{name} in /metrics"
        );
    }
    // Users, user groups and the audit trail.
    let user = json!({"password": "pw", "token": "tok-of-ann-0123456789"});
    expect(
        "post",
        "/api/v2/users/ann",
        200,
        harness
            .call("post", "/api/v2/users/ann", Some(&user), true)
            .await,
        Some(&user),
    );
    expect(
        "get",
        "/api/v2/users",
        200,
        harness.call("get", "/api/v2/users", None, true).await,
        None,
    );
    expect(
        "post",
        "/api/v2/users/ann/refresh",
        200,
        harness
            .call("post", "/api/v2/users/ann/refresh", None, true)
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/users/nobody",
        403,
        harness
            .call("get", "/api/v2/users/nobody", None, true)
            .await,
        None,
    );
    let group = json!({"group_members": ["ann"], "apps": {"web": "rw"}, "pruning_allowed": true});
    expect(
        "post",
        "/api/v2/user_groups/ops",
        200,
        harness
            .call("post", "/api/v2/user_groups/ops", Some(&group), true)
            .await,
        Some(&group),
    );
    expect(
        "get",
        "/api/v2/user_groups/ops",
        200,
        harness
            .call("get", "/api/v2/user_groups/ops", None, true)
            .await,
        None,
    );
    expect(
        "get",
        "/api/v2/user_groups",
        200,
        harness.call("get", "/api/v2/user_groups", None, true).await,
        None,
    );
    expect(
        "get",
        "/api/v2/audit?page_size=3",
        200,
        harness
            .call("get", "/api/v2/audit?page_size=3", None, true)
            .await,
        None,
    );
    assert_eq!(checked, 51);
    // The checks can fail: an answer with a key the document does not have, or a wrong
    // type, does not fit.
    let (_, mut device) = harness
        .call("get", "/api/v2/devices/pi-1", None, true)
        .await;
    device["undocumented"] = json!(1);
    assert!(
        !openapi::check_answer(&document, "get", "/api/v2/devices/pi-1", 200, &device).is_empty()
    );
    let (_, mut device) = harness
        .call("get", "/api/v2/devices/pi-1", None, true)
        .await;
    device["apps"][0]["containers"][0]["restart_count"] = json!("zero");
    assert!(
        !openapi::check_answer(&document, "get", "/api/v2/devices/pi-1", 200, &device).is_empty()
    );
}

#[tokio::test]
async fn a_report_s_cron_runs_are_listed_by_get_reports() {
    use nebula_protocol::{CronContainerReport, CronJobReport};
    let harness = harness();
    let document = harness.document().await;
    assert_eq!(
        document["components"]["schemas"]["PastCronContainer"]["required"],
        json!(["cron_job_name", "name", "image", "state"]),
    );
    let run = |name: &str, state: &str| CronContainerReport {
        name: name.into(),
        image: "127.0.0.1:5000/nebula/test:1".into(),
        state: state.into(),
        cron_job_id: Some(3),
        incarnation: Some(1),
    };
    let mut with_runs = report("pi-1", "edge", "web", 1, 1, 1);
    with_runs.cron_jobs = vec![
        CronJobReport {
            cron_job_name: Name::new("backup").expect("name"),
            containers: vec![
                run("backup-1796119200", "exited"),
                run("backup-1796119260", "running"),
            ],
        },
        // Held, no runs yet: nothing to list.
        CronJobReport {
            cron_job_name: Name::new("nightly").expect("name"),
            containers: Vec::new(),
        },
    ];
    let key = names::report_routing_key(&with_runs.device_id);
    assert_eq!(
        harness
            .service
            .ingest_report(&with_runs, &key, now_ms())
            .await
            .expect("ingest"),
        Ingested::Stored
    );

    let (status, page) = harness.call("get", "/api/v2/reports", None, true).await;
    assert_eq!(status, 200, "{page}");
    let errors = openapi::check_answer(&document, "get", "/api/v2/reports", status, &page);
    assert!(errors.is_empty(), "{errors:#?}");
    let reports = page["data"].as_array().expect("data");
    assert_eq!(reports.len(), 1, "{page}");
    assert_eq!(
        reports[0]["cron_jobs_containers"],
        json!([
            {"cron_job_name": "backup", "name": "backup-1796119200",
             "image": "127.0.0.1:5000/nebula/test:1", "state": "exited", "cron_job_id": 3},
            {"cron_job_name": "backup", "name": "backup-1796119260",
             "image": "127.0.0.1:5000/nebula/test:1", "state": "running", "cron_job_id": 3},
        ])
    );
    assert_eq!(reports[0]["apps_containers"][0]["name"], "web-1");
}
