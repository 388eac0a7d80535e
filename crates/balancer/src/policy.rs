//! Load-balancing policies: what chooses among the endpoints.
//!
//! A [`Policy`] is asked, in the task that owns the endpoint set and never on
//! the request path, to build a [`Picker`] each time the set of endpoints it
//! sees changes: the READY ones (the default, [`Scope::Ready`]), or every
//! known one with its connectivity state ([`Scope::All`], what ring hash
//! needs so that a key's owner does not depend on which connections happen
//! to be up). The picker is immutable (interior atomics aside) and is
//! called for every request with the request and the current slice of
//! those endpoints ([`Candidate`]s). The built-in policies ([`RoundRobin`], the default,
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

use crate::{
    connectivity::ConnectivityState, http::Sender, signals::Signals, state::EndpointShared,
};

/// Builds a [`Picker`] for each new set of endpoints.
///
/// `build` runs in the balancer's owner task whenever the endpoints the
/// policy sees change: under [`Scope::Ready`] (the default) when one
/// connects or drops, is added or removed; under [`Scope::All`] only when
/// one is added or removed (their states change under the picker, which
/// reads them on each pick with [`Candidate::is_ready`] and friends);
/// it may take its time (a ring of virtual nodes, an index by zone), since no
/// request waits for it: requests keep using the previous picker until the
/// new one is published.
///
/// A policy that prefers the client's zone and otherwise round-robins, the
/// whole of it:
///
/// ```
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use etcdlb_balancer::{Candidate, PickRequest, Picker, Policy};
///
/// struct SameZone(String);
///
/// struct SameZonePicker { local: Vec<usize>, next: AtomicUsize }
///
/// impl Policy for SameZone {
///     fn build(&self, ready: &[Candidate]) -> Box<dyn Picker> {
///         let local = (0..ready.len())
///             .filter(|&i| ready[i].endpoint().metadata()["zone"] == self.0.as_str())
///             .collect();
///         Box::new(SameZonePicker { local, next: AtomicUsize::new(0) })
///     }
/// }
///
/// impl Picker for SameZonePicker {
///     fn pick(&self, _: &PickRequest<'_>, ready: &[Candidate]) -> Option<usize> {
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
/// let balancer = etcdlb_balancer::Balancer::builder()
///     .policy(SameZone("eu-1".into()))
///     .build(futures::stream::empty());
/// # }
/// ```
pub trait Policy: Send + Sync + 'static {
    /// A picker over `candidates`, in the order the picker's `pick` will see
    /// them: the READY endpoints under [`Scope::Ready`], every known endpoint
    /// sorted by key under [`Scope::All`].
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker>;

    /// Which endpoints the picker sees. Default [`Scope::Ready`].
    fn scope(&self) -> Scope {
        Scope::Ready
    }

    /// A short name for logs and `Debug` (e.g. `round-robin`).
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }
}

/// Which endpoints a [`Policy`] builds its picker over and picks among.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scope {
    /// The READY endpoints that are not excluded (suspected frozen, ejected,
    /// not serving): every candidate can take a request at once. Round robin
    /// and least request.
    #[default]
    Ready,
    /// Every known endpoint, whatever its state, sorted by key; the picker
    /// is rebuilt only when endpoints are added or removed. Picking a
    /// candidate that is connecting ([`Candidate::is_connecting`]) makes the
    /// request wait for it (bounded by its deadline and
    /// [`Builder::sticky_wait`](crate::Builder::sticky_wait), after which
    /// [`PickRequest::connecting_wait_over`] is true); picking one in
    /// transient failure or excluded sends the request to the next READY
    /// candidate in the slice. Ring hash.
    All,
}

impl Policy for Box<dyn Policy> {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        (**self).build(candidates)
    }

    fn scope(&self) -> Scope {
        (**self).scope()
    }

    fn name(&self) -> &str {
        (**self).name()
    }
}

impl Policy for Arc<dyn Policy> {
    fn build(&self, candidates: &[Candidate]) -> Box<dyn Picker> {
        (**self).build(candidates)
    }

