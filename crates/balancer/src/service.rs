//! The `Balancer` service: pick, wait, send, retry.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwap;
use discover::{Change, Endpoint};
use futures::Stream;
use http::HeaderMap;
use tokio::{
    sync::{oneshot, watch},
    time::Instant,
};
use tonic::{Status, body::Body};

use crate::{
    BackoffConfig, EndpointConfig, Fallback, Policy, ResponseBody, Sticky,
    body::Call,
    config::Config,
    error::{ErrorKind, status},
    metrics::Metrics,
    policy::{Candidate, PickRequest, PolicyHandle},
    replay::{self, Prepared, SendBody},
    set::{Owner, Slot, Snapshot},
    state::{EndpointShared, EndpointStatus, Outcome, Stats},
};

/// Boxed error, as tower services return them; tonic turns it into a
/// `Status` (ours are `Status` already).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC load balancer over READY endpoints — round robin, or the
/// [`Policy`] given to the [`Builder`] — with sticky requests, as a
/// `tower::Service` that tonic-generated clients take directly.
///
/// Cheap to clone; every clone shares the endpoint set and connections. The
/// connections close when the last clone is dropped. See the crate docs for an
/// example.
#[derive(Clone)]
pub struct Balancer {
    handle: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    // Dropped with the last `Balancer` clone: stops the owner task.
    _shutdown: oneshot::Sender<()>,
}

