//! Per-endpoint live signals that policies read: outstanding requests, recent
//! latency and failures.

use std::{
    fmt,
    sync::atomic::{AtomicU32, AtomicU64, Ordering},
    time::Duration,
};

/// Weight of a new sample in the moving averages: 1/8, so an average follows
/// the last ~8 calls (an 8-call window, as a policy reacting to a slow or
/// failing server wants) and costs a shift to update.
const EWMA_SHIFT: u32 = 3;

/// Fixed point of the failure average: 1.0 = 2^20.
const FAILURE_ONE: u32 = 1 << 20;

/// What the balancer measures of one endpoint's calls, updated on the
/// request path with atomics only. Read it from a [`Picker`](crate::Picker)
/// through [`Candidate::signals`](crate::Candidate::signals).
///
/// The averages are updated without a lock: two calls ending at the same
/// instant may lose one sample, which an average of the last few calls
/// shrugs off.
#[derive(Default)]
pub struct Signals {
    outstanding: AtomicU64,
    latency_nanos: AtomicU64,
    failure_average: AtomicU32,
    calls: AtomicU64,
    failures: AtomicU64,
}

impl Signals {
    /// Requests in flight on this endpoint, exactly: counted when a request
    /// is handed to the connection, uncounted when its response body ends,
    /// when the response (or its body) is dropped, or when the call fails.
    /// A stream open for an hour counts for an hour.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Moving average (weight 1/8 per call) of the time from sending a
    /// request to receiving its response headers; `None` before the first
    /// response.
    pub fn latency(&self) -> Option<Duration> {
        match self.latency_nanos.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(Duration::from_nanos(nanos)),
        }
    }

    /// Moving average (weight 1/8 per call) of failed calls, from 0 (the
    /// recent calls succeeded) to 1 (they all failed). A call failed when
    /// its connection broke or the status says the server is at fault:
    /// `UNAVAILABLE`, `INTERNAL`, `UNKNOWN`, `DATA_LOSS`,
    /// `DEADLINE_EXCEEDED`. Other codes are the application's answer.
    /// Calls the client cancelled count neither way.
    pub fn failure_rate(&self) -> f64 {
        f64::from(self.failure_average.load(Ordering::Relaxed)) / f64::from(FAILURE_ONE)
    }

    /// Calls completed (successfully or not) since the endpoint was added.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// Calls failed (as [`failure_rate`](Self::failure_rate) counts them)
    /// since the endpoint was added.
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    #[inline]
    pub(crate) fn started(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub(crate) fn ended(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    pub(crate) fn record_latency(&self, latency: Duration) {
        let sample = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX).max(1);
        let old = self.latency_nanos.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT)
        };
        self.latency_nanos.store(new.max(1), Ordering::Relaxed);
    }

    pub(crate) fn record_result(&self, failed: bool) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let old = self.failure_average.load(Ordering::Relaxed);
        if old == 0 && !failed {
            return; // the common case: nothing to write
        }
        let sample = if failed { FAILURE_ONE } else { 0 };
        let mut new = old - (old >> EWMA_SHIFT) + (sample >> EWMA_SHIFT);
        if new < (1 << EWMA_SHIFT) {
            // The remainder the shift can no longer take away: back to the
            // fast path above.
            new = 0;
        }
        self.failure_average.store(new, Ordering::Relaxed);
    }
}

impl fmt::Debug for Signals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signals")
            .field("outstanding", &self.outstanding())
            .field("latency", &self.latency())
            .field("failure_rate", &self.failure_rate())
            .field("calls", &self.calls())
            .field("failures", &self.failures())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_follow_recent_calls() {
        let s = Signals::default();
        assert_eq!(s.latency(), None);
        s.record_latency(Duration::from_millis(8));
        assert_eq!(s.latency(), Some(Duration::from_millis(8)));
        for _ in 0..64 {
            s.record_latency(Duration::from_millis(1));
        }
        let settled = s.latency().expect("latency");
        assert!(settled < Duration::from_micros(1100), "{settled:?}");

        assert_eq!(s.failure_rate(), 0.0);
        s.record_result(true);
        assert_eq!(s.failure_rate(), 0.125);
        for _ in 0..64 {
            s.record_result(true);
        }
        assert!(s.failure_rate() > 0.99, "{}", s.failure_rate());
        for _ in 0..64 {
            s.record_result(false);
        }
        assert!(s.failure_rate() < 0.01, "{}", s.failure_rate());
        assert_eq!((s.calls(), s.failures()), (129, 65));
    }

    #[test]
    fn outstanding_counts_exactly() {
        let s = Signals::default();
        s.started();
        s.started();
        s.ended();
        assert_eq!(s.outstanding(), 1);
    }
}

/// How one call on an endpoint ended; every call ends in exactly one
/// [`EndpointShared::record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The server answered with this gRPC status (from the trailers, or the
    /// headers of a trailers-only response).
    Status(tonic::Code),
    /// The connection failed, or the response ended without a status.
    Transport,
    /// The caller dropped the call before its end: no verdict on the server.
    Cancelled,
}

impl Outcome {
    /// Whether the call says the server is unwell (not the application's
    /// answer).
    pub(crate) fn failed(self) -> bool {
        use tonic::Code;
        match self {
            Self::Status(code) => matches!(
                code,
                Code::Unavailable
                    | Code::Internal
                    | Code::Unknown
                    | Code::DataLoss
                    | Code::DeadlineExceeded
            ),
            Self::Transport => true,
            Self::Cancelled => false,
        }
    }
}
