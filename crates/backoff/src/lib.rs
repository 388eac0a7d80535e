//! The one exponential backoff of the workspace: the delay before the n-th
//! retry is `min(base * factor^n, max)`, spread by a uniformly random factor
//! in `[1 - jitter, 1 + jitter]` so that many clients that lost the same
//! server do not come back in lockstep.
//!
//! Two presets carry the defaults the users document:
//!
//! | preset | base | factor | max | jitter | used by |
//! | --- | --- | --- | --- | --- | --- |
//! | [`Backoff::ETCD`] (= [`Default`]) | 100 ms | ×2 | 5 s | ±20 % | `registry` re-registration, `resolver` recovery |
//! | [`Backoff::GRPC_CONNECTION`] | 1 s | ×1.6 | 120 s | ±20 % | `balancer` reconnects (gRPC's connection-backoff.md) |
//!
//! [`Backoff`] is the configuration and computes the delay of any attempt
//! from its number ([`Backoff::delay`]); [`Attempts`] counts failures for a
//! caller that does not want to (next delay, reset after a success).
//!
//! Settings a user can get wrong never panic: a factor below 1 or not
//! finite is taken as 1, the jitter is clamped to `[0, 1]`, a `base` above
//! `max` is cut to `max`, and a delay too large for a [`Duration`] is `max`.
//!
//! ```
//! use std::time::Duration;
//! use etcdlb_backoff::Backoff;
//!
//! let grpc = Backoff::GRPC_CONNECTION;
//! assert_eq!(grpc.nominal(0), Duration::from_secs(1));
//! assert_eq!(grpc.nominal(1), Duration::from_millis(1600));
//! assert_eq!(grpc.nominal(50), Duration::from_secs(120));
//! // Jittered: within ±20 % of the nominal delay.
//! let d = grpc.delay(1);
//! assert!(d >= Duration::from_millis(1280) && d <= Duration::from_millis(1920));
//!
//! let mut attempts = Backoff::ETCD.attempts();
//! let first = attempts.next_delay(); // 80..=120 ms
//! assert!(first <= Duration::from_millis(120));
//! attempts.reset(); // after a success: start over at `base`
//! assert_eq!(attempts.current(), Duration::from_millis(100));
//! ```
//!
//! Why not a crates.io crate: the `backoff` crate is unmaintained (RUSTSEC
//! advisory 2025-0012), and `backon`'s jitter adds a random delay of up to
//! the current one instead of gRPC's symmetric ±20 %; both are retry
//! drivers, while our users need the delay sequence itself (the balancer
//! also sizes its connect timeout from the current un-jittered delay).

use std::time::Duration;

/// An exponential backoff with jitter: the delay before retry number `n`
/// (0 for the first retry) is `min(base * factor^n, max)` scaled by a
/// random factor in `[1 - jitter, 1 + jitter]`.
///
/// ```
/// use std::time::Duration;
/// use etcdlb_backoff::Backoff;
///
/// let b = Backoff { base: Duration::from_millis(10), jitter: 0.0, ..Backoff::ETCD };
/// assert_eq!(b.delay(3), Duration::from_millis(80));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
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
    /// [`Backoff::ETCD`].
    fn default() -> Self {
        Self::ETCD
    }
}

impl Backoff {
    /// 100 ms, ×2, at most 5 s, ±20 %: retries against etcd (the registry's
    /// re-registration, the resolver's recovery).
    ///
    /// ```
    /// assert_eq!(etcdlb_backoff::Backoff::ETCD, etcdlb_backoff::Backoff::default());
    /// ```
    pub const ETCD: Backoff = Backoff {
        base: Duration::from_millis(100),
        factor: 2.0,
        max: Duration::from_secs(5),
        jitter: 0.2,
    };

    /// gRPC's connection backoff (connection-backoff.md): 1 s, ×1.6, at most
    /// 120 s, ±20 %.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(etcdlb_backoff::Backoff::GRPC_CONNECTION.nominal(2), Duration::from_millis(2560));
    /// ```
    pub const GRPC_CONNECTION: Backoff = Backoff {
        base: Duration::from_secs(1),
        factor: 1.6,
        max: Duration::from_secs(120),
        jitter: 0.2,
    };

    /// The delay before retry number `attempt` (0 for the first), without
    /// jitter: `min(base * factor^attempt, max)`.
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(etcdlb_backoff::Backoff::ETCD.nominal(3), Duration::from_millis(800));
    /// ```
    pub fn nominal(&self, attempt: u32) -> Duration {
        let max = self.max.as_secs_f64();
        let factor = if self.factor.is_finite() {
            self.factor.max(1.0)
        } else {
            1.0
        };
        // Past 2^31 the exponent would wrap; the cap is reached long before.
        let exp = factor.powi(attempt.min(i32::MAX as u32) as i32);
        let secs = (self.base.as_secs_f64() * exp).min(max);
        Duration::try_from_secs_f64(secs).unwrap_or(self.max)
    }

