//! The accept loop: TCP → TLS (when configured) → the `:authority` fix
//! (`authority-fix`, on by default) → the connection wrapper →
//! [`Coalesce`] (many responses per write) → tonic. Owning it is what lets a wrapper see plaintext HTTP/2 bytes before
//! hyper does, with or without TLS.
//!
//! An accept that fails for the process (no file descriptor left: EMFILE,
//! ENFILE; no memory) fails again at once while the listener stays
//! readable, and tonic would poll again at once: a hot loop. So accepting
//! pauses instead, with [`ACCEPT_BACKOFF`] (Go's net/http and grpc-go's
//! server do the same: 5 ms doubling to 1 s), warned once per burst, while
//! TLS handshakes already under way go on.

use std::{
    fmt,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use authority_fix::AuthorityFix;
use backoff::{Attempts, Backoff};
use futures::{Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    time::{Instant, Sleep},
};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, info, warn};
use write_coalesce::Coalesce;

use crate::Tls;

/// The pause after a failed accept: 5 ms, doubling, at most 1 s, no jitter
/// (it paces one process's own retries, nothing to spread).
pub(crate) const ACCEPT_BACKOFF: Backoff = Backoff {
    base: Duration::from_millis(5),
    factor: 2.0,
    max: Duration::from_secs(1),
    jitter: 0.0,
};

/// What a connection wrapper gets and returns: any byte stream.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// A boxed connection, as [`Server::wrap_connections`](crate::Server::wrap_connections)
/// hands it over (after TLS, if any).
pub type BoxIo = Box<dyn Io>;

/// A connection wrapper: gets every accepted connection (after the TLS
/// handshake) and returns what tonic reads and writes.
pub(crate) type Wrap = Arc<dyn Fn(BoxIo, &ConnInfo) -> BoxIo + Send + Sync>;

/// The addresses of an accepted connection, for a
/// [wrapper](crate::Server::wrap_connections) that logs or decides by them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The server's side of the connection.
    pub local: SocketAddr,
}

/// One accepted connection, handed to tonic. Plain TCP stays unboxed so the
/// common case pays no dynamic call per read.
pub(crate) struct Conn {
    io: ConnIo,
    info: ConnInfo,
}

enum ConnIo {
    Tcp(TcpStream),
    Fixed(Box<AuthorityFix<TcpStream>>),
    Boxed(BoxIo),
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        TcpConnectInfo {
            local_addr: Some(self.info.local),
            remote_addr: Some(self.info.remote),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $io:ident => $e:expr) => {
        match &mut $self.get_mut().io {
            ConnIo::Tcp($io) => {
                let $io = Pin::new($io);
                $e
            }
            ConnIo::Fixed($io) => {
                let $io = Pin::new($io);
                $e
            }
            ConnIo::Boxed($io) => {
                let $io = Pin::new($io);
                $e
            }
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_read(cx, buf))
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, io => io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match &self.io {
            ConnIo::Tcp(io) => io.is_write_vectored(),
            ConnIo::Fixed(io) => io.is_write_vectored(),
            ConnIo::Boxed(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, io => io.poll_shutdown(cx))
    }
}

/// The stream of accepted connections tonic serves. Dropping it (tonic does
/// when it stops accepting) closes the listening socket at once.
pub(crate) struct Incoming {
    listener: TcpListener,
    local: SocketAddr,
    tls: Option<(TlsAcceptor, Duration)>,
    authority: Option<authority_fix::Config>,
    wrap: Option<Wrap>,
    handshakes: FuturesUnordered<BoxFuture<'static, Option<Conn>>>,
    /// Failed accepts in the current burst (reset by the next success).
    failures: Attempts,
    /// When the current burst began.
    failing_since: Option<Instant>,
    /// Set while accepting is paused after a failure.
    paused: Option<Pin<Box<Sleep>>>,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("local", &self.local)
            .field("tls", &self.tls.is_some())
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

impl Incoming {
    pub(crate) fn new(
        listener: TcpListener,
        local: SocketAddr,
        tls: Option<(&Tls, Duration)>,
        authority: Option<authority_fix::Config>,
        wrap: Option<Wrap>,
    ) -> Self {
        Self {
            listener,
            local,
            tls: tls.map(|(tls, timeout)| (TlsAcceptor::from(tls.config.clone()), timeout)),
            authority,
            wrap,
            handshakes: FuturesUnordered::new(),
            failures: ACCEPT_BACKOFF.attempts(),
            failing_since: None,
            paused: None,
        }
    }

