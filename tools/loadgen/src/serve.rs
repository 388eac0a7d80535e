//! An echo host for benchmarks: one process, one tonic server, any number of
//! loopback ports. Used where the real `echo-server` cannot be (1 000
//! endpoints in one process) and by the harness's own tests.

use std::{net::SocketAddr, pin::Pin};

use echo_proto::{
    EchoRequest, EchoResponse,
    echo_server::{Echo, EchoServer},
};
use futures::{Stream, StreamExt as _, stream};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, Streaming};

/// Replies to `UnaryEcho` like `echo-server`: `<message> (from <id>)`.
#[derive(Clone, Debug)]
pub struct EchoHost {
    id: String,
}

impl EchoHost {
    /// A host answering as instance `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }
}

type BoxStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoHost {
    async fn unary_echo(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let message = format!("{} (from {})", request.into_inner().message, self.id);
        Ok(Response::new(EchoResponse { message }))
    }

    type ServerStreamingEchoStream = BoxStream;

    async fn server_streaming_echo(
        &self,
        _: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamingEchoStream>, Status> {
        Err(Status::unimplemented("loadgen serves UnaryEcho only"))
    }

    async fn client_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        Err(Status::unimplemented("loadgen serves UnaryEcho only"))
    }

    type BidirectionalStreamingEchoStream = BoxStream;

    async fn bidirectional_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> {
        Err(Status::unimplemented("loadgen serves UnaryEcho only"))
    }
}

/// Binds `ports` listeners on `127.0.0.1:0` and serves the echo service on
/// all of them from one server; returns the bound addresses at once and
/// serves in a spawned task until the runtime stops.
pub async fn serve(id: &str, ports: usize) -> std::io::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::with_capacity(ports);
    let mut incoming = Vec::with_capacity(ports);
    for _ in 0..ports {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        addrs.push(listener.local_addr()?);
        incoming.push(TcpListenerStream::new(listener));
    }
    let incoming = stream::select_all(incoming).map(|conn| {
        conn.map(|tcp| {
            let _ = tcp.set_nodelay(true);
            // Like echo-server: many calls' responses in one write.
            write_coalesce::Coalesce::new(tcp)
        })
    });
    let service = EchoServer::new(EchoHost::new(id));
    tokio::spawn(async move {
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
        {
            tracing::error!(error = %e, "echo host stopped");
        }
    });
    Ok(addrs)
}
