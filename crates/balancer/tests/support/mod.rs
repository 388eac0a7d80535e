//! In-process echo servers on 127.0.0.1 for the balancer's tests. Each runs
//! on its own runtime, so "killing" one (dropping that runtime) closes its
//! listener and every connection at once, as a crashed process would.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

pub use echo_proto::EchoRequest;
use echo_proto::{
    EchoResponse,
    echo_client::EchoClient,
    echo_server::{Echo, EchoServer},
};
use etcdlb_balancer::{Balancer, Change, Endpoint};
use futures::{Stream, StreamExt as _};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{TcpListenerStream, UnboundedReceiverStream};
use tonic::{Request, Response, Status, Streaming};

struct EchoService {
    id: String,
    slow_call: Arc<tokio::sync::Notify>,
    delay_ms: Arc<AtomicU64>,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary_echo(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<EchoResponse>, Status> {
        let message = req.into_inner().message;
        let delay = self.delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
        }
        if message == "fail" {
            return Err(Status::internal(format!("failed (from {})", self.id)));
        }
        if message == "slow" {
            // Stays in flight until the server dies.
            self.slow_call.notify_one();
            std::future::pending::<()>().await;
        }
        let message = format!("{message} (from {})", self.id);
        Ok(Response::new(EchoResponse { message }))
    }

    type ServerStreamingEchoStream = ReplyStream;

    /// Message "silent": the response headers go out at once, then the
    /// stream stays open and silent until the client ends it (a watch with
    /// nothing to report). Anything else: not used by the tests.
    async fn server_streaming_echo(
        &self,
        req: Request<EchoRequest>,
    ) -> Result<Response<Self::ServerStreamingEchoStream>, Status> {
        if req.into_inner().message != "silent" {
            return Err(Status::unimplemented("not in tests"));
        }
        Ok(Response::new(Box::pin(futures::stream::pending())))
    }

    async fn client_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        Err(Status::unimplemented("not in tests"))
    }

    type BidirectionalStreamingEchoStream = ReplyStream;

    async fn bidirectional_streaming_echo(
        &self,
        _: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> {
        Err(Status::unimplemented("not in tests"))
    }
}

/// An echo server answering `<message> (from <id>)`.
pub struct TestServer {
    pub id: String,
    pub addr: SocketAddr,
    /// TCP connections accepted so far.
    pub connections: Arc<AtomicU64>,
    /// Notified when a call with message "slow" arrives (it never returns).
    pub slow_call: Arc<tokio::sync::Notify>,
    /// Added before every reply, in milliseconds (0: none).
    pub delay_ms: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    stopped: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl TestServer {
    /// Serves on a fresh loopback port.
    pub fn start(id: &str) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), id)
    }

    /// Serves on `addr` (e.g. the port of a killed server).
    pub fn start_on(addr: SocketAddr, id: &str) -> Self {
        let listener = std::net::TcpListener::bind(addr).expect("bind");
        Self::serve(listener, id)
    }

    /// Binds now (the kernel accepts TCP connections into the backlog) but
    /// serves only when `serve` is called: until then a client's connection
    /// is open but the server never speaks, so it stays CONNECTING.
    pub fn bind_deferred() -> (SocketAddr, std::net::TcpListener) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        (listener.local_addr().expect("addr"), listener)
    }

    /// Serves on an already bound listener.
    pub fn serve(listener: std::net::TcpListener, id: &str) -> Self {
        Self::serve_with(listener, id, None)
    }

    /// Serves TLS on a fresh loopback port with `pki`'s server certificate.
    pub fn start_tls(id: &str, pki: &Pki) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let identity = tonic::transport::Identity::from_pem(&pki.server_cert, &pki.server_key);
        let tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        Self::serve_with(listener, id, Some(tls))
    }

    fn serve_with(
        listener: std::net::TcpListener,
        id: &str,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        let addr = listener.local_addr().expect("addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let slow_call = Arc::new(tokio::sync::Notify::new());
        let delay_ms = Arc::new(AtomicU64::new(0));
        let service = EchoServer::new(EchoService {
            id: id.to_string(),
            slow_call: slow_call.clone(),
            delay_ms: delay_ms.clone(),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let incoming = TcpListenerStream::new(listener).map(move |tcp| {
                counter.fetch_add(1, Ordering::Relaxed);
                // As real servers do: without it, Nagle holds a reply's
                // trailers for the client's delayed ACK (~40 ms).
                tcp.inspect(|tcp| {
                    let _ = tcp.set_nodelay(true);
                })
            });
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = tls {
                builder = builder.tls_config(tls).expect("tls config");
            }
            let _ = builder
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = stop_rx.await;
                })
                .await;
            let _ = stopped_tx.send(());
        });
        Self {
            id: id.to_string(),
            addr,
            connections,
            slow_call,
            delay_ms,
            runtime: Some(runtime),
            stop: Some(stop_tx),
            stopped: Some(stopped_rx),
        }
    }

    /// Sends a "slow" call through `client` on a task of its own and waits
    /// until it is in flight here (it never returns while the server lives).
    pub async fn hold_call(
        &self,
        mut client: EchoClient<Balancer>,
    ) -> tokio::task::JoinHandle<Result<Response<EchoResponse>, Status>> {
        let call = tokio::spawn(async move {
            client
                .unary_echo(EchoRequest {
                    message: "slow".into(),
                })
                .await
        });
        self.slow_call.notified().await;
        call
    }

    /// Graceful shutdown: GOAWAY to every connection, in-flight calls finish.
    /// Resolves when the server has stopped.
    pub async fn shutdown_gracefully(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(stopped) = self.stopped.take() {
            let _ = stopped.await;
        }
    }

    /// Closes the listener and every connection at once.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// An endpoint for this server, carrying its id as instance id.
    pub fn endpoint(&self) -> Endpoint {
        Endpoint::new(&self.addr.to_string())
            .expect("endpoint")
            .with_instance_id(self.id.as_str())
    }

    /// `Insert` under the server's id as key.
    pub fn insert(&self) -> Change {
        Change::Insert(self.id.clone(), self.endpoint())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A hand-driven discovery stream.
pub fn discovery() -> (
    mpsc::UnboundedSender<Change>,
    UnboundedReceiverStream<Change>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    (tx, UnboundedReceiverStream::new(rx))
}

/// The id in a reply `hi (from 2)`.
pub fn from(reply: &str) -> String {
    reply
        .rsplit_once("(from ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .unwrap_or("?")
        .to_string()
}

pub fn hi() -> EchoRequest {
    EchoRequest {
        message: "hi".into(),
    }
}

/// A CA and a server certificate for 127.0.0.1 and localhost, made now.
pub struct Pki {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("ca key");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca_params, ca_key);
        let server_params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params");
        let server_key = KeyPair::generate().expect("server key");
        let server = server_params
            .signed_by(&server_key, &issuer)
            .expect("server cert");
        Self {
            ca: ca.pem(),
            server_cert: server.pem(),
            server_key: server_key.serialize_pem(),
        }
    }
}
