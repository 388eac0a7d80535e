//! Connectivity states and per-endpoint counters.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

use discover::Endpoint;

use crate::{
    ServedBy, Signals, connectivity::ConnectivityState, metrics::EndpointMetrics, signals::Outcome,
};

/// Why a READY endpoint is not picked, as listed in
/// [`EndpointStatus::excluded`]; its `Display` is the line the logs show.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Exclusion {
    /// It has calls in flight and sent nothing for `silent_for`; a PING probe
    /// is out. No answer within the probe timeout and the connection is
    /// treated as dead.
    Suspected {
        /// How long the server had been silent when it was suspected.
        silent_for: Duration,
        /// Calls in flight on it then.
        in_flight: usize,
    },
    /// Outlier ejection: its calls failed far more than the others'.
    Ejected {
        /// When it comes back.
        until: tokio::time::Instant,
        /// How many times it has been ejected (the ejection time grows with it).
        times: u32,
        /// What the ejection was based on.
        reason: String,
    },
    /// Its health service (`grpc.health.v1.Health/Watch`) does not report
    /// SERVING.
    NotServing {
        /// The service name watched.
        service: String,
        /// The status it reported, e.g. `NOT_SERVING`.
        status: String,
    },
}

impl fmt::Display for Exclusion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Suspected {
                silent_for,
                in_flight,
            } => write!(
                f,
                "suspected frozen: nothing received for {silent_for:.1?} with {in_flight} calls in flight; probing with a PING"
            ),
            Self::Ejected {
                until,
                times,
                reason,
            } => {
                let left = until.saturating_duration_since(tokio::time::Instant::now());
                write!(
                    f,
                    "ejected for another {left:.1?} (ejection {times}): {reason}"
                )
            }
            Self::NotServing { service, status } => {
                write!(f, "health service {service:?} reports {status}")
            }
        }
    }
}

/// What the balancer knows of one endpoint, as returned by
/// [`Balancer::endpoints`](crate::Balancer::endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The key the endpoint was inserted under.
    pub key: String,
    /// Address and instance id.
    pub endpoint: Endpoint,
    /// Current connectivity state.
    pub state: ConnectivityState,
    /// Requests sent to it.
    pub picks: u64,
    /// Requests that failed on it at the transport level (not gRPC errors
    /// returned by the server).
    pub failures: u64,
    /// Freeze-detection PING probes sent to it: one each time it was
    /// suspected (silent with calls awaiting an answer).
    pub probes: u64,
    /// Calls sent to it that have not ended yet.
    pub in_flight: u64,
    /// Why the last connection attempt failed or the last connection ended.
    pub last_error: Option<String>,
    /// Why it is not picked although READY (empty when it is picked).
    pub excluded: Vec<Exclusion>,
}

/// Balancer-wide counters, from [`Balancer::stats`](crate::Balancer::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sticky requests whose instance was unavailable and that went round
    /// robin instead.
    pub sticky_fallbacks: u64,
    /// Requests retried on another endpoint because they were never sent.
    pub retries: u64,
    /// Outlier ejections so far.
    pub ejections: u64,
}

/// Per-endpoint shared state: written by the owner task and the request path,
/// read by [`Balancer::endpoints`](crate::Balancer::endpoints).
#[derive(Debug)]
pub(crate) struct EndpointShared {
    pub(crate) key: String,
    pub(crate) endpoint: Endpoint,
    /// `host:port` as the `:authority` of every request sent to it.
    pub(crate) authority: http::uri::Authority,
    /// The instance id, shared by every snapshot's index.
    pub(crate) instance: Option<Arc<str>>,
    state: AtomicU8,
    pub(crate) picks: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) probes: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// What policies read: outstanding requests, latency, failures.
    pub(crate) signals: Signals,
    /// The response extension naming this endpoint.
    pub(crate) served_by: ServedBy,
    excluded: Mutex<Vec<Exclusion>>,
    /// Call counts for outlier ejection.
    pub(crate) outlier: crate::outlier::Counters,
    /// Its metric handles, registered once.
    pub(crate) metrics: EndpointMetrics,
    /// The balancer's calls in flight over all endpoints.
    pub(crate) balancer_in_flight: Arc<AtomicU64>,
}

