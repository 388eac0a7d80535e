//! The [`Registration`] builder and the validation of its values.

use std::{fmt, time::Duration};

use etcd::{self as security, EtcdAuth, EtcdConfig, EtcdTls};
use etcd_client::{Client, ConnectOptions};
use serde_json::Value;

use crate::{Error, Registered, task};

/// Default etcd endpoint, the same as the seed's and `etcdctl`'s.
pub use etcd::DEFAULT_ETCD_ENDPOINT;
/// Default lease TTL: 60 s, like the Go seed.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Smallest accepted lease TTL.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// How long the first registration tries: [`EtcdConfig`]'s default.
pub use etcd::DEFAULT_CONNECT_TIMEOUT;
/// The limit of each etcd request: [`EtcdConfig`]'s default.
pub use etcd::DEFAULT_REQUEST_TIMEOUT;

/// Describes what to register and how; [`register`](Registration::register)
/// makes it happen.
///
/// | setting | default |
/// |---|---|
/// | etcd | [`DEFAULT_ETCD_ENDPOINT`], no [`ConnectOptions`] |
/// | etcd TLS, user | none: plain `http://`, no authentication |
/// | metadata | the address as a JSON string |
/// | TTL | [`DEFAULT_TTL`] (60 s), at least [`MIN_TTL`] (2 s) |
/// | keepalive interval | TTL / 3 |
/// | connect timeout (first registration) | [`DEFAULT_CONNECT_TIMEOUT`] (5 s) |
/// | request timeout (each later request) | [`DEFAULT_REQUEST_TIMEOUT`] (5 s) |
///
/// The key is `<prefix>/<address>`, e.g. `discovery/dev/game/127.0.0.1:41234`,
/// and the value is what Go's `endpoints.Manager` writes:
/// `{"Op":0,"Addr":"127.0.0.1:41234","Metadata":"1"}`.
#[derive(Clone)]
pub struct Registration {
    etcd: Etcd,
    tls: Option<EtcdTls>,
    auth: Option<EtcdAuth>,
    prefix: String,
    address: String,
    metadata: Option<Value>,
    ttl: Duration,
    keepalive_interval: Option<Duration>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

#[derive(Clone)]
enum Etcd {
    Endpoints {
        endpoints: Vec<String>,
        /// Boxed: TLS settings make it large.
        options: Option<Box<ConnectOptions>>,
    },
    Client(Box<Client>),
}

/// A validated [`Registration`], what the background task works with.
pub(crate) struct Config {
    pub(crate) key: String,
    pub(crate) address: String,
    pub(crate) metadata: Value,
    /// Whole seconds, as etcd wants them.
    pub(crate) ttl_secs: i64,
    pub(crate) keepalive_interval: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl Registration {
    /// Registers `address` (`host:port`) under `prefix`
    /// (`discovery/<env>/<service>`), with the defaults of the table above.
    pub fn new(prefix: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            etcd: Etcd::Endpoints {
                endpoints: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
                options: None,
            },
            tls: None,
            auth: None,
            prefix: prefix.into(),
            address: address.into(),
            metadata: None,
            ttl: DEFAULT_TTL,
            keepalive_interval: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Every etcd setting at once: endpoints, TLS, user, connect and request
    /// timeouts (the same [`EtcdConfig`] a client's resolver takes).
    /// Replaces a client given with [`client`](Self::client).
    pub fn etcd(mut self, config: &EtcdConfig) -> Self {
        self = self.etcd_endpoints(config.endpoints().iter().cloned());
        self.tls = config.get_tls().cloned();
        self.auth = config.get_auth().cloned();
        self.connect_timeout = config.get_connect_timeout();
        self.request_timeout = config.get_request_timeout();
        self
    }

    /// The etcd client URLs to connect to, e.g. `http://127.0.0.1:2379`.
    /// Replaces a client given with [`client`](Self::client).
    pub fn etcd_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let endpoints = endpoints.into_iter().map(Into::into).collect();
        let options = match self.etcd {
            Etcd::Endpoints { options, .. } => options,
            Etcd::Client(_) => None,
        };
        self.etcd = Etcd::Endpoints { endpoints, options };
        self
    }

    /// Options (TLS, user, timeouts) for connecting to the
    /// [`etcd_endpoints`](Self::etcd_endpoints).
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.etcd = match self.etcd {
            Etcd::Endpoints { endpoints, .. } => Etcd::Endpoints {
                endpoints,
                options: Some(Box::new(options)),
            },
            Etcd::Client(_) => Etcd::Endpoints {
                endpoints: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
                options: Some(Box::new(options)),
            },
        };
        self
    }

