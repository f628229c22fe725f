//! Users, user groups and the permission matrix (API.md "Users, user groups, permissions"):
//! every route of the OpenAPI document × every role, through the real router and service
//! over the in-memory store. What each route needs is written out here, apart from the
//! declarations in `api_routes`, so a route registered with the wrong permission (or a new
//! route nobody thought about) fails.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine;
use http_body_util::BodyExt;
use nebula_control_plane::api::{AppState, openapi, router};
use nebula_control_plane::auth::{AdminCredentials, Authenticator};
use nebula_control_plane::broker::Publisher;
use nebula_control_plane::broker::fake::FakeBroker;
use nebula_control_plane::service::Service;
use nebula_control_plane::shutdown::Shutdown;
use nebula_control_plane::store::memory::MemoryStore;
use nebula_control_plane::store::{Kind, Store};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::sync::Arc;
use tower::ServiceExt;

const ADMIN: &str = "Bearer admin-token";

struct Harness {
    router: axum::Router,
    store: Arc<MemoryStore>,
}

fn harness() -> Harness {
    let store = Arc::new(MemoryStore::new());
    let service = Service::new(
        Arc::clone(&store) as Arc<dyn Store>,
        Arc::new(FakeBroker::new()) as Arc<dyn Publisher>,
        Shutdown::new(),
    );
    let authenticator = Authenticator::new(
        true,
        &AdminCredentials {
            user: Some("nebula".into()),
            password: Some("secret".into()),
            token: Some("admin-token".into()),
        },
    );
    Harness {
        router: router(AppState {
            service,
            authenticator,
            credentials: None,
        }),
        store,
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

impl Harness {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        authorization: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        let body = body.map(|body| body.to_string()).unwrap_or_default();
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (status, json)
    }

    async fn admin(&self, method: &str, path: &str, body: Value) -> Value {
        let (status, json) = self.call(method, path, Some(body), Some(ADMIN)).await;
        assert!(status.is_success(), "{method} {path} -> {status} {json}");
        json
    }
}

/// What a route needs, as this test states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cap {
    Any,
    AppRo,
    AppRw,
    GroupRo,
    GroupRw,
    CronRo,
    CronRw,
    Prune,
    Admin,
}

