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
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use crate::{EndpointConfig, backoff::Backoff, replay::SendBody, state::ConnectivityState};
use discover::Endpoint;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
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
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Io(io::Error),
    Handshake(hyper::Error),
    Timeout(Duration),
    ClosedBeforeSettings,
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => write!(f, "connect: {e}"),
            Self::Handshake(e) => write!(f, "HTTP/2 handshake: {e}"),
            Self::Timeout(d) => write!(f, "no HTTP/2 SETTINGS from the server within {d:?}"),
            Self::ClosedBeforeSettings => {
                f.write_str("connection closed before the server sent HTTP/2 SETTINGS")
            }
        }
    }
}

/// Keeps one endpoint connected until the task is aborted (the endpoint was
/// removed or replaced), reporting every state change.
pub(crate) async fn run(
    key: String,
    generation: u64,
    endpoint: Endpoint,
    config: EndpointConfig,
    events: mpsc::UnboundedSender<StateEvent>,
) {
    let report = |state, sender, error| {
        let _ = events.send(StateEvent {
            key: key.clone(),
            generation,
            state,
            sender,
            error,
        });
    };
    let mut backoff = Backoff::new(config.backoff);
    loop {
        report(ConnectivityState::Connecting, None, None);
        let timeout = config.connect_timeout.max(backoff.current());
        match connect(&endpoint, &config, timeout).await {
            Ok((sender, closed)) => {
                let up_since = Instant::now();
                report(ConnectivityState::Ready, Some(sender), None);
                let _ = closed.await;
                report(
                    ConnectivityState::Idle,
                    None,
                    Some("connection closed".into()),
                );
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
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Opens TCP, runs the HTTP/2 handshake and waits for the server's first
/// bytes. Returns the request handle and a receiver that fires when the
/// connection has ended.
async fn connect(
    endpoint: &Endpoint,
    config: &EndpointConfig,
    timeout: Duration,
) -> Result<(Sender, oneshot::Receiver<()>), ConnectError> {
    let attempt = async {
        let tcp = TcpStream::connect(endpoint.addr())
            .await
            .map_err(ConnectError::Io)?;
        tcp.set_nodelay(true).map_err(ConnectError::Io)?;
        let (spoke_tx, spoke_rx) = oneshot::channel();
        let io = TokioIo::new(FirstRead {
            inner: tcp,
            spoke: Some(spoke_tx),
        });
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
        spoke_rx
            .await
            .map_err(|_| ConnectError::ClosedBeforeSettings)?;
        Ok((sender, closed_rx))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))?
}

/// A stream that reports the first bytes it reads.
struct FirstRead {
    inner: TcpStream,
    spoke: Option<oneshot::Sender<()>>,
}

impl AsyncRead for FirstRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.spoke.is_some()
            && matches!(poll, Poll::Ready(Ok(())))
            && buf.filled().len() > before
            && let Some(spoke) = self.spoke.take()
        {
            let _ = spoke.send(());
        }
        poll
    }
}

impl AsyncWrite for FirstRead {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
