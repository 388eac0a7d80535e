//! Outlier ejection, in the manner of gRFC A50 and Envoy: an endpoint whose
//! calls fail far more than the others', or fail N times in a row, is not
//! picked for a while.
//!
//! The request path only counts (atomics on the endpoint's [`Counters`]); the
//! owner task decides, at every `interval` and at once when an endpoint hits
//! its consecutive-failure limit, and never ejects more than
//! `max_ejected_share` of the endpoints, nor all of them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tonic::Code;

use crate::signals::Outcome;

/// Settings of outlier ejection; see [`Builder::outlier_detection`]
/// (crate::Builder::outlier_detection).
///
/// ```
/// use std::time::Duration;
/// use etcdlb_balancer::OutlierDetection;
///
/// let strict = OutlierDetection {
///     consecutive_failures: Some(3),
///     base_ejection_time: Duration::from_secs(10),
///     ..OutlierDetection::default()
/// };
/// assert_eq!(strict.max_ejected_share, 0.5);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierDetection {
    /// How often failure rates are compared. Default 10 s.
    pub interval: Duration,
    /// An endpoint whose share of failed calls in an interval is at least
    /// this, while the other endpoints' average share is below it, is
    /// ejected. Default 0.5.
    pub failure_rate: f64,
    /// Calls an endpoint must have had in the interval for its failure rate
    /// to count. Default 20.
    pub min_calls: u64,
    /// Ejected at once after this many failed calls in a row. Default
    /// `Some(5)`; `None` turns it off.
    pub consecutive_failures: Option<u32>,
    /// First ejection time; the n-th ejection of an endpoint lasts n times
    /// this (the count decays by one per interval without ejection).
    /// Default 30 s.
    pub base_ejection_time: Duration,
    /// The longest ejection. Default 300 s.
    pub max_ejection_time: Duration,
    /// At most this share of the endpoints is ejected at a time (rounded
    /// down), and never all of them. Default 0.5.
    pub max_ejected_share: f64,
    /// Status codes the server answered with that count as failures (calls
    /// broken with their connection do not: reconnecting handles those).
    /// Default `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`,
    /// `DEADLINE_EXCEEDED`.
    pub codes: Vec<Code>,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(10),
            failure_rate: 0.5,
            min_calls: 20,
            consecutive_failures: Some(5),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejected_share: 0.5,
            codes: vec![
                Code::Unavailable,
                Code::Internal,
                Code::Unknown,
                Code::DeadlineExceeded,
            ],
        }
    }
}

impl OutlierDetection {
    /// How long the `times`-th ejection lasts.
    pub(crate) fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(times.max(1))
            .min(self.max_ejection_time.max(self.base_ejection_time))
    }

    /// How many of `n` endpoints may be ejected at once.
    pub(crate) fn max_ejected(&self, n: usize) -> usize {
        let share = (n as f64 * self.max_ejected_share.clamp(0.0, 1.0)).floor() as usize;
        share.min(n.saturating_sub(1))
    }
}

/// One endpoint's call counts for ejection, written on the request path.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Bit per status code counted as a failure; 0: ejection is off.
    mask: u32,
    consecutive_limit: u32,
    calls: AtomicU64,
    failures: AtomicU64,
    consecutive: AtomicU32,
    /// The owner's wake-up when the consecutive limit is reached.
    wake: Option<Arc<Notify>>,
}

impl Counters {
    pub(crate) fn new(config: Option<&OutlierDetection>, wake: Arc<Notify>) -> Self {
        let Some(config) = config else {
            return Self::default();
        };
        let mask = config
            .codes
            .iter()
            .fold(1u32 << 31, |mask, code| mask | (1 << (*code as u32 & 0x1f)));
        Self {
            mask,
            consecutive_limit: config.consecutive_failures.unwrap_or(0),
            wake: Some(wake),
            ..Self::default()
        }
    }

    /// A call ended. Atomics only.
    #[inline]
    pub(crate) fn record(&self, outcome: Outcome) {
        if self.mask == 0 {
            return;
        }
        let failed = match outcome {
            Outcome::Status(code) => self.mask & (1 << (code as u32 & 0x1f)) != 0,
            // A broken connection is the connectivity state's business (and
            // the freeze watch's): the endpoint reconnects, and the calls a
            // frozen server took with it must not eject it once it is back.
            Outcome::Transport | Outcome::Cancelled => return,
        };
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let row = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
            if row == self.consecutive_limit
                && let Some(wake) = &self.wake
            {
                wake.notify_one();
            }
        } else if self.consecutive.load(Ordering::Relaxed) != 0 {
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Calls and failures since the last call, and the counts restart.
    pub(crate) fn take_window(&self) -> (u64, u64) {
        (
            self.calls.swap(0, Ordering::Relaxed),
            self.failures.swap(0, Ordering::Relaxed),
        )
    }

    /// Failed calls in a row now.
    pub(crate) fn consecutive(&self) -> u32 {
        self.consecutive.load(Ordering::Relaxed)
    }

    pub(crate) fn reset_consecutive(&self) {
        self.consecutive.store(0, Ordering::Relaxed);
    }

    pub(crate) fn consecutive_limit(&self) -> u32 {
        self.consecutive_limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ejection_share_never_ejects_all() {
        let config = OutlierDetection::default();
        let max: Vec<usize> = (0..=5).map(|n| config.max_ejected(n)).collect();
        assert_eq!(max, vec![0, 0, 1, 1, 2, 2]);
        let all = OutlierDetection {
            max_ejected_share: 1.0,
            ..OutlierDetection::default()
        };
        assert_eq!(all.max_ejected(3), 2, "never all");
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let config = OutlierDetection::default();
        assert_eq!(config.ejection_time(1), Duration::from_secs(30));
        assert_eq!(config.ejection_time(3), Duration::from_secs(90));
        assert_eq!(config.ejection_time(50), Duration::from_secs(300));
    }

    #[test]
    fn counters_count_configured_codes_and_rows() {
        let wake = Arc::new(Notify::new());
        let counters = Counters::new(Some(&OutlierDetection::default()), wake);
        counters.record(Outcome::Status(Code::NotFound));
        counters.record(Outcome::Status(Code::Unavailable));
        counters.record(Outcome::Transport);
        counters.record(Outcome::Status(Code::Internal));
        assert_eq!(counters.consecutive(), 2);
        counters.record(Outcome::Status(Code::Ok));
        assert_eq!(counters.consecutive(), 0);
        counters.record(Outcome::Cancelled);
        assert_eq!(counters.take_window(), (4, 2));
        assert_eq!(counters.take_window(), (0, 0));
        let off = Counters::new(None, Arc::new(Notify::new()));
        off.record(Outcome::Status(Code::Unavailable));
        assert_eq!(off.take_window(), (0, 0));
    }
}
