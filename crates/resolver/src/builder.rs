//! [`ResolverBuilder`]: a [`Resolver`] with its own etcd client, over TLS
//! and with a user when etcd wants them.

use std::{fmt, time::Duration};

use etcd::{self as security, EtcdAuth, EtcdConfig, EtcdTls, Secured, describe, diagnose};
use etcd_client::{ConnectOptions, GetOptions};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tracing::warn;

use crate::Resolver;

pub use etcd::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_ETCD_ENDPOINT};

/// Connects a [`Resolver`] to etcd; made by [`Resolver::builder`].
///
/// | setting | default |
/// |---|---|
/// | endpoints | [`DEFAULT_ETCD_ENDPOINT`] |
/// | TLS, user | none: plain `http://`, no authentication |
/// | client options | HTTP/2 keep-alive every 10 s, 5 s timeout |
/// | connect timeout | [`DEFAULT_CONNECT_TIMEOUT`] (5 s, [`EtcdConfig`]'s) |
///
/// ```no_run
/// use etcdlb_resolver::{EtcdTls, Resolver};
///
/// # async fn run() -> Result<(), etcdlb_resolver::ConnectError> {
/// let resolution = Resolver::builder("discovery/dev/game")
///     .etcd_endpoints(["https://etcd-1:2379", "https://etcd-2:2379"])
///     .etcd_tls(EtcdTls::ca_file("ca.pem").client_cert_files("client.pem", "client-key.pem"))
///     .etcd_auth("game-client", std::env::var("ETCD_PASSWORD").unwrap_or_default())
///     .connect()
///     .await?
///     .resolve();
/// # drop(resolution);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ResolverBuilder {
    prefix: String,
    endpoints: Vec<String>,
    options: Option<ConnectOptions>,
    tls: Option<EtcdTls>,
    auth: Option<EtcdAuth>,
    connect_timeout: Duration,
}