/// State shared by the owner task and every request.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) changed: watch::Sender<u64>,
    sticky_fallbacks: AtomicU64,
    retries: AtomicU64,
    pub(crate) ejections: AtomicU64,
    pub(crate) metrics: Metrics,
    /// Calls in flight over every endpoint (each endpoint's share is its
    /// [`Signals::outstanding`](crate::Signals::outstanding)): what the
    /// connections' write gate compares against.
    pub(crate) in_flight: Arc<AtomicU64>,
}

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
        Balancer {
            handle: Arc::new(Handle {
                shared,
                _shutdown: shutdown_tx,
            }),
        }
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

    /// The name given to the builder.
    pub fn name(&self) -> &str {
        &self.handle.shared.config.name
    }

    /// Every known endpoint with its state and counters.
    pub fn endpoints(&self) -> Vec<EndpointStatus> {
        let snapshot = self.handle.shared.snapshot.load();
        let mut all: Vec<_> = snapshot.all.iter().map(|e| e.status()).collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// The READY endpoints as policies see them now, with their live
    /// [`Signals`](crate::Signals) (outstanding requests, latency, failures).
    pub fn ready_endpoints(&self) -> Vec<Candidate> {
        self.handle.shared.snapshot.load().ready.clone()
    }

    /// How many endpoints are READY now.
    pub fn ready_count(&self) -> usize {
        self.handle.shared.snapshot.load().ready.len()
    }

    /// Balancer-wide counters.
    pub fn stats(&self) -> Stats {
        let shared = &self.handle.shared;
        Stats {
            sticky_fallbacks: shared.sticky_fallbacks.load(Ordering::Relaxed),
            retries: shared.retries.load(Ordering::Relaxed),
            ejections: shared.ejections.load(Ordering::Relaxed),
        }
    }

    /// Waits until `f` holds for the list of [`endpoints`](Self::endpoints);
    /// re-checked on every change of the set or of a connection's state.
    pub async fn wait_until(&self, mut f: impl FnMut(&[EndpointStatus]) -> bool) {
        let mut changes = self.handle.shared.changed.subscribe();
        loop {
            if f(&self.endpoints()) {
                return;
            }
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until at least `n` endpoints are READY.
    pub async fn wait_for_ready(&self, n: usize) {
        let mut changes = self.handle.shared.changed.subscribe();
        while self.ready_count() < n {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// Picks an endpoint the way a request with no headers or extensions
    /// would (advancing the round robin), without sending anything or
    /// waiting (a sticky instance or a ring-hash owner that is connecting
    /// is passed over, as for a request whose wait is over), and returns `f`
    /// of it; `None` when no endpoint is READY. Nothing is cloned unless `f`
    /// does. For benchmarks and diagnostics.
    pub fn pick_with<R>(
        &self,
        sticky: Option<&Sticky>,
        f: impl FnOnce(&Endpoint) -> R,
    ) -> Option<R> {
        let shared = &self.handle.shared;
        let snapshot = shared.snapshot.load();
        let request = PickRequest::none().with_connecting_wait_over(true);
        match shared.try_pick(&snapshot, &request, sticky, true) {
            Picked::Ready(ep) => Some(f(&ep.shared.endpoint)),
            _ => None,
        }
    }

    /// [`pick_with`](Self::pick_with) for the request whose head is
    /// `request`: its [`Sticky`] extension, and whatever the policy reads
    /// (e.g. a [`HashKey`](crate::HashKey)), count.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let balancer = etcdlb_balancer::Balancer::new(futures::stream::empty());
    /// let (head, ()) = http::Request::new(()).into_parts();
    /// assert_eq!(balancer.pick_for(&head, |e| e.addr().to_string()), None);
    /// # }
    /// ```
    pub fn pick_for<R>(
        &self,
        request: &http::request::Parts,
        f: impl FnOnce(&Endpoint) -> R,
    ) -> Option<R> {
        let shared = &self.handle.shared;
        let snapshot = shared.snapshot.load();
        let sticky = request.extensions.get::<Sticky>();
        let request = PickRequest::new(request).with_connecting_wait_over(true);
        match shared.try_pick(&snapshot, &request, sticky, true) {
            Picked::Ready(ep) => Some(f(&ep.shared.endpoint)),
            _ => None,
        }
    }

    /// [`pick_with`](Self::pick_with) returning a copy of the endpoint.
    pub fn pick(&self, sticky: Option<&Sticky>) -> Option<Endpoint> {
        self.pick_with(sticky, Endpoint::clone)
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("name", &self.name())
            .field("ready", &self.ready_count())
            .finish()
    }
}

impl tower_service::Service<http::Request<Body>> for Balancer {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Waiting for an endpoint happens per request, bounded by its own
        // deadline; an error here would reach the caller as a bare `Unknown`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The dispatch future itself is boxed, with no async block around
        // it: that would hold the request twice and double the copy made
        // when the future moves into its box.
        ResponseFuture {
            inner: Box::pin(self.handle.shared.clone().dispatch(request)),
        }
    }
}

/// The response future of [`Balancer`].
pub struct ResponseFuture {
    inner: Pin<Box<dyn Future<Output = Result<http::Response<ResponseBody>, BoxError>> + Send>>,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<ResponseBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}

/// The outcome of one pick attempt on a snapshot; borrows from it, so a
/// pick clones nothing until the caller decides to.
pub(crate) enum Picked<'a> {
    Ready(&'a Candidate),
    Wait(Waiting),
    Fail(Status),
}

/// Why a request is waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Waiting {
    NoReady,
    StickyConnecting,
    /// The policy chose an endpoint that is connecting (ring hash: the
    /// key's owner).
    PolicyConnecting,
}

impl Shared {
    async fn dispatch(
        self: Arc<Self>,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let deadline = grpc_timeout(request.headers());
        let (head, body) = request.into_parts();
        let sticky = head.extensions.get::<Sticky>();
        let pick_request = PickRequest::new(&head);
        let mut body = Prepared::new(body)?;
        let mut retries = 0;
        loop {
            let endpoint = self.pick(&pick_request, sticky, deadline).await?;
            let Some(attempt) = body.attempt() else {
                return Err(
                    status(ErrorKind::Internal, "request body lost between attempts").into(),
                );
            };
            endpoint.shared.picks.fetch_add(1, Ordering::Relaxed);
            endpoint.shared.metrics.picks.increment(1);
            let mut request = resend(&head, attempt);
            set_origin(&mut request, self.scheme(), &endpoint.shared.authority)?;
            let Candidate {
                shared,
                sender: Some(mut sender),
                ..
            } = endpoint
            else {
                return Err(
                    status(ErrorKind::Internal, "picked an endpoint with no connection").into(),
                );
            };
            let mut call = Call::start(shared.clone());
            let mut error = match sender.try_send_request(request).await {
                Ok(response) => {
                    // Time to headers, from the call's own start: one clock
                    // read fewer per call.
                    shared.record_latency(call.elapsed());
                    return Ok(respond(response, call, &shared));
                }
                Err(error) => error,
            };
            call.finish(Outcome::Transport);
            shared.failures.fetch_add(1, Ordering::Relaxed);
            shared.metrics.failures.increment(1);
            // Either hyper never wrote it (the request comes back whole), or
            // the server refused it unprocessed (GOAWAY / REFUSED_STREAM) and
            // the body is kept: both are safe to send elsewhere.
            let retryable = match error.take_message() {
                Some(unsent) => {
                    body.restore(unsent.into_body());
                    true
                }
                None => body.replayable() && replay::never_processed(error.error()),
            };
            let error = error.into_error();
            if !retryable {
                // It may have reached the server: not ours to retry.
                let status = transport_status(error, &shared.endpoint);
                return Err(shared.served_by.mark_status(status).into());
            }
            if retries >= self.config.max_retries {
                let status = status(
                    ErrorKind::NotProcessed,
                    format!(
                        "request to {} was not processed after {retries} retries: {error}",
                        self.config.name,
                    ),
                );
                return Err(shared.served_by.mark_status(status).into());
            }
            retries += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            self.metrics.retries.increment(1);
            tracing::debug!(
                endpoint = %shared.endpoint,
                error = %error,
                "request was not processed; retrying on another endpoint"
            );
        }
    }

    fn scheme(&self) -> http::uri::Scheme {
        if self.config.endpoint.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }

    /// Picks a READY endpoint, waiting for one if needed.
    async fn pick(
        &self,
        request: &PickRequest<'_>,
        sticky: Option<&Sticky>,
        deadline: Option<Duration>,
    ) -> Result<Candidate, Status> {
        // Fast path: one snapshot load, the picker (one atomic add for round
        // robin), no allocation.
        let fast = match self.try_pick(&self.snapshot.load(), request, sticky, false) {
            Picked::Ready(endpoint) => Some(endpoint.clone()),
            _ => None,
        };
        match fast {
            Some(endpoint) => Ok(endpoint),
            // Waiting (its timers and the watch) is boxed: inline, it would
            // make every call's future 400 bytes larger to allocate and move.
            None => Box::pin(self.pick_slow(request, sticky, deadline)).await,
        }
    }

    async fn pick_slow(
        &self,
        request: &PickRequest<'_>,
        sticky: Option<&Sticky>,
        deadline: Option<Duration>,
    ) -> Result<Candidate, Status> {
        let started = Instant::now();
        // Subscribe before looking, so no change is missed in between.
        let mut changes = self.changed.subscribe();
        let deadline_at = deadline.map(|d| started + d);
        let limit_at = self.config.ready_timeout.map(|d| started + d);
        let sticky_until = started + self.config.sticky_wait;
        loop {
            let sticky_expired = Instant::now() >= sticky_until;
            let request = request.with_connecting_wait_over(sticky_expired);
            let waiting =
                match self.try_pick(&self.snapshot.load(), &request, sticky, sticky_expired) {
                    Picked::Ready(endpoint) => return Ok(endpoint.clone()),
                    Picked::Fail(status) => return Err(status),
                    Picked::Wait(waiting) => waiting,
                };
            if self.config.fail_fast && waiting == Waiting::NoReady {
                return Err(status(
                    ErrorKind::NoReadyEndpoint,
                    self.describe(waiting, sticky, None),
                ));
            }
            let mut wake = earliest(deadline_at, limit_at);
            if matches!(
                waiting,
                Waiting::StickyConnecting | Waiting::PolicyConnecting
            ) && !sticky_expired
            {
                wake = earliest(wake, Some(sticky_until));
            }
            tokio::select! {
                changed = changes.changed() => {
                    if changed.is_err() {
                        return Err(status(ErrorKind::Shutdown, format!("balancer for {} was shut down", self.config.name)));
                    }
                }
                () = sleep_until(wake) => {
                    let now = Instant::now();
                    let message = self.describe(waiting, sticky, Some(now - started));
                    if deadline_at.is_some_and(|d| now >= d) {
                        return Err(status(ErrorKind::DeadlineExceeded, message));
                    }
                    if limit_at.is_some_and(|d| now >= d) {
                        return Err(status(ErrorKind::NoReadyEndpoint, message));
                    }
                    // Otherwise the sticky wait is over: loop, and fall back.
                }
            }
        }
    }

    pub(crate) fn try_pick<'a>(
        &self,
        snapshot: &'a Snapshot,
        request: &PickRequest<'_>,
        sticky: Option<&Sticky>,
        sticky_expired: bool,
    ) -> Picked<'a> {
        if let Some(sticky) = sticky {
            let slot = snapshot.instances.get(sticky.key().as_ref()).copied();
            match slot {
                Some(Slot::Ready(i)) => {
                    let endpoint = &snapshot.ready[i];
                    if endpoint.pickable() {
                        return Picked::Ready(endpoint);
                    }
                    if !sticky_expired {
                        return Picked::Wait(Waiting::StickyConnecting);
                    }
                }
                Some(Slot::Connecting) if !sticky_expired => {
                    return Picked::Wait(Waiting::StickyConnecting);
                }
                // A fresh client: nothing discovered yet, so the instance may
                // well exist. Wait for the first endpoints before judging.
                None if !snapshot.discovered || snapshot.all.is_empty() => {
                    return Picked::Wait(Waiting::NoReady);
                }
                _ => {}
            }
            match self.config.fallback {
                Fallback::Fail => {
                    let why = match slot {
                        None => "unknown",
                        Some(Slot::Failed) => "in transient failure",
                        _ => "not ready",
                    };
                    return Picked::Fail(status(
                        ErrorKind::StickyUnavailable,
                        format!(
                            "sticky instance {:?} of {} is {why}",
                            sticky.id(),
                            self.config.name
                        ),
                    ));
                }
                Fallback::RoundRobin => {
                    let endpoint = match policy_pick(snapshot, request) {
                        Ok(endpoint) => endpoint,
                        Err(waiting) => return Picked::Wait(waiting),
                    };
                    self.sticky_fallbacks.fetch_add(1, Ordering::Relaxed);
                    self.metrics.sticky_fallbacks.increment(1);
                    tracing::debug!(
                        instance = sticky.id(),
                        endpoint = %endpoint.shared.endpoint,
                        policy = self.config.policy.0.name(),
                        "sticky instance unavailable; fell back to the policy"
                    );
                    return Picked::Ready(endpoint);
                }
            }
        }
        match policy_pick(snapshot, request) {
            Ok(endpoint) => Picked::Ready(endpoint),
            Err(waiting) => Picked::Wait(waiting),
        }
    }

    fn describe(
        &self,
        waiting: Waiting,
        sticky: Option<&Sticky>,
        waited: Option<Duration>,
    ) -> String {
        let snapshot = self.snapshot.load();
        let after = waited
            .map(|d| format!(" after {d:.1?}"))
            .unwrap_or_default();
        let name = &self.config.name;
        match (waiting, sticky) {
            (Waiting::StickyConnecting, Some(sticky)) => format!(
                "sticky instance {:?} of {name} still connecting{after}",
                sticky.id()
            ),
            (Waiting::PolicyConnecting, _) => format!(
                "the endpoint of {name} that {} chose for this request is still connecting{after}",
                self.config.policy.0.name()
            ),
            _ if !snapshot.discovered => format!("no endpoint discovered for {name}{after}"),
            _ => {
                let excluded = match snapshot.excluded {
                    0 => String::new(),
                    n => format!(", {n} not picked (suspected, ejected or not serving)"),
                };
                format!(
                    "no ready endpoint for {name}{after}: {} known, {} connecting, {} in transient failure{excluded}",
                    snapshot.all.len(),
                    snapshot.connecting,
                    snapshot.failed
                )
            }
        }
    }
}

