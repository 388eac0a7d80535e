//! [`Server`]: bind, serve, register, and the drain sequence.

use std::{future::Future, net::SocketAddr, path::Path};

use echo_proto::echo_server::EchoServer;
use futures::TryStreamExt;
use registry::{EtcdTls, Registration};
use tokio::net::TcpListener;
use tonic::transport::{Identity, ServerTlsConfig, server::TcpIncoming};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::{Config, EchoService, Error, ErrorKind};

/// A server bound to its address, not yet serving or registered.
///
/// [`bind`](Self::bind) tells the address before anything is registered
/// (useful with port 0); [`run`](Self::run) does the rest.
#[derive(Debug)]
pub struct Server {
    config: Config,
    listener: TcpListener,
    addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
}

impl Server {
    /// Reads the TLS certificate and key, if any ([`tls_config`]), and binds
    /// `config.addr`.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(tls_config(cert, key)?),
            None => None,
        };
        let listener = TcpListener::bind(config.addr).await.map_err(|e| {
            Error::new(
                ErrorKind::Bind,
                format!("cannot listen on {}: {e}", config.addr),
            )
        })?;
        let addr = listener.local_addr().map_err(|e| {
            Error::new(
                ErrorKind::Bind,
                format!("cannot read the bound address: {e}"),
            )
        })?;
        Ok(Self {
            config,
            listener,
            addr,
            tls,
        })
    }

    /// The bound address, the one that gets registered.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the Echo service, `grpc.health.v1` and server reflection (v1
    /// and v1alpha), registers `discovery/<env>/<service>/<addr>` in etcd,
    /// and runs until `shutdown` completes. Then, in this order:
    ///
    /// 1. health reports `NOT_SERVING` (for every service and for `""`);
    /// 2. the key is deleted and the lease revoked;
    /// 3. [`drain`](Config::drain) passes, so clients see the deletion;
    /// 4. the gRPC server stops accepting and waits for in-flight calls, at
    ///    most [`shutdown_timeout`](Config::shutdown_timeout).
    ///
    /// Fails when the first registration fails (etcd unreachable for
    /// [`connect_timeout`](Config::connect_timeout)) or the server stops by
    /// itself. A `shutdown` that completes during the first registration
    /// stops the server without registering.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let Self {
            config,
            listener,
            addr,
            tls,
        } = self;
        let prefix = config.prefix();

        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<EchoServer<EchoService>>().await;
        let reflection = |e: tonic_reflection::server::Error| {
            Error::new(
                ErrorKind::Serve,
                format!("cannot build server reflection: {e}"),
            )
        };
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(echo_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(reflection)?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(echo_proto::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(reflection)?;

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).map_err(|e| {
                Error::new(ErrorKind::Tls, format!("cannot set up TLS: {}", chain(&e)))
            })?;
        }
        let router = builder
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(EchoServer::new(EchoService::new(config.id.as_str())));
        let fix = authority_fix::Config::default().mode(if config.strict_authority {
            authority_fix::Mode::Observe
        } else {
            authority_fix::Mode::Fix
        });
        let incoming = TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .map_ok(move |tcp| match tcp.peer_addr() {
                Ok(peer) => fix.peer(peer).wrap(tcp),
                Err(_) => fix.wrap(tcp),
            });
        let mut serving = tokio::spawn(router.serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        }));
        info!(
            id = %config.id,
            tls = config.tls.is_some(),
            strict_authority = config.strict_authority,
            "listening on {addr}"
        );

        let mut registration = Registration::new(prefix.as_str(), addr.to_string())
            .etcd_endpoints(config.etcd.iter().cloned())
            .instance_id(config.id.as_str())
            .ttl(config.ttl)
            .connect_timeout(config.connect_timeout);
        if let Some(ca) = &config.etcd_ca {
            let mut tls = EtcdTls::ca_file(ca);
            if let Some((cert, key)) = &config.etcd_client_cert {
                tls = tls.client_cert_files(cert, key);
            }
            registration = registration.etcd_tls(tls);
        } else if config.etcd_client_cert.is_some() {
            serving.abort();
            return Err(Error::new(
                ErrorKind::Register,
                "an etcd client certificate needs the CA that signed etcd's certificate too \
                 (--etcd-ca)",
            ));
        }
        if let Some(auth) = &config.etcd_auth {
            registration = registration.etcd_auth(auth.user.as_str(), auth.password.expose());
        }
        let registration = registration.register();
        tokio::pin!(shutdown);
        let registered = tokio::select! {
            registered = registration => registered.map_err(|e| {
                Error::new(
                    ErrorKind::Register,
                    e.to_string(),
                )
            }),
            () = &mut shutdown => {
                info!("stopping before registration completed");
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(config.shutdown_timeout, serving).await;
                return Ok(());
            }
        };
        let registered = match registered {
            Ok(registered) => registered,
            Err(e) => {
                serving.abort();
                return Err(e);
            }
        };
        info!(id = %config.id, "registered {}", registered.key());

        tokio::select! {
            () = &mut shutdown => {}
            result = &mut serving => {
                let _ = registered.deregister().await;
                return Err(Error::new(ErrorKind::Serve, match result {
                    Ok(Ok(())) => "the gRPC server stopped by itself".to_owned(),
                    Ok(Err(e)) => format!("the gRPC server failed: {e}"),
                    Err(e) => format!("the gRPC server task failed: {e}"),
                }));
            }
        }

        info!("shutting down: health NOT_SERVING");
        health.set_not_serving::<EchoServer<EchoService>>().await;
        health
            .set_service_status("", ServingStatus::NotServing)
            .await;
        match registered.deregister().await {
            Ok(()) => info!(key = %registered.key(), "deregistered"),
            Err(e) => {
                warn!(key = %registered.key(), error = %e, "deregistration failed; the key expires with its lease")
            }
        }
        info!(drain = ?config.drain, "draining");
        tokio::time::sleep(config.drain).await;
        info!(timeout = ?config.shutdown_timeout, "stopping: waiting for in-flight calls");
        let _ = stop_tx.send(());
        match tokio::time::timeout(config.shutdown_timeout, &mut serving).await {
            Ok(Ok(Ok(()))) => info!("stopped"),
            Ok(Ok(Err(e))) => warn!(error = %e, "the gRPC server failed while stopping"),
            Ok(Err(e)) => warn!(error = %e, "the gRPC server task failed while stopping"),
            Err(_) => {
                serving.abort();
                warn!(
                    timeout = ?config.shutdown_timeout,
                    "calls still in flight after the shutdown timeout; closing them"
                );
            }
        }
        Ok(())
    }
}

/// The TLS settings of a server whose certificate chain and private key are
/// in the PEM files `cert` and `key`; fails with [`ErrorKind::Tls`] and a
/// message naming the file when one cannot be read or they cannot be used
/// together (e.g. the key is not the certificate's).
pub fn tls_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, Error> {
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
    let config = ServerTlsConfig::new().identity(Identity::from_pem(
        read("certificate", cert)?,
        read("key", key)?,
    ));
    // Builds the rustls configuration once, to check the pair now.
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .map_err(|e| {
            Error::new(
                ErrorKind::Tls,
                format!(
                    "the TLS certificate {:?} and key {:?} cannot be used together: {}",
                    cert.display().to_string(),
                    key.display().to_string(),
                    chain(&e)
                ),
            )
        })?;
    Ok(config)
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let shown = s.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = s.source();
    }
    text
}

/// Binds, serves, registers and drains: [`Server::bind`] then
/// [`Server::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Server::bind(config).await?.run(shutdown).await
}
