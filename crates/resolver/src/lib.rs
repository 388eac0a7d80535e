//! Turns an etcd key prefix into a stream of endpoint changes.
//!
//! One job: follow the servers registered under `discovery/<env>/<service>/`
//! (by the `registry` crate, or by Go's `endpoints.Manager`) and tell a
//! consumer (the `balancer`) what changed, as [`discover::Change`]s. It must
//! not depend on the registry, nor on the balancer except through
//! the `etcd` crate (its channel to etcd's members).
//!
//! How: list the prefix at a revision R (paginated, every page at R), emit an
//! `Insert` per endpoint, then watch from R + 1. Values are decoded by
//! [`decode_value`]; a malformed one is logged and counts as no endpoint.
//! When the watch fails or etcd goes away, the resolver keeps the last
//! known set and re-opens the watch from the last revision it applied,
//! retrying with [`Backoff`] (the workspace's one backoff, re-exported from
//! the `backoff` crate; default 100 ms, ×2, at most 5 s, ±20 %; cut short
//! when no member was reachable and one is connected again) until etcd
//! takes it. When etcd no longer has those events (the watch was canceled
//! for compaction) it lists again and emits only the differences: no
//! endpoint lost, none left behind, the unchanged ones undisturbed. Each
//! recovery is logged with its reason and duration; an outage is logged
//! once, and [`Resolution::health`] tells it.
//!
//! With several etcd members (a cluster), requests go only to members that
//! are up (through the `etcd` crate), and a watch broken by a member's death
//! or loss of leader (require-leader) is re-opened at once on another member
//! from the last revision seen, losing no event and listing nothing.
//!
//! At scale: the resolutions of one prefix from one [`Resolver`] (and its
//! clones) share one list and one etcd watch, and the watches of all its
//! prefixes ([`Resolver::for_prefix`]) share one gRPC watch stream. Each
//! resolution reads the shared changes at its own pace; one that falls
//! more than [`Resolver::lag_limit`] changes behind gets the whole set again
//! as one [`Change::Reset`](discover::Change::Reset), so a slow consumer
//! neither delays the others nor holds memory.
//!
//! etcd with TLS or authentication: see [`Resolver::builder`] and
//! [`EtcdTls`].
//!
//! ```no_run
//! use futures::StreamExt;
//! use etcdlb_resolver::Resolver;
//!
//! # async fn run() -> Result<(), etcd_client::Error> {
//! let mut changes = Resolver::connect(&["http://127.0.0.1:2379"], None, "discovery/dev/game")
//!     .await?
//!     .resolve();
//! while let Some(change) = changes.next().await {
//!     match change {
//!         discover::Change::Insert(key, endpoint) => println!("+ {key} {endpoint}"),
//!         discover::Change::Remove(key) => println!("- {key}"),
//!         discover::Change::Reset(all) => println!("= {} endpoints", all.len()),
//!     }
//! }
//! # Ok(())
//! # }
//! ```

mod builder;
mod mux;
mod resolution;
mod resolver;

pub use etcd::{DecodeError, Decoded, Entry, EtcdConfig, EtcdTls, decode_value};

pub use backoff::Backoff;

pub use crate::{
    builder::{
        ConnectError, ConnectErrorKind, DEFAULT_CONNECT_TIMEOUT, DEFAULT_ETCD_ENDPOINT,
        ResolverBuilder,
    },
    resolution::{Health, LAG_LIMIT, Resolution},
    resolver::Resolver,
};

#[cfg(test)]
mod compaction_tests;
