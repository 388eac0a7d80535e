//! [`Tls`]: the server's certificate and key, and the handshake of each
//! accepted connection.

use std::{fmt, path::Path, sync::Arc};

use tokio_rustls::rustls::{
    self, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _},
};

use crate::{Error, ErrorKind};

/// gRPC over TLS: the server's certificate chain and private key (rustls,
/// ring provider, ALPN `h2`).
///
/// The server does the handshake itself, before the
/// [connection wrapper](crate::Server::wrap_connections), so a wrapper sees
/// plaintext HTTP/2 either way. Do not also set `tls_config` on the tonic
/// builder of the router.
///
/// ```no_run
/// # fn demo() -> Result<(), etcdlb_serve::Error> {
/// let tls = etcdlb_serve::Tls::from_pem_files("server.pem".as_ref(), "server.key".as_ref())?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Tls {
    pub(crate) config: Arc<ServerConfig>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads the PEM files of the certificate chain and its key; fails with
    /// [`ErrorKind::Tls`] and a message naming the file when one cannot be
    /// read, holds no certificate or key, or the key is not the
    /// certificate's.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                Error::new(
                    ErrorKind::Tls,
                    format!(
                        "cannot read the TLS {what} file {:?}: {e}",
                        path.display().to_string()
                    ),
                )
            })
        };
        Self::from_pem(&read("certificate", cert)?, &read("key", key)?).map_err(|e| {
            Error::new(
                ErrorKind::Tls,
                format!(
                    "the TLS certificate {:?} and key {:?} cannot be used together: {e}",
                    cert.display().to_string(),
                    key.display().to_string(),
                ),
            )
        })
    }

    /// The certificate chain `cert_pem` and its private key `key_pem`.
    ///
    /// ```
    /// let err = etcdlb_serve::Tls::from_pem(b"", b"").unwrap_err();
    /// assert_eq!(err.to_string(), "no certificate in the PEM data");
    /// ```
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, Error> {
        let tls = |m: String| Error::new(ErrorKind::Tls, m);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| tls(format!("the certificate is not valid PEM: {e}")))?;
        if certs.is_empty() {
            return Err(tls("no certificate in the PEM data".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| tls(format!("no usable private key in the PEM data: {e}")))?;
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| tls(e.to_string()))?
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .map_err(|e| tls(e.to_string()))?;
        Ok(Self::from_rustls(config))
    }

    /// A rustls configuration as is (client certificates, other providers),
    /// adding the `h2` ALPN protocol if it names none.
    pub fn from_rustls(mut config: ServerConfig) -> Self {
        if config.alpn_protocols.is_empty() {
            config.alpn_protocols = vec![b"h2".to_vec()];
        }
        Self {
            config: Arc::new(config),
        }
    }
}
