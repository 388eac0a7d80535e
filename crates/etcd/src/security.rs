//! TLS and user/password authentication for connections to etcd.
//!
//! One job: turn [`EtcdTls`] and [`EtcdAuth`] into etcd-client
//! `ConnectOptions` after checking them against the endpoints
//! ([`connect_options`]), and explain in one line what an etcd connection
//! error means ([`describe`], [`diagnose`]). Shared by the `registry` and the
//! `resolver`, which must not depend on each other. Must not depend on either.
//!
//! ```
//! use etcdlb_etcd::{EtcdAuth, EtcdTls, connect_options};
//!
//! let tls = EtcdTls::ca_pem("-----BEGIN CERTIFICATE-----\nAA\n-----END CERTIFICATE-----\n");
//! let auth = EtcdAuth::new("game", "secret");
//! let endpoints = ["https://127.0.0.1:2379".to_string()];
//! let options = connect_options(&endpoints, Default::default(), false, Some(&tls), Some(&auth));
//! assert!(options.is_ok());
//! assert!(!format!("{auth:?}").contains("secret"));
//! ```

use std::{
    fmt,
    path::{Path, PathBuf},
};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// TLS settings for talking to etcd over `https://`: the CA that signed
/// etcd's server certificate and, for an etcd started with
/// `--client-cert-auth`, a client certificate and its key.
///
/// PEM documents are given as files (read when connecting, so a missing
/// file is reported with its path) or in memory. Key material is never
/// printed by `Debug`.
///
/// ```
/// # use etcdlb_etcd::EtcdTls;
/// let tls = EtcdTls::ca_file("/etc/etcd/ca.pem")
///     .client_cert_files("/etc/etcd/client.pem", "/etc/etcd/client-key.pem")
///     .domain("etcd.internal");
/// assert!(format!("{tls:?}").contains("client-key.pem"));
/// ```
#[derive(Clone, Debug)]
pub struct EtcdTls {
    ca: Pem,
    identity: Option<(Pem, Pem)>,
    domain: Option<String>,
}

/// A PEM document: a file or the text itself.
#[derive(Clone)]
enum Pem {
    File(PathBuf),
    Memory(Vec<u8>),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(path) => write!(f, "{path:?}"),
            // May be a private key: say only how big it is.
            Pem::Memory(pem) => write!(f, "<{} bytes of PEM>", pem.len()),
        }
    }
}

impl Pem {
    /// The document, checked to contain a PEM block whose label ends with
    /// `label` (`CERTIFICATE`, `PRIVATE KEY`).
    fn load(&self, what: &str, label: &str) -> Result<Vec<u8>, String> {
        let (pem, source) = match self {
            Pem::File(path) => (
                std::fs::read(path)
                    .map_err(|e| format!("cannot read the {what} file {}: {e}", show(path)))?,
                format!("file {}", show(path)),
            ),
            Pem::Memory(pem) => (pem.clone(), "PEM given".to_owned()),
        };
        let text = String::from_utf8_lossy(&pem);
        let has_block = text.lines().any(|l| {
            l.strip_prefix("-----BEGIN ")
                .and_then(|l| l.strip_suffix("-----"))
                .is_some_and(|l| l.ends_with(label))
        });
        if !has_block {
            return Err(format!(
                "the {what} {source} holds no PEM {label} (a \"-----BEGIN …{label}-----\" block)"
            ));
        }
        Ok(pem)
    }
}

fn show(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

impl EtcdTls {
    /// Trusts the CA certificate(s) in the PEM file at `path` (etcd's
    /// `--trusted-ca-file` side: the CA that signed etcd's `--cert-file`).
    pub fn ca_file(path: impl Into<PathBuf>) -> Self {
        Self::new(Pem::File(path.into()))
    }

    /// Trusts the CA certificate(s) in `pem`.
    pub fn ca_pem(pem: impl Into<Vec<u8>>) -> Self {
        Self::new(Pem::Memory(pem.into()))
    }

    fn new(ca: Pem) -> Self {
        Self {
            ca,
            identity: None,
            domain: None,
        }
    }

    /// Presents the client certificate and private key in these PEM files,
    /// which etcd requires when started with `--client-cert-auth`.
    pub fn client_cert_files(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.identity = Some((Pem::File(cert.into()), Pem::File(key.into())));
        self
    }

    /// Presents this client certificate and private key (PEM).
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((Pem::Memory(cert.into()), Pem::Memory(key.into())));
        self
    }

    /// The name etcd's certificate must carry, when it is not the host of
    /// the endpoint URL.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    /// Reads and checks the PEM documents, for a TLS stack other than
    /// etcd-client's (the member-failover channel uses rustls directly).
    pub fn load(&self) -> Result<TlsPems, String> {
        let ca = self.ca.load("etcd CA", "CERTIFICATE")?;
        let identity = match &self.identity {
            Some((cert, key)) => Some((
                cert.load("etcd client certificate", "CERTIFICATE")?,
                key.load("etcd client key", "PRIVATE KEY")?,
            )),
            None => None,
        };
        Ok(TlsPems {
            ca,
            identity,
            domain: self.domain.clone(),
        })
    }

    /// Reads and checks the PEM documents.
    fn options(&self) -> Result<TlsOptions, String> {
        let ca = self.ca.load("etcd CA", "CERTIFICATE")?;
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            let cert = cert.load("etcd client certificate", "CERTIFICATE")?;
            let key = key.load("etcd client key", "PRIVATE KEY")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        Ok(tls)
    }
}

