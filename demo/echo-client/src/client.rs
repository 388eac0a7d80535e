//! [`Config`] and [`Client`]: discovery, balancing and one call.

use cli_support::EtcdAuth;
use std::{collections::HashMap, fmt, path::PathBuf, sync::Arc, time::Duration};

use balancer::{
    Balancer, ConnectivityState, EndpointConfig, Fallback, HashKey, LeastRequest, Policy, RingHash,
    RoundRobin, StickyExt, TlsConfig,
};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use resolver::{EtcdTls, Resolver};
use tonic::Status;
use tracing::{info, warn};

/// Default etcd endpoint, the same as the seed's and `etcdctl`'s.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

/// How long a client waits quietly for a first instance before it logs
/// `waiting for instances of <prefix>`.
pub const WAIT_LOG_GRACE: Duration = Duration::from_millis(500);

/// Where to find the servers and how to call them.
///
/// | field | default | flag |
/// |---|---|---|
/// | `id` | none (round robin) | `--id` |
/// | `env` | `dev` | `--env` |
/// | `service` | `game` | `--service` |
/// | `etcd` | `http://127.0.0.1:2379` | `--etcd` (repeatable), env `ETCD_ENDPOINTS` |
/// | `fallback` | round robin | `--fallback rr\|fail` |
/// | `lb` | round robin | `--lb round-robin\|least-request\|ring-hash` |
/// | `hash_key` | none | `--hash-key` (needed by ring-hash) |
/// | `hash_header` | none (the key rides as a request extension) | `--hash-header NAME` |
/// | `etcd_ca` | none (plain `http://`) | `--etcd-ca` |
/// | `etcd_client_cert` | none | `--etcd-cert` and `--etcd-key` |
/// | `etcd_auth` | none | `--etcd-user`, password from env `ETCD_PASSWORD` |
/// | `tls_ca` | none (plaintext gRPC) | `--tls-ca` |
/// | `tls_domain` | the host of each address | `--tls-domain` |
/// | `health_check` | none (off) | `--health-check [SERVICE]` |
/// | `call_timeout` | 10 s (no flag) | |
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Instance id every call is pinned to (sticky); `None` for round robin.
    pub id: Option<String>,
    /// Environment, the second segment of the key prefix.
    pub env: String,
    /// Service name, the third segment of the key prefix.
    pub service: String,
    /// etcd client URLs.
    pub etcd: Vec<String>,
    /// What a sticky call does when its instance is unavailable (the
    /// fallback goes where [`lb`](Self::lb) picks).
    pub fallback: Fallback,
    /// The balancing policy of the calls that are not sticky.
    pub lb: Lb,
    /// The key every call carries for [`Lb::RingHash`] (other policies
    /// ignore it); with ring hash and no key, calls go to random instances.
    pub hash_key: Option<String>,
    /// Send [`hash_key`](Self::hash_key) as this request header, and have
    /// ring hash read the key from it (gRFC A76) instead of from a
    /// [`HashKey`] extension: the same instance either way.
    pub hash_header: Option<String>,
    /// etcd TLS: the PEM file of the CA that signed etcd's certificate;
    /// the endpoints must then be `https://`.
    pub etcd_ca: Option<PathBuf>,
    /// etcd TLS: the PEM files of a client certificate and its key, for an
    /// etcd started with `--client-cert-auth`; needs [`etcd_ca`](Self::etcd_ca).
    pub etcd_client_cert: Option<(PathBuf, PathBuf)>,
    /// etcd user and password, for an etcd with authentication enabled.
    pub etcd_auth: Option<EtcdAuth>,
    /// gRPC TLS: the PEM file of the CA that signed the servers'
    /// certificates; `None` speaks plaintext HTTP/2.
    pub tls_ca: Option<PathBuf>,
    /// gRPC TLS: the name every server's certificate must hold, instead of
    /// the host of its address.
    pub tls_domain: Option<String>,
    /// Limit for one call, waiting for an instance included (after the
    /// first instance was found).
    pub call_timeout: Duration,
    /// Client-side health checking: the service name each server's
    /// `grpc.health.v1.Health/Watch` is asked about; a server reporting
    /// NOT_SERVING gets no new calls at once.
    pub health_check: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: None,
            env: "dev".to_owned(),
            service: "game".to_owned(),
            etcd: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
            fallback: Fallback::RoundRobin,
            lb: Lb::RoundRobin,
            hash_key: None,
            hash_header: None,
            etcd_ca: None,
            etcd_client_cert: None,
            etcd_auth: None,
            tls_ca: None,
            tls_domain: None,
            call_timeout: Duration::from_secs(10),
            health_check: None,
        }
    }
}

/// The balancing policies `echo-client` offers (`--lb`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Lb {
    /// [`RoundRobin`]: the default.
    #[default]
    RoundRobin,
    /// [`LeastRequest`], two choices.
    LeastRequest,
    /// [`RingHash`] of [`Config::hash_key`].
    RingHash,
}