/// The policy's pick in `snapshot`, or why the request must wait.
#[inline]
fn policy_pick<'a>(
    snapshot: &'a Snapshot,
    request: &PickRequest<'_>,
) -> Result<&'a Candidate, Waiting> {
    let candidates = snapshot.candidates();
    let i = snapshot
        .picker
        .pick(request, candidates)
        .ok_or(Waiting::NoReady)?;
    let n = candidates.len();
    if n == 0 {
        return Err(Waiting::NoReady);
    }
    let chosen = &candidates[i % n];
    if chosen.pickable() {
        return Ok(chosen);
    }
    if chosen.is_connecting() {
        return Err(Waiting::PolicyConnecting);
    }
    // A closed connection may still be in the snapshot for a moment after it
    // died (or, under `Scope::All`, the policy chose one in transient
    // failure): take the next one rather than fail the request.
    (1..=n)
        .map(|k| &candidates[(i % n).wrapping_add(k) % n])
        .find(|endpoint| endpoint.pickable())
        .ok_or(Waiting::NoReady)
}

/// The response as the caller gets it: its body keeps the call counted
/// until it ends, and it names the endpoint that served it.
fn respond(
    response: http::Response<hyper::body::Incoming>,
    call: Call,
    shared: &EndpointShared,
) -> http::Response<ResponseBody> {
    let (mut head, body) = response.into_parts();
    let body = ResponseBody::new(body, call, &mut head.headers);
    head.extensions.insert(shared.served_by.clone());
    http::Response::from_parts(head, body)
}

