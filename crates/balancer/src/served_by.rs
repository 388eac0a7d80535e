//! Which endpoint served a call, as a response extension and in failure
//! statuses.

use std::{fmt, sync::Arc};

use discover::Endpoint;
use http::{HeaderMap, HeaderName, HeaderValue};
use tonic::Status;

/// Metadata key of a failure status's serving address.
pub(crate) const ADDR_KEY: HeaderName = HeaderName::from_static("balancer-served-by-addr");
/// Metadata key of a failure status's serving instance id.
pub(crate) const INSTANCE_KEY: HeaderName = HeaderName::from_static("balancer-served-by-instance");

/// The endpoint a call was sent to: its instance id and address.
///
/// The balancer puts it in the extensions of every response; read it with
/// [`ServedByExt::served_by`] on a `tonic::Response`, e.g. to make the next
/// call [`sticky`](crate::StickyExt::sticky) to the same instance. A failure
/// status where an endpoint was tried (the server's own error status, or a
/// connection that failed during the call) names it in its metadata
/// (`balancer-served-by-addr`, `balancer-served-by-instance`), which
/// [`ServedBy::from_status`] reads back.
///
/// ```no_run
/// use etcdlb_balancer::{Balancer, ServedBy, ServedByExt, StickyExt};
/// use echo_proto::{EchoRequest, echo_client::EchoClient};
///
/// # async fn run(mut client: EchoClient<Balancer>) -> Result<(), tonic::Status> {
/// let hi = || EchoRequest { message: "hi".into() };
/// let first = client.unary_echo(hi()).await?;
/// let id = first.served_by().and_then(ServedBy::instance_id).unwrap_or_default();
/// // Later (a reconnect of a stateful game session): back to the same one.
/// let again = client.unary_echo(tonic::Request::new(hi()).sticky(id)).await?;
/// assert_eq!(again.served_by().and_then(ServedBy::instance_id), Some(id));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ServedBy {
    // Made once per endpoint: a call costs one reference count.
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    addr_header: Option<HeaderValue>,
    instance_header: Option<HeaderValue>,
}

impl ServedBy {
    pub(crate) fn new(endpoint: Endpoint) -> Self {
        let addr_header = HeaderValue::from_str(endpoint.addr()).ok();
        let instance_header = endpoint
            .instance_id()
            .and_then(|id| HeaderValue::from_str(id).ok());
        Self {
            inner: Arc::new(Inner {
                endpoint,
                addr_header,
                instance_header,
            }),
        }
    }

    /// The instance id of the endpoint, if it has one.
    pub fn instance_id(&self) -> Option<&str> {
        self.inner.endpoint.instance_id()
    }

    /// The endpoint's `host:port`.
    pub fn addr(&self) -> &str {
        self.inner.endpoint.addr()
    }

    /// The whole endpoint (with its metadata, when the response came through
    /// the balancer; from a status, address and instance id only).
    pub fn endpoint(&self) -> &Endpoint {
        &self.inner.endpoint
    }

    /// The endpoint a failed call was sent to, from the status's metadata;
    /// `None` when the call failed before reaching any endpoint (e.g. none
    /// was READY before the deadline). An instance id that is not printable
    /// ASCII is not carried in metadata: then only the address is known.
    ///
    /// ```
    /// assert!(etcdlb_balancer::ServedBy::from_status(&tonic::Status::unavailable("no")).is_none());
    /// ```
    pub fn from_status(status: &Status) -> Option<Self> {
        let headers = status.metadata().as_ref();
        let addr = headers.get(ADDR_KEY)?.to_str().ok()?;
        let mut endpoint = Endpoint::new(addr).ok()?;
        if let Some(id) = headers.get(INSTANCE_KEY).and_then(|v| v.to_str().ok()) {
            endpoint = endpoint.with_instance_id(id);
        }
        Some(Self::new(endpoint))
    }

    /// Names this endpoint in the headers (or trailers) a failure status is
    /// read from.
    pub(crate) fn mark(&self, headers: &mut HeaderMap) {
        if let Some(addr) = &self.inner.addr_header {
            headers.insert(ADDR_KEY, addr.clone());
        }
        if let Some(id) = &self.inner.instance_header {
            headers.insert(INSTANCE_KEY, id.clone());
        }
    }

    /// `status`, naming this endpoint.
    pub(crate) fn mark_status(&self, mut status: Status) -> Status {
        // MetadataMap has no way in for a plain `HeaderMap`; it is one.
        let mut headers = std::mem::take(status.metadata_mut()).into_headers();
        self.mark(&mut headers);
        *status.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        status
    }
}

impl PartialEq for ServedBy {
    fn eq(&self, other: &Self) -> bool {
        self.inner.endpoint == other.inner.endpoint
    }
}

impl Eq for ServedBy {}

impl fmt::Debug for ServedBy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ServedBy")
            .field(&self.inner.endpoint)
            .finish()
    }
}

/// Reads [`ServedBy`] off a response.
pub trait ServedByExt {
    /// The endpoint that served this call; `None` if it did not come
    /// through a [`Balancer`](crate::Balancer).
    fn served_by(&self) -> Option<&ServedBy>;
}

impl<T> ServedByExt for tonic::Response<T> {
    fn served_by(&self) -> Option<&ServedBy> {
        self.extensions().get::<ServedBy>()
    }
}

impl<T> ServedByExt for http::Response<T> {
    fn served_by(&self) -> Option<&ServedBy> {
        self.extensions().get::<ServedBy>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_status_names_the_endpoint() {
        let endpoint = Endpoint::new("127.0.0.1:7").unwrap().with_instance_id("7");
        let served = ServedBy::new(endpoint.clone());
        let status = served.mark_status(Status::unavailable("gone"));
        let back = ServedBy::from_status(&status).expect("served by");
        assert_eq!(back.endpoint(), &endpoint);
        assert_eq!(status.message(), "gone");
        assert!(ServedBy::from_status(&Status::internal("x")).is_none());
    }
}
