//! [`Server`] (settings) and [`Bound`] (bound, then served): health,
//! reflection, registration and the drain sequence.

use std::{fmt, future::Future, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use registry::{Registered, Registration};
use tokio::net::TcpListener;
use tonic::{body::Body, service::Routes, transport::server::Router};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tower_layer::Layer;
use tower_service::Service;
use tracing::{info, warn};

use crate::{
    Advertise, Error, ErrorKind, Tls,
    advertise::advertised_address,
    error::chain,
    incoming::{BoxIo, ConnInfo, Incoming, Wrap},
};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Default delay between deregistering and stopping: 1 s.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(1);
/// Default limit for in-flight calls once stopping: 10 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default limit for one TLS handshake: 10 s.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a discoverable server runs; [`bind`](Self::bind) or
/// [`listener`](Self::listener) gives a [`Bound`] that serves.
///
/// | setting | default |
/// |---|---|
/// | registration | required: prefix, etcd, instance id, TTL (see [`Registration`]) |
/// | address registered | the registration's address if it has one (`HOST` alone takes the bound port); else the bound address; for a wildcard bind a detected address of this host ([`advertised_address`](crate::advertised_address)) |
/// | health | `grpc.health.v1`, SERVING for `""` and every [`health_for`](Self::health_for) name |
/// | reflection | off; [`reflection`](Self::reflection) adds v1 and v1alpha |
/// | drain | [`DEFAULT_DRAIN`] (1 s) |
/// | shutdown timeout | [`DEFAULT_SHUTDOWN_TIMEOUT`] (10 s) |
/// | TLS | off (plaintext HTTP/2); [`tls`](Self::tls) |
/// | `:authority` fix | on: grpc-go's `discovery%2Fdev%2Fgame` is rewritten so h2 accepts it ([`strict_authority`](Self::strict_authority)) |
/// | connection wrapper | none; [`wrap_connections`](Self::wrap_connections) |
pub struct Server {
    registration: Registration,
    health_names: Vec<String>,
    reflection: Vec<&'static [u8]>,
    drain: Duration,
    shutdown_timeout: Duration,
    tls: Option<Tls>,
    handshake_timeout: Duration,
    authority: Option<authority_fix::Config>,
    wrap: Option<Wrap>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("registration", &self.registration)
            .field("health_names", &self.health_names)
            .field("reflection", &self.reflection.len())
            .field("drain", &self.drain)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .field("authority", &self.authority)
            .field("wrap", &self.wrap.is_some())
            .finish()
    }
}

impl Server {
    /// A server registered by `registration`. Its address may be empty
    /// (`Registration::new(prefix, "")`): the bound address is registered,
    /// or for a wildcard bind a detected address of this host. A `HOST`
    /// without a port is registered with the bound port.
    pub fn new(registration: Registration) -> Self {
        Self {
            registration,
            health_names: Vec::new(),
            reflection: Vec::new(),
            drain: DEFAULT_DRAIN,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            tls: None,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            authority: Some(authority_fix::Config::default()),
            wrap: None,
        }
    }

    /// Reports SERVING for the service `name` (e.g.
    /// `GameServer::<MyGame>::NAME`, from `tonic::server::NamedService`)
    /// until shutdown, NOT_SERVING from then on. `""` (the whole server)
    /// always is.
    pub fn health_for(mut self, name: impl Into<String>) -> Self {
        self.health_names.push(name.into());
        self
    }

    /// Serves gRPC server reflection (v1 and v1alpha, for `grpcurl`) for
    /// the encoded `FileDescriptorSet` `descriptors`, plus health's; call it
    /// once per set.
    pub fn reflection(mut self, descriptors: &'static [u8]) -> Self {
        self.reflection.push(descriptors);
        self
    }

