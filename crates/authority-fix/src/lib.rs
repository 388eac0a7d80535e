//! Lets a Rust HTTP/2 server accept the `:authority` that grpc-go clients
//! send, without patching h2.
//!
//! grpc-go puts its target's endpoint into `:authority`: a client dialing
//! `etcd:///discovery/dev/game` sends `discovery%2Fdev%2Fgame` (grpc-go
//! ≥ 1.57) or `discovery/dev/game` (older). Neither is an RFC 3986
//! authority, so h2 resets every such request with `PROTOCOL_ERROR` before
//! the service sees it, while grpc-go, grpc-java and grpc C++ servers accept
//! them.
//!
//! [`wrap`] puts an [`AuthorityFix`] around an accepted connection (after
//! TLS, if any, and before hyper/tonic). It reads the client's frames as
//! they pass, follows HPACK (the dynamic table's names and sizes), and
//! rewrites, in place, each refused character of an `:authority` literal to
//! an allowed one whose Huffman code has the same length (`/` and `%` become
//! `-`): the value keeps its decoded length, so both sides' HPACK tables stay
//! in step, and a Huffman-coded value keeps its byte length, so no length
//! prefix or frame header changes. `discovery%2Fdev%2Fgame` arrives as
//! `discovery-2Fdev-2Fgame`. Every other byte passes untouched.
//!
//! Bad input is never fatal: on anything it cannot follow (not HTTP/2,
//! bad HPACK or Huffman, a header block above [`Config::max_header_block`],
//! a table size above [`Config::max_table_size`]) it stops looking and
//! passes the rest of the connection through as it is, for h2 to judge.
//! Memory is bounded by the header block limit plus one read.
//!
//! [`Mode::Observe`] changes nothing and logs one WARN per connection whose
//! requests h2 will reject for their `:authority`, naming the Go-side fix
//! (`grpc.WithAuthority(...)`).
//!
//! With tonic, enable the feature `tonic` (it makes [`AuthorityFix`] a
//! `tonic::transport::server::Connected` when the wrapped IO is one) and map
//! the incoming connections:
//! `TcpIncoming::from(listener).map_ok(etcdlb_authority_fix::wrap)` — see
//! `examples/tonic_server.rs`. With TLS, wrap the decrypted stream (the
//! adapter must see HTTP/2 frames): accept TLS yourself and hand tonic the
//! wrapped TLS streams, as the `serve` crate of this workspace does; over
//! tonic's own `tls_config` the adapter would see ciphertext and pass it
//! through untouched.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, ready},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

mod hpack;
mod huffman;
mod rule;
mod scan;

pub use scan::Stats;

/// What an [`AuthorityFix`] does with a refused `:authority`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Rewrite it to an accepted value of the same length (the default).
    #[default]
    Fix,
    /// Change nothing; log one WARN per connection that h2 will reject for
    /// its `:authority`.
    Observe,
}

/// Settings of [`AuthorityFix`]; `Config::default()` is [`Mode::Fix`] with
/// the limits documented on each field.
///
/// ```
/// let config = etcdlb_authority_fix::Config::default().mode(etcdlb_authority_fix::Mode::Observe);
/// assert_eq!(config.max_header_block, 64 * 1024);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Fix or observe.
    pub mode: Mode,
    /// Largest header block (HEADERS + CONTINUATION payloads, padding
    /// included) held back until it is complete; a larger one, or a
    /// CONTINUATION flood, makes the adapter pass the connection through.
    /// Default 64 KiB.
    pub max_header_block: usize,
    /// Largest HPACK dynamic table size update followed (the server's
    /// SETTINGS_HEADER_TABLE_SIZE bounds what a client may use; h2's
    /// default is 4096). Default 64 KiB, at most 16 MiB.
    pub max_table_size: usize,
    /// Longest `:authority` value judged; longer ones are let through.
    /// Default 1024 bytes.
    pub max_authority: usize,
    /// The peer's address, named in log lines.
    pub peer: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            mode: Mode::Fix,
            max_header_block: 64 * 1024,
            max_table_size: 64 * 1024,
            max_authority: 1024,
            peer: None,
        }
    }
}

impl Config {
    /// This config with `mode`.
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// This config naming `peer` in its log lines.
    pub fn peer(mut self, peer: SocketAddr) -> Self {
        self.peer = Some(peer);
        self
    }

    /// Wraps `io` with this config.
    pub fn wrap<IO>(&self, io: IO) -> AuthorityFix<IO> {
        AuthorityFix::new(io, *self)
    }
}

/// Wraps an accepted server connection with the default [`Config`]
/// ([`Mode::Fix`]).
///
/// ```
/// # async fn demo() -> std::io::Result<()> {
/// use tokio::io::AsyncReadExt;
///
/// // What grpc-go >= 1.57 sends for `etcd:///discovery/dev/game` (HPACK,
/// // literal with incremental indexing, raw string).
/// let mut client = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
/// let block = [&[0x41, 22][..], b"discovery%2Fdev%2Fgame"].concat();
/// client.extend_from_slice(&[0, 0, block.len() as u8, 0x1, 0x4, 0, 0, 0, 1]);
/// client.extend_from_slice(&block);
///
/// let mut conn = etcdlb_authority_fix::wrap(&client[..]);
/// let mut seen = Vec::new();
/// conn.read_to_end(&mut seen).await?;
/// assert_eq!(seen.len(), client.len());
/// assert!(seen.ends_with(b"discovery-2Fdev-2Fgame"));
/// # Ok(()) }
/// ```
pub fn wrap<IO>(io: IO) -> AuthorityFix<IO> {
    AuthorityFix::new(io, Config::default())
}

