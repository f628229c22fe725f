//! Slowing down repeated failed logins from one address (sans-I/O: the caller passes the time).
//!
//! A source gets [`FREE_FAILURES`] wrong credentials for free; each failure after that locks
//! it out for [`FIRST_LOCK`], doubling per further failure up to [`MAX_LOCK`]. While locked,
//! every request of that source is refused with `429` and `Retry-After` before its
//! credentials are even checked — also right ones, or guessing would go on at full speed
//! between the refusals. A success does not reset the count (else a client that logs in
//! rightly, behind the same NAT as a guesser, would hand the guesser five fresh guesses each
//! time); a source without a failure for [`FORGET_AFTER`] is forgotten. A refusal costs no
//! connection slot and no waiting task.
//!
//! The price: clients sharing an address with a guesser (a NAT, a reverse proxy — whose
//! address is the source then —, one IPv6 /64: sources count per /64, the block one host
//! usually gets) are locked out with it, for at most [`MAX_LOCK`] after its last failure.
//! Counts are per control-plane instance (several instances behind a balancer each allow the
//! free failures). At most [`CAPACITY`] sources are remembered: when the table is full, the
//! expired ones go, else the eighth whose last failures are oldest, so memory stays bounded
//! and a spray of new addresses costs one scan per [`CAPACITY`]/8 of them.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

/// Failures a source may make before it is slowed down.
pub const FREE_FAILURES: u32 = 5;
/// The lock after the first failure past the free ones.
pub const FIRST_LOCK: Duration = Duration::from_secs(1);
/// The longest lock.
pub const MAX_LOCK: Duration = Duration::from_secs(60);
/// A source without a failure for this long starts again from zero.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Sources remembered at most.
pub const CAPACITY: usize = 10_000;

/// What to do with a request from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Check its credentials.
    Proceed,
    /// Refuse it unchecked; the source may try again after this long.
    Locked { retry_after: Duration },
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed logins per source.
#[derive(Debug, Default)]
pub struct LoginThrottle {
    sources: HashMap<IpAddr, Failures>,
}

/// The key a source counts under: its address, or for IPv6 its /64.
pub fn key(source: IpAddr) -> IpAddr {
    match source {
        IpAddr::V6(address) => match address.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from_bits(
                address.to_bits() & !((1u128 << 64) - 1),
            )),
        },
        v4 => v4,
    }
}

/// The lock after the `count`-th failure.
fn lock_after(count: u32) -> Option<Duration> {
    let past_free = count.checked_sub(FREE_FAILURES).filter(|past| *past > 0)?;
    let doublings = (past_free - 1).min(16);
    Some((FIRST_LOCK * 2u32.pow(doublings)).min(MAX_LOCK))
}

impl LoginThrottle {
    /// Whether a request from `source` may have its credentials checked at `now`.
    pub fn check(&mut self, source: IpAddr, now: Instant) -> Verdict {
        let key = key(source);
        let Some(failures) = self.sources.get(&key) else {
            return Verdict::Proceed;
        };
        if now.saturating_duration_since(failures.last) >= FORGET_AFTER {
            self.sources.remove(&key);
            return Verdict::Proceed;
        }
        match failures.locked_until {
            Some(until) if until > now => Verdict::Locked {
                retry_after: until - now,
            },
            _ => Verdict::Proceed,
        }
    }

    /// Records a failed login of `source` at `now`; returns how many it has made in a row.
    pub fn failed(&mut self, source: IpAddr, now: Instant) -> u32 {
        let key = key(source);
        if !self.sources.contains_key(&key) && self.sources.len() >= CAPACITY {
            self.make_room(now);
        }
        let failures = self.sources.entry(key).or_insert(Failures {
            count: 0,
            last: now,
            locked_until: None,
        });
        if now.saturating_duration_since(failures.last) >= FORGET_AFTER {
            failures.count = 0;
        }
        failures.count = failures.count.saturating_add(1);
        failures.last = now;
        failures.locked_until = lock_after(failures.count).map(|lock| now + lock);
        failures.count
    }

