//! [`Config`]: every setting of a server, with its defaults in one place.

use std::{net::SocketAddr, time::Duration};

/// Default etcd endpoint, the same as the seed's and `etcdctl`'s.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

/// What a server is and how it behaves; [`run`](crate::run) or
/// [`Server::bind`](crate::Server::bind) makes it happen.
///
/// | field | default | flag |
/// |---|---|---|
/// | `id` | (required) | `--id` |
/// | `env` | `dev` | `--env` |
/// | `service` | `game` | `--service` |
/// | `etcd` | `http://127.0.0.1:2379` | `--etcd` (repeatable), env `ETCD_ENDPOINTS` |
/// | `addr` | `127.0.0.1:0` (any free port) | `--addr` |
/// | `ttl` | 60 s (at least 2 s) | `--ttl` |
/// | `drain` | 1 s | `--drain` |
/// | `shutdown_timeout` | 10 s | `--shutdown-timeout` |
/// | `connect_timeout` | 5 s (no flag) | |
///
/// The key registered is `discovery/<env>/<service>/<bound address>` and its
/// metadata is the id as a JSON string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Instance id: named in every reply and registered as the metadata, so
    /// sticky clients can ask for this instance.
    pub id: String,
    /// Environment, the second segment of the key prefix.
    pub env: String,
    /// Service name, the third segment of the key prefix.
    pub service: String,
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// Address to listen on; port 0 picks a free one. The bound address is
    /// what gets registered, so it must be one clients can reach.
    pub addr: SocketAddr,
    /// Lease TTL: how long the key outlives a server that died without
    /// deregistering.
    pub ttl: Duration,
    /// Delay between deregistering and stopping, for clients to see the
    /// deletion and stop sending new calls here.
    pub drain: Duration,
    /// How long in-flight calls may take to finish once stopping.
    pub shutdown_timeout: Duration,
    /// How long the first registration may take before the server gives up
    /// (etcd down at start).
    pub connect_timeout: Duration,
}

impl Config {
    /// A configuration for instance `id` with every default of the table.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            env: "dev".to_owned(),
            service: "game".to_owned(),
            etcd: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ttl: Duration::from_secs(60),
            drain: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
        }
    }

    /// The etcd key prefix, `discovery/<env>/<service>`.
    pub fn prefix(&self) -> String {
        format!("discovery/{}/{}", self.env, self.service)
    }
}
