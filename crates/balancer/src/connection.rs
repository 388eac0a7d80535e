//! One endpoint's connection: connect, observe readiness and the end of the
//! connection, reconnect with backoff.
//!
//! tonic's `Channel` exposes no connection state, so we drive hyper's HTTP/2
//! client ourselves: the connection future resolves when the connection ends
//! (EOF, reset, GOAWAY, keepalive timeout), and the first bytes from the
//! server (its SETTINGS frame) mark it READY — a server that accepts TCP but
//! never speaks (SIGSTOPped, overloaded) stays CONNECTING.

use std::{
    fmt, io,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    EndpointConfig,
    connectivity::ConnectivityState,
    health,
    probe::{self, Link, Monitored, Verdict},
    replay::SendBody,
    state::Exclusion,
};
use discover::Endpoint;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::{mpsc, oneshot},
    time::Instant,
};
use write_coalesce::{Coalesce, Gate};

pub(crate) use crate::http::Sender;

/// What an endpoint's connection task tells the owner task.
pub(crate) struct StateEvent {
    pub(crate) key: String,
    pub(crate) generation: u64,
    pub(crate) state: ConnectivityState,
    pub(crate) sender: Option<Sender>,
    pub(crate) error: Option<String>,
    /// READY but not to be picked, and why (freeze suspicion, health).
    pub(crate) excluded: Vec<Exclusion>,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(io::Error),
    Handshake(hyper::Error),
    Tls(String),
    Timeout(Duration),
    ClosedBeforeSettings,
    ServerSpeaksTls,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connect: {e}"),
            Self::Handshake(e) => write!(f, "HTTP/2 handshake: {e}"),
            Self::Timeout(d) => write!(f, "no HTTP/2 SETTINGS from the server within {d:?}"),
            Self::Tls(e) => write!(f, "TLS: {e}"),
            Self::ServerSpeaksTls => f.write_str(
                "the server answered with TLS; this client is configured for plaintext (set a TLS CA)",
            ),
            Self::ClosedBeforeSettings => {
                f.write_str("connection closed before the server sent HTTP/2 SETTINGS")
            }
        }
    }
}

/// The connection's own reasons not to be picked.
struct Current {
    suspected: Option<Exclusion>,
    not_serving: Option<Exclusion>,
}

type Connected = (Sender, oneshot::Receiver<()>, Option<Arc<Link>>);

