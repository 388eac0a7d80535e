//! Settings, with their defaults documented in one place.

use std::time::Duration;

/// What a sticky request does when its instance is unknown, failed, or still
/// connecting after [`Builder::sticky_wait`](crate::Builder::sticky_wait).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Go wherever the balancer's [`Policy`](crate::Policy) picks, like any
    /// request without [`Sticky`](crate::Sticky): round robin unless another
    /// policy is configured (the Go seed's behaviour).
    #[default]
    RoundRobin,
    /// Fail with `UNAVAILABLE`, naming the instance id.
    Fail,
}

/// gRPC connection backoff ("connection-backoff.md"): the delay before the
/// n-th retry is `min(base * multiplier^n, max)`, spread by ±`jitter`.
///
/// The delays are computed by the workspace's one backoff (the `backoff`
/// crate); this struct converts to and from [`backoff::Backoff`], whose
/// [`GRPC_CONNECTION`](backoff::Backoff::GRPC_CONNECTION) preset is the
/// default.
///
/// ```
/// use std::time::Duration;
/// use etcdlb_balancer::BackoffConfig;
///
/// let fast = BackoffConfig { base: Duration::from_millis(50), ..BackoffConfig::default() };
/// assert_eq!(fast.multiplier, 1.6);
/// assert_eq!(BackoffConfig::default(), backoff::Backoff::GRPC_CONNECTION.into());
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BackoffConfig {
    /// First delay. Default 1 s.
    pub base: Duration,
    /// Growth per failed attempt. Default 1.6.
    pub multiplier: f64,
    /// Relative spread, 0.2 = ±20 %. Default 0.2.
    pub jitter: f64,
    /// Upper bound. Default 120 s.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        backoff::Backoff::GRPC_CONNECTION.into()
    }
}

impl BackoffConfig {
    /// A failure counter over this backoff (the one implementation of the
    /// workspace, the `backoff` crate).
    pub(crate) fn attempts(self) -> backoff::Attempts {
        backoff::Backoff::from(self).attempts()
    }
}

impl From<BackoffConfig> for backoff::Backoff {
    fn from(c: BackoffConfig) -> Self {
        Self {
            base: c.base,
            factor: c.multiplier,
            max: c.max,
            jitter: c.jitter,
        }
    }
}

impl From<backoff::Backoff> for BackoffConfig {
    /// E.g. `BackoffConfig::from(backoff::Backoff::GRPC_CONNECTION)`, the
    /// default.
    fn from(b: backoff::Backoff) -> Self {
        Self {
            base: b.base,
            multiplier: b.factor,
            jitter: b.jitter,
            max: b.max,
        }
    }
}

/// Per-endpoint connection settings.
#[derive(Clone, Debug)]
pub struct EndpointConfig {
    /// Minimum time a connection attempt may take (gRPC's
    /// `MIN_CONNECT_TIMEOUT`); an attempt gets `max(connect_timeout,
    /// current backoff)`. Default 20 s.
    pub connect_timeout: Duration,
    /// Reconnect backoff. Default: gRPC's (1 s, ×1.6, jitter 0.2, max 120 s).
    pub backoff: BackoffConfig,
    /// HTTP/2 PING interval, to detect a frozen server. Default `None`: like
    /// grpc-go clients, no pings (grpc-go servers reject pings more often than
    /// every 5 minutes by default).
    pub keep_alive_interval: Option<Duration>,
    /// How long to wait for a PING acknowledgement. Default 20 s.
    pub keep_alive_timeout: Duration,
    /// HTTP/2 initial stream window. Default `None`: hyper's default.
    pub initial_stream_window_size: Option<u32>,
    /// HTTP/2 initial connection window. Default `None`: hyper's default.
    pub initial_connection_window_size: Option<u32>,
    /// TLS for every connection. Default `None`: plaintext (h2c).
    pub tls: Option<crate::TlsConfig>,
    /// Frozen-server detection: a server with calls in flight that sends
    /// nothing for a while is suspected (no new calls) and probed with a
    /// PING, within grpc-go servers' ping limits; no answer, and the
    /// connection is treated as dead. Default on, with
    /// [`FreezeDetection::default`](crate::FreezeDetection); `None` turns it off.
    pub freeze_detection: Option<crate::FreezeDetection>,
    /// Client-side health checking: the service name to watch with
    /// `grpc.health.v1.Health/Watch` on every connection (`""` is the whole
    /// server). An endpoint is picked only while it reports SERVING; a
    /// server without the health service is treated as healthy. Default
    /// `None` (off).
    pub health_check: Option<String>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(20),
            backoff: BackoffConfig::default(),
            keep_alive_interval: None,
            keep_alive_timeout: Duration::from_secs(20),
            initial_stream_window_size: None,
            initial_connection_window_size: None,
            tls: None,
            freeze_detection: Some(crate::FreezeDetection::default()),
            health_check: None,
        }
    }
}

/// Balancer-wide settings; see [`Builder`](crate::Builder) for each one.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) name: String,
    pub(crate) fallback: Fallback,
    pub(crate) fail_fast: bool,
    pub(crate) ready_timeout: Option<Duration>,
    pub(crate) sticky_wait: Duration,
    pub(crate) max_retries: usize,
    pub(crate) endpoint: EndpointConfig,
    pub(crate) policy: crate::policy::PolicyHandle,
    pub(crate) outlier: Option<crate::OutlierDetection>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            name: "balancer".to_string(),
            fallback: Fallback::RoundRobin,
            fail_fast: false,
            ready_timeout: None,
            sticky_wait: Duration::from_secs(5),
            max_retries: 3,
            endpoint: EndpointConfig::default(),
            policy: crate::policy::PolicyHandle::default(),
            outlier: Some(crate::OutlierDetection::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_grpcs_connection_backoff_and_min_connect_timeout() {
        let c = EndpointConfig::default();
        assert_eq!(c.connect_timeout, Duration::from_secs(20));
        let b = c.backoff;
        assert_eq!(
            (b.base, b.multiplier, b.jitter, b.max),
            (Duration::from_secs(1), 1.6, 0.2, Duration::from_secs(120))
        );
        // The shared implementation sees the same numbers.
        let mut attempts = b.attempts();
        assert_eq!(attempts.current(), Duration::from_secs(1));
        let first = attempts.next_delay();
        assert!(first >= Duration::from_millis(800) && first <= Duration::from_millis(1200));
        assert_eq!(attempts.current(), Duration::from_millis(1600));
        assert_eq!(BackoffConfig::from(backoff::Backoff::from(b)), b);
    }
}
