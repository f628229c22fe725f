//! The real binary and the real broker when something is wrong: a corrupt record, the sync
//! consumer cancelled, an agent from another store asking, a 404 on one channel, and clients
//! that are slow or too many. Each test has its own RabbitMQ vhost and data directory.

mod support;

use lapin::options::QueueDeleteOptions;
use nebula_control_plane::broker::Publisher;
use nebula_control_plane::broker::amqp::{AmqpBroker, QueueType};
use nebula_control_plane::metrics::sample;
use nebula_control_plane::store::embedded::EmbeddedStore;
use nebula_control_plane::store::{Kind, Record, Store};
use nebula_protocol::{Message, StoreId, SyncResult, SyncTarget, names};
use reqwest::Method;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{
    ControlPlane, DEADLINE, TestVhost, call, connect, embedded, get_text, http, name, sync,
    sync_within,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

async fn metric(address: &str, sample_name: &str) -> Option<u64> {
    sample(&get_text(address, "/metrics").await.1, sample_name)
}

/// Defect 5 on the real system: a corrupt record in the store the instance starts on. The
/// instance starts (the outbox skips it), answers 500 for that object only, rejects sync
/// requests for it without a reply, counts all of it, and keeps running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_record_never_takes_the_instance_down() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(data.path()).expect("store");
        store
            .insert(
                Kind::App,
                &Record {
                    name: "bad".into(),
                    version: 0,
                    pending_publish: true,
                    tombstone: false,
                    body: "{\"app_name\": \"bad\", \"docker_image\": 7".into(),
                },
            )
            .await
            .expect("insert");
    }
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let client = http();
    let (status, body) = call(&client, Method::GET, &control_plane.url("/apps/bad"), None).await;
    assert_eq!((status, &body["corrupt"]), (500, &json!(true)), "{body}");
    let (status, _) = call(
        &client,
        Method::POST,
        &control_plane.url("/apps/good"),
        Some(json!({"docker_image": "nginx"})),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = call(&client, Method::GET, &control_plane.url("/apps"), None).await;
    assert_eq!((status, body), (200, json!({"apps": ["bad", "good"]})));

    let connection = connect(&vhost.url).await;
    let unanswered = sync_within(
        &connection,
        SyncTarget::App(name("bad")),
        None,
        Duration::from_secs(3),
    )
    .await;
    assert!(unanswered.is_none(), "{unanswered:?}");
    assert!(matches!(
        sync(&connection, SyncTarget::App(name("good")))
            .await
            .result,
        SyncResult::App(_)
    ));
    let address = control_plane.address.clone();
    assert_eq!(
        metric(&address, "nebula_sync_requests_corrupt_total").await,
        Some(1)
    );
    assert_eq!(
        metric(&address, "nebula_outbox_skipped_corrupt_total").await,
        Some(1),
        "the start's outbox pass skipped it"
    );
    assert!(metric(&address, "nebula_corrupt_records_total").await >= Some(3));
    let status = control_plane.terminate().await;
    assert!(status.success(), "it was still running: {status:?}");
}

/// Defect 6: the sync consumer ending (here: the queue deleted under it) does not leave the
/// instance ready and deaf: the connection is replaced, the queue declared again, and syncs
/// are answered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_sync_consumer_replaces_the_connection() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let mut control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let connection = connect(&vhost.url).await;
    let channel = connection.create_channel().await.expect("channel");
    channel
        .queue_delete(names::SYNC_QUEUE.into(), QueueDeleteOptions::default())
        .await
        .expect("queue.delete");
    let address = control_plane.address.clone();
    support::wait_until("a new broker connection", || {
        let address = address.clone();
        async move {
            (metric(&address, "nebula_broker_connections_total").await >= Some(2)).then_some(())
        }
    })
    .await;
    let reply = sync_within(
        &connection,
        SyncTarget::DeviceGroup(name("edge")),
        None,
        DEADLINE,
    )
    .await
    .expect("answered again");
    assert!(matches!(reply.result, SyncResult::NotFound), "{reply:?}");
    assert!(control_plane.is_running(), "{}", control_plane.logs());
    assert!(
        control_plane
            .logs()
            .contains("the consumer of nebula.sync ended"),
        "{}",
        control_plane.logs()
    );
    control_plane.terminate().await;
}