    /// The delay between deregistering and stopping, for clients to see the
    /// deletion and stop sending new calls here.
    pub fn drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// How long in-flight calls may take to finish once stopping.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Serves gRPC over TLS.
    pub fn tls(mut self, tls: Tls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The limit for one TLS handshake; a client that takes longer is
    /// dropped (it delays no other client meanwhile).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// `false` (the default): accepted connections go through
    /// [`authority_fix`] (after TLS), which rewrites the `:authority` that
    /// grpc-go clients send (`discovery%2Fdev%2Fgame`, refused by h2) to a
    /// same-length value h2 accepts. `true`: nothing is rewritten, h2
    /// rejects such calls, and one WARN per such connection names the
    /// Go-side fix (`grpc.WithAuthority`).
    pub fn strict_authority(self, strict: bool) -> Self {
        let mode = if strict {
            authority_fix::Mode::Observe
        } else {
            authority_fix::Mode::Fix
        };
        self.authority_fix(Some(authority_fix::Config::default().mode(mode)))
    }

    /// The [`authority_fix`] settings (limits, mode); `None` leaves the
    /// bytes of every connection alone, without even observing.
    pub fn authority_fix(mut self, config: Option<authority_fix::Config>) -> Self {
        self.authority = config;
        self
    }

    /// Wraps every accepted connection (after TLS, so the wrapper sees
    /// plaintext HTTP/2) before tonic and hyper read it: a byte-level hook
    /// for adapters that fix up what a client sends. Calling it again wraps
    /// the previous wrapper's output.
    ///
    /// ```
    /// use etcdlb_serve::{BoxIo, ConnInfo};
    ///
    /// let server = etcdlb_serve::Server::new(registry::Registration::new("discovery/dev/game", ""))
    ///     .wrap_connections(|io: BoxIo, info: &ConnInfo| {
    ///         tracing::debug!(peer = %info.remote, "accepted");
    ///         io
    ///     });
    /// ```
    pub fn wrap_connections(
        mut self,
        wrap: impl Fn(BoxIo, &ConnInfo) -> BoxIo + Send + Sync + 'static,
    ) -> Self {
        let wrap: Wrap = match self.wrap.take() {
            None => Arc::new(wrap),
            Some(inner) => Arc::new(move |io, info| wrap(inner(io, info), info)),
        };
        self.wrap = Some(wrap);
        self
    }

    /// Binds `addr` (port 0: any free port).
    pub async fn bind(self, addr: SocketAddr) -> Result<Bound, Error> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|e| Error::new(ErrorKind::Bind, format!("cannot listen on {addr}: {e}")))?;
        self.listener(listener)
    }

    /// Uses a listener bound by the caller.
    ///
    /// Fails when the registration's address is a wildcard or not
    /// `HOST[:PORT]` ([`ErrorKind::InvalidConfig`]).
    pub fn listener(self, listener: TcpListener) -> Result<Bound, Error> {
        let local = listener.local_addr().map_err(|e| {
            Error::new(
                ErrorKind::Bind,
                format!("cannot read the bound address: {e}"),
            )
        })?;
        let advertise = match self.registration.registered_address() {
            "" => None,
            given => Some(Advertise::parse(given).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("invalid address to register {given:?}: {e}"),
                )
            })?),
        };
        let advertised = advertised_address(local, advertise.as_ref());
        let (health, _) = tonic_health::server::health_reporter();
        Ok(Bound {
            server: self,
            listener,
            local,
            advertised,
            health,
        })
    }
}

/// A [`Server`] bound to its address, not yet serving nor registered.
pub struct Bound {
    server: Server,
    listener: TcpListener,
    local: SocketAddr,
    advertised: String,
    health: HealthReporter,
}

