//! Checking, for a while after each boot, that the broker still has the agent's queue.
//!
//! On RabbitMQ 3.10 and 3.11, when a cluster node dies every surviving node lists the dead
//! node's exclusive queues by *name*, then deletes those names (with their bindings) ten per
//! transaction — over seconds for a few hundred queues, more for thousands, and only once
//! the node is known to be down (at once after a crash, up to `net_ticktime` after a
//! partition). An agent that reconnects fast declares its queue again under the same name on
//! another node, and the late cleanup of its old queue deletes the new one's record and
//! binding: the queue process lives on with this agent's consumer, but nothing is routed to
//! it any more (measured: 1 agent of 1,000 silently stopped receiving changes after a node
//! was SIGKILLed). A passive declare sees it (404); the boot flow then starts over — declare,
//! bind and sync again — and the sync makes up for what was missed.
//!
//! The checks thin out, from one second to a few minutes after the boot, then stop: each
//! costs a round trip (a passive declare on a channel kept for the checks of one boot), and
//! a device on a metered link pays for every one.

use super::{operation, reply_code};
use crate::error::AmqpError;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use std::time::Duration;
use tokio::time::Instant;

/// The first check comes this long after consuming starts; each later one twice as long
/// after the one before.
const FIRST_CHECK: Duration = Duration::from_secs(1);
/// Checks after one boot: the last comes 2^8 - 1 = 255 s after it — minutes past the cleanup
/// of a dead node's queues (seconds for hundreds of queues, tens of seconds for thousands,
/// after up to `net_ticktime`, 60 s, to know the node down).
const CHECKS: u32 = 8;
/// How long after consuming starts the last check comes: from then on, an idle connection
/// carries nothing but heartbeats (the footprint benchmark measures it from there).
pub const LAST_QUEUE_CHECK: Duration =
    Duration::from_secs(FIRST_CHECK.as_secs() * ((1 << CHECKS) - 1));
/// A check unanswered this long fails the boot pass (a broker that keeps the connection
/// but answers nothing must not hold up the deliveries of this target for good).
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// When the next check of the queue is due.
#[derive(Debug)]
pub struct QueueWatch {
    next: Option<Instant>,
    gap: Duration,
    left: u32,
}

impl QueueWatch {
    /// The checks of a boot whose consuming starts at `start`.
    pub fn starting_at(start: Instant) -> Self {
        Self {
            next: Some(start + FIRST_CHECK),
            gap: FIRST_CHECK,
            left: CHECKS,
        }
    }

    /// When the next check is due; `None` once the checks are over.
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// A check was made: schedules the next one, if any.
    pub fn checked(&mut self) {
        self.left = self.left.saturating_sub(1);
        self.next = match (self.next, self.left) {
            (_, 0) | (None, _) => None,
            (Some(previous), _) => {
                self.gap = self.gap.saturating_mul(2);
                Some(previous + self.gap)
            }
        };
    }

    /// Waits until the next check is due (forever once they are over).
    pub async fn due(&self) {
        match self.next_due() {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }
}

/// The channel the checks of one boot pass share; dropped (and so closed by lapin) with
/// the pass, or when the checks are over.
#[derive(Debug, Default)]
pub struct CheckChannel(Option<Channel>);

impl CheckChannel {
    /// Whether the broker still has `queue`: a passive declare on this channel, not the
    /// consuming one, which a 404 would close.
    pub async fn queue_exists(
        &mut self,
        connection: &Connection,
        queue: &str,
    ) -> Result<bool, AmqpError> {
        tokio::time::timeout(CHECK_TIMEOUT, self.check(connection, queue))
            .await
            .map_err(|_| AmqpError::Timeout {
                operation: "queue check",
                seconds: CHECK_TIMEOUT.as_secs(),
            })?
    }

    async fn check(&mut self, connection: &Connection, queue: &str) -> Result<bool, AmqpError> {
        let channel = match self.0.take().filter(|open| open.status().connected()) {
            Some(open) => open,
            None => connection
                .create_channel()
                .await
                .map_err(operation("channel.open"))?,
        };
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
        {
            Ok(_) => {
                self.0 = Some(channel);
                Ok(true)
            }
            // The 404 closed the channel.
            Err(error) if reply_code(&error) == Some(404) => Ok(false),
            Err(error) => Err(operation("queue.declare passive")(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_double_their_gap_and_stop_after_the_last() {
        let start = Instant::now();
        let mut watch = QueueWatch::starting_at(start);
        let mut offsets = Vec::new();
        while let Some(due) = watch.next_due() {
            offsets.push((due - start).as_secs());
            watch.checked();
        }
        assert_eq!(offsets, vec![1, 3, 7, 15, 31, 63, 127, 255]);
        assert_eq!(LAST_QUEUE_CHECK, Duration::from_secs(255));
        // Once over, they stay over.
        watch.checked();
        assert_eq!(watch.next_due(), None);
    }
}