    /// The delay before retry number `attempt`, with a fresh random jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// let d = etcdlb_backoff::Backoff::ETCD.delay(0);
    /// assert!(d >= Duration::from_millis(80) && d <= Duration::from_millis(120));
    /// ```
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, fastrand::f64())
    }

    /// The delay before retry number `attempt` for the random number `unit`
    /// in `[0, 1]`: 0 gives the shortest delay (`nominal * (1 - jitter)`),
    /// 0.5 the nominal one, 1 the longest (`nominal * (1 + jitter)`).
    /// Deterministic, for tests and for callers with their own randomness.
    ///
    /// ```
    /// use std::time::Duration;
    /// let b = etcdlb_backoff::Backoff::GRPC_CONNECTION;
    /// assert_eq!(b.delay_with(0, 0.0), Duration::from_millis(800));
    /// assert_eq!(b.delay_with(0, 1.0), Duration::from_millis(1200));
    /// ```
    pub fn delay_with(&self, attempt: u32, unit: f64) -> Duration {
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let unit = if unit.is_nan() {
            0.5
        } else {
            unit.clamp(0.0, 1.0)
        };
        let scale = 1.0 + jitter * (2.0 * unit - 1.0);
        let secs = self.nominal(attempt).as_secs_f64() * scale;
        // `max` bounds the nominal delay; jitter may go up to 2x beyond it.
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }

    /// Whether retry number `attempt` already waits the longest delay, e.g.
    /// to log a failure loudly only once the backoff is at its cap.
    ///
    /// ```
    /// let b = etcdlb_backoff::Backoff::ETCD;
    /// assert!(!b.is_capped(5) && b.is_capped(6));
    /// ```
    pub fn is_capped(&self, attempt: u32) -> bool {
        self.nominal(attempt) >= self.max
    }

    /// A failure counter over this backoff, starting at retry 0.
    ///
    /// ```
    /// let mut a = etcdlb_backoff::Backoff::GRPC_CONNECTION.attempts();
    /// a.next_delay();
    /// assert_eq!(a.count(), 1);
    /// ```
    pub fn attempts(self) -> Attempts {
        Attempts {
            backoff: self,
            attempt: 0,
        }
    }
}

/// Consecutive failures over a [`Backoff`]: each [`next_delay`](Self::next_delay)
/// is the delay of one more failure; [`reset`](Self::reset) after a success.
///
/// ```
/// use std::time::Duration;
/// use etcdlb_backoff::Backoff;
///
/// let mut a = Backoff { jitter: 0.0, ..Backoff::GRPC_CONNECTION }.attempts();
/// assert_eq!(a.next_delay(), Duration::from_secs(1));
/// assert_eq!(a.current(), Duration::from_millis(1600));
/// a.reset();
/// assert_eq!(a.next_delay(), Duration::from_secs(1));
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Attempts {
    backoff: Backoff,
    attempt: u32,
}

impl Attempts {
    /// The backoff this counter follows.
    ///
    /// ```
    /// let a = etcdlb_backoff::Backoff::ETCD.attempts();
    /// assert_eq!(*a.backoff(), etcdlb_backoff::Backoff::ETCD);
    /// ```
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// How many delays were handed out since the start or the last reset.
    ///
    /// ```
    /// let mut a = etcdlb_backoff::Backoff::ETCD.attempts();
    /// a.next_delay();
    /// a.next_delay();
    /// assert_eq!(a.count(), 2);
    /// ```
    pub fn count(&self) -> u32 {
        self.attempt
    }

    /// The un-jittered delay the next failure will wait (gRPC sizes a
    /// connect attempt's deadline from it).
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(etcdlb_backoff::Backoff::ETCD.attempts().current(), Duration::from_millis(100));
    /// ```
    pub fn current(&self) -> Duration {
        self.backoff.nominal(self.attempt)
    }

    /// The delay of one more failure, with a fresh random jitter.
    ///
    /// ```
    /// let mut a = etcdlb_backoff::Backoff::ETCD.attempts();
    /// assert!(a.next_delay() < a.next_delay() * 2);
    /// ```
    pub fn next_delay(&mut self) -> Duration {
        self.next_delay_with(fastrand::f64())
    }