    /// Connects to etcd over TLS (`https://` endpoints): trusts `tls`'s CA
    /// and presents its client certificate, if any.
    ///
    /// Checked by [`register`](Self::register) before etcd is contacted: an
    /// unreadable file, a file without a PEM block, an `http://` endpoint, or
    /// an `https://` endpoint without TLS settings is an
    /// [`ErrorKind::InvalidConfig`](crate::ErrorKind::InvalidConfig) error.
    pub fn etcd_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates to etcd as `user` (etcd with `auth enable`). The
    /// password is never logged nor shown by `Debug`.
    ///
    /// A wrong password is an [`ErrorKind::Etcd`](crate::ErrorKind::Etcd)
    /// error from [`register`](Self::register), not retried.
    pub fn etcd_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(EtcdAuth::new(user, password));
        self
    }

    /// Uses an already connected client instead of connecting; many
    /// registrations may share one client (it is cheap to clone).
    pub fn client(mut self, client: Client) -> Self {
        self.etcd = Etcd::Client(Box::new(client));
        self
    }

    /// The endpoint metadata, any JSON value. Readers of the Go stack take a
    /// JSON string as the instance id; see also
    /// [`instance_id`](Self::instance_id).
    pub fn metadata(mut self, metadata: Value) -> Self {
        self.metadata = Some(metadata);
        self
    }

    /// Sets the metadata to the JSON string `id`, the instance id that sticky
    /// requests name.
    pub fn instance_id(self, id: impl Into<String>) -> Self {
        self.metadata(Value::String(id.into()))
    }

    /// The lease TTL: how long the key outlives a server that stopped
    /// without deregistering. At least 2 s; etcd counts in whole seconds, so
    /// a fraction is rounded up.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How often the lease is refreshed; must be shorter than the TTL.
    pub fn keepalive_interval(mut self, interval: Duration) -> Self {
        self.keepalive_interval = Some(interval);
        self
    }

