//! Capped exponential backoff with full jitter (the AWS architecture blog's "full jitter"):
//! the wait is uniform in `[0, min(cap, base * 2^attempt))`, so ten thousand devices coming
//! back after a broker restart spread out instead of stampeding it.
//!
//! [`ReconnectSchedule`] applies it to the broker connection: immediate at process start,
//! jittered from the very first attempt after a loss (issue 12, defect 11: a fleet that
//! reconnects at once after a drop arrives at the broker in the same second).

use std::time::{Duration, Instant};

/// Backoff state for one retry loop.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The ceiling of the next wait, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The next wait: uniform in `[0, ceiling)`, then the ceiling doubles (up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    /// Sleeps for the next delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// When to (re)connect to the broker.
#[derive(Debug, Clone)]
pub struct ReconnectSchedule {
    backoff: Backoff,
    /// False until the first attempt, which is immediate.
    attempted: bool,
}

impl ReconnectSchedule {
    /// Waits grow from `base` (up to `cap`) while attempts fail and sessions stay short.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            backoff: Backoff::new(base.min(cap), cap),
            attempted: false,
        }
    }

    /// The wait before the next connection attempt: none for the very first one of the
    /// process, a full-jitter delay before every other — the first after a loss included.
    pub fn before_attempt(&mut self) -> Duration {
        if self.attempted {
            self.backoff.next_delay()
        } else {
            self.attempted = true;
            Duration::ZERO
        }
    }

    /// A session that began at `connected_at` ended. One that lasted at least the cap
    /// starts the waits over from the base; a short one (a broker that accepts and then
    /// drops the connection) keeps them growing, so a flapping link is not hammered.
    pub fn session_ended(&mut self, connected_at: Instant) {
        if connected_at.elapsed() >= self.backoff.cap {
            self.backoff.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_ago(duration: Duration) -> Instant {
        Instant::now()
            .checked_sub(duration)
            .expect("the monotonic clock is older than the test durations")
    }

    #[test]
    fn reconnects_are_immediate_at_start_and_jittered_after_a_loss() {
        let base = Duration::from_millis(1000);
        let cap = Duration::from_secs(30);
        let mut schedule = ReconnectSchedule::new(base, cap);
        assert_eq!(
            schedule.before_attempt(),
            Duration::ZERO,
            "start: immediate"
        );

        // The connection is lost after a long session: the first attempt after the loss
        // waits a uniform delay in [0, base] — over 200 losses, not always the same delay
        // and on average near base / 2, never "at once" for the whole fleet.
        let mut first_delays = Vec::new();
        for _ in 0..200 {
            let mut schedule = ReconnectSchedule::new(base, cap);
            schedule.before_attempt();
            schedule.session_ended(long_ago(cap));
            first_delays.push(schedule.before_attempt());
        }
        assert!(first_delays.iter().all(|delay| *delay <= base));
        let mean = first_delays.iter().sum::<Duration>() / 200;
        assert!(
            mean > base / 4 && mean < base * 3 / 4,
            "mean first delay after a loss {mean:?}"
        );
        let distinct: std::collections::BTreeSet<_> = first_delays.iter().collect();
        assert!(distinct.len() > 100, "{} distinct delays", distinct.len());
    }

    #[test]
    fn reconnect_waits_grow_to_the_cap_and_start_over_after_a_long_session() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_millis(800);
        let mut schedule = ReconnectSchedule::new(base, cap);
        schedule.before_attempt();
        for _ in 0..10 {
            assert!(schedule.before_attempt() <= cap);
        }
        assert_eq!(schedule.backoff.ceiling(), cap);
        // A short session (connected, dropped at once) does not reset the growth.
        schedule.session_ended(Instant::now());
        assert_eq!(schedule.backoff.ceiling(), cap);
        // A session that lasted does.
        schedule.session_ended(long_ago(cap));
        assert_eq!(schedule.backoff.ceiling(), base);
        // A base above the cap is clamped to it.
        let clamped = ReconnectSchedule::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(clamped.backoff.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut ceilings = Vec::new();
        for _ in 0..6 {
            ceilings.push(backoff.ceiling().as_millis());
            let delay = backoff.next_delay();
            assert!(delay <= Duration::from_secs(1));
        }
        assert_eq!(ceilings, vec![100, 200, 400, 800, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn never_overflows() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..200 {
            assert!(backoff.next_delay() <= Duration::from_secs(60));
        }
    }
}