impl fmt::Debug for Bound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("server", &self.server)
            .field("local", &self.local)
            .field("advertised", &self.advertised)
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address that will be registered (`host:port`).
    pub fn advertised_address(&self) -> &str {
        &self.advertised
    }

    /// The health reporter, to report other statuses meanwhile; shutdown
    /// still sets NOT_SERVING for every name.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Serves `router` (a tonic router of plaintext services: this server
    /// does TLS itself) plus `grpc.health.v1` and, if asked, reflection;
    /// registers the [advertised address](Self::advertised_address); and
    /// runs until `shutdown` completes. Then, in this order:
    ///
    /// 1. health reports `NOT_SERVING` (for every name and for `""`);
    /// 2. the key is deleted and the lease revoked;
    /// 3. the [drain](Server::drain) delay passes, so clients see the
    ///    deletion (calls keep being served meanwhile);
    /// 4. the server stops accepting and waits for in-flight calls, at most
    ///    the [shutdown timeout](Server::shutdown_timeout).
    ///
    /// Fails when the first registration fails or the server stops by
    /// itself. A `shutdown` during the first registration stops the server
    /// without registering.
    pub async fn serve<L, ResBody>(
        self,
        router: Router<L>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error>
    where
        L: Layer<Routes> + Clone,
        L::Service: Service<http::Request<Body>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        <L::Service as Service<http::Request<Body>>>::Future: Send,
        <L::Service as Service<http::Request<Body>>>::Error: Into<BoxError> + Send,
        ResBody: http_body::Body<Data = Bytes> + Send + 'static,
        ResBody::Error: Into<BoxError>,
    {
        let Self {
            server,
            listener,
            local,
            advertised,
            health,
        } = self;
        for name in &server.health_names {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        health.set_service_status("", ServingStatus::Serving).await;
        let mut router = router.add_service(HealthServer::new(
            HealthService::from_health_reporter(health.clone()),
        ));
        if !server.reflection.is_empty() {
            let (v1, v1alpha) = reflection(&server.reflection)?;
            router = router.add_service(v1).add_service(v1alpha);
        }

        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let incoming = Incoming::new(
            listener,
            local,
            server.tls.as_ref().map(|t| (t, server.handshake_timeout)),
            server.authority,
            server.wrap.clone(),
        );
        let serving = router.serve_with_incoming_shutdown(incoming, async {
            let _ = stop_rx.await;
        });
        tokio::pin!(serving);
        tokio::pin!(shutdown);
        info!(
            tls = server.tls.is_some(),
            strict_authority = server
                .authority
                .is_none_or(|a| a.mode == authority_fix::Mode::Observe),
            "listening on {local}"
        );

        let registration = server.registration.address(advertised).register();
        let registered = tokio::select! {
            registered = registration => registered.map_err(|e| {
                Error::new(ErrorKind::Register, e.to_string())
            })?,
            () = &mut shutdown => {
                info!("stopping before registration completed");
                let _ = stop_tx.send(());
                let _ = tokio::time::timeout(server.shutdown_timeout, &mut serving).await;
                return Ok(());
            }
            result = &mut serving => return Err(stopped_by_itself(result)),
        };
        info!("registered {}", registered.key());

        tokio::select! {
            () = &mut shutdown => {}
            result = &mut serving => {
                let _ = registered.deregister().await;
                return Err(stopped_by_itself(result));
            }
        }

        // Steps 1 to 3 run while the server goes on serving.
        let leave = leave(&health, &server.health_names, &registered, server.drain);
        tokio::select! {
            () = leave => {}
            result = &mut serving => {
                return Err(stopped_by_itself(result));
            }
        }
        info!(timeout = ?server.shutdown_timeout, "stopping: waiting for in-flight calls");
        let _ = stop_tx.send(());
        match tokio::time::timeout(server.shutdown_timeout, &mut serving).await {
            Ok(Ok(())) => info!("stopped"),
            Ok(Err(e)) => warn!(error = %chain(&e), "the gRPC server failed while stopping"),
            Err(_) => warn!(
                timeout = ?server.shutdown_timeout,
                "calls still in flight after the shutdown timeout; no longer waiting for them"
            ),
        }
        Ok(())
    }
}

/// Health NOT_SERVING, deregistration, drain delay.
async fn leave(
    health: &HealthReporter,
    names: &[String],
    registered: &Registered,
    drain: Duration,
) {
    info!("shutting down: health NOT_SERVING");
    for name in names {
        health
            .set_service_status(name, ServingStatus::NotServing)
            .await;
    }
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    match registered.deregister().await {
        Ok(()) => info!(key = %registered.key(), "deregistered"),
        Err(e) => {
            warn!(key = %registered.key(), error = %e, "deregistration failed; the key expires with its lease")
        }
    }
    info!(drain = ?drain, "draining");
    tokio::time::sleep(drain).await;
}

fn stopped_by_itself(result: Result<(), tonic::transport::Error>) -> Error {
    Error::new(
        ErrorKind::Serve,
        match result {
            Ok(()) => "the gRPC server stopped by itself".to_owned(),
            Err(e) => format!("the gRPC server failed: {}", chain(&e)),
        },
    )
}

type Reflection<T> = tonic_reflection::server::v1::ServerReflectionServer<T>;
type ReflectionAlpha<T> = tonic_reflection::server::v1alpha::ServerReflectionServer<T>;

#[allow(clippy::type_complexity)]
fn reflection(
    sets: &[&'static [u8]],
) -> Result<
    (
        Reflection<impl tonic_reflection::server::v1::ServerReflection>,
        ReflectionAlpha<impl tonic_reflection::server::v1alpha::ServerReflection>,
    ),
    Error,
> {
    let err = |e: tonic_reflection::server::Error| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot build server reflection: {e}"),
        )
    };
    let builder = || {
        sets.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            |b, set| b.register_encoded_file_descriptor_set(set),
        )
    };
    Ok((
        builder().build_v1().map_err(err)?,
        builder().build_v1alpha().map_err(err)?,
    ))
}
