//! [`EtcdConfig`]: how to reach etcd, one set of settings and defaults for
//! the server side (registration) and the client side (resolution).

use std::time::Duration;

use crate::security::{EtcdAuth, EtcdTls};

/// The etcd endpoint used when none is given: etcdctl's default.
pub const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";
/// How long connecting to etcd (a registration's first attempt, a
/// resolver's connect and check) may take before it fails.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The limit of each etcd request once connected (keepalives, puts,
/// deregistration).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How to reach etcd: endpoints, TLS, user, timeouts. The same value
/// configures a server's registration and a client's resolver, so the two
/// sides of a service never disagree on where etcd is or how long to wait.
///
/// | setting | default |
/// |---|---|
/// | endpoints | [`DEFAULT_ETCD_ENDPOINT`], or `ETCD_ENDPOINTS` (comma list) with [`from_env`](Self::from_env) |
/// | TLS | none: plain `http://` |
/// | user | none |
/// | connect timeout | [`DEFAULT_CONNECT_TIMEOUT`] (5 s) |
/// | request timeout | [`DEFAULT_REQUEST_TIMEOUT`] (5 s) |
///
/// ```
/// use std::time::Duration;
/// use etcdlb_etcd::{EtcdConfig, EtcdTls};
///
/// let etcd = EtcdConfig::new(["https://etcd-1:2379", "https://etcd-2:2379"])
///     .tls(EtcdTls::ca_file("ca.pem"))
///     .auth("game", "secret")
///     .connect_timeout(Duration::from_secs(2));
/// assert_eq!(etcd.endpoints().len(), 2);
/// assert_eq!(etcd.get_auth().map(|a| a.user()), Some("game"));
/// assert!(!format!("{etcd:?}").contains("secret"));
/// ```
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    tls: Option<EtcdTls>,
    auth: Option<EtcdAuth>,
    connect_timeout: Duration,
    request_timeout: Duration,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self::new([DEFAULT_ETCD_ENDPOINT])
    }
}

impl EtcdConfig {
    /// etcd at `endpoints` (client URLs, `http://` or, with
    /// [`tls`](Self::tls), `https://`), with the other defaults.
    pub fn new<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            tls: None,
            auth: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// etcd at the endpoints of `ETCD_ENDPOINTS` (comma list, blanks
    /// ignored), else [`DEFAULT_ETCD_ENDPOINT`].
    pub fn from_env() -> Self {
        let endpoints: Vec<String> = std::env::var("ETCD_ENDPOINTS")
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            Self::default()
        } else {
            Self::new(endpoints)
        }
    }

    /// Connects over TLS: trusts `tls`'s CA, presents its client
    /// certificate if any.
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Authenticates as `user` (etcd with `auth enable`); the password is
    /// never logged nor shown by `Debug`.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.auth = Some(EtcdAuth::new(user, password));
        self
    }

    /// See the table above.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// See the table above.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The client URLs.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The TLS settings, if any.
    pub fn get_tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    /// The user, if any.
    pub fn get_auth(&self) -> Option<&EtcdAuth> {
        self.auth.as_ref()
    }

    /// The connect timeout in force.
    pub fn get_connect_timeout(&self) -> Duration {
        self.connect_timeout
    }

    /// The request timeout in force.
    pub fn get_request_timeout(&self) -> Duration {
        self.request_timeout
    }
}