    /// How long [`register`](Self::register) tries (with retries) before
    /// giving up. An etcd that comes up meanwhile is used as soon as its
    /// member is connected (within about 2 s), not at the next backoff step.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The limit for each etcd request once registered (keepalive,
    /// re-registration attempts, metadata updates, deregistration).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Replaces the address to register (`host:port`), e.g. once a server
    /// knows which port it was bound to.
    ///
    /// ```
    /// let r = etcdlb_registry::Registration::new("discovery/dev/game", "")
    ///     .address("10.0.0.5:50051");
    /// assert_eq!(r.key(), "discovery/dev/game/10.0.0.5:50051");
    /// ```
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.address = address.into();
        self
    }

    /// The address as given to [`new`](Self::new) or
    /// [`address`](Self::address), not yet validated.
    ///
    /// ```
    /// let r = etcdlb_registry::Registration::new("discovery/dev/game", "game-1.internal");
    /// assert_eq!(r.registered_address(), "game-1.internal");
    /// ```
    pub fn registered_address(&self) -> &str {
        &self.address
    }

    /// The key prefix, as given to [`new`](Self::new).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The etcd key this registration writes: `<prefix>/<address>`.
    pub fn key(&self) -> String {
        etcd::endpoint_key(&self.prefix, &self.address)
    }

    /// Grants a lease, puts the key with it and starts keeping it alive in
    /// a background task (on the current tokio runtime).
    ///
    /// Invalid settings fail at once with [`ErrorKind::InvalidConfig`]
    /// before etcd is contacted. If etcd cannot be reached, attempts are
    /// retried until the [connect timeout](Self::connect_timeout), then the
    /// error ([`ErrorKind::Unavailable`]) names the endpoints and the last
    /// cause.
    ///
    /// [`ErrorKind::InvalidConfig`]: crate::ErrorKind::InvalidConfig
    /// [`ErrorKind::Unavailable`]: crate::ErrorKind::Unavailable
    pub async fn register(self) -> Result<Registered, Error> {
        let config = self.validate()?;
        let secured = security::Secured::of(self.tls.as_ref());
        let (client, endpoints) = match self.etcd {
            Etcd::Client(_) if self.tls.is_some() || self.auth.is_some() => {
                return Err(Error::invalid(
                    "etcd TLS or user settings were given together with a connected client: \
                     set them on that client's ConnectOptions instead",
                ));
            }
            Etcd::Client(client) => (task::Connect::Ready(client), None),
            Etcd::Endpoints { endpoints, options } => {
                let secured_options = security::connect_options(
                    &endpoints,
                    options.as_deref().cloned().unwrap_or_default(),
                    options.is_some(),
                    self.tls.as_ref(),
                    self.auth.as_ref(),
                )
                .map_err(Error::invalid)?;
                // Without TLS or a user, keep what the caller gave (None:
                // etcd-client's defaults).
                let options = if self.tls.is_none() && self.auth.is_none() {
                    options.map(|o| *o)
                } else {
                    Some(secured_options)
                };
                let described = endpoints.join(",");
                (
                    task::Connect::Endpoints {
                        endpoints,
                        options: options.map(Box::new),
                        tls: self.tls.clone(),
                    },
                    Some(described),
                )
            }
        };
        task::register(config, client, endpoints, secured).await
    }

    fn validate(&self) -> Result<Config, Error> {
        validate_prefix(&self.prefix)?;
        validate_address(&self.address)?;
        if let Etcd::Endpoints { endpoints, .. } = &self.etcd {
            if endpoints.is_empty() {
                return Err(Error::invalid(
                    "no etcd endpoint given: pass at least one URL such as http://127.0.0.1:2379",
                ));
            }
            if let Some(bad) = endpoints.iter().find(|e| e.trim().is_empty()) {
                return Err(Error::invalid(format!(
                    "invalid etcd endpoint {bad:?}: expected a URL such as http://127.0.0.1:2379"
                )));
            }
        }
        if self.ttl < MIN_TTL {
            return Err(Error::invalid(format!(
                "invalid TTL {:?}: the lease TTL must be at least {MIN_TTL:?}",
                self.ttl
            )));
        }
        let ttl_secs = self.ttl.as_secs() + u64::from(self.ttl.subsec_nanos() > 0);
        let ttl_secs = i64::try_from(ttl_secs)
            .map_err(|_| Error::invalid(format!("invalid TTL {:?}: too large", self.ttl)))?;
        let ttl = Duration::from_secs(ttl_secs.unsigned_abs());
        let keepalive_interval = self.keepalive_interval.unwrap_or(ttl / 3);
        if keepalive_interval.is_zero() || keepalive_interval >= ttl {
            return Err(Error::invalid(format!(
                "invalid keepalive interval {keepalive_interval:?}: it must be more than zero \
                 and shorter than the TTL ({ttl:?})"
            )));
        }
        if self.connect_timeout.is_zero() {
            return Err(Error::invalid(
                "invalid connect timeout 0s: it must be more than zero",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::invalid(
                "invalid request timeout 0s: it must be more than zero",
            ));
        }
        Ok(Config {
            key: self.key(),
            address: self.address.clone(),
            metadata: self
                .metadata
                .clone()
                .unwrap_or_else(|| Value::String(self.address.clone())),
            ttl_secs,
            keepalive_interval,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        })
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Registration");
        match &self.etcd {
            Etcd::Endpoints { endpoints, .. } => d.field("etcd_endpoints", endpoints),
            Etcd::Client(_) => d.field("etcd_endpoints", &"<client>"),
        };
        d.field("etcd_tls", &self.tls)
            .field("etcd_user", &self.auth.as_ref().map(EtcdAuth::user));
        d.field("prefix", &self.prefix)
            .field("address", &self.address)
            .field("metadata", &self.metadata)
            .field("ttl", &self.ttl)
            .field("keepalive_interval", &self.keepalive_interval)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

fn validate_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() {
        return Err(Error::invalid(
            "empty key prefix: expected something like discovery/<env>/<service>",
        ));
    }
    if prefix.ends_with('/') {
        return Err(Error::invalid(format!(
            "invalid key prefix {prefix:?}: it must not end with '/' (the key is <prefix>/<address>)"
        )));
    }
    if prefix.chars().any(char::is_whitespace) {
        return Err(Error::invalid(format!(
            "invalid key prefix {prefix:?}: it must not contain whitespace"
        )));
    }
    Ok(())
}

fn validate_address(address: &str) -> Result<(), Error> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "invalid address {address:?}: {why}; expected host:port such as 127.0.0.1:50051"
        )))
    };
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return if socket.port() == 0 {
            bad("port 0 is not a port clients can connect to")
        } else if socket.ip().is_unspecified() {
            bad("a wildcard address is where a server listens, not one clients can connect to")
        } else {
            Ok(())
        };
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return bad("missing port");
    };
    if host.is_empty() {
        return bad("missing host");
    }
    match port.parse::<u16>() {
        Ok(0) => return bad("port 0 is not a port clients can connect to"),
        Ok(_) => {}
        Err(_) => return bad("the port must be a number from 1 to 65535"),
    }
    let hostname_ok = host.split('.').all(|label| {
        !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    });
    if !hostname_ok {
        return bad("the host is neither an IP address nor a host name (IPv6 needs brackets)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_host_and_port_are_accepted() {
        for a in [
            "127.0.0.1:41234",
            "[::1]:80",
            "localhost:1",
            "game-1.svc_a.local:65535",
        ] {
            assert!(validate_address(a).is_ok(), "{a}");
        }
    }

    #[test]
    fn addresses_without_a_usable_port_or_host_are_rejected() {
        for a in [
            "",
            "127.0.0.1",
            "127.0.0.1:",
            ":80",
            "h:0",
            "h:65536",
            "h:x",
            "::1:80",
            "a b:1",
            "h/x:1",
            "127.0.0.1:0",
            "0.0.0.0:50051",
            "[::]:50051",
        ] {
            assert!(validate_address(a).is_err(), "{a}");
        }
    }

    #[test]
    fn debug_shows_the_etcd_user_but_not_the_password() {
        let r = Registration::new("p", "h:1").etcd_auth("game", "hunter2");
        let shown = format!("{r:?}");
        assert!(shown.contains(r#"etcd_user: Some("game")"#), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn fractional_ttl_is_rounded_up_to_whole_seconds() {
        let c = Registration::new("p", "h:1")
            .ttl(Duration::from_millis(2500))
            .validate()
            .expect("valid");
        assert_eq!(c.ttl_secs, 3);
        assert_eq!(c.keepalive_interval, Duration::from_secs(1));
    }

    #[test]
    fn default_metadata_is_the_address_as_a_json_string() {
        let c = Registration::new("p", "h:1").validate().expect("valid");
        assert_eq!(c.metadata, Value::String("h:1".into()));
        assert_eq!(c.ttl_secs, 60);
        assert_eq!(c.keepalive_interval, Duration::from_secs(20));
    }
}
