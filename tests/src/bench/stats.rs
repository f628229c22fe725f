//! Latency percentiles.

use serde::Serialize;
use std::time::Duration;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    pub fn of(latencies: &mut [Duration]) -> Self {
        latencies.sort_unstable();
        let at = |quantile: f64| -> f64 {
            if latencies.is_empty() {
                return 0.0;
            }
            // Nearest rank: the smallest value with at least `quantile` of all at or below it.
            let rank =
                ((quantile * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
            latencies[rank - 1].as_secs_f64() * 1000.0
        };
        Self {
            count: latencies.len(),
            p50_ms: at(0.50),
            p95_ms: at(0.95),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut latencies: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let percentiles = Percentiles::of(&mut latencies);
        assert_eq!(percentiles.count, 100);
        assert_eq!(percentiles.p50_ms, 50.0);
        assert_eq!(percentiles.p95_ms, 95.0);
        assert_eq!(percentiles.p99_ms, 99.0);
        assert_eq!(percentiles.max_ms, 100.0);
        assert_eq!(Percentiles::of(&mut []).count, 0);
        let mut one = [Duration::from_millis(7)];
        assert_eq!(Percentiles::of(&mut one).p50_ms, 7.0);
    }
}
