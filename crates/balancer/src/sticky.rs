//! The request extension that pins a call to one instance.

use std::sync::Arc;

/// Names the instance a request must go to, as a request extension.
///
/// Set it with [`StickyExt::sticky`] on a `tonic::Request`, or insert it in
/// an `http::Request`'s extensions. The balancer sends the request to the READY
/// endpoint whose instance id matches; see [`Fallback`](crate::Fallback) for
/// when there is none.
///
/// ```
/// use etcdlb_balancer::{Sticky, StickyExt};
///
/// let request = tonic::Request::new(()).sticky("1");
/// assert_eq!(request.extensions().get::<Sticky>().unwrap().id(), "1");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sticky(Arc<str>);

impl Sticky {
    /// Pins to the instance with this id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// The instance id.
    pub fn id(&self) -> &str {
        &self.0
    }

    pub(crate) fn key(&self) -> &Arc<str> {
        &self.0
    }
}

/// Adds [`Sticky`] to a `tonic::Request`.
pub trait StickyExt: Sized {
    /// Pins this request to the instance `id`.
    fn sticky(self, id: impl Into<Arc<str>>) -> Self;
}

impl<T> StickyExt for tonic::Request<T> {
    fn sticky(mut self, id: impl Into<Arc<str>>) -> Self {
        self.extensions_mut().insert(Sticky::new(id));
        self
    }
}