/// The PEM documents of an [`EtcdTls`], read and checked by
/// [`EtcdTls::load`].
pub struct TlsPems {
    /// The CA certificate(s) to trust.
    pub ca: Vec<u8>,
    /// Client certificate chain and private key, if any.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name etcd's certificate must carry, if not the endpoint's host.
    pub domain: Option<String>,
}

impl fmt::Debug for TlsPems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key stays out of logs.
        f.debug_struct("TlsPems")
            .field("ca", &format_args!("<{} bytes>", self.ca.len()))
            .field("identity", &self.identity.as_ref().map(|_| "<redacted>"))
            .field("domain", &self.domain)
            .finish()
    }
}

/// A user name and password for an etcd with authentication enabled
/// (`etcdctl auth enable`). The password is never printed: `Debug` shows
/// `<redacted>`.
#[derive(Clone)]
pub struct EtcdAuth {
    user: String,
    password: String,
}

impl EtcdAuth {
    /// Authenticates as `user` with `password`.
    pub fn new(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            password: password.into(),
        }
    }

    /// The user name.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password (for handing to etcd-client; never log it).
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What was configured, to explain connection errors.
#[derive(Clone, Copy, Debug, Default)]
pub struct Secured {
    /// `Some(with a client certificate)` when TLS was configured.
    pub tls: Option<bool>,
}

impl Secured {
    /// What `tls` configures.
    pub fn of(tls: Option<&EtcdTls>) -> Self {
        Self {
            tls: tls.map(|t| t.identity.is_some()),
        }
    }
}

/// What an error met while first connecting probably means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Diagnosis {
    /// Retrying cannot help: the settings are wrong.
    pub fatal: bool,
    /// Said after the error's own message.
    pub hint: &'static str,
}

/// Explains a TLS or authentication failure, from the error's text (the
/// TLS alert etcd sends when it rejects a client certificate does not reach
/// us: the connection is just closed).
pub fn diagnose(message: &str, secured: Secured) -> Option<Diagnosis> {
    let fatal = |hint| Some(Diagnosis { fatal: true, hint });
    let retry = |hint| Some(Diagnosis { fatal: false, hint });
    if message.contains("invalid peer certificate") {
        return fatal(
            "etcd's TLS certificate is not trusted: give the CA that signed it (--etcd-ca) \
             and an endpoint host that the certificate names",
        );
    }
    if message.contains("authentication failed") {
        return fatal("wrong etcd user name or password");
    }
    if message.contains("user name is empty") {
        return fatal(
            "etcd requires authentication: give a user (--etcd-user) and its password \
             (ETCD_PASSWORD)",
        );
    }
    if message.contains("authentication is not enabled") {
        return fatal("etcd does not have authentication enabled: give no user");
    }
    const WANTS_CERT: &str = "etcd closed the TLS connection: it probably requires a client certificate \
         (--etcd-cert, --etcd-key)";
    const DISTRUSTS_CERT: &str = "etcd closed the TLS connection: it probably does not trust the client \
         certificate (--etcd-cert)";
    // Sometimes etcd's TLS alert does reach us: then we know.
    if message.contains("received fatal alert") {
        return match secured.tls {
            Some(true) => fatal(DISTRUSTS_CERT),
            _ => fatal(WANTS_CERT),
        };
    }
    let closed = message.contains("connection closed")
        || message.contains("broken pipe")
        || message.contains("connection reset");
    match secured.tls {
        Some(false) if closed => retry(WANTS_CERT),
        Some(true) if closed => retry(DISTRUSTS_CERT),
        None if closed => {
            retry("if etcd serves TLS, use an https:// endpoint and its CA (--etcd-ca)")
        }
        _ => None,
    }
}

/// Adds TLS and credentials to `options`, after checking them and the
/// endpoints' schemes against each other. `custom` says the caller built
/// `options` itself (it may hold TLS settings already, so an `https://`
/// endpoint without [`EtcdTls`] is accepted). The message is for a person.
pub fn connect_options(
    endpoints: &[String],
    options: ConnectOptions,
    custom: bool,
    tls: Option<&EtcdTls>,
    auth: Option<&EtcdAuth>,
) -> Result<ConnectOptions, String> {
    if let Some(auth) = auth {
        if auth.user.is_empty() {
            return Err("empty etcd user name: give the user to authenticate as".into());
        }
        if auth.password.is_empty() {
            return Err(format!(
                "empty etcd password for user {:?}: give the password (ETCD_PASSWORD)",
                auth.user
            ));
        }
    }
    for e in endpoints {
        if tls.is_some() && e.starts_with("http://") {
            return Err(format!(
                "etcd endpoint {e:?} is plain http:// but TLS settings were given: \
                 use https://"
            ));
        }
        // With custom options the caller may have set TLS on them directly.
        if tls.is_none() && !custom && e.starts_with("https://") {
            return Err(format!(
                "etcd endpoint {e:?} is https:// but no TLS settings were given: \
                 give the CA that signed etcd's certificate (--etcd-ca)"
            ));
        }
    }
    let mut options = options;
    if let Some(tls) = tls {
        options = options.with_tls(tls.options()?);
    }
    if let Some(auth) = auth {
        // Tokens expire (etcd's --auth-token-ttl, 5 min by default); a
        // registration or a resolution lives longer than that.
        options = options
            .with_user(auth.user.clone(), auth.password.clone())
            .with_auto_token_refresh(true);
    }
    Ok(options)
}

