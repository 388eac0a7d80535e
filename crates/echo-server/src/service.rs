//! The `grpc.examples.echo.Echo` service.

use std::{pin::Pin, sync::Arc};

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
}

impl EchoService {
    /// The service of instance `id`.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self { id: id.into() }
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
        Ok(Response::new(self.reply(&request.get_ref().message)))
    }

    type ServerStreamingEchoStream = ReplyStream;

    async fn server_streaming_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamingEchoStream>, Status> {
        let reply = self.reply(&request.get_ref().message);
        Ok(Response::new(Box::pin(futures::stream::once(async {
            Ok(reply)
        }))))
    }

    async fn client_streaming_echo(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        let mut stream = request.into_inner();
        let mut last = String::new();
        while let Some(request) = stream.next().await {
            last = request?.message;
        }
        Ok(Response::new(self.reply(&last)))
    }

    type BidirectionalStreamingEchoStream = ReplyStream;

    async fn bidirectional_streaming_echo(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> {
        let this = self.clone();
        let replies = request
            .into_inner()
            .map(move |request| request.map(|r| this.reply(&r.message)));
        Ok(Response::new(Box::pin(replies)))
    }
}
