//! [`Coalesce`]: an IO wrapper that holds back a small write for one
//! scheduler turn, so that the writes of many calls on one HTTP/2 connection
//! leave in one syscall.
//!
//! # Why
//! h2 (under hyper and tonic) already encodes every frame it has queued into
//! one buffer and writes it with one `writev` per poll of the connection
//! task. But tokio runs a task woken by the running task next (its "LIFO
//! slot"): a caller that queues a request wakes the connection task, which
//! then runs at once and writes that one request alone, before the next
//! caller had its turn. Measured here with C=32 unary calls on one
//! connection: one `writev` per call on each side, and each of those writes
//! also costs the peer a read and a wake-up.
//!
//! grpc-go's writer ("loopy") yields the processor once when it has less
//! than 1 000 bytes to write, so more goroutines can add their frames first.
//! [`Coalesce`] does the same below h2: a write of fewer than
//! [`threshold`](Coalesce::with_threshold) bytes (default
//! [`DEFAULT_THRESHOLD`]) is refused once with `Pending` after waking the
//! task; the task goes to the back of the run queue, the callers run and
//! queue their frames, and the next poll writes them all. A write is held
//! back at most once, so it waits at most one turn of the scheduler, and a
//! large write (a big message, a full buffer) is never held back.
//!
//! It buffers nothing and copies nothing: the bytes stay in h2's buffer.
//! Reads pass through untouched.
//!
//! # When not to hold back: one connection carrying all the calls
//! If both ends of a connection hold back, and that connection is all either
//! end has to work on, the two fall into lock-step: each end's write
//! carries every call in flight, so each end idles while the other one
//! works. Measured here with C=128 unary calls on one connection between two
//! processes that both hold back (pinned to one CPU each, median of 5): each
//! side wrote one batch of 128 calls at a time (`strace`), and the pair did
//! 24.1 k calls/s against 37.1 k with the client not holding back. A [`Gate`]
//! ([`with_gate`](Coalesce::with_gate)) lets the owner of the connection say,
//! write by write, whether holding back is worth it now; the balancer's
//! gate holds back only while other connections carry a share of its calls.
//!
//! ```
//! use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
//! use etcdlb_write_coalesce::Coalesce;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let (client, mut server) = tokio::io::duplex(64);
//! let mut client = Coalesce::new(client);
//! client.write_all(b"ping").await?; // held back for one turn, then written
//! let mut got = [0u8; 4];
//! server.read_exact(&mut got).await?;
//! assert_eq!(&got, b"ping");
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    io::{self, IoSlice},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Writes smaller than this many bytes are held back for one scheduler turn
/// (grpc-go's `minBatchSize`).
pub const DEFAULT_THRESHOLD: usize = 1000;

/// Asked before a small write is held back: `true` holds it back, `false`
/// writes it at once. Called on the connection's task for every write below
/// the threshold, so it should cost no more than a few atomic loads.
pub type Gate = Arc<dyn Fn() -> bool + Send + Sync>;

/// An IO stream whose small writes wait one scheduler turn for company. See
/// the crate docs.
pub struct Coalesce<S> {
    inner: S,
    threshold: usize,
    held_back: bool,
    gate: Option<Gate>,
}

impl<S: fmt::Debug> fmt::Debug for Coalesce<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Coalesce")
            .field("inner", &self.inner)
            .field("threshold", &self.threshold)
            .field("held_back", &self.held_back)
            .field("gated", &self.gate.is_some())
            .finish()
    }
}

impl<S> Coalesce<S> {
    /// Wraps `inner` with the [`DEFAULT_THRESHOLD`].
    ///
    /// ```
    /// let wrapped = etcdlb_write_coalesce::Coalesce::new(tokio::io::empty());
    /// assert_eq!(wrapped.threshold(), etcdlb_write_coalesce::DEFAULT_THRESHOLD);
    /// ```
    pub fn new(inner: S) -> Self {
        Self::with_threshold(inner, DEFAULT_THRESHOLD)
    }

