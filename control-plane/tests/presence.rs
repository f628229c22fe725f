//! `Publisher::queue_exists`, what device presence asks the broker: one contract, run against
//! the fake broker of the in-process tests and against the real adapter on RabbitMQ.

mod support;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use nebula_control_plane::broker::Publisher;
use nebula_control_plane::broker::amqp::{AmqpBroker, QueueType};
use nebula_control_plane::broker::fake::FakeBroker;
use nebula_protocol::Message;
use std::time::Duration;
use support::{TestVhost, connect, name};

/// `held` is a queue an agent's connection holds (exclusive to it); no queue named
/// `nebula.device.gone.*` exists.
async fn contract(broker: &dyn Publisher, held: &str) {
    assert!(broker.queue_exists(held).await.expect("asked"), "{held}");
    // Twice: the channel the first "no" closed is not used again.
    for _ in 0..2 {
        assert!(
            !broker
                .queue_exists("nebula.device.gone.group.edge")
                .await
                .expect("asked")
        );
    }
    // The rest of the broker's work goes on.
    broker
        .declare_exchange("presence-contract")
        .await
        .expect("declare");
    let message = Message::AppDeleted {
        app_name: name("x"),
        app_id: 1,
        incarnation: 1,
    };
    broker
        .publish("presence-contract", &message)
        .await
        .expect("publish");
    assert!(broker.queue_exists(held).await.expect("asked again"));
}

#[tokio::test]
async fn the_fake_broker_answers_presence_like_rabbitmq() {
    let broker = FakeBroker::new();
    broker.set_queue("nebula.device.pi-1.group.edge", true);
    contract(&broker, "nebula.device.pi-1.group.edge").await;
    broker.set_queue("nebula.device.pi-1.group.edge", false);
    assert!(
        !broker
            .queue_exists("nebula.device.pi-1.group.edge")
            .await
            .expect("asked")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_answers_presence_for_another_connections_exclusive_queue() {
    let vhost = TestVhost::create();
    let broker = AmqpBroker::connect(&vhost.url, Duration::from_secs(10), QueueType::Classic)
        .await
        .expect("connect");
    // The agent's side: an exclusive queue of its own connection, which RabbitMQ locks
    // (405 RESOURCE_LOCKED) to every other connection, even to a passive declare.
    let agent = connect(&vhost.url).await;
    let channel = agent.create_channel().await.expect("channel");
    let held = "nebula.device.pi-1.group.edge";
    channel
        .queue_declare(
            held.into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    contract(&broker, held).await;
    // The previous release's durable queue: open to every connection, it outlives its
    // agent's connection, so it says nothing about presence: no answer (the control plane
    // then goes by the reports), and no connection lost over it.
    let durable = "nebula.device.pi-old.group.edge";
    channel
        .queue_declare(
            durable.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    let error = broker.queue_exists(durable).await.expect_err("no answer");
    assert!(!error.ends_connection(), "{error}");
    assert!(broker.queue_exists(held).await.expect("asked"));
    channel
        .queue_delete(
            durable.into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await
        .expect("delete");
    // The agent's connection ends: its queue goes with it.
    agent.close(200, "bye".into()).await.expect("close");
    support::wait_until("the queue to go with its connection", || {
        let broker = broker.clone();
        async move { (!broker.queue_exists(held).await.ok()?).then_some(()) }
    })
    .await;
    broker.close().await;
}
