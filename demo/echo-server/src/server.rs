//! [`Server`]: the echo service on the [`serve`] lifecycle.

use std::{future::Future, net::SocketAddr};

use echo_proto::echo_server::EchoServer;
use registry::{EtcdTls, Registration};
use tonic::server::NamedService;
use tracing::{Instrument, info_span};

use crate::{Config, EchoService, Error, ErrorKind};

/// A server bound to its address, not yet serving or registered.
///
/// [`bind`](Self::bind) tells the address before anything is registered
/// (useful with port 0); [`run`](Self::run) does the rest.
#[derive(Debug)]
pub struct Server {
    id: String,
    fail_rate: crate::FailRate,
    delay: std::time::Duration,
    bound: serve::Bound,
}

impl Server {
    /// Reads the TLS certificate and key, if any, checks the etcd settings,
    /// and binds `config.addr`.
    pub async fn bind(config: Config) -> Result<Self, Error> {
        let tls = match &config.tls {
            Some((cert, key)) => Some(serve::Tls::from_pem_files(cert, key)?),
            None => None,
        };
        let mut server = serve::Server::new(registration(&config)?)
            .health_for(EchoServer::<EchoService>::NAME)
            .reflection(echo_proto::FILE_DESCRIPTOR_SET)
            .drain(config.drain)
            .shutdown_timeout(config.shutdown_timeout)
            .strict_authority(config.strict_authority);
        if !config.authority_adapter {
            server = server.authority_fix(None);
        }
        if let Some(tls) = tls {
            server = server.tls(tls);
        }
        Ok(Self {
            bound: server.bind(config.addr).await?,
            id: config.id,
            fail_rate: config.fail_rate,
            delay: config.delay,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.bound.local_addr()
    }

    /// The address registered: `--advertise`, else the bound one, else (a
    /// wildcard bind) a detected address of this host.
    pub fn advertised_address(&self) -> &str {
        self.bound.advertised_address()
    }

    /// Serves the Echo service, `grpc.health.v1` and server reflection (v1
    /// and v1alpha), registers `discovery/<env>/<service>/<addr>` in etcd,
    /// and runs until `shutdown` completes; then drains as
    /// [`serve::Bound::serve`] describes: health `NOT_SERVING`, key deleted
    /// and lease revoked, [`drain`](Config::drain), graceful stop bounded by
    /// [`shutdown_timeout`](Config::shutdown_timeout).
    ///
    /// Fails when the first registration fails (etcd unreachable for
    /// [`connect_timeout`](Config::connect_timeout)) or the server stops by
    /// itself. A `shutdown` that completes during the first registration
    /// stops the server without registering.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let span = info_span!("echo", id = %self.id);
        let router = tonic::transport::Server::builder().add_service(EchoServer::new(
            EchoService::new(self.id.as_str())
                .with_fail_rate(self.fail_rate)
                .with_delay(self.delay),
        ));
        self.bound.serve(router, shutdown).instrument(span).await
    }
}

/// The registration `config` describes; its address is filled in by
/// [`serve`] from `--advertise` or the bound address.
fn registration(config: &Config) -> Result<Registration, Error> {
    let address = config
        .advertise
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    let mut registration = Registration::new(config.prefix(), address)
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
        return Err(Error::new(
            ErrorKind::Register,
            "an etcd client certificate needs the CA that signed etcd's certificate too \
             (--etcd-ca)",
        ));
    }
    if let Some(auth) = &config.etcd_auth {
        registration = registration.etcd_auth(auth.user.as_str(), auth.password.expose());
    }
    Ok(registration)
}

/// Binds, serves, registers and drains: [`Server::bind`] then
/// [`Server::run`].
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
    Server::bind(config).await?.run(shutdown).await
}