    /// A failed accept: errors about the one connection being accepted are
    /// skipped; any other pauses accepting (see the module docs).
    fn accept_failed(&mut self, e: &io::Error) {
        if is_connection_error(e) {
            debug!(error = %e, "a connection failed while being accepted");
            return;
        }
        let delay = self.failures.next_delay();
        let failed = self.failures.count();
        metrics::counter!("serve.accept_errors").increment(1);
        if failed == 1 {
            self.failing_since = Some(Instant::now());
            warn!(
                local = %self.local,
                error = %e,
                "cannot accept connections; pausing accepts (5 ms doubling to 1 s) until it works again"
            );
        } else {
            debug!(error = %e, failed_accepts = failed, retry_in_ms = delay.as_millis() as u64, "accept failed again");
        }
        self.paused = Some(Box::pin(tokio::time::sleep(delay)));
    }

    /// A successful accept ends a burst of failures.
    fn accept_worked(&mut self) {
        if let Some(since) = self.failing_since.take() {
            info!(
                local = %self.local,
                failed_accepts = self.failures.count(),
                paused_ms = since.elapsed().as_millis() as u64,
                "accepting connections again"
            );
            self.failures.reset();
        }
    }

    fn accepted(&mut self, tcp: TcpStream, remote: SocketAddr) -> Option<Conn> {
        // Small unary calls must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let info = ConnInfo {
            remote,
            local: self.local,
        };
        let authority = self.authority.map(|a| a.peer(remote));
        let Some((acceptor, timeout)) = &self.tls else {
            let io = match (authority, &self.wrap) {
                (None, None) => ConnIo::Tcp(tcp),
                (Some(fix), None) => ConnIo::Fixed(Box::new(fix.wrap(tcp))),
                (None, Some(wrap)) => ConnIo::Boxed(wrap(Box::new(tcp), &info)),
                (Some(fix), Some(wrap)) => ConnIo::Boxed(wrap(Box::new(fix.wrap(tcp)), &info)),
            };
            return Some(Conn { io, info });
        };
        let (acceptor, timeout, wrap) = (acceptor.clone(), *timeout, self.wrap.clone());
        // Handshakes run concurrently, so one slow client delays no other.
        self.handshakes.push(Box::pin(async move {
            match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    // The adapter reads HTTP/2 frames: it goes after TLS.
                    let io: BoxIo = match authority {
                        Some(fix) => Box::new(fix.wrap(tls)),
                        None => Box::new(tls),
                    };
                    let io = match &wrap {
                        Some(wrap) => wrap(io, &info),
                        None => io,
                    };
                    Some(Conn {
                        io: ConnIo::Boxed(io),
                        info,
                    })
                }
                Ok(Err(e)) => {
                    debug!(peer = %remote, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => {
                    debug!(peer = %remote, ?timeout, "TLS handshake timed out");
                    None
                }
            }
        }));
        None
    }
}

impl Stream for Incoming {
    // Coalesce outermost, so h2's small writes wait one scheduler turn for
    // the responses of other calls (one write per call without it; see the
    // write-coalesce crate), above TLS and every wrapper.
    type Item = io::Result<Coalesce<Conn>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pause) = &mut this.paused {
                if pause.as_mut().poll(cx).is_pending() {
                    break;
                }
                this.paused = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, remote))) => {
                    this.accept_worked();
                    if let Some(conn) = this.accepted(tcp, remote) {
                        return Poll::Ready(Some(Ok(Coalesce::new(conn))));
                    }
                }
                // Never handed to tonic, which would poll again at once.
                Poll::Ready(Err(e)) => this.accept_failed(&e),
                Poll::Pending => break,
            }
        }
        while let Poll::Ready(Some(done)) = this.handshakes.poll_next_unpin(cx) {
            if let Some(conn) = done {
                return Poll::Ready(Some(Ok(Coalesce::new(conn))));
            }
        }
        Poll::Pending
    }
}

/// Errors of `accept` about the connection being accepted (it was reset or
/// aborted before we took it), not about the listener or the process: the
/// next accept may well work at once.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}
