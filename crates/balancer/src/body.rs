//! The response body: hyper's, plus the bookkeeping of the call it ends.

use std::{
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tonic::Code;

use crate::{signals::Outcome, state::EndpointShared};

/// One call in flight on an endpoint: counted as outstanding from
/// [`Call::start`] until [`Call::finish`] or its drop, whichever is first.
pub(crate) struct Call {
    shared: Option<Arc<EndpointShared>>,
    /// For `grpc.client.attempt.duration`.
    started: std::time::Instant,
    /// The status of a trailers-only response (in its headers).
    status: Option<Code>,
}

impl Call {
    pub(crate) fn start(shared: Arc<EndpointShared>) -> Self {
        shared.call_started();
        Self {
            shared: Some(shared),
            started: std::time::Instant::now(),
            status: None,
        }
    }

    /// Time since the call started.
    pub(crate) fn elapsed(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    pub(crate) fn shared(&self) -> Option<&Arc<EndpointShared>> {
        self.shared.as_ref()
    }

    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if let Some(shared) = self.shared.take() {
            shared.call_ended();
            shared.record(outcome);
            shared.metrics.attempt(outcome, self.started.elapsed());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        // A trailers-only response is complete with its headers, and tonic
        // drops its body unread.
        let outcome = self.status.map_or(Outcome::Cancelled, Outcome::Status);
        self.finish(outcome);
    }
}

/// The body of every response from a [`Balancer`](crate::Balancer): hyper's
/// HTTP/2 body, which also keeps the endpoint's outstanding-request count and
/// failure signals exact, and names the endpoint in a failure status's
/// trailers (see [`ServedBy`](crate::ServedBy)).
///
/// Frames, errors and size hints are hyper's, unchanged; use it like
/// `hyper::body::Incoming` (e.g. wrap it in `tonic::body::Body::new`).
pub struct ResponseBody {
    inner: Incoming,
    call: Call,
}

impl ResponseBody {
    /// Wraps `inner`; `headers` are the response's, which hold the status of
    /// a trailers-only response (marked with the endpoint if a failure).
    pub(crate) fn new(inner: Incoming, mut call: Call, headers: &mut HeaderMap) -> Self {
        if let Some(code) = grpc_status(headers) {
            call.status = Some(code);
            if code != Code::Ok
                && let Some(shared) = call.shared()
            {
                shared.served_by.mark(headers);
            }
        }
        Self { inner, call }
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let mut poll = Pin::new(&mut this.inner).poll_frame(cx);
        match &mut poll {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_mut() {
                    // gRPC sends no status in trailers only when broken.
                    let code = grpc_status(trailers).unwrap_or(Code::Unknown);
                    if code != Code::Ok
                        && let Some(shared) = this.call.shared()
                    {
                        shared.served_by.mark(trailers);
                    }
                    this.call.finish(Outcome::Status(code));
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Outcome::Transport),
            Poll::Ready(None) => {
                let outcome = this.call.status.map_or(Outcome::Transport, Outcome::Status);
                this.call.finish(outcome);
            }
            Poll::Pending => {}
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}
