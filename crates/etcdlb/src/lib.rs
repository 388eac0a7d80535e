//! Service registration, discovery and client-side gRPC load balancing on
//! etcd, for [tonic]: the Rust counterpart of grpc-go + etcd's
//! `naming/endpoints` and `naming/resolver`, byte-compatible with them.
//!
//! This crate is the front door: add it and tonic, and everything a service
//! or a client touches is here.
//!
//! - [`server`] (feature `server`): serve your tonic `Router` registered in
//!   etcd under `<prefix>/<address>` with a lease kept alive, with
//!   `grpc.health.v1`, and a SIGINT/SIGTERM drain that fails no call.
//! - [`client`] (feature `client`): follow a prefix in etcd and balance calls
//!   over the live servers: round robin, least request, ring hash, or a
//!   policy of your own; a call may be pinned ("sticky") to one instance, and
//!   every response says which instance served it.
//! - [`EtcdConfig`] for both (endpoints, TLS, user, timeouts: one set of
//!   defaults): `Registration::etcd(&config)`, `Resolver::builder(prefix)
//!   .etcd(&config)`; [`init_logging`] (feature `logging`).
//!
//! Both features are on by default.
//!
//! # A server
//!
//! ```no_run
//! use echo_proto::{EchoRequest, EchoResponse, echo_server::{Echo, EchoServer}};
//! use etcdlb::server::{Registration, Server, shutdown_signal};
//! use tonic::{Request, Response, Status, server::NamedService};
//!
//! struct Hello; // your service: any tonic-generated trait
//!
//! #[tonic::async_trait]
//! impl Echo for Hello {
//!     async fn unary_echo(&self, r: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
//!         Ok(Response::new(EchoResponse { message: r.into_inner().message }))
//!     }
//!     # type ServerStreamingEchoStream = futures::stream::Empty<Result<EchoResponse, Status>>;
//!     # async fn server_streaming_echo(&self, _: Request<EchoRequest>) -> Result<Response<Self::ServerStreamingEchoStream>, Status> { Err(Status::unimplemented("")) }
//!     # async fn client_streaming_echo(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<EchoResponse>, Status> { Err(Status::unimplemented("")) }
//!     # type BidirectionalStreamingEchoStream = futures::stream::Empty<Result<EchoResponse, Status>>;
//!     # async fn bidirectional_streaming_echo(&self, _: Request<tonic::Streaming<EchoRequest>>) -> Result<Response<Self::BidirectionalStreamingEchoStream>, Status> { Err(Status::unimplemented("")) }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), etcdlb::server::Error> {
//!     let shutdown = shutdown_signal()?; // the first signal drains, a second exits
//!     let registration = Registration::new("discovery/dev/game", "") // "": the bound address
//!         .etcd_endpoints(["http://127.0.0.1:2379"])
//!         .instance_id("1");
//!     let router = tonic::transport::Server::builder().add_service(EchoServer::new(Hello));
//!     Server::new(registration)
//!         .health_for(EchoServer::<Hello>::NAME)
//!         .bind("127.0.0.1:0".parse().expect("an address"))
//!         .await?
//!         .serve(router, shutdown)
//!         .await
//! }
//! ```
//!
//! # A client
//!
//! ```no_run
//! use echo_proto::{EchoRequest, echo_client::EchoClient};
//! use etcdlb::client::{Balancer, Resolver, RingHash};
//! use etcdlb::prelude::*; // StickyExt, HashKeyExt, ServedByExt
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let changes = Resolver::builder("discovery/dev/game")
//!         .etcd_endpoints(["http://127.0.0.1:2379"])
//!         .connect()
//!         .await?
//!         .resolve();
//!     let balancer = Balancer::builder().policy(RingHash::new()).build(changes);
//!     let mut client = EchoClient::new(balancer);
//!     let hi = || EchoRequest { message: "hi".into() };
//!
//!     let reply = client.unary_echo(tonic::Request::new(hi()).hash_key("player-42")).await?;
//!     let instance = reply.served_by().and_then(|s| s.instance_id()).unwrap_or_default().to_owned();
//!     // Pinned to that instance; if it is gone, the call goes where the
//!     // policy picks (the default fallback; `Fallback::Fail` fails instead).
//!     client.unary_echo(tonic::Request::new(hi()).sticky(instance)).await?;
//!     Ok(())
//! }
//! ```
//!
//! # The crates behind it
//!
//! Each re-exported item lives in a crate with one job, usable alone:
//! `etcdlb-discover` (the `Endpoint`/`Change` vocabulary),
//! `etcdlb-balancer` (the tower `Service`; knows nothing of etcd),
//! `etcdlb-resolver` (etcd prefix → changes), `etcdlb-registry` (lease,
//! put, keepalive), `etcdlb-serve` (the server lifecycle),
//! `etcdlb-etcd` (everything that talks to etcd: `EtcdConfig`, member
//! failover, error classification, the key and value formats),
//! `etcdlb-backoff`, `etcdlb-authority-fix`,
//! `etcdlb-write-coalesce`.

pub use discover::{Change, Endpoint, InvalidAddress};
pub use etcd::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_ETCD_ENDPOINT, DEFAULT_REQUEST_TIMEOUT, EtcdAuth, EtcdConfig,
    EtcdTls,
};

/// Discovering servers in etcd and balancing calls over them.
///
/// [`Resolver`] turns an etcd prefix into a stream of [`Change`]s;
/// [`Balancer`] is a `tower::Service` over such a stream that tonic's
/// generated clients take as their channel.
#[cfg(feature = "client")]
pub mod client {
    pub use balancer::{
        BackoffConfig, Balancer, BoxError, Builder, Candidate, ConnectivityState, EndpointConfig,
        EndpointStatus, Error, ErrorKind, Exclusion, Fallback, FreezeDetection, HashKey,
        HashKeyExt, LeastRequest, OutlierDetection, PickRequest, Picker, Policy, ResponseBody,
        ResponseFuture, RingHash, RoundRobin, Scope, ServedBy, ServedByExt, Signals, Stats, Sticky,
        StickyExt, TlsConfig, TlsError,
    };
    pub use resolver::{
        ConnectError, ConnectErrorKind, Health, Resolution, Resolver, ResolverBuilder,
    };

    pub use crate::{Change, Endpoint};
}

/// Serving a tonic service that registers itself in etcd.
///
/// [`Server`] wraps your `Router` with health (and reflection), registers
/// it with a [`Registration`], and drains on shutdown; [`Registration`]
/// alone keeps any address registered.
#[cfg(feature = "server")]
pub mod server {
    pub use registry::{
        Error as RegistrationError, ErrorKind as RegistrationErrorKind, Registered, Registration,
        State as RegistrationState,
    };
    pub use serve::{
        Advertise, Bound, ConnInfo, Error, ErrorKind, SECOND_SIGNAL_EXIT_CODE, Server, Tls,
        advertised_address, detect_host_address, shutdown_signal,
    };
}

/// The extension traits of requests and responses: `use etcdlb::prelude::*`.
pub mod prelude {
    #[cfg(feature = "client")]
    pub use balancer::{HashKeyExt, ServedByExt, StickyExt};
}

/// Logs with `tracing` to stderr at the level `RUST_LOG` says (default
/// `info`), as the project's own programs do. Call it once, first thing in
/// `main`; a second call does nothing.
///
/// ```
/// etcdlb::init_logging();
/// tracing::info!("logged to stderr");
/// # let _ = ();
/// ```
#[cfg(feature = "logging")]
pub fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// The README's Rust snippets, compiled as doctests of this crate so that
/// they keep compiling as written.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
mod readme {}
