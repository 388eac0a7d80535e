//! gRPC load balancing as a tower `Service`: round robin, least request,
//! ring hash or a policy of your own, with sticky requests.
//!
//! [`Balancer`] takes a stream of endpoint [`Change`]s (`Insert`, `Remove`,
//! `Reset`), keeps one HTTP/2 connection per endpoint with its real
//! connectivity state (IDLE, CONNECTING, READY, TRANSIENT_FAILURE), reconnects
//! failed ones with gRPC's backoff, and sends each request to a READY
//! endpoint: the one its [`Policy`] picks, or the instance named by a
//! [`Sticky`] request extension. Requests that were never written to a
//! connection are retried on another endpoint; requests that may have reached
//! a server are not. With no READY endpoint a request waits (bounded by its
//! deadline, or fails fast if so configured). Every response says which
//! endpoint served it ([`ServedBy`]).
//!
//! One task owns the endpoint set and publishes immutable snapshots, each
//! with the policy's [`Picker`] for its READY endpoints; a pick is a snapshot
//! load and the picker (for round robin, an atomic increment), with no lock.
//!
//! It knows nothing of etcd: the `resolver` crate produces the change stream,
//! and tests build one by hand. It must not depend on `etcd-client`,
//! `registry` or `resolver`.
//!
//! ```no_run
//! use etcdlb_balancer::{Balancer, Change, Endpoint, ServedBy, ServedByExt, StickyExt};
//! use echo_proto::{EchoRequest, echo_client::EchoClient};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let endpoints = futures::stream::iter(vec![
//!     Change::Insert("a".into(), Endpoint::new("127.0.0.1:50051")?.with_instance_id("1")),
//!     Change::Insert("b".into(), Endpoint::new("127.0.0.1:50052")?.with_instance_id("2")),
//! ]);
//! let balancer = Balancer::builder().name("discovery/dev/game").build(endpoints);
//! let mut client = EchoClient::new(balancer);
//!
//! let hi = || EchoRequest { message: "hi".into() };
//! let any = client.unary_echo(hi()).await?; // round robin
//! let two = client.unary_echo(tonic::Request::new(hi()).sticky("2")).await?; // instance 2
//! assert_eq!(two.served_by().and_then(ServedBy::instance_id), Some("2"));
//! println!("{} / {}", any.into_inner().message, two.into_inner().message);
//! # Ok(())
//! # }
//! ```
//!
//! # Choosing a policy
//!
//! [`Builder::policy`] takes any [`Policy`]: [`RoundRobin`] (the default),
//! [`LeastRequest`] (power of two choices over outstanding requests: routes
//! around slow servers), [`RingHash`] (consistent hashing of a [`HashKey`]:
//! every client sends a key to the same instance). Sticky requests go to
//! their instance under every policy; their [`Fallback`] uses the policy.
//!
//! ```no_run
//! use etcdlb_balancer::{Balancer, HashKeyExt, LeastRequest, RingHash};
//! use echo_proto::{EchoRequest, echo_client::EchoClient};
//!
//! # async fn run(changes: futures::stream::Empty<etcdlb_balancer::Change>) -> Result<(), tonic::Status> {
//! let balancer = Balancer::builder().policy(RingHash::new()).build(changes);
//! let mut client = EchoClient::new(balancer);
//! let request = tonic::Request::new(EchoRequest { message: "move".into() }).hash_key("room-7");
//! client.unary_echo(request).await?; // the instance that owns room-7, from any client
//!
//! let _slow_servers_avoided = Balancer::builder().policy(LeastRequest::new().choices(2));
//! # Ok(())
//! # }
//! ```
//!
//! # Writing a policy
//!
//! A [`Policy`] builds a [`Picker`] in the owner task each time the READY
//! set changes (or, for a policy of [`Scope::All`] such as ring hash, each
//! time endpoints are added or removed); the picker chooses, for each
//! request ([`PickRequest`]: path, headers, extensions), an index among the
//! [`Candidate`]s (with their connectivity state under `Scope::All`), whose
//! [`Endpoint`] carries the registration's metadata and whose [`Signals`]
//! count outstanding requests, latency and failures. The built-in policies
//! are written this way too. [`Policy`]'s docs show a whole one (prefer the
//! client's zone, else round robin) in under 30 lines.

mod body;
mod builder;
mod config;
mod connection;
mod connectivity;
mod dispatch;
mod error;
mod health;
mod http;
mod least_request;
mod metrics;
mod outlier;
mod pick;
pub mod policy;
mod probe;
mod replay;
mod ring_hash;
mod served_by;
mod service;
mod set;
mod shared;
mod signals;
mod snapshot;
mod state;
mod sticky;
mod tls;

pub use body::ResponseBody;
pub use builder::Builder;
pub use config::{BackoffConfig, EndpointConfig, Fallback};
pub use connectivity::ConnectivityState;
pub use discover::{Change, Endpoint, InvalidAddress};
pub use error::{Error, ErrorKind};
pub use http::BoxError;
pub use least_request::LeastRequest;
pub use outlier::OutlierDetection;
pub use policy::{Candidate, PickRequest, Picker, Policy, RoundRobin, Scope};
pub use probe::{Adaptive, FreezeDetection};
pub use ring_hash::{HashKey, HashKeyExt, RingHash};
pub use served_by::{ServedBy, ServedByExt};
pub use service::{Balancer, ResponseFuture};
pub use signals::Signals;
pub use state::{EndpointStatus, Exclusion, Stats};
pub use sticky::{Sticky, StickyExt};
pub use tls::{TlsConfig, TlsError};