/// Every authenticated route and what it needs.
const ROUTES: &[(&str, &str, Cap)] = &[
    ("GET", "/api/v2/status", Cap::Any),
    ("GET", "/api/v2/openapi.json", Cap::Any),
    ("GET", "/api/v2/apps", Cap::Any),
    ("GET", "/api/v2/apps/{app}", Cap::AppRo),
    ("POST", "/api/v2/apps/{app}", Cap::AppRw),
    ("DELETE", "/api/v2/apps/{app}", Cap::AppRw),
    ("POST", "/api/v2/apps/{app}/start", Cap::AppRw),
    ("POST", "/api/v2/apps/{app}/stop", Cap::AppRw),
    ("POST", "/api/v2/apps/{app}/restart", Cap::AppRw),
    ("POST", "/api/v2/apps/{app}/update", Cap::AppRw),
    ("PUT", "/api/v2/apps/{app}/update", Cap::AppRw),
    ("PATCH", "/api/v2/apps/{app}/update", Cap::AppRw),
    ("GET", "/api/v2/apps/{app}/status", Cap::AppRo),
    ("GET", "/api/v2/device_groups", Cap::Any),
    ("GET", "/api/v2/device_groups/{group}", Cap::GroupRo),
    ("POST", "/api/v2/device_groups/{group}", Cap::GroupRw),
    ("DELETE", "/api/v2/device_groups/{group}", Cap::GroupRw),
    ("GET", "/api/v2/device_groups/{group}/info", Cap::GroupRo),
    ("POST", "/api/v2/device_groups/{group}/update", Cap::GroupRw),
    ("PUT", "/api/v2/device_groups/{group}/update", Cap::GroupRw),
    (
        "PATCH",
        "/api/v2/device_groups/{group}/update",
        Cap::GroupRw,
    ),
    ("POST", "/api/v2/device_groups/{group}/prune", Cap::Prune),
    ("GET", "/api/v2/device_groups/{group}/status", Cap::GroupRo),
    ("POST", "/api/v2/prune", Cap::Prune),
    ("GET", "/api/v2/cron_jobs", Cap::Any),
    ("GET", "/api/v2/cron_jobs/{cron_job}", Cap::CronRo),
    ("POST", "/api/v2/cron_jobs/{cron_job}", Cap::CronRw),
    ("DELETE", "/api/v2/cron_jobs/{cron_job}", Cap::CronRw),
    ("POST", "/api/v2/cron_jobs/{cron_job}/update", Cap::CronRw),
    ("PUT", "/api/v2/cron_jobs/{cron_job}/update", Cap::CronRw),
    ("PATCH", "/api/v2/cron_jobs/{cron_job}/update", Cap::CronRw),
    ("GET", "/api/v2/devices", Cap::Admin),
    ("GET", "/api/v2/devices/{device}", Cap::Admin),
    ("GET", "/api/v2/reports", Cap::Admin),
    ("POST", "/api/v2/devices/{device}/credentials", Cap::Admin),
    ("DELETE", "/api/v2/devices/{device}/credentials", Cap::Admin),
    ("POST", "/api/v2/provisioning_tokens", Cap::Admin),
    ("GET", "/api/v2/provisioning_tokens", Cap::Admin),
    (
        "DELETE",
        "/api/v2/provisioning_tokens/{token_id}",
        Cap::Admin,
    ),
    ("GET", "/api/v2/users", Cap::Admin),
    ("GET", "/api/v2/users/{user}", Cap::Admin),
    ("POST", "/api/v2/users/{user}", Cap::Admin),
    ("DELETE", "/api/v2/users/{user}", Cap::Admin),
    ("PUT", "/api/v2/users/{user}/update", Cap::Admin),
    ("PATCH", "/api/v2/users/{user}/update", Cap::Admin),
    ("POST", "/api/v2/users/{user}/refresh", Cap::Admin),
    ("GET", "/api/v2/user_groups", Cap::Admin),
    ("GET", "/api/v2/user_groups/{user_group}", Cap::Admin),
    ("POST", "/api/v2/user_groups/{user_group}", Cap::Admin),
    ("DELETE", "/api/v2/user_groups/{user_group}", Cap::Admin),
    ("PUT", "/api/v2/user_groups/{user_group}/update", Cap::Admin),
    (
        "PATCH",
        "/api/v2/user_groups/{user_group}/update",
        Cap::Admin,
    ),
    ("GET", "/api/v2/audit", Cap::Admin),
];

/// A role: who calls, and what it holds (on the objects `web`, `pos`, `nightly`).
struct Role {
    name: &'static str,
    authorization: String,
    holds: &'static [Cap],
}

const READS: &[Cap] = &[Cap::Any, Cap::AppRo, Cap::GroupRo, Cap::CronRo];
const WRITES: &[Cap] = &[
    Cap::Any,
    Cap::AppRo,
    Cap::AppRw,
    Cap::GroupRo,
    Cap::GroupRw,
    Cap::CronRo,
    Cap::CronRw,
];
const EVERYTHING: &[Cap] = &[
    Cap::Any,
    Cap::AppRo,
    Cap::AppRw,
    Cap::GroupRo,
    Cap::GroupRw,
    Cap::CronRo,
    Cap::CronRw,
    Cap::Prune,
    Cap::Admin,
];

/// The path with its parameter filled in: the objects the roles hold rights on, and
/// throwaway users and user groups (so that no role deletes itself).
fn concrete(template: &str) -> String {
    template
        .replace("{app}", "web")
        .replace("{group}", "pos")
        .replace("{cron_job}", "nightly")
        .replace("{device}", "device-1")
        .replace("{token_id}", "0123456789abcdef")
        .replace("{user_group}", "throwaway-group")
        .replace("{user}", "throwaway")
}

