//! Proves the test harness reaches every real service end to end: if one of these fails,
//! every other real-service test would fail for a reason that has nothing to do with Nebula.

use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveImageOptionsBuilder, TagImageOptionsBuilder,
};
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use nebula_protocol::{AppConfig, Message, Name, decode, encode};
use nebula_tests::{services, unique_name};
use std::time::Duration;

#[tokio::test]
async fn an_envelope_round_trips_through_rabbitmq() -> anyhow::Result<()> {
    let connection =
        Connection::connect(&services::amqp_url(), ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = unique_name("harness");
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;

    let app = AppConfig::new(Name::new("harness")?, services::test_image(1));
    let message = Message::AppChanged(app);
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            &encode(&message),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    assert!(
        confirm.is_ack(),
        "broker did not confirm the publish: {confirm:?}"
    );

    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "harness".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await?
        .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
    assert_eq!(decode(&delivery.data)?, message);
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    connection.close(200, "done".into()).await?;
    Ok(())
}

#[tokio::test]
async fn a_container_runs_from_the_local_test_image() -> anyhow::Result<()> {
    let docker = services::docker()?;
    let image = services::test_image(1);
    pull(&docker, &image, Some(services::registry_credentials())).await?;
    nebula_tests::docker::remove_leftovers(&docker, "harness", None).await?;
    let name = unique_name("harness");
    let config = bollard::models::ContainerCreateBody {
        image: Some(image.clone()),
        cmd: Some(vec!["/bin/busybox".into(), "cat".into(), "/version".into()]),
        labels: Some(nebula_tests::docker::test_labels("harness", &name)),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(&name).build()),
            config,
        )
        .await?;
    docker.start_container(&name, None).await?;
    let mut wait = docker.wait_container(&name, None);
    let exit = tokio::time::timeout(Duration::from_secs(30), wait.next()).await?;
    let exit = exit.ok_or_else(|| anyhow::anyhow!("wait stream ended"))??;
    assert_eq!(exit.status_code, 0);
    let mut logs = docker.logs(
        &name,
        Some(
            bollard::query_parameters::LogsOptionsBuilder::default()
                .stdout(true)
                .build(),
        ),
    );
    let mut output = String::new();
    while let Some(chunk) = logs.next().await {
        output.push_str(&chunk?.to_string());
    }
    assert_eq!(output.trim(), "1", "the test image's /version");
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::default().force(true).build()),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_registry_requires_login_for_push_and_pull() -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let base = format!("http://{}/v2/", services::registry());
    assert_eq!(
        client.get(&base).send().await?.status(),
        401,
        "anonymous access must be refused"
    );
    let authorised = client
        .get(&base)
        .basic_auth(
            services::registry_user(),
            Some(services::registry_password()),
        )
        .send()
        .await?;
    assert_eq!(authorised.status(), 200);

    // Push a fresh tag with credentials, drop it locally, pull it back with and without them.
    let docker = services::docker()?;
    let source = services::test_image(1);
    pull(&docker, &source, Some(services::registry_credentials())).await?;
    let repository = format!("{}/nebula/{}", services::registry(), unique_name("harness"));
    docker
        .tag_image(
            &source,
            Some(
                TagImageOptionsBuilder::default()
                    .repo(&repository)
                    .tag("1")
                    .build(),
            ),
        )
        .await?;
    let mut push = docker.push_image(
        &repository,
        Some(PushImageOptionsBuilder::default().tag("1").build()),
        Some(services::registry_credentials()),
    );
    while let Some(progress) = push.next().await {
        let progress = progress?;
        if let Some(error) = progress.error_detail {
            anyhow::bail!("push failed: {error:?}");
        }
    }
    let tagged = format!("{repository}:1");
    docker
        .remove_image(
            &tagged,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await?;

    let anonymous = pull(&docker, &tagged, None).await;
    assert!(anonymous.is_err(), "pull without credentials must fail");
    pull(&docker, &tagged, Some(services::registry_credentials())).await?;
    docker
        .remove_image(
            &tagged,
            Some(RemoveImageOptionsBuilder::default().build()),
            None,
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_document_round_trips_through_the_mongodb_wire_server() -> anyhow::Result<()> {
    use mongodb::bson::{Document, doc};
    let client = mongodb::Client::with_uri_str(services::mongo_url()).await?;
    let database = client.database(&unique_name("harness").replace('-', "_"));
    let collection = database.collection::<Document>("documents");
    collection
        .insert_one(doc! { "_id": "web", "revision": 1_i64, "running": true })
        .await?;
    let stored = collection
        .find_one(doc! { "_id": "web" })
        .await?
        .ok_or_else(|| anyhow::anyhow!("document not found"))?;
    // Read through serde, as the store does: the wire server may hand a small Int64 back
    // as an Int32 (real MongoDB keeps the type), and serde accepts either for an integer.
    #[derive(serde::Deserialize)]
    struct Stored {
        revision: i64,
        running: bool,
    }
    let stored: Stored = mongodb::bson::from_document(stored)?;
    assert_eq!(stored.revision, 1);
    assert!(stored.running);
    database.drop().await?;
    Ok(())
}

/// Pulls `image` and fails on any error the stream reports.
async fn pull(
    docker: &bollard::Docker,
    image: &str,
    credentials: Option<bollard::auth::DockerCredentials>,
) -> anyhow::Result<()> {
    let mut stream = docker.create_image(
        Some(
            CreateImageOptionsBuilder::default()
                .from_image(image)
                .build(),
        ),
        None,
        credentials,
    );
    while let Some(progress) = stream.next().await {
        let progress = progress?;
        if let Some(error) = progress.error_detail {
            anyhow::bail!("pull of {image} failed: {error:?}");
        }
    }
    Ok(())
}
