//! [`Config`]: every setting of a server, with its defaults in one place.

use cli_support::EtcdAuth;
use serve::Advertise;
use std::{net::SocketAddr, path::PathBuf, time::Duration};

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
/// | `advertise` | none: the bound address (a wildcard bind: a detected address of this host) | `--advertise` |
/// | `ttl` | 60 s (at least 2 s) | `--ttl` |
/// | `drain` | 1 s | `--drain` |
/// | `shutdown_timeout` | 10 s | `--shutdown-timeout` |
/// | `etcd_ca` | none (plain `http://`) | `--etcd-ca` |
/// | `etcd_client_cert` | none | `--etcd-cert` and `--etcd-key` |
/// | `etcd_auth` | none | `--etcd-user`, password from env `ETCD_PASSWORD` |
/// | `tls` | none (plaintext gRPC) | `--tls-cert` and `--tls-key` |
/// | `strict_authority` | false (grpc-go's `:authority` is fixed on the way in) | `--strict-authority` |
/// | `fail_rate` | 0 (no call failed on purpose) | `--fail-rate` |
/// | `authority_adapter` | true | `--no-authority-adapter` (benchmarks) |
/// | `delay` | 0 (none) | `--delay`, added before every reply |
/// | `connect_timeout` | 5 s (no flag) | |
///
/// The key registered is `discovery/<env>/<service>/<advertised address>` and its
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
    /// The address to register, `HOST[:PORT]` (no port: the bound one);
    /// `None` registers the bound address, or for a wildcard bind
    /// (`0.0.0.0`, `::`) a detected address of this host, never the
    /// wildcard.
    pub advertise: Option<Advertise>,
    /// Lease TTL: how long the key outlives a server that died without
    /// deregistering.
    pub ttl: Duration,
    /// Delay between deregistering and stopping, for clients to see the
    /// deletion and stop sending new calls here.
    pub drain: Duration,
    /// How long in-flight calls may take to finish once stopping.
    pub shutdown_timeout: Duration,
    /// etcd TLS: the PEM file of the CA that signed etcd's certificate;
    /// the endpoints must then be `https://`.
    pub etcd_ca: Option<PathBuf>,
    /// etcd TLS: the PEM files of a client certificate and its key, for an
    /// etcd started with `--client-cert-auth`; needs [`etcd_ca`](Self::etcd_ca).
    pub etcd_client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd user and password, for an etcd with authentication enabled.
    pub etcd_auth: Option<EtcdAuth>,
    /// gRPC TLS: the PEM files of the server's certificate chain and its
    /// private key; `None` serves plaintext HTTP/2.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// How long the first registration may take before the server gives up
    /// (etcd down at start).
    pub connect_timeout: Duration,
    /// Share of calls failed on purpose with `UNAVAILABLE`, for tests and
    /// demos of outlier ejection.
    pub fail_rate: crate::FailRate,
    /// Added before every reply (for demos and tests of slow servers).
    pub delay: Duration,
    /// `false` (the default): accepted connections go through
    /// `authority-fix` (through `serve`), which rewrites the `:authority` grpc-go clients send
    /// (`discovery%2Fdev%2Fgame`) to a same-length value h2 accepts.
    /// `true`: h2 rejects such requests (RST_STREAM PROTOCOL_ERROR) and the
    /// server logs one WARN per such connection naming the Go-side fix,
    /// `grpc.WithAuthority(...)`.
    pub strict_authority: bool,
    /// `true` (the default): connections go through [`authority_fix`] (in
    /// fix or observe mode, see [`strict_authority`](Self::strict_authority)).
    /// `false`: connections are not wrapped at all
    /// (`serve::Server::authority_fix(None)`) — no rewrite and no WARN; for
    /// measuring the adapter's cost.
    pub authority_adapter: bool,
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
            advertise: None,
            ttl: Duration::from_secs(60),
            drain: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            etcd_ca: None,
            etcd_client_cert: None,
            etcd_auth: None,
            tls: None,
            connect_timeout: Duration::from_secs(5),
            fail_rate: crate::FailRate::default(),
            delay: Duration::ZERO,
            strict_authority: false,
            authority_adapter: true,
        }
    }

    /// The etcd key prefix, `discovery/<env>/<service>`.
    pub fn prefix(&self) -> String {
        format!("discovery/{}/{}", self.env, self.service)
    }
}