/// Sets up the objects, the users and their groups; answers the roles.
async fn roles(harness: &Harness) -> Vec<Role> {
    harness
        .admin(
            "POST",
            "/api/v2/apps/web",
            json!({"docker_image": "registry.local/web:1"}),
        )
        .await;
    harness
        .admin(
            "POST",
            "/api/v2/cron_jobs/nightly",
            json!({"docker_image": "registry.local/job:1", "schedule": "0 3 * * *"}),
        )
        .await;
    harness
        .admin(
            "POST",
            "/api/v2/device_groups/pos",
            json!({"apps": ["web"], "cron_jobs": ["nightly"]}),
        )
        .await;
    let mut roles = vec![
        Role {
            name: "local admin",
            authorization: ADMIN.to_string(),
            holds: EVERYTHING,
        },
        Role {
            name: "local admin by password",
            authorization: basic("nebula", "secret"),
            holds: EVERYTHING,
        },
    ];
    let grants = |access: &str| json!({"web": access});
    let users: [(&'static str, Value, &'static [Cap]); 6] = [
        ("admin-user", json!({"admin": true}), EVERYTHING),
        (
            "reader",
            json!({"apps": grants("ro"), "device_groups": {"pos": "ro"}, "cron_jobs": {"nightly": "ro"}}),
            READS,
        ),
        (
            "writer",
            json!({"apps": grants("rw"), "device_groups": {"pos": "rw"}, "cron_jobs": {"nightly": "rw"}}),
            WRITES,
        ),
        (
            "pruner",
            json!({"pruning_allowed": true}),
            &[Cap::Any, Cap::Prune],
        ),
        (
            "elsewhere",
            json!({"apps": {"other": "rw"}, "device_groups": {"other": "rw"}, "cron_jobs": {"other": "rw"}}),
            &[Cap::Any],
        ),
        ("nobody", json!({}), &[Cap::Any]),
    ];
    for (user, permissions, holds) in users {
        let token = format!("token-of-{user}-0123456789");
        harness
            .admin(
                "POST",
                &format!("/api/v2/users/{user}"),
                json!({"password": format!("password-of-{user}"), "token": token}),
            )
            .await;
        let mut group = permissions;
        group["group_members"] = json!([user]);
        harness
            .admin("POST", &format!("/api/v2/user_groups/{user}s"), group)
            .await;
        roles.push(Role {
            name: user,
            authorization: format!("Bearer {token}"),
            holds,
        });
    }
    roles
}