/// An accepted connection whose client-to-server bytes have `:authority`
/// fixed on the way in (see the [crate docs](crate)); writes pass through.
#[derive(Debug)]
pub struct AuthorityFix<IO> {
    io: IO,
    scanner: scan::Scanner,
    /// Bytes read but not yet handed out: `ready` final ones, then an
    /// incomplete header block (which the scanner has seen).
    pending: Vec<u8>,
    ready: usize,
}

impl<IO> AuthorityFix<IO> {
    /// Wraps `io` with `config`.
    pub fn new(io: IO, config: Config) -> Self {
        let limits = scan::Limits {
            max_block: config.max_header_block,
            max_authority: config.max_authority,
        };
        Self {
            io,
            scanner: scan::Scanner::new(
                config.mode,
                limits,
                config.max_table_size.min(16 << 20),
                config.peer,
            ),
            pending: Vec::new(),
            ready: 0,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The wrapped connection, mutably (reading from it directly bypasses
    /// the adapter and desynchronises it).
    pub fn get_mut(&mut self) -> &mut IO {
        &mut self.io
    }

    /// What the adapter has done on this connection so far.
    pub fn stats(&self) -> Stats {
        self.scanner.stats()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for AuthorityFix<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ready > 0 {
                let n = this.ready.min(buf.remaining());
                buf.put_slice(&this.pending[..n]);
                this.pending.drain(..n);
                this.ready -= n;
                this.scanner.shift(n);
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
            let after = buf.filled().len();
            if after == before {
                // EOF: an unfinished block goes out as it is.
                if this.pending.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                this.scanner
                    .give_up("connection ended inside a header block");
                this.ready = this.pending.len();
                continue;
            }
            if this.pending.is_empty() {
                // The common case: scan in the caller's buffer, no copy.
                let chunk = &mut buf.filled_mut()[before..];
                let safe = this.scanner.scan(chunk, 0);
                // A block may start right at the end of the chunk: its
                // start is then 0 of whatever comes next.
                this.scanner.shift(safe);
                if safe == chunk.len() {
                    return Poll::Ready(Ok(()));
                }
                this.pending.extend_from_slice(&chunk[safe..]);
                this.scanner.note_held(this.pending.len());
                buf.set_filled(before + safe);
                if safe > 0 {
                    return Poll::Ready(Ok(()));
                }
                // Nothing final yet; returning no bytes would mean EOF.
                continue;
            }
            let scanned = this.pending.len();
            this.pending.extend_from_slice(&buf.filled()[before..]);
            buf.set_filled(before);
            this.ready = this.scanner.scan(&mut this.pending, scanned);
            this.scanner.note_held(this.pending.len() - this.ready);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Runs the adapter over `input` cut into reads of the given sizes and
/// returns what the server would read, with the adapter's stats. For
/// property tests and the fuzz target; no I/O involved.
///
/// ```
/// let (out, stats) = etcdlb_authority_fix::process(b"not http/2", &[3, 100], Default::default());
/// assert_eq!(out, b"not http/2");
/// assert!(stats.passthrough);
/// ```
pub fn process(input: &[u8], reads: &[usize], config: Config) -> (Vec<u8>, Stats) {
    let mut fix = AuthorityFix::new(
        Chunks {
            data: input,
            reads,
            next: 0,
        },
        config,
    );
    let mut out = Vec::with_capacity(input.len());
    let waker = std::task::Waker::noop();
    let mut cx = Context::from_waker(waker);
    let mut storage = vec![0u8; 1 << 16];
    // Bounded: every read either yields bytes or ends the input.
    for _ in 0..input.len() + reads.len() + 2 {
        let mut buf = ReadBuf::new(&mut storage);
        match Pin::new(&mut fix).poll_read(&mut cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => break,
            Poll::Ready(Ok(())) => out.extend_from_slice(buf.filled()),
            Poll::Ready(Err(_)) | Poll::Pending => break,
        }
    }
    let stats = fix.stats();
    (out, stats)
}

/// HPACK's Huffman encoding of `value`, for test encoders.
#[doc(hidden)]
pub fn huffman_encode(value: &[u8]) -> Vec<u8> {
    let mut out = vec![0; huffman::encoded_len(value)];
    huffman::encode_into(value, &mut out);
    out
}

/// An in-memory reader that hands out `data` in reads of the given sizes
/// (cycling; a size of 0 counts as 1).
struct Chunks<'a> {
    data: &'a [u8],
    reads: &'a [usize],
    next: usize,
}

impl AsyncRead for Chunks<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let size = if self.reads.is_empty() {
            usize::MAX
        } else {
            self.reads[self.next % self.reads.len()].max(1)
        };
        self.next += 1;
        let n = size.min(self.data.len()).min(buf.remaining());
        let (head, rest) = self.data.split_at(n);
        buf.put_slice(head);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}