impl fmt::Debug for ResolverBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResolverBuilder")
            .field("prefix", &self.prefix)
            .field("etcd_endpoints", &self.endpoints)
            .field("etcd_tls", &self.tls)
            .field("etcd_user", &self.auth.as_ref().map(EtcdAuth::user))
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// Starts describing how to reach etcd for `prefix`
    /// (`discovery/<env>/<service>`).
    pub fn builder(prefix: impl Into<String>) -> ResolverBuilder {
        ResolverBuilder {
            prefix: prefix.into(),
            endpoints: vec![DEFAULT_ETCD_ENDPOINT.to_owned()],
            options: None,
            tls: None,
            auth: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl ResolverBuilder {
    /// Every etcd setting at once: endpoints, TLS, user and connect timeout
    /// (the same [`EtcdConfig`] a server's registration takes; its request
    /// timeout is the registration's only).
    pub fn etcd(mut self, config: &EtcdConfig) -> Self {
        self.endpoints = config.endpoints().to_vec();
        self.tls = config.get_tls().cloned();
        self.auth = config.get_auth().cloned();
        self.connect_timeout = config.get_connect_timeout();
        self
    }

    /// The etcd client URLs, e.g. `http://127.0.0.1:2379`, or `https://…`
    /// with [`etcd_tls`](Self::etcd_tls).
    pub fn etcd_endpoints<I, S>(mut self, endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// Client options replacing the defaults (keep-alive, timeouts); TLS
    /// and user settings are added to them.
    pub fn connect_options(mut self, options: ConnectOptions) -> Self {
        self.options = Some(options);
        self
    }

    /// Connects over TLS (`https://` endpoints): trusts `tls`'s CA and
    /// presents its client certificate, if any.
    pub fn etcd_tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates as `user` (etcd with `auth enable`). The password is
    /// never logged nor shown by `Debug`.
    pub fn etcd_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(EtcdAuth::new(user, password));
        self
    }

    /// How long [`connect`](Self::connect) may take (and each TCP connect).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects and checks the settings with one small read of the prefix.
    ///
    /// Fails with [`ConnectErrorKind::InvalidConfig`] before contacting etcd
    /// on settings that cannot work (no endpoint, unreadable PEM file,
    /// `http://` with TLS, `https://` without); with
    /// [`ConnectErrorKind::Security`] when etcd's certificate is not trusted
    /// or etcd rejects the user or password; with
    /// [`ConnectErrorKind::Etcd`] when the user may not read the prefix; with
    /// [`ConnectErrorKind::Unavailable`] when etcd keeps closing the TLS
    /// connection (client certificate missing or not trusted), or, with a
    /// user, when etcd cannot be reached (a token is needed first).
    ///
    /// Without a user, an etcd that cannot be reached is not an error: the
    /// resolver keeps trying in the background, as with
    /// [`Resolver::connect`].
    pub async fn connect(self) -> Result<Resolver, ConnectError> {
        let invalid = |m: String| ConnectError::new(ConnectErrorKind::InvalidConfig, m);
        if self.prefix.trim_end_matches('/').is_empty() {
            return Err(invalid(
                "empty key prefix: expected something like discovery/<env>/<service>".into(),
            ));
        }
        if self.endpoints.is_empty() {
            return Err(invalid(
                "no etcd endpoint given: pass at least one URL such as http://127.0.0.1:2379"
                    .into(),
            ));
        }
        if self.connect_timeout.is_zero() {
            return Err(invalid(
                "invalid connect timeout 0s: it must be more than zero".into(),
            ));
        }
        let custom = self.options.is_some();
        let base = self.options.unwrap_or_else(|| {
            ConnectOptions::new()
                .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
                .with_connect_timeout(self.connect_timeout)
        });
        let options = security::connect_options(
            &self.endpoints,
            base,
            custom,
            self.tls.as_ref(),
            self.auth.as_ref(),
        )
        .map_err(invalid)?;
        let secured = Secured::of(self.tls.as_ref());
        let doing = format!(
            "cannot resolve {} from etcd at {}",
            self.prefix,
            self.endpoints.join(",")
        );
        let deadline = Instant::now() + self.connect_timeout;
        let connect = etcd::connect(
            &self.endpoints,
            self.tls.as_ref(),
            Some(options),
            self.connect_timeout,
        );
        let connected = match timeout_at(deadline, connect).await {
            Ok(Ok(connected)) => connected,
            Ok(Err(e)) => return Err(ConnectError::from_etcd(&doing, &e, secured)),
            Err(_) => {
                return Err(ConnectError::new(
                    ConnectErrorKind::Unavailable,
                    format!(
                        "{doing}: etcd did not answer within {:?} (connect timeout)",
                        self.connect_timeout
                    ),
                ));
            }
        };
        let mut resolver = Resolver::new(connected.client, self.prefix);
        resolver.members = Some(connected.members);
        resolver.secured = secured;
        resolver.check(deadline, &doing).await?;
        Ok(resolver)
    }
}

impl Resolver {
    /// One count-only read of the prefix, retried until `deadline` while
    /// the failure points at the TLS settings.
    async fn check(&self, deadline: Instant, doing: &str) -> Result<(), ConnectError> {
        let options = GetOptions::new().with_prefix().with_count_only();
        let mut suspicious = None;
        loop {
            let mut client = self.client.clone();
            let read = client.get(self.key_prefix.as_str(), Some(options.clone()));
            let e = match timeout_at(deadline, read).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => break,
            };
            let error = ConnectError::from_etcd(doing, &e, self.secured);
            if error.kind != ConnectErrorKind::Unavailable {
                return Err(error);
            }
            if diagnose(&describe(&e), self.secured).is_none() {
                // Just unreachable: keep trying in the background.
                warn!(%error, "etcd cannot be reached yet; the resolver keeps trying");
                return Ok(());
            }
            suspicious = Some(error);
            if timeout(deadline - Instant::now(), sleep(Duration::from_millis(100)))
                .await
                .is_err()
            {
                break;
            }
        }
        match suspicious {
            Some(error) => Err(error),
            None => {
                warn!(
                    doing,
                    "etcd did not answer in time; the resolver keeps trying"
                );
                Ok(())
            }
        }
    }
}

/// What kind of [`ConnectError`] happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectErrorKind {
    /// A setting is invalid (endpoint, prefix, PEM file, scheme); etcd was
    /// not contacted.
    InvalidConfig,
    /// etcd's TLS certificate is not trusted, or etcd rejected the user or
    /// password (or requires one). Retrying will not help.
    Security,
    /// etcd answered with another error, e.g. permission denied.
    Etcd,
    /// etcd could not be reached, or kept closing the connection.
    Unavailable,
}

/// Why [`ResolverBuilder::connect`] failed: a [`kind`](Self::kind) and a
/// one-line message for the person running the program.
#[derive(Clone)]
pub struct ConnectError {
    kind: ConnectErrorKind,
    message: String,
}

impl ConnectError {
    fn new(kind: ConnectErrorKind, message: String) -> Self {
        Self { kind, message }
    }

    fn from_etcd(doing: &str, e: &etcd_client::Error, secured: Secured) -> Self {
        use tonic::Code;
        let text = describe(e);
        if let Some(d) = diagnose(&text, secured) {
            let kind = if d.fatal {
                ConnectErrorKind::Security
            } else {
                ConnectErrorKind::Unavailable
            };
            return Self::new(kind, format!("{doing}: {text}: {}", d.hint));
        }
        let kind = match e {
            etcd_client::Error::InvalidArgs(_)
            | etcd_client::Error::InvalidUri(_)
            | etcd_client::Error::EndpointError(_) => ConnectErrorKind::InvalidConfig,
            etcd_client::Error::GRpcStatus(s) => match s.code() {
                Code::PermissionDenied
                | Code::Unauthenticated
                | Code::InvalidArgument
                | Code::FailedPrecondition
                | Code::Unimplemented => ConnectErrorKind::Etcd,
                _ => ConnectErrorKind::Unavailable,
            },
            _ => ConnectErrorKind::Unavailable,
        };
        Self::new(kind, format!("{doing}: {text}"))
    }

    /// The category of this error.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectError")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .finish()
    }
}

impl std::error::Error for ConnectError {}