/// Every route of the document, as (method, path template).
fn documented_routes() -> BTreeSet<(String, String)> {
    let document = openapi();
    let mut routes = BTreeSet::new();
    for (path, item) in &document.paths.paths {
        if !path.starts_with("/api/v2/") || path.ends_with("/enrol") {
            continue;
        }
        for (method, operation) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            if operation.is_some() {
                routes.insert((method.to_string(), path.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_route_by_every_role() {
    let listed: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(method, path, _)| (method.to_string(), path.to_string()))
        .collect();
    assert_eq!(
        documented_routes(),
        listed,
        "the routes served and the routes this test knows differ"
    );
    let harness = harness();
    let roles = roles(&harness).await;
    let mut checked = 0;
    for (method, template, needs) in ROUTES {
        let path = concrete(template);
        // No credentials: refused before any handler.
        let (status, _) = harness.call(method, &path, Some(json!({})), None).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} anonymous"
        );
        for role in &roles {
            let (status, body) = harness
                .call(method, &path, Some(json!({})), Some(&role.authorization))
                .await;
            let refused =
                status == StatusCode::FORBIDDEN && body == json!({"access_allowed": false});
            let allowed = role.holds.contains(needs);
            assert_eq!(
                refused, !allowed,
                "{method} {path} as {}: {status} {body}",
                role.name
            );
            assert_ne!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {path} as {}",
                role.name
            );
            checked += 1;
        }
    }
    assert_eq!(checked, ROUTES.len() * 8);
}

#[tokio::test]
async fn users_secrets_are_hashed_tokens_refresh_and_deleted_users_lose_everything() {
    let harness = harness();
    let created = harness
        .admin(
            "POST",
            "/api/v2/users/ann",
            json!({"password": "pw-of-ann", "token": "tok-of-ann-0123456789"}),
        )
        .await;
    assert_eq!(created["user_name"], "ann");
    let password = created["password"].as_str().expect("password");
    assert!(password.starts_with("$argon2id$") && !password.contains("pw-of-ann"));
    assert_eq!(created["token"], digest("tok-of-ann-0123456789"));
    // Nothing in the store holds a secret in clear.
    for kind in [Kind::User, Kind::UserToken] {
        for record in harness.store.list(kind).await.expect("list") {
            assert!(
                !record.body.contains("pw-of-ann")
                    && !record.body.contains("tok-of-ann-0123456789"),
                "{record:?}"
            );
        }
    }
    let (status, body) = harness
        .call("POST", "/api/v2/users/ann", Some(json!({})), Some(ADMIN))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!({"user_exists": true}))
    );

    harness
        .admin(
            "POST",
            "/api/v2/user_groups/readers",
            json!({"group_members": ["ann"], "apps": {"web": "ro"}}),
        )
        .await;
    // Both secrets authenticate; a wrong one is a 401 counted in /metrics.
    for authorization in [
        "Bearer tok-of-ann-0123456789".to_string(),
        basic("ann", "pw-of-ann"),
    ] {
        let (status, body) = harness
            .call("GET", "/api/v2/apps/web", None, Some(&authorization))
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{authorization}");
        assert_eq!(
            body,
            json!({"app_exists": false}),
            "allowed, and no such app"
        );
    }
    for authorization in [
        "Bearer tok-of-bob".to_string(),
        basic("ann", "wrong"),
        basic("bob", "pw-of-ann"),
    ] {
        let (status, _) = harness
            .call("GET", "/api/v2/status", None, Some(&authorization))
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{authorization}");
    }
    let (_, metrics) = {
        let request = Request::builder()
            .uri("/metrics")
            .body(Body::empty())
            .expect("request");
        let response = harness.router.clone().oneshot(request).await.expect("ok");
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        ((), String::from_utf8_lossy(&bytes).to_string())
    };
    assert!(
        metrics.contains("nebula_login_failures_total 3"),
        "{metrics}"
    );

    // A refreshed token replaces the old one at once; its answer is not to be cached (the
    // header passes the audit layer).
    let response = harness
        .router
        .clone()
        .oneshot(
            Request::builder()
                .method("POST")
                .uri("/api/v2/users/ann/refresh")
                .header(header::AUTHORIZATION, ADMIN)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get(header::CACHE_CONTROL)
            .map(|value| value.as_bytes()),
        Some(&b"no-store"[..])
    );
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let refreshed: Value = serde_json::from_slice(&bytes).expect("json");
    let new_token = refreshed["token"].as_str().expect("token").to_string();
    assert_eq!(new_token.len(), 64);
    let (status, _) = harness
        .call(
            "GET",
            "/api/v2/status",
            None,
            Some("Bearer tok-of-ann-0123456789"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = harness
        .call(
            "GET",
            "/api/v2/status",
            None,
            Some(&format!("Bearer {new_token}")),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    // A token chosen by a client needs 16 visible characters.
    for token in ["short", "has a space in it 0123", ""] {
        let (status, body) = harness
            .call(
                "POST",
                "/api/v2/users/carl",
                Some(json!({"token": token})),
                Some(ADMIN),
            )
            .await;
        assert_eq!(
            (status, body),
            (
                StatusCode::BAD_REQUEST,
                json!({"invalid_parameters": ["token"]})
            ),
            "{token:?}"
        );
    }
    // "Does not exist" comes before the body's faults, for users and user groups.
    let (status, body) = harness
        .call(
            "PUT",
            "/api/v2/users/carl/update",
            Some(json!({"colour": 1})),
            Some(ADMIN),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!({"user_exists": false}))
    );
    // A token is one user's: another user cannot take it.
    let (status, body) = harness
        .call(
            "POST",
            "/api/v2/users/bob",
            Some(json!({"token": new_token})),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = harness
        .call("GET", "/api/v2/users/bob", None, Some(ADMIN))
        .await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "the refused create left no user"
    );
    // Nor by a change: refused whole, the password given with it not set either.
    harness
        .admin(
            "POST",
            "/api/v2/users/bob",
            json!({"password": "pw-of-bob"}),
        )
        .await;
    let (status, body) = harness
        .call(
            "PUT",
            "/api/v2/users/bob/update",
            Some(json!({"password": "other-pw", "token": new_token})),
            Some(ADMIN),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    for (password, expected) in [
        ("pw-of-bob", StatusCode::OK),
        ("other-pw", StatusCode::UNAUTHORIZED),
    ] {
        let (status, _) = harness
            .call("GET", "/api/v2/status", None, Some(&basic("bob", password)))
            .await;
        assert_eq!(status, expected, "{password}");
    }
    let (status, _) = harness
        .call(
            "GET",
            "/api/v2/status",
            None,
            Some(&format!("Bearer {new_token}")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "the token stays ann's");

    // Update: the password changes, the token stays.
    let updated = harness
        .admin(
            "PUT",
            "/api/v2/users/ann/update",
            json!({"password": "new-pw"}),
        )
        .await;
    assert_eq!(updated["token"], digest(&new_token));
    let (status, _) = harness
        .call("GET", "/api/v2/status", None, Some(&basic("ann", "new-pw")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = harness
        .call(
            "PATCH",
            "/api/v2/users/ann/update",
            Some(json!({"colour": "red"})),
            Some(ADMIN),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"unknown_parameters": ["colour"]})
        )
    );

    // Deleted: its token stops working, and it leaves every group, so a new user of that
    // name starts with nothing.
    harness
        .admin("DELETE", "/api/v2/users/ann", json!({}))
        .await;
    let (status, _) = harness
        .call(
            "GET",
            "/api/v2/status",
            None,
            Some(&format!("Bearer {new_token}")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let group = harness
        .admin("GET", "/api/v2/user_groups/readers", json!({}))
        .await;
    assert_eq!(group["group_members"], json!([]));
    harness
        .admin(
            "POST",
            "/api/v2/users/ann",
            json!({"token": "tok-2-0123456789abcdef"}),
        )
        .await;
    let (status, body) = harness
        .call(
            "GET",
            "/api/v2/apps/web",
            None,
            Some("Bearer tok-2-0123456789abcdef"),
        )
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!({"access_allowed": false}))
    );
    let (status, body) = harness
        .call("GET", "/api/v2/users/nobody-here", None, Some(ADMIN))
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!({"user_exists": false}))
    );
}