/// A request for one attempt. Extensions stay behind: they are not sent, and
/// the ones we read (`Sticky`, the deadline) were read already.
fn resend(head: &http::request::Parts, body: SendBody) -> http::Request<SendBody> {
    let mut request = http::Request::new(body);
    *request.method_mut() = head.method.clone();
    *request.uri_mut() = head.uri.clone();
    *request.version_mut() = head.version;
    *request.headers_mut() = head.headers.clone();
    request
}

/// The status of a call that failed in transport. gRPC reports a broken
/// connection as `UNAVAILABLE` (tonic would say `Unknown`); a stream reset by
/// the server keeps the code its reason maps to.
fn transport_status(error: hyper::Error, endpoint: &Endpoint) -> Status {
    // The causes, e.g. "connection error: server frozen: …": hyper's own
    // message alone does not say why.
    let mut why = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !why.ends_with(&cause_text) {
            why = format!("{why}: {cause_text}");
        }
        source = cause.source();
    }
    let from_hyper = Status::from_error(Box::new(error));
    if from_hyper.code() == tonic::Code::Unknown {
        status(
            ErrorKind::ConnectionLost,
            format!(
                "connection to {} failed during the call: {why}",
                endpoint.addr(),
            ),
        )
    } else {
        from_hyper
    }
}

