//! [`Balancer`]: the tower `Service` (each call is dispatched by
//! `dispatch.rs`) and what it tells about its endpoints.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use discover::Endpoint;
use tokio::sync::oneshot;
use tonic::body::Body;

use crate::{
    ResponseBody, Sticky,
    http::BoxError,
    pick::Picked,
    policy::{Candidate, PickRequest},
    shared::Shared,
    state::{EndpointStatus, Stats},
};

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

impl Balancer {
    /// The handle over a started owner task; dropping the last clone
    /// sends on `shutdown`, which stops it.
    pub(crate) fn start(shared: Arc<Shared>, shutdown: oneshot::Sender<()>) -> Self {
        Self {
            handle: Arc::new(Handle {
                shared,
                _shutdown: shutdown,
            }),
        }
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