impl EndpointShared {
    pub(crate) fn new(
        key: String,
        endpoint: Endpoint,
        outlier: crate::outlier::Counters,
        metrics: EndpointMetrics,
        balancer_in_flight: Arc<AtomicU64>,
    ) -> Result<Arc<Self>, http::uri::InvalidUri> {
        let authority = endpoint.addr().parse()?;
        let instance = endpoint.instance_id().map(Arc::from);
        Ok(Arc::new(Self {
            key,
            served_by: ServedBy::new(endpoint.clone()),
            endpoint,
            authority,
            instance,
            state: AtomicU8::new(ConnectivityState::Idle.to_u8()),
            picks: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            probes: AtomicU64::new(0),
            last_error: Mutex::new(None),
            signals: Signals::default(),
            excluded: Mutex::new(Vec::new()),
            outlier,
            metrics,
            balancer_in_flight,
        }))
    }

    /// A call started on this endpoint.
    #[inline]
    pub(crate) fn call_started(&self) {
        self.signals.started();
        self.balancer_in_flight.fetch_add(1, Ordering::Relaxed);
    }

    /// A call on this endpoint ended.
    #[inline]
    pub(crate) fn call_ended(&self) {
        self.signals.ended();
        self.balancer_in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// write-coalesce's [`Gate`](write_coalesce::Gate) for this endpoint's
    /// connections: hold a small write back only while other endpoints carry
    /// at least a quarter of the balancer's calls in flight.
    ///
    /// Holding back is what makes one write carry many calls, and it pays
    /// when the client has other connections to work on meanwhile. On a
    /// connection that carries (nearly) all the calls, as with every call
    /// sticky to one server, it does not: our servers hold back too, and the
    /// two ends fall into lock-step, each write a batch of every call in
    /// flight and each end idle while the other works (measured in
    /// BENCHMARKS.md: `balancer_sticky`).
    pub(crate) fn write_gate(self: &Arc<Self>) -> write_coalesce::Gate {
        let this = Arc::clone(self);
        Arc::new(move || {
            holds_back(
                this.signals.outstanding(),
                this.balancer_in_flight.load(Ordering::Relaxed),
            )
        })
    }

    /// A call's response headers arrived `latency` after it was sent.
    pub(crate) fn record_latency(&self, latency: Duration) {
        self.signals.record_latency(latency);
    }

    /// A call ended. Request path or a body's drop: atomics only.
    pub(crate) fn record(&self, outcome: Outcome) {
        if outcome != Outcome::Cancelled {
            self.signals.record_result(outcome.failed());
        }
        self.outlier.record(outcome);
    }

    pub(crate) fn state(&self) -> ConnectivityState {
        ConnectivityState::from_u8(self.state.load(Ordering::Relaxed))
    }

    pub(crate) fn set_state(&self, state: ConnectivityState) {
        self.state.store(state.to_u8(), Ordering::Relaxed);
    }

    pub(crate) fn set_last_error(&self, error: String) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error);
        }
    }

    /// Written by the owner task whenever an exclusion starts or ends.
    pub(crate) fn set_excluded(&self, excluded: Vec<Exclusion>) {
        if let Ok(mut current) = self.excluded.lock() {
            *current = excluded;
        }
    }

    pub(crate) fn status(&self) -> EndpointStatus {
        EndpointStatus {
            key: self.key.clone(),
            endpoint: self.endpoint.clone(),
            state: self.state(),
            picks: self.picks.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            probes: self.probes.load(Ordering::Relaxed),
            in_flight: self.signals.outstanding(),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
            excluded: self.excluded.lock().map(|e| e.clone()).unwrap_or_default(),
        }
    }
}

/// The write gate's rule: an endpoint with `mine` of the balancer's `all`
/// calls in flight holds small writes back only if the others carry at least
/// a quarter of them.
fn holds_back(mine: u64, all: u64) -> bool {
    all > 0 && 4 * mine <= 3 * all
}

#[cfg(test)]
mod tests {
    use super::holds_back;

    #[test]
    fn the_write_gate_holds_back_only_while_other_endpoints_carry_a_quarter() {
        // Nothing in flight, or all of it on this endpoint: write at once.
        assert!(!holds_back(0, 0));
        assert!(!holds_back(128, 128));
        assert!(!holds_back(100, 128));
        // Spread over endpoints: hold back.
        assert!(holds_back(96, 128));
        assert!(holds_back(16, 32));
        assert!(holds_back(0, 5));
    }
}
