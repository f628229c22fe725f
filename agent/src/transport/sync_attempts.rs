//! The sync attempts of one pass of a boot flow, over either transport: the correlation id of
//! each (a nonce of the pass, so that a late reply to any attempt of the pass is accepted and
//! no other: issue 12, defect 10) and how long each waits (doubling up to a cap, over the
//! passes too, so a link too slow for one pass gets longer timeouts in the next).

use nebula_protocol::Name;
use std::time::Duration;

/// Correlation ids and timeouts of the sync attempts of one boot flow.
#[derive(Debug, Clone)]
pub struct SyncAttempts {
    /// `<device>-<nonce>-`: every attempt's correlation id starts with it.
    prefix: String,
    /// Attempts started so far.
    attempts: u32,
    /// Attempts whose timeout counts: a refused request doubles nothing.
    waited: u32,
    first_timeout: Duration,
    max_timeout: Duration,
}

impl SyncAttempts {
    pub fn new(device: &Name, first_timeout: Duration, max_timeout: Duration) -> Self {
        Self {
            prefix: format!("{device}-{:016x}-", unpredictable_u64()),
            attempts: 0,
            waited: 0,
            first_timeout,
            max_timeout: max_timeout.max(first_timeout),
        }
    }

    /// Starts the next attempt: its correlation id and how long to wait for a reply (also
    /// the request's expiration in the broker).
    pub fn next_attempt(&mut self) -> (String, Duration) {
        self.attempts = self.attempts.saturating_add(1);
        let doublings = self.waited.min(16);
        self.waited = self.waited.saturating_add(1);
        let timeout = self
            .first_timeout
            .saturating_mul(1 << doublings)
            .min(self.max_timeout);
        (format!("{}{}", self.prefix, self.attempts), timeout)
    }

    /// The last attempt was refused at once (nack): the next one waits as long as it would
    /// have.
    pub fn refused(&mut self) {
        self.waited = self.waited.saturating_sub(1);
    }

    /// Whether `correlation_id` is that of an attempt of this boot flow.
    pub fn answers(&self, correlation_id: &str) -> bool {
        correlation_id
            .strip_prefix(&self.prefix)
            .and_then(|attempt| attempt.parse::<u32>().ok())
            .is_some_and(|attempt| (1..=self.attempts).contains(&attempt))
    }
}

/// A nonce nobody can predict from earlier ones (the operating system's random source, not
/// `fastrand`): with signed changes, a pass's replies are told apart from older signed ones
/// by it alone.
fn unpredictable_u64() -> u64 {
    let mut bytes = [0u8; 8];
    match ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        // The OS random source does not fail on Linux; a nonce of a pass is still unique.
        Err(_) => fastrand::u64(..),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attempt_of_a_flow_is_answerable_and_no_other() {
        let device = Name::new("pi-7").expect("name");
        let mut attempts =
            SyncAttempts::new(&device, Duration::from_secs(10), Duration::from_secs(60));
        let (first, _) = attempts.next_attempt();
        let (second, _) = attempts.next_attempt();
        assert!(
            first.starts_with("pi-7-") && first.ends_with("-1"),
            "{first}"
        );
        // A late reply to the first attempt is as good as one to the second (defect 10).
        assert!(attempts.answers(&first));
        assert!(attempts.answers(&second));
        // Not an attempt that was never made, nor another flow's, nor garbage.
        let prefix = first.strip_suffix('1').expect("attempt 1");
        assert!(!attempts.answers(&format!("{prefix}3")));
        assert!(!attempts.answers(&format!("{prefix}0")));
        assert!(!attempts.answers(&format!("{prefix}x")));
        let mut other_flow =
            SyncAttempts::new(&device, Duration::from_secs(10), Duration::from_secs(60));
        let (other, _) = other_flow.next_attempt();
        assert!(!attempts.answers(&other));
        assert!(!attempts.answers("pi-7"));
        assert!(!attempts.answers(""));
    }

    #[test]
    fn timeouts_double_up_to_the_cap() {
        let device = Name::new("d").expect("name");
        let mut attempts =
            SyncAttempts::new(&device, Duration::from_secs(10), Duration::from_secs(60));
        let timeouts: Vec<u64> = (0..6)
            .map(|_| attempts.next_attempt().1.as_secs())
            .collect();
        assert_eq!(timeouts, vec![10, 20, 40, 60, 60, 60]);
        // A refused attempt does not lengthen the next one.
        let mut refused =
            SyncAttempts::new(&device, Duration::from_secs(10), Duration::from_secs(60));
        let (first, _) = refused.next_attempt();
        refused.refused();
        let (second, timeout) = refused.next_attempt();
        assert_eq!(timeout, Duration::from_secs(10));
        assert_ne!(first, second, "every attempt has its own correlation id");
        assert!(refused.answers(&first) && refused.answers(&second));
        // Many attempts never overflow.
        for _ in 0..100 {
            assert_eq!(attempts.next_attempt().1, Duration::from_secs(60));
        }
    }
}