    /// [`next_delay`](Self::next_delay) for the random number `unit` in
    /// `[0, 1]` (see [`Backoff::delay_with`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut a = etcdlb_backoff::Backoff::ETCD.attempts();
    /// assert_eq!(a.next_delay_with(0.5), Duration::from_millis(100));
    /// assert_eq!(a.next_delay_with(0.5), Duration::from_millis(200));
    /// ```
    pub fn next_delay_with(&mut self, unit: f64) -> Duration {
        let delay = self.backoff.delay_with(self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts over at `base`, after a success.
    ///
    /// ```
    /// let mut a = etcdlb_backoff::Backoff::ETCD.attempts();
    /// a.next_delay();
    /// a.reset();
    /// assert_eq!(a.count(), 0);
    /// ```
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn etcd_preset_doubles_from_100ms_up_to_5s() {
        let b = Backoff::ETCD;
        let got: Vec<_> = (0..8).map(|n| ms(b.nominal(n))).collect();
        assert_eq!(got, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        assert_eq!(b.nominal(u32::MAX), Duration::from_secs(5));
        assert_eq!(Backoff::default(), b);
    }

    #[test]
    fn grpc_preset_grows_by_1_6_from_1s_up_to_120s() {
        let mut a = Backoff::GRPC_CONNECTION.attempts();
        let got: Vec<f64> = (0..13)
            .map(|_| a.next_delay_with(0.5).as_secs_f64())
            .collect();
        let want = [1.0, 1.6, 2.56, 4.096, 6.5536, 10.48576, 16.777216];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
        // 1.6^10 = 109.95 s, 1.6^11 = 175.9 s: capped from the 12th retry on.
        assert!((got[10] - 109.951_162_777_6).abs() < 1e-6, "{got:?}");
        assert_eq!(&got[11..], [120.0, 120.0]);
    }

    #[test]
    fn jitter_spreads_symmetrically_within_its_bounds() {
        for b in [Backoff::ETCD, Backoff::GRPC_CONNECTION] {
            for n in 0..15 {
                let nominal = b.nominal(n).as_secs_f64();
                let low = b.delay_with(n, 0.0).as_secs_f64();
                let high = b.delay_with(n, 1.0).as_secs_f64();
                assert!(
                    (low - nominal * 0.8).abs() < 1e-6,
                    "{n}: {low} vs {nominal}"
                );
                assert!(
                    (high - nominal * 1.2).abs() < 1e-6,
                    "{n}: {high} vs {nominal}"
                );
                for _ in 0..50 {
                    let d = b.delay(n).as_secs_f64();
                    assert!(d >= low - 1e-9 && d <= high + 1e-9, "{n}: {d}");
                }
            }
        }
    }

    #[test]
    fn random_delays_cover_the_jitter_range() {
        // Not all at one end: a broken scale (e.g. only 1 + jitter * unit)
        // would never go below nominal.
        let b = Backoff::ETCD;
        let delays: Vec<u128> = (0..200).map(|_| ms(b.delay(3))).collect();
        assert!(delays.iter().any(|&d| d < 760), "{delays:?}");
        assert!(delays.iter().any(|&d| d > 840), "{delays:?}");
    }

    #[test]
    fn reset_starts_over_at_base() {
        let mut a = Backoff::GRPC_CONNECTION.attempts();
        for _ in 0..5 {
            a.next_delay();
        }
        assert_eq!(a.count(), 5);
        assert!(a.current() > Duration::from_secs(6));
        a.reset();
        assert_eq!(a.count(), 0);
        assert_eq!(a.current(), Duration::from_secs(1));
    }

    #[test]
    fn cap_is_reported_once_reached() {
        let b = Backoff::ETCD;
        let first_capped = (0..20).find(|&n| b.is_capped(n));
        assert_eq!(first_capped, Some(6));
    }

    #[test]
    fn nonsense_settings_do_not_panic() {
        let huge = Backoff {
            base: Duration::MAX,
            factor: f64::NAN,
            max: Duration::MAX,
            jitter: 7.0,
        };
        let _ = huge.delay(u32::MAX);
        let _ = huge.delay_with(3, f64::NAN);
        let mut a = huge.attempts();
        for _ in 0..3 {
            let _ = a.next_delay();
        }
        let zero = Backoff {
            base: Duration::ZERO,
            factor: -1.0,
            max: Duration::ZERO,
            jitter: -1.0,
        };
        assert_eq!(zero.delay(3), Duration::ZERO);
        let inverted = Backoff {
            base: Duration::from_secs(10),
            max: Duration::from_secs(1),
            jitter: 0.0,
            ..Backoff::ETCD
        };
        assert_eq!(inverted.delay(0), Duration::from_secs(1));
        let flat = Backoff {
            factor: 0.5,
            jitter: f64::NAN,
            ..Backoff::ETCD
        };
        assert_eq!(flat.delay(4), Duration::from_millis(100));
    }
}
