//! The lifecycle of a discoverable tonic server, for any service: serves
//! your tonic [`Router`](tonic::transport::server::Router) plus
//! `grpc.health.v1` (and reflection if asked), registers the server in etcd
//! through [`registry`], and on a shutdown future (or SIGINT/SIGTERM with
//! [`shutdown_signal`]) drains so that stopping fails no call:
//!
//! 1. health reports `NOT_SERVING`;
//! 2. the key is deleted and the lease revoked;
//! 3. the drain delay passes (clients see the deletion; calls are still
//!    served);
//! 4. the server stops accepting and waits for in-flight calls, bounded by
//!    the shutdown timeout.
//!
//! The address registered is never a wildcard: [`Advertise`] (`HOST[:PORT]`)
//! if given, else the bound address, else, for a `0.0.0.0`/`::` bind, a
//! detected address of this host ([`detect_host_address`]).
//!
//! The server owns its accept loop (TCP → TLS → the `:authority` fix of
//! [`authority_fix`] → an optional
//! [connection wrapper](Server::wrap_connections) → `write_coalesce::Coalesce`
//! → tonic), so byte-level adapters see plaintext HTTP/2 with or without
//! TLS, and the responses of many calls leave in one write. The fix is on by
//! default ([`Server::strict_authority`]): grpc-go clients, which send
//! their target (`discovery%2Fdev%2Fgame`) as `:authority`, are served.
//! An accept that fails for want of file descriptors (EMFILE) or memory
//! pauses accepting, 5 ms doubling to 1 s (as Go's net/http and grpc-go do),
//! with one warning per burst and the `serve_accept_errors` counter,
//! instead of retrying in a hot loop.
//!
//! Must not depend on the resolver or the balancer.
//!
//! # Your own service
//!
//! ```no_run
//! use echo_proto::{EchoRequest, EchoResponse, echo_server::{Echo, EchoServer}};
//! use tonic::{Request, Response, Status, server::NamedService};
//!
//! struct Shout; // your service: any tonic-generated trait
//!
//! #[tonic::async_trait]
//! impl Echo for Shout {
//!     async fn unary_echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
//!         Ok(Response::new(EchoResponse { message: r.into_inner().message.to_uppercase() }))
//!     }
//!     # type ServerStreamingEchoStream = futures::stream::Empty<Result<EchoResponse, Status>>;
//!     # async fn server_streaming_echo(&self, _: Request<EchoRequest>) -> Result<Response<Self::ServerStreamingEchoStream>, Status> { Err(Status::unimplemented("")) }
//!     # async fn client_streaming_echo(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<EchoResponse>, Status> { Err(Status::unimplemented("")) }
//!     # type BidirectionalStreamingEchoStream = futures::stream::Empty<Result<EchoResponse, Status>>;
//!     # async fn bidirectional_streaming_echo(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> { Err(Status::unimplemented("")) }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), etcdlb_serve::Error> {
//!     let shutdown = etcdlb_serve::shutdown_signal()?; // SIGINT/SIGTERM drain
//!     let registration = registry::Registration::new("discovery/dev/shout", "") // "": detect
//!         .etcd_endpoints(["http://127.0.0.1:2379"])
//!         .instance_id("1");
//!     let router = tonic::transport::Server::builder().add_service(EchoServer::new(Shout));
//!     etcdlb_serve::Server::new(registration)
//!         .health_for(EchoServer::<Shout>::NAME)
//!         .reflection(echo_proto::FILE_DESCRIPTOR_SET)
//!         .bind("0.0.0.0:50051".parse().unwrap())
//!         .await?
//!         .serve(router, shutdown)
//!         .await
//! }
//! ```

mod advertise;
mod error;
mod incoming;
mod server;
mod signal;
mod tls;

pub use advertise::{Advertise, advertised_address, detect_host_address};
pub use error::{Error, ErrorKind};
pub use incoming::{BoxIo, ConnInfo, Io};
pub use server::{
    Bound, DEFAULT_DRAIN, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SHUTDOWN_TIMEOUT, Server,
};
pub use signal::{SECOND_SIGNAL_EXIT_CODE, shutdown_signal};
pub use tls::Tls;