    /// Sources remembered now.
    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// Forgets every expired source, and if none had expired, the eighth of the table whose
    /// last failures are the oldest: a linear pass, once per `CAPACITY / 8` new sources at most.
    fn make_room(&mut self, now: Instant) {
        let before = self.sources.len();
        self.sources
            .retain(|_, failures| now.saturating_duration_since(failures.last) < FORGET_AFTER);
        if self.sources.len() < before {
            return;
        }
        let mut by_age: Vec<(Instant, IpAddr)> = self
            .sources
            .iter()
            .map(|(key, failures)| (failures.last, *key))
            .collect();
        let evict = (by_age.len() / 8).max(1);
        by_age.select_nth_unstable(evict - 1);
        for (_, key) in &by_age[..evict] {
            self.sources.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));

    fn locked(throttle: &mut LoginThrottle, source: IpAddr, now: Instant) -> Option<Duration> {
        match throttle.check(source, now) {
            Verdict::Proceed => None,
            Verdict::Locked { retry_after } => Some(retry_after),
        }
    }

    #[test]
    fn free_failures_then_locks_doubling_up_to_the_cap() {
        let mut throttle = LoginThrottle::default();
        let start = Instant::now();
        for n in 1..=FREE_FAILURES {
            assert_eq!(locked(&mut throttle, A, start), None, "before failure {n}");
            assert_eq!(throttle.failed(A, start), n);
        }
        assert_eq!(locked(&mut throttle, A, start), None);
        let mut now = start;
        let mut expected = Vec::new();
        for _ in 0..9 {
            throttle.failed(A, now);
            let lock =
                locked(&mut throttle, A, now).expect("locked after a failure past the free ones");
            expected.push(lock.as_secs());
            // Just before the lock ends it still holds; at its end the source may try again.
            assert!(locked(&mut throttle, A, now + lock - Duration::from_millis(1)).is_some());
            now += lock;
            assert_eq!(locked(&mut throttle, A, now), None);
        }
        assert_eq!(expected, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // Another source is not affected.
        assert_eq!(locked(&mut throttle, B, now), None);
    }

    #[test]
    fn a_quiet_source_is_forgotten() {
        let mut throttle = LoginThrottle::default();
        let now = Instant::now();
        for _ in 0..FREE_FAILURES + 3 {
            throttle.failed(A, now);
        }
        assert!(locked(&mut throttle, A, now).is_some());
        let later = now + FORGET_AFTER;
        assert_eq!(locked(&mut throttle, A, later), None);
        assert!(throttle.is_empty());
        assert_eq!(throttle.failed(A, later), 1);
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let mut throttle = LoginThrottle::default();
        let now = Instant::now();
        let host = |last: u16| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        for last in 0..=u16::try_from(FREE_FAILURES).expect("small") {
            throttle.failed(host(last), now);
        }
        assert!(locked(&mut throttle, host(999), now).is_some(), "same /64");
        let other_64 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 2, 0, 0, 0, 1));
        assert_eq!(locked(&mut throttle, other_64, now), None);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        assert_eq!(throttle.failed(mapped, now), 1);
        assert_eq!(throttle.failed(A, now), 2);
    }

    #[test]
    fn the_table_stays_bounded_and_drops_the_oldest_first() {
        let mut throttle = LoginThrottle::default();
        let start = Instant::now();
        let source = |n: usize| {
            IpAddr::V4(Ipv4Addr::from(
                0x0a00_0000 + u32::try_from(n).expect("small"),
            ))
        };
        for n in 0..CAPACITY {
            throttle.failed(source(n), start + Duration::from_millis(n as u64));
        }
        assert_eq!(throttle.len(), CAPACITY);
        let now = start + Duration::from_secs(60);
        throttle.failed(source(CAPACITY), now);
        // The eighth with the oldest failures went (sources 0 to CAPACITY/8 - 1), then the
        // new one came in.
        let evicted = CAPACITY / 8;
        assert_eq!(throttle.len(), CAPACITY - evicted + 1);
        assert_eq!(throttle.failed(source(evicted), now), 2, "kept");
        assert_eq!(throttle.failed(source(evicted - 1), now), 1, "counted anew");
        assert_eq!(throttle.failed(source(0), now), 1, "counted anew");
        assert_eq!(throttle.len(), CAPACITY - evicted + 3);
        // Full again; once its entries have expired, the next new source drops all of them.
        for n in 0..CAPACITY - throttle.len() {
            throttle.failed(source(2 * CAPACITY + n), now);
        }
        assert_eq!(throttle.len(), CAPACITY);
        throttle.failed(source(3 * CAPACITY), now + FORGET_AFTER);
        assert_eq!(throttle.len(), 1);
    }
}
