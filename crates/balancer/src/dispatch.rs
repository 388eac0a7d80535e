//! Sending a request: pick, send on the endpoint's connection, retry what
//! was provably never processed, and hand back the response.

use std::sync::{Arc, atomic::Ordering};

use discover::Endpoint;
use tonic::{Status, body::Body};

use crate::{
    ResponseBody, Sticky,
    body::Call,
    error::{ErrorKind, status},
    http::{BoxError, grpc_timeout, set_origin},
    policy::{Candidate, PickRequest},
    replay::{self, Prepared, SendBody},
    shared::Shared,
    signals::Outcome,
    state::EndpointShared,
};

impl Shared {
    pub(crate) async fn dispatch(
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