fn digest(token: &str) -> String {
    nebula_control_plane::users::token_digest(token)
}

#[tokio::test]
async fn user_groups_answer_as_v2_and_check_their_fields() {
    let harness = harness();
    let created = harness
        .admin("POST", "/api/v2/user_groups/ops", json!({}))
        .await;
    assert_eq!(
        created,
        json!({"user_group": "ops", "group_members": [], "pruning_allowed": false, "apps": {}, "device_groups": {}, "cron_jobs": {}, "admin": false})
    );
    for (body, expected) in [
        (
            json!({"apps": {"web": "rx"}}),
            json!({"invalid_parameters": ["apps"]}),
        ),
        (
            json!({"admin": "yes"}),
            json!({"invalid_parameters": ["admin"]}),
        ),
        (
            json!({"group_members": "ann"}),
            json!({"invalid_parameters": ["group_members"]}),
        ),
        (
            json!({"owner": "ann"}),
            json!({"unknown_parameters": ["owner"]}),
        ),
        (json!({}), json!({"missing_parameters": true})),
    ] {
        let (status, answer) = harness
            .call(
                "PATCH",
                "/api/v2/user_groups/ops/update",
                Some(body.clone()),
                Some(ADMIN),
            )
            .await;
        assert_eq!(
            (status, answer),
            (StatusCode::BAD_REQUEST, expected),
            "{body}"
        );
    }
    let updated = harness
        .admin(
            "PUT",
            "/api/v2/user_groups/ops/update",
            json!({"device_groups": {"pos": "rw"}, "pruning_allowed": true}),
        )
        .await;
    assert_eq!(updated["device_groups"], json!({"pos": "rw"}));
    assert_eq!(updated["pruning_allowed"], json!(true));
    for (method, path, expected) in [
        (
            "POST",
            "/api/v2/user_groups/ops",
            json!({"user_group_exists": true}),
        ),
        (
            "GET",
            "/api/v2/user_groups/nope",
            json!({"user_group_exists": false}),
        ),
        (
            "PUT",
            "/api/v2/user_groups/nope/update",
            json!({"user_group_exists": false}),
        ),
        (
            "DELETE",
            "/api/v2/user_groups/nope",
            json!({"user_group_exists": false}),
        ),
    ] {
        let (status, body) = harness
            .call(method, path, Some(json!({"admin": true})), Some(ADMIN))
            .await;
        assert_eq!(
            (status, body),
            (StatusCode::FORBIDDEN, expected),
            "{method} {path}"
        );
    }
    let listed = harness.admin("GET", "/api/v2/user_groups", json!({})).await;
    assert_eq!(listed, json!({"user_groups": ["ops"]}));
    harness
        .admin("DELETE", "/api/v2/user_groups/ops", json!({}))
        .await;
    let listed = harness.admin("GET", "/api/v2/user_groups", json!({})).await;
    assert_eq!(listed, json!({"user_groups": []}));
}