/// Keeps one endpoint connected until the task is aborted (the endpoint was
/// removed or replaced), reporting every state change.
pub(crate) async fn run(
    key: String,
    generation: u64,
    endpoint: Endpoint,
    config: EndpointConfig,
    write_gate: Gate,
    events: mpsc::UnboundedSender<StateEvent>,
) {
    let report = |state, sender, error, excluded| {
        let _ = events.send(StateEvent {
            key: key.clone(),
            generation,
            state,
            sender,
            error,
            excluded,
        });
    };
    let mut backoff = config.backoff.attempts();
    loop {
        report(ConnectivityState::Connecting, None, None, Vec::new());
        let timeout = config.connect_timeout.max(backoff.current());
        match connect(&endpoint, &config, &write_gate, timeout).await {
            Ok((sender, mut closed, link)) => {
                let up_since = Instant::now();
                // Per gRFC A17 a health-checked endpoint is not picked before
                // its first SERVING.
                let current = Mutex::new(Current {
                    suspected: None,
                    not_serving: config.health_check.as_ref().map(|service| {
                        Exclusion::NotServing {
                            service: service.clone(),
                            status: "no health answer yet".into(),
                        }
                    }),
                });
                let publish =
                    |suspected: Option<Option<Exclusion>>,
                     not_serving: Option<Option<Exclusion>>| {
                        if let Ok(mut current) = current.lock() {
                            if let Some(suspected) = suspected {
                                current.suspected = suspected;
                            }
                            if let Some(not_serving) = not_serving {
                                current.not_serving = not_serving;
                            }
                            let excluded = current
                                .suspected
                                .iter()
                                .chain(current.not_serving.iter())
                                .cloned()
                                .collect();
                            report(
                                ConnectivityState::Ready,
                                Some(sender.clone()),
                                None,
                                excluded,
                            );
                        }
                    };
                publish(None, None);
                let freeze = async {
                    let (Some(link), Some(detection)) = (link.clone(), config.freeze_detection)
                    else {
                        return std::future::pending().await;
                    };
                    probe::watch(link, detection, |verdict| match verdict {
                        Verdict::Suspected {
                            silent_for,
                            in_flight,
                        } => publish(
                            Some(Some(Exclusion::Suspected {
                                silent_for,
                                in_flight,
                            })),
                            None,
                        ),
                        Verdict::Cleared { rtt } => {
                            tracing::debug!(endpoint = %endpoint, ?rtt, "silent server answered the PING probe");
                            publish(Some(None), None);
                        }
                    })
                    .await
                };
                let health = async {
                    if let Some(service) = &config.health_check {
                        health::watch(
                            sender.clone(),
                            config.tls.is_some(),
                            &endpoint,
                            service,
                            config.backoff,
                            || {
                                if let Some(link) = &link {
                                    link.skip_next_stream();
                                }
                            },
                            |not_serving| publish(None, Some(not_serving)),
                        )
                        .await;
                    }
                    // Disabled (or off): nothing more to watch.
                    std::future::pending::<()>().await
                };
                let ended = tokio::select! {
                    _ = &mut closed => "connection closed".to_string(),
                    reason = freeze => {
                        // The IO now fails, so hyper ends the connection and
                        // its calls.
                        let _ = closed.await;
                        reason
                    }
                    () = health => "connection closed".to_string(),
                };
                drop(sender);
                report(ConnectivityState::Idle, None, Some(ended), Vec::new());
                // A connection that stayed up earns a fresh backoff and an
                // immediate reconnect; one that dropped at once is treated as
                // a failed attempt, so a flapping server is not a hot loop.
                if up_since.elapsed() >= config.backoff.base {
                    backoff.reset();
                    continue;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                report(
                    ConnectivityState::TransientFailure,
                    None,
                    Some(format!("{e}; retrying in {delay:.1?}")),
                    Vec::new(),
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Opens TCP (and TLS if configured), runs the HTTP/2 handshake and waits
/// for the server's first bytes. Returns the request handle, a receiver
/// that fires when the connection has ended, and the freeze watch's link.
async fn connect(
    endpoint: &Endpoint,
    config: &EndpointConfig,
    write_gate: &Gate,
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    let attempt = async {
        let tcp = TcpStream::connect(endpoint.addr())
            .await
            .map_err(ConnectError::Io)?;
        tcp.set_nodelay(true).map_err(ConnectError::Io)?;
        match &config.tls {
            None => {
                handshake(
                    Coalesce::new(tcp).with_gate(write_gate.clone()),
                    endpoint,
                    config,
                )
                .await
            }
            Some(tls) => {
                let name = tls
                    .server_name(endpoint.addr())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let stream = tls
                    .connector()
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                handshake(
                    Coalesce::new(stream).with_gate(write_gate.clone()),
                    endpoint,
                    config,
                )
                .await
            }
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

async fn handshake<S>(
    stream: S,
    endpoint: &Endpoint,
    config: &EndpointConfig,
) -> Result<Connected, ConnectError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (spoke_tx, spoke_rx) = oneshot::channel();
    let (io, link) = Monitored::new(stream, spoke_tx, config.freeze_detection.is_some());
    // Boxed: hyper keeps the IO inside the h2 connection future, and every
    // request's task is a variant of the same enum (hyper's
    // `H2ClientFuture`), so an inline IO (~250 bytes here) would be
    // allocated and copied again with every call.
    let io = TokioIo::new(Box::new(io));
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some(interval) = config.keep_alive_interval {
        builder
            .keep_alive_interval(interval)
            .keep_alive_timeout(config.keep_alive_timeout)
            .keep_alive_while_idle(true);
    }
    if let Some(size) = config.initial_stream_window_size {
        builder.initial_stream_window_size(size);
    }
    if let Some(size) = config.initial_connection_window_size {
        builder.initial_connection_window_size(size);
    }
    let (sender, connection) = builder
        .handshake::<_, SendBody>(io)
        .await
        .map_err(ConnectError::Handshake)?;
    let (closed_tx, closed_rx) = oneshot::channel();
    let addr = endpoint.addr().to_string();
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(endpoint = %addr, error = %e, "connection ended with an error");
        }
        let _ = closed_tx.send(());
    });
    let first = spoke_rx
        .await
        .map_err(|_| ConnectError::ClosedBeforeSettings)?;
    // An HTTP/2 server opens with a SETTINGS frame, whose first byte (the
    // length's high byte) is 0. A TLS record starts with 0x15 (alert) or 0x16
    // (handshake): a plaintext client talking to a TLS server.
    if matches!(first, 0x15 | 0x16) {
        return Err(ConnectError::ServerSpeaksTls);
    }
    Ok((sender, closed_rx, link))
}
