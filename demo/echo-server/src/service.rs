//! The `grpc.examples.echo.Echo` service.

use std::{pin::Pin, sync::Arc, time::Duration};

use echo_proto::{EchoRequest, EchoResponse, echo_server::Echo};
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// A boxed stream of replies, the type of both streaming RPCs.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send + 'static>>;

/// Answers every message with `<message> (from <id>)`.
///
/// - `UnaryEcho`: one reply;
/// - `ServerStreamingEcho`: a stream of one reply;
/// - `ClientStreamingEcho`: one reply to the last message received (like
///   grpc-go's example servers), `" (from <id>)"` for an empty stream;
/// - `BidirectionalStreamingEcho`: one reply per message, as they arrive.
///
/// ```
/// use echo_server::EchoService;
///
/// assert_eq!(EchoService::new("1").reply_to("hi"), "hi (from 1)");
/// ```
#[derive(Clone, Debug)]
pub struct EchoService {
    id: Arc<str>,
    delay: Duration,
    fail_rate: FailRate,
}

/// The share of calls a server fails on purpose with `UNAVAILABLE`
/// (`--fail-rate`), for tests and demos of outlier ejection: 0.0 (never, the
/// default) to 1.0 (every call). Kept in millionths, so a [`Config`] stays
/// comparable.
///
/// ```
/// use echo_server::FailRate;
///
/// assert_eq!(FailRate::new(0.25).unwrap().get(), 0.25);
/// assert!(FailRate::new(1.5).is_err());
/// ```
///
/// [`Config`]: crate::Config
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailRate(u32);

impl FailRate {
    /// `rate` if it is within 0.0–1.0.
    pub fn new(rate: f64) -> Result<Self, String> {
        if (0.0..=1.0).contains(&rate) {
            Ok(Self((rate * 1e6).round() as u32))
        } else {
            Err(format!(
                "the fail rate must be between 0.0 and 1.0, not {rate}"
            ))
        }
    }

    /// The share, 0.0–1.0.
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1e6
    }

    /// Whether this call is one to fail.
    fn strikes(self) -> bool {
        self.0 > 0 && fastrand::u32(0..1_000_000) < self.0
    }
}

impl std::str::FromStr for FailRate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rate: f64 = s
            .trim()
            .parse()
            .map_err(|_| "expected a number between 0.0 and 1.0, such as 0.1".to_string())?;
        Self::new(rate)
    }
}

impl EchoService {
    /// The service of instance `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self {
            id: id.into(),
            delay: Duration::ZERO,
            fail_rate: FailRate::default(),
        }
    }

    /// Fails that share of calls with `UNAVAILABLE` (the call is not echoed).
    pub fn with_fail_rate(mut self, rate: FailRate) -> Self {
        self.fail_rate = rate;
        self
    }

    /// `Err(UNAVAILABLE)` for the calls the fail rate picks.
    fn maybe_fail(&self) -> Result<(), Status> {
        if self.fail_rate.strikes() {
            return Err(Status::unavailable(format!(
                "instance {} fails this call on purpose (--fail-rate {})",
                self.id,
                self.fail_rate.get()
            )));
        }
        Ok(())
    }

    /// Waits `delay` before every reply (`--delay`; for demos and tests of
    /// slow servers).
    pub fn with_delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    async fn pause(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// The instance id this service names in its replies.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The reply text for `message`: `<message> (from <id>)`.
    pub fn reply_to(&self, message: &str) -> String {
        format!("{message} (from {})", self.id)
    }

    fn reply(&self, message: &str) -> EchoResponse {
        EchoResponse {
            message: self.reply_to(message),
        }
    }
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.maybe_fail()?;
        self.pause().await;
        Ok(Response::new(self.reply(&request.get_ref().message)))
    }

    type ServerStreamingEchoStream = ReplyStream;

    async fn server_streaming_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamingEchoStream>, Status> {
        self.maybe_fail()?;
        self.pause().await;
        let reply = self.reply(&request.get_ref().message);
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(reply)
        }))))
    }

    async fn client_streaming_echo(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        self.maybe_fail()?;
        let mut stream = request.into_inner();
        let mut last = String::new();
        while let Some(request) = stream.next().await {
            last = request?.message;
        }
        self.pause().await;
        Ok(Response::new(self.reply(&last)))
    }

    type BidirectionalStreamingEchoStream = ReplyStream;

    async fn bidirectional_streaming_echo(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> {
        self.maybe_fail()?;
        let this = self.clone();
        let replies = request.into_inner().then(move |request| {
            let this = this.clone();
            async move {
                this.pause().await;
                request.map(|r| this.reply(&r.message))
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_delay_comes_before_the_reply() {
        let service = EchoService::new("1").with_delay(Duration::from_millis(20));
        let started = tokio::time::Instant::now();
        let request = Request::new(EchoRequest {
            message: "hi".into(),
        });
        let reply = service.unary_echo(request).await.expect("reply");
        assert_eq!(reply.get_ref().message, "hi (from 1)");
        assert!(started.elapsed() >= Duration::from_millis(20));
    }
}
