//! Which object exchanges a broker connection has bound into `amq.topic`, so that each is
//! bound once per incarnation (and minute) instead of on every change: one broker operation
//! less on the write path (on RabbitMQ 3.10 a bind is a Mnesia transaction, replicated to
//! every node of a cluster).
//!
//! Keyed by incarnation: a re-created object is a new incarnation (and gets a fresh
//! exchange, see `service::write::create`), so it is bound again, whichever instance made it.
//! A new connection starts empty, so a broker that lost its definitions gets every binding
//! again on the next change. What the key cannot see is the old race of a delete that drops
//! the exchange just after a re-create declared and bound it (`write::delete_exchange_unless_
//! revived` reads, then deletes): the next change declares the exchange again, unbound. So a
//! bind is remembered for [`MEMORY`] only, after which the next change binds again: the
//! memory heals within a minute what binding on every change would have healed at once.

use nebula_protocol::Incarnation;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// More entries than this and the memory starts over: a fleet with more objects pays a
/// bind again now and then, never unbounded memory.
const CAPACITY: usize = 100_000;
/// How long a bind is taken to hold (see the module docs).
const MEMORY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct Exposed {
    bound: Mutex<HashMap<String, (Incarnation, Instant)>>,
}

impl Exposed {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Incarnation, Instant)>> {
        // Plain data: a panic elsewhere while holding the lock leaves it usable.
        self.bound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `exchange` was bound for this incarnation within the last [`MEMORY`].
    pub fn contains(&self, exchange: &str, incarnation: Incarnation) -> bool {
        self.contains_at(exchange, incarnation, Instant::now())
    }

    fn contains_at(&self, exchange: &str, incarnation: Incarnation, now: Instant) -> bool {
        self.lock()
            .get(exchange)
            .is_some_and(|(bound, at)| *bound == incarnation && now.duration_since(*at) < MEMORY)
    }

    /// Records a bind that the broker confirmed.
    pub fn insert(&self, exchange: &str, incarnation: Incarnation) {
        self.insert_at(exchange, incarnation, Instant::now());
    }

    fn insert_at(&self, exchange: &str, incarnation: Incarnation, now: Instant) {
        let mut bound = self.lock();
        if bound.len() >= CAPACITY && !bound.contains_key(exchange) {
            bound.clear();
        }
        bound.insert(exchange.to_string(), (incarnation, now));
    }

    /// Forgets an exchange this connection deleted (its bindings went with it).
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
    fn a_bind_is_remembered_for_a_minute_only() {
        let exposed = Exposed::default();
        let then = Instant::now();
        exposed.insert_at("nebula.group.g", 7, then);
        assert!(exposed.contains_at("nebula.group.g", 7, then + MEMORY / 2));
        // Past it, the next change binds again (and heals a binding a racing delete took).
        assert!(!exposed.contains_at("nebula.group.g", 7, then + MEMORY));
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
