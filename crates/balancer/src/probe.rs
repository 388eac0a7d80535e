//! Freeze detection: notice a server that has calls outstanding but has gone
//! silent, and ask it with an HTTP/2 PING whether it is still there.
//!
//! hyper's client has no on-demand ping, so the connection's IO wrapper
//! ([`Monitored`]) does it itself. It follows the HTTP/2 frames in both
//! directions (a 9-byte header tells each frame's length): on the way out it
//! counts the streams hyper opens and can slip a PING frame in between two of
//! hyper's frames; on the way in it notes when the server last sent anything,
//! which streams it answered, and takes out the ACK of our own PING so that
//! hyper never sees a PING it did not send.
//!
//! A stream is "awaiting the server" from the client's HEADERS until the
//! server's first HEADERS on it (or its end). Only such streams make a
//! connection suspect when it is silent: a stream that has its response
//! headers — a server-streaming watch, a lease keepalive, a health `Watch` —
//! may rightly stay silent for hours, and is no sign of a frozen server.
//!
//! The [`watch`] task decides. grpc-go servers close a connection with
//! `GOAWAY too_many_pings` after more than two "strikes", a strike being a
//! PING that arrives within 5 minutes (2 hours with no stream open) of the
//! previous one with no HEADERS or DATA sent by the server in between. So
//! probes are spent like that: a probe after server HEADERS/DATA is free, any
//! other costs a strike (counted here on the safe side: a strike unless we
//! ourselves saw HEADERS/DATA since the last probe), and no probe is sent that
//! would take the count above two. hyper's own keepalive PINGs (when
//! `keep_alive_interval` is set) are seen on the way out and counted against
//! the same budget. Within one silence the wait before the next probe doubles.

use std::{
    collections::HashSet,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::{Notify, oneshot},
    time::Instant,
};

const PREFACE_LEN: usize = 24;
const HEADER_LEN: usize = 9;
const PING_LEN: usize = HEADER_LEN + 8;
const TYPE_DATA: u8 = 0x0;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_RST_STREAM: u8 = 0x3;
const TYPE_PING: u8 = 0x6;
const TYPE_GOAWAY: u8 = 0x7;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_ACK: u8 = 0x1;
/// Opaque data of our PINGs: this prefix, then a 3-byte sequence number.
const PING_MAGIC: &[u8; 5] = b"lbprb";
/// grpc-go's `maxPingStrikes`: GOAWAY once a connection has more.
const MAX_STRIKES: u32 = 2;
/// grpc-go's longest strike window (`defaultPingTimeout`, used when the server
/// has no stream open); a PING later than that after the previous one is free.
const STRIKE_WINDOW: Duration = Duration::from_secs(2 * 3600 + 60);
/// Read buffer of the wrapper.
const READ_BUF: usize = 16 * 1024;

/// Settings of freeze detection.
///
/// By default suspicion is **adaptive**: an endpoint with calls awaiting
/// their response headers is suspected when it has been silent for
/// [`Adaptive::silence_multiple`] times what is normal for it — the longest
/// recent gap between its bytes while calls awaited it, a decaying maximum
/// kept per connection — but never sooner than [`Adaptive::suspect_floor`]
/// nor later than [`suspect_after`](Self::suspect_after). The PING's
/// timeout is [`Adaptive::probe_multiple`] times its longest recent round
/// trip, between [`Adaptive::probe_floor`] and
/// [`probe_timeout`](Self::probe_timeout). [`fixed`](Self::fixed) uses the
/// two durations as they are.
///
/// The defaults (100 ms floor, 1 s ceiling; PING timeout 400 ms to 1 s):
/// on loopback a unary call's bytes arrive tens of microseconds to 2 ms
/// apart, so a live server is never silent for 100 ms with calls waiting
/// unless its handlers are slow (then it answers the PING at once and is
/// picked again: suspicion costs nothing when wrong); a GC-like pause of
/// 150 ms is shorter than suspicion plus the PING's timeout, so it fails
/// no call.
///
/// ```
/// use std::time::Duration;
/// use etcdlb_balancer::FreezeDetection;
///
/// let adaptive = FreezeDetection::default();
/// assert_eq!(adaptive.suspect_after, Duration::from_secs(1)); // the ceiling
/// let fixed = FreezeDetection::fixed(Duration::from_millis(300), Duration::from_millis(300));
/// assert!(fixed.adaptive.is_none());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FreezeDetection {
    /// How long a server with calls outstanding may send nothing before it is
    /// suspected (no new calls) and probed with a PING: the value itself
    /// when not adaptive, the ceiling when adaptive. Default 1 s.
    pub suspect_after: Duration,
    /// How long to wait for the PING's ACK before the connection is treated
    /// as dead: its calls fail with `UNAVAILABLE` and it reconnects. The
    /// value itself when not adaptive, the ceiling when adaptive. Default
    /// 1 s.
    pub probe_timeout: Duration,
    /// Adaptive bounds (the default); `None`: the two durations above, as
    /// they are.
    pub adaptive: Option<Adaptive>,
}

