//! Capped exponential backoff with full jitter (the AWS architecture blog's "full jitter"):
//! the wait is uniform in `[0, min(cap, base * 2^attempt))`, so ten thousand devices coming
//! back after a broker restart spread out instead of stampeding it.
//!
//! [`ReconnectSchedule`] is the broker connection's own schedule: immediate at process
//! start, and after a loss every attempt — the first one included (issue 12, defect 11: a
//! fleet that reconnects at once arrives at the broker in the same second) — waits a
//! uniform delay up to half the time the link has been down so far (at least the base, at
//! most the cap). Counting refused attempts instead would double the wait on every fast
//! "refused" of a broker that is restarting: after a twenty-second restart, part of the
//! fleet would wait out the whole cap. Proportional to the outage T, a fleet of N devices
//! comes back at about 2N / T connections per second, within about T / 2 of the broker's
//! return (measured: 10,000 simulated agents after an 18 s RabbitMQ restart; see the
//! README's performance section).

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

/// When to (re)connect to the broker (see the module docs).
#[derive(Debug, Clone)]
pub struct ReconnectSchedule {
    base: Duration,
    cap: Duration,
    /// False until the first attempt, which is immediate.
    attempted: bool,
    /// When the link went down; `None` while it is up (or before the first attempt).
    down_since: Option<Instant>,
}

impl ReconnectSchedule {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base: base.min(cap),
            cap,
            attempted: false,
            down_since: None,
        }
    }

    /// The ceiling of the next wait: half the outage so far, clamped to `[base, cap]`.
    fn ceiling(&self) -> Duration {
        let down = self
            .down_since
            .map_or(Duration::ZERO, |since| since.elapsed());
        (down / 2).clamp(self.base, self.cap)
    }

    /// The wait before the next connection attempt: none for the very first one of the
    /// process, a full-jitter delay before every other.
    pub fn before_attempt(&mut self) -> Duration {
        if !self.attempted {
            // Not an outage: nothing was lost yet. (Counting from the start would make the
            // first loss of a session shorter than the cap wait up to half the session.)
            self.attempted = true;
            return Duration::ZERO;
        }
        self.down_since.get_or_insert_with(Instant::now);
        let millis = u64::try_from(self.ceiling().as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }

    /// A session that began at `connected_at` ended. One that lasted at least the cap
    /// starts a new outage now; a short one (a broker that accepts and then drops the
    /// connection) continues the old one, so a flapping link is not hammered.
    pub fn session_ended(&mut self, connected_at: Instant) {
        if connected_at.elapsed() >= self.cap {
            self.down_since = Some(Instant::now());
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
    fn waits_grow_with_the_outage_not_with_refused_attempts() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        let mut schedule = ReconnectSchedule::new(base, cap);
        schedule.before_attempt();
        // Fifty refusals in quick succession: the ceiling stays near the outage's length
        // (here about zero, so the base), where counting attempts would reach the cap.
        for _ in 0..50 {
            assert!(schedule.before_attempt() <= base + Duration::from_millis(50));
        }
        // Down for 12 s: waits of up to 6 s, never more.
        schedule.down_since = Some(long_ago(Duration::from_secs(12)));
        let ceiling = schedule.ceiling();
        assert!(
            ceiling >= Duration::from_secs(6) && ceiling < Duration::from_secs(7),
            "{ceiling:?}"
        );
        assert!(schedule.before_attempt() <= Duration::from_secs(7));
        // Down for an hour: the cap.
        schedule.down_since = Some(long_ago(Duration::from_secs(3600)));
        assert_eq!(schedule.ceiling(), cap);
    }

    #[test]
    fn a_short_session_continues_the_outage_and_a_long_one_starts_over() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        let mut schedule = ReconnectSchedule::new(base, cap);
        schedule.before_attempt();
        schedule.down_since = Some(long_ago(Duration::from_secs(20)));
        // Connected and dropped at once (a flapping link): still 20 s down.
        schedule.session_ended(Instant::now());
        assert!(schedule.ceiling() >= Duration::from_secs(10));
        // A session that lasted the cap: a new outage starts, from the base.
        schedule.session_ended(long_ago(cap));
        assert!(schedule.ceiling() < base + Duration::from_millis(50));
        // A base above the cap is clamped to it.
        let clamped = ReconnectSchedule::new(Duration::from_secs(5), Duration::from_secs(1));
        assert_eq!(clamped.base, Duration::from_secs(1));
    }

    #[test]
    fn the_first_loss_waits_at_most_the_base_however_short_the_first_session() {
        let base = Duration::from_millis(100);
        let mut schedule = ReconnectSchedule::new(base, Duration::from_secs(30));
        assert_eq!(schedule.before_attempt(), Duration::ZERO);
        // Connected for a while (shorter than the cap), then lost: the time before was not
        // an outage, so the outage starts at the loss.
        assert_eq!(schedule.down_since, None);
        schedule.session_ended(long_ago(Duration::from_secs(20)));
        schedule.before_attempt();
        assert_eq!(schedule.ceiling(), base);
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
