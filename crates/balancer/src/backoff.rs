//! The reconnect delay sequence.

use std::time::Duration;

use crate::BackoffConfig;

/// Yields gRPC's connection backoff delays; [`reset`](Self::reset) after a
/// connection that stayed up.
#[derive(Debug)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    current: Duration,
}

impl Backoff {
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            current: config.base,
            config,
        }
    }

    /// The un-jittered delay the next failure will wait.
    pub(crate) fn current(&self) -> Duration {
        self.current
    }

    /// The next delay; `unit` is a random number in `[0, 1)`.
    pub(crate) fn next_delay(&mut self, unit: f64) -> Duration {
        let spread = 1.0 + self.config.jitter * (2.0 * unit - 1.0);
        let delay = self.current.mul_f64(spread.max(0.0));
        let grown = self.current.mul_f64(self.config.multiplier.max(1.0));
        self.current = grown.min(self.config.max);
        delay
    }

    pub(crate) fn reset(&mut self) {
        self.current = self.config.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    #[test]
    fn follows_grpc_connection_backoff_without_jitter() {
        let mut b = Backoff::new(BackoffConfig::default());
        let delays: Vec<f64> = (0..12).map(|_| secs(b.next_delay(0.5))).collect();
        let expected = [1.0, 1.6, 2.56, 4.096, 6.5536, 10.48576];
        for (got, want) in delays.iter().zip(expected) {
            assert!((got - want).abs() < 1e-6, "{delays:?}");
        }
        assert_eq!(delays[11], 120.0, "capped at max: {delays:?}");
    }

    #[test]
    fn jitter_spreads_by_twenty_percent_each_way() {
        let mut low = Backoff::new(BackoffConfig::default());
        let mut high = Backoff::new(BackoffConfig::default());
        assert!((secs(low.next_delay(0.0)) - 0.8).abs() < 1e-9);
        assert!((secs(high.next_delay(1.0)) - 1.2).abs() < 1e-9);
    }

    #[test]
    fn reset_starts_over_at_base() {
        let mut b = Backoff::new(BackoffConfig::default());
        b.next_delay(0.5);
        b.next_delay(0.5);
        b.reset();
        assert_eq!(b.current(), Duration::from_secs(1));
    }
}