/// The adaptive part of [`FreezeDetection`]; see there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adaptive {
    /// Suspect after this many times the endpoint's normal silence.
    /// Default 10.
    pub silence_multiple: u32,
    /// Never suspect sooner than this. Default 100 ms.
    pub suspect_floor: Duration,
    /// The PING may take this many times its longest recent round trip.
    /// Default 20.
    pub probe_multiple: u32,
    /// Never give up on a PING sooner than this. Default 400 ms.
    pub probe_floor: Duration,
}

impl Default for Adaptive {
    fn default() -> Self {
        Self {
            silence_multiple: 10,
            suspect_floor: Duration::from_millis(100),
            probe_multiple: 20,
            probe_floor: Duration::from_millis(400),
        }
    }
}

impl Default for FreezeDetection {
    fn default() -> Self {
        Self {
            suspect_after: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            adaptive: Some(Adaptive::default()),
        }
    }
}

impl FreezeDetection {
    /// Fixed bounds: suspect after `suspect_after` of silence, give the
    /// PING `probe_timeout`, whatever is normal for the endpoint.
    pub fn fixed(suspect_after: Duration, probe_timeout: Duration) -> Self {
        Self {
            suspect_after,
            probe_timeout,
            adaptive: None,
        }
    }

    /// The silence after which an endpoint whose normal silence is
    /// `normal` is suspected.
    pub fn suspect_threshold(&self, normal: Duration) -> Duration {
        match self.adaptive {
            None => self.suspect_after,
            Some(a) => normal
                .saturating_mul(a.silence_multiple)
                .clamp(a.suspect_floor.min(self.suspect_after), self.suspect_after),
        }
    }

    /// How long a PING may take, given the longest recent round trip `rtt`
    /// (zero when none was seen yet).
    pub fn probe_deadline(&self, rtt: Duration) -> Duration {
        match self.adaptive {
            None => self.probe_timeout,
            Some(a) => rtt
                .saturating_mul(a.probe_multiple)
                .clamp(a.probe_floor.min(self.probe_timeout), self.probe_timeout),
        }
    }
}

/// What the IO wrapper and the watcher share for one connection.
pub(crate) struct Link {
    epoch: Instant,
    /// Nanoseconds since `epoch` of the last bytes from the server.
    last_rx: AtomicU64,
    /// The longest recent silence while calls awaited the server (ns): a
    /// maximum that loses 1/32 of itself with every new sample.
    normal_gap: AtomicU64,
    /// Nanoseconds since `epoch` when the awaiting-stream count last left zero.
    waiting_since: AtomicU64,
    /// Streams opened by the client that the server has neither answered
    /// (response HEADERS) nor ended.
    outstanding: AtomicUsize,
    /// The watcher is parked because no call awaited the server: the first
    /// call to start wakes it (`call_started`).
    idle: AtomicBool,
    call_started: Notify,
    /// HEADERS and DATA frames received.
    data_frames: AtomicU64,
    /// PINGs hyper itself sent (HTTP/2 keepalive): the server counts them
    /// against the same strike budget as our probes.
    keepalive_pings: AtomicU64,
    going_away: AtomicBool,
    /// The next stream the client opens is the balancer's own health watch,
    /// which is silent by design: not counted.
    skip_next: AtomicBool,
    /// Sequence number of the PING to send (0: none wanted).
    ping_wanted: AtomicU64,
    ping_acked: AtomicU64,
    acked: Notify,
    /// Set to fail the connection: the reason.
    dead: Mutex<Option<String>>,
    is_dead: AtomicBool,
    /// The connection task's waker, to get a PING or a death noticed.
    waker: AtomicWaker,
}

impl Link {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_rx: AtomicU64::new(0),
            normal_gap: AtomicU64::new(0),
            waiting_since: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            idle: AtomicBool::new(false),
            call_started: Notify::new(),
            data_frames: AtomicU64::new(0),
            keepalive_pings: AtomicU64::new(0),
            going_away: AtomicBool::new(false),
            skip_next: AtomicBool::new(false),
            ping_wanted: AtomicU64::new(0),
            ping_acked: AtomicU64::new(0),
            acked: Notify::new(),
            dead: Mutex::new(None),
            is_dead: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn at(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }

    /// Bytes came from the server: the silence they end is a sample of
    /// what is normal, if calls were waiting for it.
    fn received(&self) {
        let now = self.now();
        if self.outstanding.load(Ordering::Relaxed) > 0 {
            let since = self
                .last_rx
                .load(Ordering::Relaxed)
                .max(self.waiting_since.load(Ordering::Relaxed));
            let gap = now.saturating_sub(since);
            let old = self.normal_gap.load(Ordering::Relaxed);
            self.normal_gap
                .store(gap.max(old - old / 32), Ordering::Relaxed);
        }
        self.last_rx.store(now, Ordering::Relaxed);
    }

    /// What is normal silence for this server (see `normal_gap`).
    pub(crate) fn normal_silence(&self) -> Duration {
        Duration::from_nanos(self.normal_gap.load(Ordering::Relaxed))
    }