impl Lb {
    /// The balancer policy.
    pub fn policy(self) -> Box<dyn Policy> {
        match self {
            Self::RoundRobin => Box::new(RoundRobin),
            Self::LeastRequest => Box::new(LeastRequest::new()),
            Self::RingHash => Box::new(RingHash::new()),
        }
    }
}

impl Config {
    /// The balancer policy: [`lb`](Self::lb)'s, ring hash reading
    /// [`hash_header`](Self::hash_header) when set.
    pub fn policy(&self) -> Result<Box<dyn Policy>, http::header::InvalidHeaderName> {
        match (self.lb, &self.hash_header) {
            (Lb::RingHash, Some(header)) => Ok(Box::new(RingHash::new().hash_header(header)?)),
            (lb, _) => Ok(lb.policy()),
        }
    }

    /// The etcd key prefix, `discovery/<env>/<service>`.
    pub fn prefix(&self) -> String {
        format!("discovery/{}/{}", self.env, self.service)
    }
}

/// Why a [`Client`] could not be built: invalid settings (endpoints, PEM
/// files), or etcd rejected the TLS settings or the user.
#[derive(Debug)]
pub struct Error(String);

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// An echo client over every instance registered under the prefix: the
/// `resolver` follows etcd, the `balancer` spreads the calls.
///
/// Cheap to clone; clones share the resolution and the connections.
#[derive(Clone)]
pub struct Client {
    echo: EchoClient<Balancer>,
    balancer: Balancer,
    prefix: Arc<str>,
    id: Option<Arc<str>>,
    hash_key: Option<HashKey>,
    /// The header carrying the key, and its value, instead of `hash_key`.
    hash_header: Option<(
        tonic::metadata::AsciiMetadataKey,
        tonic::metadata::AsciiMetadataValue,
    )>,
    call_timeout: Duration,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("prefix", &self.prefix)
            .field("id", &self.id)
            .field("balancer", &self.balancer)
            .finish()
    }
}

