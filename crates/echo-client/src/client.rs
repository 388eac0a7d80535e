//! [`Config`] and [`Client`]: discovery, balancing and one call.

use std::{fmt, sync::Arc, time::Duration};

use balancer::{Balancer, Fallback, StickyExt};
use echo_proto::{EchoRequest, echo_client::EchoClient};
use tonic::Status;
use tracing::info;

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
    /// What a sticky call does when its instance is unavailable.
    pub fallback: Fallback,
    /// Limit for one call, waiting for an instance included (after the
    /// first instance was found).
    pub call_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            id: None,
            env: "dev".to_owned(),
            service: "game".to_owned(),
            etcd: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
            fallback: Fallback::RoundRobin,
            call_timeout: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The etcd key prefix, `discovery/<env>/<service>`.
    pub fn prefix(&self) -> String {
        format!("discovery/{}/{}", self.env, self.service)
    }
}

/// Why a [`Client`] could not be built: etcd-client refused the endpoints.
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
    /// etcd need not be up: the resolver retries with backoff and the
    /// calls wait for an instance. Fails only on endpoints etcd-client
    /// rejects.
    pub async fn connect(config: Config) -> Result<Self, Error> {
        let prefix = config.prefix();
        let resolution = resolver::Resolver::connect(&config.etcd, None, prefix.as_str())
            .await
            .map_err(|e| Error(format!("cannot use etcd at {}: {e}", config.etcd.join(","))))?
            .resolve();
        let balancer = Balancer::builder()
            .name(prefix.as_str())
            .fallback(config.fallback)
            .build(resolution);
        Ok(Self {
            echo: EchoClient::new(balancer.clone()),
            balancer,
            prefix: prefix.into(),
            id: config.id.map(Into::into),
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
    /// first (like the seed).
    pub async fn wait_for_instances(&self) {
        let ready = self.balancer.wait_for_ready(1);
        tokio::pin!(ready);
        if tokio::time::timeout(WAIT_LOG_GRACE, &mut ready)
            .await
            .is_err()
        {
            info!("waiting for instances of {}", self.prefix);
            ready.await;
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
