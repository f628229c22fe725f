//! The broker side of a change: exchanges, exchange-to-exchange bindings and confirmed
//! publishes (DESIGN §3).
//!
//! [`Publisher`] is what the service needs from the broker; [`amqp::AmqpBroker`] implements it
//! with lapin over one connection, [`link::BrokerLink`] over whichever connection serves now
//! (reconnecting, over a cluster's nodes), and [`fake::FakeBroker`] records every call for
//! in-process tests. Exchange and
//! queue names come only from `nebula_protocol::names`.

pub mod amqp;
pub mod consume;
pub mod exposed;
pub mod fake;
pub mod link;
pub mod users;

use crate::error::AmqpError;
use async_trait::async_trait;
use nebula_protocol::{Incarnation, Message};

#[async_trait]
pub trait Publisher: Send + Sync + std::fmt::Debug {
    /// Declares a durable fanout exchange (idempotent).
    async fn declare_exchange(&self, exchange: &str) -> Result<(), AmqpError>;

    /// Makes what is published on an object's `exchange` reach MQTT subscribers too, without
    /// a second publish: binds it into `amq.topic`, where the publish's routing key (the
    /// object's topic) picks the subscribers. Once per `incarnation` of the object and
    /// connection (see [`exposed`]); a missing exchange is left to the publish that follows.
    async fn expose_to_mqtt(
        &self,
        exchange: &str,
        incarnation: Incarnation,
    ) -> Result<(), AmqpError>;

    /// Deletes an exchange (idempotent: a missing exchange is not an error).
    async fn delete_exchange(&self, exchange: &str) -> Result<(), AmqpError>;

    /// Binds `source` to `destination` so that what is published on `source` also reaches
    /// `destination`'s queues (idempotent).
    async fn bind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError>;

    /// Removes a binding made by [`Publisher::bind_exchange`] (idempotent).
    async fn unbind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError>;

    /// Publishes `message` (transient) on `exchange` and waits for the broker's confirm. A
    /// nack, a lost connection or no confirm in time is an error; a missing exchange is
    /// [`AmqpError::NotFound`].
    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), AmqpError>;

    /// Whether a queue exists (a passive declare). Presence asks this of a device's agent
    /// queue: agent queues are exclusive, so they exist exactly while the agent's connection
    /// does, and knowing costs the device nothing on its link.
    async fn queue_exists(&self, queue: &str) -> Result<bool, AmqpError>;

    /// Whether the connection is up (for `/readyz`).
    fn is_connected(&self) -> bool;
}
