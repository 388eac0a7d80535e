//! Load-balancing policies: what chooses among the READY endpoints.
//!
//! A [`Policy`] is asked, in the task that owns the endpoint set and never on
//! the request path, to build a [`Picker`] each time the set of pickable
//! endpoints changes. The picker is immutable (interior atomics aside) and is
//! called for every request with the request and that same slice of
//! endpoints. The built-in policies ([`RoundRobin`], the default,
//! [`LeastRequest`](crate::LeastRequest), [`RingHash`](crate::RingHash)) are
//! written against these same traits; nothing is privileged.
//!
//! A [`Sticky`](crate::Sticky) request never reaches the picker while its
//! instance is available: it goes to that instance (see
//! [`Fallback`](crate::Fallback)); every other request is the policy's.

use std::{
    fmt,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use discover::Endpoint;

use crate::{connection::Sender, signals::Signals, state::EndpointShared};

/// Builds a [`Picker`] for each new set of pickable endpoints.
///
/// `build` runs in the balancer's owner task whenever the endpoints that may
/// be picked change (one connects or drops, is added or removed);
/// it may take its time (a ring of virtual nodes, an index by zone), since no
/// request waits for it: requests keep using the previous picker until the
/// new one is published.
///
/// A policy that prefers the client's zone and otherwise round-robins, the
/// whole of it:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use balancer::{PickRequest, Picker, Policy, ReadyEndpoint};
///
/// struct SameZone(String);
///
/// struct SameZonePicker { local: Vec<usize>, next: AtomicUsize }
///
/// impl Policy for SameZone {
///     fn build(&self, ready: &[ReadyEndpoint]) -> Box<dyn Picker> {
///         let local = (0..ready.len())
///             .filter(|&i| ready[i].endpoint().metadata()["zone"] == self.0.as_str())
///             .collect();
///         Box::new(SameZonePicker { local, next: AtomicUsize::new(0) })
///     }
/// }
///
/// impl Picker for SameZonePicker {
///     fn pick(&self, _: &PickRequest<'_>, ready: &[ReadyEndpoint]) -> Option<usize> {
///         let n = self.next.fetch_add(1, Ordering::Relaxed);
///         match self.local.len() {
///             0 if ready.is_empty() => None,
///             0 => Some(n % ready.len()),
///             local => Some(self.local[n % local]),
///         }
///     }
/// }
///
/// # async fn run() {
/// let balancer = balancer::Balancer::builder()
///     .policy(SameZone("eu-1".into()))
///     .build(futures::stream::empty());
/// # }
/// ```
pub trait Policy: Send + Sync + 'static {
    /// A picker over `ready`: the endpoints that may be picked (READY), in
    /// the order the picker's `pick` will see them.
    fn build(&self, ready: &[ReadyEndpoint]) -> Box<dyn Picker>;

    /// A short name for logs and `Debug` (e.g. `round-robin`).
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

impl Policy for Box<dyn Policy> {
    fn build(&self, ready: &[ReadyEndpoint]) -> Box<dyn Picker> {
        (**self).build(ready)
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}

impl Policy for Arc<dyn Policy> {
    fn build(&self, ready: &[ReadyEndpoint]) -> Box<dyn Picker> {
        (**self).build(ready)
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}

/// Chooses the endpoint for one request; built by a [`Policy`].
///
/// Called on the request path, concurrently from every task sending: keep it
/// to a few loads and atomic operations, no locks, no allocation.
pub trait Picker: Send + Sync + 'static {
    /// The index in `ready` (the slice given to [`Policy::build`]) of the
    /// endpoint for `request`. An index past the end is taken modulo the
    /// length. `None` means no endpoint is acceptable: the request waits for
    /// the next change of the set (bounded by its deadline).
    ///
    /// If the chosen endpoint's connection closed since the picker was
    /// built, the balancer takes the next pickable one after it in `ready`.
    fn pick(&self, request: &PickRequest<'_>, ready: &[ReadyEndpoint]) -> Option<usize>;
}

/// The request being balanced, as a [`Picker`] sees it; borrowed, nothing is
/// copied.
///
/// ```
/// let (parts, ()) = http::Request::post("/echo.Echo/UnaryEcho").body(()).unwrap().into_parts();
/// let request = balancer::PickRequest::new(&parts);
/// assert_eq!(request.path(), "/echo.Echo/UnaryEcho");
/// ```
#[derive(Clone, Copy)]
pub struct PickRequest<'a> {
    parts: &'a http::request::Parts,
}

/// What [`Balancer::pick_with`](crate::Balancer::pick_with) shows a picker:
/// a request with no path, headers or extensions.
static NO_REQUEST: LazyLock<http::request::Parts> =
    LazyLock::new(|| http::Request::new(()).into_parts().0);

impl<'a> PickRequest<'a> {
    /// The request whose head is `parts`.
    pub fn new(parts: &'a http::request::Parts) -> Self {
        Self { parts }
    }

    /// A request with nothing in it.
    pub(crate) fn none() -> PickRequest<'static> {
        PickRequest { parts: &NO_REQUEST }
    }

    /// The gRPC method's path, e.g. `/echo.Echo/UnaryEcho`.
    pub fn path(&self) -> &'a str {
        self.parts.uri.path()
    }

    /// The request's headers (its gRPC metadata).
    pub fn headers(&self) -> &'a http::HeaderMap {
        &self.parts.headers
    }

    /// The request's extensions (e.g. a [`HashKey`](crate::HashKey) or
    /// [`Sticky`](crate::Sticky)).
    pub fn extensions(&self) -> &'a http::Extensions {
        &self.parts.extensions
    }
}

