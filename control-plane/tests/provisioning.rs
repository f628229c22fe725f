//! Provisioning tokens and enrolment, against the real binary and the real broker (issue 16):
//! an admin makes a token for a scope with an expiry and a number of uses; devices exchange
//! it, without any admin login, for their own broker credential — each device once, no more
//! devices than the token's uses, never after it expired or was deleted — and a wrong token
//! counts as a failed login.

mod support;

use nebula_control_plane::metrics::sample;
use nebula_protocol::names;
use reqwest::Method;
use serde_json::{Value, json};
use support::{
    ControlPlane, DeviceUser, TestVhost, call, embedded, get_text, http, management_url, name,
    try_connect, unique,
};

/// `POST /devices/<device>/enrol` as a device does it: no admin login, the token in the body.
async fn enrol(control_plane: &ControlPlane, device: &str, body: Value) -> (u16, Value) {
    let response = http()
        .post(control_plane.url(&format!("/devices/{device}/enrol")))
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

async fn metric(control_plane: &ControlPlane, name: &str) -> u64 {
    sample(&get_text(&control_plane.address, "/metrics").await.1, name).unwrap_or(0)
}

async fn new_token(control_plane: &ControlPlane, body: Value) -> Value {
    let (status, made) = call(
        &http(),
        Method::POST,
        &control_plane.url("/provisioning_tokens"),
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{made}");
    made
}

async fn tokens(control_plane: &ControlPlane) -> Vec<Value> {
    let (status, list) = call(
        &http(),
        Method::GET,
        &control_plane.url("/provisioning_tokens"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{list}");
    list["provisioning_tokens"]
        .as_array()
        .expect("provisioning_tokens")
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_enrols_as_many_devices_as_it_has_uses_each_once_and_nothing_after() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let mut environment = embedded(&vhost, data.path());
    environment.insert("NEBULA_RABBITMQ_MANAGEMENT_URL", management_url());
    let control_plane = ControlPlane::start(environment).await;
    let client = http();
    let devices: Vec<String> = (0..3).map(|n| unique(&format!("enrol{n}"))).collect();
    let _cleanup: Vec<DeviceUser> = devices
        .iter()
        .map(|device| DeviceUser(names::device_user(&name(device))))
        .collect();

    // Making and listing tokens is for admins only.
    let anonymous = client
        .post(control_plane.url("/provisioning_tokens"))
        .json(&json!({"device_group": "edge"}))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    for bad in [
        json!({}),
        json!({"device_group": "edge", "apps": ["a"]}),
        json!({"device_group": "edge", "uses": 0}),
        json!({"device_group": "edge", "uses": -1}),
        json!({"device_group": "edge", "uses": "2"}),
        json!({"device_group": "edge", "expires_in_secs": 0}),
        json!({"device_group": "edge", "expires_in_secs": 400 * 24 * 3600}),
        json!({"device_group": "edge", "secret": "mine"}),
        json!({"device_group": "b.group.c"}),
    ] {
        let (status, body) = call(
            &client,
            Method::POST,
            &control_plane.url("/provisioning_tokens"),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(status, 400, "{bad} answered {body}");
    }
    assert!(
        tokens(&control_plane).await.is_empty(),
        "a refused body made a token"
    );

    let made = new_token(&control_plane, json!({"device_group": "edge", "uses": 2})).await;
    let token = made["token"].as_str().expect("token").to_string();
    let token_id = made["token_id"].as_str().expect("token_id").to_string();
    assert!(token.starts_with(&format!("{token_id}.")), "{made}");
    assert_eq!(made["uses"], 2);
    assert_eq!(made["uses_left"], 2);
    assert_eq!(made["device_group"], "edge");
    assert_eq!(made["expired"], false);
    let listed = tokens(&control_plane).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["token_id"], token_id.as_str());
    let secret = token.split_once('.').expect("dot").1;
    assert!(
        !listed[0].to_string().contains(secret),
        "the list shows the secret"
    );

    // A device enrols without any admin login and gets its own working credential.
    let enrolment_id = "e".repeat(64);
    let (status, enrolled) = enrol(
        &control_plane,
        &devices[0],
        json!({"provisioning_token": token, "enrolment_id": enrolment_id}),
    )
    .await;
    assert_eq!(status, 200, "{enrolled}");
    assert_eq!(enrolled["device_id"], devices[0].as_str());
    assert_eq!(enrolled["device_group"], "edge");
    let url = enrolled["amqp_url"].as_str().expect("amqp_url");
    assert!(
        url.starts_with(&format!(
            "amqp://{}:",
            names::device_user(&name(&devices[0]))
        )),
        "{url}"
    );
    let connection = try_connect(url).await.expect("the enrolled device logs in");
    connection.close(200, "done".into()).await.expect("close");

    // Enrolling again would take over the device: refused (without the device's enrolment
    // id, or with another), and it costs the token no use.
    for other in [json!(null), json!("f".repeat(64))] {
        let (status, again) = enrol(
            &control_plane,
            &devices[0],
            json!({"provisioning_token": token, "enrolment_id": other}),
        )
        .await;
        assert_eq!(status, 409, "{again}");
    }
    assert_eq!(tokens(&control_plane).await[0]["uses_left"], 1);
    // The first credential still works.
    try_connect(url)
        .await
        .expect("the device's credential survived a second enrolment")
        .close(200, "done".into())
        .await
        .expect("close");
    // The device itself repeating its enrolment (its answer lost) gets its credential again,
    // for no use: the new password works, the old one no longer.
    let (status, repeated) = enrol(
        &control_plane,
        &devices[0],
        json!({"provisioning_token": token, "enrolment_id": enrolment_id}),
    )
    .await;
    assert_eq!(status, 200, "{repeated}");
    assert_eq!(repeated["device_group"], "edge");
    let repeated_url = repeated["amqp_url"].as_str().expect("amqp_url");
    assert_ne!(repeated_url, url);
    assert_eq!(tokens(&control_plane).await[0]["uses_left"], 1);
    try_connect(repeated_url)
        .await
        .expect("the repeated credential works")
        .close(200, "done".into())
        .await
        .expect("close");
    assert!(
        try_connect(url).await.is_err(),
        "the replaced password still works"
    );

    let (status, second) = enrol(
        &control_plane,
        &devices[1],
        json!({"provisioning_token": token}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(tokens(&control_plane).await[0]["uses_left"], 0);
    let (status, used_up) = enrol(
        &control_plane,
        &devices[2],
        json!({"provisioning_token": token}),
    )
    .await;
    assert_eq!(
        (status, &used_up["error"]),
        (401, &json!("provisioning token used up"))
    );

    // Bad bodies say what is wrong and count nothing.
    for (bad, expected) in [
        (json!({}), 400),
        (json!({"provisioning_token": 7}), 400),
        (
            json!({"provisioning_token": token, "device_group": "lab"}),
            400,
        ),
    ] {
        let (status, body) = enrol(&control_plane, &devices[2], bad.clone()).await;
        assert_eq!(status, expected, "{bad} answered {body}");
    }
    let (status, _) = enrol(
        &control_plane,
        "pi.group.x",
        json!({"provisioning_token": token}),
    )
    .await;
    assert_eq!(status, 400, "an ambiguous device id");

    // An expired token enrols nobody.
    let short = new_token(
        &control_plane,
        json!({"apps": ["web"], "expires_in_secs": 1}),
    )
    .await;
    assert_eq!(short["apps"], json!(["web"]));
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, expired) = enrol(
        &control_plane,
        &devices[2],
        json!({"provisioning_token": short["token"]}),
    )
    .await;
    assert_eq!(
        (status, &expired["error"]),
        (401, &json!("provisioning token expired"))
    );

    // A deleted token neither.
    let deleted = new_token(&control_plane, json!({"device_group": "edge"})).await;
    let delete_url = control_plane.url(&format!(
        "/provisioning_tokens/{}",
        deleted["token_id"].as_str().expect("token_id")
    ));
    let (status, body) = call(&client, Method::DELETE, &delete_url, None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = call(&client, Method::DELETE, &delete_url, None).await;
    assert_eq!(status, 404, "{body}");
    let failures_before = metric(&control_plane, "nebula_login_failures_total").await;
    let (status, body) = enrol(
        &control_plane,
        &devices[2],
        json!({"provisioning_token": deleted["token"]}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("invalid provisioning token"))
    );
    assert_eq!(
        tokens(&control_plane).await.len(),
        2,
        "the deleted token is still listed"
    );

    // Wrong tokens are failed logins: counted, logged without the secret, and a source that
    // keeps guessing is locked out (429 with Retry-After), the right token included.
    let wrong = format!("{token_id}.{}", "0".repeat(64));
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(
            enrol(
                &control_plane,
                &devices[2],
                json!({"provisioning_token": wrong}),
            )
            .await
            .0,
        );
    }
    assert_eq!(statuses[..4], [401; 4], "{statuses:?}");
    assert_eq!(statuses[5], 429, "{statuses:?}");
    assert!(
        metric(&control_plane, "nebula_login_failures_total").await >= failures_before + 5,
        "wrong tokens are not counted as failed logins"
    );
    assert!(metric(&control_plane, "nebula_logins_throttled_total").await >= 1);
    let logs = control_plane.logs();
    assert!(logs.contains("failed enrolment"), "{logs}");
    for secret_text in [secret, &"0".repeat(64)] {
        assert!(
            !logs.contains(secret_text),
            "a token's secret is in the log"
        );
    }
}

/// Without `NEBULA_RABBITMQ_MANAGEMENT_URL` nobody could enrol: no token is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_device_credentials_no_token_is_made() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let (status, body) = call(
        &http(),
        Method::POST,
        &control_plane.url("/provisioning_tokens"),
        Some(json!({"device_group": "edge"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(tokens(&control_plane).await.is_empty());
}
