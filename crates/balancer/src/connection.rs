//! One endpoint's connection: connect, observe readiness and the end of the
//! connection, reconnect with backoff.
//!
//! tonic's `Channel` exposes no connection state, so we drive hyper's HTTP/2
//! client ourselves: the connection future resolves when the connection ends
//! (EOF, reset, GOAWAY, keepalive timeout), and the first bytes from the
//! server (its SETTINGS frame) mark it READY — a server that accepts TCP but
//! never speaks (SIGSTOPped, overloaded) stays CONNECTING.

use std::{fmt, io, sync::Arc, time::Duration};

use crate::{
    EndpointConfig,
    backoff::Backoff,
    probe::{self, Link, Monitored, Verdict},
    replay::SendBody,
    state::{ConnectivityState, Exclusion},
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

/// A ready connection's request handle.
pub(crate) type Sender = http2::SendRequest<SendBody>;

/// What an endpoint's connection task tells the owner task.
pub(crate) struct StateEvent {
    pub(crate) key: String,
    pub(crate) generation: u64,
    pub(crate) state: ConnectivityState,
    pub(crate) sender: Option<Sender>,
    pub(crate) error: Option<String>,
    /// READY but not to be picked, and why (freeze suspicion).
    pub(crate) suspected: Option<Exclusion>,
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

type Connected = (Sender, oneshot::Receiver<()>, Option<Arc<Link>>);

/// Keeps one endpoint connected until the task is aborted (the endpoint was
/// removed or replaced), reporting every state change.
pub(crate) async fn run(
    key: String,
    generation: u64,
    endpoint: Endpoint,
    config: EndpointConfig,
    events: mpsc::UnboundedSender<StateEvent>,
) {
    let report = |state, sender, error, suspected| {
        let _ = events.send(StateEvent {
            key: key.clone(),
            generation,
            state,
            sender,
            error,
            suspected,
        });
    };
    let mut backoff = Backoff::new(config.backoff);
    loop {
        report(ConnectivityState::Connecting, None, None, None);
        let timeout = config.connect_timeout.max(backoff.current());
        match connect(&endpoint, &config, timeout).await {
            Ok((sender, closed, link)) => {
                let up_since = Instant::now();
                report(ConnectivityState::Ready, Some(sender.clone()), None, None);
                let ended = match (link, config.freeze_detection) {
                    (Some(link), Some(detection)) => {
                        let watcher = probe::watch(link, detection, |verdict| {
                            let suspected = match verdict {
                                Verdict::Suspected {
                                    silent_for,
                                    in_flight,
                                } => Some(Exclusion::Suspected {
                                    silent_for,
                                    in_flight,
                                }),
                                Verdict::Cleared { rtt } => {
                                    tracing::debug!(endpoint = %endpoint, ?rtt, "silent server answered the PING probe");
                                    None
                                }
                            };
                            report(
                                ConnectivityState::Ready,
                                Some(sender.clone()),
                                None,
                                suspected,
                            );
                        });
                        let mut closed = closed;
                        tokio::select! {
                            _ = &mut closed => "connection closed".to_string(),
                            reason = watcher => {
                                // The IO now fails, so hyper ends the
                                // connection and its calls.
                                let _ = closed.await;
                                reason
                            }
                        }
                    }
                    _ => {
                        let _ = closed.await;
                        "connection closed".to_string()
                    }
                };
                drop(sender);
                report(ConnectivityState::Idle, None, Some(ended), None);
                // A connection that stayed up earns a fresh backoff and an
                // immediate reconnect; one that dropped at once is treated as
                // a failed attempt, so a flapping server is not a hot loop.
                if up_since.elapsed() >= config.backoff.base {
                    backoff.reset();
                    continue;
                }
                tokio::time::sleep(backoff.next_delay(fastrand::f64())).await;
            }
            Err(e) => {
                let delay = backoff.next_delay(fastrand::f64());
                report(
                    ConnectivityState::TransientFailure,
                    None,
                    Some(format!("{e}; retrying in {delay:.1?}")),
                    None,
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
    timeout: Duration,
) -> Result<Connected, ConnectError> {
    let attempt = async {
        let tcp = TcpStream::connect(endpoint.addr())
            .await
            .map_err(ConnectError::Io)?;
        tcp.set_nodelay(true).map_err(ConnectError::Io)?;
        match &config.tls {
            None => handshake(tcp, endpoint, config).await,
            Some(tls) => {
                let name = tls
                    .server_name(endpoint.addr())
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                let stream = tls
                    .connector()
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                handshake(stream, endpoint, config).await
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
    let io = TokioIo::new(io);
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