impl fmt::Debug for PickRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PickRequest")
            .field("path", &self.path())
            .finish_non_exhaustive()
    }
}

/// A pickable endpoint (READY) with its signals, as policies see it. It is the balancer's own snapshot entry: showing it to a policy
/// costs nothing.
#[derive(Clone)]
pub struct ReadyEndpoint {
    pub(crate) shared: Arc<EndpointShared>,
    pub(crate) sender: Sender,
}

impl ReadyEndpoint {
    /// Address, instance id and metadata.
    pub fn endpoint(&self) -> &Endpoint {
        &self.shared.endpoint
    }

    /// The key the endpoint was inserted under.
    pub fn key(&self) -> &str {
        &self.shared.key
    }

    /// Live counters of this endpoint's calls (outstanding requests,
    /// latency, failures).
    pub fn signals(&self) -> &Signals {
        &self.shared.signals
    }

    /// Whether a request may be sent on it now: its connection is still
    /// open (the snapshot may be a moment old).
    #[inline]
    pub(crate) fn pickable(&self) -> bool {
        !self.sender.is_closed()
    }
}

impl fmt::Debug for ReadyEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadyEndpoint")
            .field("endpoint", self.endpoint())
            .field("outstanding", &self.signals().outstanding())
            .finish()
    }
}

/// Round robin from a random start: the default policy.
///
/// Each picker starts at a random position (so many clients do not all
/// begin on one server) and then takes the endpoints in turn, one atomic
/// increment per pick; over any run of picks within one set, every endpoint
/// gets the same number, ±1.
///
/// ```
/// let builder = balancer::Balancer::builder().policy(balancer::RoundRobin);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundRobin;

impl Policy for RoundRobin {
    fn build(&self, _ready: &[ReadyEndpoint]) -> Box<dyn Picker> {
        Box::new(RoundRobinPicker {
            next: AtomicUsize::new(fastrand::usize(..)),
        })
    }

    fn name(&self) -> &str {
        "round-robin"
    }
}

struct RoundRobinPicker {
    next: AtomicUsize,
}

impl Picker for RoundRobinPicker {
    #[inline]
    fn pick(&self, _request: &PickRequest<'_>, ready: &[ReadyEndpoint]) -> Option<usize> {
        match ready.len() {
            0 => None,
            n => Some(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

/// The picker of an empty set.
pub(crate) struct NoEndpoint;

impl Picker for NoEndpoint {
    fn pick(&self, _request: &PickRequest<'_>, _ready: &[ReadyEndpoint]) -> Option<usize> {
        None
    }
}

/// The configured policy, printable for `Builder`'s `Debug`.
#[derive(Clone)]
pub(crate) struct PolicyHandle(pub(crate) Arc<dyn Policy>);

impl Default for PolicyHandle {
    fn default() -> Self {
        Self(Arc::new(RoundRobin))
    }
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}
