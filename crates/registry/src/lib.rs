//! Registers a server's address in etcd under a lease that it keeps alive.
//!
//! The key is `<prefix>/<address>` (e.g. `discovery/dev/game/127.0.0.1:41234`)
//! and the value is exactly what Go's `endpoints.Manager.AddEndpoint` writes,
//! `{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}`, so Go resolvers find
//! Rust servers and the other way round.
//!
//! Unlike the Go seed, a registration does not silently vanish: a background
//! task keeps the lease alive and, when the lease or the key is lost (etcd
//! restart, network failure, lease revoked or expired, key deleted or
//! overwritten), grants a new lease and puts the key again, with exponential
//! backoff and jitter (the workspace's `backoff` crate, `Backoff::ETCD`:
//! 100 ms, ×2, at most 5 s, ±20 %), until [`Registered::deregister`] is called. Its
//! [`State`] is observable through [`Registered::state`]. When an attempt
//! (the first registration's or a re-registration's) failed because no etcd
//! member was reachable, the next one starts as soon as a member is
//! connected again (within about 2 s of etcd being back), not when the
//! backoff runs out.
//!
//! etcd over TLS (CA, client certificate) and with a user and password:
//! [`Registration::etcd_tls`] with an [`EtcdTls`], and
//! [`Registration::etcd_auth`]. Wrong certificates or credentials fail the
//! first registration at once with [`ErrorKind::Security`] and a message
//! that says which setting to fix; the password is never logged.
//!
//! Several etcd members (a cluster): requests go only to members that are
//! up, through the `etcd` crate. A keepalive or watch stream broken by a
//! member's death, or by a member that lost its leader (require-leader),
//! is re-opened at once on another member, on the same lease, so the key
//! never goes missing; deregistration retries across members until it
//! succeeds or the [request timeout](Registration::request_timeout) is spent.
//!
//! Must not depend on the resolver, nor on the balancer except through
//! the `etcd` crate (its channel to etcd's members).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use etcdlb_registry::{Registration, State};
//!
//! # async fn run() -> Result<(), etcdlb_registry::Error> {
//! let registered = Registration::new("discovery/dev/game", "127.0.0.1:41234")
//!     .etcd_endpoints(["http://127.0.0.1:2379"])
//!     .instance_id("1")
//!     .ttl(Duration::from_secs(10))
//!     .register()
//!     .await?;
//! assert_eq!(registered.key(), "discovery/dev/game/127.0.0.1:41234");
//! assert_eq!(*registered.state().borrow(), State::Registered);
//!
//! registered.update_metadata(serde_json::json!("1-draining")).await?;
//!
//! // On shutdown: delete the key and revoke the lease.
//! registered.deregister().await?;
//! # Ok(())
//! # }
//! ```
//!
//! Invalid settings are reported before etcd is contacted:
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use etcdlb_registry::{ErrorKind, Registration};
//!
//! let err = Registration::new("discovery/dev/game", "127.0.0.1")
//!     .register()
//!     .await
//!     .unwrap_err();
//! assert_eq!(err.kind(), ErrorKind::InvalidConfig);
//! assert_eq!(
//!     err.to_string(),
//!     "invalid address \"127.0.0.1\": missing port; expected host:port such as 127.0.0.1:50051"
//! );
//! # }
//! ```

mod error;
mod registered;
mod registration;
mod task;

pub use error::{Error, ErrorKind};
pub use etcd::encode_value;
pub use etcd::{EtcdConfig, EtcdTls};
pub use registered::{Registered, State};
pub use registration::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_ETCD_ENDPOINT, DEFAULT_REQUEST_TIMEOUT, DEFAULT_TTL, MIN_TTL,
    Registration,
};

/// The etcd client this crate uses, for [`Registration::client`] and
/// [`Registration::connect_options`].
pub use etcd_client;