    fn scope(&self) -> Scope {
        (**self).scope()
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
    /// The index in `candidates` (the endpoints given to [`Policy::build`],
    /// with their current states) of the endpoint for `request`. An index
    /// past the end is taken modulo the length. `None` means no endpoint is
    /// acceptable: the request waits for the next change of the set (bounded
    /// by its deadline).
    ///
    /// If the chosen endpoint's connection closed since the picker was
    /// built, or (under [`Scope::All`]) it is in transient failure or
    /// excluded, the balancer takes the next pickable one after it in
    /// `candidates`; if it is connecting, the request waits for it.
    fn pick(&self, request: &PickRequest<'_>, candidates: &[Candidate]) -> Option<usize>;
}

/// The request being balanced, as a [`Picker`] sees it; borrowed, nothing is
/// copied.
///
/// ```
/// let (parts, ()) = http::Request::post("/echo.Echo/UnaryEcho").body(()).unwrap().into_parts();
/// let request = etcdlb_balancer::PickRequest::new(&parts);
/// assert_eq!(request.path(), "/echo.Echo/UnaryEcho");
/// ```
#[derive(Clone, Copy)]
pub struct PickRequest<'a> {
    parts: &'a http::request::Parts,
    connecting_wait_over: bool,
}

/// What [`Balancer::pick_with`](crate::Balancer::pick_with) shows a picker:
/// a request with no path, headers or extensions.
static NO_REQUEST: LazyLock<http::request::Parts> =
    LazyLock::new(|| http::Request::new(()).into_parts().0);

impl<'a> PickRequest<'a> {
    /// The request whose head is `parts`.
    pub fn new(parts: &'a http::request::Parts) -> Self {
        Self {
            parts,
            connecting_wait_over: false,
        }
    }

    /// A request with nothing in it.
    pub(crate) fn none() -> PickRequest<'static> {
        PickRequest::new(&NO_REQUEST)
    }

    /// This request as it is picked for once it has waited for a
    /// connecting endpoint as long as it may (`over`), or before.
    #[must_use]
    pub fn with_connecting_wait_over(mut self, over: bool) -> Self {
        self.connecting_wait_over = over;
        self
    }

    /// Whether this request has waited as long as it may for a connecting
    /// endpoint ([`Builder::sticky_wait`](crate::Builder::sticky_wait)): a
    /// [`Scope::All`] picker should then choose among READY candidates only.
    /// Always `false` on a request's first pick.
    pub fn connecting_wait_over(&self) -> bool {
        self.connecting_wait_over
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

/// An endpoint as policies see it: its address, instance id and metadata,
/// its signals, and (under [`Scope::All`]) its connectivity state when the
/// set was last published. It is the balancer's own snapshot entry: showing
/// it to a policy costs nothing.
#[derive(Clone)]
pub struct Candidate {
    pub(crate) shared: Arc<EndpointShared>,
    /// The connection's sender, when READY.
    pub(crate) sender: Option<Sender>,
    pub(crate) state: ConnectivityState,
    /// READY but not to be picked (suspected frozen, ejected, not serving).
    pub(crate) excluded: bool,
}

impl Candidate {
    /// A READY, pickable candidate.
    pub(crate) fn ready(shared: Arc<EndpointShared>, sender: Sender) -> Self {
        Self {
            shared,
            sender: Some(sender),
            state: ConnectivityState::Ready,
            excluded: false,
        }
    }

    /// The connectivity state of its connection.
    pub fn state(&self) -> ConnectivityState {
        self.state
    }

    /// READY and not excluded: a request picked for it is sent at once.
    /// Always true under [`Scope::Ready`].
    #[inline]
    pub fn is_ready(&self) -> bool {
        self.state == ConnectivityState::Ready && !self.excluded
    }

    /// IDLE or CONNECTING: a request picked for it waits until it is READY
    /// (or fails, or the wait is over).
    pub fn is_connecting(&self) -> bool {
        matches!(
            self.state,
            ConnectivityState::Idle | ConnectivityState::Connecting
        )
    }

    /// READY but not to be picked: suspected frozen, ejected as an outlier,
    /// or not serving ([`Balancer::endpoints`](crate::Balancer::endpoints)
    /// says which).
    pub fn is_excluded(&self) -> bool {
        self.excluded
    }
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

    /// Whether a request may be sent on it now: READY, not excluded, and
    /// its connection still open (the snapshot may be a moment old).
    #[inline]
    pub(crate) fn pickable(&self) -> bool {
        !self.excluded && self.sender.as_ref().is_some_and(|s| !s.is_closed())
    }
}

impl fmt::Debug for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Candidate")
            .field("endpoint", self.endpoint())
            .field("state", &self.state)
            .field("excluded", &self.excluded)
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
/// let builder = etcdlb_balancer::Balancer::builder().policy(etcdlb_balancer::RoundRobin);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RoundRobin;

impl Policy for RoundRobin {
    fn build(&self, _ready: &[Candidate]) -> Box<dyn Picker> {
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
    fn pick(&self, _request: &PickRequest<'_>, ready: &[Candidate]) -> Option<usize> {
        match ready.len() {
            0 => None,
            n => Some(self.next.fetch_add(1, Ordering::Relaxed) % n),
        }
    }
}

/// The picker of an empty set.
pub(crate) struct NoEndpoint;

impl Picker for NoEndpoint {
    fn pick(&self, _request: &PickRequest<'_>, _ready: &[Candidate]) -> Option<usize> {
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
