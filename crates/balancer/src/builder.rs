//! [`Builder`]: every setting of a [`Balancer`], with its default.

use std::{
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use arc_swap::ArcSwap;
use discover::Change;
use futures::Stream;
use tokio::sync::{oneshot, watch};

use crate::{
    BackoffConfig, Balancer, EndpointConfig, Fallback, Policy, config::Config, metrics::Metrics,
    policy::PolicyHandle, set::Owner, shared::Shared, snapshot::Snapshot,
};

/// Builds a [`Balancer`]; every setting has a default (see each method).
#[derive(Clone, Debug, Default)]
pub struct Builder {
    config: Config,
}

impl Builder {
    /// Name used in errors and logs, e.g. the etcd prefix
    /// `discovery/dev/game`. Default `balancer`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How requests are spread over the READY endpoints: [`RoundRobin`]
    /// (the default), [`LeastRequest`], [`RingHash`], or a policy of your
    /// own (see [`Policy`]). A [`Sticky`] request goes to its instance
    /// whatever the policy.
    ///
    /// ```
    /// let builder = etcdlb_balancer::Balancer::builder().policy(etcdlb_balancer::LeastRequest::new());
    /// ```
    ///
    /// [`RoundRobin`]: crate::RoundRobin
    /// [`LeastRequest`]: crate::LeastRequest
    /// [`RingHash`]: crate::RingHash
    pub fn policy(mut self, policy: impl Policy) -> Self {
        self.config.policy = PolicyHandle(Arc::new(policy));
        self
    }

    /// What sticky requests do when their instance is unavailable. Default
    /// [`Fallback::RoundRobin`] (the policy picks).
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.config.fallback = fallback;
        self
    }

    /// With no READY endpoint, fail at once with `UNAVAILABLE` instead of
    /// waiting. Default `false` (wait, like gRPC's wait-for-ready).
    pub fn fail_fast(mut self, fail_fast: bool) -> Self {
        self.config.fail_fast = fail_fast;
        self
    }

    /// The longest a request waits for a READY endpoint, on top of its own
    /// deadline (`grpc-timeout`). Default: no limit but the deadline.
    pub fn ready_timeout(mut self, limit: Duration) -> Self {
        self.config.ready_timeout = Some(limit);
        self
    }

    /// How long a sticky request waits for its instance while that instance
    /// is connecting, before the fallback applies. Default 5 s.
    pub fn sticky_wait(mut self, wait: Duration) -> Self {
        self.config.sticky_wait = wait;
        self
    }

    /// How many times a request that was never sent is retried on another
    /// endpoint. Default 3.
    pub fn max_retries(mut self, retries: usize) -> Self {
        self.config.max_retries = retries;
        self
    }

    /// Per-endpoint connection settings. Default [`EndpointConfig::default`].
    pub fn endpoint_config(mut self, config: EndpointConfig) -> Self {
        self.config.endpoint = config;
        self
    }

    /// Shorthand for the backoff in [`EndpointConfig`].
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.config.endpoint.backoff = backoff;
        self
    }

    /// Shorthand for the connect timeout in [`EndpointConfig`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.endpoint.connect_timeout = timeout;
        self
    }

    /// Shorthand for the frozen-server detection in [`EndpointConfig`];
    /// `None` turns it off. Default on.
    pub fn freeze_detection(mut self, detection: Option<crate::FreezeDetection>) -> Self {
        self.config.endpoint.freeze_detection = detection;
        self
    }

    /// Client-side health checking of `service` (`""`: the whole server)
    /// on every connection; see [`EndpointConfig::health_check`]. Default off.
    pub fn health_check(mut self, service: impl Into<String>) -> Self {
        self.config.endpoint.health_check = Some(service.into());
        self
    }

    /// Outlier ejection (gRFC A50 style): endpoints whose calls fail far
    /// more than the others', or several times in a row, are not picked for
    /// a while. Default on with [`OutlierDetection::default`](crate::OutlierDetection);
    /// `None` turns it off.
    pub fn outlier_detection(mut self, detection: Option<crate::OutlierDetection>) -> Self {
        self.config.outlier = detection;
        self
    }

    /// Starts the balancer over a stream of endpoint changes.
    ///
    /// The stream may end: the balancer then keeps the last set.
    ///
    /// # Panics
    /// Outside a tokio runtime (it spawns the task that owns the set).
    pub fn build<S>(self, discovery: S) -> Balancer
    where
        S: Stream<Item = Change> + Send + 'static,
    {
        let (changed, _) = watch::channel(0);
        let metrics = Metrics::new(&self.config.name);
        let shared = Arc::new(Shared {
            config: self.config,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            changed,
            sticky_fallbacks: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            ejections: AtomicU64::new(0),
            metrics,
            in_flight: Arc::default(),
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        tokio::spawn(Owner::new(shared.clone()).run(discovery, shutdown_rx));
        Balancer::start(shared, shutdown_tx)
    }
}

impl Balancer {
    /// A builder with every default.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// A balancer with every default over `discovery`.
    ///
    /// # Panics
    /// Outside a tokio runtime.
    pub fn new<S>(discovery: S) -> Self
    where
        S: Stream<Item = Change> + Send + 'static,
    {
        Builder::default().build(discovery)
    }
}
