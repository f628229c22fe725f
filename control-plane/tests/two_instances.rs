//! Two instances sharing one MongoDB-wire store and one broker: they serve the same API, a
//! write on one is read on the other, and both answer sync requests (competing consumers).

mod support;

use nebula_protocol::{Name, SyncResult, SyncTarget};
use reqwest::Method;
use serde_json::json;
use std::collections::HashMap;
use support::{ControlPlane, TestVhost, call, connect, http, mongo_url, sync, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_mongodb_store() {
    let vhost = TestVhost::create();
    let database = unique("nebula_two").replace('-', "_");
    let environment = || {
        HashMap::from([
            ("NEBULA_AMQP_URL", vhost.url.clone()),
            ("NEBULA_STORE", "mongodb".to_string()),
            ("NEBULA_MONGO_URL", mongo_url()),
            ("NEBULA_MONGO_DB", database.clone()),
        ])
    };
    let first = ControlPlane::start(environment()).await;
    let second = ControlPlane::start(environment()).await;
    let client = http();

    let (status, _) = call(
        &client,
        Method::POST,
        &first.url("/apps/web"),
        Some(json!({"docker_image": "nginx"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(&client, Method::GET, &second.url("/apps/web"), None).await;
    assert_eq!((status, body["app_id"].clone()), (200, json!(1)));
    let (status, body) = call(
        &client,
        Method::POST,
        &second.url("/apps/web"),
        Some(json!({"docker_image": "nginx"})),
    )
    .await;
    assert_eq!((status, body), (403, json!({"app_exists": true})));

    // Writers on both instances at once: every revision exactly once.
    let mut tasks = Vec::new();
    for index in 0..10 {
        let url = if index % 2 == 0 {
            first.url("/apps/web/update")
        } else {
            second.url("/apps/web/update")
        };
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let (status, body) = call(
                &client,
                Method::PATCH,
                &url,
                Some(json!({"env_vars": {"N": index.to_string()}})),
            )
            .await;
            assert_eq!(status, 202, "{body}");
            body["app_id"].as_u64().expect("app_id")
        }));
    }
    let mut revisions = Vec::new();
    for task in tasks {
        revisions.push(task.await.expect("task"));
    }
    revisions.sort_unstable();
    assert_eq!(revisions, (2..=11).collect::<Vec<_>>());
    let (_, from_first) = call(&client, Method::GET, &first.url("/apps/web"), None).await;
    let (_, from_second) = call(&client, Method::GET, &second.url("/apps/web"), None).await;
    assert_eq!(from_first, from_second);
    assert_eq!(from_first["app_id"], json!(11));

    call(
        &client,
        Method::POST,
        &second.url("/device_groups/edge"),
        Some(json!({"apps": ["web"]})),
    )
    .await;
    let (status, body) = call(
        &client,
        Method::GET,
        &first.url("/device_groups/edge/info"),
        None,
    )
    .await;
    assert_eq!((status, body["apps_list"].clone()), (200, json!(["web"])));

    // Sync requests are spread over both instances; every one sees the shared state.
    let connection = connect(&vhost.url).await;
    let web = Name::new("web").expect("name");
    let edge = Name::new("edge").expect("name");
    let mut attempts = 0;
    while first.log_count("sync request answered") == 0
        || second.log_count("sync request answered") == 0
    {
        attempts += 1;
        assert!(
            attempts <= 200,
            "one instance never answered a sync request"
        );
        match sync(&connection, SyncTarget::App(web.clone())).await.result {
            SyncResult::App(config) => assert_eq!(config.app_id, 11),
            other => panic!("{other:?}"),
        }
        match sync(&connection, SyncTarget::DeviceGroup(edge.clone()))
            .await
            .result
        {
            SyncResult::Group(state) => assert_eq!(state.apps[0].app_id, 11),
            other => panic!("{other:?}"),
        }
    }
    eprintln!(
        "sync answers: first {}, second {} after {attempts} rounds",
        first.log_count("sync request answered"),
        second.log_count("sync request answered")
    );
    assert!(first.terminate().await.success());
    assert!(second.terminate().await.success());
    if let Ok(client) = mongodb::Client::with_uri_str(mongo_url()).await {
        let _ = client.database(&database).drop().await;
    }
}