#[tokio::test]
async fn every_write_that_succeeded_is_in_the_audit_newest_first() {
    let harness = harness();
    harness
        .admin(
            "POST",
            "/api/v2/apps/web",
            json!({"docker_image": "registry.local/web:1"}),
        )
        .await;
    harness
        .admin(
            "POST",
            "/api/v2/users/ann",
            json!({"token": "tok-of-ann-0123456789"}),
        )
        .await;
    harness
        .admin(
            "POST",
            "/api/v2/user_groups/web-writers",
            json!({"group_members": ["ann"], "apps": {"web": "rw"}}),
        )
        .await;
    let ann = Some("Bearer tok-of-ann-0123456789");
    let (status, _) = harness
        .call("POST", "/api/v2/apps/web/stop", None, ann)
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Not recorded: reads, refusals, failures.
    harness.call("GET", "/api/v2/apps/web", None, ann).await;
    let (status, _) = harness
        .call("POST", "/api/v2/apps/other/stop", None, ann)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = harness
        .call(
            "POST",
            "/api/v2/apps/web",
            Some(json!({"docker_image": "x"})),
            ann,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "exists");
    harness.admin("DELETE", "/api/v2/apps/web", json!({})).await;

    let page = harness.admin("GET", "/api/v2/audit", json!({})).await;
    let entries = page["entries"].as_array().expect("entries");
    let summary: Vec<(String, String, String, Value, Value, Value)> = entries
        .iter()
        .map(|entry| {
            (
                entry["who"].as_str().unwrap_or_default().to_string(),
                entry["method"].as_str().unwrap_or_default().to_string(),
                entry["route"].as_str().unwrap_or_default().to_string(),
                entry["name"].clone(),
                entry["old_revision"].clone(),
                entry["new_revision"].clone(),
            )
        })
        .collect();
    let row = |who: &str, method: &str, route: &str, name: &str, old: Value, new: Value| {
        (
            who.to_string(),
            method.to_string(),
            route.to_string(),
            json!(name),
            old,
            new,
        )
    };
    assert_eq!(
        summary,
        vec![
            row(
                "admin",
                "DELETE",
                "/api/v2/apps/{app}",
                "web",
                json!(2),
                Value::Null
            ),
            row(
                "user:ann",
                "POST",
                "/api/v2/apps/{app}/stop",
                "web",
                json!(1),
                json!(2)
            ),
            row(
                "admin",
                "POST",
                "/api/v2/user_groups/{user_group}",
                "web-writers",
                Value::Null,
                Value::Null
            ),
            row(
                "admin",
                "POST",
                "/api/v2/users/{user}",
                "ann",
                Value::Null,
                Value::Null
            ),
            row(
                "admin",
                "POST",
                "/api/v2/apps/{app}",
                "web",
                Value::Null,
                json!(1)
            ),
        ]
    );
    // Past the end: an empty page, and no cursor.
    let next = page["next"]
        .as_str()
        .expect("a cursor after a page")
        .to_string();
    let end = harness
        .admin("GET", &format!("/api/v2/audit?before={next}"), json!({}))
        .await;
    assert_eq!(end, json!({"entries": [], "next": null}));
    assert_eq!(entries[1]["kind"], "app");
    assert_eq!(entries[1]["status"], 202);
    // Paged: two, then the rest from the cursor.
    let first = harness
        .admin("GET", "/api/v2/audit?page_size=2", json!({}))
        .await;
    assert_eq!(first["entries"].as_array().map(Vec::len), Some(2));
    let next = first["next"].as_str().expect("a cursor").to_string();
    let rest = harness
        .admin(
            "GET",
            &format!("/api/v2/audit?page_size=2&before={next}"),
            json!({}),
        )
        .await;
    assert_eq!(rest["entries"][0], entries[2]);
    for bad in ["page_size=0", "page_size=1001", "before=nope", "colour=red"] {
        let (status, _) = harness
            .call("GET", &format!("/api/v2/audit?{bad}"), None, Some(ADMIN))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    // Users may not read it.
    let (status, body) = harness.call("GET", "/api/v2/audit", None, ann).await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!({"access_allowed": false}))
    );
}

