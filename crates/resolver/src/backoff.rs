//! Exponential backoff with jitter between recovery attempts.

use std::time::Duration;

/// How long the resolver waits between attempts to reach etcd again.
///
/// The n-th consecutive failure waits `min(base * factor^n, max)`, scaled by a
/// random factor in `[1 - jitter, 1 + jitter]` so that many clients that lost
/// the same etcd do not come back in lockstep. A success starts over at
/// `base`.
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    /// First delay. Default 100 ms.
    pub base: Duration,
    /// Growth per consecutive failure. Default 2.0.
    pub factor: f64,
    /// Longest delay (before jitter). Default 5 s.
    pub max: Duration,
    /// Relative jitter, from 0.0 (none) to 1.0. Default 0.2.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            factor: 2.0,
            max: Duration::from_secs(5),
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self.base.as_secs_f64();
        let max = self.max.as_secs_f64().max(0.0);
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        let exp = factor.powi(attempt.min(64) as i32);
        let raw = (base * exp).min(max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let scale = 1.0 + jitter * (2.0 * fastrand::f64() - 1.0);
        let secs = raw * scale;
        if secs > 0.0 {
            Duration::try_from_secs_f64(secs).unwrap_or(self.max)
        } else {
            Duration::ZERO
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_up_to_max() {
        let b = Backoff {
            jitter: 0.0,
            ..Backoff::default()
        };
        let ms = |n| b.delay(n).as_millis();
        assert_eq!(
            [ms(0), ms(1), ms(2), ms(3), ms(5), ms(6), ms(1000)],
            [100, 200, 400, 800, 3200, 5000, 5000]
        );
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let b = Backoff::default();
        for n in 0..200 {
            let d = b.delay(n % 10).as_secs_f64();
            let raw = (0.1 * 2f64.powi((n % 10) as i32)).min(5.0);
            assert!(d >= raw * 0.8 - 1e-9 && d <= raw * 1.2 + 1e-9, "{n}: {d}");
        }
    }

    #[test]
    fn nonsense_settings_do_not_panic() {
        let b = Backoff {
            base: Duration::MAX,
            factor: f64::NAN,
            max: Duration::MAX,
            jitter: 7.0,
        };
        let _ = b.delay(u32::MAX);
        let b = Backoff {
            base: Duration::ZERO,
            factor: -1.0,
            max: Duration::ZERO,
            jitter: -1.0,
        };
        assert_eq!(b.delay(3), Duration::ZERO);
    }
}
