//! Talking to etcd, in one crate: how to reach it ([`EtcdConfig`], TLS and
//! users), a client that fails over between its members ([`connect`]), what
//! its errors mean ([`describe`], [`diagnose`], [`is_lease_not_found`]), the
//! key scheme ([`endpoint_key`], [`key_prefix`]) and the value Go's
//! `endpoints.Manager` writes and reads, encoded and decoded side by side
//! ([`encode_value`], [`decode_value`]). The registry and the resolver use
//! it, and nothing else of each other.
//!
//! ```
//! use etcdlb_etcd::{Decoded, decode_value, encode_value, endpoint_key};
//!
//! let key = endpoint_key("discovery/dev/game", "127.0.0.1:41234");
//! assert_eq!(key, "discovery/dev/game/127.0.0.1:41234");
//! let value = encode_value("127.0.0.1:41234", &serde_json::json!("1"));
//! assert_eq!(value, br#"{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}"#);
//! match decode_value(&value) {
//!     Ok(Decoded::Endpoint(entry)) => assert_eq!(entry.endpoint().instance_id(), Some("1")),
//!     other => panic!("{other:?}"),
//! }
//! ```
//!
//! Must not depend on the registry or the resolver; uses the balancer (as
//! the client's channel) by its public API only.

mod config;
mod decode;
mod encode;
mod errors;
mod failover;
mod security;

pub use config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_ETCD_ENDPOINT, DEFAULT_REQUEST_TIMEOUT, EtcdConfig,
};
pub use decode::{DecodeError, Decoded, Entry, decode_value, shorten};
pub use encode::encode_value;
pub use errors::{is_lease_not_found, is_transient};
pub use failover::*;
pub use security::*;

/// `<prefix>/` for a prefix given with or without trailing slashes: the
/// keys a resolver of `prefix` reads start with it.
///
/// ```
/// assert_eq!(etcdlb_etcd::key_prefix("discovery/dev/game//"), "discovery/dev/game/");
/// ```
pub fn key_prefix(prefix: &str) -> String {
    format!("{}/", prefix.trim_end_matches('/'))
}

/// The key a server at `addr` is registered under: `<prefix>/<addr>`.
pub fn endpoint_key(prefix: &str, addr: &str) -> String {
    format!("{}{addr}", key_prefix(prefix))
}