impl Client {
    /// Starts discovering `discovery/<env>/<service>` and balancing over it.
    ///
    /// Without an etcd user, etcd need not be up: the resolver retries with
    /// backoff and the calls wait for an instance. Fails on settings that
    /// cannot work (endpoints, PEM files, `--tls-ca`), on TLS settings or a
    /// user etcd rejects, and, with a user, when etcd cannot be reached
    /// (see [`resolver::ResolverBuilder::connect`]).
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let prefix = config.prefix();
        let policy = config
            .policy()
            .map_err(|e| Error(format!("invalid --hash-header: {e}")))?;
        let hash_key = config.hash_key.as_deref().map(HashKey::new);
        let hash_header = match (&config.hash_header, &config.hash_key) {
            (Some(name), Some(key)) => Some((
                name.parse::<tonic::metadata::AsciiMetadataKey>()
                    .map_err(|e| Error(format!("invalid --hash-header {name:?}: {e}")))?,
                key.parse::<tonic::metadata::AsciiMetadataValue>().map_err(|e| {
                    Error(format!(
                        "--hash-key {key:?} cannot be sent as a header (printable ASCII only): {e}"
                    ))
                })?,
            )),
            _ => None,
        };
        let mut resolver =
            Resolver::builder(prefix.as_str()).etcd_endpoints(config.etcd.iter().cloned());
        if let Some(ca) = &config.etcd_ca {
            let mut tls = EtcdTls::ca_file(ca);
            if let Some((cert, key)) = &config.etcd_client_cert {
                tls = tls.client_cert_files(cert, key);
            }
            resolver = resolver.etcd_tls(tls);
        } else if config.etcd_client_cert.is_some() {
            return Err(Error(
                "an etcd client certificate needs the CA that signed etcd's certificate too \
                 (--etcd-ca)"
                    .into(),
            ));
        }
        if let Some(auth) = &config.etcd_auth {
            resolver = resolver.etcd_auth(auth.user.as_str(), auth.password.expose());
        }
        let mut endpoint_config = EndpointConfig::default();
        if let Some(ca) = &config.tls_ca {
            let pem = std::fs::read(ca).map_err(|e| {
                Error(format!(
                    "cannot read the TLS CA file {:?}: {e}",
                    ca.display().to_string()
                ))
            })?;
            let mut tls = TlsConfig::from_pem(&pem).map_err(|e| {
                Error(format!(
                    "cannot use the TLS CA file {:?}: {e}",
                    ca.display().to_string()
                ))
            })?;
            if let Some(domain) = &config.tls_domain {
                tls = tls.domain(domain.as_str());
            }
            endpoint_config.tls = Some(tls);
        }
        let resolution = resolver
            .connect()
            .await
            .map_err(|e| Error(e.to_string()))?
            .resolve();
        endpoint_config.health_check = config.health_check.clone();
        let balancer = Balancer::builder()
            .name(prefix.as_str())
            .fallback(config.fallback)
            .policy(policy)
            .endpoint_config(endpoint_config)
            .build(resolution);
        Ok(Self {
            echo: EchoClient::new(balancer.clone()),
            balancer,
            prefix: prefix.into(),
            id: config.id.map(Into::into),
            hash_key,
            hash_header,
            call_timeout: config.call_timeout,
        })
    }

    /// The etcd key prefix followed.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The balancer, for its endpoint states and counters.
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }

    /// Waits until an instance is READY. If none is within
    /// [`WAIT_LOG_GRACE`], logs `waiting for instances of <prefix>` once
    /// first (like the seed), then why each instance found cannot be used,
    /// once per instance and reason: `cannot use instance <addr> (id <id>):
    /// <reason>` (e.g. the server answered with TLS), with a hint.
    pub async fn wait_for_instances(&self) {
        let ready = self.balancer.wait_for_ready(1);
        tokio::pin!(ready);
        if tokio::time::timeout(WAIT_LOG_GRACE, &mut ready)
            .await
            .is_err()
        {
            info!("waiting for instances of {}", self.prefix);
            let mut reported: HashMap<String, String> = HashMap::new();
            loop {
                let mut fresh = Vec::new();
                let news = self.balancer.wait_until(|all| {
                    fresh = all
                        .iter()
                        .filter(|e| e.state != ConnectivityState::Ready)
                        .filter_map(|e| {
                            let error = reason(e.last_error.as_deref()?);
                            (reported.get(&e.key) != Some(&error))
                                .then(|| (e.key.clone(), e.endpoint.clone(), error))
                        })
                        .collect();
                    !fresh.is_empty()
                });
                tokio::select! {
                    biased;
                    () = &mut ready => break,
                    () = news => {}
                }
                if fresh.is_empty() {
                    // The balancer stopped publishing changes: nothing new
                    // to say.
                    ready.await;
                    break;
                }
                for (key, endpoint, error) in fresh.drain(..) {
                    warn!(
                        "cannot use instance {} (id {}): {error}{}",
                        endpoint.addr(),
                        endpoint.instance_id().unwrap_or("none"),
                        hint(&error)
                    );
                    reported.insert(key, error);
                }
            }
        }
        info!(
            ready = self.balancer.ready_count(),
            "instances of {} found", self.prefix
        );
    }

    /// Calls `UnaryEcho` with `message` and returns the reply's message,
    /// e.g. `hi (from 1)`; pinned to the configured instance id, if any.
    pub async fn echo(&self, message: &str) -> Result<String, Status> {
        let mut request = tonic::Request::new(EchoRequest {
            message: message.to_owned(),
        });
        // Bounds the balancer's wait for an instance too.
        request.set_timeout(self.call_timeout);
        if let Some(id) = &self.id {
            request = request.sticky(id.clone());
        }
        if let Some((name, value)) = &self.hash_header {
            request.metadata_mut().insert(name.clone(), value.clone());
        } else if let Some(key) = self.hash_key {
            request.extensions_mut().insert(key);
        }
        let mut echo = self.echo.clone();
        match tokio::time::timeout(self.call_timeout, echo.unary_echo(request)).await {
            Ok(reply) => reply.map(|r| r.into_inner().message),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no reply within {}",
                humantime::format_duration(self.call_timeout)
            ))),
        }
    }
}

impl Client {
    /// Why the instances that are not READY cannot be used, one
    /// `<addr>: <reason>` each (with a hint for TLS mismatches); empty
    /// when every instance is READY or none failed yet.
    pub fn endpoint_errors(&self) -> Vec<String> {
        self.balancer
            .endpoints()
            .iter()
            .filter(|e| e.state != ConnectivityState::Ready)
            .filter_map(|e| {
                let error = reason(e.last_error.as_deref()?);
                Some(format!("{}: {error}{}", e.endpoint.addr(), hint(&error)))
            })
            .collect()
    }
}

/// A connection error without the changing `; retrying in …` tail.
fn reason(error: &str) -> String {
    error
        .split_once("; retrying in")
        .map_or(error, |(reason, _)| reason)
        .to_owned()
}

/// What to do about a connection error, in the terms of the command line.
fn hint(error: &str) -> &'static str {
    if error.contains("configured for plaintext") {
        " (the server serves TLS: give the CA that signed its certificate with --tls-ca)"
    } else if error.contains("invalid peer certificate") {
        " (--tls-ca must be the CA that signed the server's certificate, and the certificate \
         must name the address's host or --tls-domain)"
    } else if error.contains("TLS:") && error.contains("corrupt message") {
        " (the server does not seem to serve TLS: was it started with --tls-cert?)"
    } else {
        ""
    }
}

/// The instance id in a reply `<message> (from <id>)`.
///
/// ```
/// assert_eq!(echo_client::instance_of("hi (from 1)"), Some("1"));
/// assert_eq!(echo_client::instance_of("hi"), None);
/// ```
pub fn instance_of(reply: &str) -> Option<&str> {
    let (_, rest) = reply.rsplit_once("(from ")?;
    rest.strip_suffix(')')
}

/// One line for a failed call: `Unavailable: <message>`.
pub fn describe_status(status: &Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}
