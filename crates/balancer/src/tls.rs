//! TLS for the connections to endpoints (rustls, ring provider).

use std::{fmt, sync::Arc};

use tokio_rustls::{
    TlsConnector,
    rustls::{
        self, ClientConfig, RootCertStore,
        pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject as _},
    },
};

/// Client TLS settings for every endpoint of a balancer: the CA that signs
/// the servers' certificates, optionally a client identity (mutual TLS), and
/// the name to verify (default: the host of each endpoint's address).
///
/// ```
/// # fn demo(ca_pem: &[u8]) -> Result<(), etcdlb_balancer::TlsError> {
/// let tls = etcdlb_balancer::TlsConfig::from_pem(ca_pem)?.domain("game.internal");
/// let config = etcdlb_balancer::EndpointConfig { tls: Some(tls), ..Default::default() };
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsConfig {
    config: Arc<ClientConfig>,
    domain: Option<String>,
}

/// A TLS setting that cannot be used; the message says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

impl TlsConfig {
    /// Trusts the CA certificates in `ca_pem` (PEM, one or more).
    pub fn from_pem(ca_pem: &[u8]) -> Result<Self, TlsError> {
        let builder = builder()?.with_root_certificates(roots(ca_pem)?);
        Ok(Self::from_rustls(builder.with_no_client_auth()))
    }

    /// Trusts `ca_pem` and presents the client certificate chain `cert_pem`
    /// with its private key `key_pem` (mutual TLS).
    pub fn with_identity(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| TlsError(format!("client certificate is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError(
                "client certificate PEM holds no certificate".into(),
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsError(format!("client key is not a valid PEM private key: {e}")))?;
        let config = builder()?
            .with_root_certificates(roots(ca_pem)?)
            .with_client_auth_cert(certs, key)
            .map_err(|e| TlsError(format!("client certificate and key do not match: {e}")))?;
        Ok(Self::from_rustls(config))
    }

    /// Uses a rustls configuration as is, adding the `h2` ALPN protocol if it
    /// names none.
    pub fn from_rustls(mut config: ClientConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        Self {
            config: Arc::new(config),
            domain: None,
        }
    }

    /// Verifies every server against this name instead of its address's host.
    pub fn domain(mut self, name: impl Into<String>) -> Self {
        self.domain = Some(name.into());
        self
    }

    pub(crate) fn connector(&self) -> TlsConnector {
        TlsConnector::from(self.config.clone())
    }

    /// The name to verify for an endpoint at `addr` (`host:port`).
    pub(crate) fn server_name(&self, addr: &str) -> Result<ServerName<'static>, TlsError> {
        let host = match &self.domain {
            Some(domain) => domain.as_str(),
            None => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                host.trim_start_matches('[').trim_end_matches(']')
            }
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| TlsError(format!("{host:?} is not a valid TLS server name: {e}")))
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsConfig")
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, TlsError> {
    // An explicit provider: the process default may be unset or ambiguous
    // when several rustls backends are compiled in.
    ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError(format!("TLS setup failed: {e}")))
}

fn roots(ca_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TlsError(format!("CA certificate is not valid PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError(format!("CA certificate is not usable: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError("CA PEM holds no certificate".into()));
    }
    Ok(roots)
}