/// A one-line description of an etcd-client error: etcd's or the
/// transport's message plus the root cause (e.g. "tcp connect error:
/// Connection refused (os error 111)"), without tonic's debug dump.
pub fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut text, mut source) = match e {
        etcd_client::Error::GRpcStatus(s) if !s.message().is_empty() => {
            (s.message().to_owned(), s.source())
        }
        etcd_client::Error::GRpcStatus(s) => (s.code().description().to_owned(), s.source()),
        other => (other.to_string(), other.source()),
    };
    let mut root = None;
    while let Some(s) = source {
        root = Some(s);
        source = s.source();
    }
    if let Some(root) = root {
        let root = root.to_string();
        if !text.contains(&root) {
            text.push_str(": ");
            text.push_str(&root);
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn err(endpoints: &[&str], tls: Option<&EtcdTls>, auth: Option<&EtcdAuth>) -> String {
        let endpoints: Vec<String> = endpoints.iter().map(|s| s.to_string()).collect();
        connect_options(&endpoints, ConnectOptions::new(), false, tls, auth)
            .expect_err("must be rejected")
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let auth = EtcdAuth::new("u", "hunter2");
        assert!(!format!("{auth:?}").contains("hunter2"));
        assert!(!format!("{auth:#?}").contains("hunter2"));
    }

    #[test]
    fn an_in_memory_key_is_not_in_debug_output() {
        let tls = EtcdTls::ca_pem(CERT).client_cert_pem(CERT, KEY);
        let shown = format!("{tls:?}");
        assert!(!shown.contains("PRIVATE"), "{shown}");
        assert!(shown.contains("bytes of PEM"), "{shown}");
    }

    #[test]
    fn a_missing_ca_file_is_named_with_the_os_error() {
        let tls = EtcdTls::ca_file("/nonexistent/ca.pem");
        let e = err(&["https://127.0.0.1:2379"], Some(&tls), None);
        assert_eq!(
            e,
            "cannot read the etcd CA file \"/nonexistent/ca.pem\": \
             No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_key_given_as_the_certificate_is_rejected() {
        let tls = EtcdTls::ca_pem(KEY);
        let e = err(&["https://h:1"], Some(&tls), None);
        assert_eq!(
            e,
            "the etcd CA PEM given holds no PEM CERTIFICATE \
             (a \"-----BEGIN …CERTIFICATE-----\" block)"
        );
        let tls = EtcdTls::ca_pem(CERT).client_cert_pem(CERT, CERT);
        let e = err(&["https://h:1"], Some(&tls), None);
        assert!(
            e.starts_with("the etcd client key PEM given holds no PEM PRIVATE KEY"),
            "{e}"
        );
        // EC and RSA keys have their own labels.
        let tls = EtcdTls::ca_pem(CERT).client_cert_pem(
            CERT,
            "-----BEGIN EC PRIVATE KEY-----\nAA\n-----END EC PRIVATE KEY-----\n",
        );
        connect_options(
            &["https://h:1".into()],
            ConnectOptions::new(),
            false,
            Some(&tls),
            None,
        )
        .expect("EC key");
    }

    #[test]
    fn tls_with_http_and_https_without_tls_are_rejected() {
        let tls = EtcdTls::ca_pem(CERT);
        assert_eq!(
            err(&["http://127.0.0.1:2379"], Some(&tls), None),
            "etcd endpoint \"http://127.0.0.1:2379\" is plain http:// but TLS settings were \
             given: use https://"
        );
        assert_eq!(
            err(&["https://127.0.0.1:2379"], None, None),
            "etcd endpoint \"https://127.0.0.1:2379\" is https:// but no TLS settings were \
             given: give the CA that signed etcd's certificate (--etcd-ca)"
        );
    }

    #[test]
    fn empty_user_or_password_is_rejected() {
        assert_eq!(
            err(&["http://h:1"], None, Some(&EtcdAuth::new("", "p"))),
            "empty etcd user name: give the user to authenticate as"
        );
        assert_eq!(
            err(&["http://h:1"], None, Some(&EtcdAuth::new("root", ""))),
            "empty etcd password for user \"root\": give the password (ETCD_PASSWORD)"
        );
    }
}
