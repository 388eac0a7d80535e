//! Metrics through the `metrics` facade (no exporter here: the program
//! installs one, e.g. Prometheus). Handles are registered once per balancer
//! and per endpoint, so the request path only adds to atomics: no label is
//! built per call. Names follow gRPC's where gRFC A66/A94 define one; the
//! table is in `docs/metrics.md`.

use std::{sync::OnceLock, time::Duration};

use metrics::{Counter, Gauge, Histogram, SharedString, counter, gauge, histogram};

use crate::{ConnectivityState, signals::Outcome};

/// `grpc.target`: the balancer's name (its discovery prefix).
const TARGET: &str = "grpc.target";

/// Per-balancer handles, held by the balancer's `Shared` (`shared.rs`).
pub(crate) struct Metrics {
    target: SharedString,
    /// Indexed by [`state_index`].
    endpoints: [Gauge; 4],
    open_connections: Gauge,
    attempts_succeeded: Counter,
    attempts_failed: Counter,
    pub(crate) sticky_fallbacks: Counter,
    pub(crate) retries: Counter,
    pub(crate) ejections: Counter,
}

impl Metrics {
    pub(crate) fn new(target: &str) -> Self {
        let target = SharedString::from(target.to_owned());
        let t = || target.clone();
        let state = |s: &'static str| gauge!("balancer.endpoints", TARGET => t(), "state" => s);
        Self {
            endpoints: [
                state("idle"),
                state("connecting"),
                state("ready"),
                state("transient_failure"),
            ],
            open_connections: gauge!("grpc.subchannel.open_connections", TARGET => t()),
            attempts_succeeded: counter!("grpc.subchannel.connection_attempts_succeeded", TARGET => t()),
            attempts_failed: counter!("grpc.subchannel.connection_attempts_failed", TARGET => t()),
            sticky_fallbacks: counter!("balancer.sticky_fallbacks", TARGET => t()),
            retries: counter!("balancer.retries", TARGET => t()),
            ejections: counter!("balancer.ejections", TARGET => t()),
            target,
        }
    }

    /// Handles of one endpoint (registered when it is added).
    pub(crate) fn endpoint(&self, addr: &str) -> EndpointMetrics {
        let addr = SharedString::from(addr.to_owned());
        let (t, a) = (self.target.clone(), addr.clone());
        EndpointMetrics {
            picks: counter!("balancer.picks", TARGET => t.clone(), "endpoint" => a.clone()),
            failures: counter!("balancer.failures", TARGET => t.clone(), "endpoint" => a),
            target: t,
            durations: Default::default(),
        }
    }

    /// An endpoint was added: it starts IDLE.
    pub(crate) fn added(&self) {
        self.endpoints[state_index(ConnectivityState::Idle)].increment(1.0);
    }

    /// An endpoint in `state` was removed.
    pub(crate) fn removed(&self, state: ConnectivityState) {
        self.endpoints[state_index(state)].decrement(1.0);
        if state == ConnectivityState::Ready {
            self.open_connections.decrement(1.0);
        }
    }

    /// An endpoint went from `from` to `to`; `error` is why, if it failed.
    /// Owner task only.
    pub(crate) fn transition(
        &self,
        from: ConnectivityState,
        to: ConnectivityState,
        error: Option<&str>,
    ) {
        use ConnectivityState::{Connecting, Ready, TransientFailure};
        if from == to {
            return;
        }
        self.endpoints[state_index(from)].decrement(1.0);
        self.endpoints[state_index(to)].increment(1.0);
        match (from, to) {
            (_, Ready) => {
                self.attempts_succeeded.increment(1);
                self.open_connections.increment(1.0);
            }
            (Ready, _) => {
                self.open_connections.decrement(1.0);
                let reason = disconnect_error(error.unwrap_or(""));
                counter!(
                    "grpc.subchannel.disconnections",
                    TARGET => self.target.clone(),
                    "grpc.disconnect_error" => reason
                )
                .increment(1);
            }
            (Connecting, TransientFailure) => self.attempts_failed.increment(1),
            _ => {}
        }
    }
}

/// Per-endpoint handles, held by each endpoint's `EndpointShared` (`state.rs`).
pub(crate) struct EndpointMetrics {
    pub(crate) picks: Counter,
    pub(crate) failures: Counter,
    target: SharedString,
    /// `grpc.client.attempt.duration` by outcome, registered on first use
    /// (a handle per status the endpoint ever returned, no more).
    durations: [OnceLock<Histogram>; OUTCOMES],
}

impl std::fmt::Debug for EndpointMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointMetrics").finish_non_exhaustive()
    }
}

/// 17 gRPC codes, a transport failure, a cancellation.
const OUTCOMES: usize = 19;

impl EndpointMetrics {
    /// One attempt on this endpoint ended with `outcome` after `took`.
    pub(crate) fn attempt(&self, outcome: Outcome, took: Duration) {
        let (index, status) = match outcome {
            Outcome::Status(code) => (code as usize, code_name(code)),
            Outcome::Transport => (17, "TRANSPORT_FAILURE"),
            Outcome::Cancelled => (18, "CANCELLED_BY_CALLER"),
        };
        let Some(slot) = self.durations.get(index) else {
            return;
        };
        slot.get_or_init(|| {
            histogram!(
                "grpc.client.attempt.duration",
                TARGET => self.target.clone(),
                "grpc.status" => status
            )
        })
        .record(took.as_secs_f64());
    }
}

fn state_index(state: ConnectivityState) -> usize {
    match state {
        ConnectivityState::Idle => 0,
        ConnectivityState::Connecting => 1,
        ConnectivityState::Ready => 2,
        ConnectivityState::TransientFailure => 3,
    }
}

/// gRFC A94's `grpc.disconnect_error` values, from the connection's error
/// text (the first reason seen).
fn disconnect_error(error: &str) -> &'static str {
    let e = error.to_ascii_lowercase();
    if e.contains("goaway") || e.contains("go away") || e.contains("graceful") {
        if e.contains("enhance_your_calm") || e.contains("too_many_pings") {
            "GOAWAY ENHANCE_YOUR_CALM"
        } else if e.contains("protocol") {
            "GOAWAY PROTOCOL_ERROR"
        } else {
            "GOAWAY NO_ERROR"
        }
    } else if e.contains("reset") {
        "connection reset"
    } else if e.contains("timed out")
        || e.contains("timeout")
        || e.contains("keepalive")
        || e.contains("ping")
    {
        "connection timed out"
    } else if e.contains("aborted") {
        "connection aborted"
    } else if e.contains("os error") || e.contains("broken pipe") {
        "socket error"
    } else {
        "unknown"
    }
}

/// The gRPC name of `code`, as `grpc.status` carries it (A66).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_reasons_map_to_the_a94_values() {
        for (error, reason) in [
            (
                "connection error: connection reset by peer (os error 104)",
                "connection reset",
            ),
            ("keepalive timed out", "connection timed out"),
            ("server sent GOAWAY (graceful shutdown)", "GOAWAY NO_ERROR"),
            ("broken pipe", "socket error"),
            ("connection closed", "unknown"),
            ("", "unknown"),
        ] {
            assert_eq!(disconnect_error(error), reason, "{error}");
        }
    }

    #[test]
    fn every_code_has_its_own_duration_slot() {
        for code in 0..17 {
            let code = tonic::Code::from_i32(code);
            assert!((code as usize) < 17, "{code:?}");
            assert!(
                code_name(code)
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_')
            );
        }
    }
}
