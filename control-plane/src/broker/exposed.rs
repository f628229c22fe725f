//! Which object exchanges a broker connection has bound into `amq.topic`, so that each is
//! bound once per incarnation instead of on every change.
//!
//! An `exchange.bind` on every change cost the write path dearly on RabbitMQ 3.10 (it is a
//! metadata transaction across the cluster): fanout at 1,000 agents went from p50 215 ms to
//! 749 ms, `rest` with 20 writers from 6,410 to 2,934 writes/s. Keyed by incarnation, the
//! memory cannot go stale when another instance deletes an object and creates it again: a
//! re-created object is a new incarnation (and gets a fresh exchange, see
//! `service::write::create`), so it is bound again. A new connection starts empty, so a
//! broker that lost its definitions gets every binding again on the next change.

use nebula_protocol::Incarnation;
use std::collections::HashMap;
use std::sync::Mutex;

/// More entries than this and the memory starts over: a fleet with more objects pays a
/// bind again now and then, never unbounded memory.
const CAPACITY: usize = 100_000;

#[derive(Debug, Default)]
pub struct Exposed {
    bound: Mutex<HashMap<String, Incarnation>>,
}

impl Exposed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Incarnation>> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.bound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `exchange` was bound for this incarnation.
    pub fn contains(&self, exchange: &str, incarnation: Incarnation) -> bool {
        self.lock().get(exchange) == Some(&incarnation)
    }

    /// Records a bind that the broker confirmed.
    pub fn insert(&self, exchange: &str, incarnation: Incarnation) {
        let mut bound = self.lock();
        if bound.len() >= CAPACITY && !bound.contains_key(exchange) {
            bound.clear();
        }
        bound.insert(exchange.to_string(), incarnation);
    }

    /// Forgets an exchange this connection deletes (its bindings go with it).
    pub fn forget(&self, exchange: &str) {
        self.lock().remove(exchange);
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exchange_is_bound_once_per_incarnation() {
        let exposed = Exposed::default();
        assert!(!exposed.contains("nebula.app.a", 1));
        exposed.insert("nebula.app.a", 1);
        assert!(exposed.contains("nebula.app.a", 1));
        // Re-created elsewhere: a new incarnation is bound again.
        assert!(!exposed.contains("nebula.app.a", 2));
        exposed.insert("nebula.app.a", 2);
        assert!(!exposed.contains("nebula.app.a", 1));
        exposed.forget("nebula.app.a");
        assert!(!exposed.contains("nebula.app.a", 2));
    }

    #[test]
    fn the_memory_is_bounded() {
        let exposed = Exposed::default();
        for index in 0..CAPACITY {
            exposed.insert(&format!("nebula.app.{index}"), 1);
        }
        assert_eq!(exposed.len(), CAPACITY);
        // One more starts over; rebinding is only slower, never wrong.
        exposed.insert("nebula.app.more", 1);
        assert_eq!(exposed.len(), 1);
        assert!(exposed.contains("nebula.app.more", 1));
        // Updating a known exchange at capacity does not clear.
        let exposed = Exposed::default();
        for index in 0..CAPACITY {
            exposed.insert(&format!("nebula.app.{index}"), 1);
        }
        exposed.insert("nebula.app.0", 2);
        assert_eq!(exposed.len(), CAPACITY);
    }
}