/// Defect 3: sync replies carry the store's identity; an agent that synced with another
/// store shows up in `/readyz` and the metrics of the instance it asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_replies_carry_the_store_identity_and_foreign_stores_are_reported() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let (status, readyz) = get_text(&control_plane.address, "/readyz").await;
    let readyz: serde_json::Value = serde_json::from_str(&readyz).expect("json");
    assert_eq!(status, 200);
    assert_eq!(readyz["store_empty"], json!(true));
    assert_eq!(readyz["foreign_stores"], json!([]));
    let ours = StoreId::parse_hex(readyz["store_id"].as_str().expect("store_id")).expect("hex");

    let connection = connect(&vhost.url).await;
    let reply = sync_within(
        &connection,
        SyncTarget::DeviceGroup(name("edge")),
        Some(ours),
        DEADLINE,
    )
    .await
    .expect("reply");
    assert_eq!((reply.store_id, reply.result), (ours, SyncResult::NotFound));
    assert_eq!(
        metric(&control_plane.address, "nebula_sync_foreign_store_total").await,
        Some(0)
    );

    let other = StoreId(0x00ab_cdef);
    let reply = sync_within(
        &connection,
        SyncTarget::DeviceGroup(name("edge")),
        Some(other),
        DEADLINE,
    )
    .await
    .expect("reply");
    assert_eq!(reply.store_id, ours);
    let (_, readyz) = get_text(&control_plane.address, "/readyz").await;
    let readyz: serde_json::Value = serde_json::from_str(&readyz).expect("json");
    assert_eq!(readyz["foreign_stores"], json!([other.to_string()]));
    assert_eq!(
        metric(&control_plane.address, "nebula_sync_foreign_store_total").await,
        Some(1)
    );
    assert!(control_plane.logs().contains("another store"));
    control_plane.terminate().await;

    // The identity is the store's, not the process's.
    let again = ControlPlane::start(embedded(&vhost, data.path())).await;
    let (_, readyz) = get_text(&again.address, "/readyz").await;
    let readyz: serde_json::Value = serde_json::from_str(&readyz).expect("json");
    assert_eq!(readyz["store_id"], json!(ours.to_string()));
    again.terminate().await;
}

/// Defect 8 at the adapter: a publish to an exchange that does not exist fails alone, with
/// NotFound; twenty publishes in flight on the same connection at the time are confirmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_closes_only_its_own_channel() {
    let vhost = TestVhost::create();
    let broker = AmqpBroker::connect(&vhost.url, Duration::from_secs(10), QueueType::Classic)
        .await
        .expect("connect");
    broker.declare_exchange("e").await.expect("declare");
    // What ends the connection when it fails must not fire on a channel's 404.
    let watching = CancellationToken::new();
    let watch = {
        let (broker, watching) = (broker.clone(), watching.clone());
        tokio::spawn(async move { broker.watch(watching).await })
    };
    let message = Message::AppDeleted {
        app_name: name("x"),
        app_id: 1,
        incarnation: 1,
    };
    let mut publishes = Vec::new();
    for _ in 0..20 {
        let broker = broker.clone();
        let message = message.clone();
        publishes.push(tokio::spawn(
            async move { broker.publish("e", &message).await },
        ));
    }
    let missing = broker.publish("missing", &message).await;
    assert!(
        missing.as_ref().is_err_and(|error| error.is_not_found()),
        "{missing:?}"
    );
    for publish in publishes {
        publish.await.expect("join").expect("confirmed");
    }
    assert!(broker.is_connected());
    let bind = broker.bind_exchange("e", "missing").await;
    assert!(bind.is_err_and(|error| error.is_not_found()));
    broker
        .delete_exchange("missing")
        .await
        .expect("deleting a missing exchange is what was asked");
    broker.publish("e", &message).await.expect("still works");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !watch.is_finished(),
        "a channel's 404 was taken for a lost connection: {:?}",
        watch.await
    );
    watching.cancel();
    watch.await.expect("join").expect("stopped cleanly");
    broker.close().await;
}