    /// Wraps `inner`, holding back writes of fewer than `threshold` bytes
    /// (0: never).
    ///
    /// ```
    /// let wrapped = etcdlb_write_coalesce::Coalesce::with_threshold(tokio::io::empty(), 0);
    /// assert_eq!(wrapped.threshold(), 0);
    /// ```
    pub fn with_threshold(inner: S, threshold: usize) -> Self {
        Self {
            inner,
            threshold,
            held_back: false,
            gate: None,
        }
    }

    /// Holds small writes back only while `gate` returns `true` (asked once
    /// per small write). Without a gate every small write is held back.
    ///
    /// ```
    /// use std::sync::{Arc, atomic::{AtomicBool, Ordering}};
    /// use std::{pin::Pin, task::{Context, Poll, Waker}};
    /// use tokio::io::AsyncWrite;
    ///
    /// let busy_elsewhere = Arc::new(AtomicBool::new(false));
    /// let gate = busy_elsewhere.clone();
    /// let mut w = etcdlb_write_coalesce::Coalesce::new(Vec::<u8>::new())
    ///     .with_gate(Arc::new(move || gate.load(Ordering::Relaxed)));
    /// let mut cx = Context::from_waker(Waker::noop());
    /// // The gate says no: written at once.
    /// assert!(matches!(Pin::new(&mut w).poll_write(&mut cx, b"hi"), Poll::Ready(Ok(2))));
    /// busy_elsewhere.store(true, Ordering::Relaxed);
    /// // The gate says yes: held back for one turn.
    /// assert!(Pin::new(&mut w).poll_write(&mut cx, b"hi").is_pending());
    /// ```
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// The threshold in bytes.
    pub fn threshold(&self) -> usize {
        self.threshold
    }

