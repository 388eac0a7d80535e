//! The accept loop: TCP → TLS (when configured) → the `:authority` fix
//! (`authority-fix`, on by default) → the connection wrapper →
//! [`Coalesce`] (many responses per write) → tonic. Owning it is what lets a wrapper see plaintext HTTP/2 bytes before
//! hyper does, with or without TLS.

use std::{
    fmt, io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use authority_fix::AuthorityFix;
use futures::{Stream, StreamExt, future::BoxFuture, stream::FuturesUnordered};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::debug;
use write_coalesce::Coalesce;

use crate::Tls;

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
            match this.listener.poll_accept(cx) {
                Poll::Ready(Ok((tcp, remote))) => {
                    if let Some(conn) = this.accepted(tcp, remote) {
                        return Poll::Ready(Some(Ok(Coalesce::new(conn))));
                    }
                }
                // tonic logs it and polls again; the listener stays usable.
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(e))),
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
