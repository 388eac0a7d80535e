//! Request bodies that can be sent again.
//!
//! A request the server provably never processed — above a GOAWAY's
//! last-stream-id, or refused with `REFUSED_STREAM` — is safe to retry on
//! another endpoint, but hyper has consumed its body by then (sometimes before
//! polling it at all). So before sending, [`Prepared::new`] takes whatever
//! frames the body has ready right now: a unary call's body is complete at
//! once (tonic encodes the one message eagerly) and is kept as `Bytes`, which
//! cost a reference count to send again. A streaming body is passed through;
//! it is only resent when hyper hands the request back unsent.

use std::{
    collections::VecDeque,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes, BytesMut};
use futures::FutureExt as _;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tonic::{Status, body::Body};

/// A request body ready for attempts.
pub(crate) enum Prepared {
    /// The whole body, for as many attempts as needed.
    Complete(Bytes),
    /// A body still streaming; `None` while an attempt owns it.
    Streaming(Option<SendBody>),
}

impl Prepared {
    /// Takes the frames `body` has ready without waiting.
    pub(crate) fn new(mut body: Body) -> Result<Self, Status> {
        // Fast path, every unary call: one data frame, then the end. No
        // allocation beyond what the encoder made.
        let first = match body.frame().now_or_never() {
            Some(Some(Ok(frame))) => frame,
            Some(Some(Err(status))) => return Err(status),
            Some(None) => return Ok(Self::Complete(Bytes::new())),
            None => {
                return Ok(Self::Streaming(Some(SendBody::streaming(
                    VecDeque::new(),
                    Some(body),
                ))));
            }
        };
        let first = match first.into_data() {
            Ok(data) => match body.frame().now_or_never() {
                Some(None) => return Ok(Self::Complete(data)),
                Some(Some(Err(status))) => return Err(status),
                Some(Some(Ok(second))) => vec![Frame::data(data), second],
                None => vec![Frame::data(data)],
            },
            Err(not_data) => vec![not_data],
        };
        let mut frames: VecDeque<Frame<Bytes>> = first.into();
        loop {
            match body.frame().now_or_never() {
                Some(Some(Ok(frame))) => frames.push_back(frame),
                Some(Some(Err(status))) => return Err(status),
                Some(None) if frames.iter().all(Frame::is_data) => {
                    return Ok(Self::Complete(concat(frames)));
                }
                // Trailers in a request body: rare; sent once, as they are.
                Some(None) => return Ok(Self::Streaming(Some(SendBody::streaming(frames, None)))),
                None => {
                    return Ok(Self::Streaming(Some(SendBody::streaming(
                        frames,
                        Some(body),
                    ))));
                }
            }
        }
    }

    /// The body for the next attempt; `None` if a streaming body is gone.
    pub(crate) fn attempt(&mut self) -> Option<SendBody> {
        match self {
            Self::Complete(data) => Some(SendBody::complete(data.clone())),
            Self::Streaming(body) => body.take(),
        }
    }

    /// Gives back a body hyper returned unsent.
    pub(crate) fn restore(&mut self, body: SendBody) {
        if let Self::Streaming(slot) = self {
            *slot = Some(body);
        }
    }

    /// Whether an attempt that hyper did send can be repeated.
    pub(crate) fn replayable(&self) -> bool {
        matches!(self, Self::Complete(_))
    }
}

/// Joins data frames (the caller checked they all are).
fn concat(frames: VecDeque<Frame<Bytes>>) -> Bytes {
    let mut datas: Vec<Bytes> = frames
        .into_iter()
        .filter_map(|f| f.into_data().ok())
        .collect();
    match datas.len() {
        0 => Bytes::new(),
        1 => datas.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(datas.iter().map(|d| d.remaining()).sum());
            for data in datas {
                all.extend_from_slice(&data);
            }
            all.freeze()
        }
    }
}

/// The body handed to hyper: frames already taken, then the rest.
pub(crate) struct SendBody {
    /// A complete body's data (no allocation for the common case).
    data: Option<Bytes>,
    frames: VecDeque<Frame<Bytes>>,
    rest: Option<Body>,
}

impl SendBody {
    fn complete(data: Bytes) -> Self {
        Self {
            data: Some(data),
            frames: VecDeque::new(),
            rest: None,
        }
    }

    /// A body passed through as it is (the balancer's own calls, which are
    /// never retried).
    pub(crate) fn passthrough(body: Body) -> Self {
        Self::streaming(VecDeque::new(), Some(body))
    }

    fn streaming(frames: VecDeque<Frame<Bytes>>, rest: Option<Body>) -> Self {
        Self {
            data: None,
            frames,
            rest,
        }
    }
}

impl HttpBody for SendBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match self.rest.as_mut() {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
            && self.frames.is_empty()
            && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        // Only a lower bound, as tonic's own bodies give: an exact size makes
        // hyper add a `content-length` header that gRPC does not use, and
        // that costs every call an extra header to encode and check.
        let taken: u64 = self.data.as_ref().map_or(0, |d| d.remaining() as u64)
            + self
                .frames
                .iter()
                .filter_map(|f| f.data_ref())
                .map(|d| d.remaining() as u64)
                .sum::<u64>();
        let mut hint = self
            .rest
            .as_ref()
            .map_or_else(SizeHint::new, |r| r.size_hint());
        hint.set_lower(hint.lower() + taken);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + taken);
        }
        hint
    }
}

/// Whether the server provably never processed the request that failed with
/// `error`: its stream was above the last-stream-id of a GOAWAY, or was
/// refused (`REFUSED_STREAM`). Both mean "safe to send elsewhere" in HTTP/2.
pub(crate) fn never_processed(error: &hyper::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(err) = source {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return (h2.is_go_away() && h2.is_remote())
                || h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: SendBody) -> Bytes {
        body.collect().await.expect("body").to_bytes()
    }

    #[tokio::test]
    async fn a_complete_body_can_be_sent_any_number_of_times() {
        let body = Body::new(http_body_util::Full::new(Bytes::from_static(b"abc")));
        let mut prepared = Prepared::new(body).expect("prepared");
        assert!(prepared.replayable());
        for _ in 0..3 {
            let attempt = prepared.attempt().expect("attempt");
            assert_eq!(attempt.size_hint().lower(), 3);
            assert_eq!(collect(attempt).await, "abc");
        }
    }

    #[tokio::test]
    async fn a_streaming_body_is_sent_once_unless_given_back() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        let body = Body::new(http_body_util::StreamBody::new(stream));
        let mut prepared = Prepared::new(body).expect("prepared");
        assert!(!prepared.replayable());
        let attempt = prepared.attempt().expect("first attempt");
        assert!(prepared.attempt().is_none(), "a stream is not duplicated");
        prepared.restore(attempt);
        let attempt = prepared.attempt().expect("given back");
        tx.send(Ok(Frame::data(Bytes::from_static(b"late"))))
            .await
            .expect("send");
        drop(tx);
        assert_eq!(collect(attempt).await, "late");
    }
}
