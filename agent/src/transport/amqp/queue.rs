//! Declaring the agent's queue: exclusive and non-durable (DESIGN §3), so it lives exactly
//! as long as this connection and no other connection can consume it.
//!
//! RabbitMQ answers an exclusive declare of a queue it cannot give this connection with 405
//! RESOURCE_LOCKED — both when another connection holds it exclusively (a second agent with
//! this device id) and when a non-exclusive queue of that name exists (the durable queue an
//! earlier release declared; measured on RabbitMQ 3.10: 405, not 406 PRECONDITION_FAILED). A
//! passive declare tells them apart: it succeeds on the earlier release's queue and fails
//! with 405 on another connection's exclusive one. The earlier release's queue is deleted
//! (only if no consumer uses it) and the declare repeated; its messages are not needed,
//! because the sync that follows carries the current state.

use super::{operation, reply_code};
use crate::error::AmqpError;
use lapin::options::{QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

/// 405: the queue is exclusive to another connection, or not exclusive while we ask for it.
const RESOURCE_LOCKED: u16 = 405;
/// 406: a queue of that name exists with other properties (other brokers' answer to the
/// earlier release's queue).
const PRECONDITION_FAILED: u16 = 406;
/// 404: the queue does not exist (any more).
const NOT_FOUND: u16 = 404;

/// Why the queue could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Another connection holds it exclusively: another agent with this device id, or this
    /// agent's own previous connection that the broker has not dropped yet.
    HeldByAnotherConnection,
    /// The earlier release's durable queue is still consumed (an agent of that release with
    /// this device id is running), so it cannot be deleted.
    EarlierReleaseQueueInUse,
}

/// The outcome of declaring the agent queue.
#[derive(Debug)]
pub enum Declared {
    /// Declared (and owned by this connection); the channel is open.
    Ready(Channel),
    Refused(Refusal),
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        durable: false,
        auto_delete: false,
        ..QueueDeclareOptions::default()
    }
}

async fn open(connection: &Connection) -> Result<Channel, AmqpError> {
    connection
        .create_channel()
        .await
        .map_err(operation("channel.open"))
}

/// Declares `queue` exclusive and non-durable, replacing the durable queue of an earlier
/// release. Every refused attempt closed its channel; the returned channel is a fresh one.
pub async fn declare_agent_queue(
    connection: &Connection,
    queue: &str,
) -> Result<Declared, AmqpError> {
    let channel = open(connection).await?;
    match channel
        .queue_declare(queue.into(), exclusive(), FieldTable::default())
        .await
    {
        Ok(_) => return Ok(Declared::Ready(channel)),
        Err(error)
            if matches!(
                reply_code(&error),
                Some(RESOURCE_LOCKED | PRECONDITION_FAILED)
            ) => {}
        Err(error) => return Err(operation("queue.declare")(error)),
    }

    // Locked: whose is it?
    let probe = open(connection).await?;
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    match probe
        .queue_declare(queue.into(), passive, FieldTable::default())
        .await
    {
        Ok(_) => {}
        Err(error) if reply_code(&error) == Some(RESOURCE_LOCKED) => {
            return Ok(Declared::Refused(Refusal::HeldByAnotherConnection));
        }
        // Gone in the meantime (the other connection closed): declare again.
        Err(error) if reply_code(&error) == Some(NOT_FOUND) => {
            return redeclare(connection, queue).await;
        }
        Err(error) => {
            return Err(operation("queue.declare passive")(error));
        }
    }

    // Readable by anyone, so not exclusive: the durable queue of an earlier release.
    tracing::warn!(
        queue,
        "replacing the durable queue an earlier release of the agent declared with an exclusive one (upgrade); its messages are dropped, the sync that follows carries the current state"
    );
    match probe
        .queue_delete(
            queue.into(),
            QueueDeleteOptions {
                if_unused: true,
                ..QueueDeleteOptions::default()
            },
        )
        .await
    {
        Ok(_) => {}
        Err(error) if reply_code(&error) == Some(PRECONDITION_FAILED) => {
            return Ok(Declared::Refused(Refusal::EarlierReleaseQueueInUse));
        }
        Err(error) if reply_code(&error) == Some(NOT_FOUND) => {}
        Err(error) => return Err(operation("queue.delete")(error)),
    }
    let _ = probe
        .close(200, "earlier release's queue replaced".into())
        .await;
    redeclare(connection, queue).await
}

/// The declare after the way was cleared; a connection that got there first wins.
async fn redeclare(connection: &Connection, queue: &str) -> Result<Declared, AmqpError> {
    let channel = open(connection).await?;
    match channel
        .queue_declare(queue.into(), exclusive(), FieldTable::default())
        .await
    {
        Ok(_) => Ok(Declared::Ready(channel)),
        Err(error) if reply_code(&error) == Some(RESOURCE_LOCKED) => {
            Ok(Declared::Refused(Refusal::HeldByAnotherConnection))
        }
        Err(error) => Err(operation("queue.declare")(error)),
    }
}
