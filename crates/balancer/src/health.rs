//! Client-side health checking (gRPC's "client-side health checking", gRFC
//! A17): one `grpc.health.v1.Health/Watch` stream per connection for the
//! configured service name.
//!
//! Until the first answer, and whenever the answer is not SERVING, the
//! endpoint is not picked. A server that does not implement the health
//! service (`UNIMPLEMENTED`) has health checking disabled and is treated as
//! healthy, with an error logged, as the spec says. Any other failure of the
//! stream marks the endpoint not serving and retries with backoff.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use discover::Endpoint;
use hyper::body::Incoming;
use tonic::{Code, body::Body};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    BackoffConfig,
    http::{BoxError, Sender},
    replay::SendBody,
    state::Exclusion,
};

/// One connection as a tower service, for the balancer's own calls on it.
#[derive(Clone)]
struct Conn {
    sender: Sender,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl tower_service::Service<http::Request<Body>> for Conn {
    type Response = http::Response<Incoming>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.sender.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (head, body) = request.into_parts();
        let mut request = http::Request::from_parts(head, SendBody::passthrough(body));
        if let Err(e) = crate::http::set_origin(&mut request, self.scheme.clone(), &self.authority)
        {
            return Box::pin(async move { Err(e) });
        }
        let response = self.sender.send_request(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

/// Watches the health of `service` on one connection, reporting
/// `Some(NotServing)` or `None` (serving) on every change. Returns only if
/// health checking is disabled for this server (`UNIMPLEMENTED`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn watch(
    sender: Sender,
    tls: bool,
    endpoint: &Endpoint,
    service: &str,
    backoff: BackoffConfig,
    before_stream: impl Fn(),
    mut report: impl FnMut(Option<Exclusion>),
) {
    let authority = match endpoint.addr().parse() {
        Ok(authority) => authority,
        Err(_) => return,
    };
    let scheme = if tls {
        http::uri::Scheme::HTTPS
    } else {
        http::uri::Scheme::HTTP
    };
    let mut client = HealthClient::new(Conn {
        sender,
        scheme,
        authority,
    });
    let not_serving = |status: String| Exclusion::NotServing {
        service: service.to_string(),
        status,
    };
    let mut backoff = backoff.attempts();
    let mut last: Option<Option<Exclusion>> = None;
    let mut set = |now: Option<Exclusion>| {
        if last.as_ref() != Some(&now) {
            last = Some(now.clone());
            report(now);
        }
    };
    loop {
        before_stream();
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        let failure = match client.watch(request).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(answer)) => {
                            backoff.reset();
                            match ServingStatus::try_from(answer.status) {
                                Ok(ServingStatus::Serving) => set(None),
                                Ok(other) => set(Some(not_serving(other.as_str_name().into()))),
                                Err(_) => {
                                    set(Some(not_serving(format!("status {}", answer.status))))
                                }
                            }
                        }
                        Ok(None) => break "the server ended the health watch".to_string(),
                        Err(status) => break status_text(&status),
                    }
                }
            }
            Err(status) if status.code() == Code::Unimplemented => {
                tracing::error!(
                    endpoint = %endpoint,
                    service,
                    "the server does not implement grpc.health.v1.Health/Watch; health checking is disabled for it and it is treated as healthy"
                );
                set(None);
                return;
            }
            Err(status) => status_text(&status),
        };
        let delay = backoff.next_delay();
        tracing::warn!(endpoint = %endpoint, service, error = %failure, "health watch failed; retrying in {delay:.1?}");
        set(Some(not_serving(format!("health watch failed: {failure}"))));
        tokio::time::sleep(delay).await;
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