/// Concurrent wrong logins from one address are checked one at a time, so the lockout holds:
/// the free failures and the one that locks are answered 401, every other 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_guesses_from_one_address_cannot_outrun_the_lockout() {
    use axum::extract::ConnectInfo;
    let harness = harness();
    harness
        .admin(
            "POST",
            "/api/v2/users/ann",
            json!({"password": "right-password"}),
        )
        .await;
    let source: std::net::SocketAddr = "192.0.2.44:40000".parse().expect("address");
    let guesses = (0..30).map(|guess| {
        let router = harness.router.clone();
        async move {
            let request = Request::builder()
                .uri("/api/v2/status")
                .header(
                    header::AUTHORIZATION,
                    basic("ann", &format!("guess-{guess}")),
                )
                .extension(ConnectInfo(source))
                .body(Body::empty())
                .expect("request");
            router.oneshot(request).await.expect("infallible").status()
        }
    });
    let statuses = futures_util::future::join_all(guesses.map(tokio::spawn)).await;
    let mut unauthorized = 0;
    let mut locked = 0;
    for status in statuses {
        match status.expect("task") {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => locked += 1,
            other => panic!("unexpected {other}"),
        }
    }
    let free = nebula_control_plane::login_throttle::FREE_FAILURES as usize;
    assert_eq!((unauthorized, locked), (free + 1, 30 - free - 1));
}
