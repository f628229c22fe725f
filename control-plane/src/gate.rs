//! Gates for the in-process fakes ([`crate::broker::fake::FakeBroker`],
//! [`crate::store::memory::MemoryStore`]): a test holds the next matching operation until it
//! opens the gate, and can wait until the operation reached it. This is how the tests force
//! the interleavings of concurrent requests that make topology and membership races
//! happen, instead of hoping the scheduler produces them.

use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

/// One held operation.
#[derive(Debug, Default)]
struct GateState {
    reached: bool,
    open: bool,
}

#[derive(Debug, Default, Clone)]
pub struct Gate {
    state: Arc<Mutex<GateState>>,
    changed: Arc<Notify>,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lets the held operation (and any later one) through.
    pub fn open(&self) {
        self.lock().open = true;
        self.changed.notify_waiters();
    }

    /// Waits until the operation arrived at the gate.
    pub async fn reached(&self) {
        loop {
            let notified = self.changed.notified();
            if self.lock().reached {
                return;
            }
            notified.await;
        }
    }

    /// Called by the fake: records the arrival and waits until the gate is open.
    pub(crate) async fn pass(&self) {
        self.lock().reached = true;
        self.changed.notify_waiters();
        loop {
            let notified = self.changed.notified();
            if self.lock().open {
                return;
            }
            notified.await;
        }
    }
}

/// Gates keyed by (operation, target), each used by the first matching operation only.
#[derive(Debug, Default)]
pub struct Gates(Mutex<Vec<(String, String, Gate)>>);

impl Gates {
    /// Holds the next `operation` on `target`.
    pub fn hold(&self, operation: &str, target: &str) -> Gate {
        let gate = Gate::default();
        self.lock()
            .push((operation.to_string(), target.to_string(), gate.clone()));
        gate
    }

    /// The gate for this operation, if one was set (it is used up).
    pub(crate) fn take(&self, operation: &str, target: &str) -> Option<Gate> {
        let mut gates = self.lock();
        let position = gates
            .iter()
            .position(|(held, on, _)| held == operation && on == target)?;
        Some(gates.remove(position).2)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, String, Gate)>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
