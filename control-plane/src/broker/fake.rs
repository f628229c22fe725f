//! An in-memory [`Publisher`] that records everything, for in-process tests: they assert
//! "exactly one `AppChanged` at revision N" and "nothing published on bad input".

use super::Publisher;
use crate::error::AmqpError;
use crate::gate::{Gate, Gates};
use async_trait::async_trait;
use nebula_protocol::{Incarnation, Message, names};
use std::collections::BTreeSet;
use std::sync::{Mutex, MutexGuard};

/// What the fake broker holds.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct FakeState {
    pub exchanges: BTreeSet<String>,
    /// `(destination, source)` exchange bindings.
    pub bindings: BTreeSet<(String, String)>,
    /// Every confirmed publish, in order: `(exchange, message)`.
    pub published: Vec<(String, Message)>,
    /// When set, every operation fails as if the connection had just failed: the instance
    /// learns it from the failure (the connection still looks up).
    pub broken: bool,
    /// When set, there is no connection (the link is reconnecting): `is_connected` is false
    /// and every operation fails with [`AmqpError::Unavailable`].
    pub disconnected: bool,
    /// The queues that exist (as agents' connections would have declared them).
    pub queues: BTreeSet<String>,
}

#[derive(Debug, Default)]
pub struct FakeBroker {
    state: Mutex<FakeState>,
    /// How long each publish waits for its "confirm" (a slow broker), if set.
    confirm_delay: Mutex<Option<std::time::Duration>>,
    gates: Gates,
}

impl FakeBroker {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        // A poisoned lock only means a test panicked while holding it; the data is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> FakeState {
        self.lock().clone()
    }

    /// Makes every later publish wait `delay` before it is confirmed.
    pub fn set_confirm_delay(&self, delay: Option<std::time::Duration>) {
        *self
            .confirm_delay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = delay;
    }

    /// Makes every later operation fail (or work again).
    pub fn set_broken(&self, broken: bool) {
        self.lock().broken = broken;
    }

    /// Takes the connection away (or gives it back), as the broker link does while it
    /// reconnects.
    pub fn set_connected(&self, connected: bool) {
        self.lock().disconnected = !connected;
    }

    /// Makes `queue` exist (an agent connected) or not (its connection ended).
    pub fn set_queue(&self, queue: &str, exists: bool) {
        let mut state = self.lock();
        if exists {
            state.queues.insert(queue.to_string());
        } else {
            state.queues.remove(queue);
        }
    }

    /// Holds the next `operation` (`exchange.bind`, `exchange.unbind`, `basic.publish`, ...)
    /// on `target` (the source exchange of a bind or unbind, the exchange otherwise) until
    /// the returned gate opens.
    pub fn hold(&self, operation: &str, target: &str) -> Gate {
        self.gates.hold(operation, target)
    }

    async fn gate(&self, operation: &str, target: &str) {
        if let Some(gate) = self.gates.take(operation, target) {
            gate.pass().await;
        }
    }

    fn check(&self, operation: &'static str) -> Result<MutexGuard<'_, FakeState>, AmqpError> {
        let state = self.lock();
        if state.disconnected {
            return Err(AmqpError::Unavailable("fake broker is disconnected".into()));
        }
        if state.broken {
            return Err(AmqpError::Operation {
                operation,
                reason: "fake broker is broken".into(),
            });
        }
        Ok(state)
    }
}

#[async_trait]
impl Publisher for FakeBroker {
    async fn declare_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.check("exchange.declare")?
            .exchanges
            .insert(exchange.to_string());
        Ok(())
    }

    async fn expose_to_mqtt(
        &self,
        exchange: &str,
        _incarnation: Incarnation,
    ) -> Result<(), AmqpError> {
        let mut state = self.check("exchange.bind")?;
        // As RabbitMQ: amq.topic always exists; a missing source is left to the publish.
        if state.exchanges.contains(exchange) {
            state
                .bindings
                .insert((names::MQTT_EXCHANGE.to_string(), exchange.to_string()));
        }
        Ok(())
    }

    async fn delete_exchange(&self, exchange: &str) -> Result<(), AmqpError> {
        self.gate("exchange.delete", exchange).await;
        let mut state = self.check("exchange.delete")?;
        state.exchanges.remove(exchange);
        // RabbitMQ drops an exchange's bindings with it.
        state
            .bindings
            .retain(|(destination, source)| destination != exchange && source != exchange);
        Ok(())
    }

    async fn bind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.gate("exchange.bind", source).await;
        let mut state = self.check("exchange.bind")?;
        if !state.exchanges.contains(destination) || !state.exchanges.contains(source) {
            // RabbitMQ answers 404 and closes that channel.
            return Err(AmqpError::NotFound {
                operation: "exchange.bind",
                target: format!("{source} -> {destination}"),
            });
        }
        state
            .bindings
            .insert((destination.to_string(), source.to_string()));
        Ok(())
    }

    async fn unbind_exchange(&self, destination: &str, source: &str) -> Result<(), AmqpError> {
        self.gate("exchange.unbind", source).await;
        self.check("exchange.unbind")?
            .bindings
            .remove(&(destination.to_string(), source.to_string()));
        Ok(())
    }

    async fn publish(&self, exchange: &str, message: &Message) -> Result<(), AmqpError> {
        let delay = *self
            .confirm_delay
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        self.gate("basic.publish", exchange).await;
        let mut state = self.check("basic.publish")?;
        if !state.exchanges.contains(exchange) {
            return Err(AmqpError::NotFound {
                operation: "basic.publish",
                target: exchange.to_string(),
            });
        }
        state
            .published
            .push((exchange.to_string(), message.clone()));
        Ok(())
    }

    async fn queue_exists(&self, queue: &str) -> Result<bool, AmqpError> {
        Ok(self.check("queue.declare")?.queues.contains(queue))
    }

    fn is_connected(&self) -> bool {
        !self.lock().disconnected
    }
}