/// Defect 7: headers must arrive in time, a request must be answered in time (JSON 503),
/// and only so many connections are served at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_many_clients_are_bounded() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let mut environment = embedded(&vhost, data.path());
    environment.insert("NEBULA_HTTP_HEADER_TIMEOUT_SECS", "1".into());
    environment.insert("NEBULA_PUBLISH_TIMEOUT_SECS", "1".into());
    environment.insert("NEBULA_REQUEST_TIMEOUT_SECS", "2".into());
    let control_plane = ControlPlane::start(environment).await;

    // Headers never finished: the connection is closed after the header timeout.
    let mut stalled = tokio::net::TcpStream::connect(&control_plane.address)
        .await
        .expect("connect");
    stalled
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let started = Instant::now();
    let mut buffer = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), stalled.read_to_end(&mut buffer)).await;
    assert!(read.is_ok(), "still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed after {:?}, before the timeout",
        started.elapsed()
    );

    // A body that never finishes: a JSON 503 after the request timeout.
    let mut slow = tokio::net::TcpStream::connect(&control_plane.address)
        .await
        .expect("connect");
    let authorization = base64_basic(support::USER, support::PASSWORD);
    slow.write_all(
        format!(
            "POST /api/v2/apps/slow HTTP/1.1\r\nHost: x\r\nAuthorization: {authorization}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"docker_"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let started = Instant::now();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), slow.read(&mut answer))
        .await
        .expect("answered within 10 s")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("\"timed_out\":true"), "{answer}");
    assert!(started.elapsed() >= Duration::from_millis(1800));
    let client = http();
    let (status, _) = call(&client, Method::GET, &control_plane.url("/apps/slow"), None).await;
    assert_eq!(status, 403, "nothing was created");
    control_plane.terminate().await;

    // At most two connections at once: a third waits until one closes.
    let mut environment = embedded(&vhost, data.path());
    environment.insert("NEBULA_MAX_CONNECTIONS", "2".into());
    let control_plane = ControlPlane::start(environment).await;
    let first = tokio::net::TcpStream::connect(&control_plane.address)
        .await
        .expect("connect");
    let _second = tokio::net::TcpStream::connect(&control_plane.address)
        .await
        .expect("connect");
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("client");
    let url = format!("http://{}/healthz", control_plane.address);
    assert!(
        quick.get(&url).send().await.is_err(),
        "a third connection was served"
    );
    drop(first);
    let served = quick
        .get(&url)
        .send()
        .await
        .expect("served once one closed");
    assert_eq!(served.status(), 200);
    control_plane.terminate().await;
}

fn base64_basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Issue 14: wrong credentials are counted in `/metrics` and logged with the source address,
/// never the password; past five in a row the address is refused with 429 and `Retry-After`
/// — right credentials too — until the lock ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_counted_logged_and_slowed_down() {
    let vhost = TestVhost::create();
    let data = tempfile::tempdir().expect("tempdir");
    let control_plane = ControlPlane::start(embedded(&vhost, data.path())).await;
    let client = reqwest::Client::new();
    let url = control_plane.url("/apps");
    let attempt = |password: String| {
        client
            .get(&url)
            .basic_auth(support::USER, Some(password))
            .send()
    };
    let status = |response: reqwest::Result<reqwest::Response>| {
        response.expect("answered").status().as_u16()
    };

    // No credentials at all is not a guess: neither counted nor locked.
    for _ in 0..8 {
        assert_eq!(status(client.get(&url).send().await), 401);
    }
    let mut failures = 0;
    for n in 1..=5 {
        assert_eq!(status(attempt(format!("wrong-guess-{n}")).await), 401);
        failures += 1;
    }
    // Each failure past the free five locks the address, 1 s, then 2, 4, ...: the right
    // password is refused while it holds. A loaded machine can let the first second pass
    // before the next request, so guess on (each guess doubles the lock) until it is seen.
    let mut throttled = 0;
    let retry_after = loop {
        assert!(failures < 10, "never locked out after {failures} failures");
        match status(attempt(format!("wrong-guess-{}", failures + 1)).await) {
            401 => failures += 1,
            429 => throttled += 1,
            other => panic!("a wrong guess answered {other}"),
        }
        let right = attempt(support::PASSWORD.to_string())
            .await
            .expect("answered");
        match right.status().as_u16() {
            200 => continue,
            429 => {}
            other => panic!("the right password answered {other}"),
        }
        throttled += 1;
        let header: u64 = right
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .expect("a Retry-After of whole seconds");
        let body: serde_json::Value = right.json().await.expect("JSON");
        assert_eq!(
            body,
            json!({"too_many_failed_logins": true, "retry_after_secs": header})
        );
        assert!((1..=60).contains(&header), "{header}");
        break header;
    };
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    assert_eq!(status(attempt(support::PASSWORD.to_string()).await), 200);

    let address = &control_plane.address;
    assert_eq!(
        metric(address, "nebula_login_failures_total").await,
        Some(failures)
    );
    assert_eq!(
        metric(address, "nebula_logins_throttled_total").await,
        Some(throttled)
    );
    let logs = control_plane.logs.lock().expect("logs").clone();
    let failed: Vec<serde_json::Value> = logs
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "failed login")
        .collect();
    assert_eq!(failed.len() as u64, failures, "{failed:#?}");
    for (n, line) in failed.iter().enumerate() {
        let fields = &line["fields"];
        assert_eq!(fields["source"], "127.0.0.1", "{line}");
        assert_eq!(fields["user"], support::USER, "{line}");
        assert_eq!(fields["scheme"], "basic", "{line}");
        assert_eq!(fields["failures_in_a_row"], n + 1, "{line}");
    }
    // Neither the password nor the header that carries it (base64) reached the log.
    let header = base64_basic(support::USER, "wrong-guess-1");
    let encoded = header.trim_start_matches("Basic ");
    assert!(
        !logs
            .iter()
            .any(|line| line.contains("wrong-guess") || line.contains(encoded)),
        "a password reached the log"
    );
    control_plane.terminate().await;
}
