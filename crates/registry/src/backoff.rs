//! Exponential backoff with jitter for re-registration attempts.

use std::time::Duration;

/// Delays between attempts: `base * factor^n`, capped at `max`, each
/// multiplied by a random factor in `[1 - jitter, 1 + jitter]` so that many
/// servers losing etcd at once do not come back in lockstep.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) factor: f64,
    pub(crate) max: Duration,
    pub(crate) jitter: f64,
}

impl Backoff {
    /// 100 ms, x2, at most 5 s, jitter 20 %.
    pub(crate) const DEFAULT: Backoff = Backoff {
        base: Duration::from_millis(100),
        factor: 2.0,
        max: Duration::from_secs(5),
        jitter: 0.2,
    };

    /// The delay before retry number `attempt` (0 = first retry), without
    /// jitter.
    pub(crate) fn nominal(&self, attempt: u32) -> Duration {
        let exp = self.factor.powi(attempt.min(64) as i32);
        let secs = (self.base.as_secs_f64() * exp).min(self.max.as_secs_f64());
        Duration::from_secs_f64(secs)
    }

    /// The delay before retry number `attempt`, with jitter.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let spread = (fastrand::f64() * 2.0 - 1.0) * self.jitter;
        self.nominal(attempt).mul_f64(1.0 + spread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_100ms_up_to_5s() {
        let b = Backoff::DEFAULT;
        let got: Vec<_> = (0..8).map(|n| b.nominal(n).as_millis()).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn backoff_jitter_stays_within_20_percent() {
        let b = Backoff::DEFAULT;
        for n in 0..10 {
            for _ in 0..100 {
                let d = b.delay(n).as_secs_f64();
                let nominal = b.nominal(n).as_secs_f64();
                assert!(d >= nominal * 0.8 - 1e-9 && d <= nominal * 1.2 + 1e-9);
            }
        }
    }
}