    /// The wrapped stream.
    ///
    /// ```
    /// let wrapped = etcdlb_write_coalesce::Coalesce::new(std::io::Cursor::new(vec![1u8]));
    /// assert_eq!(wrapped.get_ref().get_ref(), &[1]);
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably.
    ///
    /// ```
    /// let mut wrapped = etcdlb_write_coalesce::Coalesce::new(std::io::Cursor::new(vec![1u8]));
    /// wrapped.get_mut().get_mut().push(2);
    /// assert_eq!(wrapped.into_inner().into_inner(), [1, 2]);
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the stream.
    ///
    /// ```
    /// let wrapped = etcdlb_write_coalesce::Coalesce::new(std::io::Cursor::new(vec![1u8]));
    /// assert_eq!(wrapped.into_inner().into_inner(), [1]);
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Whether a write of `len` bytes waits a turn now. Yielding means
    /// waking ourselves and returning `Pending`: the executor polls the task
    /// again after the tasks already queued.
    fn hold_back(&mut self, len: usize, cx: &mut Context<'_>) -> bool {
        if self.held_back || len == 0 || len >= self.threshold {
            self.held_back = false;
            return false;
        }
        if self.gate.as_ref().is_some_and(|gate| !gate()) {
            return false;
        }
        self.held_back = true;
        cx.waker().wake_by_ref();
        true
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesce<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesce<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.hold_back(buf.len(), cx) {
            return Poll::Pending;
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let len = bufs.iter().map(|b| b.len()).sum();
        if self.hold_back(len, cx) {
            return Poll::Pending;
        }
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

#[cfg(feature = "tonic")]
impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected for Coalesce<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicUsize, Ordering},
        },
        task::Wake,
    };

    use super::*;

    /// A waker that counts its wake-ups.
    struct Counter(AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn poll_write(w: &mut Coalesce<Vec<u8>>, data: &[u8], wakes: &Arc<Counter>) -> Poll<usize> {
        let waker = Arc::clone(wakes).into();
        let mut cx = Context::from_waker(&waker);
        Pin::new(w)
            .poll_write(&mut cx, data)
            .map(|r| r.expect("write"))
    }

    #[test]
    fn a_small_write_waits_one_turn_and_wakes_its_task() {
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let mut w = Coalesce::new(Vec::new());
        assert_eq!(poll_write(&mut w, b"abc", &wakes), Poll::Pending);
        assert_eq!(
            wakes.0.load(Ordering::Relaxed),
            1,
            "Pending must come with a wake-up"
        );
        assert!(w.get_ref().is_empty());
        assert_eq!(poll_write(&mut w, b"abc", &wakes), Poll::Ready(3));
        assert_eq!(w.get_ref(), b"abc");
        // The next small write is held back again: once per write.
        assert_eq!(poll_write(&mut w, b"d", &wakes), Poll::Pending);
        assert_eq!(poll_write(&mut w, b"d", &wakes), Poll::Ready(1));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn large_and_empty_writes_pass_at_once() {
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let mut w = Coalesce::new(Vec::new());
        let big = vec![7u8; DEFAULT_THRESHOLD];
        assert_eq!(poll_write(&mut w, &big, &wakes), Poll::Ready(big.len()));
        assert_eq!(poll_write(&mut w, b"", &wakes), Poll::Ready(0));
        let mut off = Coalesce::with_threshold(Vec::new(), 0);
        assert_eq!(poll_write(&mut off, b"x", &wakes), Poll::Ready(1));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_closed_gate_writes_at_once_and_an_open_one_holds_back() {
        use std::sync::atomic::AtomicBool;
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let open = Arc::new(AtomicBool::new(false));
        let asked = Arc::new(AtomicUsize::new(0));
        let (o, a) = (open.clone(), asked.clone());
        let mut w = Coalesce::new(Vec::new()).with_gate(Arc::new(move || {
            a.fetch_add(1, Ordering::Relaxed);
            o.load(Ordering::Relaxed)
        }));
        assert_eq!(poll_write(&mut w, b"ab", &wakes), Poll::Ready(2));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
        open.store(true, Ordering::Relaxed);
        assert_eq!(poll_write(&mut w, b"cd", &wakes), Poll::Pending);
        assert_eq!(poll_write(&mut w, b"cd", &wakes), Poll::Ready(2));
        // Large writes never ask: two small writes asked, the retry did not.
        let big = vec![0u8; DEFAULT_THRESHOLD];
        assert_eq!(poll_write(&mut w, &big, &wakes), Poll::Ready(big.len()));
        assert_eq!(asked.load(Ordering::Relaxed), 2);
        assert_eq!(w.get_ref().len(), 4 + big.len());
    }

    #[test]
    fn vectored_writes_count_every_slice() {
        let wakes = Arc::new(Counter(AtomicUsize::new(0)));
        let waker = Arc::clone(&wakes).into();
        let mut cx = Context::from_waker(&waker);
        let mut w = Coalesce::with_threshold(Vec::new(), 4);
        let two = [IoSlice::new(b"ab"), IoSlice::new(b"cd")];
        // 4 bytes in two slices: not below the threshold.
        assert!(matches!(
            Pin::new(&mut w).poll_write_vectored(&mut cx, &two),
            Poll::Ready(Ok(_))
        ));
        assert_eq!(wakes.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn writes_from_other_tasks_join_the_held_back_one() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        // The writer task yields once; a task spawned before it runs in
        // that turn, as callers queueing frames do.
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = Coalesce::new(a);
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let o = order.clone();
        let other = tokio::spawn(async move { o.lock().expect("lock").push("other task ran") });
        a.write_all(b"hi").await.expect("write");
        order.lock().expect("lock").push("written");
        other.await.expect("task");
        assert_eq!(*order.lock().expect("lock"), ["other task ran", "written"]);
        let mut got = [0u8; 2];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"hi");
    }
}