    /// Calls on the connection still waiting for the server's response
    /// headers.
    pub(crate) fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The next stream opened is not a call (see `skip_next`).
    pub(crate) fn skip_next_stream(&self) {
        self.skip_next.store(true, Ordering::Relaxed);
    }

    fn kill(&self, reason: String) {
        if let Ok(mut dead) = self.dead.lock() {
            *dead = Some(reason);
        }
        self.is_dead.store(true, Ordering::Release);
        self.waker.wake();
    }

    fn death(&self) -> Option<io::Error> {
        if !self.is_dead.load(Ordering::Acquire) {
            return None;
        }
        let reason = self.dead.lock().ok().and_then(|d| d.clone());
        Some(io::Error::new(
            io::ErrorKind::TimedOut,
            reason.unwrap_or_else(|| "connection declared dead".into()),
        ))
    }

    fn request_ping(&self, seq: u64) {
        self.ping_wanted.store(seq, Ordering::Release);
        self.waker.wake();
    }
}

/// The HTTP/2 frame walk of one direction.
#[derive(Default)]
struct FrameWalk {
    /// Bytes of the current frame's header seen so far.
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// Payload bytes of the current frame still to come.
    payload_left: usize,
}

struct Header {
    len: usize,
    kind: u8,
    flags: u8,
    stream: u32,
}

fn parse_header(h: &[u8]) -> Header {
    Header {
        len: (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]),
        kind: h[3],
        flags: h[4],
        stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
    }
}

fn ping_frame(seq: u64) -> [u8; PING_LEN] {
    let mut frame = [0u8; PING_LEN];
    frame[2] = 8;
    frame[3] = TYPE_PING;
    frame[9..14].copy_from_slice(PING_MAGIC);
    frame[14..17].copy_from_slice(&seq.to_be_bytes()[5..8]);
    frame
}

/// The IO under hyper's HTTP/2 client: reports the first byte the server
/// sends and, with freeze detection on, follows the frames (see the module
/// docs).
pub(crate) struct Monitored<S> {
    inner: S,
    spoke: Option<oneshot::Sender<u8>>,
    /// `None`: freeze detection off, a plain pass-through.
    link: Option<Arc<Link>>,
    /// Streams awaiting the server (see the module docs).
    awaiting: HashSet<u32>,
    /// The highest stream id the client has opened: a client HEADERS on a
    /// lower id is trailers, not a new call.
    last_opened: u32,
    // Outgoing side.
    preface_left: usize,
    out: FrameWalk,
    /// A PING being written, and how much of it is out.
    ping: Option<([u8; PING_LEN], usize)>,
    // Incoming side: bytes read from `inner`, `rbuf[rstart..rend]` not yet
    // handed to hyper.
    rbuf: Box<[u8]>,
    rstart: usize,
    rend: usize,
    /// Bytes of the current frame (header included) hyper may have.
    deliver_left: usize,
    eof: bool,
}

impl<S> Monitored<S> {
    pub(crate) fn new(
        inner: S,
        spoke: oneshot::Sender<u8>,
        detect: bool,
    ) -> (Self, Option<Arc<Link>>) {
        let link = detect.then(Link::new);
        let monitored = Self {
            inner,
            spoke: Some(spoke),
            link: link.clone(),
            awaiting: HashSet::new(),
            last_opened: 0,
            preface_left: PREFACE_LEN,
            out: FrameWalk::default(),
            ping: None,
            rbuf: if detect {
                vec![0; READ_BUF].into_boxed_slice()
            } else {
                Box::new([])
            },
            rstart: 0,
            rend: 0,
            deliver_left: 0,
            eof: false,
        };
        (monitored, link)
    }

    fn set_outstanding(&self, link: &Link, before: usize) {
        let now = self.awaiting.len();
        if before == 0 && now > 0 {
            link.waiting_since.store(link.now(), Ordering::Relaxed);
            // Sequentially consistent with the watcher's `idle` then
            // `outstanding`: one of the two sees the other's store, so a
            // call never starts unwatched.
            link.outstanding.store(now, Ordering::SeqCst);
            if link.idle.load(Ordering::SeqCst) && link.idle.swap(false, Ordering::SeqCst) {
                link.call_started.notify_one();
            }
            return;
        }
        link.outstanding.store(now, Ordering::Relaxed);
    }