/// tonic's generated clients send path-only URIs; HTTP/2 needs `:scheme` and
/// `:authority` as well.
pub(crate) fn set_origin(
    request: &mut http::Request<SendBody>,
    scheme: http::uri::Scheme,
    authority: &http::uri::Authority,
) -> Result<(), BoxError> {
    let mut parts = std::mem::take(request.uri_mut()).into_parts();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *request.uri_mut() = http::Uri::from_parts(parts)?;
    Ok(())
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The request's deadline from its `grpc-timeout` header (`<n><unit>`).
pub(crate) fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", v.parse().expect("header value"));
        h
    }

    #[test]
    fn grpc_timeout_units_parse() {
        assert_eq!(grpc_timeout(&headers("5S")), Some(Duration::from_secs(5)));
        assert_eq!(
            grpc_timeout(&headers("100m")),
            Some(Duration::from_millis(100))
        );
        assert_eq!(grpc_timeout(&headers("2M")), Some(Duration::from_secs(120)));
        assert_eq!(
            grpc_timeout(&headers("1H")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(grpc_timeout(&headers("7u")), Some(Duration::from_micros(7)));
        assert_eq!(grpc_timeout(&headers("9n")), Some(Duration::from_nanos(9)));
    }

    #[test]
    fn malformed_grpc_timeout_is_ignored() {
        for bad in ["", "S", "5", "5x", "123456789S", "-1S"] {
            assert_eq!(grpc_timeout(&headers(bad)), None, "{bad:?}");
        }
    }
}