    /// Follows `bytes` that hyper got written.
    fn track_written(&mut self, mut bytes: &[u8]) {
        let Some(link) = self.link.clone() else {
            return;
        };
        if self.preface_left > 0 {
            let n = self.preface_left.min(bytes.len());
            self.preface_left -= n;
            bytes = &bytes[n..];
        }
        while !bytes.is_empty() {
            if self.out.payload_left > 0 {
                let n = self.out.payload_left.min(bytes.len());
                self.out.payload_left -= n;
                bytes = &bytes[n..];
                continue;
            }
            let n = (HEADER_LEN - self.out.header_len).min(bytes.len());
            self.out.header[self.out.header_len..self.out.header_len + n]
                .copy_from_slice(&bytes[..n]);
            self.out.header_len += n;
            bytes = &bytes[n..];
            if self.out.header_len < HEADER_LEN {
                break;
            }
            self.out.header_len = 0;
            let h = parse_header(&self.out.header);
            self.out.payload_left = h.len;
            let before = self.awaiting.len();
            match h.kind {
                TYPE_HEADERS if h.stream % 2 == 1 && h.stream > self.last_opened => {
                    self.last_opened = h.stream;
                    if link.skip_next.swap(false, Ordering::Relaxed) {
                        continue;
                    }
                    self.awaiting.insert(h.stream);
                }
                TYPE_RST_STREAM => {
                    self.awaiting.remove(&h.stream);
                }
                TYPE_PING if h.flags & FLAG_ACK == 0 => {
                    link.keepalive_pings.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                _ => continue,
            }
            self.set_outstanding(&link, before);
        }
    }

    fn at_frame_boundary(&self) -> bool {
        self.preface_left == 0 && self.out.header_len == 0 && self.out.payload_left == 0
    }
}

impl<S: AsyncWrite + Unpin> Monitored<S> {
    /// Writes a wanted PING if hyper is between frames. `Ready` once no PING
    /// is being written.
    fn poll_ping(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(link) = &self.link else {
            return Poll::Ready(Ok(()));
        };
        if self.ping.is_none() && self.at_frame_boundary() {
            let seq = link.ping_wanted.swap(0, Ordering::AcqRel);
            if seq != 0 {
                self.ping = Some((ping_frame(seq), 0));
            }
        }
        while let Some((frame, written)) = &mut self.ping {
            match Pin::new(&mut self.inner).poll_write(cx, &frame[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    *written += n;
                    if *written == PING_LEN {
                        self.ping = None;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Monitored<S> {
    /// Before any of hyper's writes: fails once the connection is declared
    /// dead, and gets a wanted PING out first (between hyper's frames).
    fn before_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(link) = &self.link
            && let Some(e) = link.death()
        {
            return Poll::Ready(Err(e));
        }
        self.poll_ping(cx)
    }

    /// Hands hyper what it may have of `rbuf`, taking out our PING ACKs and
    /// noting frames. Stops when `buf` is full or more input is needed.
    fn deliver(&mut self, link: &Link, buf: &mut ReadBuf<'_>) {
        while buf.remaining() > 0 && self.rstart < self.rend {
            let pending = &self.rbuf[self.rstart..self.rend];
            if self.deliver_left > 0 {
                let n = self.deliver_left.min(pending.len()).min(buf.remaining());
                buf.put_slice(&pending[..n]);
                self.rstart += n;
                self.deliver_left -= n;
                continue;
            }
            if pending.len() < HEADER_LEN {
                break;
            }
            let h = parse_header(&pending[..HEADER_LEN]);
            if h.kind == TYPE_PING && h.flags & FLAG_ACK != 0 && h.len == 8 {
                if pending.len() < PING_LEN {
                    break;
                }
                if &pending[9..14] == PING_MAGIC {
                    let mut seq = [0u8; 8];
                    seq[5..8].copy_from_slice(&pending[14..17]);
                    self.rstart += PING_LEN;
                    link.ping_acked
                        .store(u64::from_be_bytes(seq), Ordering::Release);
                    link.acked.notify_one();
                    continue;
                }
            }
            let before = self.awaiting.len();
            match h.kind {
                // The first response HEADERS answers the stream: from then on
                // the server may stay silent on it as long as it likes.
                TYPE_HEADERS => {
                    link.data_frames.fetch_add(1, Ordering::Relaxed);
                    self.awaiting.remove(&h.stream);
                }
                TYPE_DATA => {
                    link.data_frames.fetch_add(1, Ordering::Relaxed);
                    if h.flags & FLAG_END_STREAM != 0 {
                        self.awaiting.remove(&h.stream);
                    }
                }
                TYPE_RST_STREAM => {
                    self.awaiting.remove(&h.stream);
                }
                TYPE_GOAWAY => link.going_away.store(true, Ordering::Relaxed),
                _ => {}
            }
            if before != self.awaiting.len() {
                self.set_outstanding(link, before);
            }
            self.deliver_left = HEADER_LEN + h.len;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Monitored<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(link) = this.link.clone() else {
            let before = buf.filled().len();
            let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
            if this.spoke.is_some()
                && let Some(&first) = buf.filled().get(before)
                && let Some(spoke) = this.spoke.take()
            {
                let _ = spoke.send(first);
            }
            return poll;
        };
        link.waker.register(cx.waker());
        if let Some(e) = link.death() {
            return Poll::Ready(Err(e));
        }
        // hyper always waits on reads: this is where a PING gets out when
        // hyper has nothing to write.
        if let Poll::Ready(Err(e)) = this.poll_ping(cx) {
            return Poll::Ready(Err(e));
        }
        let before = buf.filled().len();
        loop {
            this.deliver(&link, buf);
            if buf.filled().len() > before || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // A frame cut short by EOF: hand over what is left.
                let rest = &this.rbuf[this.rstart..this.rend];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.rstart += n;
                return Poll::Ready(Ok(()));
            }
            if this.rstart == this.rend {
                this.rstart = 0;
                this.rend = 0;
            } else if this.rend == this.rbuf.len() {
                this.rbuf.copy_within(this.rstart..this.rend, 0);
                this.rend -= this.rstart;
                this.rstart = 0;
            }
            let mut read = ReadBuf::new(&mut this.rbuf[this.rend..]);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        this.eof = true;
                        continue;
                    }
                    if let Some(spoke) = this.spoke.take() {
                        let _ = spoke.send(this.rbuf[this.rend]);
                    }
                    this.rend += n;
                    link.received();
                }
                other => return other,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Monitored<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.before_write(cx)?.is_pending() {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.track_written(&buf[..n]);
        }
        poll
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.before_write(cx)?.is_pending() {
            return Poll::Pending;
        }
        let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(mut n)) = poll
            && this.link.is_some()
        {
            for slice in bufs {
                if n == 0 {
                    break;
                }
                let k = n.min(slice.len());
                this.track_written(&slice[..k]);
                n -= k;
            }
        }
        poll
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.poll_ping(cx)?.is_pending() {
            return Poll::Pending;
        }
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the watcher tells the connection task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Silent with calls outstanding; a PING is out. No new calls.
    Suspected {
        silent_for: Duration,
        in_flight: usize,
    },
    /// The server answered the PING: it is alive.
    Cleared { rtt: Duration },
}

/// The server's ping strikes, counted on the safe side (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct PingBudget {
    strikes: u32,
    last_ping: Option<Instant>,
    /// `data_frames` when the last PING was sent.
    data_at_last_ping: u64,
}

impl PingBudget {
    /// The strikes the server would count for a PING now, with
    /// `data_frames` HEADERS/DATA received so far.
    fn strikes_at(&self, now: Instant, data_frames: u64) -> u32 {
        match self.last_ping {
            None => 0,
            Some(_) if data_frames != self.data_at_last_ping => 0,
            Some(last) if now.duration_since(last) > STRIKE_WINDOW => self.strikes,
            Some(_) => self.strikes + 1,
        }
    }

    fn spend(&mut self, strikes: u32, now: Instant, data_frames: u64) {
        self.strikes = strikes;
        self.last_ping = Some(now);
        self.data_at_last_ping = data_frames;
    }

    /// Whether a PING now, with `data_frames` HEADERS/DATA received so far,
    /// keeps the server's strikes within its limit; if so, counts it.
    pub(crate) fn try_spend(&mut self, now: Instant, data_frames: u64) -> bool {
        let strikes = self.strikes_at(now, data_frames);
        if strikes > MAX_STRIKES {
            return false;
        }
        self.spend(strikes, now, data_frames);
        true
    }

    /// Counts a PING someone else sent (hyper's keepalive): it was sent
    /// whatever the budget said, and costs what it costs.
    pub(crate) fn note_sent(&mut self, now: Instant, data_frames: u64) {
        let strikes = self.strikes_at(now, data_frames);
        self.spend(strikes, now, data_frames);
    }
}

/// Watches one connection until it is declared dead; returns the reason.
/// `report` hears of suspicion and its end.
pub(crate) async fn watch(
    link: Arc<Link>,
    config: FreezeDetection,
    mut report: impl FnMut(Verdict),
) -> String {
    let mut budget = PingBudget::default();
    let mut seq: u64 = 0;
    // Probes answered since the server last sent HEADERS/DATA: each doubles
    // the silence needed before the next one.
    let mut answered: u32 = 0;
    let mut data_at_answer = 0;
    let mut keepalives_seen = 0;
    // The longest recent PING round trip: what the next PING may take.
    let mut rtt = Duration::ZERO;
    // A server saying GOAWAY is looked at again after half the ceiling.
    let going_away_check = config.suspect_after / 2;
    loop {
        let data_frames = link.data_frames.load(Ordering::Relaxed);
        let keepalives = link.keepalive_pings.load(Ordering::Relaxed);
        for _ in keepalives_seen..keepalives {
            // Noticed late, so counted as if sent now: on the safe side.
            budget.note_sent(Instant::now(), data_frames);
        }
        keepalives_seen = keepalives;
        let outstanding = link.outstanding();
        if outstanding == 0 {
            // Nothing to suspect until a call starts: park until the first
            // one does (no timer, so 10 000 idle endpoints cost no wake-ups,
            // and a call starting on an idle connection is watched from its
            // first byte, not from the next periodic look).
            link.idle.store(true, Ordering::SeqCst);
            if link.outstanding.load(Ordering::SeqCst) == 0 {
                link.call_started.notified().await;
            }
            link.idle.store(false, Ordering::Relaxed);
            continue;
        }
        if link.going_away.load(Ordering::Relaxed) {
            tokio::time::sleep(going_away_check).await;
            continue;
        }
        if data_frames != data_at_answer {
            answered = 0;
        }
        let quiet_since = link.at(link
            .last_rx
            .load(Ordering::Relaxed)
            .max(link.waiting_since.load(Ordering::Relaxed)));
        let base = config.suspect_threshold(link.normal_silence());
        let threshold = base * 2u32.pow(answered.min(16));
        let now = Instant::now();
        if now < quiet_since + threshold {
            let mut wake = quiet_since + threshold;
            if answered > 0 {
                // Server data (the answer to the call) ends the doubled wait
                // and a new call's silence counts from its start: look again
                // soon, or that call would be suspected late.
                wake = wake.min(now + base / 4);
            }
            tokio::time::sleep_until(wake).await;
            continue;
        }
        if !budget.try_spend(now, data_frames) {
            // No probe allowed until the server sends something: leave the
            // endpoint pickable rather than exclude it on a guess.
            tokio::time::sleep(base).await;
            continue;
        }
        seq = (seq + 1) & 0xff_ffff;
        if seq == 0 {
            seq = 1;
        }
        let silent_for = now - quiet_since;
        report(Verdict::Suspected {
            silent_for,
            in_flight: outstanding,
        });
        let sent = Instant::now();
        let deadline = config.probe_deadline(rtt);
        link.request_ping(seq);
        let answer = tokio::time::timeout(deadline, async {
            loop {
                let notified = link.acked.notified();
                if link.ping_acked.load(Ordering::Acquire) == seq {
                    return;
                }
                notified.await;
            }
        })
        .await;
        match answer {
            Ok(()) => {
                answered += 1;
                data_at_answer = link.data_frames.load(Ordering::Relaxed);
                let took = sent.elapsed();
                rtt = took.max(rtt - rtt / 4);
                report(Verdict::Cleared { rtt: took });
            }
            Err(_) => {
                let reason = format!(
                    "server frozen: nothing received for {silent_for:.1?} with {outstanding} calls in flight, and no answer to a PING within {deadline:.1?}"
                );
                link.kill(reason.clone());
                return reason;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ping_budget_never_exceeds_grpc_go_strikes() {
        let mut budget = PingBudget::default();
        let t0 = Instant::now();
        // No server data between pings: the first is free, two strikes, then no more.
        assert!(budget.try_spend(t0, 0));
        assert!(budget.try_spend(t0 + Duration::from_secs(1), 0));
        assert!(budget.try_spend(t0 + Duration::from_secs(2), 0));
        assert!(!budget.try_spend(t0 + Duration::from_secs(3), 0));
        assert_eq!(budget.strikes, MAX_STRIKES);
        // Server HEADERS/DATA since the last ping reset the strikes.
        assert!(budget.try_spend(t0 + Duration::from_secs(4), 1));
        assert_eq!(budget.strikes, 0);
        // After the longest strike window, a ping is free but resets nothing.
        assert!(budget.try_spend(t0 + Duration::from_secs(5), 1));
        assert!(budget.try_spend(t0 + Duration::from_secs(6), 1));
        assert!(!budget.try_spend(t0 + Duration::from_secs(7), 1));
        assert!(budget.try_spend(t0 + Duration::from_secs(7) + STRIKE_WINDOW * 2, 1));
        assert_eq!(budget.strikes, MAX_STRIKES);
    }

    #[test]
    fn keepalive_pings_use_up_the_probe_budget() {
        let mut budget = PingBudget::default();
        let t0 = Instant::now();
        assert!(budget.try_spend(t0, 0));
        // hyper's keepalive PINGs in the same silence: two strikes.
        budget.note_sent(t0 + Duration::from_secs(1), 0);
        budget.note_sent(t0 + Duration::from_secs(2), 0);
        assert_eq!(budget.strikes, MAX_STRIKES);
        assert!(!budget.try_spend(t0 + Duration::from_secs(3), 0));
        // Server data since: free again.
        assert!(budget.try_spend(t0 + Duration::from_secs(4), 1));
    }

    /// A connection as [`watch`] sees it, over an in-memory pipe: the
    /// test plays hyper (writing call HEADERS through [`Monitored`], a task
    /// reading everything back) and the server (the pipe's other end).
    struct Wire {
        server: tokio::io::DuplexStream,
        client: tokio::io::WriteHalf<Monitored<tokio::io::DuplexStream>>,
        verdicts: tokio::sync::mpsc::UnboundedReceiver<(Instant, Verdict)>,
        watcher: tokio::task::JoinHandle<(Instant, String)>,
        next_stream: u32,
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len().to_be_bytes();
        let mut f = vec![len[5], len[6], len[7], kind, flags];
        f.extend(stream.to_be_bytes());
        f.extend(payload);
        f
    }

    impl Wire {
        async fn new(config: FreezeDetection) -> Self {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            let (client_io, server) = tokio::io::duplex(1 << 16);
            let (spoke, _) = oneshot::channel();
            let (monitored, link) = Monitored::new(client_io, spoke, true);
            let (mut read, mut client) = tokio::io::split(monitored);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while read.read(&mut buf).await.is_ok_and(|n| n > 0) {}
            });
            client
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .expect("preface");
            let (tx, verdicts) = tokio::sync::mpsc::unbounded_channel();
            let link = link.expect("detection on");
            let watcher = tokio::spawn(async move {
                let reason = watch(link, config, move |v| {
                    let _ = tx.send((Instant::now(), v));
                })
                .await;
                (Instant::now(), reason)
            });
            let mut wire = Self {
                server,
                client,
                verdicts,
                watcher,
                next_stream: 1,
            };
            wire.drain_preface().await;
            wire
        }

        async fn drain_preface(&mut self) {
            use tokio::io::AsyncReadExt as _;
            let mut preface = [0u8; PREFACE_LEN];
            self.server.read_exact(&mut preface).await.expect("preface");
        }

        /// The client starts a call: returns its stream.
        async fn call(&mut self) -> u32 {
            use tokio::io::AsyncWriteExt as _;
            let stream = self.next_stream;
            self.next_stream += 2;
            self.client
                .write_all(&frame(TYPE_HEADERS, 0x4, stream, b"h"))
                .await
                .expect("write");
            self.client.flush().await.expect("flush");
            stream
        }

        /// The server sends the response headers of `stream`.
        async fn answer(&mut self, stream: u32) {
            use tokio::io::AsyncWriteExt as _;
            self.server
                .write_all(&frame(TYPE_HEADERS, 0x4, stream, b"h"))
                .await
                .expect("write");
        }

        /// Reads what the client sent until a PING; returns its payload.
        async fn ping(&mut self) -> [u8; 8] {
            use tokio::io::AsyncReadExt as _;
            loop {
                let mut h = [0u8; HEADER_LEN];
                self.server.read_exact(&mut h).await.expect("frame");
                let h = parse_header(&h);
                let mut payload = vec![0u8; h.len];
                self.server.read_exact(&mut payload).await.expect("payload");
                if h.kind == TYPE_PING {
                    return payload.try_into().expect("8 bytes");
                }
            }
        }

        async fn ack(&mut self, payload: [u8; 8]) {
            use tokio::io::AsyncWriteExt as _;
            self.server
                .write_all(&frame(TYPE_PING, FLAG_ACK, 0, &payload))
                .await
                .expect("write");
        }

        /// `calls` calls, each answered after `after`: what is normal.
        async fn normal(&mut self, calls: usize, after: Duration) {
            for _ in 0..calls {
                let stream = self.call().await;
                tokio::time::sleep(after).await;
                self.answer(stream).await;
            }
            tokio::task::yield_now().await;
        }

        async fn verdict(&mut self) -> (Instant, Verdict) {
            self.verdicts.recv().await.expect("a verdict")
        }
    }

    /// `took` is `expected`, to the timer's millisecond.
    fn about(took: Duration, expected: Duration) -> bool {
        took >= expected && took <= expected + Duration::from_millis(2)
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_server_is_suspected_at_the_floor_then_failed_at_the_ping_floor() {
        let config = FreezeDetection::default();
        let bounds = config.adaptive.expect("adaptive");
        let mut wire = Wire::new(config).await;
        // Answers 2 ms after each call: 10 x 2 ms is under the floor.
        wire.normal(20, Duration::from_millis(2)).await;
        let start = Instant::now();
        wire.call().await;
        let (at, verdict) = wire.verdict().await;
        assert!(about(at - start, bounds.suspect_floor), "{:?}", at - start);
        assert!(matches!(verdict, Verdict::Suspected { in_flight: 1, .. }));
        wire.ping().await;
        let (dead_at, reason) = (&mut wire.watcher).await.expect("watcher");
        assert!(
            about(dead_at - at, bounds.probe_floor),
            "{:?}",
            dead_at - at
        );
        assert!(reason.contains("no answer to a PING"), "{reason}");
    }

    #[tokio::test(start_paused = true)]
    async fn suspicion_waits_a_multiple_of_what_is_normal_for_the_server() {
        let config = FreezeDetection::default();
        let bounds = config.adaptive.expect("adaptive");
        let mut wire = Wire::new(config).await;
        // A server whose answers take 40 ms: suspected after 400 ms.
        wire.normal(5, Duration::from_millis(40)).await;
        let start = Instant::now();
        wire.call().await;
        let (at, _) = wire.verdict().await;
        let expected = Duration::from_millis(40) * bounds.silence_multiple;
        assert!(about(at - start, expected), "{:?}", at - start);
        // A server that grew slower, step by step (each answer within 10 x
        // the normal before it), past what the ceiling allows: suspected at
        // the ceiling.
        let mut wire = Wire::new(config).await;
        wire.normal(1, Duration::from_millis(50)).await;
        wire.normal(1, Duration::from_millis(300)).await;
        let start = Instant::now();
        wire.call().await;
        let (at, _) = wire.verdict().await;
        assert!(about(at - start, config.suspect_after), "{:?}", at - start);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_bounds_ignore_what_is_normal() {
        let config = FreezeDetection::fixed(Duration::from_millis(300), Duration::from_millis(700));
        let mut wire = Wire::new(config).await;
        wire.normal(20, Duration::from_millis(2)).await;
        let start = Instant::now();
        wire.call().await;
        let (at, _) = wire.verdict().await;
        assert!(about(at - start, config.suspect_after), "{:?}", at - start);
        wire.ping().await;
        let (dead_at, _) = (&mut wire.watcher).await.expect("watcher");
        assert!(
            about(dead_at - at, config.probe_timeout),
            "{:?}",
            dead_at - at
        );
    }

    /// The watcher of a connection with no call awaiting the server sleeps
    /// without a timer; the first call wakes it, so a call that starts after
    /// an hour of idleness on a frozen server is suspected at the floor, not
    /// at some later periodic look.
    #[tokio::test(start_paused = true)]
    async fn the_first_call_after_idleness_is_watched_from_its_start() {
        let config = FreezeDetection::default();
        let bounds = config.adaptive.expect("adaptive");
        let mut wire = Wire::new(config).await;
        wire.normal(3, Duration::from_millis(1)).await;
        for idle in [3_600_000, 250, 777] {
            tokio::time::sleep(Duration::from_millis(idle)).await;
            let start = Instant::now();
            let stream = wire.call().await;
            let (at, verdict) = wire.verdict().await;
            assert!(
                about(at - start, bounds.suspect_floor),
                "after {idle} ms idle: suspected {:?} after the call began",
                at - start
            );
            assert!(matches!(verdict, Verdict::Suspected { .. }));
            let payload = wire.ping().await;
            wire.ack(payload).await;
            assert!(matches!(wire.verdict().await.1, Verdict::Cleared { .. }));
            wire.answer(stream).await;
            // What the probe's silence taught it decays with later calls.
            wire.normal(200, Duration::from_millis(1)).await;
        }
        assert!(!wire.watcher.is_finished());
    }

    /// A pause shorter than suspicion plus the PING's timeout costs no
    /// call: the PING is answered when the server resumes. One longer fails
    /// the connection.
    #[tokio::test(start_paused = true)]
    async fn a_pause_shorter_than_suspicion_plus_the_ping_timeout_is_survived() {
        let config = FreezeDetection::default();
        let bounds = config.adaptive.expect("adaptive");
        let survivable = bounds.suspect_floor + bounds.probe_floor;
        for pause in [
            Duration::from_millis(150),
            survivable - Duration::from_millis(10),
        ] {
            let mut wire = Wire::new(config).await;
            wire.normal(20, Duration::from_millis(1)).await;
            let start = Instant::now();
            let stream = wire.call().await;
            assert!(matches!(wire.verdict().await.1, Verdict::Suspected { .. }));
            let payload = wire.ping().await;
            tokio::time::sleep_until(start + pause).await;
            wire.ack(payload).await;
            assert!(
                matches!(wire.verdict().await.1, Verdict::Cleared { .. }),
                "a {pause:?} pause"
            );
            wire.answer(stream).await;
            tokio::task::yield_now().await;
            assert!(!wire.watcher.is_finished(), "a {pause:?} pause");
        }
        let mut wire = Wire::new(config).await;
        wire.normal(20, Duration::from_millis(1)).await;
        let start = Instant::now();
        wire.call().await;
        wire.ping().await;
        let (dead_at, _) = (&mut wire.watcher).await.expect("watcher");
        assert!(about(dead_at - start, survivable), "{:?}", dead_at - start);
    }

    /// Slow is not frozen: a 2 s handler whose server answers PINGs is
    /// probed once (the answered probe raises what is normal, and each
    /// answer doubles the next wait) and its call completes.
    #[tokio::test(start_paused = true)]
    async fn a_two_second_handler_answering_pings_is_probed_and_never_failed() {
        let mut wire = Wire::new(FreezeDetection::default()).await;
        wire.normal(20, Duration::from_millis(1)).await;
        let start = Instant::now();
        let stream = wire.call().await;
        let mut probes = 0;
        loop {
            tokio::select! {
                payload = wire.ping() => {
                    probes += 1;
                    wire.ack(payload).await;
                }
                () = tokio::time::sleep_until(start + Duration::from_secs(2)) => break,
            }
        }
        wire.answer(stream).await;
        tokio::task::yield_now().await;
        assert_eq!(probes, 1);
        assert!(!wire.watcher.is_finished());
        let mut verdicts = Vec::new();
        while let Ok((_, v)) = wire.verdicts.try_recv() {
            verdicts.push(v);
        }
        assert!(
            matches!(
                verdicts[..],
                [Verdict::Suspected { .. }, Verdict::Cleared { .. }]
            ),
            "{verdicts:?}"
        );
    }

    #[test]
    fn ping_frames_carry_the_sequence() {
        let frame = ping_frame(0x01_02_03);
        let h = parse_header(&frame);
        assert_eq!((h.len, h.kind, h.flags, h.stream), (8, TYPE_PING, 0, 0));
        assert_eq!(&frame[9..14], PING_MAGIC);
        assert_eq!(&frame[14..], &[1, 2, 3]);
    }
}
